r"""Reshapes, transposes and slices of a value: which ones are a fixed channel map.

Models move channels around with tensor *layout* operations: ``x[:, a:b]``, ``x.chunk(2, 1)``,
``torch.split``, ``narrow``, and the channel shuffle of ShuffleNet (``view(N, g, C/g, H, W)``,
``transpose(1, 2)``, ``reshape(N, C, H, W)``). Each step alone may not be a map on channels (the
5-d view is not), but the chain is. The front-ends record such a chain step by step on an
*index tensor*: for a value of shape :math:`S = (C, \ldots)` (one sample),

.. math:: I = (0, 1, \ldots, |S| - 1) \text{ reshaped to } (1, *S),

and every step is applied to ``I`` as it would be to the data (batch dimension 1, kept in
front). When a layer reads the result, :func:`resolve` says what the chain is:

* ``I`` unchanged: the identity;
* shape :math:`(1, C', *S[1:])` with each output channel ``j`` holding exactly the positions of
  one input channel ``c_j`` in order: the channel gather :math:`y_{:, j} = x_{:, c_j}`
  (a selection, a permutation, or both);
* shape :math:`(1, |S|)` in order: ``torch.flatten(x, 1)`` (:func:`is_flatten_of_base`);
* anything else (a slice of a spatial axis, a mix of channels and positions) has no fixed
  channel map and is refused by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


Step = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Layout:
    """A pending chain of layout steps on the value of op ``source`` (shape ``base``, one sample)."""

    source: str
    base: tuple[int, ...]
    index: torch.Tensor  # int64, (1, *current shape): positions in the flattened base value


def start(source: str, base: Sequence[int]) -> Layout:
    base = tuple(int(s) for s in base)
    return Layout(source, base, torch.arange(math.prod(base), dtype=torch.int64).reshape((1, *base)))


def apply(layout: Layout, step: Step) -> Layout:
    """``layout`` followed by ``step`` (a function of a tensor with batch dimension 1)."""
    return Layout(layout.source, layout.base, step(layout.index))


def is_flatten_of_base(layout: Layout) -> bool:
    """Whether the chain is ``torch.flatten(x, 1)`` of a value with more than one dimension."""
    index = layout.index
    return (len(layout.base) > 1 and index.dim() == 2
            and torch.equal(index[0], torch.arange(index.shape[1], dtype=torch.int64))
            and index.shape[1] == math.prod(layout.base))


def resolve(layout: Layout) -> tuple[int, ...] | None:
    """The channel gather ``(c_0, c_1, ...)`` the chain computes (``tuple(range(C))`` for the
    identity), or None when it is not a map of whole channels (see the module docstring)."""
    index, base = layout.index, layout.base
    if index.dim() != len(base) + 1 or index.shape[0] != 1 or tuple(index.shape[2:]) != base[1:]:
        return None
    per_channel = math.prod(base[1:])
    rows = index[0].reshape(index.shape[1], per_channel)
    channels = rows[:, 0] // per_channel
    expected = channels.unsqueeze(1) * per_channel + torch.arange(per_channel, dtype=torch.int64)
    if not torch.equal(rows, expected):
        return None
    return tuple(int(c) for c in channels)
