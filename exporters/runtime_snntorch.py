"""An snnTorch 1.0 network built from a bridge export spec.

This file is self-contained: it imports only torch and snntorch, so that it is copied
unchanged into an exported artifact (as ``model.py``) and also implements
``exporters.snntorch.build`` in-process; the two cannot diverge.

The IF node of a bridge graph, per neuron, at step t with input current I(t)::

    m(t) = v(t-1) + I(t)
    s(t) = [m(t) >= theta]
    v(t) = m(t) - theta * s(t)          (reset by subtraction, at the step of the spike)
    v(0) = v_init

snnTorch's ``Leaky(beta=1, reset_mechanism="subtract")`` is an IF neuron too, but not this
one bit for bit: it computes ``(mem + I) - reset * threshold`` (another order of operations,
so the last bits of the potential differ), applies the reset on the step *after* the spike,
fires on ``mem - threshold > 0`` (strict), emits float32 spikes and starts at ``mem = 0``.
:class:`IFLeaky` is a ``Leaky`` subclass that closes exactly these gaps with snnTorch's own
hooks:

* ``beta = 1`` and ``reset_mechanism="none"``: Leaky's state function is ``1 * mem + I``,
  which equals ``v + I`` exactly (multiplying by one is exact);
* ``spike_grad`` = :func:`fire_at_threshold`, the spike function snnTorch lets a user pass:
  ``[mem - threshold >= 0]`` in the potential's dtype. IEEE subtraction is exact in sign and
  ``a - b == 0`` only when ``a == b`` (gradual underflow), so it is ``[m >= theta]`` exactly;
  Leaky's ``fire`` multiplies by ``graded_spikes_factor = 1`` (exact);
* the reset is the reference's own subtraction ``m - s * theta``, applied in ``forward``
  right after Leaky's step, so ``mem`` holds the post-reset potential v(t);
* ``mem`` starts at the per-neuron ``v_init`` (expanded to the input's batch shape) wherever
  Leaky would start it at zero: a fresh neuron, after :meth:`IFLeaky.reset_mem`, or when the
  input's shape changes. Thresholds are per-neuron buffers (Leaky's threshold broadcasts).

Both snnTorch idioms work: ``init_hidden=True`` (the default here; state lives in the
neurons, ``net(x)`` is one step, ``net.reset()`` starts afresh) and explicit membrane
potentials (``load(init_hidden=False)``: ``out, mems = net(x, mems)``, ``mems=None`` starts
at v(0); a single neuron is ``spk, mem = neuron(cur, mem)``).

Usage (the artifact's README)::

    net = load("path/to/artifact")            # or exporters.snntorch.build(graph)
    y = net.predict(x, steps=32)              # [B, ...] readout; x is [B, *input_shape]
"""

from __future__ import annotations

import json
from itertools import chain
from pathlib import Path
from typing import Any

import snntorch
import torch
import torch.nn as nn
from snntorch import surrogate

SPEC_FORMAT = "bridge-export-spec/1"
WINDOW_SAMPLES = 64  # simulate() runs windows of ceil(64 / B) steps, as the reference does


