"""Malformed inputs, every command: exit 2, one line, no traceback, nothing left behind.

Everything is generated at test time (no committed binaries). Categories: labels and data
sets, options, paths that are not regular files, damaged model files, environment failures
(read-only folders, file-size limits, signals) and messages that must name the right cause.
Graph damage is covered by tests/test_graph_checks.py and tests/test_nir_fuzz.py, code
execution by tests/test_model_safety.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.cli import main
from bridge.converter import convert
from bridge.format.nirio import write_graph
from tests import zoo
from tests.cli_helpers import assert_one_line_error as assert_one_line, run


@pytest.fixture(scope="module")
def mlp_nir(tmp_path_factory) -> Path:
    """The zoo MLP (input (1, 8, 8), 10 outputs) as a NIR file."""
    return zoo.write_mlp_nir(tmp_path_factory.mktemp("mlp") / "mlp.nir")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


# --- labels and data sets ------------------------------------------------------------------

LABEL_CASES = [
    ("out of range", np.zeros((3, 1, 8, 8), np.float32), np.array([0, 1, 10]), "go up to 10"),
    ("negative", np.zeros((3, 1, 8, 8), np.float32), np.array([0, -1, 2]), "include -1"),
    ("float", np.zeros((3, 1, 8, 8), np.float32), np.array([0.0, 1.0, 2.0]), "float64"),
    ("2-D one-hot", np.zeros((3, 1, 8, 8), np.float32), np.eye(3, 10, dtype=np.int64), "one-hot"),
    ("empty", np.zeros((0, 1, 8, 8), np.float32), np.zeros(0, np.int64), "no samples"),
    ("count mismatch", np.zeros((3, 1, 8, 8), np.float32), np.array([0, 1]), "y 2"),
    ("nan images", np.full((2, 1, 8, 8), np.nan, np.float32), np.array([0, 1]), "NaN/inf"),
]


@pytest.mark.parametrize("case, x, y, words", LABEL_CASES, ids=[c[0] for c in LABEL_CASES])
def test_bad_labels_and_data_are_refused(mlp_nir, tmp_path, capsys, case, x, y, words):
    data = tmp_path / "d.npz"
    np.savez(data, x=x, y=y)
    before = snapshot(tmp_path)
    for args in (["evaluate", mlp_nir, "--data", data, "--timesteps-list", "2"],
                 ["validate", mlp_nir, "--backends", "reference", "--data", data, "--steps", "2",
                  "--report", tmp_path / "rep"]):
        code, _, err = run(capsys, *args)
        assert_one_line(code, err, words)
    assert snapshot(tmp_path) == before


def test_negative_tie_epsilon_is_refused(mlp_nir, capsys):
    for value in ("-1e-9", "nan", "inf"):
        code, _, err = run(capsys, "validate", mlp_nir, "--backends", "reference", "--steps", "2",
                           "--limit", "4", "--tie-epsilon", value)
        assert_one_line(code, err, "--tie-epsilon")


def test_imagefolder_syntax_is_accepted(mlp_nir, tmp_path, capsys):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 40 if label == "a" else 200, np.uint8)).save(
            tmp_path / "imgs" / label / "0.png")
    code, out, err = run(capsys, "evaluate", mlp_nir, "--data", f"imagefolder:{tmp_path / 'imgs'}",
                         "--timesteps-list", "2", "--json")
    assert code == 0, err
    assert '"samples": 2' in out
    code, _, err = run(capsys, "evaluate", mlp_nir, "--data", f"imagefolder:{tmp_path / 'none'}",
                       "--timesteps-list", "2")
    assert_one_line(code, err, "is not a folder")


# --- the environment: where outputs go, how big they get, signals ---------------------------

def _bad_destinations(tmp_path: Path, suffix: str) -> list[tuple[Path, str]]:
    (tmp_path / "a_file").write_text("I am a file")
    return [
        (Path("/sys") / f"out{suffix}", "cannot write"),  # read-only (sysfs), even for root
        (tmp_path / "a_file" / f"out{suffix}", "is a file, not a folder"),
        (tmp_path / ("n" * 300 + suffix), "file name too long"),
        (tmp_path / "missing" / "deeper" / f"out{suffix}", "does not exist"),
        (tmp_path, "is a directory" if suffix else "already exists"),
    ]


def test_outputs_that_cannot_be_written(mlp_nir, tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 1, 8, 8), np.float32))
    for dest, words in _bad_destinations(tmp_path, ".npz"):
        before = snapshot(tmp_path)
        for flag in ("--output", "--trace"):
            code, _, err = run(capsys, "simulate", mlp_nir, "--input", x, "--steps", "2", flag, dest)
            assert_one_line(code, err, words)
        assert snapshot(tmp_path) == before
    for dest, words in _bad_destinations(tmp_path, ".nir"):
        code, _, err = run(capsys, "export", mlp_nir, "--to", "nir", "-o", dest)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for dest, words in _bad_destinations(tmp_path, ""):
        before = snapshot(tmp_path)
        code, _, err = run(capsys, "export", mlp_nir, "--to", "norse", "-o", dest)
        assert_one_line(code, err, words)
        if dest != tmp_path:  # an existing folder is a valid report folder
            code, _, err = run(capsys, "validate", mlp_nir, "--backends", "reference", "--steps",
                               "2", "--limit", "2", "--report", dest / "report")
            assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert snapshot(tmp_path) == before


def test_steps_that_cannot_fit_in_memory_are_refused_before_running(mlp_nir, capsys):
    for args in (["simulate", mlp_nir, "--input", "digits", "--steps", "1000000000000"],
                 ["simulate", mlp_nir, "--input", "digits", "--steps", "100000000000", "--trace",
                  "/tmp/never.npz"],
                 ["evaluate", mlp_nir, "--data", "digits", "--timesteps-list", "1,1000000000000"],
                 ["validate", mlp_nir, "--backends", "reference", "--steps", "1000000000000"]):
        code, _, err = run(capsys, *args)
        assert_one_line(code, err, "of memory", "available")
    assert not Path("/tmp/never.npz").exists()


_FSIZE_LIMIT = 20_000  # bytes: the NIR file fits, the outputs below do not


def _limit_file_size() -> None:
    import resource
    import signal

    resource.setrlimit(resource.RLIMIT_FSIZE, (_FSIZE_LIMIT, _FSIZE_LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # as CPython does; the write gets EFBIG


@pytest.mark.slow
def test_a_file_size_limit_is_one_line_and_leaves_nothing(tmp_path):
    import subprocess
    import sys

    import torch

    model, shape = zoo.vgg_bn()
    pt2 = tmp_path / "vgg.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, *shape),)), pt2)
    vgg_nir = tmp_path / "vgg.nir"
    write_graph(convert(model, shape), vgg_nir)
    before = snapshot(tmp_path)
    for args in (["export", pt2, "--to", "nir", "-o", tmp_path / "o.nir"],
                 ["export", vgg_nir, "--to", "norse", "-o", tmp_path / "o_norse"],
                 ["simulate", vgg_nir, "--input", "digits", "--steps", "4", "--trace", tmp_path / "t.npz"]):
        proc = subprocess.run([sys.executable, "-m", "bridge", *map(str, args)], capture_output=True,
                              text=True, preexec_fn=_limit_file_size, timeout=300,
                              cwd=Path(__file__).resolve().parents[1])
        assert proc.returncode == 2, (args[0], proc.returncode, proc.stderr[-2000:])
        assert_one_line(proc.returncode, proc.stderr, "file too large")
        assert snapshot(tmp_path) == before, args


_PAUSING_WRITER = r'''
import os, pathlib, sys, time
import numpy as np

ready = pathlib.Path(sys.argv[1])
original_write_bytes = pathlib.Path.write_bytes
original_savez = np.savez


def pause():  # the temporary output exists now: tell the test, then wait to be killed
    ready.write_text("writing")
    time.sleep(120)


def write_bytes(self, data):
    n = original_write_bytes(self, data)
    if ".bridge-tmp-" in str(self):
        pause()
    return n


def savez(f, **arrays):
    original_savez(f, **arrays)
    pause()


pathlib.Path.write_bytes = write_bytes
np.savez = savez
from app.cli import main
sys.exit(main(sys.argv[2:]))
'''


def _interrupted_run(tmp_path: Path, args: list, signum: int) -> tuple[int, str]:
    import subprocess
    import sys
    import time

    ready = tmp_path / "ready.flag"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", _PAUSING_WRITER, str(ready), *map(str, args)],
                            stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the writer never started"
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    ready.unlink()
    return proc.returncode, err


@pytest.mark.slow
@pytest.mark.parametrize("target", ["nir", "spikingjelly", "trace"])
def test_signals_during_a_write_keep_the_old_output_and_leave_no_temp_file(mlp_nir, tmp_path, target):
    import signal

    out = tmp_path / ("out.nir" if target == "nir" else "out.npz" if target == "trace" else "out_sj")
    if target == "spikingjelly":
        out.mkdir()
        (out / "old.txt").write_text("the previous export")
    else:
        out.write_bytes(b"the previous output")
    args = (["simulate", mlp_nir, "--input", "digits", "--steps", "2", "--trace", out, "--force"]
            if target == "trace" else ["export", mlp_nir, "--to", target, "-o", out, "--force"])
    if target == "nir":  # export --to nir needs a model, not a NIR file: use the PyTorch one
        import torch

        model, shape = zoo.mlp()
        pt2 = tmp_path / "mlp.pt2"
        torch.export.save(torch.export.export(model, (torch.zeros(1, *shape),)), pt2)
        args[1] = pt2
    before = snapshot(tmp_path)
    for signum, code in ((signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)):
        rc, err = _interrupted_run(tmp_path, args, signum)
        assert rc == code, err
        assert "Traceback" not in err and "nothing was written" in err, err
        assert snapshot(tmp_path) == before  # old output intact, no temp file
    # SIGKILL cannot be caught: the temp file stays until the next run sweeps it
    rc, _ = _interrupted_run(tmp_path, args, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert any(".bridge-tmp-" in p.name for p in tmp_path.iterdir())
    assert main([str(a) for a in args]) == 0
    assert not any(".bridge-tmp-" in p.name for p in tmp_path.rglob("*"))


# --- messages that name the right cause ------------------------------------------------------

def test_folders_and_fifos_are_named_as_such(mlp_nir, tmp_path, capsys):
    import os

    model, shape = zoo.mlp(act="relu")
    pt2 = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, *shape),)), pt2)

    folder = tmp_path / "folder.pt2"
    folder.mkdir()
    fifo = tmp_path / "pipe.pt2"
    os.mkfifo(fifo)
    for path, words in ((folder, "directory"), (fifo, "not a regular file")):
        for args in (["export", path, "--to", "nir", "-o", tmp_path / "o.nir"],
                     ["evaluate", path, "--data", "digits"],
                     ["inspect", path],
                     ["simulate", path, "--input", "digits"],
                     ["validate", path],
                     ["simulate", mlp_nir, "--input", path],
                     *([["evaluate", mlp_nir, "--data", path]] if path == fifo else []),
                     ["export", "--calibration", path, "--thresholds", "p99", pt2, "--to",
                      "nir", "-o", tmp_path / "o.nir"]):
            code, _, err = run(capsys, *args)
            line = assert_one_line(code, err)
            assert words in line and "no such file" not in line, (args, line)


def test_a_truncated_pt2_is_called_truncated(tmp_path, capsys):
    import torch

    model, shape = zoo.mlp()
    whole = tmp_path / "whole.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, *shape),)), whole)
    data = whole.read_bytes()
    for cut in (len(data) // 3, len(data) - 30, 200):
        path = tmp_path / f"cut{cut}.pt2"
        path.write_bytes(data[:cut])
        for args in (["export", path, "--to", "nir", "-o", tmp_path / "o.nir"],
                     ["evaluate", path, "--data", "digits"]):
            code, _, err = run(capsys, *args)
            line = assert_one_line(code, err, "truncated or corrupt torch.export archive")
            assert "pickled Python object" not in line and "--trust-pickle" not in line


def test_nan_in_calibration_data_is_named(tmp_path, capsys):
    import torch

    model, shape = zoo.mlp(act="relu")
    pt2 = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, *shape),)), pt2)
    calib = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
    calib[3, 0, 2, 2] = np.inf
    np.save(tmp_path / "c.npy", calib)
    code, _, err = run(capsys, "export", pt2, "--calibration", tmp_path / "c.npy", "--to", "nir",
                       "-o", tmp_path / "o.nir")
    line = assert_one_line(code, err, "NaN/inf")
    assert "dead" not in line and "percentile" not in line


class TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fc(a + b)


def test_a_model_with_two_inputs_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # tests.* importable for unpickling
    path = tmp_path / "two.pt2"
    torch.export.save(torch.export.export(TwoInputs(), (torch.zeros(1, 4), torch.zeros(1, 4))), path)
    torch.save(TwoInputs(), tmp_path / "two_whole.pt")
    for args in (["export", path, "--to", "nir", "-o", tmp_path / "o.nir"],
                 ["export", path, "--input-shape", "4", "--to", "nir", "-o", tmp_path / "o.nir"],
                 ["export", tmp_path / "two_whole.pt", "--trust-pickle", "--input-shape", "4",
                  "--to", "nir", "-o", tmp_path / "o.nir"]):
        code, _, err = run(capsys, *args)
        assert_one_line(code, err, "2 inputs", "one input")


def test_usage_errors_are_one_line(mlp_nir, capsys):
    for args in (["simulate", mlp_nir], ["simulate", mlp_nir, "--input", "digits", "--steps", "x"],
                 ["export", mlp_nir], ["nonsense"], ["validate", mlp_nir, "--dtype", "float16"]):
        code, _, err = run(capsys, *args)
        assert_one_line(code, err)


class LoopingScript(torch.nn.Module):
    """A network PyTorch's TorchScript-to-export converter cannot convert (a prim::Loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.jit.annotate(list[torch.Tensor], [])
        for i in range(x.size(0)):
            out.append(self.fc(x[i:i + 1]))
        return torch.clamp(torch.cat(out), 0, 1)


def test_torchscript_conversion_failure_prints_only_its_line(tmp_path, capfd):
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(LoopingScript()), path)
    code = main(["export", str(path), "--input-shape", "4", "--to", "nir", "-o", str(tmp_path / "o.nir")])
    err = capfd.readouterr().err  # file-descriptor level: logging and C++ output included
    assert_one_line(code, err, "could not convert the TorchScript archive", "torch.export.save")
    assert not (tmp_path / "o.nir").exists()
