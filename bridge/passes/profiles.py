"""Export profiles: equivalent re-encodings of a bridge NIR graph for other readers.

``nir-compat``: every IF threshold becomes 1 by weight normalisation. For an IF neuron i
fed by weighted layers (Affine, Linear, Conv1d/2d: output row or channel i),

    m_i = v_i + sum_j W_ij x_j + b_i,   s_i = [m_i >= theta_i],   v_i <- m_i - theta_i s_i

is the same spike train as the neuron with ``W_ij / theta_i``, ``b_i / theta_i``,
``v_init_i / theta_i`` and threshold 1 (divide every line by theta_i > 0). Spikes are unit
pulses whose weight theta_i the *consumers* already carry, so nothing downstream changes.
The result is still a bridge graph (exact under the bridge semantics, up to float rounding
at exact ties) and has one scalar threshold per layer, which SpikingJelly's and snnTorch's
importers require. It cannot carry the initial potential, the subtract reset or ``>=`` to
those importers: ``docs/compatibility.md`` measures what it changes.
"""

from __future__ import annotations

import copy

import nir
import numpy as np

from bridge.format.errors import BridgeError
from bridge.format.extension import NAMESPACE, V_INIT, if_semantics, make_if
from bridge.format.graph import (
    WEIGHTED_NODES,
    channel_consumers,
    neighbours,
    per_channel,
    scale_consumer,
    scale_output_channels,
)

PROFILES = ("exact", "nir-compat", "nir-compat-k2", "nir-compat-k4")


def apply_profile(graph: nir.NIRGraph, profile: str) -> nir.NIRGraph:
    """The graph re-encoded for ``profile`` ("exact": unchanged)."""
    if profile == "exact":
        return graph
    if profile == "nir-compat":
        return unit_thresholds(graph)
    if profile.startswith("nir-compat-k"):
        return rate_headroom(unit_thresholds(graph), float(profile.removeprefix("nir-compat-k")))
    raise BridgeError(f"unknown NIR profile {profile!r}; choose from {', '.join(PROFILES)}")


def _per_output(theta: np.ndarray, node: nir.NIRNode, name: str, producer: str) -> np.ndarray:
    """theta as one value per output row/channel of ``node`` (BridgeError if not possible)."""
    if isinstance(node, (nir.Affine, nir.Linear)):
        if theta.ndim != 1:
            raise BridgeError(f"IF node {name!r}: thresholds of shape {theta.shape} after an affine layer")
        return theta
    channel = per_channel(theta)
    if channel is None:
        raise BridgeError(
            f"nir-compat profile: IF node {name!r} has thresholds that vary inside a channel, so "
            f"{producer!r} cannot absorb them; export with per-channel or per-layer thresholds"
        )
    return channel


def _own_producers(graph: nir.NIRGraph, name: str, preds: dict[str, list[str]],
                   succs: dict[str, list[str]], profile: str) -> list[str]:
    """The producers of IF ``name``: weighted layers that feed it alone (BridgeError otherwise)."""
    for p in preds[name]:
        producer = graph.nodes[p]
        if not isinstance(producer, WEIGHTED_NODES) or succs[p] != [name]:
            raise BridgeError(
                f"{profile} profile: IF node {name!r} is fed by {p!r} ({type(producer).__name__}"
                f"{'' if succs[p] == [name] else ', which also feeds other nodes'}); only a weighted "
                "layer feeding the IF node alone can absorb its threshold"
            )
    return preds[name]


def unit_thresholds(graph: nir.NIRGraph) -> nir.NIRGraph:
    """Every IF threshold normalised to 1 by scaling its producers' weights (see module doc)."""
    nodes = {k: copy.deepcopy(v) for k, v in graph.nodes.items()}
    preds, succs = neighbours(graph.nodes, graph.edges)
    for name, node in graph.nodes.items():
        if not isinstance(node, nir.IF):
            continue
        sem = if_semantics(node, name)
        theta = sem.threshold
        if np.any(theta <= 0):
            raise BridgeError(f"nir-compat profile: IF node {name!r} has a threshold <= 0; it cannot be normalised")
        for p in _own_producers(graph, name, preds, succs, "nir-compat"):
            nodes[p] = scale_output_channels(graph.nodes[p], 1.0 / _per_output(theta, graph.nodes[p], name, p))
        v_init = sem.v_init / theta
        is_bridge = (node.metadata or {}).get(NAMESPACE) is not None
        if is_bridge:
            new_if = make_if(np.ones_like(theta), v_init)
            new_if.metadata[NAMESPACE] = {**node.metadata[NAMESPACE], V_INIT: v_init}
        else:
            new_if = nir.IF(r=np.asarray(node.r), v_threshold=np.ones_like(theta),
                            v_reset=np.asarray(node.v_reset) / theta, metadata=dict(node.metadata or {}))
        nodes[name] = new_if
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=copy.deepcopy(graph.metadata))


def rate_headroom(graph: nir.NIRGraph, k: float) -> nir.NIRGraph:
    """Every IF neuron driven ``k`` times more weakly, its spikes weighted ``k`` times more.

    The producers' weights and biases are divided by ``k`` (so are the initial potentials) and the layers that consume the neuron's spikes (through pooling/flatten)
    multiply their weights by ``k`` (:mod:`bridge.format.graph`). For activations below
    theta this is the same network in expectation; the clip
    moves from theta to k theta (a neuron fires at most once per step). Under the bridge rule
    it is a coarser quantiser (one spike now stands for k theta); under a *hard reset* it
    loses less: a neuron with input z fires every ceil(theta/z) steps, a rate
    1/ceil(theta/z) instead of z/theta, and the relative loss shrinks roughly like
    z / (k theta). It trades resolution at small T (and the clip) for fidelity of hard-reset
    readers at large T; ``docs/compatibility.md`` measures it.
    """
    if k <= 0:
        raise BridgeError(f"the headroom factor must be > 0, got {k}")
    nodes = {n: copy.deepcopy(v) for n, v in graph.nodes.items()}
    preds, succs = neighbours(graph.nodes, graph.edges)
    for name, node in graph.nodes.items():
        if not isinstance(node, nir.IF):
            continue
        for p in _own_producers(graph, name, preds, succs, "headroom"):
            nodes[p] = scale_output_channels(nodes[p], k, divide=True)
        sem = if_semantics(node, name)
        if (node.metadata or {}).get(NAMESPACE) is not None:
            nodes[name].metadata[NAMESPACE] = {**node.metadata[NAMESPACE], V_INIT: sem.v_init / k}
        try:
            consumers = channel_consumers(graph, name)
        except BridgeError as exc:
            raise BridgeError(f"headroom profile: {exc}; use the nir-compat profile") from None
        factors = np.full(sem.threshold.shape[0], float(k))
        for c, per in consumers:
            nodes[c] = scale_consumer(nodes[c], factors, per, sem.threshold.shape)
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=copy.deepcopy(graph.metadata))
