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
  :math:`\mathrm{conv}_W(k \odot x) = \mathrm{conv}_{W'}(x)`, :math:`W'_{o,c} = W_{o,c}\,k_c`
  (:func:`bridge.format.graph.scale_input_channels`, as every pass that moves a factor).
  Grouped convolutions are written with ``groups = 1`` and a block-diagonal weight
  (:math:`W'_{o,c} = 0` outside the group of ``o``) because nir 1.0.8's type check gives a grouped
  ``Conv2d`` the input type ``(C_in / groups, H, W)``; the map is the same. The node's metadata
  says so (``bridge.format.extension.conv_metadata(groups)``), and bridge's own readers run it
  grouped again.
* affine (per input feature ``j``, e.g. after a flatten): :math:`W'_{o,j} = W_{o,j}\,k_j`.
* BatchNorm without a layer to fold into (per-channel affine ``y_c = a_c x_c + b_c``): written as
  ``Affine(diag(a k), b)`` on features, or as a 1x1 ``Conv2d``/``Conv1d`` with weight
  ``diag(a_c k_c)`` and bias ``b`` on channels (a depthwise conv: written with ``groups = C``
  metadata, like any grouped conv).
* avg pool and flatten are linear and commute with a per-channel ``k``: ``k`` passes through
  (pooled per channel, flattened per feature).
