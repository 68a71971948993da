"""A SpikingJelly 2.0 network built from a bridge export spec.

This file is self-contained: it imports only torch and spikingjelly, so that it is copied
unchanged into an exported artifact (as ``model.py``) and also implements
``exporters.spikingjelly.build`` in-process; the two cannot diverge.

The neuron (one IF node of the graph), per neuron i, at step t with input current I(t)::

    m(t) = v(t-1) + I(t)            SpikingJelly's charge H[t] = V[t-1] + X[t]
    s(t) = [m(t) - theta >= 0]      SpikingJelly's heaviside, i.e. [m >= theta] exactly
    v(t) = m(t) - theta * s(t)      SpikingJelly's soft reset (v_reset=None)
    v(0) = v_init                   per neuron, for any batch size

* A layer-uniform threshold is SpikingJelly's own float ``v_threshold`` and the step runs in
  SpikingJelly's IF kernel (``IFNode``); ``v_init == theta/2`` everywhere uses
  ``HalfThresholdIFNode`` as it is; other initial potentials use :class:`InitialPotentialIFNode`,
  an ``IFNode`` whose ``materialize_states`` expands the per-neuron ``v_init`` to the input's
  batch shape (a tensor ``v`` of the wrong shape would otherwise be replaced by zeros).
* Per-neuron thresholds use :class:`PerNeuronThresholdIFNode`: the same step written with
  SpikingJelly's surrogate spike function and ``apply_soft_reset`` on a threshold tensor.
  Unlike weight normalisation (dividing the incoming weights by theta), it performs the very
  floating-point operations of the reference, so float64 spikes are identical, not merely
  equal up to rounding.

Usage (the artifact's README)::

    net = load("path/to/artifact")            # or exporters.spikingjelly.build(graph)
    y = net.predict(x, steps=32)              # [B, ...] readout; x is [B, *input_shape]
"""

from __future__ import annotations

import json
from itertools import chain
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from spikingjelly.activation_based import base, functional, layer, neuron

SPEC_FORMAT = "bridge-export-spec/1"


class InitialPotentialIFNode(neuron.IFNode):
    """SpikingJelly's IF neuron (subtract reset, scalar threshold) with a per-neuron v(0).

    ``v_init`` has the neuron shape (no batch); whenever the state is a scalar (after
    ``functional.reset_net``) or has another batch shape, it becomes ``v_init`` expanded to
    the input's shape. Everything else is ``IFNode`` and its SpikingJelly kernels.
    """

    def __init__(self, v_threshold: float, v_init: torch.Tensor, step_mode: str = "m") -> None:
        super().__init__(v_threshold=float(v_threshold), v_reset=None, step_mode=step_mode)
        self.register_buffer("v_init", v_init.detach().clone())

    def materialize_states(self, inputs: tuple[torch.Tensor, ...], states: tuple[Any, ...],
                           step_mode: str) -> tuple[Any, ...]:
        x = inputs[0][0] if step_mode == "m" else inputs[0]
        v = states[0]
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            v = self.v_init.to(dtype=x.dtype, device=x.device).expand(x.shape).clone()
        elif v.dtype != x.dtype or v.device != x.device:
            v = v.to(dtype=x.dtype, device=x.device)
        return (v, *states[1:])


class PerNeuronThresholdIFNode(InitialPotentialIFNode):
    """:class:`InitialPotentialIFNode` with a threshold tensor of the neuron shape.

    SpikingJelly's IF kernels take a float threshold, so the step is written here with
    SpikingJelly's own pieces: ``H = V + X``, ``S = surrogate(H - theta)``,
    ``V = apply_soft_reset(H, S, theta)``.
    """

    def __init__(self, v_threshold: torch.Tensor, v_init: torch.Tensor, step_mode: str = "m") -> None:
        super().__init__(1.0, v_init, step_mode=step_mode)
        del self.v_threshold  # the float set by BaseNode, replaced by a buffer
        self.register_buffer("v_threshold", v_threshold.detach().clone())

    def single_step_functional_forward(self, inputs: tuple[torch.Tensor, ...], states: tuple[Any, ...],
                                       **kwargs: object) -> tuple[tuple[torch.Tensor, ...], tuple[Any, ...]]:
        h = states[0] + inputs[0]
        spike = self.surrogate_function(h - self.v_threshold)
        spike_r = spike.detach() if self.detach_reset else spike
        return (spike,), (self.apply_soft_reset(h, spike_r, self.v_threshold), *states[1:])

    def multi_step_functional_forward(self, inputs: tuple[torch.Tensor, ...], states: tuple[Any, ...],
                                      **kwargs: object) -> tuple[tuple[torch.Tensor, ...], tuple[Any, ...]]:
        spikes = []
        for x in inputs[0]:
            (spike,), states = self.single_step_functional_forward((x,), states)
            spikes.append(spike)
        return (torch.stack(spikes),), states

    def extra_repr(self) -> str:
        return f"v_threshold=<per-neuron {tuple(self.v_threshold.shape)}>, v_reset=None, step_mode={self.step_mode}"


