"""Static checks of a NIR graph read from disk: every parameter of every node makes sense.

A file can be damaged, hand-edited or hostile. :func:`check_graph` runs once, on read
(:func:`bridge.format.nirio.read_graph`), before any command uses the graph, and refuses with one
line naming the node, the field and the problem:

* field types: numeric arrays (no strings or objects where numbers belong), integer
  hyper-parameters;
* values: every parameter finite; thresholds of IF nodes positive (``theta > 0``: a spike
  means "the potential reached theta", and the next layer's weights are scaled by theta);
  time constants positive; initial potentials finite;
* shapes: Affine/Linear weights 2-D, a bias of one value per output, conv weights of
  ``ndim + 2`` dimensions, neuron parameters of one shape (or broadcastable);
* ranges: ``groups >= 1`` dividing the output channels, ``stride``/``dilation``/kernel
  ``>= 1``, padding ``>= 0`` (at most half the kernel for pooling), Flatten dims inside the
  input's dims, Input shapes of positive sizes.

Whether the shapes of connected nodes agree is checked by running the graph once
(:mod:`bridge.reference.probe`): the reference simulator is the definition of what runs.
"""

from __future__ import annotations

from typing import Any

import nir
import numpy as np

from bridge.format.errors import BridgeError
from bridge.format.extension import graph_semantics, if_semantics

#: the largest Input a graph may declare (elements per sample): a damaged shape field must
#: not make a reader allocate gigabytes for a one-sample check
MAX_INPUT_ELEMENTS = 1 << 28

_FIX = "the file is damaged or was edited; re-export it with `bridge export`"


def _fail(name: str, what: str) -> BridgeError:
    return BridgeError(f"node {name!r}: {what}; {_FIX}")


def _numbers(name: str, field: str, value: Any, *, finite: bool = True) -> np.ndarray:
    """``value`` as a float64 array; refuses text, objects, NaN and inf."""
    if isinstance(value, (str, bytes)):
        raise _fail(name, f"{field} is text ({value!r}), not numbers")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise _fail(name, f"{field} is not numeric ({type(value).__name__})") from None
    if finite and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise _fail(name, f"{field} has {bad} NaN/inf value(s)")
    return arr


def _ints(name: str, field: str, value: Any, ndim: int, minimum: int) -> tuple[int, ...]:
    """An int or one int per spatial dim, each ``>= minimum``."""
    arr = _numbers(name, field, value).reshape(-1)
    if arr.size not in (1, ndim) or not np.all(arr == np.round(arr)):
        raise _fail(name, f"{field} must be an integer or {ndim} integers, got {arr.tolist()}")
    if np.any(arr < minimum):
        raise _fail(name, f"{field} must be >= {minimum}, got {arr.astype(int).tolist()}")
    return tuple(int(v) for v in np.broadcast_to(arr, (ndim,)))


def _shape(name: str, types: Any, key: str) -> tuple[int, ...] | None:
    """The shape under ``key`` of a node's input/output type, checked, or None if unset."""
    if not isinstance(types, dict) or types.get(key) is None:
        return None
    arr = _numbers(name, f"{key} shape", types[key]).reshape(-1)
    if arr.size == 0 or not np.all(arr == np.round(arr)) or np.any(arr < 1):
        raise _fail(name, f"the {key} shape {arr.tolist()} must be positive integers")
    if float(np.prod(arr)) > MAX_INPUT_ELEMENTS:
        raise _fail(name, f"the {key} shape {arr.astype(int).tolist()} is implausibly large")
    return tuple(int(v) for v in arr)


def _same_shape(name: str, fields: dict[str, np.ndarray]) -> None:
    """Neuron parameters must broadcast to one shape (the layer's)."""
    try:
        np.broadcast_shapes(*(a.shape for a in fields.values()))
    except ValueError:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in fields.items())
        raise _fail(name, f"its parameters have shapes that do not fit together ({shapes})") from None


def _check_dense(name: str, node: nir.Affine | nir.Linear) -> None:
    weight = _numbers(name, "weight", node.weight)
    if weight.ndim != 2 or 0 in weight.shape:
        raise _fail(name, f"weight must be a non-empty 2-D (out, in) matrix, got shape {weight.shape}")
    bias = getattr(node, "bias", None)
    if bias is not None:
        b = _numbers(name, "bias", bias)
        if b.shape not in ((weight.shape[0],), ()):
            raise _fail(name, f"bias has shape {b.shape}, expected ({weight.shape[0]},): one "
                              "value per output")


