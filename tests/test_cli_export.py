"""`bridge export` end to end on real files: every input format, every bad-input case.

Bad input must give exit code 2, exactly one line on stderr, no traceback, no output file
(and no temp file) left behind, and an existing output untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nir
import numpy as np
import pytest
import torch
from torch import nn

from app.cli import main
from bridge.converter import convert
from bridge.format.extension import if_semantics
from bridge.format.nirio import read_graph
from tests import zoo
from tests.cli_helpers import assert_one_line_error as assert_user_error, run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    # --arch tests.zoo:... imports from the current directory, as a user's package would
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Model files of the zoo in every format (written once for the module)."""
    d = tmp_path_factory.mktemp("models")
    vgg, vgg_shape = zoo.vgg_bn()
    mlp, mlp_shape = zoo.mlp()
    out = {}
    torch.export.save(torch.export.export(vgg, (torch.zeros(1, *vgg_shape),)), d / "vgg.pt2")
    out["pt2"] = d / "vgg.pt2"
    torch.save(vgg.state_dict(), d / "vgg_weights.pt")
    out["state_dict"] = d / "vgg_weights.pt"
    torch.save(mlp, d / "mlp_whole.pt")
    out["pickle"] = d / "mlp_whole.pt"
    torch.jit.save(torch.jit.trace(mlp, torch.zeros(1, *mlp_shape)), d / "mlp_script.pt")
    out["torchscript"] = d / "mlp_script.pt"
    (d / "notes.pt").write_text("these are not weights\n")
    out["not_a_model"] = d / "notes.pt"
    # a model with a layer the converter cannot map
    sig = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Sigmoid(), nn.Linear(8, 2)).eval()
    torch.export.save(torch.export.export(sig, (torch.zeros(1, 1, 8, 8),)), d / "sigmoid.pt2")
    out["unsupported"] = d / "sigmoid.pt2"
    bad, _ = zoo.mlp()
    with torch.no_grad():
        bad.fc2.weight[3, 1] = float("inf")
    torch.save(bad.state_dict(), d / "inf_weights.pt")
    out["inf_weights"] = d / "inf_weights.pt"
    # plain ReLU after a very negative bias: never active on the calibration data
    dead = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    with torch.no_grad():
        dead[1].bias.fill_(-1e3)
    torch.export.save(torch.export.export(dead, (torch.zeros(1, 1, 8, 8),)), d / "dead.pt2")
    out["dead"] = d / "dead.pt2"
    relu_mlp, _ = zoo.mlp(act="relu")
    torch.export.save(torch.export.export(relu_mlp, (torch.zeros(1, *mlp_shape),)), d / "relu_mlp.pt2")
    out["relu_mlp"] = d / "relu_mlp.pt2"
    mp = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 2)).eval()
    torch.export.save(torch.export.export(mp, (torch.zeros(1, 1, 8, 8),)), d / "maxpool.pt2")
    out["maxpool"] = d / "maxpool.pt2"
    np.save(d / "calib.npy", np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32))
    out["calib"] = d / "calib.npy"
    return out


def test_pt2_to_nir_with_summary(files, tmp_path, capsys):
    out = tmp_path / "vgg.nir"
    code, stdout, err = run(capsys, "export", files["pt2"], "--to", "nir", "-o", out)
    assert code == 0, err
    graph = read_graph(out)  # nir's own type checking passes
    model, shape = zoo.vgg_bn()
    expected = convert(model, shape)
    assert sorted(graph.nodes) == sorted(expected.nodes)
    thetas = [np.asarray(n.v_threshold) for n in graph.nodes.values() if isinstance(n, nir.IF)]
    assert len(thetas) == 4
    assert f"{len(graph.nodes)} nodes, 4 IF layers" in stdout and str(out) in stdout
    lo = min(t.min() for t in thetas)
    assert f"thresholds {lo:.4g}" in stdout
    # deterministic: the same model and options give a byte-identical file
    again = tmp_path / "again.nir"
    assert run(capsys, "export", files["pt2"], "--to", "nir", "-o", again)[0] == 0
    assert out.read_bytes() == again.read_bytes()


