"""`bridge simulate` through app.cli.main: real NIR files and tensor files on disk."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch

from app.cli import main
from bridge.data.datasets import digits_arrays, load_labelled
from bridge.format.extension import graph_metadata, make_if
from bridge.reference import simulate


def digits_graph() -> nir.NIRGraph:
    """A small conv net on 8x8 digits (random weights: the CLI, not the model, is tested)."""
    rng = np.random.default_rng(0)
    nodes = {
        "input": nir.Input(input_type=np.array([1, 8, 8])),
        "conv": nir.Conv2d(input_shape=(8, 8), weight=rng.normal(0, 0.5, (4, 1, 3, 3)), stride=1,
                           padding=1, dilation=1, groups=1, bias=np.zeros(4)),
        "if1": make_if(np.full((4, 8, 8), 0.5), 0.25),
        "pool": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                              padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([4, 4, 4])}, start_dim=0),
        "fc": nir.Affine(weight=rng.normal(0, 0.3, (10, 64)), bias=np.zeros(10)),
        "output": nir.Output(output_type=np.array([10])),
    }
    names = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names, names[1:])), metadata=graph_metadata())


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.nir"
    nir.write(path, digits_graph())
    return path


def test_npy_input_prints_predictions_and_writes_outputs(model, tmp_path, capsys) -> None:
    x = digits_arrays(8)[0][:10].numpy()
    np.save(tmp_path / "x.npy", x)
    out, tr = tmp_path / "preds.npz", tmp_path / "tr.npz"
    rc = main(["simulate", str(model), "--input", str(tmp_path / "x.npy"), "--steps", "6",
               "--output", str(out), "--trace", str(tr), "--batch-size", "4"])
    assert rc == 0
    expect = simulate(nir.read(model), torch.from_numpy(x), 6, trace=True)
    printed = capsys.readouterr().out
    assert " ".join(str(int(p)) for p in expect.predictions()) in printed
    with np.load(out) as z:
        # batches of 4 vs one batch of 10: a GEMM may round differently per batch size
        assert np.allclose(z["readout"], expect.readout.numpy(), rtol=0, atol=1e-12)
        assert np.array_equal(z["predictions"], expect.predictions().numpy())
        assert z["outputs"].shape == (6, 10, 10)
    with np.load(tr) as z:
        assert np.array_equal(z["if1.spikes"], expect.traces["if1"].spikes.numpy().astype(np.uint8))
        assert np.allclose(z["if1.v"], expect.traces["if1"].v.numpy(), rtol=0, atol=1e-12)


def test_digits_input_reports_accuracy(model, capsys) -> None:
    assert main(["simulate", str(model), "--input", "digits", "--steps", "4", "--limit", "50",
                 "--dtype", "float32"]) == 0
    x, y = load_labelled("digits", input_shape=(1, 8, 8))  # the held-out split
    assert len(y) == 360
    preds = simulate(nir.read(model), x[:50], 4, dtype=torch.float32).predictions()
    acc = float((preds == y[:50]).double().mean())
    assert f"accuracy: {acc:.2%}" in capsys.readouterr().out


def test_a_labelled_npz_reports_accuracy_like_digits(model, tmp_path, capsys) -> None:
    x, y = load_labelled("digits", input_shape=(1, 8, 8))
    np.savez(tmp_path / "labelled.npz", x=x[:40].numpy(), y=y[:40].numpy())
    out = tmp_path / "preds.npz"
    assert main(["simulate", str(model), "--input", str(tmp_path / "labelled.npz"), "--steps", "4",
                 "--output", str(out)]) == 0
    preds = simulate(nir.read(model), x[:40].double(), 4).predictions()
    correct = int((preds == y[:40]).sum())
    printed = capsys.readouterr().out
    assert f"accuracy: {correct / 40:.2%} ({correct}/40) at T = 4" in printed
    with np.load(out) as z:  # --output holds the labels and the per-step accuracy, as for digits
        assert np.array_equal(z["labels"], y[:40].numpy()) and z["accuracy_per_step"].shape == (4,)
    # without labels: predictions only
    np.savez(tmp_path / "unlabelled.npz", x=x[:40].numpy())
    assert main(["simulate", str(model), "--input", str(tmp_path / "unlabelled.npz"), "--steps", "4"]) == 0
    assert "accuracy" not in capsys.readouterr().out
    # labels that do not fit the graph are refused like evaluate's
    np.savez(tmp_path / "bad.npz", x=x[:40].numpy(), y=y[:40].numpy() + 10)
    assert main(["simulate", str(model), "--input", str(tmp_path / "bad.npz"), "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "the graph has 10 outputs" in err and err.count("\n") == 1


def test_piped_output_starts_with_the_results_not_a_blank_line(model, capsys) -> None:
    # several batches: the progress bar is on; off a terminal it draws nothing, on stderr
    assert main(["simulate", str(model), "--input", "digits", "--steps", "2", "--limit", "30",
                 "--batch-size", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{model}: 30 samples"), repr(captured.out[:40])
    assert captured.err == ""


def test_bad_inputs_exit_2_with_one_line_and_no_output(model, tmp_path, capsys) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((3, 1, 7, 7), np.float32))
    out = tmp_path / "o.npz"
    cases = [
        ["simulate", str(model), "--input", str(tmp_path / "bad.npy"), "--output", str(out)],
        ["simulate", str(tmp_path / "missing.nir"), "--input", "digits"],
        ["simulate", str(model), "--input", "digits", "--steps", "0"],
        ["simulate", str(model), "--input", str(tmp_path / "nope.npy")],
    ]
    corrupt = tmp_path / "corrupt.nir"
    corrupt.write_bytes(b"not hdf5 at all")
    cases.append(["simulate", str(corrupt), "--input", "digits"])
    delay = tmp_path / "delay.nir"
    nir.write(delay, nir.NIRGraph(
        nodes={"input": nir.Input(input_type=np.array([64])), "d": nir.Delay(delay=np.ones(64)),
               "output": nir.Output(output_type=np.array([64]))},
        edges=[("input", "d"), ("d", "output")]))
    cases.append(["simulate", str(delay), "--input", "digits"])
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("bridge: error:") and "\n" not in err, err
    assert not out.exists()
    assert "Delay" in (main(cases[-1]) == 2 and capsys.readouterr().err)


def test_existing_output_is_kept_without_force(model, tmp_path, capsys) -> None:
    out = tmp_path / "o.npz"
    out.write_bytes(b"keep me")
    argv = ["simulate", str(model), "--input", "digits", "--steps", "2", "--limit", "3",
            "--output", str(out)]
    assert main(argv) == 2 and out.read_bytes() == b"keep me"
    assert main(argv + ["--force"]) == 0
    with np.load(out) as z:
        assert z["predictions"].shape == (3,)


def test_help_has_examples(capsys) -> None:
    assert main(["simulate", "--help"]) == 0
    text = capsys.readouterr().out
    assert "Examples:" in text and "--input digits" in text and "--trace" in text
