r"""SynSense Speck / DynapCNN: the chip-limit check, the sinabs model, and the export folder.

Takes a graph already legalised by :func:`bridge.passes.speck.legalise_for_speck` (exporters do
not import passes; the caller chains them)::

    from bridge.passes.speck import legalise_for_speck
    from exporters.speck import write_speck
    write_speck(legalise_for_speck(graph, calibration=x_train), "out_dir")

* :func:`speck_layers` reads the chip layers (``Conv2d -> IF [-> SumPool2d]``) of such a graph,
  refusing anything else in one line;
* :func:`check_resources` places them on the 9 cores (a bipartite matching on the per-core
  memories, as sinabs's ``get_valid_mapping``) and lists every broken limit
  (:mod:`bridge.format.speck` states the limits); :func:`resource_table` prints the per-layer table;
* :func:`build_sinabs` builds the chain as sinabs layers in the form sinabs's DynapCNN tooling
  takes (``nn.Sequential`` of ``Conv2d`` / ``sinabs.layers.SumPool2d`` / ``IAFSqueeze`` with the
  per-neuron initial potentials in ``v_mem``); :func:`run_sinabs` runs it on event counts;
* :func:`write_speck` writes the folder: ``model.nir``, ``sinabs_layers.json`` +
  ``sinabs_state.pt`` (load with :func:`load_sinabs`), ``resources.txt`` / ``resources.json`` and
  ``README.md`` (the semantics the graph claims and where the chip differs).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nir
import numpy as np
import torch
from torch import nn

from bridge.format.errors import BridgeError
from bridge.format.extension import (
    INPUT_LEVELS,
    NAMESPACE,
    SPECK,
    graph_semantics,
    if_semantics,
)
from bridge.format.graph import input_shape, neighbours, topological_order
from bridge.format.nirio import graph_bytes
from bridge.format.output_files import make_temp_folder, publish_folder, remove_temp
from bridge.format.speck import (
    BIAS_MEMORY,
    CORES,
    KERNEL_MEMORY,
    MAX_DESTINATIONS,
    NEURON_MEMORY,
    POOLING_SIZES,
    kernel_memory,
    neuron_memory,
)

_LEGALISE = "legalise it first with bridge.passes.speck.legalise_for_speck"


@dataclass
class SpeckLayer:
    """One chip layer: a convolution, its neurons and the pooling on the way to its destinations."""

    index: int
    conv: str
    neuron: str
    c_in: int
    c_out: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    neurons: tuple[int, int, int]  # (C_out, H, W) before pooling
    pool: tuple[int, int] | None
    pool_stride: tuple[int, int] | None
    pool_padding: tuple[int, int] | None
    bias: bool
    thresholds: int  # distinct thresholds in the layer
    destinations: list[int] = field(default_factory=list)
    sources: list[int | str] = field(default_factory=list)

    @property
    def kernel_memory(self) -> int:
        return kernel_memory(self.c_in, self.c_out, *self.kernel)

    @property
    def neuron_memory(self) -> int:
        return neuron_memory(*self.neurons)

    @property
    def bias_memory(self) -> int:
        return self.c_out if self.bias else 0


def _pair(value: Any) -> tuple[int, int]:
    arr = np.broadcast_to(np.asarray(value), (2,))
    return int(arr[0]), int(arr[1])


def speck_layers(graph: nir.NIRGraph) -> list[SpeckLayer]:
    """The chip layers of a legalised graph, in order (BridgeError, one line, for other graphs)."""
    graph_semantics(graph)
    preds, succs = neighbours(graph.nodes, graph.edges)
    order = topological_order(graph.nodes, graph.edges)
    if len(order) < len(graph.nodes):
        raise BridgeError("the graph has a cycle; Speck runs feed-forward layers")
    layers: list[SpeckLayer] = []
    of_neuron: dict[str, int] = {}
    for name in order:
        node = graph.nodes[name]
        if isinstance(node, (nir.Input, nir.Output, nir.IF, nir.SumPool2d, nir.Flatten)):
            continue
        if not isinstance(node, nir.Conv2d):
            raise BridgeError(f"node {name!r} ({type(node).__name__}) is not a Speck layer; {_LEGALISE}")
        after = succs[name]
        if len(after) != 1 or not isinstance(graph.nodes[after[0]], nir.IF) or len(preds[after[0]]) != 1:
            raise BridgeError(f"convolution {name!r} must feed one IF node of its own; {_LEGALISE}")
        neuron = after[0]
        sem = if_semantics(graph.nodes[neuron], neuron)
        if sem.threshold.ndim != 3:
            raise BridgeError(f"IF node {neuron!r} has shape {sem.threshold.shape}, not (C, H, W); {_LEGALISE}")
        weight = np.asarray(node.weight)
        bias = np.asarray(node.bias) if node.bias is not None else np.zeros(weight.shape[0])
        layer = SpeckLayer(len(layers), name, neuron, int(weight.shape[1]), int(weight.shape[0]),
                           (int(weight.shape[2]), int(weight.shape[3])), _pair(node.stride), _pair(node.padding),
                           tuple(int(s) for s in sem.threshold.shape), None, None, None,  # type: ignore[arg-type]
                           bool(np.any(bias != 0)), len(np.unique(sem.threshold)))
        if int(np.prod(_pair(node.dilation))) != 1:
            raise BridgeError(f"convolution {name!r} is dilated; Speck convolutions are not")
        for p in preds[name]:  # where the layer's input events come from
            src = p
            if isinstance(graph.nodes[src], nir.SumPool2d):
                (src,) = preds[src]
            if isinstance(graph.nodes[src], nir.Input):
                layer.sources.append("input")
            elif src in of_neuron:
                layer.sources.append(of_neuron[src])
            else:
                raise BridgeError(f"convolution {name!r} reads {p!r}, not the input or a layer's neurons; {_LEGALISE}")
        layers.append(layer)
        of_neuron[neuron] = layer.index
    for layer in layers:
        for nxt in succs[layer.neuron]:
            node = graph.nodes[nxt]
            if isinstance(node, nir.SumPool2d):
                layer.pool, layer.pool_stride, layer.pool_padding = (_pair(node.kernel_size), _pair(node.stride),
                                                                     _pair(node.padding))
                targets = succs[nxt]
            else:
                targets = [nxt]
            for t in targets:
                if isinstance(graph.nodes[t], nir.Conv2d):
                    layer.destinations.append(next(x.index for x in layers if x.conv == t))
                elif not isinstance(graph.nodes[t], (nir.Flatten, nir.Output)):
                    raise BridgeError(f"IF node {layer.neuron!r} feeds {t!r}; {_LEGALISE}")
    if not layers:
        raise BridgeError(f"the graph has no convolution; {_LEGALISE}")
    return layers


def _assign(layers: list[SpeckLayer]) -> list[int] | None:
    """Cores for the layers (a bipartite matching on the per-core memories), or None."""
    fits = [[c for c in range(CORES) if l.kernel_memory <= KERNEL_MEMORY[c] and l.neuron_memory <= NEURON_MEMORY[c]
             and l.bias_memory <= BIAS_MEMORY] for l in layers]
    core_of: dict[int, int] = {}  # core -> layer

    def augment(i: int, seen: set[int]) -> bool:
        for c in fits[i]:
            if c not in seen:
                seen.add(c)
                if c not in core_of or augment(core_of[c], seen):
                    core_of[c] = i
                    return True
        return False

    if len(layers) > CORES or not all(augment(i, set()) for i in range(len(layers))):
        return None
    out = [0] * len(layers)
    for c, i in core_of.items():
        out[i] = c
    return out


def check_resources(layers: list[SpeckLayer]) -> tuple[list[int] | None, list[str]]:
    """``(cores, problems)``: a core per layer (None when there is none) and one line per broken limit."""
    problems: list[str] = []
    if len(layers) > CORES:
        problems.append(f"{len(layers)} layers: Speck has {CORES} cores (one layer per core)")
    ki = lambda n: f"{n / 1024:g} Ki"  # noqa: E731
    for l in layers:
        where = f"layer {l.index} ({l.conv})"
        if l.kernel[0] != l.kernel[1]:
            problems.append(f"{where}: kernel {l.kernel[0]}x{l.kernel[1]} is not square")
        if l.kernel_memory > max(KERNEL_MEMORY):
            problems.append(f"{where}: kernel memory {ki(l.kernel_memory)} exceeds the largest core's "
                            f"{ki(max(KERNEL_MEMORY))}")
        if l.neuron_memory > max(NEURON_MEMORY):
            problems.append(f"{where}: neuron memory {ki(l.neuron_memory)} exceeds the largest core's "
                            f"{ki(max(NEURON_MEMORY))}")
        if l.bias_memory > BIAS_MEMORY:
            problems.append(f"{where}: bias memory {l.bias_memory} exceeds {BIAS_MEMORY}")
        if l.thresholds > 1:
            problems.append(f"{where}: {l.thresholds} different thresholds; Speck has one per layer")
        if len(l.destinations) > MAX_DESTINATIONS:
            problems.append(f"{where}: sends to {len(l.destinations)} layers; a core has {MAX_DESTINATIONS} destinations")
        if l.pool is not None and (l.pool[0] != l.pool[1] or l.pool != l.pool_stride or l.pool_padding != (0, 0)
                                   or l.pool[0] not in POOLING_SIZES):
            problems.append(f"{where}: pooling {l.pool[0]}x{l.pool[1]} stride {l.pool_stride} padding "
                            f"{l.pool_padding}; Speck sum-pools square windows of "
                            f"{', '.join(map(str, POOLING_SIZES))} with stride = size, no padding")
    cores = _assign(layers) if not problems else None
    if not problems and cores is None:
        problems.append(f"no placement of the {len(layers)} layers on the {CORES} cores fits every core's memories "
                        "(see the table)")
    return cores, problems


def resource_table(layers: list[SpeckLayer], cores: list[int] | None) -> str:
    """The per-layer table (memories in words; limits of the assigned core, or the largest)."""
    head = (f"{'layer':5s} {'core':>4s} {'conv':14s} {'C_in':>5s} {'C_out':>5s} {'k':>5s} {'neurons':>12s} "
            f"{'kernel mem':>16s} {'neuron mem':>16s} {'bias':>9s} {'pool':>5s} {'fan-out':>7s}")
    lines = [head, "-" * len(head)]
    for l in layers:
        core = cores[l.index] if cores is not None else None
        kmax = KERNEL_MEMORY[core] if core is not None else max(KERNEL_MEMORY)
        nmax = NEURON_MEMORY[core] if core is not None else max(NEURON_MEMORY)
        lines.append(
            f"{l.index:<5d} {'-' if core is None else core:>4} {l.conv[:14]:14s} {l.c_in:5d} {l.c_out:5d} "
            f"{l.kernel[0]}x{l.kernel[1]:<3d} {'x'.join(map(str, l.neurons)):>12s} "
            f"{l.kernel_memory:>7d}/{kmax:<8d} {l.neuron_memory:>7d}/{nmax:<8d} {l.bias_memory:>4d}/{BIAS_MEMORY:<4d} "
            f"{'-' if l.pool is None else l.pool[0]:>5} {len(l.destinations)}/{MAX_DESTINATIONS:<5d}")
    return "\n".join(lines)


def check_fits(graph: nir.NIRGraph) -> tuple[list[SpeckLayer], list[int]]:
    """The layers and their cores; BridgeError with one line per broken limit when it does not fit."""
    layers = speck_layers(graph)
    cores, problems = check_resources(layers)
    if problems or cores is None:
        raise BridgeError("the model does not fit Speck:\n" + "\n".join(f"  - {p}" for p in problems))
    return layers, cores


# --- the sinabs model --------------------------------------------------------------------------

def _sinabs_layers() -> Any:
    try:
        import sinabs.activation as sa
        import sinabs.layers as sl
    except ImportError:
        raise BridgeError("the Speck export builds a sinabs model: pip install --no-deps sinabs==3.1.3 pbr") from None
    return sl, sa


def _integer_chain(graph: nir.NIRGraph) -> list[SpeckLayer]:
    layers = speck_layers(graph)
    for l in layers:
        if l.sources != (["input"] if l.index == 0 else [l.index - 1]):
            raise BridgeError("the sinabs model is a chain of layers; this graph branches or merges")
        weight = np.asarray(graph.nodes[l.conv].weight, dtype=np.float64)
        if not np.array_equal(weight, np.round(weight)):
            raise BridgeError(f"convolution {l.conv!r} has non-integer weights; {_LEGALISE}")
    return layers


def sinabs_spec(graph: nir.NIRGraph) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """The sinabs layer list (JSON-able) and its tensors (weights, initial potentials) of a legalised chain."""
    layers = _integer_chain(graph)
    spec: list[dict[str, Any]] = []
    tensors: dict[str, torch.Tensor] = {}
    for l in layers:
        conv, sem = graph.nodes[l.conv], if_semantics(graph.nodes[l.neuron], l.neuron)
        tensors[f"{len(spec)}.weight"] = torch.from_numpy(np.asarray(conv.weight, dtype=np.float32).copy())
        spec.append({"type": "Conv2d", "in_channels": l.c_in, "out_channels": l.c_out, "kernel_size": list(l.kernel),
                     "stride": list(l.stride), "padding": list(l.padding), "bias": False})
        tensors[f"{len(spec)}.v_init"] = torch.from_numpy(sem.v_init.astype(np.float32)[None].copy())
        spec.append({"type": "IAFSqueeze", "spike_threshold": float(sem.threshold.flat[0]),
                     "min_v_mem": None if sem.v_min is None else float(sem.v_min.min()),
                     "reset": "MembraneSubtract", "name": l.neuron})
        if l.pool is not None and l.destinations:
            spec.append({"type": "SumPool2d", "kernel_size": list(l.pool), "stride": list(l.pool_stride or l.pool)})
    return spec, tensors


def _from_spec(spec: list[dict[str, Any]], tensors: dict[str, torch.Tensor], multi_spike: bool,
               batch_size: int) -> nn.Sequential:
    sl, sa = _sinabs_layers()
    modules: list[nn.Module] = []
    for i, item in enumerate(spec):
        if item["type"] == "Conv2d":
            conv = nn.Conv2d(item["in_channels"], item["out_channels"], tuple(item["kernel_size"]),
                             stride=tuple(item["stride"]), padding=tuple(item["padding"]), bias=False)
            conv.weight.data = tensors[f"{i}.weight"].clone()
            modules.append(conv)
        elif item["type"] == "IAFSqueeze":
            iaf = sl.IAFSqueeze(spike_threshold=torch.tensor(item["spike_threshold"]),
                                spike_fn=sa.MultiSpike if multi_spike else sa.SingleSpike,
                                reset_fn=sa.MembraneSubtract(), min_v_mem=item["min_v_mem"], batch_size=batch_size)
            iaf.v_mem = tensors[f"{i}.v_init"].clone()  # per-neuron initial potential (batch 1)
            modules.append(iaf)
        elif item["type"] == "SumPool2d":
            modules.append(sl.SumPool2d(tuple(item["kernel_size"]), stride=tuple(item["stride"])))
        else:
            raise BridgeError(f"unknown sinabs layer {item['type']!r} in the spec")
    return nn.Sequential(*modules).eval()


def build_sinabs(graph: nir.NIRGraph, *, multi_spike: bool = True, batch_size: int = 1) -> nn.Sequential:
    """The legalised chain as sinabs layers (``MultiSpike``: sinabs's emulation of the chip,
    ``SingleSpike``: the graph's step rule). Each ``IAFSqueeze``'s ``v_mem`` holds the initial
    potentials ``(1, C, H, W)``, which sinabs's DynapCNN config builder writes as the chip's
    ``neurons_initial_value``."""
    spec, tensors = sinabs_spec(graph)
    return _from_spec(spec, tensors, multi_spike, batch_size)


@torch.no_grad()
def run_sinabs(model: nn.Sequential, counts: torch.Tensor, steps: int) -> torch.Tensor:
    """Spike counts ``[B, C_out]`` of the last layer after ``steps`` steps of the same input
    events ``counts`` ``[B, C, H, W]`` (from the initial potentials each time)."""
    import sinabs.layers as sl

    b = counts.shape[0]
    iafs = [m for m in model if isinstance(m, sl.IAFSqueeze)]
    inits = getattr(model, "_bridge_v_init", None)
    if inits is None:
        inits = [m.v_mem.detach().clone() for m in iafs]
        model._bridge_v_init = inits  # type: ignore[attr-defined]
    for m, v0 in zip(iafs, inits):
        m.batch_size = b
        m.v_mem = v0.expand(b, *v0.shape[1:]).clone()
    x = counts.to(torch.float32)[:, None].expand(b, steps, *counts.shape[1:]).reshape(b * steps, *counts.shape[1:])
    out = model(x)
    return out.reshape(b, steps, -1).sum(1)


def load_sinabs(folder: str | Path, *, multi_spike: bool = True, batch_size: int = 1) -> nn.Sequential:
    """The sinabs model of a folder written by :func:`write_speck` (no pickle of code is loaded)."""
    folder = Path(folder)
    spec = json.loads((folder / "sinabs_layers.json").read_text())
    tensors = torch.load(folder / "sinabs_state.pt", weights_only=True)
    return _from_spec(spec["layers"], tensors, multi_spike, batch_size)


# --- the folder --------------------------------------------------------------------------------

_README = """# Speck / DynapCNN export

Written by bridge (`exporters.speck.write_speck`) from a graph legalised for Speck.

## Files

- `model.nir`: the integer graph (bridge NIR extension {version}): {n} layers `Conv2d -> IF [-> SumPool2d]`,
  8-bit integer weights, one 16-bit integer threshold per layer, per-neuron 16-bit integer initial
  potentials, the state's range [{v_min:g}, {v_max:g}], no biases.
- `sinabs_layers.json` + `sinabs_state.pt`: the same network as sinabs layers (`nn.Sequential` of
  `Conv2d` / `sinabs.layers.SumPool2d` / `IAFSqueeze`, the initial potentials in `v_mem`), the form
  `sinabs.backend.dynapcnn.DynapcnnNetwork` takes. Load with `exporters.speck.load_sinabs(folder)`
  (`torch.load(weights_only=True)`, no code is unpickled).
- `resources.txt` / `resources.json`: the layers on the 9 cores, against the chip's limits.

## Input and readout

A static image `x` in [0, 1] enters as events: at each of T steps pixel p sends
`round({levels} * x_p)` events (the same counts every step). The class is the output layer's
neuron with the most spikes after T steps.

## The semantics the graph claims

bridge's step rule in integers, per layer and step t = 1..T, with input events (spikes) `s_in(t)`:

    m(t) = clip(v(t-1) + W * s_in(t), v_min, v_max);  s(t) = [m(t) >= theta];  v(t) = m(t) - theta * s(t)

with `v(0)` the initial potentials. Every number is an integer, so any simulator (bridge's reference,
SpikingJelly, Norse in float32 or float64) computes the same spikes.

## Where the chip differs (not verified on a chip)

- The chip is event-driven: it has no steps. Each input event updates the neurons at once, and a
  neuron fires as soon as it reaches theta, then subtracts theta (reset at once). Within what the
  graph calls one step, the order of events matters on the chip and not in the graph, and a neuron
  whose potential reaches 2 theta fires twice. sinabs emulates the latter with `MultiSpike`
  (several spikes per step); the graph fires at most once per step and carries the rest.
  Measured difference on this kind of model: see docs/integer-networks.md in bridge.
- Timing between steps (how long a "step" of events lasts on the chip) is the user's choice; the
  counts after T steps do not depend on it in the graph.
- Biases: none (the chip applies a bias as a leak on its slow clock, not once per step).
- The upper bound v_max: sinabs's emulation has only the lower bound (`min_v_mem`); whether the
  chip saturates or wraps at the top of its 16-bit register was not verified.
"""


def write_speck(graph: nir.NIRGraph, out_dir: str | Path, *, force: bool = False) -> Path:
    """Write the Speck export folder of a legalised graph; returns ``out_dir``.

    Refuses (BridgeError, before writing anything) a graph that is not in Speck form, one that
    does not fit the chip (one line per broken limit), an existing ``out_dir`` without ``force``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise BridgeError(f"{out_dir} already exists; choose another output folder or pass --force")
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if not parent.is_dir():
        raise BridgeError(f"the folder {parent} does not exist; create it first")
    layers, cores = check_fits(graph)
    spec, tensors = sinabs_spec(graph)
    _from_spec(spec, tensors, True, 1)  # the sinabs model builds
    meta = (graph.metadata or {}).get(NAMESPACE) or {}
    levels = (meta.get(SPECK) or {}).get(INPUT_LEVELS, 1)
    first = if_semantics(graph.nodes[layers[0].neuron], layers[0].neuron)
    table = resource_table(layers, cores)
    tmp: Path | None = None
    try:
        tmp = make_temp_folder(out_dir)
        (tmp / "model.nir").write_bytes(graph_bytes(graph))
        (tmp / "sinabs_layers.json").write_text(json.dumps({"layers": spec, "input_levels": levels,
                                                            "input_shape": list(input_shape(graph))}, indent=1) + "\n")
        buf = io.BytesIO()
        torch.save(tensors, buf)
        (tmp / "sinabs_state.pt").write_bytes(buf.getvalue())
        (tmp / "resources.txt").write_text(table + "\n")
        (tmp / "resources.json").write_text(json.dumps(
            [{**{k: v for k, v in asdict(l).items()}, "core": cores[l.index], "kernel_memory": l.kernel_memory,
              "neuron_memory": l.neuron_memory, "bias_memory": l.bias_memory} for l in layers], indent=1) + "\n")
        (tmp / "README.md").write_text(_README.format(
            version=graph_semantics(graph).version, n=len(layers), levels=levels,
            v_min=float(first.v_min.min()) if first.v_min is not None else float("-inf"),
            v_max=float(first.v_max.max()) if first.v_max is not None else float("inf")))
        os.chmod(tmp, 0o755)
        publish_folder(tmp, out_dir)
    except OSError as exc:
        raise BridgeError(f"cannot write {out_dir}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            remove_temp(tmp)  # a no-op once published
    return out_dir

