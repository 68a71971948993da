r"""LayerGraph + thresholds -> ``nir.NIRGraph`` in the bridge encoding (docs/nir-extension.md).

**IF layers.** An activation op with per-neuron threshold ``theta`` becomes
``bridge.format.extension.make_if(theta, v_init)``: ``r = 1``, ``v_reset = 0``, reset by
subtraction, spike when ``m >= theta``, and the initial potential

.. math:: v_{init} = f\,\theta,\qquad f = \tfrac12 \text{ ("half", default)},\; 0 \text{ ("zero")},
          \text{ or a given } f \in [0, 1).

Under a constant current ``z`` its rate is ``clip(floor((T z + v_init) / theta), 0, T) / T``,
which tends to ``clip(z / theta, 0, 1)``.

**Unit spikes and theta absorption.** An IF node emits ``s in {0, 1}``; the ANN value it stands
for is ``theta * s``. While building, every layer value is a sum of terms
``sum_i k_i * out(node_i)`` with a per-element factor ``k_i`` (``k = theta`` right after an IF
node, ``1`` elsewhere). A consumer makes ``k`` disappear:

* conv (per input channel ``c``, ``k`` constant in the channel):
  :math:`\mathrm{conv}_W(k \odot x) = \mathrm{conv}_{W'}(x)`, :math:`W'_{o,c} = W_{o,c}\,k_c`.
  Grouped convolutions are written with ``groups = 1`` and a block-diagonal weight
  (:math:`W'_{o,c} = 0` outside the group of ``o``) because nir 1.0.8's type check gives a grouped
  ``Conv2d`` the input type ``(C_in / groups, H, W)``; the map is the same.
* affine (per input feature ``j``, e.g. after a flatten): :math:`W'_{o,j} = W_{o,j}\,k_j`.
* BatchNorm without a layer to fold into (per-channel affine ``y_c = a_c x_c + b_c``): written as
  ``Affine(diag(a k), b)`` on features, or as a 1x1 ``Conv2d``/``Conv1d`` with weight
  ``diag(a_c k_c)`` and bias ``b`` on channels.
* avg pool and flatten are linear and commute with a per-channel ``k``: ``k`` passes through
  (pooled per channel, flattened per feature).
* everything else (an IF fed by another IF or a pool of spikes, the Output, a ``k`` that varies
  inside a channel in front of a conv or pool, or the terms of a residual addition with
  different ``k``): a ``nir.Scale(k)`` node named ``<source>_scale`` is inserted after the
  source node, so the term becomes ``1 * out(scale)``.

**Residual additions** have no node: the terms of all summands become incoming edges of the
consumer (NIR sums the incoming edges of a node). Terms with the same source are merged
(``k_1 + k_2``). Because each term keeps its own ``k``, paths with different thresholds
(an identity shortcut from IF layer ``l`` joining a conv path) stay exact: the shortcut gets
``Scale(theta_l)`` and the conv path its plain output.
"""

from __future__ import annotations

from dataclasses import dataclass

import nir
import numpy as np
import torch

from bridge.format.errors import BridgeError
from bridge.format.extension import NAMESPACE, graph_metadata, make_if, qcfs_metadata
from bridge.converter.ir_eval import shapes as op_shapes
from bridge.converter.options import check_timesteps, v_init_fraction
from bridge.converter.ir import (
    ActivationOp,
    AddOp,
    AvgPoolOp,
    BatchNormOp,
    ConvOp,
    FlattenOp,
    InputOp,
    LayerGraph,
    LinearOp,
    MaxPoolOp,
    Op,
    OutputOp,
    ScaleOp,
)

@dataclass
class _Term:
    node: str
    k: np.ndarray | None  # per-element factor (shape of the node's output); None = 1