class FireAtThreshold(surrogate.ATan):
    """snnTorch's ATan surrogate with the forward pass ``[x >= 0]`` in the dtype of ``x``.

    snnTorch's own spike functions fire on ``x > 0`` and return float32; the backward pass
    (arc-tan surrogate gradient) is snnTorch's, unchanged.
    """

    @staticmethod
    def forward(ctx: Any, input_: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
        ctx.save_for_backward(input_)
        ctx.alpha = alpha
        return (input_ >= 0).to(input_.dtype)


def fire_at_threshold(mem_shift: torch.Tensor) -> torch.Tensor:
    """The ``spike_grad`` of :class:`IFLeaky`: ``[mem - threshold >= 0]`` (see the module docstring)."""
    return FireAtThreshold.apply(mem_shift, 2.0)


class IFLeaky(snntorch.Leaky):
    """snnTorch's ``Leaky`` as bridge's IF neuron: ``beta = 1``, fire on ``m >= theta``,
    subtract reset at the step of the spike, per-neuron ``v(0) = v_init``.

    ``threshold`` and ``v_init`` have the neuron shape (no batch). ``forward(cur)`` returns
    the spikes (``init_hidden=True``) or ``(spikes, mem)``; ``mem`` is the post-reset
    potential v(t) in either case.
    """

    def __init__(self, threshold: torch.Tensor, v_init: torch.Tensor, init_hidden: bool = True,
                 output: bool = False) -> None:
        super().__init__(beta=1.0, threshold=threshold.detach().clone(), spike_grad=fire_at_threshold,
                         init_hidden=init_hidden, reset_mechanism="none", output=output)
        self.register_buffer("v_init", v_init.detach().clone())

    def mem_reset(self, mem: torch.Tensor) -> torch.Tensor:
        """Leaky's delayed reset signal, unused with ``reset_mechanism="none"``: not computed."""
        return mem.new_zeros(())

    def reset_mem(self) -> torch.Tensor:
        """Start afresh: the next step begins at ``v_init`` (Leaky's own reset gives zeros)."""
        self.mem = torch.zeros(0, dtype=self.v_init.dtype, device=self.v_init.device)
        return self.mem

    def forward(self, input_: torch.Tensor, mem: torch.Tensor | None = None) -> Any:
        if self.init_hidden and mem is not None:
            raise TypeError("`mem` should not be passed as an argument while `init_hidden=True`")
        if mem is not None:
            self.mem = mem
        if self.mem.shape != input_.shape:  # where Leaky would start at zeros: start at v(0)
            self.mem = self.v_init.to(dtype=input_.dtype, device=input_.device).expand(input_.shape).clone()
        out = super().forward(input_)  # m = 1 * mem + I; s = [m >= theta]; no reset
        spk = out[0] if isinstance(out, tuple) else out
        # the reference's subtraction v = m - theta s (as m + (-1) (s theta): s theta is exact)
        self.mem = torch.addcmul(self.mem, spk, self.threshold, value=-1)
        if self.output or not self.init_hidden:
            return spk, self.mem
        return spk

    def extra_repr(self) -> str:
        return f"threshold=<{tuple(self.threshold.shape)}>, beta=1, reset=subtract, spike=(mem >= threshold)"


class Scale(nn.Module):
    """NIR Scale: ``y = scale * x`` element-wise over the trailing (neuron) dimensions."""

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _layer(node: dict[str, Any], t: dict[str, torch.Tensor], init_hidden: bool) -> nn.Module:
    """One torch layer or snnTorch neuron per NIR node (float64; ``.float()`` converts)."""
    op, name = node["op"], node["name"]
    if op in ("input", "output"):
        return nn.Identity()
    if op == "if":
        return IFLeaky(t[f"{name}.threshold"], t[f"{name}.v_init"], init_hidden=init_hidden)
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


class SnnTorchNetwork(nn.Module):
    """A NIR graph as an snnTorch network, one time step per call (snnTorch's loop idiom).

    With ``init_hidden=True``, ``forward(x) -> out``: ``x`` is one step's input ``[B, ...]``,
    ``out`` the Output node's value; the state lives in the :class:`IFLeaky` neurons and
    :meth:`reset` starts every neuron afresh at its ``v_init``. With ``init_hidden=False``,
    ``forward(x, mems=None) -> (out, mems)`` with ``mems`` a dict NIR name -> membrane
    potential (None: every neuron at its ``v_init``). A node with several inputs receives
    their sum. :meth:`simulate` and :meth:`predict` add the graph's input encoding (the same
    input current every step) and readout (mean over T).
    """

    def __init__(self, spec: dict[str, Any], tensors: dict[str, torch.Tensor], init_hidden: bool = True) -> None:
        super().__init__()
        if spec.get("format") != SPEC_FORMAT:
            raise ValueError(f"unknown export spec format {spec.get('format')!r}, expected {SPEC_FORMAT}")
        self.init_hidden = init_hidden
        self.input_encoding: str = spec["input_encoding"]
        self.readout_kind: str = spec["readout"]
        self.nodes: list[dict[str, Any]] = [dict(n) for n in spec["nodes"]]
        self.layers = nn.ModuleDict()
        for node in self.nodes:
            key = module_name(node["name"])
            if key in self.layers:
                raise ValueError(f"two NIR nodes map to the module name {key!r}")
            self.layers[key] = _layer(node, tensors, init_hidden)
        self.output_name = next(n["name"] for n in self.nodes if n["op"] == "output")
        self.input_shape = tuple(next(n for n in self.nodes if n["op"] == "input")["shape"])

    @property
    def neuron_names(self) -> list[str]:
        """NIR names of the IF nodes, in execution order."""
        return [n["name"] for n in self.nodes if n["op"] == "if"]

    def neuron(self, name: str) -> IFLeaky:
        """The snnTorch neuron of the IF node ``name``."""
        return self.layers[module_name(name)]  # type: ignore[return-value]

    def reset(self) -> None:
        """Every neuron back to its initial potential (``reset_mem`` of each ``IFLeaky``)."""
        for name in self.neuron_names:
            self.neuron(name).reset_mem()

    def forward(self, x: torch.Tensor, mems: dict[str, torch.Tensor] | None = None) -> Any:
        if self.init_hidden and mems is not None:
            raise TypeError("`mems` should not be passed while `init_hidden=True`")
        values: dict[str, torch.Tensor] = {}
        new: dict[str, torch.Tensor] = {}
        for node in self.nodes:
            if node["op"] == "input":
                current = x
            else:
                ins = node["inputs"]
                current = values[ins[0]]
                for other in ins[1:]:  # several edges into a node: their sum
                    current = current + values[other]
            name = node["name"]
            mod = self.layers[module_name(name)]
            if node["op"] == "if" and not self.init_hidden:
                mem = mems.get(name) if mems is not None else None
                values[name], new[name] = mod(current, mem if mem is not None else mod.reset_mem())
            else:
                values[name] = mod(current)
        return values[self.output_name] if self.init_hidden else (values[self.output_name], new)

    def _like(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the network's dtype and on its device (float32 input to a float64 net)."""
        ref = next((t for t in chain(self.parameters(), self.buffers()) if t.is_floating_point()), None)
        return x if ref is None else x.to(dtype=ref.dtype, device=ref.device)

    def simulate(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Run ``steps`` steps from the initial state; the Output node's values ``[T, B, ...]``.

        Layer at a time, in windows of ``ceil(64 / B)`` steps (the reference's window; the
        numbers are those of ``steps`` calls of :meth:`forward`, the graph being
        feed-forward): each neuron is called once per step, in order, its state carried from
        window to window; the other layers see a window's steps at once (in float64 the
        weighted ones each step's ``[B, ...]`` slice, as the reference does), and under
        constant input the layers before the first neuron run once.
        """
        constant = self.input_encoding == "constant"
        if not constant and x.shape[0] != steps:
            raise ValueError(f"per-step input needs x of shape [T={steps}, B, ...], got {tuple(x.shape)}")
        x = self._like(x)
        batch = x.shape[0] if constant else x.shape[1]
        window = max(1, min(steps, -(-WINDOW_SAMPLES // max(batch, 1))))
        self.reset()
        const: dict[str, torch.Tensor] = {}  # time-invariant values, computed once
        mems: dict[str, torch.Tensor] = {}  # explicit potentials (init_hidden=False)
        outs = []
        for t0 in range(0, steps, window):
            k = min(window, steps - t0)
            outs.append(self._run_window(x if constant else x[t0:t0 + k], not constant, k, const, mems))
        self.reset()
        return torch.cat(outs)

    def _run_window(self, x: torch.Tensor, varying: bool, steps: int, const: dict[str, torch.Tensor],
                    mems: dict[str, torch.Tensor]) -> torch.Tensor:
        """``steps`` steps layer at a time from the neurons' current state; ``[steps, B, ...]``."""
        exact = x.dtype == torch.float64
        values: dict[str, tuple[torch.Tensor, bool]] = {}  # name -> (value, varies over T)
        for node in self.nodes:
            name, op = node["name"], node["op"]
            if name in const:
                values[name] = (const[name], False)
                continue
            if op == "input":
                values[name] = (x, varying)
                continue
            current, is_varying = values[node["inputs"][0]]
            for other in node["inputs"][1:]:  # several edges into a node: their sum
                value, other_varying = values[other]
                current, is_varying = current + value, is_varying or other_varying  # [T, B, ...] + [B, ...] broadcasts
            mod = self.layers[module_name(name)]
            if op == "if":
                spikes = []
                for t in range(steps):
                    cur = current[t] if is_varying else current
                    if mod.init_hidden:
                        spikes.append(mod(cur))
                    else:
                        spk, mems[name] = mod(cur, mems[name] if name in mems else mod.reset_mem())
                        spikes.append(spk)
                values[name] = (torch.stack(spikes), True)
            elif not is_varying:
                const[name] = mod(current)
                values[name] = (const[name], False)
            elif op in ("affine", "linear", "conv1d", "conv2d") and exact:
                values[name] = (torch.stack([mod(c) for c in current]), True)
            else:
                values[name] = (mod(current.flatten(0, 1)).unflatten(0, current.shape[:2]), True)
        out, is_varying = values[self.output_name]
        return out if is_varying else out.unsqueeze(0).expand(steps, *out.shape)

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


def build_from_spec(spec: dict[str, Any], tensors: dict[str, torch.Tensor], init_hidden: bool = True) -> SnnTorchNetwork:
    """The snnTorch network of an export spec (float64; call ``.float()`` for float32)."""
    return SnnTorchNetwork(spec, tensors, init_hidden=init_hidden).eval()


def load(folder: str | Path | None = None, init_hidden: bool = True) -> SnnTorchNetwork:
    """Load an exported artifact folder (default: the folder of this file).

    Reads ``spec.json`` and ``tensors.pt`` (``torch.load(weights_only=True)``: tensors only,
    no code is unpickled).
    """
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
    spec = json.loads((folder / "spec.json").read_text())
    tensors = torch.load(folder / "tensors.pt", weights_only=True, map_location="cpu")
    return build_from_spec(spec, tensors, init_hidden=init_hidden)
