"""Affine, Linear and Scale nodes: y = W x + b, y = W x, y = s * x (per feature)."""

from __future__ import annotations

import nir
import torch
import torch.nn.functional as F

from bridge.reference.ops.base import StatelessOp, param


class Affine(StatelessOp):
    r"""NIR ``Affine``: :math:`y = W x + b`, ``W`` of shape (out, in)."""

    batch_invariant = False  # a GEMM/convolution kernel may depend on the batch size

    def __init__(self, name: str, node: nir.Affine | nir.Linear, dtype: torch.dtype, device: torch.device):
        super().__init__(name)
        self.weight = param(node.weight, dtype, device)
        self.bias = param(node.bias, dtype, device) if isinstance(node, nir.Affine) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Linear(Affine):
    r"""NIR ``Linear``: :math:`y = W x`, ``W`` of shape (out, in) (an Affine without bias)."""


class Scale(StatelessOp):
    r"""NIR ``Scale``: :math:`y = s \odot x`, ``s`` broadcast over the sample's shape."""

    def __init__(self, name: str, node: nir.Scale, dtype: torch.dtype, device: torch.device):
        super().__init__(name)
        self.scale = param(node.scale, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale
