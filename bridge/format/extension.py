"""The bridge extension of NIR: what NIR 1.0.8 cannot state, written in metadata.

This module is the one place where the extension's keys and values are defined; every
reader and writer imports them from here. The normative text is
``docs/nir-extension.md``.

Graph metadata ``graph.metadata["bridge"]``::

    {"version": "1.0",              # extension format version (FORMAT_VERSION)
     "input_encoding": "constant",  # the same analog input is the current at every step
     "readout": "mean",             # network output = mean over T of the Output node's value
     "timesteps": 8,                # optional: the T the converter optimised for
     "provenance": {...}}           # optional, informative: how the graph was made (the plan,
                                    #   the calibration data's size and SHA-256); readers ignore it

IF node metadata ``node.metadata["bridge"]``::

    {"reset": "subtract",           # v <- m - theta * s   ("zero": v <- v_reset * s + m (1 - s))
     "spike_condition": "ge",       # s = [m >= theta]     ("gt": s = [m > theta])
     "v_init": ndarray,             # initial membrane potential, same shape as v_threshold
     "qcfs_levels": 8,              # optional: the ANN activation was the QCFS staircase
     "qcfs_shift": 0.5,             #   theta/L * clip(floor(z L / theta + shift), 0, L)
     "v_min": -32768.0,             # optional (version 1.1): the state's range, m = clip(v + I, v_min, v_max)
     "v_max": 32767.0,
     "state_bits": 16,              # optional, informative (fixed point): integer width of theta, v, bias
     "scale": ndarray}              # optional, informative: real potential = scale * stored value

Weighted node metadata (``Affine``, ``Linear``, ``Conv1d``, ``Conv2d``, ``Scale``; optional,
informative, written by the fixed-point pass)::

    {"weight_bits": 8,              # the weights are integers in [-(2^(b-1) - 1), 2^(b-1) - 1]
     "scale": ndarray}              # real weight = scale * stored integer (per output channel or one)

Graph metadata of a fixed-point graph (optional, informative)::

    {"fixed_point": {"weight_bits": 8, "state_bits": 16, "per_channel": True,
                     "output_scale": 0.0123},   # real readout = output_scale * stored readout
     "speck": {"input_levels": 4}}              # legalised for Speck: input = round(4 x) events per step

One step t of such an IF node with input current I(t) (r = 1, one step integrates one
input)::

    m(t) = v(t-1) + I(t);   s(t) = [m(t) >= theta];   v(t) = m(t) - theta * s(t);   v(0) = v_init

With ``v_min`` / ``v_max`` (extension version 1.1) the first step saturates:
``m(t) = clip(v(t-1) + I(t), v_min, v_max)``. A graph whose IF nodes carry them declares
version ``"1.1"`` (:data:`BOUNDS_VERSION`), so a reader of 1.0 refuses it instead of
computing without the bounds; graphs without them stay ``"1.0"``.

Conv node metadata ``node.metadata["bridge"]`` (``Conv1d`` / ``Conv2d``; optional)::

    {"groups": g}                   # the weight is the dense block-diagonal form of a g-grouped conv

nir 1.0.8 cannot read a ``Conv2d`` with ``groups > 1`` (its type inference takes the input
channels from ``weight.shape[1] = C_in / groups``), so bridge writes a grouped convolution
with ``groups = 1`` and the dense weight ``W_dense[o, c] = W[o, c - g(o) C_in/g]`` for ``c`` in
the group ``g(o) = o // (C_out/g)`` of ``o``, 0 elsewhere. Every reader gets the same map from
the dense weight (at g times the cost); readers that know this key recover the grouped weight
``(C_out, C_in/g, *k)`` with :func:`conv_weight` and run a grouped convolution.

With ``qcfs_levels`` L and ``qcfs_shift`` s, the IF node with ``v_init = s * theta`` reproduces the
staircase exactly at T = L under a constant input (s = 1/2 for QCFS, 0 for the plain floor);
readers that simulate need not read them.

A graph without ``metadata["bridge"]`` is a plain NIR graph and is read with the NIR
text semantics: hard reset to ``v_reset``, spike when ``v > v_threshold``, ``v(0) = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import nir
import numpy as np

from bridge.format.errors import BridgeError

NAMESPACE = "bridge"
FORMAT_VERSION = "1.0"
#: the version of a graph whose IF nodes state the state's range (v_min / v_max)
BOUNDS_VERSION = "1.1"
SUPPORTED_VERSIONS = frozenset({"1.0", BOUNDS_VERSION})

# graph-level keys
VERSION = "version"
INPUT_ENCODING = "input_encoding"
READOUT = "readout"
TIMESTEPS = "timesteps"
PROVENANCE = "provenance"
# IF-node keys
RESET = "reset"
SPIKE_CONDITION = "spike_condition"
V_INIT = "v_init"
# IF-node keys of version 1.1: the state's range
V_MIN = "v_min"
V_MAX = "v_max"
# fixed-point keys (informative: the numbers in the graph already are the integers)
FIXED_POINT = "fixed_point"     # graph level: {"weight_bits", "state_bits", "per_channel", "output_scale"}
WEIGHT_BITS = "weight_bits"     # weighted nodes (and the graph's fixed_point dict)
STATE_BITS = "state_bits"       # IF nodes (and the graph's fixed_point dict)
SCALE = "scale"                 # weighted and IF nodes: real value = scale * stored integer
PER_CHANNEL = "per_channel"
OUTPUT_SCALE = "output_scale"   # real readout = output_scale * stored readout
# graph-level key of a graph legalised for SynSense Speck (informative)
SPECK = "speck"                 # {"input_levels": L}: the input is the per-step event count round(L x)
INPUT_LEVELS = "input_levels"
# Conv-node key
GROUPS = "groups"
QCFS_LEVELS = "qcfs_levels"
QCFS_SHIFT = "qcfs_shift"

Reset = Literal["subtract", "zero"]
SpikeCondition = Literal["ge", "gt"]
InputEncoding = Literal["constant", "per_step"]
Readout = Literal["mean", "last", "sum"]


@dataclass(frozen=True)
class GraphSemantics:
    """How a whole graph is driven and read out.

    ``is_bridge`` is False for plain NIR graphs; they are fed per step and read out as the
    mean over T of the output (the most common choice of the NIR importers' users).
    """

    is_bridge: bool
    version: str | None
    input_encoding: InputEncoding
    readout: Readout
    timesteps: int | None = None


@dataclass(frozen=True)
class IFSemantics:
    """The exact rule of one IF node (see the module docstring for the equations)."""

    threshold: np.ndarray
    v_init: np.ndarray
    r: np.ndarray  # input gain: m = v + r * I (always 1 in files bridge writes)
    reset: Reset
    v_reset: np.ndarray
    spike_condition: SpikeCondition
    v_min: np.ndarray | None = None  # the state's range (version 1.1): m = clip(v + I, v_min, v_max)
    v_max: np.ndarray | None = None

    @property
    def bounded(self) -> bool:
        """True when the node states a range for its potential."""
        return self.v_min is not None or self.v_max is not None


def graph_metadata(timesteps: int | None = None) -> dict[str, Any]:
    """The graph-level extension metadata written by the converter."""
    meta: dict[str, Any] = {
        VERSION: FORMAT_VERSION,
        INPUT_ENCODING: "constant",
        READOUT: "mean",
    }
    if timesteps is not None:
        meta[TIMESTEPS] = int(timesteps)
    return {NAMESPACE: meta}


def if_metadata(v_init: np.ndarray) -> dict[str, Any]:
    """The IF-node extension metadata written by the converter (subtract reset, v >= theta)."""
    return {NAMESPACE: {RESET: "subtract", SPIKE_CONDITION: "ge", V_INIT: np.asarray(v_init)}}


def qcfs_metadata(levels: int, shift: float) -> dict[str, Any]:
    """The IF-node keys that record a QCFS staircase activation (merged into ``if_metadata``)."""
    return {QCFS_LEVELS: int(levels), QCFS_SHIFT: float(shift)}


def qcfs_staircase(node: nir.NIRNode) -> tuple[int, float] | None:
    """(L, shift) of the QCFS staircase an IF node stands for, or None."""
    meta = (getattr(node, "metadata", None) or {}).get(NAMESPACE) or {}
    if not isinstance(meta, dict) or QCFS_LEVELS not in meta:
        return None
    return int(meta[QCFS_LEVELS]), float(meta.get(QCFS_SHIFT, 0.5))


def drop_qcfs_mark(node: nir.NIRNode) -> nir.NIRNode:
    """``node`` without the QCFS keys (a copy; the node itself if it has none).

    The mark says the IF node's ANN view is the staircase ``theta/L clip(floor(z L/theta + s), 0, L)``
    of the model the user trained. A pass that moves the node's threshold (or the weights feeding
    it) makes that statement false for the new theta: it keeps the mark only if it rescales the
    staircase with it, else it calls this (the ANN view is then the clip ``clip(z, 0, theta)``).
    """
    import copy

    meta = getattr(node, "metadata", None) or {}
    ours = meta.get(NAMESPACE)
    if not isinstance(ours, dict) or (QCFS_LEVELS not in ours and QCFS_SHIFT not in ours):
        return node
    out = copy.copy(node)
    out.metadata = {**meta, NAMESPACE: {k: v for k, v in ours.items() if k not in (QCFS_LEVELS, QCFS_SHIFT)}}
    return out


def with_graph_info(graph: nir.NIRGraph, key: str, value: Any) -> nir.NIRGraph:
    """A copy of ``graph`` (same nodes and edges) with ``metadata["bridge"][key] = value``."""
    meta = dict(graph.metadata or {})
    ours = dict(meta.get(NAMESPACE) or graph_metadata()[NAMESPACE])
    ours[key] = value
    meta[NAMESPACE] = ours
    return nir.NIRGraph(nodes=dict(graph.nodes), edges=list(graph.edges), metadata=meta)


def make_if(threshold: np.ndarray, v_init: np.ndarray) -> nir.IF:
    """An IF node in the bridge encoding: r = 1, v_reset = 0, per-neuron threshold and v_init.

    ``r = 1`` (with the implicit dt = 1) makes one step integrate exactly one input, and
    ``v_reset = 0`` is what a reader that ignores the metadata uses for its hard reset.
    """
    threshold = np.asarray(threshold, dtype=np.float64)
    v_init = np.broadcast_to(np.asarray(v_init, dtype=np.float64), threshold.shape).copy()
    return nir.IF(
        r=np.ones_like(threshold),
        v_threshold=threshold,
        v_reset=np.zeros_like(threshold),
        metadata=if_metadata(v_init),
    )


def _as_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def graph_semantics(graph: nir.NIRGraph) -> GraphSemantics:
    """Read (and check) a graph's extension metadata; plain NIR graphs get NIR semantics."""
    meta = (graph.metadata or {}).get(NAMESPACE)
    if meta is None:
        return GraphSemantics(False, None, "per_step", "mean")
    if not isinstance(meta, dict) or VERSION not in meta:
        raise BridgeError(
            "the graph's 'bridge' metadata has no version: the file was not written by bridge "
            "or is damaged; re-export it with `bridge export`"
        )
    version = _as_str(meta[VERSION])
    if version not in SUPPORTED_VERSIONS:
        raise BridgeError(
            f"the file uses bridge NIR extension version {version}, this bridge reads "
            f"{', '.join(sorted(SUPPORTED_VERSIONS))}; upgrade bridge or re-export the model"
        )
    encoding = _as_str(meta.get(INPUT_ENCODING, "constant"))
    readout = _as_str(meta.get(READOUT, "mean"))
    if encoding not in ("constant", "per_step") or readout not in ("mean", "last", "sum"):
        raise BridgeError(
            f"unknown input_encoding {encoding!r} or readout {readout!r} in the graph's "
            "bridge metadata; see docs/nir-extension.md for the allowed values"
        )
    steps = meta.get(TIMESTEPS)
    return GraphSemantics(True, version, encoding, readout, None if steps is None else int(steps))  # type: ignore[arg-type]


