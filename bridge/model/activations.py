"""Activations to train an ANN for conversion (Bu et al., AAAI 2022 and ICLR 2022).

Both carry a trainable upper bound ``lambda`` per layer that becomes the IF threshold
``theta = lambda`` after conversion. ``lambda`` is stored through its absolute value so
that it stays positive whatever the optimiser does (a lambda that crosses zero would
give a negative threshold, which converts to a layer that never fires).
"""

from __future__ import annotations

import torch
from torch import nn


class _Bounded(nn.Module):
    """Holds the trainable bound ``lambda = |raw| + eps``."""

    min_bound = 1e-3

    def __init__(self, bound: float = 4.0) -> None:
        super().__init__()
        if bound <= 0:
            raise ValueError(f"the clip bound must be positive, got {bound}")
        self.raw_bound = nn.Parameter(torch.tensor(float(bound)))

    @property
    def bound(self) -> torch.Tensor:
        """The clip bound lambda (> 0); the IF threshold after conversion."""
        return self.raw_bound.abs() + self.min_bound

    def extra_repr(self) -> str:
        return f"bound={self.bound.item():.4g}"


class ClippedReLU(_Bounded):
    r"""Clipped ReLU with a trainable bound: :math:`a = \mathrm{clip}(z, 0, \lambda)`.

    Converts to an IF neuron with threshold :math:`\theta = \lambda`, reset by subtraction
    and initial potential :math:`\theta/2`; its rate over T steps approximates
    :math:`\frac{\theta}{T}\,\mathrm{clip}(\lfloor (T z + \theta/2)/\theta \rfloor, 0, T)`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.bound
        # clamp with a tensor bound keeps lambda trainable (gradient where z > lambda)
        return torch.minimum(torch.relu(x), lam)


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.floor(x + 0.5)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


class QCFS(_Bounded):
    r"""Quantisation-clip-floor-shift activation (Bu et al., ICLR 2022).

    .. math:: a = \frac{\lambda}{L}\,\mathrm{clip}\Big(\Big\lfloor \frac{z L}{\lambda} + \frac12 \Big\rfloor, 0, L\Big)

    with ``levels`` L quantisation steps and a straight-through gradient for the floor.
    It is exactly the rate of an IF neuron (threshold lambda, v(0) = lambda/2) after
    T = L steps under a constant input, so it converts like :class:`ClippedReLU`.
    """

    def __init__(self, bound: float = 4.0, levels: int = 8) -> None:
        super().__init__(bound)
        if levels < 1:
            raise ValueError(f"QCFS needs at least one quantisation level, got {levels}")
        self.levels = int(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.bound
        q = _RoundSTE.apply(x * self.levels / lam)
        return torch.clamp(q, 0, self.levels) * lam / self.levels

    def extra_repr(self) -> str:
        return f"bound={self.bound.item():.4g}, levels={self.levels}"
