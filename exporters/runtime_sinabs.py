"""A sinabs 3.1 network built from a bridge export spec.

This file is self-contained: it imports only torch and sinabs, so that it is copied
unchanged into an exported artifact (as ``model.py``) and also implements
``exporters.sinabs.build`` in-process; the two cannot diverge. (sinabs 3.1.3 is installed
with ``pip install --no-deps sinabs==3.1.3`` beside ``nir``, ``nirtorch`` and ``pbr``, which
``import sinabs`` needs; its chip SDK ``samna`` is never imported.)

The IF node of a bridge graph, per neuron, at step t with input current I(t)::

    m(t) = v(t-1) + I(t)
    s(t) = [m(t) >= theta]
    v(t) = m(t) - theta * s(t)          (reset by subtraction)
    v(0) = v_init

sinabs's ``IAF`` / ``IAFSqueeze`` charge as the reference does (``1 * v_mem + I``; the
multiplication by one is exact) and ``MembraneSubtract`` resets as it does
(``v_mem - spikes * threshold``). What they lack, and how :class:`IFSqueeze` (an
``IAFSqueeze``) closes it:

* the default spike function ``MultiSpike`` fires several spikes per step; ``SingleSpike``
  fires one, on ``v_mem - threshold >= 0`` (``[m >= theta]`` exactly: IEEE subtraction is
  exact in sign and zero only for equal operands), but returns float32 spikes, so
  ``MembraneSubtract`` multiplies a float32 spike by the threshold and rounds the threshold
  to float32. :class:`SingleSpikeInDtype` is ``SingleSpike`` returning the potential's dtype;
* ``v_mem`` is created as float32 zeros, zeroed by ``reset_states`` and resampled from other
  samples when the batch size changes: :class:`IFSqueeze` creates it in the model's dtype,
  resets it to the per-neuron ``v_init`` and starts a new batch size afresh at ``v_init``;
* no lower bound (``min_v_mem=None``, sinabs's default); per-neuron thresholds broadcast.

The network keeps sinabs's squeezed layout: ``forward`` maps ``[B*T, ...]`` (batch-major:
sample b's steps are rows ``b*T .. b*T+T-1``) to the Output node's values ``[B*T, ...]``,
with ``batch_size`` or ``num_timesteps`` given as for ``IAFSqueeze``; state lives in the
neurons (``sinabs.reset_states(net)`` or ``net.reset_states()`` starts afresh). In float64
the weighted layers run on each step's ``[B, ...]`` slice, as the reference does (BLAS
kernels may round a batch of B*T rows differently); float32 takes the one big batch.

Usage (the artifact's README)::

    net = load("path/to/artifact")            # or exporters.sinabs.build(graph)
    y = net.predict(x, steps=32)              # [B, ...] readout; x is [B, *input_shape]
"""

from __future__ import annotations

import json
from itertools import chain
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from sinabs.activation import MembraneSubtract, SingleSpike
from sinabs.layers import IAFSqueeze

SPEC_FORMAT = "bridge-export-spec/1"
WINDOW_SAMPLES = 64  # simulate() runs windows of ceil(64 / B) steps, as the reference does


class SingleSpikeInDtype(SingleSpike):
    """sinabs's ``SingleSpike`` (one spike when ``v_mem - threshold >= 0``) in ``v_mem``'s dtype.

    The backward pass (the layer's surrogate gradient) is sinabs's, unchanged.
    """

    @staticmethod
    def forward(ctx: Any, v_mem: torch.Tensor, spike_threshold: torch.Tensor,
                surrogate_grad_fn: Any) -> torch.Tensor:
        ctx.save_for_backward(v_mem)  # v_mem is replaced, never changed in place: no copy
        ctx.spike_threshold = spike_threshold
        ctx.surrogate_grad_fn = surrogate_grad_fn
        return (v_mem - spike_threshold >= 0).to(v_mem.dtype)


