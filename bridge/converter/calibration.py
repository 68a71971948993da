r"""Activation statistics on calibration data, for thresholds that are not trained.

The calibration data runs through the layer graph as an ANN in float64, batch by batch.
For every activation op the statistic is taken over its ANN output
``a = clip(z, 0, bound)`` (``max(z, 0)`` for a plain ReLU): the largest value an IF neuron
fed with ``z`` must represent. Zeros are included, as in SpikingJelly's ann2snn.

Order statistics are exact and streaming. For ``n`` values (layer-wise: all neurons of
all samples; channel-wise: one channel of all samples and positions) the ``q``-quantile with
linear interpolation (numpy's default) is

.. math:: Q_q = x_{(\ell)} + (p - \ell)\,(x_{(\ell+1)} - x_{(\ell)}), \qquad p = q (n - 1),\; \ell = \lfloor p \rfloor

where :math:`x_{(i)}` is the i-th smallest value. It only needs the ``K = n - \ell`` largest
values, so each layer keeps a buffer of its top ``K`` values and after every batch cuts
``buffer + batch`` back to the top ``K`` with ``numpy.partition`` (linear time). ``n`` is
known before the pass because the calibration inputs are collected first (a tensor is split
into views; an iterable such as a DataLoader is read once and its inputs kept in their own
dtype: small next to the activations of all layers). Memory per layer is ``O(K + batch)``: 0.01 % of the values for ``p99.99``,
one value for ``max``; there is no 2^24 limit (torch.quantile has one).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from bridge.errors import BridgeError
from bridge.converter.evaluate import activation, evaluate
from bridge.converter.ir import ActivationOp, LayerGraph

CALIBRATION_BATCH = 256


def calibration_batches(calibration: Any, input_shape: Sequence[int]) -> list[torch.Tensor]:
    """Calibration inputs as batches of shape (B, *input_shape), in their own dtype.

    Accepts a tensor/array ``(N, *input_shape)`` or an iterable of tensors or
    ``(x, y)`` batches (a ``DataLoader``).
    """
    shape = tuple(int(s) for s in input_shape)
    if isinstance(calibration, (torch.Tensor, np.ndarray)):
        data = torch.as_tensor(calibration)
        items: Iterable[Any] = data.split(CALIBRATION_BATCH) if data.dim() > len(shape) else [data]
    elif isinstance(calibration, Iterable) and not isinstance(calibration, (str, bytes)):
        items = calibration
    else:
        raise BridgeError(
            f"calibration data of type {type(calibration).__name__} is not understood; pass a tensor "
            "(N, *input_shape), a DataLoader of (x, y) batches, or --calibration digits / a .npy/.npz/.pt file")
    batches: list[torch.Tensor] = []
    for item in items:
        x = item[0] if isinstance(item, (tuple, list)) else item
        x = torch.as_tensor(x)
        if not x.is_floating_point() and x.dtype not in (torch.uint8, torch.int64, torch.int32):
            raise BridgeError(f"calibration batch of dtype {x.dtype} is not numeric image data; pass floats")
        if tuple(x.shape[1:]) != shape:
            raise BridgeError(
                f"calibration batch has shape {list(x.shape)}, expected (batch, {', '.join(map(str, shape))}) "
                "for the model's input shape; check --input-shape or the calibration data")
        if x.shape[0]:
            batches.append(x.detach())  # kept as given (views of a tensor); float64 per batch later
    if not batches:
        raise BridgeError("the calibration data is empty; give at least one sample")
    return batches


def parse_quantile(source: str) -> float:
    """``"max"`` -> 1.0, ``"p99.9"`` -> 0.999 (quantile as a fraction)."""
    if source == "max":
        return 1.0
    try:
        q = float(source[1:]) if source.startswith("p") else math.nan
    except ValueError:
        q = math.nan
    if not 0 < q <= 100:
        raise BridgeError(
            f"unknown threshold source {source!r}; use auto, trained, max or a percentile like p99.9")
    return q / 100.0


class TopK:
    """Exact streaming quantile of ``n`` values per row (rows = channels or one row)."""

    def __init__(self, rows: int, n: int, q: float) -> None:
        self.n, self.q = n, q
        self.pos = q * (n - 1)
        self.low = min(int(math.floor(self.pos)), n - 1)
        self.k = n - self.low  # how many of the largest values the quantile needs
        self.buffer = np.empty((rows, 0), dtype=np.float64)
        self.seen = 0

    def update(self, values: np.ndarray) -> None:
        """Add a (rows, m) block of values."""
        self.seen += values.shape[1]
        both = np.concatenate([self.buffer, values], axis=1)
        if both.shape[1] > self.k:
            both = np.partition(both, both.shape[1] - self.k, axis=1)[:, -self.k:]
        self.buffer = both

    def result(self) -> np.ndarray:
        assert self.seen == self.n, (self.seen, self.n)
        top = np.sort(self.buffer, axis=1)
        lo = top[:, 0]
        if self.k == 1:
            return lo
        return lo + (self.pos - self.low) * (top[:, 1] - lo)


def collect_statistics(
    graph: LayerGraph,
    batches: list[torch.Tensor],
    ops: Sequence[str],
    q: float,
    channel_wise: bool,
    shapes: dict[str, tuple[int, ...]],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each activation in ``ops``: (quantile, max) of its ANN output, per channel or (1,)."""
    n_samples = sum(int(b.shape[0]) for b in batches)
    stats: dict[str, tuple[TopK, np.ndarray]] = {}
    for name in ops:
        shape = shapes[name]
        rows = shape[0] if channel_wise else 1
        per_row = n_samples * math.prod(shape) // rows
        stats[name] = (TopK(rows, per_row, q), np.zeros(rows))

    def record(op: ActivationOp, z: torch.Tensor) -> None:
        if op.name not in stats:
            return
        a = activation(op, z) if op.kind != "qcfs" else torch.clamp(z, 0.0, float(op.bound))  # type: ignore[arg-type]
        rows = stats[op.name][0].buffer.shape[0]
        block = a.detach().transpose(0, 1).reshape(rows, -1).numpy() if rows > 1 else a.reshape(1, -1).numpy()
        topk, mx = stats[op.name]
        topk.update(block)
        np.maximum(mx, block.max(axis=1), out=mx)

    with torch.no_grad():
        for x in batches:
            evaluate(graph, x, record=record)
    return {name: (topk.result(), mx) for name, (topk, mx) in stats.items()}
