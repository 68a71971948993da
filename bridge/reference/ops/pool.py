"""AvgPool2d and SumPool2d nodes (zero padding counted in the average)."""

from __future__ import annotations

import nir
import torch
import torch.nn.functional as F

from bridge.reference.ops.base import StatelessOp
from bridge.reference.ops.conv import _ints


class AvgPool2d(StatelessOp):
    r"""NIR ``AvgPool2d``: :math:`y = \frac{1}{k_H k_W} \sum_{window} x` (padding counts as 0)."""

    def __init__(self, name: str, node: nir.AvgPool2d, dtype: torch.dtype, device: torch.device):
        super().__init__(name)
        self.kernel = _ints(node.kernel_size, 2)
        self.stride = _ints(node.stride, 2)
        self.padding = _ints(node.padding, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=True)


class SumPool2d(AvgPool2d):
    r"""NIR ``SumPool2d``: :math:`y = \sum_{window} x` (padding counts as 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # divisor_override=1 turns torch's average pooling into an exact window sum
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=True,
                            divisor_override=1)
