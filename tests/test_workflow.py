"""The conversion workflow (bridge.workflow): one plan, checked once, run the same way by
`bridge export`, `bridge evaluate` and `bridge.convert`; calibration data never from the test data."""

from __future__ import annotations

import json

import nir
import numpy as np
import pytest
import torch
from torch import nn

import bridge
from bridge.data.datasets import digits_arrays, digits_calibration, digits_indices, digits_test
from bridge.format.errors import BridgeError
from bridge.format.extension import graph_semantics
from bridge.format.nirio import read_graph, write_graph
from bridge.model.train import DigitsCNN
from bridge.workflow import ConversionPlan, run_plan
from tests.cli_helpers import assert_one_line_error, run

SHAPE = (1, 16, 16)


@pytest.fixture(scope="module")
def relu_pt2(tmp_path_factory):
    """A plain-ReLU digits CNN (random weights: the workflow, not accuracy, is under test) as a .pt2."""
    torch.manual_seed(0)
    model = DigitsCNN("relu", channels=(4, 8), hidden=16).eval()
    folder = tmp_path_factory.mktemp("wf")
    path = folder / "relu.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, *SHAPE),)), path)
    return model, path


def test_api_and_cli_write_the_same_bytes_for_the_same_plan(relu_pt2, tmp_path, capsys):
    """`bridge.convert(model, calibration=..., timesteps=T)` is `bridge export --calibration ... --timesteps T`."""
    model, path = relu_pt2
    cal = digits_calibration(SHAPE, 48)
    np.save(tmp_path / "cal.npy", cal.numpy())
    out = tmp_path / "cli.nir"
    code, stdout, err = run(capsys, "export", path, "--to", "nir", "-o", out, "--calibration", tmp_path / "cal.npy",
                            "--calibration-samples", "40", "--timesteps", "2")
    assert code == 0, err
    assert "calibration data: cal.npy, 40 samples" in stdout and "calibration for T=2: chose" in stdout
    api = bridge.convert(path, calibration=cal, calibration_samples=40, timesteps=2)
    write_graph(api, tmp_path / "api.nir")
    assert (tmp_path / "api.nir").read_bytes() == out.read_bytes()
    meta = read_graph(out).metadata["bridge"]
    assert graph_semantics(read_graph(out)).timesteps == 2
    assert int(meta["provenance"]["calibration"]["samples"]) == 40
    # the API's defaults are the CLI's: per-channel thresholds and the pipeline with calibration data
    ths = [np.asarray(n.v_threshold) for n in api.nodes.values() if isinstance(n, nir.IF)]
    assert len(np.unique(ths[0])) > 1
    # the module (torch.fx front-end) gives the same graph as its program
    from tests.nir_compare import assert_same_nir

    assert_same_nir(bridge.convert(model, SHAPE, calibration=cal, calibration_samples=40, timesteps=2), api)


def test_no_digits_test_sample_reaches_calibration(relu_pt2, tmp_path, capsys, monkeypatch):
    """`--calibration digits` reads only the training part of the fixed split that `--data digits`
    evaluates on the test part of, in `export` and in `evaluate`."""
    train_idx, test_idx = digits_indices()
    assert not set(train_idx) & set(test_idx) and len(test_idx) == 360
    images = digits_arrays(8)[0]
    seen = []
    import bridge.workflow.run as wf

    real = wf.load_calibration

    def spy(source, shape, samples):
        x = real(source, shape, samples)
        seen.append(x)
        return x

    monkeypatch.setattr(wf, "load_calibration", spy)
    _, path = relu_pt2
    code, _, err = run(capsys, "export", path, "--to", "nir", "-o", tmp_path / "o.nir", "--calibration", "digits",
                       "--calibration-samples", "5000", "--v-init", "half")
    assert code == 0, err
    code, stdout, err = run(capsys, "evaluate", path, "--data", "digits", "--calibration", "digits",
                            "--calibration-samples", "5000", "--v-init", "half", "--timesteps-list", "1", "--limit", "20")
    assert code == 0, err
    assert "calibration data: digits (training part of the fixed split), 1437 samples" in stdout
    expected = digits_calibration(SHAPE, 5000)
    test_x = digits_test(SHAPE)[0]
    for x in seen:  # every sample the calibration saw, in order: the training part, nothing else
        assert len(x) == len(train_idx) == 1437
        torch.testing.assert_close(x, expected, rtol=0, atol=0)
        torch.testing.assert_close(x[:5], torch.nn.functional.interpolate(
            images[torch.from_numpy(train_idx[:5])], size=(16, 16), mode="bilinear", align_corners=False))
    # by index: the rows are the split's training indices; no test index is among them
    used = set(train_idx[:len(seen[0])].tolist())
    assert used.isdisjoint(test_idx.tolist())
    assert len(test_x) == 360


