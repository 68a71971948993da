"""Exported artifacts: a folder that runs the model where bridge is not installed.

Layout of ``out_dir``::

    model.py      the framework runtime (exporters/runtime_<target>.py, copied unchanged)
    spec.json     the network structure (export spec, see exporters.graph_spec)
    tensors.pt    weights, thresholds, initial potentials: a dict of tensors, loadable
                  with torch.load(weights_only=True) (no code is unpickled)
    model.nir     the NIR graph it was exported from (provenance; not needed to load)
    README.md     how to load and run it

The folder is written beside ``out_dir`` under a temporary name and renamed at the end,
so a failure leaves nothing behind; an existing ``out_dir`` is refused unless ``force``.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Literal

import nir
import torch

from bridge.format.errors import BridgeError
from bridge.format.nirio import graph_bytes
from bridge.format.output_files import (
    make_temp_folder, output_error, publish_folder, remove_temp, sweep_stale_temps, write_failure,
)
from exporters.graph_spec import graph_to_spec

Target = Literal["spikingjelly", "norse", "snntorch", "sinabs"]
_RUNTIMES: dict[str, str] = {target: f"runtime_{target}.py" for target in
                             ("spikingjelly", "norse", "snntorch", "sinabs")}
_TITLES = {"spikingjelly": "SpikingJelly", "norse": "Norse", "snntorch": "snnTorch", "sinabs": "sinabs"}

_README = """\
# {title} model exported by bridge

Needs only `torch` and `{package}` (plus this folder); bridge is not needed.{install}

```python
import importlib.util, sys
spec = importlib.util.spec_from_file_location("{module}", "{folder}/model.py")
model = importlib.util.module_from_spec(spec); sys.modules[spec.name] = model; spec.loader.exec_module(model)
net = model.load(); y = net.predict(x, steps={steps})          # x: [B, {shape}] -> y: [B, ...]
```

The module name `{module}` is this folder's own, so several exported folders load side by
side in one process. With one folder per process, `sys.path.insert(0, "{folder}"); import model`
works too (Python caches the name `model`: a second folder imported that way returns the first).

{usage}