def _scaled(weight: np.ndarray, k: np.ndarray | None, dtype: type) -> np.ndarray:
    """``weight * k`` computed in float64 and rounded once to ``dtype``, a block of rows at a time
    (no full-size float64 temporary: an ImageNet classifier layer is 0.8 GB in float64)."""
    if k is None:
        return weight.astype(dtype, copy=True)
    out = np.empty(weight.shape, dtype=dtype)
    rows = max(1, (1 << 22) // max(1, weight[0].size))  # about 32 MB of float64 per block
    for i in range(0, weight.shape[0], rows):
        out[i:i + rows] = weight[i:i + rows] * k
    return out


def _dense(weight: torch.Tensor, groups: int) -> np.ndarray:
    """A grouped conv weight (Cout, Cin/g, *k) as the equivalent dense (Cout, Cin, *k); a view of
    ``weight`` (not a copy) when ``groups == 1``."""
    w = weight.detach().to(torch.float64).numpy()
    if groups == 1:
        return w
    cout, cin_g = w.shape[:2]
    co = cout // groups
    dense = np.zeros((cout, cin_g * groups, *w.shape[2:]), dtype=np.float64)
    for g in range(groups):
        dense[g * co:(g + 1) * co, g * cin_g:(g + 1) * cin_g] = w[g * co:(g + 1) * co]
    return dense


def _per_channel(k: np.ndarray) -> np.ndarray | None:
    """``k`` as one value per channel (dim 0) if it is constant inside every channel."""
    flat = k.reshape(k.shape[0], -1)
    return flat[:, 0].copy() if (flat == flat[:, :1]).all() else None


class _Builder:
    def __init__(self, graph: LayerGraph, thresholds: dict[str, np.ndarray], fraction: float,
                 shapes: dict[str, tuple[int, ...]] | None = None, weight_dtype: type = np.float64) -> None:
        self.graph = graph
        self.weight_dtype = weight_dtype  # conv / affine weights and biases as written to NIR
        self.thresholds = thresholds
        self.fraction = fraction
        self.shapes = shapes if shapes is not None else op_shapes(graph)
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []
        self.values: dict[str, list[_Term]] = {}
        self.scales: dict[tuple[str, bytes], str] = {}
        self.reserved = {"input", "output"} | set(graph.ops)

    # -- naming and terms ------------------------------------------------------------------
    def _name(self, op: Op) -> str:
        if isinstance(op, InputOp):
            return "input"
        if isinstance(op, OutputOp):
            return "output"
        return op.name if op.name not in ("input", "output") else self._fresh(f"{op.name}_")

    def _fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.reserved or name in self.nodes:
            i += 1
            name = f"{base}_{i}"
        return name

    def _node(self, name: str, node: nir.NIRNode, sources: list[str]) -> None:
        self.nodes[name] = node
        self.edges.extend((s, name) for s in sources)

    def _materialize(self, terms: list[_Term]) -> list[str]:
        """Sources whose plain sum is the value: a Scale node for every term with k != 1."""
        out = []
        for t in terms:
            if t.k is None or (t.k == 1.0).all():
                out.append(t.node)
                continue
            key = (t.node, t.k.tobytes())
            if key not in self.scales:
                name = self._fresh(f"{t.node}_scale")
                self._node(name, nir.Scale(scale=np.ascontiguousarray(t.k, dtype=np.float64)), [t.node])
                self.scales[key] = name
            out.append(self.scales[key])
        return out

    def _unify(self, terms: list[_Term]) -> tuple[list[str], np.ndarray | None]:
        """Sources and one common factor k (materialising terms whose k differ)."""
        first = terms[0].k
        if all((t.k is None and first is None) or (t.k is not None and first is not None
               and np.array_equal(t.k, first)) for t in terms):
            return [t.node for t in terms], first
        return self._materialize(terms), None

    def _channel_factor(self, op: Op) -> tuple[list[str], np.ndarray | None]:
        """Sources and a per-input-channel factor to absorb (None: nothing to absorb)."""
        terms = self.values[op.inputs[0]]
        sources, k = self._unify(terms)
        if k is None:
            return sources, None
        kc = _per_channel(k)
        if kc is None:  # k varies inside a channel: no weight can absorb it
            return self._materialize([_Term(s, k) for s in sources]), None
        return sources, kc

    # -- ops -------------------------------------------------------------------------------
    def build(self) -> dict[str, nir.NIRNode]:
        for op in self.graph.ops.values():
            handler = getattr(self, f"_{type(op).__name__}", None)
            if handler is None:
                raise BridgeError(f"layer {op.name!r} of type {type(op).__name__} cannot be written to NIR; "
                                  "MaxPool must be replaced first (maxpool='avg')")
            handler(op)
        return self.nodes

    def _InputOp(self, op: InputOp) -> None:
        self.nodes["input"] = nir.Input(input_type=np.array(op.shape))
        self.values[op.name] = [_Term("input", None)]

    def _conv_node(self, op: Op, weight: np.ndarray, bias: np.ndarray, stride, padding, dilation) -> None:
        in_shape = self.shapes[op.inputs[0]]
        sources, kc = self._channel_factor(op)
        weight = _scaled(weight, None if kc is None else kc.reshape((1, -1) + (1,) * (weight.ndim - 2)),
                         self.weight_dtype)
        name = self._name(op)
        bias = bias.astype(self.weight_dtype, copy=False)
        if weight.ndim == 4:
            node: nir.NIRNode = nir.Conv2d(
                input_shape=tuple(in_shape[1:]), weight=weight, stride=tuple(stride),
                padding=tuple(padding), dilation=tuple(dilation), groups=1, bias=bias)
        else:
            node = nir.Conv1d(input_shape=int(in_shape[1]), weight=weight, stride=int(stride[0]),
                              padding=int(padding[0]), dilation=int(dilation[0]), groups=1, bias=bias)
        self._node(name, node, sources)
        self.values[op.name] = [_Term(name, None)]

    def _ConvOp(self, op: ConvOp) -> None:
        self._conv_node(op, _dense(op.weight, op.groups), op.bias.detach().numpy().astype(np.float64),
                        op.stride, op.padding, op.dilation)

    def _affine_node(self, op: Op, weight: np.ndarray, bias: np.ndarray) -> None:
        in_shape = self.shapes[op.inputs[0]]
        if len(in_shape) != 1:
            raise BridgeError(f"linear layer {op.name!r} ({op.source}) is applied to a {len(in_shape) + 1}-d "
                              "tensor; flatten its input first (torch.flatten(x, 1))")
        sources, k = self._unify(self.values[op.inputs[0]])
        weight = _scaled(weight, None if k is None else k.reshape(1, -1), self.weight_dtype)
        name = self._name(op)
        bias = bias.astype(self.weight_dtype, copy=False)
        self._node(name, nir.Affine(weight=weight, bias=bias), sources)
        self.values[op.name] = [_Term(name, None)]

    def _LinearOp(self, op: LinearOp) -> None:
        self._affine_node(op, op.weight.detach().to(torch.float64).numpy(),
                          op.bias.detach().numpy().astype(np.float64))

    def _BatchNormOp(self, op: BatchNormOp) -> None:
        """Unfolded BatchNorm: y_c = a_c x_c + b_c, a = gamma / sqrt(var + eps), b = beta - a mu."""
        a = (op.weight / torch.sqrt(op.var + op.eps)).numpy()
        b = (op.bias - op.weight / torch.sqrt(op.var + op.eps) * op.mean).numpy()
        in_shape = self.shapes[op.inputs[0]]
        if len(in_shape) == 1:
            self._affine_node(op, np.diag(a), b)
        else:
            kernel_dims = (1,) * (len(in_shape) - 1)
            weight = np.diag(a).reshape(a.size, a.size, *kernel_dims)
            ones = (1,) * (len(in_shape) - 1)
            self._conv_node(op, weight, b, ones, (0,) * len(ones), ones)

    def _ActivationOp(self, op: ActivationOp) -> None:
        theta = self.thresholds[op.name]
        sources = self._materialize(self.values[op.inputs[0]])
        name = self._name(op)
        node = make_if(theta, self.fraction * theta)
        if op.kind == "qcfs":  # the staircase's L and shift, for readers and `bridge inspect`
            node.metadata[NAMESPACE].update(qcfs_metadata(int(op.levels), op.shift))  # type: ignore[arg-type]
        self._node(name, node, sources)
        self.values[op.name] = [_Term(name, theta)]

    def _AvgPoolOp(self, op: AvgPoolOp) -> None:
        sources, kc = self._channel_factor(op)
        name = self._name(op)
        self._node(name, nir.AvgPool2d(kernel_size=np.array(op.kernel), stride=np.array(op.stride),
                                       padding=np.array(op.padding)), sources)
        out_shape = self.shapes[op.name]
        k = None if kc is None else np.broadcast_to(kc.reshape(-1, 1, 1), out_shape).copy()
        self.values[op.name] = [_Term(name, k)]

    def _ScaleOp(self, op: ScaleOp) -> None:
        """A constant factor per element (a pool's divisor correction) multiplies every term's k."""
        f = np.broadcast_to(op.factor.detach().to(torch.float64).numpy(), self.shapes[op.name])
        self.values[op.name] = [_Term(t.node, f * (1.0 if t.k is None else t.k)) for t in self.values[op.inputs[0]]]

    def _FlattenOp(self, op: FlattenOp) -> None:
        sources, k = self._unify(self.values[op.inputs[0]])
        name = self._name(op)
        in_shape = self.shapes[op.inputs[0]]
        self._node(name, nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1), sources)
        self.values[op.name] = [_Term(name, None if k is None else k.reshape(-1).copy())]

    def _AddOp(self, op: AddOp) -> None:
        merged: dict[str, np.ndarray | None] = {}
        shape = self.shapes[op.name]
        for name in op.inputs:
            for t in self.values[name]:
                if t.node in merged:  # x + x: one edge with the summed factor
                    prev = merged[t.node]
                    merged[t.node] = (np.ones(shape) if prev is None else prev) + (1.0 if t.k is None else t.k)
                else:
                    merged[t.node] = t.k
        self.values[op.name] = [_Term(n, k) for n, k in merged.items()]

    def _OutputOp(self, op: OutputOp) -> None:
        sources = self._materialize(self.values[op.inputs[0]])
        self._node("output", nir.Output(output_type=np.array(self.shapes[op.name])), sources)

    def _MaxPoolOp(self, op: MaxPoolOp) -> None:
        raise BridgeError(f"max pooling {op.name!r} reached the NIR builder; convert with maxpool='avg'")


def build_nir(
    graph: LayerGraph,
    thresholds: dict[str, np.ndarray],
    *,
    v_init: str | float = "half",
    timesteps: int | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    weight_dtype: type = np.float64,
) -> nir.NIRGraph:
    """The NIR graph of a folded LayerGraph with per-neuron thresholds (see module docstring).

    Conv and affine weights and biases are written as ``weight_dtype`` (computed in float64, rounded
    once at the end); thresholds, initial potentials and scales stay float64.
    """
    check_timesteps(timesteps)
    builder = _Builder(graph, thresholds, v_init_fraction(v_init), shapes, weight_dtype)
    nodes = builder.build()
    return nir.NIRGraph(nodes=nodes, edges=builder.edges, metadata=graph_metadata(timesteps), type_check=True)
