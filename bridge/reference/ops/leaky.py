"""Integrator (I), leaky integrator (LI) and leaky integrate-and-fire (LIF) nodes.

NIR states them in continuous time and carries no dt. The reference discretises them
with forward Euler:

* ``I`` (like ``IF``, read with dt = 1 so that r is the per-step gain, as bridge reads IF):
  ``v(t) = v(t-1) + r I(t)``, output ``v(t)``, ``v(0) = 0``.
* ``LI`` with a user-given ``dt``:
  ``v(t) = v(t-1) + dt/tau * (v_leak - v(t-1) + r I(t))``, output ``v(t)``, ``v(0) = v_leak``.
* ``LIF`` with a user-given ``dt``:
  ``m(t) = v(t-1) + dt/tau * (v_leak - v(t-1) + r I(t))``, ``z(t) = [m(t) > v_threshold]``,
  ``v(t) = v_reset`` where ``z(t) = 1`` else ``m(t)``, output ``z(t)``, ``v(0) = v_leak``.
"""

from __future__ import annotations

import nir
import torch

from bridge.format.errors import BridgeError
from bridge.reference.ops.base import NeuronOp, param


def _need_dt(name: str, node: object, dt: float | None) -> float:
    if dt is None:
        raise BridgeError(
            f"node {name!r} is a {type(node).__name__} (leaky neuron): NIR carries no time step; "
            "pass dt (simulate(..., dt=1e-3) or --dt 1e-3)"
        )
    if not dt > 0:
        raise BridgeError(f"dt must be positive, got {dt}")
    return float(dt)


class Integrator(NeuronOp):
    r"""NIR ``I``: :math:`v(t) = v(t-1) + r I(t)`, output :math:`v(t)`, :math:`v(0) = 0`."""

    def __init__(self, name: str, node: nir.I, dtype: torch.dtype, device: torch.device):
        super().__init__(name)
        self.r = param(node.r, dtype, device)

    def init_state(self, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(like)

    def step(self, current: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = state + self.r * current
        return v, v

    def potential(self, state: torch.Tensor) -> torch.Tensor:
        return state


class LI(NeuronOp):
    r"""NIR ``LI``, forward Euler with step dt:

    .. math:: v(t) = v(t-1) + \frac{dt}{\tau}\big(v_{leak} - v(t-1) + r I(t)\big),
              \qquad v(0) = v_{leak}

    output :math:`v(t)`.
    """

    def __init__(self, name: str, node: nir.LI, dtype: torch.dtype, device: torch.device,
                 dt: float | None = None):
        super().__init__(name)
        dt = _need_dt(name, node, dt)
        self.alpha = param(dt / node.tau, dtype, device)
        self.r = param(node.r, dtype, device)
        self.v_leak = param(node.v_leak, dtype, device)

    def init_state(self, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(like) + self.v_leak

    def _integrate(self, current: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v + self.alpha * (self.v_leak - v + self.r * current)

    def step(self, current: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self._integrate(current, state)
        return v, v

    def potential(self, state: torch.Tensor) -> torch.Tensor:
        return state


class LIF(LI):
    r"""NIR ``LIF``, forward Euler with step dt:

    .. math::
        m(t) = v(t-1) + \frac{dt}{\tau}\big(v_{leak} - v(t-1) + r I(t)\big), \quad
        z(t) = [m(t) > v_{thr}], \quad
        v(t) = \begin{cases} v_{reset} & z(t) = 1 \\ m(t) & \text{else} \end{cases},
        \quad v(0) = v_{leak}

    output the spike :math:`z(t)`.
    """

    traceable = True

    def __init__(self, name: str, node: nir.LIF, dtype: torch.dtype, device: torch.device,
                 dt: float | None = None):
        super().__init__(name, node, dtype, device, dt)  # type: ignore[arg-type]
        self.v_threshold = param(node.v_threshold, dtype, device)
        v_reset = node.v_reset if node.v_reset is not None else 0.0
        self.v_reset = param(v_reset, dtype, device)

    def step(self, current: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self._integrate(current, state)
        fired = m > self.v_threshold
        v = torch.where(fired, self.v_reset.to(m.dtype).expand_as(m), m)
        return fired.to(m.dtype), v