def test_evaluate_never_calibrates_on_its_data(relu_pt2, tmp_path, capsys):
    """A model that needs calibration data is refused without --calibration (not calibrated on --data)."""
    _, path = relu_pt2
    x, y = digits_test(SHAPE)
    np.savez(tmp_path / "d.npz", x=x[:30].numpy(), y=y[:30].numpy())
    code, _, err = run(capsys, "evaluate", path, "--data", tmp_path / "d.npz")
    assert_one_line_error(code, err, "no trained bound", "--calibration")


@pytest.mark.parametrize("argv, needle", [
    (["evaluate", "MODEL", "--data", "digits", "--calibration-samples", "0"], "--calibration-samples must be >= 1, got 0"),
    (["export", "MODEL", "--to", "nir", "-o", "OUT", "--calibration-samples", "0"], "--calibration-samples must be >= 1"),
    (["export", "MODEL", "--to", "nir", "-o", "OUT", "--timesteps", "0"], "--timesteps must be >= 1, got 0"),
    (["evaluate", "MODEL", "--data", "digits", "--limit", "-3"], "--limit must be >= 1, got -3"),
    (["evaluate", "MODEL", "--data", "digits", "--batch-size", "x"], "--batch-size takes a whole number"),
    (["simulate", "MODEL", "--input", "digits", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["validate", "MODEL", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
])
def test_count_options_are_checked_once_the_same_way(argv, needle, relu_pt2, tmp_path, capsys):
    _, path = relu_pt2
    special = {"MODEL": path, "OUT": tmp_path / "o.nir"}
    code, _, err = run(capsys, *[special.get(a, a) for a in argv])
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "o.nir").exists()


def test_input_shape_message_names_the_shape_the_first_layer_takes(tmp_path, capsys):
    """`--input-shape 16,16` on a 1-channel CNN: the batch is not read as channels; suggest 1,16,16."""
    torch.save(DigitsCNN().state_dict(), tmp_path / "w.pt")
    code, _, err = run(capsys, "export", tmp_path / "w.pt", "--arch", "bridge.model.train:DigitsCNN",
                       "--input-shape", "16,16", "--to", "nir", "-o", tmp_path / "o.nir")
    line = assert_one_line_error(code, err, "[16, 16]", "--input-shape 1,16,16")
    assert "2 channels" not in line and "3,32,32" not in line
    with pytest.raises(BridgeError, match=r"input_shape=\(1, 16, 16\)"):
        bridge.convert(DigitsCNN("clip", channels=(4, 8), hidden=16), (16, 16))


def test_options_that_cannot_apply_are_refused(relu_pt2, tmp_path, capsys):
    _, path = relu_pt2
    clip = DigitsCNN("clip", channels=(4, 8), hidden=16).eval()
    torch.export.save(torch.export.export(clip, (torch.zeros(1, *SHAPE),)), tmp_path / "clip.pt2")
    nir_path = write_graph(bridge.convert(clip, SHAPE), tmp_path / "m.nir")
    np.save(tmp_path / "c.npy", digits_calibration(SHAPE, 16).numpy())
    code, _, err = run(capsys, "export", nir_path, "--calibration", tmp_path / "c.npy", "--timesteps", "4",
                       "--to", "spikingjelly", "-o", tmp_path / "sj")
    assert_one_line_error(code, err, "--calibration", "--timesteps", "NIR file")
    assert not (tmp_path / "sj").exists()
    code, _, err = run(capsys, "evaluate", nir_path, "--data", "digits", "--maxpool", "avg")
    assert_one_line_error(code, err, "--maxpool", "NIR file")
    # a T without calibration would be recorded as "optimised for T" although nothing was fitted
    code, _, err = run(capsys, "export", tmp_path / "clip.pt2", "--timesteps", "4", "--to", "nir", "-o", tmp_path / "o.nir")
    assert_one_line_error(code, err, "--timesteps", "--calibration")
    assert not (tmp_path / "o.nir").exists()
    with pytest.raises(BridgeError, match="timesteps=4 is the T a calibration fits"):
        bridge.convert(clip, SHAPE, timesteps=4)
    code, _, err = run(capsys, "export", tmp_path / "clip.pt2", "--timesteps", "4", "--v-init", "zero",
                       "--calibration", tmp_path / "c.npy", "--to", "nir", "-o", tmp_path / "o.nir")
    assert_one_line_error(code, err, "--v-init zero fixes the initial potential")


def test_plan_is_checked_once():
    plan = ConversionPlan(v_init="0.25")
    assert plan.v_init == 0.25 and plan.conversion_options().v_init == 0.25
    assert ConversionPlan(calibration="digits").conversion_options().channel_wise is True
    assert ConversionPlan(calibration="digits", v_init="half").conversion_options().channel_wise is False
    for bad, pattern in [({"v_init": "sometimes"}, r"unknown v_init 'sometimes' \(--v-init / v_init=\)"),
                         ({"timesteps": 0}, "positive integer"),
                         ({"calibration_samples": 0}, r"--calibration-samples / calibration_samples= must be"),
                         ({"v_init": "optimized", "calibration": "digits"}, "needs --timesteps"),
                         ({"calibration": "digits", "timesteps": 4, "stages": ("half", "magic")}, "magic"),
                         ({"stages": ("half",)}, "need calibration data"),
                         ({"profile": "nope"}, "unknown profile"),
                         ({"thresholds": "p0"}, "unknown threshold source")]:
        with pytest.raises(BridgeError, match=pattern):
            ConversionPlan(**bad)


class _PoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.clamp(self.conv(x), 0, 1)).flatten(1))