class IFSqueeze(IAFSqueeze):
    """sinabs's ``IAFSqueeze`` as bridge's IF neuron: one spike on ``m >= theta``, subtract
    reset, per-neuron ``v(0) = v_init`` in the model's dtype.

    ``threshold`` and ``v_init`` have the neuron shape (no batch); both are parameters
    without gradient, as sinabs keeps ``spike_threshold``, so ``.to(dtype)`` moves them.
    """

    def __init__(self, threshold: torch.Tensor, v_init: torch.Tensor, batch_size: int | None = None,
                 num_timesteps: int | None = None) -> None:
        super().__init__(batch_size=batch_size, num_timesteps=num_timesteps,
                         spike_threshold=threshold.detach().clone(), spike_fn=SingleSpikeInDtype,
                         reset_fn=MembraneSubtract(), min_v_mem=None)
        self.v_init = nn.Parameter(v_init.detach().clone(), requires_grad=False)

    def init_state_with_shape(self, shape: Any, randomize: bool = False) -> None:
        """``v_mem`` of ``shape`` in the model's dtype (sinabs: float32), then ``reset_states``."""
        self.register_buffer("v_mem", torch.empty(shape, dtype=self.v_init.dtype, device=self.v_init.device))
        self.reset_states(randomize=randomize)

    def reset_states(self, randomize: bool = False, value_ranges: Any = None) -> None:
        """``v_mem = v_init`` for every sample (sinabs: zeros); ``randomize`` as in sinabs."""
        super().reset_states(randomize=randomize, value_ranges=value_ranges)
        if not randomize and self.is_state_initialised():
            self.v_mem.copy_(self.v_init.expand_as(self.v_mem))

    def handle_state_batch_size_mismatch(self, new_batch_size: int) -> None:
        """Another batch size starts afresh at ``v_init`` (sinabs resamples other samples' states)."""
        self.init_state_with_shape((new_batch_size, *self.v_mem.shape[1:]))

    @property
    def _param_dict(self) -> dict:
        return {"threshold": self.spike_threshold.data, "v_init": self.v_init.data,
                "batch_size": self.batch_size, "num_timesteps": self.num_timesteps}


class Scale(nn.Module):
    """NIR Scale: ``y = scale * x`` element-wise over the trailing (neuron) dimensions."""

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _layer(node: dict[str, Any], t: dict[str, torch.Tensor]) -> nn.Module:
    """One torch layer or sinabs neuron per NIR node (float64; ``.float()`` converts)."""
    op, name = node["op"], node["name"]
    if op in ("input", "output"):
        return nn.Identity()
    if op == "if":
        return IFSqueeze(t[f"{name}.threshold"], t[f"{name}.v_init"], num_timesteps=-1)
    if op in ("affine", "linear"):
        w = t[f"{name}.weight"]
        mod = nn.Linear(w.shape[1], w.shape[0], bias=op == "affine").double()
        mod.weight.data.copy_(w)
        if op == "affine":
            mod.bias.data.copy_(t[f"{name}.bias"])
        return mod
    if op in ("conv1d", "conv2d"):
        w = t[f"{name}.weight"]
        cls = nn.Conv1d if op == "conv1d" else nn.Conv2d
        mod = cls(w.shape[1] * node["groups"], w.shape[0], tuple(w.shape[2:]), stride=node["stride"],
                  padding=node["padding"], dilation=node["dilation"], groups=node["groups"], bias=True).double()
        mod.weight.data.copy_(w)
        mod.bias.data.copy_(t[f"{name}.bias"])
        return mod
    if op == "avgpool2d":
        return nn.AvgPool2d(node["kernel_size"], node["stride"], node["padding"])
    if op == "sumpool2d":  # divisor 1: the exact window sum; padded zeros count, as in the reference
        return nn.AvgPool2d(node["kernel_size"], node["stride"], node["padding"], divisor_override=1)
    if op == "flatten":
        end = node["end_dim"]  # NIR counts dimensions without the batch
        return nn.Flatten(node["start_dim"] + 1, end if end < 0 else end + 1)
    if op == "scale":
        return Scale(t[f"{name}.scale"])
    raise ValueError(f"node {name!r}: unknown op {op!r} in the export spec")