def test_state_dict_with_arch_gives_the_same_file_as_pt2(files, tmp_path, capsys):
    a, b = tmp_path / "a.nir", tmp_path / "b.nir"
    assert run(capsys, "export", files["pt2"], "--to", "nir", "-o", a)[0] == 0
    code, _, err = run(capsys, "export", files["state_dict"], "--arch", "tests.zoo:vgg_bn",
                       "--to", "nir", "-o", b)
    assert code == 0, err
    ga, gb = nir.read(a), nir.read(b)
    for name, node in ga.nodes.items():
        if isinstance(node, (nir.IF, nir.Conv2d, nir.Affine)):
            for field in ("v_threshold", "weight", "bias"):
                if hasattr(node, field):
                    np.testing.assert_allclose(getattr(gb.nodes[name], field), getattr(node, field),
                                               rtol=0, atol=1e-12)


def test_pickle_is_refused_by_default_and_accepted_with_trust(files, tmp_path, capsys):
    out = tmp_path / "m.nir"
    code, _, err = run(capsys, "export", files["pickle"], "--to", "nir", "-o", out,
                       "--input-shape", "1,8,8")
    assert_user_error(code, err, "arbitrary code", "--trust-pickle")
    assert not out.exists()
    code, _, err = run(capsys, "export", files["pickle"], "--to", "nir", "-o", out,
                       "--input-shape", "1,8,8", "--trust-pickle")
    assert code == 0, err
    assert sum(isinstance(n, nir.IF) for n in read_graph(out).nodes.values()) == 2


def test_torchscript_archive_is_converted(files, tmp_path, capsys):
    out = tmp_path / "ts.nir"
    code, _, err = run(capsys, "export", files["torchscript"], "--to", "nir", "-o", out)
    assert_user_error(code, err, "--input-shape")  # a TorchScript archive has no example input
    code, _, err = run(capsys, "export", files["torchscript"], "--to", "nir", "-o", out,
                       "--input-shape", "1,8,8")
    assert code == 0, err
    graph = read_graph(out)
    theta = sorted(float(np.asarray(n.v_threshold).max()) for n in graph.nodes.values()
                   if isinstance(n, nir.IF))
    assert theta == pytest.approx([0.701, 1.001], abs=1e-6)  # the zoo MLP's clip bounds


def test_calibration_digits_file_and_v_init(files, tmp_path, capsys):
    out = tmp_path / "d.nir"
    code, _, err = run(capsys, "export", files["relu_mlp"], "--to", "nir", "-o", out,
                       "--thresholds", "p99.9", "--calibration", "digits",
                       "--calibration-samples", "100", "--v-init", "0.25")
    assert code == 0, err
    ifs = [n for n in read_graph(out).nodes.values() if isinstance(n, nir.IF)]
    assert len(ifs) == 2
    for node in ifs:
        rule = if_semantics(node)
        np.testing.assert_allclose(rule.v_init, 0.25 * rule.threshold, rtol=1e-12)
    out2 = tmp_path / "f.nir"
    code, _, err = run(capsys, "export", files["relu_mlp"], "--to", "nir", "-o", out2,
                       "--thresholds", "max", "--calibration", files["calib"], "--channel-wise")
    assert code == 0, err
    a, b = (np.asarray([n for n in read_graph(p).nodes.values() if isinstance(n, nir.IF)][0].v_threshold)
            for p in (out, out2))
    assert not np.allclose(a, b)  # different data and statistics give different thresholds
    assert len(np.unique(b)) > 1  # channel-wise: one threshold per feature


def test_maxpool_policy(files, tmp_path, capsys):
    out = tmp_path / "mp.nir"
    code, _, err = run(capsys, "export", files["maxpool"], "--to", "nir", "-o", out,
                       "--calibration", files["calib"])
    assert_user_error(code, err, "--maxpool avg")
    assert not out.exists()
    code, _, err = run(capsys, "export", files["maxpool"], "--to", "nir", "-o", out,
                       "--calibration", files["calib"], "--maxpool", "avg")
    assert code == 0, err
    warned = [line for line in err.strip().splitlines() if line.startswith("bridge: warning:")]
    assert len(warned) == 1 and warned[0].startswith("bridge: warning: replacing 1 max"), err
    assert any(isinstance(n, nir.AvgPool2d) for n in read_graph(out).nodes.values())


