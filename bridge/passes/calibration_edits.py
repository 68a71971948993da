"""Graph edits the calibration passes share: where a layer's bias lives, shifting it, the IF
layers in order, and the T a graph was calibrated for (a fitted threshold scale and initial
potential is written by :func:`bridge.passes.optimize.apply_fit`).

Every edit returns a new ``nir.NIRGraph`` with standard nodes only (IF in the bridge
encoding, Conv/Affine with new biases or weights), so every exporter stays exact on it.
"""

from __future__ import annotations

import copy

import nir
import numpy as np

from bridge.format.errors import BridgeError
from bridge.format.extension import NAMESPACE, TIMESTEPS, graph_metadata, if_semantics
from bridge.format.graph import topological_order

_BIASED = (nir.Conv1d, nir.Conv2d, nir.Affine)


def if_names(graph: nir.NIRGraph) -> list[str]:
    """The IF nodes of a feed-forward ``graph`` in topological order (BridgeError on a cycle)."""
    order = topological_order(sorted(graph.nodes), graph.edges)  # sorted: roots in name order
    if len(order) != len(graph.nodes):
        raise BridgeError("the graph has a cycle; calibration works on feed-forward graphs only")
    return [n for n in order if isinstance(graph.nodes[n], nir.IF)]


def bias_node(graph: nir.NIRGraph, name: str) -> str | None:
    r"""The node whose bias shifts the input current of node ``name`` per channel, or None.

    NIR sums a node's incoming edges, so :math:`I = \sum_p \mathrm{out}_p`; adding
    :math:`\delta_c` to the bias of one predecessor ``p`` (a Conv1d/Conv2d/Affine that feeds
    ``name`` only, whose output has ``name``'s channels) adds :math:`\delta_c` to ``I`` in
    channel ``c`` and changes nothing else.
    """
    for p in [s for s, d in graph.edges if d == name]:
        node = graph.nodes[p]
        fanout = [d for s, d in graph.edges if s == p]
        if isinstance(node, _BIASED) and fanout == [name]:
            return p
    return None


def output_bias_node(graph: nir.NIRGraph) -> str | None:
    """The node whose bias shifts the network's output (the Output's only predecessor), or None."""
    outs = [n for n, v in graph.nodes.items() if isinstance(v, nir.Output)]
    if len(outs) != 1:
        return None
    return bias_node(graph, outs[0])


def shift_bias(graph: nir.NIRGraph, name: str, shift: np.ndarray) -> nir.NIRGraph:
    r"""A copy of ``graph`` whose Conv/Affine ``name`` has ``shift`` (per output channel) added to its bias.

    Conv: :math:`b'_c = b_c + \delta_c`; Affine: :math:`b'_j = b_j + \delta_j` (its channels
    are its features).
    """
    nodes = dict(graph.nodes)
    node = copy.deepcopy(nodes[name])
    bias = np.asarray(node.bias, dtype=np.float64)
    shift = np.asarray(shift, dtype=np.float64).reshape(-1)
    if shift.shape[0] != bias.shape[0]:
        raise BridgeError(f"a bias shift of {shift.shape[0]} channels does not fit {name!r} ({bias.shape[0]})")
    node.bias = bias + shift.reshape((-1,) + (1,) * (bias.ndim - 1))
    nodes[name] = node
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=copy.deepcopy(graph.metadata))


def current_fractions(graph: nir.NIRGraph, name: str) -> np.ndarray:
    """Per channel mean of v_init / theta of IF ``name`` (what :func:`bridge.passes.optimize.apply_fit` keeps with a = 1)."""
    sem = if_semantics(graph.nodes[name], name)
    frac = sem.v_init / sem.threshold
    return frac.reshape(frac.shape[0], -1).mean(axis=1)


def with_timesteps(graph: nir.NIRGraph, timesteps: int | None) -> nir.NIRGraph:
    """A copy of ``graph`` whose bridge metadata records the T it was calibrated for (None: removed)."""
    meta = copy.deepcopy(graph.metadata) if graph.metadata else {}
    bridge_meta = dict(meta.get(NAMESPACE) or graph_metadata()[NAMESPACE])
    if timesteps is None:
        bridge_meta.pop(TIMESTEPS, None)
    else:
        bridge_meta[TIMESTEPS] = int(timesteps)
    meta[NAMESPACE] = bridge_meta
    return nir.NIRGraph(nodes=dict(graph.nodes), edges=list(graph.edges), metadata=meta)


def _cast_like(new: object, old: object) -> object:
    """``new`` cast to ``old``'s float dtype where both are float arrays (recursing into dicts)."""
    if isinstance(new, dict) and isinstance(old, dict):
        return {k: _cast_like(v, old[k]) if k in old else v for k, v in new.items()}
    if (isinstance(new, np.ndarray) and isinstance(old, np.ndarray) and new.dtype.kind == "f"
            and old.dtype.kind == "f" and new.dtype != old.dtype):
        return new.astype(old.dtype)
    return new


def keep_dtypes(graph: nir.NIRGraph, like: nir.NIRGraph) -> nir.NIRGraph:
    """``graph`` with every float array of every node (fields and metadata) in the dtype the same
    node's array has in ``like`` (the graph before a pass): a float32 model stays float32.

    The passes compute in float32 or float64 and write float64; this writes each value back in
    the precision the user's graph had. Nodes that are new or unchanged are left alone.
    """
    nodes = dict(graph.nodes)
    changed = False
    for name, node in graph.nodes.items():
        old = like.nodes.get(name)
        if old is None or old is node or type(old) is not type(node):
            continue
        fields = {k: v for k, v in vars(node).items()}
        cast = {k: _cast_like(v, getattr(old, k, None)) for k, v in fields.items()}
        if any(cast[k] is not fields[k] for k in fields):
            new = copy.copy(node)
            for k, v in cast.items():
                if v is not fields[k]:
                    setattr(new, k, v)
            nodes[name] = new
            changed = True
    if not changed:
        return graph
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=graph.metadata)
