r"""Fixed point: a bridge graph whose weights, thresholds, initial potentials and biases are integers.

A graph -> graph pass (``to_fixed_point``). Its output is standard bridge NIR: the integers are
stored as integer-valued floats, so every reader runs it unchanged; the bit widths and scales
are informative metadata (``docs/nir-extension.md``, keys in :mod:`bridge.format.extension`).

**Why it is exact to rescale.** An IF node with subtract reset integrates
:math:`m = v + \sum_e I_e`, fires on :math:`m \ge \theta` and subtracts :math:`\theta`. Dividing
every incoming current, :math:`\theta` and :math:`v_{init}` by the same :math:`S > 0` (per
neuron) leaves every spike unchanged. So per IF node ``n`` one *current scale* :math:`S_n` is
chosen (per output channel where ``per_channel`` and every incoming path allows it, else one
per layer); all edges into ``n`` share it (one common scale where branches meet in a residual
sum or a split concatenation), and

.. math::
    W^{int} = \mathrm{round}\big(W u_{in} / s\big) \in [-q, q],\ q = 2^{b-1} - 1, \qquad
    b^{int} = \mathrm{round}(b / s), \qquad
    \theta^{int} = \mathrm{round}(\theta / S_n), \qquad v_{init}^{int} = \mathrm{round}(v_{init} / S_n)

where ``s`` is the producer's output scale (:math:`s = S_n / g` with ``g`` the gain of the
pools between producer and neuron) and :math:`u_{in}` the *unit* of the producer's input
(its real value is :math:`u_{in}` times the stored one): 1 for the graph input and for spikes,
:math:`1/k` after an average pool of ``k`` positions, which becomes a sum pool (exactly: torch's
default ``count_include_pad`` divides every window by ``k``), and a weighted node's own scale
after it. :math:`S_n = \max_e g_e \max|W_e u_{in,e}| / q` over the weighted producers ``e`` of
``n`` (per output channel or over all), so the largest weight reaches :math:`\pm q`. A weighted
node that feeds another weighted node (a ``Scale`` holding thresholds in front of a pool and a
convolution) is quantised at its own scale :math:`\max|W u_{in}| / q`, which the next one absorbs.

The readout layer (the weighted producers of the ``Output``) gets one scale
:math:`S_{out}` (a per-class scale would change the argmax); the stored readout is the real one
divided by :math:`S_{out}` (recorded as ``output_scale``).

**Exactness.** Fed spikes and integer inputs (event counts), every current, potential and
threshold is an integer; below :math:`2^{24}` (float32's integer range; the state check keeps
them inside ``state_bits``) every sum is exact in float32 and float64 in any order, so every
backend computes the same spike trains. Analog first-layer input is exact in float64 only in the
sense of every float64 graph (the same operations give the same numbers).

**The state's range.** ``bounds=(v_min, v_max)`` writes the range of the potential into every IF
node (extension version 1.1, :func:`bridge.format.neurons.if_step`); the default writes none,
so the graph stays a 1.0 graph that every exporter runs. :func:`state_range` gives a signed
register's range (Speck: 16 bits).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import nir
import numpy as np

from bridge.format.errors import BridgeError
from bridge.format.extension import (
    BOUNDS_VERSION,
    FIXED_POINT,
    NAMESPACE,
    OUTPUT_SCALE,
    PER_CHANNEL,
    SCALE,
    STATE_BITS,
    VERSION,
    WEIGHT_BITS,
    graph_semantics,
    if_semantics,
    set_state_bounds,
)
from bridge.format.graph import POOLING_NODES, SHAPE_NODES, neighbours, topological_order

#: nodes quantised here: their weights (``Scale``: its factors) become integers
QUANTISED_NODES: tuple[type, ...] = (nir.Affine, nir.Linear, nir.Conv1d, nir.Conv2d, nir.Scale)
_PASS_THROUGH = (*POOLING_NODES, *SHAPE_NODES)


def state_range(bits: int) -> tuple[float, float]:
    """The range of a signed ``bits``-bit register: :math:`[-2^{b-1}, 2^{b-1} - 1]`."""
    return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)


@dataclass(frozen=True)
class _Path:
    """Where a quantised node's output goes: through pools/flattens only to ``target``."""

    target: str | None  # an IF node, the Output node, or None when it reaches a weighted node
    gain: float         # product of 1/k of the average pools on the way
    flattens: bool      # a Flatten (or a Conv -> Affine change of layout) on the way


def _avgpool_gain(node: nir.NIRNode) -> float:
    return 1.0 / float(np.prod(np.asarray(node.kernel_size))) if isinstance(node, nir.AvgPool2d) else 1.0


