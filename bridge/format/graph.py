r"""The NIR graph toolkit: the one place that walks a ``nir.NIRGraph``'s structure.

Everything in bridge that needs the neighbours of a node, an execution order, the graph's
input shape, the kind of a node, or that moves a scale factor between an IF layer and the
layers around it, uses these functions (the converter, the reference simulator, the graph
passes, the exporters, the validation suite).

**Neighbours and order.** :func:`neighbours` lists every node's predecessors and successors
in edge order (an edge listed twice counts twice: NIR sums the incoming edges of a node).
:func:`topological_order` is Kahn's algorithm with one tie-break: a node is placed as soon
as all its inputs are placed, first come first served; the nodes without inputs come first
in the graph's node order, and the successors of a node become ready in edge order. Cycles
are broken only where the caller says so (``skip``, e.g. the feedback edges that
:func:`feedback_edges` finds by a depth-first search); a node on an unbroken cycle, or
downstream of one, is left out of the order, so ``len(order) < len(names)`` means the
graph has a cycle.

**Rescaling an IF layer.** An IF neuron with subtract reset integrates

.. math::
    m(t) = v(t-1) + \sum_j W_{ij} x_j(t) + b_i,\qquad s(t) = [m(t) \ge \theta],\qquad
    v(t) = m(t) - \theta\, s(t),\qquad v(0) = v_{init}.

Every line is positively homogeneous: multiplying ``W``, ``b``, ``v_init`` and
:math:`\theta` by :math:`a > 0` multiplies ``m`` and ``v`` by ``a`` and leaves every spike
unchanged (exact in real arithmetic; in floating point exact when ``a`` is a power of two,
otherwise up to rounding at exact ties :math:`m = \theta`). The value a spike stands for,
:math:`\theta s`, is carried by the *consumers*: the converter wrote :math:`\theta` into
their weights (unit spikes, ``docs/nir-extension.md``). Hence two moves:

* *move a factor into the producers* (:func:`scale_output_channels`): divide the incoming
  weights and biases of neuron ``i`` (output row or channel ``i`` of its weighted
  producers) by :math:`a_i` together with :math:`\theta_i` and :math:`v_{init,i}`: the
  same spikes, each still standing for the old :math:`\theta_i` that the consumers hold,
  so the same network. With :math:`a = \theta` every threshold becomes 1
  (:func:`bridge.passes.profiles.unit_thresholds`).
* *rescale the threshold, absorb the factor in the consumers* (:func:`rescale_threshold`):
  with threshold :math:`a_c \theta_c` (and the same input) the layer is a different
  quantiser, :math:`\mathrm{clip}(z, 0, a_c\theta_c)` in the ANN view, and a spike of
  channel ``c`` now stands for :math:`a_c \theta_c`; every consumer multiplies its weights
  for input channel ``c`` by :math:`a_c` (:func:`scale_consumer`), so it receives
  :math:`a_c \theta_c` per spike, the value the spike stands for. This is what
  :mod:`bridge.passes.optimize` writes for a fitted ``a``;
  :func:`bridge.passes.profiles.rate_headroom` is the first move with :math:`a = k`
  (producers, :math:`\theta` and :math:`v_{init}` divided by ``k``) followed by this one with
  ``k`` (:math:`\theta` back to its value, consumers times ``k``): the input is divided by
  ``k`` and a spike is worth :math:`k\theta`.

A per-channel factor reaches the consumers through nodes that act on each channel alone
and linearly (:data:`PASS_THROUGH_NODES`): average and sum pooling mix positions of one
channel only, :math:`\mathrm{pool}(a \odot x) = a \odot \mathrm{pool}(x)`; Flatten of a
``(C, ...)`` tensor puts channel ``c`` at features :math:`cP, \dots, (c+1)P - 1`
(C order, as ``torch.flatten``), so the factor becomes :math:`a_c` repeated ``P`` times
per feature. A Scale node multiplies per element, so it absorbs the factor in its scale; a
convolution absorbs it per input channel (:math:`W'_{o,c} = W_{o,c}\,a_c`), an affine or
linear layer per input feature. A path that reaches another neuron, the Output, or a node
that also sums other inputs cannot absorb a factor without changing the network.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import nir
import numpy as np

from bridge.format.errors import BridgeError
from bridge.format.extension import NAMESPACE, if_semantics, make_if

Edge = tuple[str, str]

# --- node kinds ---------------------------------------------------------------------------

#: nodes with a weight matrix or kernel: output row/channel ``o`` and input column/channel
#: ``c`` can each absorb a factor
WEIGHTED_NODES: tuple[type, ...] = (nir.Affine, nir.Linear, nir.Conv1d, nir.Conv2d)
#: nodes linear in their input per input channel: they can absorb a per-channel factor
CHANNEL_SCALING_NODES: tuple[type, ...] = (*WEIGHTED_NODES, nir.Scale)
POOLING_NODES: tuple[type, ...] = (nir.AvgPool2d, nir.SumPool2d)
#: nodes that only rearrange their input
SHAPE_NODES: tuple[type, ...] = (nir.Flatten,)
#: linear nodes that act on each channel alone: a per-channel factor passes through them
PASS_THROUGH_NODES: tuple[type, ...] = (*POOLING_NODES, *SHAPE_NODES)


# --- neighbours and order -----------------------------------------------------------------

def neighbours(names: Iterable[str], edges: Iterable[Edge]
               ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Predecessors and successors of every node in ``names``, each list in edge order.

    A BridgeError names an edge whose end is not a node of the graph.
    """
    preds: dict[str, list[str]] = {n: [] for n in names}
    succs: dict[str, list[str]] = {n: [] for n in preds}
    for src, dst in edges:
        for end in (src, dst):
            if end not in preds:
                raise BridgeError(f"edge ({src!r}, {dst!r}) names a node {end!r} that the graph does not "
                                  "have; the graph is damaged: fix its edges or re-export it")
        preds[dst].append(src)
        succs[src].append(dst)
    return preds, succs


