"""Conv1d and Conv2d nodes (PyTorch cross-correlation, NIR padding int/tuple/'same'/'valid').

A grouped convolution written in bridge's dense block-diagonal encoding (conv metadata
``groups``, :func:`bridge.format.extension.conv_weight`) runs as the grouped convolution it is:
its weight is recovered once, when the graph is compiled, so a depthwise layer costs what it
costs in the ANN instead of ``C`` times that.
"""

from __future__ import annotations

from typing import Any

import nir
import numpy as np
import torch
import torch.nn.functional as F

from bridge.format.extension import conv_weight
from bridge.reference.ops.base import StatelessOp, param


def _padding(value: Any, ndim: int) -> str | tuple[int, ...]:
    """NIR padding -> torch padding: 'same'/'valid' stay strings, ints become a tuple."""
    if isinstance(value, (str, bytes, np.str_)):
        text = value.decode() if isinstance(value, bytes) else str(value)
        return text
    arr = np.atleast_1d(np.asarray(value)).astype(int)
    if arr.size == 1:
        return tuple([int(arr[0])] * ndim)
    return tuple(int(v) for v in arr)


def _ints(value: Any, ndim: int) -> tuple[int, ...]:
    arr = np.atleast_1d(np.asarray(value)).astype(int)
    return tuple([int(arr[0])] * ndim) if arr.size == 1 else tuple(int(v) for v in arr)


class _ConvNd(StatelessOp):
    """What NIR's Conv1d and Conv2d share: parameters read once, F.conv{ndim}d applied."""

    ndim: int
    batch_invariant = False  # a GEMM/convolution kernel may depend on the batch size

    def __init__(self, name: str, node: nir.Conv1d | nir.Conv2d, dtype: torch.dtype,
                 device: torch.device):
        super().__init__(name)
        weight, self.groups = conv_weight(node, name)
        self.weight = param(weight, dtype, device)
        self.bias = param(node.bias, dtype, device) if node.bias is not None else None
        self.stride = _ints(node.stride, self.ndim)
        self.padding = _padding(node.padding, self.ndim)
        self.dilation = _ints(node.dilation, self.ndim)
        self.conv = F.conv2d if self.ndim == 2 else F.conv1d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2d(_ConvNd):
    r"""NIR ``Conv2d``: :math:`y_{o} = b_o + \sum_{c,k} W_{o,c,k}\, x_{c,\,s p + d k - pad}`.

    Weight ``(Cout, Cin/groups, kH, kW)``; stride, padding, dilation and groups as in
    ``torch.nn.functional.conv2d`` (zero padding; 'same' needs stride 1).
    """

    ndim = 2


class Conv1d(_ConvNd):
    r"""NIR ``Conv1d``: :math:`y_{o} = b_o + \sum_{c,k} W_{o,c,k}\, x_{c,\,s p + d k - pad}`.

    Weight ``(Cout, Cin/groups, k)``; the rest as in ``torch.nn.functional.conv1d``.
    """

    ndim = 1