_WEIGHTED = ("affine", "linear", "conv1d", "conv2d")


def module_name(node_name: str) -> str:
    """Submodule name of a NIR node (its name; torch forbids '.' in module names)."""
    return node_name.replace(".", "_") or "_"


class SinabsNetwork(nn.Module):
    """A NIR graph as a sinabs network in the squeezed ``[B*T, ...]`` layout.

    ``forward(x)`` maps ``[B*T, ...]`` (batch-major) to the Output node's values
    ``[B*T, ...]``; set ``batch_size`` or ``num_timesteps`` (attributes, as on
    ``IAFSqueeze``). State lives in the
    :class:`IFSqueeze` neurons: :meth:`reset_states` (or ``sinabs.reset_states(net)``) puts
    every neuron back at its ``v_init``. A node with several inputs receives their sum.
    ``exact_batching`` (None: True for float64 input) runs the weighted layers on each
    step's slice. :meth:`simulate` and :meth:`predict` add the graph's input encoding (the
    same input current every step) and readout (mean over T).
    """

    def __init__(self, spec: dict[str, Any], tensors: dict[str, torch.Tensor], batch_size: int | None = None,
                 num_timesteps: int | None = None, exact_batching: bool | None = None) -> None:
        super().__init__()
        if spec.get("format") != SPEC_FORMAT:
            raise ValueError(f"unknown export spec format {spec.get('format')!r}, expected {SPEC_FORMAT}")
        self.exact_batching = exact_batching
        self.batch_size, self.num_timesteps = batch_size, num_timesteps
        self.input_encoding: str = spec["input_encoding"]
        self.readout_kind: str = spec["readout"]
        self.nodes: list[dict[str, Any]] = [dict(n) for n in spec["nodes"]]
        self.layers = nn.ModuleDict()
        for node in self.nodes:
            key = module_name(node["name"])
            if key in self.layers:
                raise ValueError(f"two NIR nodes map to the module name {key!r}")
            self.layers[key] = _layer(node, tensors)
        self.output_name = next(n["name"] for n in self.nodes if n["op"] == "output")
        self.input_shape = tuple(next(n for n in self.nodes if n["op"] == "input")["shape"])

    @property
    def neuron_names(self) -> list[str]:
        """NIR names of the IF nodes, in execution order."""
        return [n["name"] for n in self.nodes if n["op"] == "if"]

    def neuron(self, name: str) -> IFSqueeze:
        """The sinabs neuron of the IF node ``name``."""
        return self.layers[module_name(name)]  # type: ignore[return-value]

    def reset_states(self) -> None:
        """Every neuron back to its initial potential (``IFSqueeze.reset_states``)."""
        for name in self.neuron_names:
            self.neuron(name).reset_states()

    def _layout(self, rows: int) -> tuple[int, int]:
        """(B, T) of a squeezed batch of ``rows`` rows."""
        if self.batch_size:
            return self.batch_size, rows // self.batch_size
        if self.num_timesteps:
            return rows // self.num_timesteps, self.num_timesteps
        raise ValueError("set net.batch_size or net.num_timesteps (the squeezed input is [B*T, ...])")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps = self._layout(x.shape[0])
        if batch * steps != x.shape[0]:
            raise ValueError(f"{x.shape[0]} rows are not batch_size x num_timesteps = {batch} x {steps}")
        return self._run(x, batch, steps, varying=True)

    def _run(self, x: torch.Tensor, batch: int, steps: int, varying: bool,
             const: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The graph on ``x``: ``[B*T, ...]`` when ``varying``, else ``[B, ...]``, the same at
        every step (then the layers before the first neuron run once, on ``[B, ...]``, and
        are kept in ``const`` for the next call)."""
        const = {} if const is None else const
        exact = x.dtype == torch.float64 if self.exact_batching is None else self.exact_batching

        def squeezed(value: torch.Tensor, is_varying: bool) -> torch.Tensor:
            if is_varying:
                return value
            return value.unsqueeze(1).expand(batch, steps, *value.shape[1:]).reshape(-1, *value.shape[1:])

        values: dict[str, tuple[torch.Tensor, bool]] = {}  # name -> (value, varies over T)
        for node in self.nodes:
            name, op = node["name"], node["op"]
            if name in const:
                values[name] = (const[name], False)
                continue
            if op == "input":
                values[name] = (x, varying)
                continue
            ins = [values[i] for i in node["inputs"]]
            is_varying = any(v for _, v in ins)
            current = squeezed(*ins[0]) if is_varying else ins[0][0]
            for value, v in ins[1:]:  # several edges into a node: their sum
                current = current + (squeezed(value, v) if is_varying else value)
            mod = self.layers[module_name(name)]
            if op == "if":
                mod.batch_size, mod.num_timesteps = batch, steps
                values[name] = (mod(squeezed(current, is_varying)), True)
            elif is_varying and op in _WEIGHTED and exact:
                seq = current.reshape(batch, steps, *current.shape[1:])
                out = torch.stack([mod(seq[:, t].contiguous()) for t in range(steps)], dim=1)
                values[name] = (out.flatten(0, 1), True)
            else:
                values[name] = (mod(current), is_varying)
                if not is_varying:
                    const[name] = values[name][0]
        return squeezed(*values[self.output_name])

    def _like(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the network's dtype and on its device (float32 input to a float64 net)."""
        ref = next((t for t in chain(self.parameters(), self.buffers()) if t.is_floating_point()), None)
        return x if ref is None else x.to(dtype=ref.dtype, device=ref.device)

    def simulate(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Run ``steps`` steps from the initial state; the Output node's values ``[T, B, ...]``.

        In windows of ``ceil(64 / B)`` steps (the reference's window), one squeezed call
        each, the neurons' state carried from window to window as sinabs keeps it; under
        constant input the layers before the first neuron run once, on ``[B, ...]``.
        """
        x = self._like(x)
        constant = self.input_encoding == "constant"
        if not constant and x.shape[0] != steps:
            raise ValueError(f"per-step input needs x of shape [T={steps}, B, ...], got {tuple(x.shape)}")
        batch = x.shape[0] if constant else x.shape[1]
        window = max(1, min(steps, -(-WINDOW_SAMPLES // max(batch, 1))))
        const: dict[str, torch.Tensor] = {}
        outs = []
        self.reset_states()
        for t0 in range(0, steps, window):
            k = min(window, steps - t0)
            xw = x if constant else x[t0:t0 + k].transpose(0, 1).reshape(batch * k, *x.shape[2:])
            out = self._run(xw, batch, k, varying=not constant, const=const)
            outs.append(out.reshape(batch, k, *out.shape[1:]).transpose(0, 1))
        self.reset_states()
        return torch.cat(outs)

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


def build_from_spec(spec: dict[str, Any], tensors: dict[str, torch.Tensor], batch_size: int | None = None,
                    num_timesteps: int | None = None) -> SinabsNetwork:
    """The sinabs network of an export spec (float64; call ``.float()`` for float32)."""
    return SinabsNetwork(spec, tensors, batch_size=batch_size, num_timesteps=num_timesteps).eval()


def load(folder: str | Path | None = None, batch_size: int | None = None,
         num_timesteps: int | None = None) -> SinabsNetwork:
    """Load an exported artifact folder (default: the folder of this file).

    Reads ``spec.json`` and ``tensors.pt`` (``torch.load(weights_only=True)``: tensors only,
    no code is unpickled).
    """
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
    spec = json.loads((folder / "spec.json").read_text())
    tensors = torch.load(folder / "tensors.pt", weights_only=True, map_location="cpu")
    return build_from_spec(spec, tensors, batch_size=batch_size, num_timesteps=num_timesteps)