def topological_order(names: Iterable[str], edges: Iterable[Edge], *,
                      skip: Iterable[Edge] = ()) -> list[str]:
    """Node names, every node after all its inputs (Kahn; the tie-break of the module doc).

    Edges in ``skip`` are ignored (feedback edges). Nodes on a cycle that ``skip`` does not
    break, and the nodes downstream of them, are left out of the result.
    """
    names = list(names)
    edges = list(edges)
    skipped = set(skip)
    forward = [e for e in edges if e not in skipped]
    preds, succs = neighbours(names, forward)
    pending = {n: len(preds[n]) for n in names}
    ready = deque(n for n in names if pending[n] == 0)
    order: list[str] = []
    while ready:
        node = ready.popleft()
        order.append(node)
        for dst in succs[node]:
            pending[dst] -= 1
            if pending[dst] == 0:
                ready.append(dst)
    return order


def feedback_edges(succs: Mapping[str, list[str]], roots: Iterable[str]) -> tuple[set[Edge], set[str]]:
    """The edges that close a cycle, and the nodes reached, by a depth-first search from ``roots``.

    The search follows each node's successors in edge order; an edge to a node still on the
    search stack closes a cycle (it is a *feedback* edge). Without those edges the reached
    part of the graph is acyclic.
    """
    found: set[Edge] = set()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for root in roots:
        if root in state:
            continue
        state[root] = 1
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, i = stack[-1]
            if i < len(succs[node]):
                stack[-1] = (node, i + 1)
                nxt = succs[node][i]
                if state.get(nxt) == 1:
                    found.add((node, nxt))
                elif nxt not in state:
                    state[nxt] = 1
                    stack.append((nxt, 0))
            else:
                state[node] = 2
                stack.pop()
    return found, set(state)