def if_semantics(node: nir.IF, name: str = "?") -> IFSemantics:
    """The exact rule of an IF node: bridge metadata if present, else the NIR text."""
    threshold = np.asarray(node.v_threshold, dtype=np.float64)
    v_reset = np.asarray(
        node.v_reset if node.v_reset is not None else np.zeros_like(threshold), dtype=np.float64
    )
    r = np.asarray(node.r, dtype=np.float64)
    meta = (node.metadata or {}).get(NAMESPACE)
    if meta is None:
        # NIR text: dv/dt = R I, read with dt = 1 so that one step adds R * I.
        return IFSemantics(threshold, np.zeros_like(threshold), r, "zero", v_reset, "gt")
    reset = _as_str(meta.get(RESET, "subtract"))
    cond = _as_str(meta.get(SPIKE_CONDITION, "ge"))
    if reset not in ("subtract", "zero") or cond not in ("ge", "gt"):
        raise BridgeError(
            f"IF node {name!r}: unknown reset {reset!r} or spike_condition {cond!r} in its "
            "bridge metadata; see docs/nir-extension.md for the allowed values"
        )
    v_init = np.asarray(meta.get(V_INIT, np.zeros_like(threshold)), dtype=np.float64)
    if v_init.shape != threshold.shape:
        try:
            v_init = np.broadcast_to(v_init, threshold.shape).copy()
        except ValueError:
            raise BridgeError(
                f"IF node {name!r}: v_init has shape {v_init.shape}, its threshold "
                f"{threshold.shape}; re-export the model"
            ) from None
    v_min, v_max = (_bound(meta, key, threshold.shape, name) for key in (V_MIN, V_MAX))
    if v_min is not None and v_max is not None and np.any(v_min > v_max):
        raise BridgeError(f"IF node {name!r}: v_min > v_max in its bridge metadata; re-export the model")
    return IFSemantics(threshold, v_init, r, reset, v_reset, cond, v_min, v_max)  # type: ignore[arg-type]


