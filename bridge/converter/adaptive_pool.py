r"""Adaptive average pooling as PyTorch computes it, lowered to exact NIR nodes.

``F.adaptive_avg_pool2d(x, (o_H, o_W))`` on an ``H x W`` input averages, for output cell
``(i, j)``, the window of rows ``[a_i, b_i)`` and columns ``[c_j, d_j)`` with

.. math:: a_i = \lfloor i H / o_H \rfloor,\qquad b_i = \lceil (i + 1) H / o_H \rceil

(the same along W), i.e. :math:`y_{c,i,j} = \frac{1}{(b_i - a_i)(d_j - c_j)}
\sum_{h=a_i}^{b_i - 1} \sum_{w=c_j}^{d_j - 1} x_{c,h,w}`. Windows overlap when ``o`` does
not divide the size, and their lengths may differ. It is a fixed linear map per channel, so
it has two exact NIR forms:

* **AvgPool2d** when, along each axis, every window has the same length ``k`` and the
  windows start at ``0, s, 2s, ...`` (a divisible size: ``k = s = H / o``; also e.g. 8 -> 7:
  ``k = 2, s = 1``): ``AvgPool2d(kernel=k, stride=s, padding=0)``, the same windows.
* **Flatten + Affine** otherwise: the output cells are ``y = P x`` over the flattened
  ``(C, H, W)`` input with :math:`P = I_C \otimes A_H \otimes A_W`,
  :math:`(A_H)_{i,h} = [a_i \le h < b_i] / (b_i - a_i)`. NIR has no node that turns a flat
  vector back into ``(C, o_H, o_W)``, so this form is exact only where the pool's value is
  flattened next (``torch.flatten(x, 1)`` before a classifier: VGG's and AlexNet's
  ``AdaptiveAvgPool2d((7, 7))`` / ``((6, 6))`` on inputs other than 224 x 224). A
  convolution cannot hold ``P`` with fewer than ``C^2`` weights per position (NIR's
  ``Conv2d`` with ``groups = 1`` mixes all channels), so no cheaper exact form exists.
"""

from __future__ import annotations

import numpy as np

from bridge.format.errors import BridgeError

#: the largest Affine (numbers) the Flatten + Affine form may write: 2^27 float64 = 1 GiB
MAX_AFFINE_ENTRIES = 1 << 27


def adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's windows ``[a_i, b_i)`` of adaptive pooling from ``size`` to ``out`` cells."""
    if size < 1 or out < 1:
        raise BridgeError(f"adaptive pooling from {size} to {out} cells: both must be positive")
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def uniform_pool(size: int, out: int) -> tuple[int, int] | None:
    """``(kernel, stride)`` of an average pool with the very windows of the adaptive pool, or
    None where the windows differ in length or are not evenly spaced."""
    windows = adaptive_windows(size, out)
    kernel = windows[0][1] - windows[0][0]
    if any(b - a != kernel for a, b in windows):
        return None
    if out == 1:
        return kernel, kernel
    stride = windows[1][0] - windows[0][0]
    if stride < 1 or any(a != i * stride for i, (a, _) in enumerate(windows)):
        return None
    return kernel, stride


def adaptive_pool_as_avgpool(in_hw: tuple[int, int], out_hw: tuple[int, int]
                             ) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """``(kernel, stride)`` per axis of the exact AvgPool2d form, or None (see module docstring)."""
    axes = [uniform_pool(s, o) for s, o in zip(in_hw, out_hw)]
    if any(a is None for a in axes):
        return None
    return (axes[0][0], axes[1][0]), (axes[0][1], axes[1][1])  # type: ignore[index]


def axis_matrix(size: int, out: int) -> np.ndarray:
    """:math:`A` ``(out, size)``: row ``i`` averages the window ``[a_i, b_i)``."""
    a = np.zeros((out, size), dtype=np.float64)
    for i, (lo, hi) in enumerate(adaptive_windows(size, out)):
        a[i, lo:hi] = 1.0 / (hi - lo)
    return a


def adaptive_pool_matrix(in_shape: tuple[int, int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """:math:`P = I_C \\otimes A_H \\otimes A_W` ``(C o_H o_W, C H W)``: the pool on flattened
    features in PyTorch's (C, H, W) order."""
    c, h, w = in_shape
    entries = c * out_hw[0] * out_hw[1] * c * h * w
    if entries > MAX_AFFINE_ENTRIES:
        raise BridgeError(
            f"adaptive pooling from {c}x{h}x{w} to {c}x{out_hw[0]}x{out_hw[1]} would be an Affine "
            f"of {entries:,} weights (NIR has no cheaper exact form for windows of different "
            "sizes); use an input size the output size divides")
    per_channel = np.kron(axis_matrix(h, out_hw[0]), axis_matrix(w, out_hw[1]))
    return np.kron(np.eye(c), per_channel)
