"""No file bridge reads can run code: model archives, calibration files and data sets.

Every payload below creates a marker file when it is unpickled or evaluated. Each is first
shown to be live (PyTorch's own loader runs it), then fed to every command that reads such
a file: the command must exit 2 with one line naming the member and ``--trust-pickle``,
and the marker must never appear.
"""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bridge.format.errors import BridgeError
from bridge.model.loading import load_model
from tests import zoo
from tests.cli_helpers import assert_one_line_error as assert_refused, run
from tests.pt2_tamper import (
    VECTORS,
    MarkerPayload,
    members,
    pt2_bytes,
    rezip,
    tampered_pt2,
    torch_save_bytes,
)

REPO = Path(__file__).resolve().parents[1]
# vectors whose payload torch.export.load itself runs (the others are refused on principle:
# custom objects, guard code and compiled code are never needed to convert a network)
LIVE_IN_TORCH = ("sample_inputs", "sample_inputs_raw_pickle", "pickled_weight",
                 "pickled_constant", "opaque_obj", "legacy_weights", "shape_expression")


@pytest.fixture(scope="module")
def valid_pt2() -> bytes:
    model, shape = zoo.mlp()
    return pt2_bytes(model, shape)


@pytest.fixture(scope="module")
def nir_file(tmp_path_factory) -> Path:
    return zoo.write_mlp_nir(tmp_path_factory.mktemp("nir") / "mlp.nir")


@pytest.mark.parametrize("vector", LIVE_IN_TORCH)
def test_each_payload_is_live_in_torch_export_load(valid_pt2, vector, tmp_path):
    """The payloads are real: PyTorch's own loader runs them (so the refusals below matter)."""
    marker = tmp_path / "ran"
    data = tampered_pt2(valid_pt2, vector, marker)
    try:
        torch.export.load(io.BytesIO(data))
    except Exception:
        pass  # several payloads break the program after they ran
    assert marker.exists()


