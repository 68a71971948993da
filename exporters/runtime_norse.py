"""A Norse 1.1 network built from a bridge export spec.

This file is self-contained: it imports only torch and norse, so that it is copied
unchanged into an exported artifact (as ``model.py``) and also implements
``exporters.norse.build`` in-process; the two cannot diverge.

Norse's ``IAFCell`` fires when ``v - v_th > 0`` and resets to a value. The IF node of a
bridge graph, per neuron, at step t with input current I(t)::

    m(t) = v(t-1) + I(t)
    s(t) = [m(t) >= theta]
    v(t) = m(t) - theta * s(t)          (reset by subtraction)
    v(0) = v_init

is written with Norse's own functional primitives (:func:`if_subtract_feed_forward_step`):

* the charge is ``iaf_feed_forward_step``'s ``v + x``;
* the spike is Norse's ``threshold(m - theta_fire, method, alpha)`` (strict ``> 0``) with
  ``theta_fire = nextafter(theta, -inf)`` in the dtype of ``m``. For floating-point numbers
  ``m - a > 0  <=>  m > a`` (IEEE subtraction is exact in sign, with gradual underflow), and
  no number of that dtype lies strictly between ``theta_fire`` and ``theta``, so
  ``m > theta_fire  <=>  m >= theta`` exactly, in float64 and in float32;
* the reset is Norse's ``reset_subtract(z, m, v_reset, theta) = (1 - z) m + z (m - theta)``,
  which equals ``m - theta z`` exactly for ``z`` in {0, 1}.

The state is Norse's ``IAFFeedForwardState(v)``; a missing state starts at the per-neuron
``v_init`` expanded to the input's batch shape. Thresholds are per-neuron tensors (Norse's
parameters broadcast), so no weight normalisation is needed.

Usage (the artifact's README)::

    net = load("path/to/artifact")            # or exporters.norse.build(graph)
    y = net.predict(x, steps=32)              # [B, ...] readout; x is [B, *input_shape]
"""

from __future__ import annotations

import json
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from norse.torch.functional.iaf import IAFFeedForwardState, IAFParameters
from norse.torch.functional.reset import reset_subtract
from norse.torch.functional.threshold import threshold
from norse.torch.module.snn import SNNCell

SPEC_FORMAT = "bridge-export-spec/1"


def if_subtract_feed_forward_step(
    input_tensor: torch.Tensor,
    state: IAFFeedForwardState,
    p: IAFParameters,
    dt: float = 0.001,
) -> tuple[torch.Tensor, IAFFeedForwardState]:
    r"""One step of an IF neuron with reset by subtraction and spike condition ``v >= v_th``.

    .. math::
        m = v + x, \quad z = \Theta(m - \theta^-) = [m \ge v_{th}], \quad
        v' = (1 - z)\, m + z\, (m - v_{th})

    with :math:`\theta^- = \mathrm{nextafter}(v_{th}, -\infty)` in the dtype of ``m`` (see the
    module docstring for why this is exact). ``p.v_reset`` is unused (no hard reset);
    ``dt`` is unused, as in Norse's ``iaf_feed_forward_step``.
    """
    v_new = state.v + input_tensor
    v_th = p.v_th.to(dtype=v_new.dtype, device=v_new.device)
    fire_above = torch.nextafter(v_th, torch.full_like(v_th, -torch.inf))
    z_new = threshold(v_new - fire_above, p.method, p.alpha)
    v_new = reset_subtract(z_new, v_new, p.v_reset, v_th)
    return z_new, IAFFeedForwardState(v=v_new)


class IFSubtractCell(SNNCell):
    """A Norse cell for one IF node: forward(x, state=None) -> (z, IAFFeedForwardState).

    ``v_th`` and ``v_init`` have the neuron shape (no batch) and are buffers, so
    ``.to(dtype/device)`` moves them with the model.
    """

    def __init__(self, v_th: torch.Tensor, v_init: torch.Tensor, method: str = "super", alpha: float = 100.0) -> None:
        super().__init__(if_subtract_feed_forward_step, self.initial_state,
                         IAFParameters(v_th=v_th, v_reset=torch.zeros(()), method=method,
                                       alpha=torch.as_tensor(alpha)), dt=1.0)
        self.register_buffer("v_th", v_th.detach().clone())
        self.register_buffer("v_init", v_init.detach().clone())

    def initial_state(self, input_tensor: torch.Tensor) -> IAFFeedForwardState:
        """v(0) = v_init for every sample of the batch."""
        v = self.v_init.to(dtype=input_tensor.dtype, device=input_tensor.device)
        return IAFFeedForwardState(v=v.expand(input_tensor.shape).clone())

    def forward(self, input_tensor: torch.Tensor, state: IAFFeedForwardState | None = None
                ) -> tuple[torch.Tensor, IAFFeedForwardState]:
        self.p = self.p._replace(v_th=self.v_th)  # the buffer, on the model's device/dtype
        return super().forward(input_tensor, state)

    def extra_repr(self) -> str:
        return f"v_th=<{tuple(self.v_th.shape)}>, reset=subtract, spike=(v >= v_th)"