* adaptive avg pool (PyTorch's windows, :mod:`bridge.converter.adaptive_pool`): an
  ``AvgPool2d`` where its windows are one kernel and stride (``k`` passes through), else
  ``Flatten`` + ``Affine(P diag(k))``, allowed only where every consumer is a flatten (the
  value is then already flat and the flatten writes no node).
* everything else (an IF fed by another IF or a pool of spikes, the Output, a ``k`` that varies
  inside a channel in front of a conv or pool, or the terms of a residual addition with
  different ``k``): a ``nir.Scale(k)`` node named ``<source>_scale`` is inserted after the
  source node, so the term becomes ``1 * out(scale)``.

**Concatenations, channel slices and shuffles** have no node either: a term also carries a
channel gather ``idx`` (value channel ``j`` is node channel ``idx[j]``, or nothing), so a value
is :math:`\sum_t G_t(k_t \odot out(node_t))`. ``ConcatOp`` places each input's terms at its
channel offset, ``ChannelGatherOp`` composes the gathers; consumers absorb them (standard nodes
only; docs/nir-extension.md):

* conv / affine: term ``t`` is read through :math:`W_t[:, c] = \sum_{j: idx_t[j] = c} W[:, j]`
  (one node per term, the bias on the first, summed at the next node): the consumer's weights,
  split by input channel;
* per-channel layers (BatchNorm, depthwise conv, average pool, Scale, flatten) run in each
  term's own channels and keep its gather;
* an IF layer is split into channel pieces (:meth:`_Builder._pieces`); where terms overlap, a
  term is written in the piece's channels by a copy of its producer's weight rows (a conv /
  affine the builder wrote) or a 1x1 0/1 projection (anything else; :meth:`_Builder._place`).

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
from bridge.format.extension import NAMESPACE, conv_metadata, dense_conv_weight, graph_metadata, make_if, qcfs_metadata
from bridge.format.graph import per_channel, scale_input_channels
from bridge.converter.adaptive_pool import adaptive_pool_as_avgpool, adaptive_pool_matrix
from bridge.converter.ir_eval import shapes as op_shapes
from bridge.converter.options import check_timesteps, v_init_fraction
from bridge.converter.ir import (
    ActivationOp,
    AdaptiveAvgPoolOp,
    AddOp,
    AvgPoolOp,
    BatchNormOp,
    ChannelGatherOp,
    ConcatOp,
    ConvOp,
    FlattenOp,
    InputOp,
    LayerGraph,
    LayerOp,
    LinearOp,
    MaxPoolOp,
    OutputOp,
    ScaleOp,
    cast_op,
)

@dataclass
class _Term:
    """One summand of a value: ``G(k * out(node))``, ``G`` the channel gather ``idx``."""

    node: str
    k: np.ndarray | None  # per-element factor (shape of the node's output); None = 1
    idx: np.ndarray | None = None  # value channel j <- node channel idx[j] (-1: none); None: identity


def _arange_idx(t: _Term, channels: int) -> np.ndarray:
    return np.arange(channels, dtype=np.int64) if t.idx is None else t.idx


def _injective(idx: np.ndarray) -> bool:
    used = idx[idx >= 0]
    return len(np.unique(used)) == len(used)


def _block_groups(weight: np.ndarray, groups: int) -> int:
    """``groups`` if the dense ``weight`` is zero outside the block diagonal of ``groups``, else 1."""
    if groups <= 1:
        return 1
    cout, cin = weight.shape[:2]
    if cout % groups or cin % groups:
        return 1
    co, ci = cout // groups, cin // groups
    mask = np.kron(np.eye(groups, dtype=bool), np.ones((co, ci), dtype=bool))
    mask = mask.reshape(cout, cin, *(1,) * (weight.ndim - 2))
    return groups if not np.any(np.where(mask, 0.0, weight)) else 1


@dataclass
class _Linear:
    """A conv / affine node the builder wrote, kept so that a gather of its output channels can be
    written as a copy with those rows (a slice absorbed into the producer)."""

    weight: np.ndarray  # dense
    bias: np.ndarray
    sources: list[str]
    params: dict  # stride, padding, dilation, input_shape (conv)


#: float64 numbers per block of output rows when a weight is scaled and rounded (16 MiB)
_BLOCK_NUMBERS = 1 << 21


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    """A layer-graph tensor as a NumPy array in its own precision, without a copy (it may be the
    model's own parameter: read only); bfloat16, which NumPy lacks, is up-cast to float64."""
    t = t.detach()
    return t.numpy() if t.dtype in (torch.float16, torch.float32, torch.float64) else t.to(torch.float64).numpy()


def _dense(weight: torch.Tensor, groups: int) -> np.ndarray:
    """A grouped conv weight (Cout, Cin/g, *k) as the equivalent dense (Cout, Cin, *k), float64;
    an ungrouped one as it is (the layer graph's array, in the model's precision: read only,
    up-cast block by block where it is written, :meth:`_Builder._rounded`)."""
    if groups == 1:
        return _as_numpy(weight)
    return dense_conv_weight(weight.detach().to(torch.float64).numpy(), groups)


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
        self.flat: set[str] = set()  # ops whose value is already flat (an adaptive pool's Affine)
        self.node_shapes: dict[str, tuple[int, ...]] = {}  # NIR node -> output shape (one sample)
        self.linear: dict[str, _Linear] = {}  # conv / affine nodes whose rows may be gathered

    # -- naming and terms ------------------------------------------------------------------
    def _name(self, op: LayerOp) -> str:
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

    def _node(self, name: str, node: nir.NIRNode, sources: list[str], shape: tuple[int, ...] | None = None) -> None:
        self.nodes[name] = node
        self.edges.extend((s, name) for s in sources)
        if shape is not None:
            self.node_shapes[name] = tuple(int(v) for v in shape)

    def _materialize(self, terms: list[_Term]) -> list[str]:
        """Sources whose plain sum is the value: a Scale node for every term with k != 1
        (identity terms only: gathered terms are aligned first, :meth:`_aligned`)."""
        out = []
        for t in terms:
            out.append(self._scaled(t))
        return out

    def _scaled(self, t: _Term) -> str:
        """The node ``k * out(t.node)`` (a Scale node where ``k != 1``), in the node's space."""
        if t.k is None or (t.k == 1.0).all():
            return t.node
        key = (t.node, t.k.tobytes())
        if key not in self.scales:
            name = self._fresh(f"{t.node}_scale")
            self._node(name, nir.Scale(scale=np.ascontiguousarray(t.k, dtype=np.float64)), [t.node],
                       self.node_shapes[t.node])
            self.scales[key] = name
        return self.scales[key]

    def _unify(self, terms: list[_Term]) -> tuple[list[str], np.ndarray | None]:
        """Sources and one common factor k (materialising terms whose k differ)."""
        first = terms[0].k
        if all((t.k is None and first is None) or (t.k is not None and first is not None
               and np.array_equal(t.k, first)) for t in terms):
            return [t.node for t in terms], first
        return self._materialize(terms), None

    def _channel_factor_of(self, terms: list[_Term]) -> tuple[list[str], np.ndarray | None]:
        """Sources and a per-input-channel factor to absorb (None: nothing to absorb)."""
        sources, k = self._unify(terms)
        if k is None:
            return sources, None
        kc = per_channel(k)
        if kc is None:  # k varies inside a channel: no weight can absorb it
            return self._materialize([_Term(s, k) for s in sources]), None
        return sources, kc

    def _channel_factor(self, op: LayerOp) -> tuple[list[str], np.ndarray | None]:
        return self._channel_factor_of(self._aligned(op.inputs[0]))

    # -- gathered terms (concatenation, slices, shuffles) --------------------------------------
    def _terms(self, value: str) -> tuple[list[_Term], list[_Term]]:
        """The value's identity terms and its gathered terms."""
        terms = self.values[value]
        return [t for t in terms if t.idx is None], [t for t in terms if t.idx is not None]

    def _merge(self, terms: list[_Term]) -> list[_Term]:
        """Terms of the same node with the same factor and disjoint channels become one term."""
        out: list[_Term] = []
        for t in terms:
            for i, u in enumerate(out):
                if (u.node == t.node and u.idx is not None and t.idx is not None
                        and ((u.k is None and t.k is None) or (u.k is not None and t.k is not None
                                                               and np.array_equal(u.k, t.k)))
                        and not np.any((u.idx >= 0) & (t.idx >= 0))):
                    out[i] = _Term(u.node, u.k, np.where(u.idx >= 0, u.idx, t.idx))
                    break
            else:
                out.append(t)
        for i, t in enumerate(out):  # a gather that is the identity
            if t.idx is not None and len(t.idx) == self.node_shapes[t.node][0] and \
                    np.array_equal(t.idx, np.arange(len(t.idx))):
                out[i] = _Term(t.node, t.k, None)
        return out

    def _place(self, t: _Term, rows: np.ndarray, name_hint: str) -> str:
        r"""A node computing :math:`y_p = (k \odot out(node))_{rows[p]}` (0 where ``rows[p] < 0``).

        A conv / affine node the builder wrote gets a copy with those output rows (the gather
        absorbed into the producer, as many weights as rows); any other node a fixed 0/1
        projection: a 1x1 conv (an ``Affine`` on features) with weight ``P[p, rows[p]] = k``."""
        shape = self.node_shapes[t.node]
        kc = None if t.k is None else per_channel(t.k)
        lin = self.linear.get(t.node)
        name = self._fresh(f"{t.node}_{name_hint}")
        out_shape = (len(rows), *shape[1:])
        if lin is not None and (t.k is None or kc is not None):
            scale = np.ones(shape[0]) if kc is None else kc
            valid = rows >= 0
            safe = np.where(valid, rows, 0)
            mask = valid.reshape(-1, *(1,) * (lin.weight.ndim - 1))
            weight = np.where(mask, lin.weight[safe] * scale[safe].reshape(-1, *(1,) * (lin.weight.ndim - 1)), 0.0)
            bias = np.where(valid, lin.bias[safe] * scale[safe], 0.0)
            self._weighted(name, weight, bias, lin.sources, lin.params, out_shape, groups=1)
            return name
        src = t.node if kc is not None or t.k is None else self._scaled(t)
        factor = kc if kc is not None else np.ones(shape[0])
        weight = np.zeros((len(rows), shape[0]), dtype=np.float64)
        for p, c in enumerate(rows):
            if c >= 0:
                weight[p, c] = factor[c]
        if len(shape) == 1:
            self._weighted(name, weight, np.zeros(len(rows)), [src], {}, out_shape)
        else:
            weight = weight.reshape(*weight.shape, *(1,) * (len(shape) - 1))
            ones = (1,) * (len(shape) - 1)
            self._weighted(name, weight, np.zeros(len(rows)), [src],
                           {"stride": ones, "padding": (0,) * len(ones), "dilation": ones,
                            "input_shape": shape}, out_shape)
        return name

    def _aligned(self, value: str) -> list[_Term]:
        """The value's terms, every gathered one written in the value's own channels (fallback
        for consumers that need one channel space: :meth:`_place`)."""
        ident, gathered = self._terms(value)
        if not gathered:
            return ident
        out = list(ident)
        for t in gathered:
            out.append(_Term(self._place(t, t.idx, "place"), None))  # type: ignore[arg-type]
        self.values[value] = out
        return out

    def _if_node(self, op: ActivationOp, theta: np.ndarray) -> nir.IF:
        """The IF node of ``op`` with thresholds ``theta``; a QCFS activation also records its
        staircase (L and shift) for readers and ``bridge inspect``."""
        node = make_if(theta, self.fraction * theta)
        if op.kind == "qcfs":
            node.metadata[NAMESPACE].update(qcfs_metadata(int(op.levels), op.shift))  # type: ignore[arg-type]
        return node

    def _rounded(self, weight: np.ndarray, kc: np.ndarray | None) -> np.ndarray:
        r"""The dense weight :math:`W'_{o,c} = W_{o,c}\,k_c` (``kc`` None: :math:`W`) as written, in
        ``weight_dtype``: computed in float64 and rounded once, as :meth:`_weighted` does, but a
        block of output rows at a time, so that neither a float64 copy of the whole weight nor
        the whole float64 product exists (an ImageNet classifier's 103 M-weight matrix: 0.8 GB
        each). Always a new array: ``weight`` may be the model's own parameter."""
        if kc is None:  # W itself: up-casting is exact, so the one rounding is this cast
            return weight.astype(self.weight_dtype)
        out = np.empty(weight.shape, dtype=self.weight_dtype)
        rows = max(1, _BLOCK_NUMBERS // max(1, weight[0].size))
        for i in range(0, weight.shape[0], rows):
            out[i:i + rows] = scale_input_channels(weight[i:i + rows].astype(np.float64), kc)
        return out

    def _weighted(self, name: str, weight: np.ndarray, bias: np.ndarray, sources: list[str], params: dict,
                  out_shape: tuple[int, ...], groups: int = 1) -> None:
        """A conv (``params`` has ``input_shape``) or affine node with a dense ``weight``.

        The builder computes in float64; the node gets the values rounded once to ``weight_dtype``
        (the model's precision by default), and ``self.linear`` keeps the node's own arrays for
        later rewrites (keeping float64 copies too would double the peak of an ImageNet model)."""
        weight = weight.astype(self.weight_dtype, copy=False)
        bias = bias.astype(self.weight_dtype, copy=False)
        if weight.ndim == 2:
            self._node(name, nir.Affine(weight=weight, bias=bias), sources, out_shape)
        elif weight.ndim == 4:
            self._node(name, nir.Conv2d(
                input_shape=tuple(params["input_shape"][1:]), weight=weight, stride=tuple(params["stride"]),
                padding=tuple(params["padding"]), dilation=tuple(params["dilation"]), groups=1, bias=bias,
                metadata=conv_metadata(groups)), sources, out_shape)
        else:
            self._node(name, nir.Conv1d(
                input_shape=int(params["input_shape"][1]), weight=weight, stride=int(params["stride"][0]),
                padding=int(params["padding"][0]), dilation=int(params["dilation"][0]), groups=1, bias=bias,
                metadata=conv_metadata(groups)), sources, out_shape)
        self.linear[name] = _Linear(weight, bias, list(sources), dict(params))

    # -- ops -------------------------------------------------------------------------------
    def build(self) -> dict[str, nir.NIRNode]:
        for op in self.graph.ops.values():
            handler = getattr(self, f"_{type(op).__name__}", None)
            if handler is None:
                raise BridgeError(f"layer {op.name!r} of type {type(op).__name__} cannot be written to NIR; "
                                  "MaxPool must be replaced first (maxpool='avg')")
            handler(op)
        self._prune()
        return self.nodes

    def _prune(self) -> None:
        """Drop nodes whose output reaches nothing (producers replaced by a copy with gathered rows)."""
        needed, stack = {"output"}, ["output"]
        sources: dict[str, list[str]] = {}
        for a, b in self.edges:
            sources.setdefault(b, []).append(a)
        while stack:
            for a in sources.get(stack.pop(), []):
                if a not in needed:
                    needed.add(a)
                    stack.append(a)
        needed.add("input")
        self.nodes = {n: v for n, v in self.nodes.items() if n in needed}
        self.edges = [(a, b) for a, b in self.edges if a in needed and b in needed]

    def _InputOp(self, op: InputOp) -> None:
        self._node("input", nir.Input(input_type=np.array(op.shape)), [], tuple(op.shape))
        self.values[op.name] = [_Term("input", None)]

    def _conv_node(self, op: LayerOp, weight: np.ndarray, bias: np.ndarray, stride, padding, dilation,
                   groups: int = 1) -> None:
        """A conv node; ``weight`` is dense (groups=1), ``groups`` the group count it encodes.

        Gathered input terms: a depthwise conv (BatchNorm included) is applied in each term's own
        channels (:meth:`_per_channel_conv`); any other conv reads term ``t`` through the weight
        :math:`W_t[:, c] = \\sum_{j: idx_t[j] = c} W[:, j]` (one node per term, the bias on the
        first; NIR sums them at the consumer)."""
        in_shape = self.shapes[op.inputs[0]]
        params = {"stride": stride, "padding": padding, "dilation": dilation, "input_shape": in_shape}
        ident, gathered = self._terms(op.inputs[0])
        name = self._name(op)
        depthwise = groups > 1 and groups == weight.shape[0] == weight.shape[1]
        if gathered and depthwise and self._per_channel_conv(op, weight, bias, params, groups):
            return
        out_terms: list[_Term] = []
        if ident or not gathered:
            sources, kc = self._channel_factor_of(ident) if ident else ([], None)
            if groups == 1:  # the op's own weight (perhaps the model's, float32): scaled in blocks
                self._weighted(name, self._rounded(weight, kc), bias, sources, params, self.shapes[op.name])
            else:
                # block diagonal by construction (_dense / a BatchNorm's diagonal); scaling columns keeps it
                w = scale_input_channels(weight, kc) if kc is not None else weight
                self._weighted(name, w, bias, sources, params, self.shapes[op.name], groups)
            out_terms.append(_Term(name, None))
            bias = np.zeros_like(bias)
        for t in gathered:
            shape = self.node_shapes[t.node]
            kc = None if t.k is None else per_channel(t.k)
            src = t.node if kc is not None or t.k is None else self._scaled(t)
            w = np.zeros((weight.shape[0], shape[0], *weight.shape[2:]), dtype=np.float64)
            for j, c in enumerate(t.idx):  # type: ignore[arg-type]
                if c >= 0:
                    w[:, c] += weight[:, j]
            if kc is not None:
                w = scale_input_channels(w, kc)
            part = self._fresh(f"{name}_part") if out_terms else name
            self._weighted(part, w, bias, [src], {**params, "input_shape": shape}, self.shapes[op.name],
                           _block_groups(w, groups))
            out_terms.append(_Term(part, None))
            bias = np.zeros_like(bias)
        self.values[op.name] = out_terms

    def _bias_owner(self, terms: list[_Term], channels: int) -> np.ndarray | None:
        """For each value channel the index of the first term covering it (-1: none), or None
        when a gathered term repeats a node channel (then no per-channel op can run in its space)."""
        owner = np.full(channels, -1, dtype=np.int64)
        for i, t in enumerate(terms):
            idx = _arange_idx(t, channels)
            if t.idx is not None and not _injective(idx):
                return None
            owner = np.where((owner < 0) & (idx >= 0), i, owner)
        return owner

    def _per_channel_conv(self, op: LayerOp, weight: np.ndarray, bias: np.ndarray, params: dict,
                          groups: int) -> bool:
        """A depthwise conv / BatchNorm on a sum of gathered terms, each term in its own channels:
        node channel ``idx[j]`` gets the weight of value channel ``j``. False where it cannot."""
        terms = self.values[op.inputs[0]]
        channels = weight.shape[0]
        owner = self._bias_owner(terms, channels)
        if owner is None or np.any((owner < 0) & (bias != 0)):
            return False
        out: list[_Term] = []
        name = self._name(op)
        for i, t in enumerate(terms):
            shape = self.node_shapes[t.node]
            idx = _arange_idx(t, channels)
            kc = None if t.k is None else per_channel(t.k)
            src = t.node if kc is not None or t.k is None else self._scaled(t)
            w = np.zeros((shape[0], shape[0], *weight.shape[2:]), dtype=np.float64)
            b = np.zeros(shape[0])
            for j, c in enumerate(idx):
                if c >= 0:
                    w[c, c] = weight[j, j] * (1.0 if kc is None else kc[c])
                    if owner[j] == i:
                        b[c] = bias[j]
            part = name if i == 0 else self._fresh(f"{name}_part")
            out_shape = (shape[0], *self.shapes[op.name][1:])
            self._weighted(part, w, b, [src], {**params, "input_shape": shape}, out_shape, shape[0])
            out.append(_Term(part, None, t.idx))
        self.values[op.name] = self._merge(out)
        return True

    def _ConvOp(self, op: ConvOp) -> None:
        self._conv_node(op, _dense(op.weight, op.groups), op.bias.detach().to(torch.float64).numpy(),
                        op.stride, op.padding, op.dilation, op.groups)

    def _affine_node(self, op: LayerOp, weight: np.ndarray, bias: np.ndarray) -> None:
        in_shape = self.shapes[op.inputs[0]]
        if len(in_shape) != 1:
            raise BridgeError(f"linear layer {op.name!r} ({op.source}) is applied to a {len(in_shape) + 1}-d "
                              "tensor; flatten its input first (torch.flatten(x, 1))")
        self._conv_node(op, weight, bias, (), (), ())

    def _LinearOp(self, op: LinearOp) -> None:
        # no copy: the weight is read in the model's precision and up-cast in blocks (_rounded)
        self._affine_node(op, _as_numpy(op.weight), op.bias.detach().to(torch.float64).numpy())

    def _BatchNormOp(self, op: BatchNormOp) -> None:
        """Unfolded BatchNorm: y_c = a_c x_c + b_c, a = gamma / sqrt(var + eps), b = beta - a mu."""
        op = cast_op(op, torch.float64)  # type: ignore[assignment]  (computed in float64)
        a = (op.weight / torch.sqrt(op.var + op.eps)).numpy()
        b = (op.bias - op.weight / torch.sqrt(op.var + op.eps) * op.mean).numpy()
        in_shape = self.shapes[op.inputs[0]]
        if len(in_shape) == 1:
            self._affine_node(op, np.diag(a), b)
        else:
            kernel_dims = (1,) * (len(in_shape) - 1)
            weight = np.diag(a).reshape(a.size, a.size, *kernel_dims)
            ones = (1,) * (len(in_shape) - 1)
            self._conv_node(op, weight, b, ones, (0,) * len(ones), ones, groups=a.size)

    def _pieces(self, value: str) -> list[tuple[list[tuple[_Term, np.ndarray]], np.ndarray, int]]:
        """Channel spaces for an element-wise non-linear op (an IF layer) on a gathered value.

        Each piece is a node space: a term's own channels where that term (an *anchor*: injective,
        channels disjoint from the other anchors; nodes that are not linear first, then the widest)
        can feed the IF node unchanged, and the value's remaining covered channels. Returns per
        piece its inputs ``(term, rows)`` (rows: piece channel -> node channel, None for the
        anchor), the map value channel -> piece channel (-1: elsewhere) and the piece's size."""
        terms = self._merge(self.values[value])
        channels = self.shapes[value][0]
        covered = np.zeros(channels, dtype=bool)
        anchors: list[_Term] = []
        order = sorted([t for t in terms if t.idx is not None and _injective(t.idx)],
                       key=lambda t: (t.node in self.linear, -int((t.idx >= 0).sum())))  # type: ignore[union-attr]
        if not any(t.idx is None for t in terms):
            nodes_seen: set[str] = set()
            for t in order:
                cov = t.idx >= 0  # type: ignore[operator]
                if not np.any(cov & covered) and t.node not in nodes_seen:
                    anchors.append(t)
                    nodes_seen.add(t.node)
                    covered |= cov
        pieces = []
        for a in anchors:
            size = self.node_shapes[a.node][0]
            vmap = np.where(a.idx >= 0, a.idx, -1)  # type: ignore[operator]
            pieces.append((a, vmap, size))
        anywhere = np.zeros(channels, dtype=bool)
        for t in terms:
            anywhere |= _arange_idx(t, channels) >= 0
        rest = np.flatnonzero(anywhere & ~covered)
        if len(rest):
            vmap = np.full(channels, -1, dtype=np.int64)
            vmap[rest] = np.arange(len(rest))
            pieces.append((None, vmap, len(rest)))
        out = []
        for anchor, vmap, size in pieces:
            inputs = []
            for t in terms:
                if t is anchor:
                    inputs.append((t, None))
                    continue
                idx = _arange_idx(t, channels)
                rows = np.full(size, -1, dtype=np.int64)
                sel = vmap >= 0
                rows[vmap[sel]] = idx[sel]
                if size == self.node_shapes[t.node][0] and np.array_equal(rows, np.arange(size)):
                    inputs.append((t, None))  # already in the piece's channels
                elif np.any(rows >= 0):
                    inputs.append((t, rows))
            out.append((inputs, vmap, size))
        return out

    def _ActivationOp(self, op: ActivationOp) -> None:
        r"""IF layer(s). On a gathered value (after a concatenation, slice or shuffle) one IF node
        per piece (:meth:`_pieces`): the anchor term feeds it as it is, every other term through
        :meth:`_place`; the thresholds are the value's, gathered into the piece's channels
        (channels of an anchor no value channel reads get 1: computed, never read)."""
        theta = self.thresholds[op.name]
        name = self._name(op)
        ident, gathered = self._terms(op.inputs[0])
        if not gathered:
            sources = self._materialize(ident)
            self._node(name, self._if_node(op, theta), sources, self.shapes[op.name])
            self.values[op.name] = [_Term(name, theta)]
            return
        out: list[_Term] = []
        for inputs, vmap, size in self._pieces(op.inputs[0]):
            sources = []
            for t, rows in inputs:
                sources.append(self._scaled(t) if rows is None else self._place(t, rows, "to_" + name))
            spatial = theta.shape[1:]
            th = np.ones((size, *spatial), dtype=np.float64)
            sel = vmap >= 0
            th[vmap[sel]] = theta[sel]
            part = name if not out else self._fresh(f"{name}_part")
            self._node(part, self._if_node(op, th), sources, (size, *spatial))
            identity = size == len(vmap) and np.array_equal(vmap, np.arange(size))
            out.append(_Term(part, th, None if identity else vmap))
        self.values[op.name] = out

    def _AvgPoolOp(self, op: AvgPoolOp | AdaptiveAvgPoolOp, kernel: tuple[int, int] | None = None,
                   stride: tuple[int, int] | None = None, padding: tuple[int, int] | None = None) -> None:
        """Average pool; a pool commutes with a gather of channels, so a gathered term is pooled in
        its own channels (one pool node per term) and keeps its gather."""
        name = self._name(op)
        kernel = op.kernel if kernel is None else kernel  # type: ignore[union-attr]
        stride = op.stride if stride is None else stride  # type: ignore[union-attr]
        padding = op.padding if padding is None else padding  # type: ignore[union-attr]
        out_shape = self.shapes[op.name]
        ident, gathered = self._terms(op.inputs[0])
        groups: list[tuple[list[_Term], np.ndarray | None]] = ([(ident, None)] if ident else []) + \
            [([t], t.idx) for t in gathered]
        out: list[_Term] = []
        for terms, idx in groups:
            sources, kc = self._channel_factor_of([_Term(t.node, t.k) for t in terms])
            part = name if not out else self._fresh(f"{name}_part")
            channels = self.node_shapes[terms[0].node][0]
            self._node(part, nir.AvgPool2d(kernel_size=np.array(kernel), stride=np.array(stride),
                                           padding=np.array(padding)), sources, (channels, *out_shape[1:]))
            k = None if kc is None else np.broadcast_to(kc.reshape(-1, 1, 1), (channels, *out_shape[1:])).copy()
            out.append(_Term(part, k, idx))
        self.values[op.name] = out

    def _AdaptiveAvgPoolOp(self, op: AdaptiveAvgPoolOp) -> None:
        """PyTorch's adaptive average pool, exactly (see :mod:`bridge.converter.adaptive_pool`)."""
        in_shape = self.shapes[op.inputs[0]]
        if len(in_shape) != 3:
            raise BridgeError(f"adaptive average pool {op.name!r} ({op.source}) needs a (C, H, W) input, "
                              f"got {in_shape}; pool 2-d feature maps only")
        out_hw = tuple(int(v) for v in op.output_size)
        pool = adaptive_pool_as_avgpool(in_shape[1:], out_hw)  # type: ignore[arg-type]
        if pool is not None:
            return self._AvgPoolOp(op, kernel=pool[0], stride=pool[1], padding=(0, 0))
        consumers = self.graph.consumers(op.name)
        if not consumers or not all(isinstance(c, FlattenOp) for c in consumers):
            raise BridgeError(
                f"adaptive average pool {op.name!r} ({op.source}) from {in_shape[1]}x{in_shape[2]} to "
                f"{out_hw[0]}x{out_hw[1]} has windows of different sizes: NIR can state it only on "
                "flattened features, so flatten its output next (torch.flatten(x, 1)) or use an input "
                "size the output size divides")
        sources, k = self._unify(self._aligned(op.inputs[0]))
        weight = adaptive_pool_matrix(in_shape, out_hw)  # type: ignore[arg-type]
        if k is not None:
            weight = weight * k.reshape(1, -1)
        flat = self._fresh(f"{op.name}_flatten")
        self._node(flat, nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1), sources,
                   (int(np.prod(in_shape)),))
        name = self._name(op)
        self._node(name, nir.Affine(weight=weight, bias=np.zeros(weight.shape[0])), [flat], (weight.shape[0],))
        self.values[op.name] = [_Term(name, None)]
        self.flat.add(op.name)

    def _ScaleOp(self, op: ScaleOp) -> None:
        """A constant factor per element (a pool's divisor correction) multiplies every term's k
        (for a gathered term, value channel ``j``'s factor goes to node channel ``idx[j]``)."""
        f = np.broadcast_to(op.factor.detach().to(torch.float64).numpy(), self.shapes[op.name])
        out = []
        for t in self.values[op.inputs[0]]:
            if t.idx is None:
                out.append(_Term(t.node, f * (1.0 if t.k is None else t.k)))
                continue
            if not _injective(t.idx):
                t = _Term(self._place(t, t.idx, "place"), None)
                out.append(_Term(t.node, f.copy()))
                continue
            fn = np.ones(self.node_shapes[t.node])
            sel = t.idx >= 0
            fn[t.idx[sel]] = f[sel]
            out.append(_Term(t.node, fn * (1.0 if t.k is None else t.k), t.idx))
        self.values[op.name] = out

    def _FlattenOp(self, op: FlattenOp) -> None:
        """Flatten: a gathered term is flattened in its own channels, its gather becomes one of
        features (``j P + p <- idx[j] P + p``, ``P`` positions per channel)."""
        if op.inputs[0] in self.flat:  # flat already: the flatten is the identity
            self.values[op.name] = self.values[op.inputs[0]]
            return
        name = self._name(op)
        in_shape = self.shapes[op.inputs[0]]
        ident, gathered = self._terms(op.inputs[0])
        out: list[_Term] = []
        if ident:
            sources, k = self._unify(ident)
            self._node(name, nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1),
                       sources, self.shapes[op.name])
            out.append(_Term(name, None if k is None else k.reshape(-1).copy()))
        positions = int(np.prod(in_shape[1:]))
        for t in gathered:
            shape = self.node_shapes[t.node]
            part = name if not out else self._fresh(f"{name}_part")
            self._node(part, nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1),
                       [t.node], (int(np.prod(shape)),))
            idx = t.idx.reshape(-1, 1) * positions + np.arange(positions)  # type: ignore[union-attr]
            idx = np.where(t.idx.reshape(-1, 1) >= 0, idx, -1).reshape(-1)  # type: ignore[union-attr]
            out.append(_Term(part, None if t.k is None else t.k.reshape(-1).copy(), idx))
        self.values[op.name] = out

    def _AddOp(self, op: AddOp) -> None:
        merged: dict[str, np.ndarray | None] = {}
        shape = self.shapes[op.name]
        rest: list[_Term] = []
        for name in op.inputs:
            for t in self.values[name]:
                if t.idx is not None:
                    rest.append(t)
                elif t.node in merged:  # x + x: one edge with the summed factor
                    prev = merged[t.node]
                    merged[t.node] = (np.ones(shape) if prev is None else prev) + (1.0 if t.k is None else t.k)
                else:
                    merged[t.node] = t.k
        self.values[op.name] = [_Term(n, k) for n, k in merged.items()] + self._merge(rest)

    def _ConcatOp(self, op: ConcatOp) -> None:
        """``cat(x_1, ..., x_n)`` on channels: input ``i``'s terms are gathered into the channels
        ``[o_i, o_i + C_i)`` (no node: the consumer reads each term through its gather)."""
        channels = self.shapes[op.name][0]
        out: list[_Term] = []
        offset = 0
        for name in op.inputs:
            ci = self.shapes[name][0]
            for t in self.values[name]:
                idx = np.full(channels, -1, dtype=np.int64)
                idx[offset:offset + ci] = _arange_idx(t, ci)
                out.append(_Term(t.node, t.k, idx))
            offset += ci
        self.values[op.name] = self._merge(out)

    def _ChannelGatherOp(self, op: ChannelGatherOp) -> None:
        """``x[:, index]``: every term's gather composed with ``index`` (no node)."""
        channels = self.shapes[op.inputs[0]][0]
        index = np.asarray(op.index, dtype=np.int64)
        out = []
        for t in self.values[op.inputs[0]]:
            idx = _arange_idx(t, channels)[index]
            if np.any(idx >= 0):
                out.append(_Term(t.node, t.k, idx))
        self.values[op.name] = self._merge(out)

    def _OutputOp(self, op: OutputOp) -> None:
        sources = self._materialize(self._aligned(op.inputs[0]))
        self._node("output", nir.Output(output_type=np.array(self.shapes[op.name])), sources, self.shapes[op.name])

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