class Scale(nn.Module, base.StepModule):
    """NIR Scale: ``y = scale * x`` element-wise over the trailing (neuron) dimensions."""

    def __init__(self, scale: torch.Tensor, step_mode: str = "m") -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.step_mode = step_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def make_if_node(threshold: torch.Tensor, v_init: torch.Tensor, step_mode: str = "m") -> neuron.BaseNode:
    """The SpikingJelly neuron that reproduces one IF node exactly (see the module docstring)."""
    flat = threshold.reshape(-1)
    if bool((flat == flat[0]).all()):
        theta = float(flat[0])
        if bool((v_init == theta / 2.0).all()):
            return neuron.HalfThresholdIFNode(v_threshold=theta, step_mode=step_mode)
        return InitialPotentialIFNode(theta, v_init, step_mode=step_mode)
    return PerNeuronThresholdIFNode(threshold, v_init, step_mode=step_mode)


def _layer(node: dict[str, Any], t: dict[str, torch.Tensor], step_mode: str) -> nn.Module:
    """One SpikingJelly layer per NIR node (float64 parameters; ``.float()`` converts)."""
    op, name = node["op"], node["name"]
    if op in ("input", "output"):
        return nn.Identity()
    if op == "if":
        return make_if_node(t[f"{name}.threshold"], t[f"{name}.v_init"], step_mode)
    if op in ("affine", "linear"):
        w = t[f"{name}.weight"]
        mod = layer.Linear(w.shape[1], w.shape[0], bias=op == "affine", step_mode=step_mode).double()
        mod.weight.data.copy_(w)
        if op == "affine":
            mod.bias.data.copy_(t[f"{name}.bias"])
        return mod
    if op in ("conv1d", "conv2d"):
        w = t[f"{name}.weight"]
        cls = layer.Conv1d if op == "conv1d" else layer.Conv2d
        mod = cls(w.shape[1] * node["groups"], w.shape[0], tuple(w.shape[2:]), stride=node["stride"],
                  padding=node["padding"], dilation=node["dilation"], groups=node["groups"],
                  bias=True, step_mode=step_mode).double()
        mod.weight.data.copy_(w)
        mod.bias.data.copy_(t[f"{name}.bias"])
        return mod
    if op == "avgpool2d":
        return layer.AvgPool2d(node["kernel_size"], node["stride"], node["padding"], step_mode=step_mode)
    if op == "sumpool2d":  # divisor 1: the exact window sum; padded zeros count, as in the reference
        return layer.AvgPool2d(node["kernel_size"], node["stride"], node["padding"], divisor_override=1,
                               step_mode=step_mode)
    if op == "flatten":
        # NIR counts dimensions without the batch; torch (and SpikingJelly per step) with it.
        end = node["end_dim"]
        return layer.Flatten(node["start_dim"] + 1, end if end < 0 else end + 1, step_mode=step_mode)
    if op == "scale":
        return Scale(t[f"{name}.scale"], step_mode=step_mode)
    raise ValueError(f"node {name!r}: unknown op {op!r} in the export spec")


_WEIGHTED = ("affine", "linear", "conv1d", "conv2d")


def _per_step(mod: nn.Module, seq: torch.Tensor) -> torch.Tensor:
    """A weighted layer applied to each step's ``[B, ...]`` slice of ``[T, B, ...]``.

    BLAS/oneDNN kernels may round differently for a batch of T*B than for B rows, so in
    float64 this keeps multi-step mode bit-identical to a step loop and to the reference
    (which does the same); float32 takes the one big batch for speed.
    """
    forward = next(c.forward for c in type(mod).__mro__ if c.__module__.startswith("torch.nn."))
    return torch.stack([forward(mod, x) for x in seq])


def module_name(node_name: str) -> str:
    """Submodule name of a NIR node (its name; torch forbids '.' in module names)."""
    return node_name.replace(".", "_") or "_"