def test_evaluate_maxpool_avg_reports_the_ann_before_and_after_the_swap(tmp_path, capsys):
    torch.manual_seed(1)
    model = _PoolNet().eval()
    path = tmp_path / "pool.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, *SHAPE),)), path)
    code, _, err = run(capsys, "evaluate", path, "--data", "digits", "--limit", "40")
    assert_one_line_error(code, err, "--maxpool avg")  # the option evaluate has
    code, stdout, err = run(capsys, "evaluate", path, "--data", "digits", "--limit", "40", "--maxpool", "avg",
                            "--timesteps-list", "1,2", "--json")
    assert code == 0, err
    out = json.loads(stdout)
    x, y = digits_test(SHAPE)
    with torch.no_grad():
        before = float((model(x[:40]).argmax(1) == y[:40]).float().mean())
    graph = bridge.convert(model, SHAPE, maxpool="avg")
    after = float((bridge.ann_view(graph, x[:40].double()).argmax(1) == y[:40]).float().mean())
    assert out["ann_accuracy"] == pytest.approx(before)
    assert out["ann_accuracy_after_maxpool_swap"] == pytest.approx(after)
    assert out["conversion"]["maxpool_replaced"] is True
    code, stdout, err = run(capsys, "evaluate", path, "--data", "digits", "--limit", "40", "--maxpool", "avg",
                            "--timesteps-list", "1")
    assert code == 0, err
    assert "before the MaxPool swap" in stdout and "ANN after --maxpool avg" in stdout


def test_a_fixed_batch_program_runs_at_any_batch_size(tmp_path, capsys):
    """The docs' recipe exported with a batch of 2: evaluate runs it at batch 7 (and a tail of 6)."""
    torch.manual_seed(2)
    model = DigitsCNN("clip", channels=(4, 8), hidden=16).eval()
    path = tmp_path / "b2.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(2, *SHAPE),)), path)
    code, stdout, err = run(capsys, "evaluate", path, "--data", "digits", "--limit", "20", "--batch-size", "7",
                            "--timesteps-list", "1", "--json")
    assert code == 0, err
    out = json.loads(stdout)
    x, y = digits_test(SHAPE)
    with torch.no_grad():
        want = float((model(x[:20]).argmax(1) == y[:20]).float().mean())
    assert out["ann_accuracy"] == pytest.approx(want) and out["ann_source"] == "pytorch model"
    assert not out.get("notes")
    result = run_plan(path, ConversionPlan())
    torch.testing.assert_close(result.ann(x[:5]), model(x[:5]))


