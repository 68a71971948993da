"""NIR graph -> export spec: the one place where exporters read a NIR graph.

An *export spec* is a plain description of the network that the framework runtimes
(:mod:`exporters.runtime_spikingjelly`, :mod:`exporters.runtime_norse`,
:mod:`exporters.runtime_snntorch`, :mod:`exporters.runtime_sinabs`) build models from,
both in-process (``build(graph)``) and inside an exported artifact where bridge is not
installed. It is two objects:

* ``spec``: JSON-able dict ``{"format", "input_encoding", "readout", "nodes": [...]}``; the
  nodes are in topological order, each ``{"name", "op", "inputs": [names], ...attributes}``.
  A node with several inputs receives their sum (a residual addition).
* ``tensors``: ``dict[str, torch.Tensor]`` (float64) keyed ``"<node>.<field>"``; saved with
  ``torch.save`` and loaded with ``torch.load(weights_only=True)`` (no pickle of code).

The semantics of every IF node come from :func:`bridge.format.extension.if_semantics` and of the
graph from :func:`bridge.format.extension.graph_semantics`; nothing here parses metadata itself.
Whatever a runtime could not reproduce exactly is refused here with a :class:`BridgeError`
naming the node and the reason (never a silently different model).
"""

from __future__ import annotations

from typing import Any

import nir
import numpy as np
import torch

from bridge.format.errors import BridgeError
from bridge.format.extension import conv_weight, graph_semantics, if_semantics
from bridge.format.graph import neighbours, node_input_shape, topological_order
from exporters.capabilities import check_unbounded

SPEC_FORMAT = "bridge-export-spec/1"

# NIR node types the runtimes build, and what they become.
_SUPPORTED = "Input, Output, Affine, Linear, Scale, Conv1d, Conv2d, AvgPool2d, SumPool2d, Flatten, IF"


def _ints(value: Any) -> int | list[int] | str:
    """NIR stores stride/padding as ints, tuples, numpy arrays or 'same'/'valid'."""
    if isinstance(value, (str, bytes)):
        return value.decode() if isinstance(value, bytes) else value
    arr = np.asarray(value)
    if arr.dtype.kind in "US":
        return str(arr)
    if arr.ndim == 0:
        return int(arr)
    return [int(v) for v in arr.reshape(-1)]


def _tensor(value: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(value, dtype=np.float64))  # a writable copy


def _if_node(name: str, node: nir.IF, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    sem = if_semantics(node, name)
    if sem.reset != "subtract" or sem.spike_condition != "ge":
        raise BridgeError(
            f"IF node {name!r}: reset={sem.reset!r}, spike_condition={sem.spike_condition!r} "
            "(a plain NIR IF: hard reset, v > theta) cannot be exported exactly; the exporters "
            "reproduce bridge's IF (reset 'subtract', spike when v >= theta): convert the model "
            "with bridge to get such a graph"
        )
    if not np.all(sem.r == 1.0):
        raise BridgeError(
            f"IF node {name!r}: input gain r != 1 is not supported by the exporters "
            "(bridge writes r = 1); fold r into the incoming weights"
        )
    if not np.all(np.isfinite(sem.threshold)) or np.any(sem.threshold <= 0):
        raise BridgeError(
            f"IF node {name!r}: thresholds must be finite and positive; re-convert the model"
        )
    tensors[f"{name}.threshold"] = _tensor(sem.threshold)
    tensors[f"{name}.v_init"] = _tensor(sem.v_init)
    return {"op": "if"}


def _node_spec(name: str, node: nir.NIRNode, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    if isinstance(node, nir.Input):
        return {"op": "input", "shape": list(node_input_shape(node))}
    if isinstance(node, nir.Output):
        return {"op": "output"}
    if isinstance(node, nir.IF):
        return _if_node(name, node, tensors)
    if isinstance(node, nir.Affine):
        tensors[f"{name}.weight"] = _tensor(node.weight)
        tensors[f"{name}.bias"] = _tensor(node.bias)
        return {"op": "affine"}
    if isinstance(node, nir.Linear):
        tensors[f"{name}.weight"] = _tensor(node.weight)
        return {"op": "linear"}
    if isinstance(node, nir.Scale):
        tensors[f"{name}.scale"] = _tensor(node.scale)
        return {"op": "scale"}
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        weight, groups = conv_weight(node, name)  # a dense-encoded grouped conv runs grouped
        tensors[f"{name}.weight"] = _tensor(weight)
        bias = np.asarray(node.bias, dtype=np.float64)
        out_channels = int(np.asarray(node.weight).shape[0])
        tensors[f"{name}.bias"] = _tensor(np.broadcast_to(bias, (out_channels,)))
        return {
            "op": "conv1d" if isinstance(node, nir.Conv1d) else "conv2d",
            "stride": _ints(node.stride),
            "padding": _ints(node.padding),
            "dilation": _ints(node.dilation),
            "groups": groups,
        }
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        padding = _ints(node.padding)
        if isinstance(padding, str):
            raise BridgeError(
                f"node {name!r}: pooling padding {padding!r} is not supported; give integers"
            )
        return {
            "op": "avgpool2d" if isinstance(node, nir.AvgPool2d) else "sumpool2d",
            "kernel_size": _ints(node.kernel_size),
            "padding": padding,
            "stride": _ints(node.stride),
        }
    if isinstance(node, nir.Flatten):
        return {"op": "flatten", "start_dim": int(node.start_dim), "end_dim": int(node.end_dim)}
    raise BridgeError(
        f"node {name!r} is a {type(node).__name__}, which the exporters cannot reproduce "
        f"exactly; supported node types: {_SUPPORTED}"
    )


def graph_to_spec(graph: nir.NIRGraph) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Translate a NIR graph (bridge-encoded or plain) into ``(spec, tensors)``.

    Raises :class:`BridgeError` for anything the runtimes would not reproduce exactly.
    """
    check_unbounded(graph, "the framework exporters (SpikingJelly, Norse, snnTorch, sinabs)")
    sem = graph_semantics(graph)
    preds, _ = neighbours(graph.nodes, graph.edges)
    order = topological_order(graph.nodes, graph.edges)
    if len(order) != len(graph.nodes):
        on_cycle = next(n for n in graph.nodes if n not in order)
        raise BridgeError(
            f"node {on_cycle!r} is on a cycle (a recurrent/feedback edge) or after one; the exporters "
            "build feed-forward graphs only: remove the recurrent connection"
        )
    tensors: dict[str, torch.Tensor] = {}
    nodes: list[dict[str, Any]] = []
    for name in order:
        node = graph.nodes[name]
        if isinstance(node, nir.NIRGraph):
            raise BridgeError(
                f"node {name!r} is a nested NIR graph; flatten the graph before exporting"
            )
        entry = {"name": name, "inputs": list(preds[name]), **_node_spec(name, node, tensors)}
        if entry["op"] != "input" and not entry["inputs"]:
            raise BridgeError(f"node {name!r} has no incoming edge; the NIR file is damaged")
        nodes.append(entry)
    inputs = [n["name"] for n in nodes if n["op"] == "input"]
    outputs = [n["name"] for n in nodes if n["op"] == "output"]
    if len(inputs) != 1 or len(outputs) != 1:
        raise BridgeError(
            f"the graph has {len(inputs)} Input and {len(outputs)} Output nodes; the exporters "
            "need exactly one of each"
        )
    spec = {
        "format": SPEC_FORMAT,
        "input_encoding": sem.input_encoding,
        "readout": sem.readout,
        "timesteps": sem.timesteps,
        "nodes": nodes,
    }
    return spec, tensors