BAD_CASES = {
    "missing file": (["MISSING", "--to", "nir"], "no such file"),
    "not a model": (["not_a_model", "--to", "nir"], "not a model file"),
    "pickle without --trust-pickle": (["pickle", "--to", "nir", "--input-shape", "1,8,8"], "--trust-pickle"),
    "state_dict without --arch": (["state_dict", "--to", "nir"], "--arch"),
    "bad --arch": (["state_dict", "--to", "nir", "--arch", "tests.zoo:mlp"], "do not fit"),
    "unsupported layer": (["unsupported", "--to", "nir"], "aten.sigmoid"),
    "inf weights": (["inf_weights", "--to", "nir", "--arch", "tests.zoo:mlp"], "NaN/inf"),
    "dead layer": (["dead", "--to", "nir", "--calibration", "calib"], "never activates"),
    "wrong --input-shape": (["state_dict", "--to", "nir", "--arch", "tests.zoo:vgg_bn",
                             "--input-shape", "1,9,9"], "does not run on an input of shape [1, 9, 9]"),
    "--input-shape vs program": (["pt2", "--to", "nir", "--input-shape", "1,8,8"], "exported for input shape"),
    "bad --input-shape": (["pt2", "--to", "nir", "--input-shape", "a,b"], "not a shape"),
    "bad --v-init": (["pt2", "--to", "nir", "--v-init", "1.5"], "--v-init"),
    "optimized without T": (["pt2", "--to", "nir", "--v-init", "optimized"], "--timesteps"),
    "bad --thresholds": (["pt2", "--to", "nir", "--thresholds", "p200"], "--thresholds"),
    "calibration of the wrong shape": (["pt2", "--to", "nir", "--thresholds", "max", "--calibration",
                                        "calib"], "samples of shape [1, 8, 8]"),
    "missing output folder": (["pt2", "--to", "nir", "-o", "NOFOLDER"], "does not exist"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_one_line_exit_2_and_no_file(case, files, tmp_path, capsys):
    argv, needle = BAD_CASES[case]
    special = {"MISSING": tmp_path / "missing.pt2", "NOFOLDER": tmp_path / "no" / "out.nir"}
    argv = [str(special.get(a, files.get(a, a))) for a in argv]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "out.nir")]
    code, stdout, err = run(capsys, "export", *argv)
    assert_user_error(code, err, *([needle] if needle else []))
    assert sorted(os.listdir(tmp_path)) == []  # no output, no temp file


def test_existing_output_is_untouched_without_force(files, tmp_path, capsys):
    out = tmp_path / "keep.nir"
    out.write_bytes(b"user data")
    code, _, err = run(capsys, "export", files["pt2"], "--to", "nir", "-o", out)
    assert_user_error(code, err, "already exists", "--force")
    assert out.read_bytes() == b"user data"
    assert sorted(os.listdir(tmp_path)) == ["keep.nir"]
    # a failing conversion with --force leaves the old file in place too
    code, _, err = run(capsys, "export", files["unsupported"], "--to", "nir", "-o", out, "--force")
    assert_user_error(code, err, "aten.sigmoid")
    assert out.read_bytes() == b"user data"
    code, _, err = run(capsys, "export", files["pt2"], "--to", "nir", "-o", out, "--force")
    assert code == 0, err
    assert isinstance(read_graph(out), nir.NIRGraph)


def test_nir_file_to_framework_artifacts(files, tmp_path, capsys):
    graph_path = tmp_path / "m.nir"
    assert run(capsys, "export", files["pt2"], "--to", "nir", "-o", graph_path)[0] == 0
    code, _, err = run(capsys, "export", graph_path, "--to", "nir", "-o", tmp_path / "x.nir")
    assert_user_error(code, err, "already a NIR file")
    code, stdout, err = run(capsys, "export", graph_path, "--to", "norse", "-o", tmp_path / "norse_model")
    assert code == 0, err
    assert (tmp_path / "norse_model" / "model.nir").is_file() and "norse" in stdout
    code, _, err = run(capsys, "export", graph_path, "--to", "norse", "-o", tmp_path / "norse_model")
    assert_user_error(code, err, "already exists")


