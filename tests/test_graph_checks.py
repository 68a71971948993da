"""A damaged or nonsensical NIR graph is refused on read, by every command, in one line.

A valid file of the VGG zoo model (conv, pooling, flatten, affine, IF layers) is written at
test time and one HDF5 dataset is changed per case. ``simulate``, ``inspect``, ``evaluate``,
``validate`` and ``export --to spikingjelly/norse`` must all exit 2 with one line naming
the problem, write nothing, and ``inspect`` must flag every file ``simulate`` refuses.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from bridge.converter import convert
from bridge.format.errors import BridgeError
from bridge.format.graph_checks import check_graph
from bridge.format.nirio import read_graph, write_graph
from tests import zoo
from tests.nir_mutate import get_field, set_field

# (case name, dataset, new value or a function of the old value, words the error must hold)
CASES = [
    ("nan threshold", "features_2/v_threshold", lambda v: _put(v, np.nan), "NaN/inf"),
    ("inf threshold", "act_fc/v_threshold", lambda v: _put(v, np.inf), "NaN/inf"),
    ("zero threshold", "features_5/v_threshold", lambda v: _put(v, 0.0), "<= 0"),
    ("negative threshold", "act_fc/v_threshold", lambda v: -v, "<= 0"),
    ("nan weight", "fc1/weight", lambda v: _put(v, np.nan), "weight has 1 NaN/inf"),
    ("inf bias", "features_0/bias", lambda v: _put(v, -np.inf), "bias has 1 NaN/inf"),
    ("nan v_init", "features_10/metadata/bridge/v_init", lambda v: _put(v, np.nan), "v_init"),
    ("nan r", "features_10/r", lambda v: _put(v, np.nan), ": r has 1 NaN/inf"),
    ("bias too short", "fc1/bias", lambda v: v[:-1], "one value per output"),
    ("bias too long", "features_3/bias", lambda v: np.concatenate([v, v]), "one value per output"),
    ("groups zero", "features_3/groups", lambda v: 0, "groups"),
    ("groups negative", "features_3/groups", lambda v: -2, "groups"),
    ("groups not dividing", "features_8/groups", lambda v: 3, "does not divide"),
    ("stride zero", "features_0/stride", lambda v: np.array([0, 1]), "not a readable NIR file"),  # nir itself
    ("dilation zero", "features_3/dilation", lambda v: np.array([1, 0]), "dilation"),
    ("padding negative", "features_0/padding", lambda v: np.array([-1, 1]), "padding"),
    ("pool kernel zero", "features_6/kernel_size", lambda v: np.array([0, 2]), "kernel_size"),
    ("pool padding too big", "features_11/padding", lambda v: np.array([2, 2]), "half the kernel"),
    ("flatten end_dim out of range", "view/end_dim", lambda v: 7, "outside"),
    ("flatten start after end", "view/start_dim", lambda v: 5, "outside"),
    ("flatten that does not fit", "view/start_dim", lambda v: 2, "do not fit together"),
    ("input shape zero", "input/shape", lambda v: np.array([1, 0, 16]), "positive"),
    ("input shape negative", "input/shape", lambda v: np.array([1, -16, 16]), "positive"),
    ("threshold as text", "act_fc/v_threshold", lambda v: "high", "not a readable NIR file"),
    ("weight of the wrong width", "fc1/weight", lambda v: v[:, :-1], "do not fit together"),
    ("IF layer of the wrong size", "act_fc/v_threshold", lambda v: v[:-1], "same shape"),
    ("IF layer that does not fit", "act_fc/metadata/bridge/v_init", lambda v: v[:-1], "v_init has shape"),
    ("conv of the wrong channels", "features_3/weight", lambda v: v[:, :-1], "fit together"),
    ("unknown extension version", "/node/metadata/bridge/version", lambda v: "9.9", "version 9.9"),
]


def _put(v: np.ndarray, value: float) -> np.ndarray:
    v = np.array(v, dtype=np.float64)
    v.reshape(-1)[0] = value
    return v


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Path:
    model, shape = zoo.vgg_bn()
    path = tmp_path_factory.mktemp("valid") / "vgg.nir"
    write_graph(convert(model, shape), path)
    check_graph(read_graph(path))  # the unmodified file passes
    return path


def _mutant(valid: Path, folder: Path, key: str, change) -> Path:
    path = folder / "bad.nir"
    shutil.copyfile(valid, path)
    set_field(path, key, change(get_field(path, key)))
    return path


def run(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case, key, change, words", CASES, ids=[c[0] for c in CASES])
def test_every_command_refuses_the_graph(valid, tmp_path, capsys, case, key, change, words):
    path = _mutant(valid, tmp_path, key, change)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 1, 16, 16), np.float32))
    before = sorted(p.name for p in tmp_path.iterdir())
    commands = [
        ["inspect", path],
        ["simulate", path, "--input", x, "--steps", "2", "--output", tmp_path / "o.npz"],
        ["evaluate", path, "--data", "digits", "--timesteps-list", "2", "--limit", "4"],
        ["validate", path, "--backends", "reference", "--steps", "2", "--limit", "4"],
        ["export", path, "--to", "spikingjelly", "-o", tmp_path / "sj"],
        ["export", path, "--to", "norse", "-o", tmp_path / "norse"],
    ]
    for args in commands:
        code, err = run(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2, (args[0], err)
        assert len(lines) == 1 and lines[0].startswith("bridge: error: "), (args[0], err)
        assert words in lines[0], (args[0], words, lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_python_api_refuses_on_read(valid, tmp_path):
    path = _mutant(valid, tmp_path, "features_3/groups", lambda v: 0)
    with pytest.raises(BridgeError, match="groups must be >= 1"):
        read_graph(path)


def test_an_hdf5_file_that_is_not_nir_says_so(tmp_path, capsys):
    import h5py

    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros(3))
    for args in (["inspect", path], ["simulate", path, "--input", "digits"],
                 ["export", path, "--to", "nir", "-o", tmp_path / "o.nir"],
                 ["export", path, "--to", "norse", "-o", tmp_path / "o"]):
        code, err = run(capsys, *args)
        assert code == 2 and "is an HDF5 file but not a NIR graph" in err, err
        assert "already a NIR file" not in err


def test_inputs_with_nan_are_refused(valid, tmp_path, capsys):
    for name, data in (("x.npy", None), ("x.npz", None), ("x.pt", None)):
        arr = np.zeros((2, 1, 16, 16), np.float32)
        arr[1, 0, 3, 3] = np.nan if name != "x.pt" else np.inf
        path = tmp_path / name
        if name.endswith(".npy"):
            np.save(path, arr)
        elif name.endswith(".npz"):
            np.savez(path, x=arr)
        else:
            import torch

            torch.save(torch.from_numpy(arr), path)
        code, err = run(capsys, "simulate", valid, "--input", path, "--steps", "2")
        assert code == 2 and "1 NaN/inf value(s)" in err and err.count("\n") == 1, err