def _paths(graph: nir.NIRGraph, name: str, succs: dict[str, list[str]]) -> list[_Path]:
    """Every path from ``name`` through pass-through nodes to the next IF / Output / weighted node."""
    found: list[_Path] = []
    stack: list[tuple[str, float, bool]] = [(s, 1.0, False) for s in succs[name]]
    while stack:
        node_name, gain, flat = stack.pop()
        node = graph.nodes[node_name]
        if isinstance(node, (nir.IF, nir.Output)):
            found.append(_Path(node_name, gain, flat))
        elif isinstance(node, QUANTISED_NODES):
            found.append(_Path(None, gain, flat))
        elif isinstance(node, _PASS_THROUGH):
            g = gain * _avgpool_gain(node)
            stack.extend((s, g, flat or isinstance(node, SHAPE_NODES)) for s in succs[node_name])
        else:
            raise BridgeError(f"node {node_name!r} ({type(node).__name__}) cannot be written in fixed point; "
                              "the pass takes Affine, Linear, Conv, Scale, pooling, Flatten and IF nodes")
    return found


def _weights(node: nir.NIRNode) -> np.ndarray:
    return np.asarray(node.scale if isinstance(node, nir.Scale) else node.weight, dtype=np.float64)


def _bias(node: nir.NIRNode) -> np.ndarray | None:
    bias = getattr(node, "bias", None)
    return None if bias is None or isinstance(node, nir.Scale) else np.asarray(bias, dtype=np.float64)


def _row_max(w: np.ndarray) -> np.ndarray:
    """max |w| per output row/channel (dim 0)."""
    return np.abs(w).reshape(w.shape[0], -1).max(axis=1)


def _positive(scale: np.ndarray) -> np.ndarray:
    """All-zero rows get scale 1 (their weights stay 0 whatever the scale)."""
    return np.where(scale > 0, scale, 1.0)


def _quantise(node: nir.NIRNode, u_in: float, scale: float | np.ndarray, q: int, bits: int,
              state_q: int, name: str) -> nir.NIRNode:
    """A copy of weighted ``node`` with integer weights ``round(W u_in / scale)`` and biases
    ``round(b / scale)`` (``scale``: one value or one per output row)."""
    new = copy.deepcopy(node)
    w = _weights(node) * u_in
    s = np.asarray(scale, dtype=np.float64)
    shaped = s.reshape((-1,) + (1,) * (w.ndim - 1)) if s.ndim else s
    w_int = np.round(w / shaped)
    if np.abs(w_int).max(initial=0) > q:
        raise BridgeError(f"node {name!r}: its weights need more than {bits} bits at the common scale of "
                          "the layer they feed; use more --weights bits")
    if isinstance(node, nir.Scale):
        new.scale = w_int
    else:
        new.weight = w_int.astype(np.float32) if bits <= 24 else w_int
    bias = _bias(node)
    if bias is not None:
        b_int = np.round(bias / s)
        if np.abs(b_int).max(initial=0) > state_q:
            raise BridgeError(f"node {name!r}: a bias needs more than the state's bits at the layer's scale; "
                              "use more state bits or fewer weight bits")
        new.bias = b_int
    meta = dict(getattr(node, "metadata", None) or {})
    ours = dict(meta.get(NAMESPACE) or {})
    ours.update({WEIGHT_BITS: int(bits), SCALE: s.copy() if s.ndim else float(s)})
    new.metadata = {**meta, NAMESPACE: ours}
    return new