def _bound(meta: dict, key: str, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    """A bound of the state's range (``v_min`` / ``v_max``) as an array of ``shape``, or None."""
    if key not in meta or meta[key] is None:
        return None
    value = np.asarray(meta[key], dtype=np.float64)
    try:
        value = np.broadcast_to(value, shape).copy()
    except ValueError:
        raise BridgeError(f"IF node {name!r}: {key} has shape {value.shape}, its threshold {shape}; "
                          "re-export the model") from None
    if np.any(np.isnan(value)):
        raise BridgeError(f"IF node {name!r}: {key} is NaN; re-export the model")
    return value


def set_state_bounds(node: nir.IF, v_min: float | None, v_max: float | None) -> nir.IF:
    """A copy of IF ``node`` whose bridge metadata states the range ``[v_min, v_max]`` of its
    potential (None: unbounded on that side). The graph must then declare :data:`BOUNDS_VERSION`."""
    meta = dict((node.metadata or {}).get(NAMESPACE) or {})
    for key, value in ((V_MIN, v_min), (V_MAX, v_max)):
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = float(value)
    metadata = {**(node.metadata or {}), NAMESPACE: meta}
    return nir.IF(r=node.r, v_threshold=node.v_threshold, v_reset=node.v_reset, metadata=metadata)


def graph_has_bounds(graph: nir.NIRGraph) -> list[str]:
    """The IF nodes of ``graph`` that state a range for their potential (``v_min`` / ``v_max``)."""
    return [name for name, node in graph.nodes.items()
            if isinstance(node, nir.IF) and if_semantics(node, name).bounded]


def conv_metadata(groups: int) -> dict[str, Any]:
    """The conv-node extension metadata of a dense-encoded grouped convolution (empty for groups 1)."""
    return {NAMESPACE: {GROUPS: int(groups)}} if groups > 1 else {}


def dense_conv_weight(weight: np.ndarray, groups: int) -> np.ndarray:
    """The dense block-diagonal encoding ``(C_out, C_in, *k)`` of a grouped conv weight
    ``(C_out, C_in/groups, *k)`` (float64): group ``g``'s output rows read only its input
    channels; every other entry is zero. The inverse of :func:`conv_weight`."""
    weight = np.asarray(weight, dtype=np.float64)
    c_out, ci = weight.shape[:2]
    co = c_out // groups
    dense = np.zeros((c_out, ci * groups, *weight.shape[2:]), dtype=np.float64)
    for g in range(groups):
        dense[g * co:(g + 1) * co, g * ci:(g + 1) * ci] = weight[g * co:(g + 1) * co]
    return dense


def _conv_groups(node: nir.Conv1d | nir.Conv2d, name: str) -> int:
    meta = (node.metadata or {}).get(NAMESPACE)
    if meta is None or not isinstance(meta, dict) or GROUPS not in meta:
        return 1
    value = np.asarray(meta[GROUPS])
    if value.shape != () or value.dtype.kind not in "iu" or int(value) < 1:
        raise BridgeError(f"conv node {name!r}: bridge metadata 'groups' is {meta[GROUPS]!r}, not a "
                          "positive integer; re-export the model")
    return int(value)


def conv_weight(node: nir.Conv1d | nir.Conv2d, name: str = "?") -> tuple[np.ndarray, int]:
    """The weight and group count a reader should run: ``(W, groups)`` with W ``(C_out, C_in/groups, *k)``.

    A node with the bridge ``groups`` key holds the dense block-diagonal encoding (see the
    module docstring); its grouped weight is recovered here, once, after checking that every
    weight outside the diagonal blocks is exactly zero (else the file does not hold what the
    key says, and BridgeError is raised). Other nodes are returned as they are.
    """
    weight = np.asarray(node.weight, dtype=np.float64)
    groups = _conv_groups(node, name)
    if groups == 1:
        return weight, int(node.groups)
    if int(node.groups) != 1:
        raise BridgeError(f"conv node {name!r} has groups={int(node.groups)} and bridge metadata "
                          f"groups={groups}: the metadata describes a dense (groups=1) encoding; "
                          "re-export the model")
    c_out, c_in = weight.shape[:2]
    if c_out % groups or c_in % groups:
        raise BridgeError(f"conv node {name!r}: bridge metadata groups={groups} does not divide its "
                          f"{c_in} input and {c_out} output channels; re-export the model")
    co, ci = c_out // groups, c_in // groups
    blocks = weight.reshape(groups, co, groups, ci, *weight.shape[2:])
    diagonal = blocks[np.arange(groups), :, np.arange(groups)]  # (groups, co, ci, *k)
    if np.count_nonzero(weight) != np.count_nonzero(diagonal):
        raise BridgeError(f"conv node {name!r}: bridge metadata says groups={groups}, but its weight "
                          "has non-zero entries outside the block diagonal; the file is damaged or "
                          "was edited: remove the 'groups' key or re-export the model")
    return np.ascontiguousarray(diagonal.reshape(c_out, ci, *weight.shape[2:])), groups
