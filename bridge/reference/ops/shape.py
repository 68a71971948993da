"""Flatten and Threshold: reshaping and the Heaviside step."""

from __future__ import annotations

import nir
import torch

from bridge.reference.ops.base import StatelessOp, param


class Flatten(StatelessOp):
    """NIR ``Flatten``: merge dims ``start_dim..end_dim`` of one sample (batch not counted).

    ``start_dim = 0`` on a ``(C, H, W)`` sample is ``torch.flatten(x, 1)`` on the batch.
    """

    def __init__(self, name: str, node: nir.Flatten, dtype: torch.dtype, device: torch.device):
        super().__init__(name)
        self.start = int(node.start_dim)
        self.end = int(node.end_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # shift non-negative sample dims past the batch dim; negative ones count from the end
        start = self.start + 1 if self.start >= 0 else self.start
        end = self.end + 1 if self.end >= 0 else self.end
        return torch.flatten(x, start, end)


class Threshold(StatelessOp):
    r"""NIR ``Threshold``: the Heaviside step :math:`z = [x > \theta]` (strict, as NIR states)."""

    def __init__(self, name: str, node: nir.Threshold, dtype: torch.dtype, device: torch.device):
        super().__init__(name)
        self.threshold = param(node.threshold, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.threshold).to(x.dtype)
