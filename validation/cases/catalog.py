r"""The conformance cases as code: tiny NIR graphs and their inputs (read only by the generator).

Every number is on a dyadic grid (weights and inputs are multiples of 1/8 or 1/16, thresholds
and initial potentials of 1/4 or 1/8, pooling windows of 2 x 2), so every sum a backend computes
is exact in float64 and in float32, in any order: a correct backend reproduces the expected
spikes, potentials and outputs *bit for bit*, whatever its kernels, and the pre-reset potential
often lands exactly on the threshold (``m == theta``), where ``>=`` and ``>`` differ.

A case is built here once, run by the reference simulator in :mod:`validation.cases.generate`,
and the result is frozen in ``validation/cases/data/`` (``<name>.nir`` + ``<name>.npz``, listed
in ``manifest.json``). Backends are tested against those files, never against this module.

Tags say what a case needs beyond bridge IF networks of the exporters' node types, so that a
backend can declare, per tag, what it does not run (:mod:`validation.conformance`):

=============  ==============================================================================
``nir-text``   IF nodes without bridge metadata: hard reset to ``v_reset``, spike on ``m > theta``,
               ``v(0) = 0``, gain ``r`` (the NIR 1.0.8 text)
``leaky``      LI / LIF nodes (forward Euler with the case's ``dt``)
``integrator`` NIR ``I`` nodes
``threshold``  NIR ``Threshold`` nodes
``bounds``     IF nodes that state their state's range (``v_min`` / ``v_max``, extension 1.1):
               ``m = clip(v + I, v_min, v_max)`` (an integer graph for a chip's register)
=============  ==============================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import nir
import numpy as np

from bridge.format.extension import (
    BOUNDS_VERSION,
    NAMESPACE,
    VERSION,
    conv_metadata,
    graph_metadata,
    make_if,
    set_state_bounds,
)

EIGHTH = 1 / 8


@dataclass(frozen=True)
class CaseSpec:
    """One case before it is frozen: a graph, an input ``[B, *input_shape]`` and T."""

    name: str
    description: str
    build: Callable[[], tuple[nir.NIRGraph, np.ndarray]]
    steps: int = 8
    tags: tuple[str, ...] = ()
    dt: float | None = None  # the forward-Euler step of LI/LIF nodes (tag 'leaky')
    extras: dict = field(default_factory=dict)


def _grid(rng: np.random.Generator, shape: tuple[int, ...], lo: int, hi: int, unit: float = EIGHTH) -> np.ndarray:
    """Integers in [lo, hi] times ``unit``: dyadic numbers whose sums are exact."""
    return rng.integers(lo, hi + 1, size=shape).astype(np.float64) * unit


def _graph(nodes: dict[str, nir.NIRNode], edges: list[tuple[str, str]], bridge: bool = True) -> nir.NIRGraph:
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph_metadata() if bridge else {}, type_check=True)


def _chain(names_nodes: list[tuple[str, nir.NIRNode]], bridge: bool = True) -> nir.NIRGraph:
    nodes = dict(names_nodes)
    names = [n for n, _ in names_nodes]
    return _graph(nodes, list(zip(names, names[1:])), bridge)


def _affine(rng: np.random.Generator, n_out: int, n_in: int, lo: int = -4, hi: int = 6) -> nir.Affine:
    return nir.Affine(weight=_grid(rng, (n_out, n_in), lo, hi), bias=_grid(rng, (n_out,), -2, 2, 1 / 16))


def _conv2d(rng: np.random.Generator, c_out: int, c_in: int, k: int, hw: tuple[int, int], **kw) -> nir.Conv2d:
    return nir.Conv2d(input_shape=hw, weight=_grid(rng, (c_out, c_in, k, k), -3, 5),
                      stride=kw.get("stride", 1), padding=kw.get("padding", 0), dilation=kw.get("dilation", 1),
                      groups=1, bias=_grid(rng, (c_out,), -2, 2, 1 / 16))


def _flatten(shape: tuple[int, ...], start: int = 0, end: int = -1) -> nir.Flatten:
    return nir.Flatten(input_type={"input": np.array(shape)}, start_dim=start, end_dim=end)


def _readout(rng: np.random.Generator, n_in: int, n_out: int = 3) -> list[tuple[str, nir.NIRNode]]:
    return [("readout", _affine(rng, n_out, n_in)), ("output", nir.Output(output_type=np.array([n_out])))]


# --- the cases -----------------------------------------------------------------------------------

def affine_if() -> tuple[nir.NIRGraph, np.ndarray]:
    """The graph of docs/compatibility.md: identity Affine -> IF(theta 1, v_init 0) -> Output.

    The one case with inputs off the dyadic grid (0.3, 0.6), kept as in the compatibility
    table: in float64 the neuron fed 0.6 reaches m = 0.9999999999999999 at t = 5 and does not
    fire (exact arithmetic would give m = 1), so the case pins float64 arithmetic of the IF rule.
    """
    g = _chain([
        ("input", nir.Input(input_type=np.array([4]))),
        ("affine", nir.Affine(weight=np.eye(4), bias=np.zeros(4))),
        ("neuron", make_if(np.ones(4), np.zeros(4))),
        ("output", nir.Output(output_type=np.array([4]))),
    ])
    return g, np.array([[0.25, 0.3, 0.6, 1.0]])


def nir_text_if() -> tuple[nir.NIRGraph, np.ndarray]:
    """The same graph as plain NIR (no bridge metadata): hard reset, m > theta, v(0) = 0."""
    g, x = affine_if()
    nodes = dict(g.nodes)
    nodes["neuron"] = nir.IF(r=np.ones(4), v_threshold=np.ones(4), v_reset=np.zeros(4))
    return _graph(nodes, list(g.edges), bridge=False), x


def nir_text_if_gain_reset() -> tuple[nir.NIRGraph, np.ndarray]:
    """Plain NIR IF with gain r = 2 and v_reset = -1/4, per-neuron thresholds, feeding an Affine."""
    rng = np.random.default_rng(11)
    theta = np.array([0.5, 0.75, 1.0, 1.25, 1.5])
    g = _chain([
        ("input", nir.Input(input_type=np.array([4]))),
        ("fc", _affine(rng, 5, 4)),
        ("neuron", nir.IF(r=np.full(5, 2.0), v_threshold=theta, v_reset=np.full(5, -0.25))),
        *_readout(rng, 5),
    ], bridge=False)
    return g, _grid(rng, (3, 4), 0, 4)


def linear_scale() -> tuple[nir.NIRGraph, np.ndarray]:
    """Linear (no bias) -> Scale -> IF -> Linear: the unbiased node types."""
    rng = np.random.default_rng(1)
    g = _chain([
        ("input", nir.Input(input_type=np.array([6]))),
        ("linear", nir.Linear(weight=_grid(rng, (5, 6), -3, 5))),
        ("scale", nir.Scale(scale=np.array([0.5, 1.0, 1.5, 2.0, 0.25]))),
        ("neuron", make_if(np.full(5, 0.75), np.full(5, 0.375))),
        ("linear_out", nir.Linear(weight=_grid(rng, (3, 5), -4, 4))),
        ("output", nir.Output(output_type=np.array([3]))),
    ])
    return g, _grid(rng, (4, 6), 0, 8)


def if_ties() -> tuple[nir.NIRGraph, np.ndarray]:
    """Currents that land exactly on the threshold (m == theta) at chosen steps, per-neuron theta.

    Neuron i has threshold theta_i and v_init_i; the input is a fraction of theta_i such that
    the pre-reset potential equals theta_i at t = 1, 2, 3 or 4 (and then periodically).
    """
    theta = np.array([0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 0.25, 1.0])
    v_init = np.array([0.0, 0.375, 0.5, 0.0, 0.75, 1.0, 0.125, 0.25])
    g = _chain([
        ("input", nir.Input(input_type=np.array([8]))),
        ("affine", nir.Affine(weight=np.eye(8), bias=np.zeros(8))),
        ("neuron", make_if(theta, v_init)),
        ("output", nir.Output(output_type=np.array([8]))),
    ])
    # row 0: (theta - v_init) / k with k = 1, 1, 2, 4, 2, 2, 1, 2 (the step of the first tie)
    x = np.array([
        [0.5, 0.375, 0.25, 0.3125, 0.375, 0.5, 0.125, 0.375],
        [0.25, 0.1875, 0.125, 1.25, 0.1875, 0.25, 0.0625, 0.75],
    ])
    return g, x


def if_neuron_variants() -> tuple[nir.NIRGraph, np.ndarray]:
    """Three IF layers, one per exporter neuron kind: uniform theta with v_init = theta/2,
    uniform theta with another v_init (0 in some neurons), and per-neuron theta and v_init."""
    rng = np.random.default_rng(3)
    g = _chain([
        ("input", nir.Input(input_type=np.array([6]))),
        ("fc1", _affine(rng, 8, 6)),
        ("if_half", make_if(np.full(8, 1.0), np.full(8, 0.5))),
        ("fc2", _affine(rng, 8, 8)),
        ("if_v_init", make_if(np.full(8, 0.75), _grid(rng, (8,), 0, 5))),
        ("fc3", _affine(rng, 6, 8)),
        ("if_per_neuron", make_if(_grid(rng, (6,), 2, 12), _grid(rng, (6,), 0, 4))),
        *_readout(rng, 6),
    ])
    return g, _grid(rng, (4, 6), 0, 8)


def conv1d() -> tuple[nir.NIRGraph, np.ndarray]:
    """Conv1d with stride 2, padding 1, dilation 2 -> IF -> Flatten -> Affine."""
    rng = np.random.default_rng(4)
    conv = nir.Conv1d(input_shape=9, weight=_grid(rng, (3, 2, 3), -3, 5), stride=2, padding=1, dilation=2,
                      groups=1, bias=_grid(rng, (3,), -2, 2, 1 / 16))
    out_len = (9 + 2 * 1 - 2 * (3 - 1) - 1) // 2 + 1  # 4
    g = _chain([
        ("input", nir.Input(input_type=np.array([2, 9]))),
        ("conv", conv),
        ("neuron", make_if(np.full((3, out_len), 1.0), np.full((3, out_len), 0.5))),
        ("flatten", _flatten((3, out_len))),
        *_readout(rng, 3 * out_len),
    ])
    return g, _grid(rng, (2, 2, 9), 0, 8)


def conv2d_stride_padding() -> tuple[nir.NIRGraph, np.ndarray]:
    """Conv2d stride (2, 1), padding (1, 0), dilation 1, then Conv2d 'same' (stride 1),
    per-channel thresholds."""
    rng = np.random.default_rng(5)
    c1 = nir.Conv2d(input_shape=(6, 5), weight=_grid(rng, (4, 2, 3, 3), -3, 5), stride=(2, 1), padding=(1, 0),
                    dilation=1, groups=1, bias=_grid(rng, (4,), -2, 2, 1 / 16))
    h, w = (6 + 2 - 3) // 2 + 1, (5 - 3) + 1  # 3, 3
    theta = np.broadcast_to(np.array([0.5, 0.75, 1.0, 1.25]).reshape(4, 1, 1), (4, h, w)).copy()
    c2 = nir.Conv2d(input_shape=(h, w), weight=_grid(rng, (2, 4, 3, 3), -2, 4), stride=1, padding="same",
                    dilation=1, groups=1, bias=_grid(rng, (2,), -2, 2, 1 / 16))
    g = _chain([
        ("input", nir.Input(input_type=np.array([2, 6, 5]))),
        ("conv1", c1),
        ("if1", make_if(theta, theta / 2)),
        ("conv2", c2),
        ("if2", make_if(np.full((2, h, w), 1.0), np.zeros((2, h, w)))),
        ("flatten", _flatten((2, h, w))),
        *_readout(rng, 2 * h * w),
    ])
    return g, _grid(rng, (2, 2, 6, 5), 0, 8)


def conv2d_dilation_grouped() -> tuple[nir.NIRGraph, np.ndarray]:
    """A dilated Conv2d and a grouped one in bridge's encoding (groups = 1, block-diagonal
    weight: nir 1.0.8 cannot read a Conv2d with groups > 1 back)."""
    rng = np.random.default_rng(6)
    c1 = nir.Conv2d(input_shape=(7, 7), weight=_grid(rng, (4, 1, 3, 3), -3, 5), stride=1, padding=2,
                    dilation=2, groups=1, bias=_grid(rng, (4,), -2, 2, 1 / 16))
    dense = np.zeros((4, 4, 3, 3))
    for grp in range(2):  # groups = 2: output channels 2g, 2g+1 read input channels 2g, 2g+1
        dense[2 * grp:2 * grp + 2, 2 * grp:2 * grp + 2] = _grid(rng, (2, 2, 3, 3), -3, 5)
    c2 = nir.Conv2d(input_shape=(7, 7), weight=dense, stride=2, padding=1, dilation=1, groups=1,
                    bias=_grid(rng, (4,), -2, 2, 1 / 16))
    g = _chain([
        ("input", nir.Input(input_type=np.array([1, 7, 7]))),
        ("conv_dilated", c1),
        ("if1", make_if(np.full((4, 7, 7), 1.0), np.full((4, 7, 7), 0.5))),
        ("conv_grouped", c2),
        ("if2", make_if(np.full((4, 4, 4), 0.75), np.full((4, 4, 4), 0.25))),
        ("flatten", _flatten((4, 4, 4))),
        *_readout(rng, 64),
    ])
    return g, _grid(rng, (2, 1, 7, 7), 0, 8)


def pooling() -> tuple[nir.NIRGraph, np.ndarray]:
    """AvgPool2d (2x2, stride 2) and SumPool2d (2x2, stride 1, padding 1) between IF layers."""
    rng = np.random.default_rng(7)
    g = _chain([
        ("input", nir.Input(input_type=np.array([1, 6, 6]))),
        ("conv", _conv2d(rng, 2, 1, 3, (6, 6), padding=1)),
        ("if1", make_if(np.full((2, 6, 6), 1.0), np.full((2, 6, 6), 0.5))),
        ("avgpool", nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0]))),
        ("if2", make_if(np.full((2, 3, 3), 0.25), np.zeros((2, 3, 3)))),
        ("sumpool", nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([1, 1]), padding=np.array([1, 1]))),
        ("if3", make_if(np.full((2, 4, 4), 1.5), np.full((2, 4, 4), 0.75))),
        ("flatten", _flatten((2, 4, 4))),
        *_readout(rng, 32),
    ])
    return g, _grid(rng, (2, 1, 6, 6), 0, 8)


def avgpool_padded() -> tuple[nir.NIRGraph, np.ndarray]:
    """AvgPool2d with padding 1 (padded zeros count in the average) straight after the input."""
    rng = np.random.default_rng(8)
    g = _chain([
        ("input", nir.Input(input_type=np.array([2, 4, 4]))),
        ("avgpool", nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([1, 1]))),
        ("neuron", make_if(np.full((2, 3, 3), 0.5), np.full((2, 3, 3), 0.25))),
        ("flatten", _flatten((2, 3, 3))),
        *_readout(rng, 18),
    ])
    return g, _grid(rng, (2, 2, 4, 4), 0, 8)


def flatten_partial() -> tuple[nir.NIRGraph, np.ndarray]:
    """Flatten(start_dim=1) keeps channels: an IF layer of shape (C, H*W), then Flatten(0)."""
    rng = np.random.default_rng(9)
    g = _chain([
        ("input", nir.Input(input_type=np.array([2, 3, 3]))),
        ("conv", _conv2d(rng, 3, 2, 3, (3, 3), padding=1)),
        ("flatten_hw", _flatten((3, 3, 3), start=1)),
        ("neuron", make_if(np.full((3, 9), 1.0), np.full((3, 9), 0.5))),
        ("flatten", _flatten((3, 9))),
        *_readout(rng, 27),
    ])
    return g, _grid(rng, (2, 2, 3, 3), 0, 8)


def residual() -> tuple[nir.NIRGraph, np.ndarray]:
    """Two edges into one node (the residual sum): IF1 -> fc2 -> IF2 -> fc3 -> IF3, and
    IF1 -> skip -> IF3; the node IF3 integrates fc3 + skip."""
    rng = np.random.default_rng(10)
    nodes = {
        "input": nir.Input(input_type=np.array([5])),
        "fc1": _affine(rng, 6, 5),
        "if1": make_if(np.full(6, 1.0), np.full(6, 0.5)),
        "fc2": _affine(rng, 6, 6),
        "if2": make_if(_grid(rng, (6,), 4, 10), np.zeros(6)),
        "fc3": _affine(rng, 6, 6),
        "skip": nir.Scale(scale=np.array([0.5, 1.0, 0.25, 0.75, 1.0, 0.5])),
        "if3": make_if(np.full(6, 0.75), np.full(6, 0.375)),
        "readout": _affine(rng, 3, 6),
        "output": nir.Output(output_type=np.array([3])),
    }
    edges = [("input", "fc1"), ("fc1", "if1"), ("if1", "fc2"), ("fc2", "if2"), ("if2", "fc3"),
             ("fc3", "if3"), ("if1", "skip"), ("skip", "if3"), ("if3", "readout"), ("readout", "output")]
    return _graph(nodes, edges), _grid(rng, (3, 5), 0, 8)


def concatenation() -> tuple[nir.NIRGraph, np.ndarray]:
    """A channel concatenation as the converter writes it (no concat node): two IF branches of
    2 and 3 channels; the consumer conv of ``cat(a, b)`` split by input channel into ``next_a``
    (2 -> 4) and ``next_b`` (3 -> 4, no bias), both summed into ``if_c``; a depthwise conv
    (bridge ``groups`` key, dense block-diagonal weight) in branch b's own channels; and a
    readout of the flat concatenation split into two Affines summed into the Output."""
    rng = np.random.default_rng(14)
    dense = np.zeros((3, 3, 3, 3))
    for c in range(3):
        dense[c, c] = _grid(rng, (3, 3), -3, 5)
    nodes = {
        "input": nir.Input(input_type=np.array([1, 5, 5])),
        "conv_a": _conv2d(rng, 2, 1, 3, (5, 5), padding=1),
        "if_a": make_if(np.full((2, 5, 5), 1.0), np.full((2, 5, 5), 0.5)),
        "conv_b": _conv2d(rng, 3, 1, 1, (5, 5)),
        "if_b": make_if(np.full((3, 5, 5), 0.75), np.full((3, 5, 5), 0.25)),
        "next_a": _conv2d(rng, 4, 2, 3, (5, 5), padding=1),
        "next_b": nir.Conv2d(input_shape=(5, 5), weight=_grid(rng, (4, 3, 1, 1), -3, 5), stride=1, padding=0,
                             dilation=1, groups=1, bias=np.zeros(4)),
        "if_c": make_if(np.full((4, 5, 5), 1.0), np.full((4, 5, 5), 0.5)),
        "depthwise": nir.Conv2d(input_shape=(5, 5), weight=dense, stride=1, padding=1, dilation=1, groups=1,
                                bias=_grid(rng, (3,), -2, 2, 1 / 16), metadata=conv_metadata(3)),
        "if_d": make_if(np.full((3, 5, 5), 0.5), np.full((3, 5, 5), 0.25)),
        "flatten_c": _flatten((4, 5, 5)),
        "flatten_d": _flatten((3, 5, 5)),
        "readout_c": _affine(rng, 3, 100),
        "readout_d": nir.Affine(weight=_grid(rng, (3, 75), -4, 6), bias=np.zeros(3)),
        "output": nir.Output(output_type=np.array([3])),
    }
    edges = [("input", "conv_a"), ("conv_a", "if_a"), ("input", "conv_b"), ("conv_b", "if_b"),
             ("if_a", "next_a"), ("if_b", "next_b"), ("next_a", "if_c"), ("next_b", "if_c"),
             ("if_b", "depthwise"), ("depthwise", "if_d"), ("if_c", "flatten_c"), ("if_d", "flatten_d"),
             ("flatten_c", "readout_c"), ("flatten_d", "readout_d"), ("readout_c", "output"),
             ("readout_d", "output")]
    return _graph(nodes, edges), _grid(rng, (2, 1, 5, 5), 0, 8)


def if_bounds() -> tuple[nir.NIRGraph, np.ndarray]:
    """An integer graph (extension 1.1) whose IF potentials saturate at both ends of their range.

    fc (integer weights, some negative) -> IF (theta 4, v_init 2, v in [-5, 9]) -> fc2 ->
    IF (theta 3, v_init 1, v in [-3, 7]) -> readout. Row 0 drives neurons far below v_min
    (they stay at v_min, and climb back from there) and far above v_max (m saturates at
    v_max, fires once per step, and keeps v_max - theta); the pre-reset potential lands on
    the threshold and on both bounds exactly.
    """
    rng = np.random.default_rng(15)
    fc = nir.Affine(weight=np.array([[3.0, -2, 0, 1], [-4, 1, 2, 0], [6, 5, 0, 0], [0, 0, -3, 2],
                                     [1, 1, 1, 1], [-1, 0, 4, -2]]), bias=np.array([0.0, 1, 0, -1, 0, 1]))
    if1 = set_state_bounds(make_if(np.full(6, 4.0), np.full(6, 2.0)), -5.0, 9.0)
    fc2 = nir.Affine(weight=rng.integers(-3, 4, size=(5, 6)).astype(np.float64), bias=np.zeros(5))
    if2 = set_state_bounds(make_if(np.full(5, 3.0), np.full(5, 1.0)), -3.0, 7.0)
    g = _chain([
        ("input", nir.Input(input_type=np.array([4]))),
        ("fc", fc), ("if1", if1), ("fc2", fc2), ("if2", if2),
        ("readout", nir.Affine(weight=rng.integers(-2, 3, size=(3, 5)).astype(np.float64), bias=np.zeros(3))),
        ("output", nir.Output(output_type=np.array([3]))),
    ])
    g.metadata[NAMESPACE][VERSION] = BOUNDS_VERSION
    x = np.array([[4.0, 0, 0, 0], [0, 3, 0, 1], [1, 2, 3, 0]])
    return g, x


def integrator_threshold() -> tuple[nir.NIRGraph, np.ndarray]:
    """NIR I (v += r I, output v) -> Threshold ([x > theta]) -> Affine: reference-only primitives.

    Row 0 brings v exactly onto the Threshold's theta (at t = 2, 4, 2, 2), where ``>`` does not fire.
    """
    rng = np.random.default_rng(12)
    g = _chain([
        ("input", nir.Input(input_type=np.array([4]))),
        ("fc", nir.Affine(weight=np.eye(4), bias=np.zeros(4))),
        ("integrator", nir.I(r=np.array([1.0, 0.5, 2.0, 1.0]))),
        ("threshold", nir.Threshold(threshold=np.array([1.0, 2.0, 1.5, 0.5]))),
        *_readout(rng, 4),
    ])
    return g, np.concatenate([[[0.5, 1.0, 0.375, 0.25]], _grid(rng, (1, 4), -2, 8)])


def leaky() -> tuple[nir.NIRGraph, np.ndarray]:
    """LIF (hard reset, m > theta) -> Affine -> LI, forward Euler with dt = 1/4 (tau = 1, 1/2).

    Row 0 puts the first LIF neuron exactly on its threshold at t = 1 (0.25 * 2 * 1 = 0.5),
    where ``>`` does not fire.
    """
    rng = np.random.default_rng(13)
    lif = nir.LIF(tau=np.ones(4), r=np.full(4, 2.0), v_leak=np.array([0.0, 0.25, 0.0, -0.25]),
                  v_threshold=np.array([0.5, 1.0, 0.75, 0.25]), v_reset=np.zeros(4))
    li = nir.LI(tau=np.full(3, 0.5), r=np.ones(3), v_leak=np.zeros(3))
    g = _chain([
        ("input", nir.Input(input_type=np.array([4]))),
        ("fc", nir.Affine(weight=np.eye(4), bias=np.zeros(4))),
        ("lif", lif),
        ("fc_out", _affine(rng, 3, 4)),
        ("li", li),
        ("output", nir.Output(output_type=np.array([3]))),
    ])
    return g, np.concatenate([[[1.0, 0.5, 0.75, 1.0]], _grid(rng, (1, 4), 0, 8)])


CASES: list[CaseSpec] = [
    CaseSpec("affine_if", "Affine -> IF (theta 1, v_init 0): the compatibility graph, bridge semantics",
             affine_if),
    CaseSpec("nir_text_if", "the same graph without bridge metadata: NIR text semantics "
             "(hard reset, m > theta)", nir_text_if, tags=("nir-text",)),
    CaseSpec("nir_text_if_gain_reset", "plain NIR IF with r = 2, v_reset = -1/4, per-neuron thresholds",
             nir_text_if_gain_reset, tags=("nir-text",)),
    CaseSpec("linear_scale", "Linear and Scale nodes around an IF layer", linear_scale),
    CaseSpec("if_ties", "pre-reset potentials exactly on per-neuron thresholds (m == theta)", if_ties),
    CaseSpec("if_neuron_variants", "uniform theta with v_init theta/2, uniform theta with other "
             "v_init, per-neuron theta and v_init", if_neuron_variants),
    CaseSpec("conv1d", "Conv1d stride 2, padding 1, dilation 2", conv1d),
    CaseSpec("conv2d_stride_padding", "Conv2d stride (2, 1), padding (1, 0); Conv2d padding 'same'; "
             "per-channel thresholds", conv2d_stride_padding),
    CaseSpec("conv2d_dilation_grouped", "Conv2d dilation 2; a grouped Conv2d (groups 2) as a "
             "block-diagonal weight", conv2d_dilation_grouped),
    CaseSpec("pooling", "AvgPool2d 2x2/2 and SumPool2d 2x2/1 with padding 1 between IF layers", pooling),
    CaseSpec("avgpool_padded", "AvgPool2d 2x2/2 with padding 1 on the input", avgpool_padded),
    CaseSpec("flatten_partial", "Flatten(start_dim=1): an IF layer of shape (C, H*W)", flatten_partial),
    CaseSpec("residual", "a residual sum: two edges into one IF node", residual),
    CaseSpec("concatenation", "a channel concatenation as written (consumer conv split by input channel, "
             "two convs into one IF node; a depthwise conv in a branch's channels; a split readout)",
             concatenation),
    CaseSpec("if_bounds", "integer IF nodes whose potential saturates at v_min and v_max (extension 1.1)",
             if_bounds, tags=("bounds",)),
    CaseSpec("integrator_threshold", "NIR I and Threshold nodes", integrator_threshold,
             tags=("integrator", "threshold")),
    CaseSpec("leaky", "LIF and LI nodes, forward Euler, dt = 1/4", leaky, tags=("leaky",), dt=0.25),
]