def _check_conv(name: str, node: nir.Conv1d | nir.Conv2d, ndim: int) -> None:
    weight = _numbers(name, "weight", node.weight)
    if weight.ndim != ndim + 2 or 0 in weight.shape:
        raise _fail(name, f"weight must have {ndim + 2} non-empty dims (out, in/groups, kernel), "
                          f"got shape {weight.shape}")
    c_out = weight.shape[0]
    if node.bias is not None:
        b = _numbers(name, "bias", node.bias)
        if b.shape not in ((c_out,), ()):
            raise _fail(name, f"bias has shape {b.shape}, expected ({c_out},): one value per "
                              "output channel")
    groups = _ints(name, "groups", node.groups, 1, 1)[0]
    if c_out % groups:
        raise _fail(name, f"groups = {groups} does not divide the {c_out} output channels")
    stride = _ints(name, "stride", node.stride, ndim, 1)
    dilation = _ints(name, "dilation", node.dilation, ndim, 1)
    padding = node.padding
    if isinstance(padding, (bytes, np.bytes_)):
        padding = padding.decode()
    if isinstance(padding, (str, np.str_)):
        if str(padding) not in ("same", "valid"):
            raise _fail(name, f"padding {str(padding)!r} must be 'same', 'valid' or integers")
        if str(padding) == "same" and any(s != 1 for s in stride):
            raise _fail(name, "padding 'same' needs stride 1")
        pads = tuple(0 for _ in range(ndim))
    else:
        pads = _ints(name, "padding", padding, ndim, 0)
    size = _numbers(name, "input_shape", node.input_shape).reshape(-1) if node.input_shape is not None else None
    if size is not None:
        if size.size != ndim or np.any(size < 1) or not np.all(size == np.round(size)):
            raise _fail(name, f"input_shape {size.tolist()} must be {ndim} positive integers")
        for i in range(ndim):
            span = dilation[i] * (weight.shape[2 + i] - 1) + 1
            if isinstance(padding, (str, np.str_)) and str(padding) == "same":
                continue
            if size[i] + 2 * pads[i] < span:
                raise _fail(name, f"the kernel (span {span}) is larger than the padded input "
                                  f"({int(size[i])} + 2 x {pads[i]})")


def _check_pool(name: str, node: nir.AvgPool2d | nir.SumPool2d) -> None:
    kernel = _ints(name, "kernel_size", node.kernel_size, 2, 1)
    _ints(name, "stride", node.stride, 2, 1)
    pads = _ints(name, "padding", node.padding, 2, 0)
    if any(p > k // 2 for p, k in zip(pads, kernel)):
        raise _fail(name, f"padding {list(pads)} must be at most half the kernel {list(kernel)}")


def _check_flatten(name: str, node: nir.Flatten) -> None:
    dims = []
    for field in ("start_dim", "end_dim"):
        value = _numbers(name, field, getattr(node, field)).reshape(-1)
        if value.size != 1 or value[0] != round(float(value[0])):
            raise _fail(name, f"{field} must be one integer, got {value.tolist()}")
        dims.append(int(value[0]))
    shape = _shape(name, node.input_type, "input")
    if shape is None:
        return
    n = len(shape)
    start, end = (d + n if d < 0 else d for d in dims)
    if not (0 <= start < n and 0 <= end < n and start <= end):
        raise _fail(name, f"start_dim {dims[0]} / end_dim {dims[1]} are outside the {n} dims "
                          f"of its input {list(shape)} (or start > end)")


def _check_neuron(name: str, node: nir.NIRNode) -> None:
    fields = {}
    for field in ("r", "v_threshold", "v_reset", "v_leak", "tau", "threshold"):
        value = getattr(node, field, None)
        if value is not None:
            fields[field] = _numbers(name, field, value)
    if "tau" in fields and np.any(fields["tau"] <= 0):
        raise _fail(name, "tau must be positive")
    if isinstance(node, nir.IF):
        if np.any(fields["v_threshold"] <= 0):
            bad = int((fields["v_threshold"] <= 0).sum())
            raise _fail(name, f"v_threshold has {bad} value(s) <= 0; IF thresholds must be "
                              "positive")
        if fields["v_threshold"].size == 0:
            raise _fail(name, "v_threshold is empty")
        try:
            sem = if_semantics(node, name)
        except (TypeError, ValueError):
            raise _fail(name, "its bridge metadata (reset, spike_condition, v_init) is not "
                              "readable") from None
        fields["v_init"] = _numbers(name, "v_init", sem.v_init)
    _same_shape(name, fields)


def _check_node(name: str, node: nir.NIRNode) -> None:
    if isinstance(node, nir.NIRGraph):
        _check_nodes(node, prefix=f"{name}.")
        return
    if isinstance(node, nir.Input):
        if _shape(name, node.input_type, "input") is None:
            raise _fail(name, "the Input node has no shape")
    elif isinstance(node, (nir.Affine, nir.Linear)):
        _check_dense(name, node)
    elif isinstance(node, nir.Conv2d):
        _check_conv(name, node, 2)
    elif isinstance(node, nir.Conv1d):
        _check_conv(name, node, 1)
    elif isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        _check_pool(name, node)
    elif isinstance(node, nir.Flatten):
        _check_flatten(name, node)
    elif isinstance(node, nir.Scale):
        _numbers(name, "scale", node.scale)
    elif isinstance(node, (nir.IF, nir.LIF, nir.LI, nir.I, nir.Threshold)):
        _check_neuron(name, node)
    else:  # any other primitive: at least its numbers must be numbers
        for field, value in vars(node).items():
            if isinstance(value, np.ndarray) and field not in ("input_type", "output_type"):
                _numbers(name, field, value)


def _check_nodes(graph: nir.NIRGraph, prefix: str = "") -> None:
    if not isinstance(graph.nodes, dict) or not graph.nodes:
        raise BridgeError(f"the graph {prefix or ''}has no nodes; {_FIX}")
    for name, node in graph.nodes.items():
        _check_node(prefix + str(name), node)
    for edge in graph.edges:
        if len(edge) != 2 or any(end not in graph.nodes for end in edge):
            raise BridgeError(f"the edge {tuple(edge)} names a node the graph does not have; {_FIX}")


def check_graph(graph: nir.NIRGraph) -> None:
    """Refuse a graph with a nonsensical node (see the module docstring); returns None."""
    try:
        graph_semantics(graph)  # the extension metadata: version, encoding, readout
    except (TypeError, ValueError, AttributeError):
        raise BridgeError(f"the graph's bridge metadata is not readable; {_FIX}") from None
    _check_nodes(graph)