@pytest.mark.parametrize("vector", VECTORS)
def test_tampered_pt2_is_refused_by_the_python_api(valid_pt2, vector, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "model.pt2"
    path.write_bytes(tampered_pt2(valid_pt2, vector, marker))
    with pytest.raises(BridgeError) as err:
        load_model(path)
    msg = str(err.value)
    assert "--trust-pickle" in msg and "member '" in msg and "\n" not in msg
    assert not marker.exists()


@pytest.mark.parametrize("vector", VECTORS)
def test_tampered_pt2_is_refused_by_export_and_evaluate(valid_pt2, vector, tmp_path, capsys):
    marker = tmp_path / "ran"
    path = tmp_path / "model.pt2"
    path.write_bytes(tampered_pt2(valid_pt2, vector, marker))
    out = tmp_path / "out.nir"
    for args in (["export", path, "--to", "nir", "-o", out],
                 ["export", path, "--to", "spikingjelly", "-o", tmp_path / "sj"],
                 ["evaluate", path, "--data", "digits", "--timesteps-list", "2"]):
        code, _, err = run(capsys, *args)
        assert_refused(code, err, "--trust-pickle")
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2"]  # nothing written


def test_tampered_pt2_in_a_subprocess(valid_pt2, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "model.pt2"
    path.write_bytes(tampered_pt2(valid_pt2, "sample_inputs", marker))
    proc = subprocess.run([sys.executable, "-m", "bridge", "export", str(path), "--to", "nir",
                           "-o", str(tmp_path / "o.nir")], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "data/sample_inputs/model.pt" in proc.stderr and "--trust-pickle" in proc.stderr
    assert not marker.exists() and not (tmp_path / "o.nir").exists()


def test_valid_programs_still_load_including_a_dynamic_batch(valid_pt2, tmp_path):
    path = tmp_path / "ok.pt2"
    path.write_bytes(valid_pt2)
    assert load_model(path).input_shape == (1, 8, 8)
    model, shape = zoo.mlp()
    batch = torch.export.Dim("batch", min=2)
    ep = torch.export.export(model, (torch.zeros(3, *shape),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, tmp_path / "dyn.pt2")
    assert load_model(tmp_path / "dyn.pt2").program is not None  # symbolic shapes are sympy


def test_trust_pickle_is_the_explicit_opt_in(valid_pt2, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "model.pt2"
    path.write_bytes(tampered_pt2(valid_pt2, "pickled_constant", marker))
    load_model(path, trust_pickle=True)  # the user vouched for the file: torch runs it
    assert marker.exists()


def test_a_member_stored_twice_is_refused(valid_pt2, tmp_path):
    """Zip readers disagree on which copy of a duplicated name they read: refuse it."""
    marker = tmp_path / "ran"
    items = members(valid_pt2)
    key = next(k for k in items if k.endswith("sample_inputs/model.pt"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        for name, content in items.items():
            z.writestr(name, content)
        z.writestr(key, torch_save_bytes(MarkerPayload(marker)))
    path = tmp_path / "m.pt2"
    path.write_bytes(buf.getvalue())
    with pytest.raises(BridgeError, match="duplicate or inconsistent"):
        load_model(path)
    assert not marker.exists()


# --- TorchScript and torch.save ------------------------------------------------------------

def _torchscript_bytes() -> bytes:
    model, shape = zoo.mlp()
    buf = io.BytesIO()
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, *shape)), buf)
    return buf.getvalue()


@pytest.mark.parametrize("member", ["constants.pkl", "data.pkl"])
def test_torchscript_with_a_foreign_pickle_global_is_refused(member, tmp_path, capsys):
    marker = tmp_path / "ran"
    items = members(_torchscript_bytes())
    key = next(k for k in items if k.endswith("/" + member))
    items[key] = pickle.dumps(MarkerPayload(marker), protocol=2)
    path = tmp_path / "ts.pt"
    path.write_bytes(rezip(items))
    code, _, err = run(capsys, "export", path, "--input-shape", "1,8,8", "--to", "nir",
                       "-o", tmp_path / "o.nir")
    assert_refused(code, err, member, "open", "--trust-pickle")
    assert not marker.exists()


def test_torchscript_with_setstate_is_refused(tmp_path):
    class WithState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

        @torch.jit.export
        def __getstate__(self) -> int:
            return 1

        @torch.jit.export
        def __setstate__(self, state: int) -> None:
            self.fc.weight.data.fill_(state)

    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(WithState()), path)
    with pytest.raises(BridgeError, match="__setstate__.*--trust-pickle"):
        load_model(path)


def test_pickled_state_dict_payload_never_runs(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = tmp_path / "weights.pt"
    path.write_bytes(torch_save_bytes({"fc1.weight": MarkerPayload(marker)}))
    code, _, err = run(capsys, "export", path, "--arch", "tests.zoo:mlp", "--to", "nir",
                       "-o", tmp_path / "o.nir")
    assert_refused(code, err, "(io.open)", "--trust-pickle")
    assert not marker.exists()


# --- calibration and data files -----------------------------------------------------------

def _evil_data_files(folder: Path, marker: Path) -> dict[str, Path]:
    payload = np.empty(2, dtype=object)
    payload[0] = MarkerPayload(marker)
    payload[1] = 1.0
    files = {
        "pt": folder / "evil.pt",
        "npy": folder / "evil.npy",
        "npz": folder / "evil.npz",
    }
    files["pt"].write_bytes(torch_save_bytes({"x": MarkerPayload(marker)}))
    np.save(files["npy"], payload, allow_pickle=True)
    np.savez(files["npz"], x=payload, y=payload)
    cifar = folder / "cifar"
    cifar.mkdir()
    (cifar / "test_batch").write_bytes(pickle.dumps({b"data": MarkerPayload(marker), b"labels": [0]}))
    files["cifar"] = cifar
    return files


def test_data_files_never_run_code(valid_pt2, nir_file, tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = _evil_data_files(tmp_path, marker)
    model = tmp_path / "ok.pt2"
    model.write_bytes(valid_pt2)
    cases = [
        *(["simulate", nir_file, "--input", evil[k], "--steps", "2"] for k in ("pt", "npy", "npz")),
        *(["export", model, "--thresholds", "p99", "--calibration", evil[k], "--to", "nir",
           "-o", tmp_path / "o.nir"] for k in ("pt", "npy", "npz")),
        ["evaluate", nir_file, "--data", evil["npz"], "--timesteps-list", "2"],
        ["evaluate", nir_file, "--data", f"cifar10:{evil['cifar']}", "--timesteps-list", "2"],
        ["evaluate", model, "--data", f"cifar10:{evil['cifar']}", "--timesteps-list", "2"],
        ["validate", nir_file, "--backends", "reference", "--data", evil["npz"], "--steps", "2"],
        ["validate", nir_file, "--backends", "reference", "--data", evil["cifar"], "--steps", "2"],
    ]
    for args in cases:
        code, _, err = run(capsys, *args)
        line = assert_refused(code, err)
        assert "pickle" in line.lower() or "object" in line.lower() or "refused" in line, line
    assert not marker.exists()
    assert not (tmp_path / "o.nir").exists()