- Input encoding: `{encoding}`{encoding_note}, readout: `{readout}` over T.
- The network is float64 and takes input of any float dtype (cast to the network's);
  `net.float()` runs it in float32.
- `model.py` holds the network classes; `spec.json` the structure; `tensors.pt` the weights,
  loaded with `torch.load(..., weights_only=True)`; `model.nir` the source NIR graph.
"""

_INSTALL = {  # how to install the framework, where `pip install <target>` is not enough
    "sinabs": ("\n\nInstall sinabs as `pip install nir nirtorch pbr` and then `pip install --no-deps sinabs==3.1.3`:\n"
               "`import sinabs` needs `nir`, `nirtorch` and `pbr`; its declared dependencies pin an old `nir` and\n"
               "pull `samna`, which this model never imports."),
}

_USAGE = {
    "spikingjelly": (
        "`net` is a SpikingJelly module (step mode 'm': `net(x_seq)` maps `[T, B, ...]` to the\n"
        "output at every step; reset with `spikingjelly.activation_based.functional.reset_net(net)`;\n"
        "`model.load(step_mode='s')` for single-step mode). Submodules are named after the NIR nodes."
    ),
    "norse": (
        "`net` is a Norse-style module: `out, state = net(x, state)` runs one step (`state=None`\n"
        "starts every neuron at its initial potential); states are Norse `IAFFeedForwardState`s."
    ),
    "snntorch": (
        "`net` is an snnTorch module of `snntorch.Leaky` neurons (beta = 1, spike on `mem >= threshold`,\n"
        "subtract reset): `out = net(x)` runs one step with the state in the neurons (`init_hidden=True`;\n"
        "`net.reset()` starts every neuron at its initial potential); `model.load(init_hidden=False)`\n"
        "takes explicit potentials, `out, mems = net(x, mems)` (`mems=None` starts afresh)."
    ),
    "sinabs": (
        "`net` is a sinabs module of `IAFSqueeze` neurons (one spike on `v_mem >= threshold`, subtract\n"
        "reset) in sinabs's squeezed layout: `net.num_timesteps = T` (or `net.batch_size = B`), then\n"
        "`net(x_seq)` maps `[B*T, ...]` (batch-major) to the output at every step; the state stays in the\n"
        "neurons until `sinabs.reset_states(net)` (every neuron back at its initial potential)."
    ),
}


def write_artifact(graph: nir.NIRGraph, target: Target, out_dir: str | Path, *, force: bool = False) -> Path:
    """Write the ``target`` model of ``graph`` to the folder ``out_dir``; returns ``out_dir``.

    Raises :class:`BridgeError` for an unknown target, an existing ``out_dir`` (unless
    ``force``), a missing parent folder, or graph content the target cannot reproduce.
    """
    if target not in _RUNTIMES:
        raise BridgeError(f"unknown export target {target!r}; choose one of {', '.join(_RUNTIMES)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise BridgeError(f"{out_dir} already exists; choose another output folder or pass --force")
    if out_dir.exists() and not out_dir.is_dir():
        raise BridgeError(f"{out_dir} exists and is not a folder; choose another output path")
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if not parent.is_dir():
        raise BridgeError(f"the folder {parent} does not exist; create it first")
    spec, tensors = graph_to_spec(graph)  # refuses unsupported content before touching disk
    # Check that the runtime really builds (the target framework imports, the spec is whole).
    _build_in_process(target, spec, tensors)

    sweep_stale_temps(out_dir)  # folders stranded by killed runs
    tmp: Path | None = None
    try:
        tmp = make_temp_folder(out_dir)
        shutil.copyfile(Path(__file__).with_name(_RUNTIMES[target]), tmp / "model.py")
        (tmp / "spec.json").write_text(json.dumps(spec, indent=1) + "\n")
        # serialised in memory, written by Python: a full disk is an OSError, not a C++ error
        buf = io.BytesIO()
        torch.save({k: v.contiguous() for k, v in tensors.items()}, buf)
        (tmp / "tensors.pt").write_bytes(buf.getvalue())
        (tmp / "model.nir").write_bytes(graph_bytes(graph))  # HDF5 built in memory
        shape = ", ".join(str(d) for d in next(n for n in spec["nodes"] if n["op"] == "input")["shape"])
        (tmp / "README.md").write_text(_README.format(
            title=_TITLES[target], package=target, install=_INSTALL.get(target, ""), module=module_name(out_dir, target),
            folder=str(out_dir.resolve()), steps=spec.get("timesteps") or 32, shape=shape,
            usage=_USAGE[target], encoding=spec["input_encoding"], readout=spec["readout"],
            encoding_note=" (x is the input current at every step)" if spec["input_encoding"] == "constant"
            else " (x holds one input per step, [T, B, ...])",
        ))
        os.chmod(tmp, 0o755)
        publish_folder(tmp, out_dir)  # renamed and noted as written, a signal before or after, not between
    except OSError as exc:  # read-only folder, full disk, file-size limit
        raise output_error(out_dir, exc) from None
    except RuntimeError as exc:  # torch.save / h5py report a short write in their own words
        raise write_failure(out_dir, exc) from None
    finally:
        if tmp is not None:
            remove_temp(tmp)  # a no-op once published
    return out_dir


def module_name(out_dir: Path, target: str) -> str:
    """A module name of the artifact folder's own (its target and a hash of its path), so that
    the README's loader imports several folders side by side in one process."""
    digest = hashlib.sha1(str(Path(out_dir).resolve()).encode()).hexdigest()[:10]
    return f"bridge_{target}_{digest}"


def _build_in_process(target: str, spec: dict, tensors: dict[str, torch.Tensor]) -> None:
    try:
        runtime = importlib.import_module(f"exporters.{_RUNTIMES[target][:-3]}")
    except ImportError as exc:
        install = ("pip install nir nirtorch pbr && pip install --no-deps sinabs==3.1.3" if target == "sinabs"
                   else f"pip install {target}")
        raise BridgeError(f"cannot export to {target}: {exc}; install it with `{install}`") from None
    runtime.build_from_spec(spec, tensors)