def to_fixed_point(
    graph: nir.NIRGraph,
    *,
    weight_bits: int = 8,
    state_bits: int = 16,
    per_channel: bool = True,
    bounds: tuple[float | None, float | None] | None = None,
) -> nir.NIRGraph:
    """``graph`` with ``weight_bits``-bit integer weights and ``state_bits``-bit integer
    thresholds, initial potentials and biases (see the module docstring for the math).

    ``per_channel``: one scale per output channel where every path into a layer allows it
    (no Flatten between producer and neuron); False: one scale per layer (a target with one
    threshold per layer). ``bounds``: the state's range written into every IF node (e.g.
    :func:`state_range` ``(16)``); None (default) writes none. Average pools become sum pools.
    Raises BridgeError for graphs it cannot express in integers (another neuron type, a
    plain NIR IF, a threshold that rounds to 0, values beyond ``state_bits``).
    """
    if not 2 <= weight_bits <= 16 or not 4 <= state_bits <= 24:
        raise BridgeError(f"fixed point takes 2..16 weight bits and 4..24 state bits, got {weight_bits} "
                          f"and {state_bits}")
    if not graph_semantics(graph).is_bridge:
        raise BridgeError("fixed point needs a bridge graph (IF with subtract reset); convert the model with bridge")
    q, state_q = 2 ** (weight_bits - 1) - 1, 2 ** (state_bits - 1) - 1
    preds, succs = neighbours(graph.nodes, graph.edges)
    order = topological_order(graph.nodes, graph.edges)
    if len(order) < len(graph.nodes):
        raise BridgeError("fixed point takes graphs without cycles")
    for name, node in graph.nodes.items():
        if isinstance(node, nir.IF):
            sem = if_semantics(node, name)
            if sem.reset != "subtract" or sem.spike_condition != "ge" or not np.all(sem.r == 1):
                raise BridgeError(f"IF node {name!r} is not bridge's IF (subtract reset, m >= theta, r = 1); "
                                  "fixed point rescales bridge graphs only")
        elif not isinstance(node, (nir.Input, nir.Output, *QUANTISED_NODES, *_PASS_THROUGH)):
            raise BridgeError(f"node {name!r} ({type(node).__name__}) cannot be written in fixed point; "
                              "the pass takes Affine, Linear, Conv, Scale, pooling, Flatten and IF nodes")

    # which weighted nodes feed a neuron / the output (terminal), which feed another weighted node
    terminal: dict[str, _Path] = {}
    for name, node in graph.nodes.items():
        if isinstance(node, QUANTISED_NODES):
            paths = _paths(graph, name, succs)
            targets = {p.target for p in paths}
            if len(targets) != 1 or (None not in targets and len({p.gain for p in paths}) != 1):
                raise BridgeError(f"node {name!r} feeds several layers (or one through different pools); "
                                  "fixed point needs one destination per weighted node")
            if None not in targets:
                terminal[name] = _Path(paths[0].target, paths[0].gain, any(p.flattens for p in paths))

    # pass 1: units of everything that does not depend on a neuron's scale
    unit: dict[str, float] = {}
    nodes = dict(graph.nodes)

    def in_unit(name: str) -> float | None:
        units = [unit.get(p) for p in preds[name]]
        if any(u is None for u in units):
            return None
        if len(set(units)) != 1:
            raise BridgeError(f"node {name!r} sums inputs of different scales; fixed point cannot express it")
        return units[0]

    for name in order:
        node = graph.nodes[name]
        if isinstance(node, nir.Input):
            unit[name] = 1.0
        elif isinstance(node, nir.IF):
            unit[name] = 1.0  # spikes
        elif isinstance(node, _PASS_THROUGH):
            u = in_unit(name)
            if u is not None:
                unit[name] = u * _avgpool_gain(node)
        elif isinstance(node, QUANTISED_NODES) and name not in terminal:
            u = in_unit(name)
            if u is None:
                raise BridgeError(f"node {name!r} is fed through a layer that feeds a neuron; "
                                  "fixed point cannot express it")
            s = float(np.abs(_weights(node) * u).max(initial=0.0)) / q or 1.0
            nodes[name] = _quantise(node, u, s, q, weight_bits, state_q, name)
            unit[name] = s

    # pass 2: one current scale per neuron layer (and the readout), shared by all its producers
    groups: dict[str, list[str]] = {}
    for name, path in terminal.items():
        groups.setdefault(path.target, []).append(name)  # type: ignore[arg-type]
    scales: dict[str, np.ndarray] = {}
    for target in [n for n in order if isinstance(graph.nodes[n], (nir.IF, nir.Output))]:
        members = groups.get(target, [])
        fixed = {unit[p] for p in _fixed_sources(graph, target, preds, terminal, unit)}
        if len(fixed) > 1:
            raise BridgeError(f"node {target!r} sums unweighted inputs of different scales; "
                              "fixed point cannot express it")
        channel_wise = (per_channel and isinstance(graph.nodes[target], nir.IF) and not fixed and members
                        and not any(terminal[m].flattens or isinstance(graph.nodes[m], nir.Scale) for m in members))
        if fixed:
            scale = np.asarray(fixed.pop())
        elif not members:
            continue
        elif channel_wise:
            rows = [terminal[m].gain * _row_max(_weights(graph.nodes[m]) * in_unit(m)) for m in members]
            if len({r.shape for r in rows}) != 1:
                raise BridgeError(f"the producers of {target!r} disagree on its channel count")
            scale = _positive(np.max(rows, axis=0) / q)
        else:
            scale = np.asarray(max(terminal[m].gain * float(np.abs(_weights(graph.nodes[m]) * in_unit(m)).max(initial=0))
                                   for m in members) / q or 1.0)
        if not fixed:  # room for the biases, thresholds and initial potentials in the state's bits
            scale = np.maximum(scale, _state_floor(graph, target, members, terminal, state_q, scale.ndim > 0))
        scales[target] = scale
        for m in members:
            nodes[m] = _quantise(graph.nodes[m], in_unit(m), scale / terminal[m].gain, q, weight_bits, state_q, m)

    # neurons: thresholds and initial potentials at their layer's scale
    for name, node in graph.nodes.items():
        if isinstance(node, nir.AvgPool2d):
            nodes[name] = nir.SumPool2d(kernel_size=np.asarray(node.kernel_size), stride=np.asarray(node.stride),
                                        padding=np.asarray(node.padding))
        if not isinstance(node, nir.IF):
            continue
        if name not in scales:
            raise BridgeError(f"IF node {name!r} has no input; the graph is damaged")
        nodes[name] = _integer_if(node, name, scales[name], state_bits, state_q, bounds)

    meta = copy.deepcopy(graph.metadata or {})
    ours = dict(meta.get(NAMESPACE) or {})
    out_name = next(n for n, v in graph.nodes.items() if isinstance(v, nir.Output))
    out_scale = scales.get(out_name, np.asarray(1.0))
    ours[FIXED_POINT] = {WEIGHT_BITS: int(weight_bits), STATE_BITS: int(state_bits),
                         PER_CHANNEL: bool(per_channel), OUTPUT_SCALE: float(np.asarray(out_scale).max())}
    if bounds is not None:
        ours[VERSION] = BOUNDS_VERSION
    meta[NAMESPACE] = ours
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=meta)


