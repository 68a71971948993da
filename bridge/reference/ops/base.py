"""The two kinds of operator the reference simulator runs.

A :class:`StatelessOp` maps a batch of values to a batch of values with no memory: the
simulator may call it on any leading batch, ``[B, ...]`` for one step or ``[T*B, ...]``
for all T steps at once (layer-at-a-time), and gets the same numbers per sample.

A :class:`NeuronOp` has a state that carries over from one step to the next. Its
:meth:`NeuronOp.step` is the rule of one time step; the simulator loops it over T.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

State = Any


def param(value: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A NIR parameter (numpy array or number) as a tensor of the simulation's dtype/device."""
    # a copy: nir.read gives read-only arrays, which torch refuses to share without a warning
    return torch.as_tensor(np.array(value, dtype=np.float64), dtype=dtype, device=device)


class NodeOp:
    """One NIR node, compiled for a dtype and device (the reference simulator's operator).

    Not to be confused with :class:`bridge.converter.ir.LayerOp`, a layer of the converter's
    graph before NIR exists.
    """

    stateful: ClassVar[bool] = False
    #: True where the node emits spikes and has a membrane potential (traces are kept)
    traceable: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        self.name = name


class StatelessOp(NodeOp):
    """``forward(x)`` on ``[N, *input_shape]`` -> ``[N, *output_shape]``, N any batch.

    ``batch_invariant`` is False for ops whose library kernels (BLAS, oneDNN, cuDNN) may
    sum in another order for another batch size N: the numbers per sample can then differ
    in the last bit between ``[B, ...]`` and ``[T*B, ...]``.
    """

    batch_invariant: ClassVar[bool] = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rate(self, x: torch.Tensor) -> torch.Tensor:
        """The op in the ANN view (:func:`bridge.reference.ann_view`): itself."""
        return self.forward(x)


class Identity(StatelessOp):
    """``Input`` and ``Output`` nodes (and a subgraph's inner ones): y = x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class NeuronOp(NodeOp):
    """A node with state: ``step(I(t), state(t-1)) -> (output(t), state(t))``."""

    stateful = True
    #: True where :meth:`step_` exists: the state is one tensor updated in place
    inplace_step: ClassVar[bool] = False

    def init_state(self, like: torch.Tensor) -> State:
        """The state before step 1 for a batch shaped like ``like`` ``[B, *shape]``."""
        raise NotImplementedError

    def step(self, current: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def step_(self, current: torch.Tensor, state: torch.Tensor, out: torch.Tensor) -> None:
        """:meth:`step` in place (only where ``inplace_step``): ``state`` is updated and
        ``out`` receives the output; bit-identical to :meth:`step`."""
        raise NotImplementedError

    def potential(self, state: State) -> torch.Tensor:
        """The membrane potential held in ``state`` (for traces)."""
        raise NotImplementedError

    def rate(self, x: torch.Tensor) -> torch.Tensor:
        from bridge.format.errors import BridgeError

        raise BridgeError(
            f"node {self.name!r} ({type(self).__name__}) has no rate function: the ANN view "
            "is defined for graphs whose only neurons are IF nodes"
        )