class Scale(nn.Module):
    """NIR Scale: ``y = scale * x`` element-wise over the trailing (neuron) dimensions."""

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _layer(node: dict[str, Any], t: dict[str, torch.Tensor]) -> nn.Module:
    """One torch layer or Norse cell per NIR node (float64; ``.float()`` converts)."""
    op, name = node["op"], node["name"]
    if op in ("input", "output"):
        return nn.Identity()
    if op == "if":
        return IFSubtractCell(t[f"{name}.threshold"], t[f"{name}.v_init"])
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


def module_name(node_name: str) -> str:
    """Submodule name of a NIR node (its name; torch forbids '.' in module names)."""
    return node_name.replace(".", "_") or "_"


class NetworkState(NamedTuple):
    """The network's state: one ``IAFFeedForwardState`` per IF node, in ``neuron_names`` order."""

    neurons: tuple[IAFFeedForwardState, ...]


class NorseNetwork(nn.Module):
    """A NIR graph as a Norse network, one time step per call (Norse's cell idiom).

    ``forward(x, state=None) -> (out, state)``: ``x`` is one step's input ``[B, ...]``,
    ``out`` the Output node's value ``[B, ...]``, ``state`` a :class:`NetworkState` (None:
    every neuron at its ``v_init``). A node with several inputs receives their sum.
    :meth:`simulate` and :meth:`predict` add the graph's input encoding (the same input
    current every step) and readout (mean over T).
    """

    def __init__(self, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
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
            self.layers[key] = _layer(node, tensors)
        self.output_name = next(n["name"] for n in self.nodes if n["op"] == "output")
        self.input_shape = tuple(next(n for n in self.nodes if n["op"] == "input")["shape"])

    @property
    def neuron_names(self) -> list[str]:
        """NIR names of the IF nodes, the order of ``NetworkState.neurons``."""
        return [n["name"] for n in self.nodes if n["op"] == "if"]

    def neuron(self, name: str) -> IFSubtractCell:
        return self.layers[module_name(name)]  # type: ignore[return-value]

    def forward(self, x: torch.Tensor, state: NetworkState | None = None) -> tuple[torch.Tensor, NetworkState]:
        values: dict[str, torch.Tensor] = {}
        old = iter(state.neurons) if state is not None else None
        new: list[IAFFeedForwardState] = []
        for node in self.nodes:
            if node["op"] == "input":
                current = x
            else:
                ins = node["inputs"]
                current = values[ins[0]]
                for other in ins[1:]:  # several edges into a node: their sum
                    current = current + values[other]
            mod = self.layers[module_name(node["name"])]
            if node["op"] == "if":
                z, s = mod(current, next(old) if old is not None else None)
                new.append(s)
                values[node["name"]] = z
            else:
                values[node["name"]] = mod(current)
        return values[self.output_name], NetworkState(tuple(new))

    def _like(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the network's dtype and on its device (float32 input to a float64 net)."""
        ref = next((t for t in chain(self.parameters(), self.buffers()) if t.is_floating_point()), None)
        return x if ref is None else x.to(dtype=ref.dtype, device=ref.device)

    def simulate(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Run ``steps`` steps from the initial state; the Output node's values ``[T, B, ...]``."""
        if self.input_encoding != "constant" and x.shape[0] != steps:
            raise ValueError(f"per-step input needs x of shape [T={steps}, B, ...], got {tuple(x.shape)}")
        x = self._like(x)
        state = None
        outs = []
        for t in range(steps):
            out, state = self(x if self.input_encoding == "constant" else x[t], state)
            outs.append(out)
        return torch.stack(outs)

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


def build_from_spec(spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> NorseNetwork:
    """The Norse network of an export spec (float64; call ``.float()`` for float32)."""
    return NorseNetwork(spec, tensors).eval()


def load(folder: str | Path | None = None) -> NorseNetwork:
    """Load an exported artifact folder (default: the folder of this file).

    Reads ``spec.json`` and ``tensors.pt`` (``torch.load(weights_only=True)``: tensors only,
    no code is unpickled).
    """
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
    spec = json.loads((folder / "spec.json").read_text())
    tensors = torch.load(folder / "tensors.pt", weights_only=True, map_location="cpu")
    return build_from_spec(spec, tensors)