def if_nodes_in_order(graph: nir.NIRGraph) -> list[str]:
    """IF node names in topological order; feedback edges (searched from every node, in the
    graph's node order) are ignored, so every IF node is listed."""
    _, succs = neighbours(graph.nodes, graph.edges)
    skip, _ = feedback_edges(succs, graph.nodes)
    order = topological_order(graph.nodes, graph.edges, skip=skip)
    return [n for n in order if isinstance(graph.nodes[n], nir.IF)]


# --- the input ----------------------------------------------------------------------------

def node_input_shape(node: nir.NIRNode) -> tuple[int, ...]:
    """The shape of one sample (no batch) that an ``Input`` node takes."""
    shape: Any = node.input_type
    if isinstance(shape, dict):
        shape = shape.get("input", next(iter(shape.values())))
    return tuple(int(s) for s in np.asarray(shape).reshape(-1))


def input_node(graph: nir.NIRGraph) -> str:
    """The name of the graph's single Input node (BridgeError when there is not exactly one)."""
    inputs = [n for n, v in graph.nodes.items() if isinstance(v, nir.Input)]
    if len(inputs) != 1:
        raise BridgeError(f"the graph has {len(inputs)} Input nodes; bridge runs graphs with exactly one")
    return inputs[0]


def input_shape(graph: nir.NIRGraph) -> tuple[int, ...]:
    """The shape of one sample (no batch) from the graph's single Input node."""
    return node_input_shape(graph.nodes[input_node(graph)])


# --- moving a factor between an IF layer and its neighbours (see the module doc) ----------

def per_channel(values: np.ndarray) -> np.ndarray | None:
    """``values`` as one value per channel (dim 0) if it is constant inside every channel."""
    flat = np.asarray(values).reshape(np.shape(values)[0], -1)
    return flat[:, 0].copy() if (flat == flat[:, :1]).all() else None


