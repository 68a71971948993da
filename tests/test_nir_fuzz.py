"""Fuzzing the NIR reader: a few hundred damaged copies of a valid file, zero tracebacks.

A valid NIR file of the VGG zoo model is written at test time; each mutant (fixed seed)
either flips random bytes of the file or changes one HDF5 dataset (a NaN, an inf, a zero,
a negative or random integer, a shorter/longer/reshaped array, text instead of numbers).
For every mutant, ``inspect`` and ``simulate`` (called in-process) must exit 0 or 2 with
one line and no traceback, and ``inspect`` must refuse every file ``simulate`` refuses: a
file inspect accepts runs, with an input of the shape inspect reports.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from bridge.converter import convert
from bridge.format.nirio import write_graph
from tests import zoo
from tests.nir_mutate import datasets, get_field, set_field

SEED = 20240909
BYTE_FLIP_MUTANTS = 100
VALUE_MUTANTS = 200


def _value_mutation(rng: np.random.Generator, old: np.ndarray) -> object:
    """One plausible way a dataset gets damaged or hand-edited."""
    old = np.asarray(old)
    numeric = old.dtype.kind in "fiub"
    kind = rng.integers(11)
    if kind == 0 and numeric and old.size:
        new = old.astype(np.float64).copy()
        new.reshape(-1)[rng.integers(new.size)] = rng.choice([np.nan, np.inf, -np.inf])
        return new
    if kind == 1 and numeric:
        return np.zeros_like(old)
    if kind == 2 and numeric:
        return -np.abs(old) - 1
    if kind == 3:
        return np.asarray(rng.integers(-3, 12), dtype=old.dtype if numeric else np.int64)
    if kind == 4 and old.ndim and old.shape[0] > 1:
        return old[:-1]
    if kind == 5 and old.ndim:
        return np.concatenate([old, old[:1]])
    if kind == 6 and old.ndim > 1:
        return old.reshape(-1)
    if kind == 7 and old.ndim:
        return old.reshape(*old.shape, 1)
    if kind == 8:
        return "garbage"
    if kind == 9 and numeric and old.size:
        return old.astype(np.float64) * rng.choice([1e30, -1.0, 0.5])
    return np.asarray(rng.integers(-2, 40, size=rng.integers(0, 4)))


def _outcome(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _check_clean(code: int, err: str, what: str) -> None:
    assert "Traceback" not in err, (what, err)
    assert code in (0, 2), (what, code, err)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bridge: error: "), (what, err)


def test_fuzzed_nir_files_never_traceback(tmp_path, capsys):
    model, shape = zoo.vgg_bn()
    valid = tmp_path / "valid.nir"
    write_graph(convert(model, shape), valid)
    keys = datasets(valid)
    size = valid.stat().st_size
    rng = np.random.default_rng(SEED)
    counts = {"mutants": 0, "inspect_refused": 0, "ran": 0}
    for i in range(BYTE_FLIP_MUTANTS + VALUE_MUTANTS):
        path = tmp_path / "m.nir"
        shutil.copyfile(valid, path)
        if i < BYTE_FLIP_MUTANTS:
            data = bytearray(path.read_bytes())
            for pos in rng.integers(0, size, size=rng.integers(1, 9)):
                data[pos] ^= 1 << int(rng.integers(8))
            path.write_bytes(bytes(data))
            what = f"mutant {i}: byte flips"
        else:
            key = keys[rng.integers(len(keys))]
            new = _value_mutation(rng, get_field(path, key))
            set_field(path, key, new)
            what = f"mutant {i}: {key} <- {np.asarray(new).dtype} {np.asarray(new).shape}"
        counts["mutants"] += 1

        code_i, out_i, err_i = _outcome(capsys, "inspect", path, "--json")
        _check_clean(code_i, err_i, what + " (inspect)")
        if code_i == 2:
            counts["inspect_refused"] += 1
            x_shape: tuple[int, ...] = (1, 16, 16)
        else:
            nodes = json.loads(out_i)["nodes"]
            x_shape = tuple(next(n for n in nodes if n["type"] == "Input")["input_shape"])
        x = tmp_path / "x.npy"
        np.save(x, np.zeros((2, *x_shape), np.float32))
        code_s, _, err_s = _outcome(capsys, "simulate", path, "--input", x, "--steps", "2")
        _check_clean(code_s, err_s, what + " (simulate)")
        if code_i == 0:  # inspect said fine: simulate must run it
            assert code_s == 0, (what, err_s)
            counts["ran"] += 1
        else:  # inspect refused: simulate refuses too (a damaged HDF5 file may read
            # differently twice, so the words can differ)
            assert code_s == 2, (what, err_i, err_s)
    print(f"NIR fuzz: {counts}")
    # the mutants exercise both paths
    assert counts["inspect_refused"] > 100 and counts["ran"] > 20, counts
