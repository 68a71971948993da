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

from bridge.cli import main
from bridge.converter import convert
from bridge.nirio import write_graph
from tests import zoo


@pytest.fixture(scope="module")
def mlp_nir(tmp_path_factory) -> Path:
    """The zoo MLP (input (1, 8, 8), 10 outputs) as a NIR file."""
    model, shape = zoo.mlp()
    path = tmp_path_factory.mktemp("mlp") / "mlp.nir"
    write_graph(convert(model, shape), path)
    return path


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line(code: int, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("bridge: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


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
    for args in (["evaluate", mlp_nir, "--data", data, "--steps", "2"],
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
                         "--steps", "2", "--json")
    assert code == 0, err
    assert '"samples": 2' in out
    code, _, err = run(capsys, "evaluate", mlp_nir, "--data", f"imagefolder:{tmp_path / 'none'}",
                       "--steps", "2")
    assert_one_line(code, err, "is not a folder")