def _state_floor(graph: nir.NIRGraph, target: str, members: list[str], terminal: dict[str, _Path],
                 state_q: int, channel_wise: bool) -> np.ndarray:
    """The smallest current scale at which the biases reaching ``target`` and its thresholds and
    initial potentials fit in ``state_q`` (per channel or over the layer)."""
    rows: list[np.ndarray] = []
    for m in members:
        bias = _bias(graph.nodes[m])
        if bias is not None:
            rows.append(np.abs(bias) * terminal[m].gain)
    node = graph.nodes[target]
    if isinstance(node, nir.IF):
        sem = if_semantics(node, target)
        both = np.maximum(np.abs(sem.threshold), np.abs(sem.v_init))
        rows.append(both.reshape(both.shape[0], -1).max(axis=1) if both.ndim else both.reshape(1))
    if not channel_wise:
        return np.asarray(max(float(r.max(initial=0.0)) for r in rows) / state_q if rows else 0.0)
    return np.max(np.stack([np.broadcast_to(r, rows[-1].shape) for r in rows]), axis=0) / state_q


def _fixed_sources(graph: nir.NIRGraph, target: str, preds: dict[str, list[str]],
                   terminal: dict[str, _Path], unit: dict[str, float]) -> list[str]:
    """The inputs of ``target`` whose scale is fixed (no weighted producer of ``target`` on the way)."""
    found, stack = [], list(preds[target])
    while stack:
        p = stack.pop()
        if p in terminal:
            continue
        node = graph.nodes[p]
        if isinstance(node, _PASS_THROUGH) and p not in unit:
            stack.extend(preds[p])
        else:
            found.append(p)
    return found


def _integer_if(node: nir.IF, name: str, scale: np.ndarray, state_bits: int, state_q: int,
                bounds: tuple[float | None, float | None] | None) -> nir.IF:
    sem = if_semantics(node, name)
    s = np.asarray(scale, dtype=np.float64)
    shaped = s.reshape((-1,) + (1,) * (sem.threshold.ndim - 1)) if s.ndim else s
    theta = np.round(sem.threshold / shaped)
    v_init = np.round(sem.v_init / shaped)
    if np.any(theta < 1):
        raise BridgeError(f"IF node {name!r}: a threshold rounds to 0 at its layer's weight scale; "
                          "use more --weights bits")
    if max(np.abs(theta).max(), np.abs(v_init).max()) > state_q:
        raise BridgeError(f"IF node {name!r}: thresholds or initial potentials need more than {state_bits} bits; "
                          "use fewer weight bits or more state bits")
    ours = {**dict((node.metadata or {}).get(NAMESPACE) or {}), "v_init": v_init,
            STATE_BITS: int(state_bits), SCALE: s.copy() if s.ndim else float(s)}
    out = nir.IF(r=np.ones_like(theta), v_threshold=theta, v_reset=np.zeros_like(theta),
                 metadata={**(node.metadata or {}), NAMESPACE: ours})
    if bounds is not None:
        out = set_state_bounds(out, *bounds)
    return out