def scale_input_channels(weight: np.ndarray, factors: np.ndarray, groups: int = 1) -> np.ndarray:
    """``W'[o, c] = W[o, c] * factors[c]``: a weight whose input channel (or feature) ``c`` is scaled.

    ``weight`` is ``(out, in / groups, *kernel)`` (an affine/linear weight is ``(out, in)``);
    input channel ``c`` is column ``c % (in / groups)`` of the output rows of group
    ``c // (in / groups)``.
    """
    weight = np.asarray(weight)
    factors = np.asarray(factors, dtype=np.float64)
    per_group = weight.shape[1]
    if factors.shape != (per_group * groups,):
        raise BridgeError(f"cannot scale the input channels of a weight of shape {weight.shape} "
                          f"(groups={groups}) by {factors.shape[0]} factors")
    kernel = (1,) * (weight.ndim - 2)
    grouped = weight.reshape(groups, weight.shape[0] // groups, per_group, *weight.shape[2:])
    return (grouped * factors.reshape(groups, 1, per_group, *kernel)).reshape(weight.shape)


def scale_output_channels(node: nir.NIRNode, factors: np.ndarray, *, divide: bool = False) -> nir.NIRNode:
    """A copy of weighted ``node`` whose output row/channel ``o`` (weight and bias) is multiplied
    by ``factors[o]`` (a scalar multiplies all); ``divide=True`` divides by them instead (in
    floating point ``w / k`` and ``w * (1 / k)`` differ unless ``k`` is a power of two)."""
    node = copy.deepcopy(node)
    weight = np.asarray(node.weight)
    factors = np.asarray(factors)
    op = np.divide if divide else np.multiply
    node.weight = op(weight, factors.reshape((-1,) + (1,) * (weight.ndim - 1)))
    if getattr(node, "bias", None) is not None:
        node.bias = op(np.asarray(node.bias), factors)
    return node


def channel_consumers(graph: nir.NIRGraph, name: str) -> list[tuple[str, int]]:
    """The nodes that absorb a per-channel factor of node ``name``'s output: ``[(node, per)]``.

    The search passes through :data:`PASS_THROUGH_NODES` and stops at
    :data:`CHANNEL_SCALING_NODES`. ``per = 0``: the consumer sees channels; ``per > 0``: it
    sees the channels flattened, ``per`` features each. A BridgeError names the first node
    that cannot absorb the factor (a neuron, the Output, a node that also sums other inputs).
    """
    preds, succs = neighbours(graph.nodes, graph.edges)
    found: list[tuple[str, int]] = []
    stack = [(d, 0) for d in succs[name]]
    while stack:
        n, per = stack.pop()
        node = graph.nodes[n]
        if len(preds[n]) == 1 and isinstance(node, CHANNEL_SCALING_NODES):
            found.append((n, per))
        elif len(preds[n]) == 1 and isinstance(node, PASS_THROUGH_NODES):
            if isinstance(node, nir.Flatten):
                shape = np.asarray(node.input_type["input"]).astype(int)
                per = int(np.prod(shape[1:])) if shape.size > 1 else 1
            stack.extend((d, per) for d in succs[n])
        else:
            why = ", which also sums other inputs," if len(preds[n]) != 1 else ", which"
            raise BridgeError(f"the output of {name!r} reaches {n!r} ({type(node).__name__}){why} "
                              "cannot carry the factor")
    return found


def scale_consumer(node: nir.NIRNode, factors: np.ndarray, per: int,
                   channel_shape: tuple[int, ...]) -> nir.NIRNode:
    """A copy of ``node`` (one of :data:`CHANNEL_SCALING_NODES`) whose input channel ``c`` is
    multiplied by ``factors[c]``.

    ``per > 0``: the node sees the channels flattened, ``per`` features each (see
    :func:`channel_consumers`). ``channel_shape`` is the shape of the producer's output (a
    scalar Scale is broadcast to it).
    """
    node = copy.deepcopy(node)
    factors = np.asarray(factors, dtype=np.float64)
    features = np.repeat(factors, per) if per else factors
    if isinstance(node, nir.Scale):
        scale = np.asarray(node.scale, dtype=np.float64)
        if per:
            node.scale = np.broadcast_to(scale, features.shape) * features
        else:
            if scale.size == 1:
                scale = np.broadcast_to(scale.reshape(()), channel_shape)
            node.scale = scale * factors.reshape((-1,) + (1,) * (scale.ndim - 1))
        return node
    groups = int(getattr(node, "groups", 1))
    node.weight = scale_input_channels(node.weight, features, groups)
    return node


def rescale_threshold(graph: nir.NIRGraph, name: str, factors: np.ndarray,
                      v_init: np.ndarray | None = None) -> nir.NIRGraph:
    """A copy of ``graph`` whose IF layer ``name`` has threshold :math:`a_c \theta` per channel and
    whose consumers absorb :math:`a_c` (:func:`channel_consumers`, :func:`scale_consumer`).

    ``v_init`` is the new initial potential (default: :math:`a_c v_{init}`, the same fraction
    of the threshold). The layer is written with bridge's IF rule
    (:func:`bridge.format.extension.make_if`); the node's other metadata is kept. Factors that
    are all 1 leave the consumers alone (they need not be able to absorb anything).
    """
    node = graph.nodes[name]
    rule = if_semantics(node, name)
    factors = np.asarray(factors, dtype=np.float64)
    a = factors.reshape((-1,) + (1,) * (rule.threshold.ndim - 1))
    theta = rule.threshold * a
    new_if = make_if(theta, rule.v_init * a if v_init is None else v_init)
    kept = {k: v for k, v in (node.metadata or {}).items() if k != NAMESPACE}
    new_if.metadata = {**copy.deepcopy(kept), **new_if.metadata}
    nodes = dict(graph.nodes)
    nodes[name] = new_if
    if not np.all(factors == 1.0):
        for target, per in channel_consumers(graph, name):
            nodes[target] = scale_consumer(nodes[target], factors, per, rule.threshold.shape)
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=copy.deepcopy(graph.metadata))