def test_help_lists_examples(capsys):
    code, out, _ = run(capsys, "export", "--help")
    assert code == 0
    for text in ("--to", "--arch", "--trust-pickle", "--calibration", "--v-init", "Examples:",
                 "bridge export model.pt2 --to nir -o model.nir"):
        assert text in out


def test_python_m_bridge_subprocess(files, tmp_path):
    out = tmp_path / "sub.nir"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "bridge", "export", str(files["pt2"]), "--to", "nir",
                           "-o", str(out)], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "4 IF layers" in proc.stdout
    assert sum(isinstance(n, nir.IF) for n in read_graph(out).nodes.values()) == 4
    proc = subprocess.run([sys.executable, "-m", "bridge", "export", str(files["pickle"]), "--to", "nir",
                           "-o", str(tmp_path / "p.nir"), "--input-shape", "1,8,8"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--trust-pickle" in proc.stderr
    assert not (tmp_path / "p.nir").exists()


def test_nir_compat_profile_writes_unit_thresholds(tmp_path):
    """--profile nir-compat: thresholds normalised to 1 (weight normalisation), same ANN view."""
    import numpy as np
    import torch

    from bridge.format.nirio import read_graph
    from bridge.reference import ann_view
    from tests import zoo

    model, shape = zoo.vgg_bn()
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    exact, compat = tmp_path / "exact.nir", tmp_path / "compat.nir"
    base = ["export", str(weights), "--arch", "tests.zoo:vgg_bn", "--input-shape", ",".join(map(str, shape)),
            "--to", "nir"]
    assert main([*base, "-o", str(exact)]) == 0
    assert main([*base, "-o", str(compat), "--profile", "nir-compat"]) == 0
    g_exact, g_compat = read_graph(exact), read_graph(compat)
    thresholds = [n.v_threshold for n in g_compat.nodes.values() if type(n).__name__ == "IF"]
    assert thresholds and all(np.all(t == 1.0) for t in thresholds)
    x = torch.rand(4, *shape, dtype=torch.float64)
    torch.testing.assert_close(ann_view(g_compat, x), ann_view(g_exact, x), rtol=1e-9, atol=1e-9)


def test_profile_is_refused_for_framework_targets(tmp_path, capsys):
    src = tmp_path / "m.pt"
    src.write_bytes(b"x")
    assert main(["export", str(src), "--to", "norse", "-o", str(tmp_path / "o"), "--profile", "nir-compat"]) == 2
    assert "--profile applies to --to nir" in capsys.readouterr().err


def test_calibration_pipeline_is_the_default_with_calibration_data(files, tmp_path, capsys):
    """--calibration DATA --timesteps T runs the pipeline for T and prints its choice and cost;
    without --timesteps the setting for every T."""
    out = tmp_path / "p.nir"
    code, stdout, err = run(capsys, "export", files["relu_mlp"], "--to", "nir", "-o", out,
                            "--calibration", files["calib"], "--timesteps", "2")
    assert code == 0, err
    assert "calibration for T=2: chose" in stdout and "40 images (20 held out)" in stdout
    graph = read_graph(out)
    from bridge.format.extension import graph_semantics

    assert graph_semantics(graph).timesteps == 2
    ths = [np.asarray(n.v_threshold) for n in graph.nodes.values() if isinstance(n, nir.IF)]
    assert len(np.unique(ths[0])) > 1  # per-channel thresholds by default in the pipeline
    out2 = tmp_path / "q.nir"
    code, stdout, err = run(capsys, "export", files["relu_mlp"], "--to", "nir", "-o", out2,
                            "--calibration", files["calib"])
    assert code == 0, err
    assert "calibration for any T (1..64): chose" in stdout
    assert graph_semantics(read_graph(out2)).timesteps is None
