r"""IF thresholds: one per neuron, from the trained clip bound or from calibration data.

An activation op with pre-activation ``z`` becomes an IF layer that receives ``z`` as its input
current. Its rate over T steps approximates ``clip(z, 0, theta)`` (unit spikes times
``theta``), so ``theta`` is the largest activation the layer represents:

* ``"trained"``: ``theta = lambda``, the activation's own bound (ClippedReLU's trained
  ``lambda``, QCFS's ``lambda``, 6 for ReLU6, ``a`` for Hardtanh(0, a) / clamp(0, a)); then the
  rate function equals the activation exactly (QCFS: up to its quantisation).
* ``"max"`` / ``"p<q>"``: ``theta`` = the maximum / q-th percentile of the activation's ANN output
  ``clip(z, 0, bound)`` (``max(z, 0)`` for ReLU) on the calibration data
  (:mod:`bridge.converter.calibration`); ``theta <= bound`` always.
* ``"auto"`` (default): ``"trained"`` for activations with a bound, ``p99.99`` on the calibration
  data for plain ReLUs (percentiles ignore rare outliers; Rueckauer et al., 2017).

``channel_wise=True`` takes the statistic per output channel (dimension 1 of the batch: a conv
channel, or a feature after a linear layer); a channel that never activates on the calibration
data gets the largest threshold of its layer (no calibration sample can tell a better one).
A whole layer that never activates would get ``theta = 0`` and is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bridge.format.errors import BridgeError
from bridge.converter.calibration import calibration_batches, collect_statistics
from bridge.converter.options import threshold_quantile
from bridge.converter.ir_eval import shapes as op_shapes
from bridge.converter.ir import ActivationOp, LayerGraph

AUTO_CALIBRATION = "p99.99"


def compute_thresholds(
    graph: LayerGraph,
    source: str = "auto",
    *,
    channel_wise: bool = False,
    calibration: Any = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, np.ndarray]:
    """Per-neuron thresholds (shape of the activation's output, no batch) for every activation op.

    ``shapes`` (op name -> output shape) may be passed when already known.
    """
    threshold_quantile(source)  # raises on an unknown source
    acts = [op for op in graph.ops.values() if isinstance(op, ActivationOp)]
    shapes = shapes if shapes is not None else op_shapes(graph)
    per_channel: dict[str, np.ndarray] = {}
    need: list[ActivationOp] = []
    for op in acts:
        if source == "trained" or (source == "auto" and op.bound is not None):
            if op.bound is None:
                raise BridgeError(
                    f"activation {op.name!r} ({op.kind}{', ' + op.source if op.source else ''}) has no "
                    "trained bound; use --thresholds max or a percentile with calibration data, or train "
                    "with bridge.model.activations.ClippedReLU")
            per_channel[op.name] = np.atleast_1d(np.asarray(op.bound, dtype=np.float64))
        else:
            need.append(op)
    if need:
        if calibration is None:
            names = ", ".join(repr(o.name) for o in need[:3]) + (" ..." if len(need) > 3 else "")
            why = "have no trained bound" if source == "auto" else f"need calibration for --thresholds {source}"
            raise BridgeError(
                f"activations {names} {why}; give calibration data (--calibration digits or a "
                ".npy/.npz/.pt file; calibration= a tensor or DataLoader in Python)")
        stat = AUTO_CALIBRATION if source == "auto" else source
        batches = calibration_batches(calibration, graph.input.shape)
        stats = collect_statistics(graph, batches, [o.name for o in need], threshold_quantile(stat),
                                   channel_wise, shapes)
        for op in need:
            value, mx = stats[op.name]
            per_channel[op.name] = _checked(op, stat, value, mx)
    return {op.name: _per_neuron(per_channel[op.name], shapes[op.name]) for op in acts}


def _checked(op: ActivationOp, stat: str, value: np.ndarray, mx: np.ndarray) -> np.ndarray:
    where = f" ({op.source})" if op.source else ""
    if not (mx > 0).any():
        raise BridgeError(
            f"layer {op.name!r}{where} never activates on the calibration data (all pre-activations "
            "<= 0), so its threshold would be 0; check the model and the calibration data (same "
            "preprocessing as in training) or give more samples")
    if not (value > 0).any():
        raise BridgeError(
            f"the {stat} statistic of layer {op.name!r}{where} is 0 (it is active on too few "
            "calibration values); use --thresholds max or a higher percentile")
    # channels that never fired (or whose percentile is 0) take the layer's largest threshold
    return np.where(value > 0, value, value.max())


def _per_neuron(theta: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Broadcast a layer (1,) or per-channel (C,) threshold to the neuron shape (C, ...)."""
    theta = theta.reshape((-1,) + (1,) * (len(shape) - 1)) if theta.size > 1 else theta.reshape(())
    return np.broadcast_to(theta, shape).astype(np.float64, copy=True)  # own, writable memory
