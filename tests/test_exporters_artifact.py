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
from exporters.artifact import module_name
from tests.test_exporters import make_input, resnet_graph, vgg_graph

EXPORTERS = Path(__file__).resolve().parents[1] / "exporters"

TARGETS = ("spikingjelly", "norse", "snntorch", "sinabs")


def readme_code(folder: Path) -> str:
    """The Python block of an artifact's README (the loader and the predict line)."""
    text = (folder / "README.md").read_text()
    return text.split("```python\n", 1)[1].split("\n```", 1)[0]


def run_readme(folder: Path, x: torch.Tensor) -> dict:
    """Execute the README's block as a user would, with ``x`` defined; its namespace."""
    namespace = {"x": x}
    exec(readme_code(folder), namespace)  # noqa: S102 - our own README, written by the test
    return namespace


# Run in a fresh interpreter where bridge cannot be imported: -I (no PYTHONPATH, no cwd or
# script dir on sys.path, no user site) and -S (no site-packages .pth files, so the editable
# install's finder is never installed); the venv's site-packages are added as a plain path
# so that torch, nir and the frameworks import. Every folder is loaded with its README's own
# code, all in this one process (side by side), on a float32 x.
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
x = torch.load({x!r}, weights_only=True)
results = {{}}
for target, folder in {folders!r}:
    text = open(folder + "/README.md").read()
    namespace = {{"x": x}}
    exec(text.split("```python\n", 1)[1].split("\n```", 1)[0], namespace)
    net = namespace["net"]
    with torch.no_grad():
        results[target] = {{"outputs": net.simulate(x, {steps}), "readout": namespace["y"],
                            "class": type(net).__module__ + "." + type(net).__name__}}
    if target == "spikingjelly":
        results["spikingjelly-s"] = {{"outputs": namespace["model"].load(step_mode="s").simulate(x, {steps})}}
results["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("bridge", "exporters", "validation", "samna"))
torch.save(results, {result!r})
"""


def _run_without_bridge(folders: dict[str, Path], x: torch.Tensor, steps: int, tmp: Path) -> dict:
    torch.save(x, tmp / "x.pt")
    code = _CHILD.format(site=sysconfig.get_paths()["purelib"], folders=[(t, str(f)) for t, f in folders.items()],
                         x=str(tmp / "x.pt"), steps=steps, result=str(tmp / "result.pt"))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp / "result.pt", weights_only=True)


@pytest.mark.slow
def test_artifacts_run_without_bridge_side_by_side_like_the_reference(tmp_path: Path) -> None:
    """All four artifacts in one fresh process without bridge, each loaded by its README's
    code, fed a float32 x: every output at every step equals the float64 reference."""
    graph = resnet_graph("neuron", "random", seed=5)
    folders = {t: write_artifact(graph, t, tmp_path / t) for t in TARGETS}
    x = make_input(graph, batch=4, seed=6, dtype=torch.float32)
    ref = simulate(graph, x.double(), 32)  # float32 values are exact in float64
    got = _run_without_bridge(folders, x, 32, tmp_path)
    assert got.pop("modules") == []  # no bridge, and samna never imported
    assert len({got[t]["class"] for t in TARGETS}) == len(TARGETS)  # four models, not the first one again
    for target, run in got.items():
        assert torch.equal(run["outputs"], ref.outputs), target  # float64: bit for bit
        if "readout" in run:
            assert torch.equal(run["readout"].argmax(1), ref.predictions()), target


def test_readme_loader_loads_folders_side_by_side(tmp_path: Path) -> None:
    """Two folders through their READMEs in one process give two models (``import model``
    twice would give the first one twice), and the README's float32 ``x`` runs."""
    graph = vgg_graph("channel", "random")
    x = make_input(graph, batch=2, dtype=torch.float32)
    ref = simulate(graph, x.double(), 32)
    first = run_readme(write_artifact(graph, "spikingjelly", tmp_path / "a"), x)
    second = run_readme(write_artifact(graph, "norse", tmp_path / "b"), x)
    assert first["model"] is not second["model"]
    assert type(first["net"]).__name__ == "SpikingJellyNetwork" and type(second["net"]).__name__ == "NorseNetwork"
    for namespace in (first, second):
        assert torch.equal(namespace["y"].argmax(1), ref.predictions())
        assert torch.equal(namespace["net"].simulate(x, 32), ref.outputs)


@pytest.mark.parametrize("target", TARGETS)
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
    code = readme_code(out)
    assert f'spec_from_file_location("{module_name(out, target)}", "{out.resolve()}/model.py")' in code
    assert "net = model.load(); y = net.predict(x, steps=" in code
    if target == "sinabs":  # installed --no-deps: what `import sinabs` needs beside it
        assert all(f"`{dep}`" in (out / "README.md").read_text() for dep in ("nir", "nirtorch", "pbr"))
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
