r"""Legalise a bridge graph for SynSense Speck / DynapCNN (``legalise_for_speck``).

The result is a chain of chip layers ``Conv2d -> IF [-> SumPool2d]`` on integer event counts, in
standard bridge NIR (extension 1.1: the IF nodes state the 16-bit register's range):

1. **Linear layers as convolutions.** ``Flatten -> Affine`` on a ``(C, H, W)`` map becomes a
   ``Conv2d`` with an ``H x W`` kernel (the weight reshaped, no other change: the same sums); an
   ``Affine`` after a ``(F, 1, 1)`` map a 1x1 ``Conv2d``. The IF nodes after them get the shape
   ``(F, 1, 1)``.
2. **Spiking readout.** The readout layer feeds an IF node (``theta_out`` = the ``readout_percentile``
   of the largest logit per calibration sample, in the float graph's ANN view; ``v_init =
   theta_out / 2``); the class is the largest spike count (graph readout ``"sum"``). With
   ``timesteps`` T and no percentile given, the percentile is chosen among
   :data:`READOUT_PERCENTILES` as the one whose legalised graph, run for T steps on the
   calibration images' events, agrees most often with the float graph's ANN-view class (no
   labels are used): a low threshold saturates the winner and ties it with the runner-up, a high
   one leaves too few spikes at small T to tell the classes apart. Without T: the 99th percentile.
3. **Biases.** Speck applies a bias as a leak on its slow clock, not once per step, so the step
   rule cannot state it: ``biases="refuse"`` (default) refuses a layer with a non-zero bias, naming
   it; ``biases="drop"`` sets them to 0 (what that costs is measured in
   ``benchmarks/fixed_point_bench.py``).
4. **One threshold per layer** (weight normalisation): neuron channel ``c`` has its producer's
   row ``c``, :math:`\theta_c` and :math:`v_{init,c}` divided by :math:`\theta_c` (the same spikes,
   :mod:`bridge.format.graph`), so every threshold is 1; a threshold that varies inside a channel
   is refused.
5. **Input events.** The first layer's weights are divided by ``input_levels`` ``L``: the graph's
   input is the per-step event count ``round(L x)`` (:func:`bridge.format.speck.event_counts`).
6. **Integers** (:func:`bridge.passes.fixed_point.to_fixed_point`, one scale per layer): 8-bit
   weights, 16-bit thresholds and initial potentials, average pools as sum pools with the next
   weights rescaled, the state's range ``[-2^15, 2^15 - 1]``.

What the chip does differently (event-driven order, immediate reset, several spikes in one step)
is stated in the writer's README (:mod:`exporters.speck`) and bounded there with sinabs's
multi-spike emulation.
"""

from __future__ import annotations

import copy
from typing import Literal

import nir
import numpy as np
import torch

from bridge.format.errors import BridgeError
from bridge.format.extension import (
    NAMESPACE,
    READOUT,
    SPECK,
    INPUT_LEVELS,
    if_semantics,
    make_if,
)
from bridge.format.graph import (
    input_node, input_shape, neighbours, per_channel, scale_output_channels, topological_order,
)
from bridge.format.speck import STATE_BITS, WEIGHT_BITS
from bridge.passes.fixed_point import state_range, to_fixed_point

_WEIGHTED = (nir.Affine, nir.Linear, nir.Conv2d)
#: the readout thresholds tried for a given T (percentiles of the largest logit per calibration image)
READOUT_PERCENTILES = (50.0, 75.0, 90.0, 95.0, 99.0)


def _chain(graph: nir.NIRGraph) -> list[str]:
    """The node names of a chain graph, input first (BridgeError for branches and merges)."""
    preds, succs = neighbours(graph.nodes, graph.edges)
    for name in graph.nodes:
        if len(preds[name]) > 1 or len(succs[name]) > 1:
            raise BridgeError(f"node {name!r} has {len(preds[name])} inputs and {len(succs[name])} outputs; "
                              "the Speck legalisation takes a chain of layers (no residual or concatenation)")
    order = topological_order(graph.nodes, graph.edges)
    if order[0] != input_node(graph) or len(order) != len(graph.nodes):
        raise BridgeError("the graph is not one chain from its Input to its Output; Speck takes a chain of layers")
    return order


def _shape_after(node: nir.NIRNode, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape a chain node gives for an input of ``shape`` (torch's conv / pooling sizes)."""
    from bridge.converter.ir_eval import output_size

    if isinstance(node, (nir.Conv2d, nir.AvgPool2d, nir.SumPool2d)):
        conv = isinstance(node, nir.Conv2d)
        k = np.asarray(node.weight).shape[2:] if conv else np.broadcast_to(np.asarray(node.kernel_size), (2,))
        st, pad = (np.broadcast_to(np.asarray(v), (2,)) for v in (node.stride, node.padding))
        dil = np.broadcast_to(np.asarray(node.dilation), (2,)) if conv else (1, 1)
        channels = int(np.asarray(node.weight).shape[0]) if conv else shape[0]
        return (channels, *(output_size(int(n), int(kk), int(s_), int(p), int(d))
                            for n, kk, s_, p, d in zip(shape[1:], k, st, pad, dil)))
    if isinstance(node, nir.Flatten):
        return (int(np.prod(shape)),)
    if isinstance(node, (nir.Affine, nir.Linear)):
        return (int(np.asarray(node.weight).shape[0]),)
    return shape


def _as_conv(node: nir.Affine | nir.Linear, in_shape: tuple[int, ...], name: str) -> nir.Conv2d:
    """An affine layer on a ``(C, H, W)`` map (flattened) as a Conv2d with an H x W kernel."""
    c, h, w = in_shape
    if h != w:
        raise BridgeError(f"layer {name!r} reads a {h}x{w} map: as a convolution its kernel would not be square, "
                          "which Speck cannot run; pool to a square map first")
    weight = np.asarray(node.weight, dtype=np.float64)
    bias = np.asarray(getattr(node, "bias", None) if getattr(node, "bias", None) is not None
                      else np.zeros(weight.shape[0]), dtype=np.float64)
    return nir.Conv2d(input_shape=(h, w), weight=weight.reshape(weight.shape[0], c, h, w), stride=1, padding=0,
                      dilation=1, groups=1, bias=bias)


def _reshaped_if(node: nir.IF, name: str, shape: tuple[int, ...]) -> nir.IF:
    sem = if_semantics(node, name)
    new = make_if(sem.threshold.reshape(shape), sem.v_init.reshape(shape))
    kept = {k: v for k, v in (node.metadata or {}).items() if k != NAMESPACE}
    new.metadata = {**copy.deepcopy(kept), **new.metadata}
    return new


def readout_threshold(graph: nir.NIRGraph, calibration: torch.Tensor, percentile: float = 99.0) -> float:
    """The spiking readout's threshold: the ``percentile`` of each calibration sample's largest
    logit in the float graph's ANN view (positive logits only; 1 if none is positive)."""
    from bridge.reference import ann_view

    logits = ann_view(graph, calibration.to(torch.float64)).flatten(1)
    top = logits.max(dim=1).values
    top = top[top > 0]
    return float(np.percentile(top.numpy(), percentile)) if len(top) else 1.0


def legalise_for_speck(
    graph: nir.NIRGraph,
    calibration: torch.Tensor,
    *,
    input_levels: int = 4,
    biases: Literal["refuse", "drop"] = "refuse",
    readout_percentile: float | None = None,
    timesteps: int | None = None,
    weight_bits: int = WEIGHT_BITS,
    state_bits: int = STATE_BITS,
) -> nir.NIRGraph:
    """``graph`` (a bridge graph of a 2-D CNN chain) as Speck layers on event counts; see the module doc.

    ``calibration``: training images ``(N, C, H, W)`` in [0, 1] (for the readout threshold only).
    ``timesteps``: the T the readout threshold is chosen for (see the module doc).
    Raises BridgeError naming the node for anything the chip cannot take.
    """
    if readout_percentile is None and timesteps is not None:
        return _best_readout(graph, calibration, timesteps, input_levels=input_levels, biases=biases,
                             weight_bits=weight_bits, state_bits=state_bits)
    readout_percentile = 99.0 if readout_percentile is None else float(readout_percentile)
    if input_levels < 1:
        raise BridgeError(f"input_levels must be >= 1, got {input_levels}")
    if biases not in ("refuse", "drop"):
        raise BridgeError(f"biases must be 'refuse' or 'drop', got {biases!r}")
    order = _chain(graph)
    shape = input_shape(graph)
    if len(shape) != 3:
        raise BridgeError(f"Speck takes images (C, H, W); the graph's input has shape {shape}")
    theta_out = readout_threshold(graph, calibration, readout_percentile)

    nodes: dict[str, nir.NIRNode] = {}
    names: list[str] = []
    first_weighted = True
    pending_flatten: tuple[int, ...] | None = None
    for name in order:
        node = graph.nodes[name]
        if isinstance(node, nir.Flatten):
            pending_flatten = shape  # folded into the next affine layer
            shape = _shape_after(node, shape)
            continue
        if isinstance(node, nir.Output):
            last = names[-1]
            if not isinstance(nodes[last], nir.Conv2d):
                raise BridgeError(f"the readout {last!r} is not a weighted layer; Speck needs a spiking readout layer")
            c_out = int(np.asarray(nodes[last].weight).shape[0])
            nodes["readout_spikes"] = make_if(np.full((c_out, 1, 1), theta_out), np.full((c_out, 1, 1), theta_out / 2))
            nodes["readout_flatten"] = nir.Flatten(input_type={"input": np.array([c_out, 1, 1])}, start_dim=0, end_dim=-1)
            nodes[name] = nir.Output(output_type=np.array([c_out]))
            names += ["readout_spikes", "readout_flatten", name]
            break
        if isinstance(node, (nir.Affine, nir.Linear)):
            src = pending_flatten if pending_flatten is not None else shape
            if len(src) == 1:
                src = (src[0], 1, 1)
            if len(src) != 3:
                raise BridgeError(f"layer {name!r} reads a value of shape {src}; Speck layers read (C, H, W) maps")
            node = _as_conv(node, src, name)
            shape = _shape_after(node, src)
            pending_flatten = None
        elif pending_flatten is not None:
            raise BridgeError(f"node {name!r} follows a Flatten; Speck takes Flatten only before a linear layer")
        elif isinstance(node, (nir.Conv2d, nir.AvgPool2d, nir.SumPool2d, nir.Input)):
            shape = _shape_after(node, shape)
        elif isinstance(node, nir.IF):
            node = _reshaped_if(node, name, shape)
        else:
            raise BridgeError(f"node {name!r} ({type(node).__name__}) has no Speck equivalent; Speck runs "
                              "Conv2d / Linear layers, IF neurons and average or sum pooling")
        if isinstance(node, nir.Conv2d):
            node = copy.deepcopy(node)
            bias = np.asarray(node.bias if node.bias is not None else np.zeros(np.asarray(node.weight).shape[0]))
            if np.any(bias != 0):
                if biases == "refuse":
                    raise BridgeError(f"layer {name!r} has a bias: Speck applies biases as a leak on its slow clock, "
                                      "not once per step; train the model without biases or pass biases='drop'")
            node.bias = np.zeros_like(bias, dtype=np.float64)
            if first_weighted:
                node.weight = np.asarray(node.weight, dtype=np.float64) / input_levels
                first_weighted = False
        nodes[name] = node
        names.append(name)

    nodes = _one_threshold_per_layer(nodes, names)
    meta = copy.deepcopy(graph.metadata or {})
    ours = dict(meta.get(NAMESPACE) or {})
    ours[READOUT] = "sum"
    ours[SPECK] = {INPUT_LEVELS: int(input_levels)}
    meta[NAMESPACE] = ours
    chain = nir.NIRGraph(nodes=nodes, edges=list(zip(names, names[1:])), metadata=meta)
    return to_fixed_point(chain, weight_bits=weight_bits, state_bits=state_bits, per_channel=False,
                          bounds=state_range(state_bits))


def _best_readout(graph: nir.NIRGraph, calibration: torch.Tensor, timesteps: int, **options) -> nir.NIRGraph:
    """The legalised graph whose readout percentile agrees best with the float graph's ANN view
    on the calibration images at T = ``timesteps`` (ties: the first of READOUT_PERCENTILES)."""
    from bridge.format.speck import event_counts
    from bridge.reference import ReferenceSimulator, ann_view

    if timesteps < 1:
        raise BridgeError(f"timesteps must be >= 1, got {timesteps}")
    target = ann_view(graph, calibration.to(torch.float64)).flatten(1).argmax(1)
    counts = event_counts(calibration.to(torch.float32), options["input_levels"])
    best, best_agree = None, -1.0
    for p in READOUT_PERCENTILES:
        chip = legalise_for_speck(graph, calibration, readout_percentile=p, **options)
        spikes = ReferenceSimulator(chip, dtype=torch.float32).run(counts, timesteps).outputs.sum(0)
        agree = float((spikes.argmax(1) == target).float().mean())
        if agree > best_agree:
            best, best_agree = chip, agree
    assert best is not None
    return best


def _one_threshold_per_layer(nodes: dict[str, nir.NIRNode], names: list[str]) -> dict[str, nir.NIRNode]:
    """Weight normalisation: each IF layer's thresholds become 1, its producer's rows divided by theta_c."""
    out = dict(nodes)
    for i, name in enumerate(names):
        node = nodes[name]
        if not isinstance(node, nir.IF):
            continue
        sem = if_semantics(node, name)
        theta = per_channel(sem.threshold)
        if theta is None:
            raise BridgeError(f"IF node {name!r}: its thresholds vary inside a channel, so no weight normalisation "
                              "gives the layer one threshold; convert with per-layer or per-channel thresholds")
        producer = names[i - 1]
        if not isinstance(out[producer], nir.Conv2d):
            raise BridgeError(f"IF node {name!r} is fed by {producer!r}, not a convolution; Speck neurons follow "
                              "a convolution (pool after the neuron, not before)")
        out[producer] = scale_output_channels(out[producer], theta, divide=True)
        a = theta.reshape((-1,) + (1,) * (sem.threshold.ndim - 1))
        new = make_if(sem.threshold / a, sem.v_init / a)
        kept = {k: v for k, v in (node.metadata or {}).items() if k != NAMESPACE}
        new.metadata = {**copy.deepcopy(kept), **new.metadata}
        out[name] = new
    return out
