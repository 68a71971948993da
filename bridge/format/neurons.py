"""Neuron dynamics as pure functions (the one executable statement of the IF rule).

The reference simulator calls these; exporters re-express the same rule in their
framework's own neurons, and the validation suite checks that they agree.
"""

from __future__ import annotations

import torch


def _bound(value: torch.Tensor | float | None, like: torch.Tensor) -> torch.Tensor | None:
    """A bound as a tensor of ``like``'s dtype and device (``torch.clamp`` takes tensors)."""
    if value is None:
        return None
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def if_step(
    current: torch.Tensor,
    v: torch.Tensor,
    threshold: torch.Tensor,
    *,
    reset: str = "subtract",
    spike_condition: str = "ge",
    v_reset: torch.Tensor | float = 0.0,
    v_min: torch.Tensor | float | None = None,
    v_max: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One step of an integrate-and-fire neuron.

    .. math::
        m = v + I, \qquad
        s = [m \ge \theta] \;(\text{or } [m > \theta]), \qquad
        v' = \begin{cases} m - \theta s & \text{reset = subtract} \\
                           m (1 - s) + v_{reset} s & \text{reset = zero (hard)} \end{cases}

    With the state's range given (``v_min`` and/or ``v_max``, the bounds of a fixed-width
    membrane register such as Speck's 16-bit one), the integrated potential saturates before
    the spike decision:

    .. math:: m = \mathrm{clip}(v + I,\ v_{min},\ v_{max})

    and the rest is unchanged. With ``v_min <= 0 < theta <= v_max`` the reset cannot leave the
    range (a spike needs ``m >= theta``, so ``m - theta >= 0 >= v_min``), so clipping ``m``
    equals clipping ``v'`` after the reset (sinabs's ``min_v_mem``, applied after the reset).
    Without bounds (the default) nothing is clipped.

    ``current`` is the input already multiplied by the neuron's gain r. Returns
    ``(s, v')`` with ``s`` in {0, 1} and the dtype of ``current``.
    """
    m = v + current
    if v_min is not None or v_max is not None:
        m = torch.clamp(m, min=_bound(v_min, m), max=_bound(v_max, m))
    fired = m >= threshold if spike_condition == "ge" else m > threshold
    s = fired.to(m.dtype)
    if reset == "subtract":
        return s, m - threshold * s
    return s, torch.where(fired, torch.as_tensor(v_reset, dtype=m.dtype, device=m.device), m)


def if_step_(
    current: torch.Tensor,
    v: torch.Tensor,
    threshold: torch.Tensor,
    spikes_out: torch.Tensor,
    *,
    reset: str = "subtract",
    spike_condition: str = "ge",
    v_reset: torch.Tensor | float = 0.0,
    v_min: torch.Tensor | float | None = None,
    v_max: torch.Tensor | float | None = None,
) -> None:
    """:func:`if_step` in place: ``v`` becomes v', ``spikes_out`` receives s.

    The same rule and the same floating-point operations (``m - theta * s`` is computed as
    ``m + (-1) * (s * theta)``, equal bit for bit because ``s * theta`` is exact and negation
    is exact), without allocating: the simulator's hot loop runs it once per step and layer.
    ``v`` must not alias ``current`` and must be writable (not an expanded view).
    """
    v.add_(current)
    if v_min is not None or v_max is not None:
        v.clamp_(min=_bound(v_min, v), max=_bound(v_max, v))
    if spike_condition == "ge":
        torch.ge(v, threshold, out=spikes_out)
    else:
        torch.gt(v, threshold, out=spikes_out)
    if reset == "subtract":
        v.addcmul_(spikes_out, threshold, value=-1)
    else:
        reset_to = torch.as_tensor(v_reset, dtype=v.dtype, device=v.device)
        torch.where(spikes_out.bool(), reset_to, v, out=v)


def if_constant_input_spike_count(
    current: torch.Tensor, threshold: torch.Tensor, v_init: torch.Tensor, steps: int
) -> torch.Tensor:
    r"""Closed form of :func:`if_step` (subtract reset, ``>=``) under a constant current z.

    .. math:: N_T = \mathrm{clip}\big(\lfloor (T z + v_0) / \theta \rfloor, 0, T\big)

    valid when ``0 <= v_0 < theta`` (the potential never needs more than one spike per
    step to come back under threshold). This is the quantiser that the optimal initial
    potential ``v_0 = theta / 2`` turns from floor into rounding.
    """
    return torch.clamp(torch.floor((steps * current + v_init) / threshold), 0, steps)
