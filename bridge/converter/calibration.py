r"""Activation statistics on calibration data, for thresholds that are not trained.

The calibration data runs through the layer graph as an ANN, in chunks of
``CALIBRATION_BATCH`` samples. For every activation op the statistic is taken over its ANN
output ``a = clip(z, 0, bound)`` (``max(z, 0)`` for a plain ReLU): the largest value an IF
neuron fed with ``z`` must represent. Zeros are included, as in SpikingJelly's ann2snn.

**Precision.** Float64 calibration data runs in float64 (the statistics then agree with the
float64 model to rounding); any other data (float32 images, uint8, a float32 DataLoader) runs
in float32 with float32 copies of the parameters, which is about twice as fast and half the
memory. A float32 statistic differs from the float64 one by float32 rounding of the forward
pass (relative ~1e-6), far below what a threshold needs. The thresholds are float64 either way.

**Order statistics** are exact and streaming. For ``n`` values (layer-wise: all neurons of
all samples; channel-wise: one channel of all samples and positions) the ``q``-quantile with
linear interpolation (numpy's default ``np.quantile(..., method="linear")``) is

.. math:: Q_q = x_{(\ell)} + (p - \ell)\,(x_{(\ell+1)} - x_{(\ell)}), \qquad p = q (n - 1),\; \ell = \lfloor p \rfloor

where :math:`x_{(i)}` is the i-th smallest value (0-based). It only needs the ``K = n - \ell``
largest values (``K = ceil((1 - q)(n - 1)) + 1`` up to rounding of ``p``), so each layer keeps a
buffer of its top ``K`` values: every chunk is cut to its own top ``K`` with ``torch.topk``
and merged with the buffer, which is cut back to ``K``. The interpolation rule is unchanged,
so the result equals ``np.quantile`` of the same values exactly. ``n`` is known before the
pass because the calibration inputs are collected first (a tensor as given; an iterable such
as a DataLoader is read once and its inputs kept in their own dtype: small next to the
activations). No activation tensor outlives its chunk: memory is the live activations of one
chunk plus ``K`` values per layer (or channel): 0.01 % of the values for ``p99.99``, one value
for ``max``; there is no 2^24 limit (torch.quantile has one).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from bridge.format.errors import BridgeError
from bridge.converter.ir_eval import bound_tensor, cast_graph, clip, evaluate
from bridge.converter.ir import ActivationOp, LayerGraph

CALIBRATION_BATCH = 64  # samples per forward pass: bounds the live activations


def calibration_batches(calibration: Any, input_shape: Sequence[int]) -> list[torch.Tensor]:
    """Calibration inputs as batches of shape (B, *input_shape), in their own dtype.

    Accepts a tensor/array ``(N, *input_shape)`` or an iterable of tensors or
    ``(x, y)`` batches (a ``DataLoader``).
    """
    shape = tuple(int(s) for s in input_shape)
    if isinstance(calibration, (torch.Tensor, np.ndarray)):
        data = torch.as_tensor(calibration)
        items: Iterable[Any] = [data]  # split into CALIBRATION_BATCH chunks when evaluated
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
            batches.append(x.detach())  # kept as given; cast chunk by chunk in collect_statistics
    if not batches:
        raise BridgeError("the calibration data is empty; give at least one sample")
    return batches


class TopK:
    """Exact streaming quantile of ``n`` values per row (rows = channels or one row).

    Keeps the ``k = n - floor(q (n - 1))`` largest values of each row seen so far (a
    ``(rows, <= k)`` array in the values' dtype); :meth:`result` interpolates in float64.
    NumPy, not torch: ``np.partition`` and boolean masks are several times faster than
    ``torch.topk`` and masked indexing on CPU for millions of values (measured here).
    """

    def __init__(self, rows: int, n: int, q: float) -> None:
        self.n, self.q = n, q
        self.pos = q * (n - 1)
        self.low = min(int(math.floor(self.pos)), n - 1)
        self.k = n - self.low  # how many of the largest values the quantile needs
        self.rows = rows
        self.buffer: np.ndarray | None = None
        self.seen = 0

    def update(self, values: torch.Tensor | np.ndarray) -> None:
        """Add a (rows, m) block of values (the block is not kept)."""
        block = values.detach().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        self.seen += int(block.shape[1])
        if self.rows == 1 and self.buffer is not None and self.buffer.shape[1] == self.k:
            # only values above the current k-th largest can enter the top k (an equal one would
            # only replace an equal value): one comparison shrinks the block before partitioning
            flat = block.reshape(-1)
            block = flat[flat > self.buffer.min()].reshape(1, -1)
        block = _top(block, self.k)  # cut the block first: the merge below stays O(k)
        if self.buffer is None:
            both = block.copy()  # own memory: ``block`` may view a whole chunk's partition
        else:
            both = np.concatenate([self.buffer, block.astype(self.buffer.dtype)], axis=1)
        self.buffer = _top(both, self.k)

    def result(self) -> np.ndarray:
        assert self.seen == self.n and self.buffer is not None, (self.seen, self.n)
        top = np.sort(self.buffer.astype(np.float64), axis=1)
        lo = top[:, 0]
        if self.k == 1:
            return lo
        return lo + (self.pos - self.low) * (top[:, 1] - lo)


def _top(block: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest values of each row, unsorted (the block itself when it has <= k)."""
    m = block.shape[1]
    if m <= k:
        return block
    if k == 1:
        return block.max(axis=1, keepdims=True)
    return np.partition(block, m - k, axis=1)[:, m - k:]


def compute_dtype(batches: Sequence[torch.Tensor]) -> torch.dtype:
    """float64 when all calibration data is float64, else float32 (see the module docstring)."""
    return torch.float64 if all(b.dtype == torch.float64 for b in batches) else torch.float32


def collect_statistics(
    graph: LayerGraph,
    batches: list[torch.Tensor],
    ops: Sequence[str],
    q: float,
    channel_wise: bool,
    shapes: dict[str, tuple[int, ...]],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each activation in ``ops``: (quantile, max) of its ANN output, per channel or (1,), float64."""
    n_samples = sum(int(b.shape[0]) for b in batches)
    stats: dict[str, TopK] = {}
    for name in ops:
        shape = shapes[name]
        rows = shape[0] if channel_wise else 1
        stats[name] = TopK(rows, n_samples * math.prod(shape) // rows, q)
    dtype = compute_dtype(batches)
    # float32: NHWC layout for images (oneDNN's fast path); float64 has no oneDNN kernel
    nhwc = dtype == torch.float32 and len(graph.input.shape) == 3
    run_graph = cast_graph(graph, dtype, channels_last=nhwc)  # parameters cast once, not per chunk

    def record(op: ActivationOp, z: torch.Tensor, a: torch.Tensor) -> None:
        topk = stats.get(op.name)
        if topk is None:
            return
        if op.kind == "qcfs":  # taken unquantised (its clip), as the IF neuron sees it
            a = clip(z, bound_tensor(op, z))
        if topk.rows > 1:  # (C, values of that channel)
            block = a.transpose(0, 1).reshape(topk.rows, -1)
        elif a.dim() == 4 and not a.is_contiguous():  # NHWC: order does not matter, flatten as stored
            block = a.permute(0, 2, 3, 1).reshape(1, -1)
        else:
            block = a.reshape(1, -1)
        topk.update(block)

    with torch.no_grad():
        for batch in batches:
            for x in batch.split(CALIBRATION_BATCH):
                x = x.to(dtype)
                if nhwc:
                    x = x.contiguous(memory_format=torch.channels_last)
                evaluate(run_graph, x, record=record, dtype=dtype)
    out = {}
    for name, topk in stats.items():
        # the max is the largest kept value
        out[name] = (topk.result(), topk.buffer.max(axis=1).astype(np.float64))  # type: ignore[union-attr]
    return out