def test_export_json_carries_every_calibration_stage(relu_pt2, tmp_path, capsys):
    _, path = relu_pt2
    np.save(tmp_path / "c.npy", digits_calibration(SHAPE, 40).numpy())
    code, stdout, err = run(capsys, "export", path, "--to", "nir", "-o", tmp_path / "o.nir",
                            "--calibration", tmp_path / "c.npy", "--json")
    assert code == 0, err
    out = json.loads(stdout)
    conv = out["conversion"]
    assert conv["calibration_data"] == {"source": "c.npy", "samples": 40}
    stages = conv["calibration"]["stages"]
    assert [s["name"] for s in stages] == ["half"] and "heldout_error" in stages[0]
    assert conv["plan"]["channel_wise"] is True and conv["plan"]["stages"] == ["half"]


def test_progress_view_draws_events_as_log_lines_off_a_terminal():
    from io import StringIO

    from rich.console import Console

    from app.cli.progress_view import ProgressView
    from bridge.format.progress import ProgressEvent

    buf = StringIO()
    console = Console(file=buf, width=200, force_terminal=False)
    with ProgressView(console, log_every=3600) as view:
        for i in range(3):
            view(ProgressEvent("calibration", i, 3, "stages", images=64, detail=f"stage {i}"))
        for i in range(1, 51):
            view(ProgressEvent("joint fit", i, 50, "iterations", images=48))
        view(ProgressEvent("calibration", 3, 3, "stages", images=64, detail="chose joint"))
    lines = buf.getvalue().splitlines()
    assert lines[0] == "calibration: 0/3 stages, 64 images, stage 0"
    assert sum(line.startswith("joint fit:") for line in lines) == 2  # its start and its end, not 50 lines
    assert lines[-1].startswith("calibration: 3/3 stages, 64 images") and "chose joint" in lines[-1]
    live = StringIO()
    with ProgressView(Console(file=live, width=200, force_terminal=True)) as view:
        view(ProgressEvent("joint fit", 10, 50, "iterations", images=48))
        assert view.live and view._bar is not None
        task = view._bar.tasks[0]
        assert (task.description, task.completed, task.total, task.fields["images"]) == ("joint fit", 10, 50, "48 images")


def test_evaluate_reports_the_qcfs_ann_the_user_trained(tmp_path, capsys):
    """A NIR file of a QCFS model: evaluate's ANN row is the staircase network, not its clip twin."""
    from recipes.qcfs_models import MyFloor

    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 6, 3), MyFloor(2.0, 4), nn.Flatten(), nn.Linear(6 * 14 * 14, 10)).eval()
    path = write_graph(bridge.convert(model, SHAPE), tmp_path / "q.nir")
    code, stdout, err = run(capsys, "evaluate", path, "--data", "digits", "--limit", "100", "--timesteps-list", "4",
                            "--json")
    assert code == 0, err
    out = json.loads(stdout)
    x, y = digits_test(SHAPE)
    with torch.no_grad():
        ann = model.double()(x[:100].double())
    torch.testing.assert_close(bridge.ann_view(read_graph(path), x[:100].double()), ann, rtol=0, atol=1e-5)
    assert out["ann_accuracy"] == pytest.approx(float((ann.argmax(1) == y[:100]).double().mean()))


def test_the_time_budget_reaches_the_pipeline_and_bad_budgets_are_one_line(tmp_path, capsys):
    """``--time-budget`` / ``time_budget=`` is the pipeline's budget (recorded in its report), and a
    non-positive one is refused before any work."""
    import numpy as np
    import torch

    from bridge.workflow import ConversionPlan, run_plan
    from tests import zoo
    from tests.cli_helpers import assert_one_line_error, run

    model, shape = zoo.mlp()
    x = zoo.sample_input(shape, n=48)
    result = run_plan(model, ConversionPlan(calibration=x, timesteps=2, time_budget=7.5), shape)
    assert result.report.calibration.budget == 7.5
    assert result.report.to_dict()["plan"]["time_budget"] == 7.5
    pt2 = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model.eval(), (torch.zeros(1, *shape),)), pt2)
    np.save(tmp_path / "c.npy", x.numpy())
    for bad in ("0", "-3", "nan"):
        code, _, err = run(capsys, "export", pt2, "--calibration", tmp_path / "c.npy", "--timesteps", "2",
                           "--time-budget", bad, "--to", "nir", "-o", tmp_path / "out.nir")
        assert_one_line_error(code, err, "--time-budget")
    assert not (tmp_path / "out.nir").exists()