class SpikingJellyNetwork(nn.Module, base.StepModule):
    """A NIR graph as a SpikingJelly network; submodules are named after the NIR nodes.

    ``forward`` follows SpikingJelly: in step mode ``'m'`` it maps ``[T, B, ...]`` to the
    Output node's values ``[T, B, ...]``; in ``'s'`` one step ``[B, ...]`` to ``[B, ...]``;
    state lives in the neurons (``functional.reset_net`` starts afresh). A node with
    several inputs receives their sum. ``exact_batching`` (attribute; None: True for float64
    input) runs the weighted layers of step mode ``'m'`` on each step's slice
    (see :func:`_per_step`). :meth:`simulate` and :meth:`predict` add the graph's
    input encoding (the same input current every step) and readout (mean over T).
    """

    def __init__(self, spec: dict[str, Any], tensors: dict[str, torch.Tensor], step_mode: str = "m",
                 exact_batching: bool | None = None) -> None:
        super().__init__()
        self.exact_batching = exact_batching
        if spec.get("format") != SPEC_FORMAT:
            raise ValueError(f"unknown export spec format {spec.get('format')!r}, expected {SPEC_FORMAT}")
        self.input_encoding: str = spec["input_encoding"]
        self.readout_kind: str = spec["readout"]
        self.nodes: list[dict[str, Any]] = [dict(n) for n in spec["nodes"]]
        self.layers = nn.ModuleDict()
        for node in self.nodes:
            key = module_name(node["name"])
            if key in self.layers:
                raise ValueError(f"two NIR nodes map to the module name {key!r}")
            self.layers[key] = _layer(node, tensors, step_mode)
        self.input_name = next(n["name"] for n in self.nodes if n["op"] == "input")
        self.output_name = next(n["name"] for n in self.nodes if n["op"] == "output")
        self.input_shape = tuple(next(n for n in self.nodes if n["op"] == "input")["shape"])
        self.step_mode = step_mode

    def supported_step_mode(self) -> tuple[str, ...]:
        return ("s", "m")

    @property
    def neuron_names(self) -> list[str]:
        """NIR names of the IF nodes, in execution order."""
        return [n["name"] for n in self.nodes if n["op"] == "if"]

    def neuron(self, name: str) -> neuron.BaseNode:
        """The SpikingJelly neuron of the IF node ``name``."""
        return self.layers[module_name(name)]  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {}
        for node in self.nodes:
            if node["op"] == "input":
                current = x
            else:
                ins = node["inputs"]
                current = values[ins[0]]
                for other in ins[1:]:  # several edges into a node: their sum
                    current = current + values[other]
            mod = self.layers[module_name(node["name"])]
            if self.step_mode == "m" and node["op"] in _WEIGHTED and self._exact(current):
                values[node["name"]] = _per_step(mod, current)
            else:
                values[node["name"]] = mod(current)
        return values[self.output_name]

    def _exact(self, x: torch.Tensor) -> bool:
        return x.dtype == torch.float64 if self.exact_batching is None else self.exact_batching

    def encode(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """The graph's input encoding as a ``[T, B, ...]`` sequence."""
        if self.input_encoding == "constant":
            return x.unsqueeze(0).expand(steps, *x.shape)
        if x.shape[0] != steps:
            raise ValueError(f"per-step input needs x of shape [T={steps}, B, ...], got {tuple(x.shape)}")
        return x

    def _like(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the network's dtype and on its device (float32 input to a float64 net)."""
        ref = next((t for t in chain(self.parameters(), self.buffers()) if t.is_floating_point()), None)
        return x if ref is None else x.to(dtype=ref.dtype, device=ref.device)

    def simulate(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Run ``steps`` steps from a fresh state; the Output node's values ``[T, B, ...]``."""
        functional.reset_net(self)
        x = self._like(x)
        seq = self.encode(x, steps)
        if self.step_mode == "m":
            out = self(seq)
        else:
            out = torch.stack([self(seq[t]) for t in range(steps)])
        functional.reset_net(self)
        return out

    def readout(self, outputs: torch.Tensor) -> torch.Tensor:
        """The graph's readout of ``[T, B, ...]`` outputs (mean over T for bridge graphs)."""
        if self.readout_kind == "mean":
            return outputs.mean(dim=0)
        if self.readout_kind == "sum":
            return outputs.sum(dim=0)
        return outputs[-1]

    def predict(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """The network's output ``[B, ...]`` after ``steps`` steps on ``x`` ``[B, *input_shape]``."""
        with torch.no_grad():
            return self.readout(self.simulate(x, steps))


def build_from_spec(spec: dict[str, Any], tensors: dict[str, torch.Tensor], step_mode: str = "m") -> SpikingJellyNetwork:
    """The SpikingJelly network of an export spec (float64; call ``.float()`` for float32)."""
    net = SpikingJellyNetwork(spec, tensors, step_mode=step_mode)
    functional.set_step_mode(net, step_mode)
    return net.eval()


def load(folder: str | Path | None = None, step_mode: str = "m") -> SpikingJellyNetwork:
    """Load an exported artifact folder (default: the folder of this file).

    Reads ``spec.json`` and ``tensors.pt`` (``torch.load(weights_only=True)``: tensors only,
    no code is unpickled).
    """
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
    spec = json.loads((folder / "spec.json").read_text())
    tensors = torch.load(folder / "tensors.pt", weights_only=True, map_location="cpu")
    return build_from_spec(spec, tensors, step_mode=step_mode)
