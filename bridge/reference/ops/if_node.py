"""The IF node: the one place the simulator applies :func:`bridge.format.neurons.if_step`."""

from __future__ import annotations

import nir
import torch

from bridge.format.extension import if_semantics, qcfs_staircase
from bridge.format.neurons import if_step, if_step_
from bridge.reference.ops.base import NeuronOp, param


class IF(NeuronOp):
    r"""NIR ``IF`` read through :func:`bridge.format.extension.if_semantics`.

    One step with input current I(t) (the sum of the incoming edges) and gain r:

    .. math::
        m(t) = v(t-1) + r\,I(t), \qquad s(t) = [m(t) \ge \theta] \text{ (bridge) or }
        [m(t) > \theta] \text{ (NIR text)},

    .. math::
        v(t) = m(t) - \theta s(t) \text{ (subtract) or } v_{reset} \text{ where } s(t) = 1
        \text{ (zero/hard reset)}, \qquad v(0) = v_{init}\ (\text{NIR text: } 0).

    A node that states its state's range (bridge extension 1.1, ``v_min`` / ``v_max``)
    saturates first: :math:`m(t) = \mathrm{clip}(v(t-1) + r I(t), v_{min}, v_{max})`.

    The output is the unit spike s(t). Its ANN view (rate) is
    :math:`\mathrm{clip}(r I / \theta, 0, 1)`, the spike rate under a constant current; for a node
    marked with the QCFS staircase (``qcfs_levels`` L, ``qcfs_shift`` s) it is the staircase the
    model was trained with, in units of theta:
    :math:`\frac{1}{L}\mathrm{clip}(\lfloor r I L / \theta + s \rfloor, 0, L)`.
    """

    traceable = True
    inplace_step = True

    def __init__(self, name: str, node: nir.IF, dtype: torch.dtype, device: torch.device):
        super().__init__(name)
        sem = if_semantics(node, name)
        self.semantics = sem
        self.threshold = param(sem.threshold, dtype, device)
        self.v_init = param(sem.v_init, dtype, device)
        self.v_reset = param(sem.v_reset, dtype, device)
        r = param(sem.r, dtype, device)
        # r = 1 (every bridge file) is skipped: 1 * I == I exactly, and it saves a pass
        self.r = None if bool((r == 1).all()) else r
        self.v_min = None if sem.v_min is None else param(sem.v_min, dtype, device)
        self.v_max = None if sem.v_max is None else param(sem.v_max, dtype, device)
        self.staircase = qcfs_staircase(node)  # (L, shift) or None

    def init_state(self, like: torch.Tensor) -> torch.Tensor:
        # empty_like + copy_ keeps the batch's memory layout (channels_last stays so)
        return torch.empty_like(like).copy_(self.v_init.expand_as(like))

    def gain(self, current: torch.Tensor) -> torch.Tensor:
        return current if self.r is None else current * self.r

    def step(self, current: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return if_step(
            self.gain(current), state, self.threshold,
            reset=self.semantics.reset, spike_condition=self.semantics.spike_condition,
            v_reset=self.v_reset, v_min=self.v_min, v_max=self.v_max,
        )

    def step_(self, current: torch.Tensor, state: torch.Tensor, out: torch.Tensor) -> None:
        if_step_(
            self.gain(current), state, self.threshold, out,
            reset=self.semantics.reset, spike_condition=self.semantics.spike_condition,
            v_reset=self.v_reset, v_min=self.v_min, v_max=self.v_max,
        )

    def potential(self, state: torch.Tensor) -> torch.Tensor:
        return state

    def rate(self, x: torch.Tensor) -> torch.Tensor:
        if self.staircase is not None:
            levels, shift = self.staircase
            steps = torch.floor(self.gain(x) * levels / self.threshold + shift)
            return torch.clamp(steps, 0.0, float(levels)) / levels
        return self.clip_rate(x)

    def clip_rate(self, x: torch.Tensor) -> torch.Tensor:
        """The spike rate's limit :math:`\mathrm{clip}(r I / \theta, 0, 1)`, for a QCFS-marked node too."""
        return torch.clamp(self.gain(x) / self.threshold, 0.0, 1.0)
