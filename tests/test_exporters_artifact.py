"""Exported artifacts: written atomically, loadable without bridge, same outputs as the reference."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import nir
import numpy as np
import pytest
import torch

from bridge.format.errors import BridgeError
from bridge.format.extension import graph_metadata
from bridge.reference import simulate
from exporters import write_artifact
from tests.test_exporters import make_input, resnet_graph, vgg_graph

EXPORTERS = Path(__file__).resolve().parents[1] / "exporters"

# Run in a fresh interpreter where bridge cannot be imported: -I (no PYTHONPATH, no cwd or
# script dir on sys.path, no user site) and -S (no site-packages .pth files, so the editable
# install's finder is never installed); the venv's site-packages are added as a plain path
# so that torch, nir and the frameworks import.
_CHILD = r"""
import importlib.util, sys
sys.path.append({site!r})
for hidden in ("bridge", "exporters", "validation"):
    assert importlib.util.find_spec(hidden) is None, hidden + " is importable"
try:
    import bridge
except ImportError:
    pass
else:
    raise SystemExit("import bridge worked")
import torch
sys.path.insert(0, {folder!r})
import model
net = model.load({load_args})
x = torch.load({x!r}, weights_only=True)
with torch.no_grad():
    out = net.simulate(x, {steps})
torch.save({{"outputs": out, "readout": net.predict(x, {steps}),
            "modules": sorted(m for m in sys.modules if m.split(".")[0] in
                              ("bridge", "exporters", "validation"))}}, {result!r})
"""


def _run_without_bridge(folder: Path, x: torch.Tensor, steps: int, tmp: Path, load_args: str = "") -> dict:
    torch.save(x, tmp / "x.pt")
    code = _CHILD.format(site=sysconfig.get_paths()["purelib"], folder=str(folder),
                         x=str(tmp / "x.pt"), steps=steps, result=str(tmp / "result.pt"),
                         load_args=load_args)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp / "result.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("target,load_args", [("spikingjelly", ""), ("spikingjelly", "step_mode='s'"),
                                              ("norse", "")])
def test_artifact_runs_without_bridge_like_the_reference(tmp_path: Path, target: str, load_args: str) -> None:
    graph = resnet_graph("neuron", "random", seed=5)
    folder = write_artifact(graph, target, tmp_path / "model_out")
    x = make_input(graph, batch=4, seed=6)
    ref = simulate(graph, x, 32)
    got = _run_without_bridge(folder, x, 32, tmp_path, load_args)
    assert got["modules"] == []
    assert torch.equal(got["outputs"], ref.outputs)  # float64: bit for bit
    assert torch.equal(got["readout"].argmax(1), ref.predictions())


@pytest.mark.parametrize("target", ["spikingjelly", "norse"])
def test_artifact_contents(tmp_path: Path, target: str) -> None:
    graph = vgg_graph("channel", "half")
    out = write_artifact(graph, target, tmp_path / "exported")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.nir", "model.py",
                                                     "spec.json", "tensors.pt"]
    # the artifact runs the very code that build() runs in-process
    runtime = EXPORTERS / f"runtime_{target}.py"
    assert (out / "model.py").read_bytes() == runtime.read_bytes()
    assert "import bridge" not in runtime.read_text() and "from bridge" not in runtime.read_text()
    tensors = torch.load(out / "tensors.pt", weights_only=True)
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    np.testing.assert_array_equal(tensors["features_2.threshold"].numpy(),
                                  graph.nodes["features_2"].v_threshold)
    spec = json.loads((out / "spec.json").read_text())
    assert [n["name"] for n in spec["nodes"]][0] == "input" and spec["readout"] == "mean"
    readme = (out / "README.md").read_text()
    assert f'sys.path.insert(0, "{out.resolve()}"); import model' in readme
    assert "net = model.load(); y = net.predict(x, steps=" in readme
    again = nir.read(out / "model.nir")
    assert set(again.nodes) == set(graph.nodes)
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no temp folder left


def test_artifact_refuses_existing_folder_unless_force(tmp_path: Path) -> None:
    graph = vgg_graph("uniform", "zero")
    out = tmp_path / "sj"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(BridgeError, match="already exists.*--force"):
        write_artifact(graph, "spikingjelly", out)
    assert (out / "keep.txt").read_text() == "user data"
    write_artifact(graph, "spikingjelly", out, force=True)
    assert not (out / "keep.txt").exists() and (out / "model.py").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sj"]


def test_artifact_errors_leave_nothing_behind(tmp_path: Path) -> None:
    lif = nir.LIF(tau=np.ones(3), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3))
    graph = nir.NIRGraph({"input": nir.Input(np.array([3])), "cell": lif, "output": nir.Output(np.array([3]))},
                         [("input", "cell"), ("cell", "output")], metadata=graph_metadata())
    with pytest.raises(BridgeError, match="'cell'.*LIF"):
        write_artifact(graph, "norse", tmp_path / "out")
    with pytest.raises(BridgeError, match="unknown export target 'onnx'"):
        write_artifact(vgg_graph("uniform", "zero"), "onnx", tmp_path / "out")  # type: ignore[arg-type]
    with pytest.raises(BridgeError, match="does not exist"):
        write_artifact(vgg_graph("uniform", "zero"), "norse", tmp_path / "missing" / "out")
    assert list(tmp_path.iterdir()) == []
