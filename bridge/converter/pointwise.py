r"""Activations recognised by the function they compute: chains of element-wise steps.

A front-end turns every element-wise op between two layers into a :class:`Step` (``relu``,
``clamp(lo, hi)``, ``max(c)``, ``min(c)``, ``x + c``, ``x * c``, ``c - x``, ``x / c``, ``floor``,
``round``) whose constants ``c`` are numbers or tensors fixed at inference (parameters, buffers,
literals): one value per layer or per channel. :func:`recognise` composes the chain and matches
the result to the activations that convert to IF neurons.

**Clipped affine maps.** Every step except ``floor``/``round`` maps a *clipped affine* function
:math:`f(x) = \mathrm{clip}(\alpha x + \beta, lo, hi)` (per channel, :math:`lo \le hi`, bounds
possibly infinite) to another one:

.. math::
    c f + d = \mathrm{clip}(c\alpha x + c\beta + d,\; c\,lo + d,\; c\,hi + d) \quad (c > 0;
    \text{ bounds swap for } c < 0),\qquad
    \max(f, c) = \mathrm{clip}(\alpha x + \beta, \max(lo, c), \max(hi, c)),

and ``min`` likewise, so a chain without rounding is one clipped affine map of the
pre-activation ``z``. ``relu`` is ``max(., 0)``, ``clamp(lo, hi)`` is ``min(max(., lo), hi)``.

**The staircase.** ``floor`` is non-decreasing, so for :math:`\alpha > 0`
:math:`\lfloor \mathrm{clip}(\alpha z + \beta, lo, hi) \rfloor = \mathrm{clip}(\lfloor \alpha z +
\beta\rfloor, \lfloor lo\rfloor, \lfloor hi\rfloor)`: the chain becomes
:math:`g(u)`, :math:`u = \lfloor \alpha z + \beta \rfloor`, with ``g`` a clipped affine map of the
integer ``u`` (``round(y)`` is taken as :math:`\lfloor y + 1/2 \rfloor`; the two differ only on
exact ties, where the IF neuron rounds up). Writing :math:`\beta = s + k` (integer ``k``,
:math:`s \in [0, 1)`) and absorbing ``k`` into ``g``, the chain is the QCFS staircase

.. math:: \frac{a}{L}\,\mathrm{clip}\Big(\Big\lfloor \frac{z L}{a} + s \Big\rfloor, 0, L\Big)

exactly when ``g(u) = clip(a u / L, 0, a)`` and :math:`\alpha = L / a` (to rounding, relative
1e-9), with an integer ``L >= 1`` the same in every channel. Its IF neuron with threshold ``a``
and initial potential ``s a`` reproduces it at T = L. The documented shifts are 1/2 (QCFS) and 0
(the plain quantised clip); others are refused.

**Matches** (anything else is refused, saying which part does not fit):

* :math:`\alpha = 1, \beta = 0, lo = 0, hi = \infty`: ReLU;  :math:`hi = a < \infty`: clip(z, 0, a);
* :math:`\alpha = 1, \beta = 0, lo = -\infty, hi = \infty`: the identity (no op);
* the staircase above: QCFS(a, L, s).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from bridge.format.graph import per_channel

RTOL = 1e-9  # rounding of the chain's own float arithmetic (x / a * a is not always x)
DOCUMENTED_SHIFTS = (0.5, 0.0)

StepKind = Literal["relu", "clamp", "max", "min", "add", "mul", "rsub", "div", "floor", "round"]


@dataclass(frozen=True)
class Step:
    """One element-wise step ``x -> kind(x, c)``; ``lo``/``hi`` only for ``clamp`` (None = open).

    Constants are float64 arrays of one value (shape ``()``) or one per channel (``(C,)``)."""

    kind: StepKind
    c: np.ndarray | None = None
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None


def _num(v: np.ndarray | None) -> str:
    if v is None:
        return "None"
    v = np.asarray(v)
    return repr(float(v)) if v.ndim == 0 else f"<{v.size} values per channel>"


def describe(step: Step) -> str:
    """``clamp(min=0.0, max=6.0)``, ``mul(32.0)``, ``floor`` ... for messages."""
    if step.kind == "clamp":
        return f"clamp(min={_num(step.lo)}, max={_num(step.hi)})"
    return f"{step.kind}({_num(step.c)})" if step.c is not None else step.kind


class ChainError(ValueError):
    """The chain is not an activation bridge converts; the message says why and the fix."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def channel_values(value: Any, data_shape: tuple[int, ...]) -> np.ndarray:
    """A constant operand as one value (shape ``()``) or one value per channel (``(C,)``).

    ``data_shape`` is the shape of the data it meets, with batch. A constant that differs inside
    a channel, or per sample, has no IF equivalent (a threshold is per neuron of one layer, but
    a bound that varies by position is a different function) and is refused.
    """
    arr = np.asarray(torch.as_tensor(value).detach().cpu().to(torch.float64).numpy())
    if arr.size == 1:
        return arr.reshape(())
    sample = data_shape[1:]
    try:
        full = np.broadcast_to(arr, (1, *sample) if arr.ndim > len(sample) else sample)
    except ValueError:
        raise ChainError(f"a constant of shape {list(arr.shape)} that does not broadcast to one sample "
                         f"{list(sample)}", "use one value per layer or per channel") from None
    full = full.reshape(sample)
    out = per_channel(full if sample else full.reshape(1, -1))
    if out is None:
        raise ChainError(f"a constant of shape {list(arr.shape)} that varies inside a channel",
                         "use one bound per layer or per channel")
    return out.reshape(()) if (out == out[0]).all() else out


@dataclass
class ClippedAffine:
    r""":math:`f(x) = \mathrm{clip}(\alpha x + \beta, lo, hi)`, per channel (numpy broadcasting)."""

    alpha: np.ndarray = field(default_factory=lambda: np.array(1.0))
    beta: np.ndarray = field(default_factory=lambda: np.array(0.0))
    lo: np.ndarray = field(default_factory=lambda: np.array(-np.inf))
    hi: np.ndarray = field(default_factory=lambda: np.array(np.inf))

    def scale_shift(self, c: np.ndarray, d: np.ndarray) -> ClippedAffine:
        if (c == 0).any():
            raise ChainError("a multiplication by 0 (a constant output)", "remove it")
        with np.errstate(invalid="ignore"):  # inf * c is fine; 0 * inf cannot occur (c != 0)
            lo, hi = c * self.lo + d, c * self.hi + d
        return ClippedAffine(c * self.alpha, c * self.beta + d, np.where(c > 0, lo, hi), np.where(c > 0, hi, lo))

    def maximum(self, c: np.ndarray) -> ClippedAffine:
        return ClippedAffine(self.alpha, self.beta, np.maximum(self.lo, c), np.maximum(self.hi, c))

    def minimum(self, c: np.ndarray) -> ClippedAffine:
        return ClippedAffine(self.alpha, self.beta, np.minimum(self.lo, c), np.minimum(self.hi, c))


def _apply(f: ClippedAffine, step: Step) -> ClippedAffine:
    one, zero = np.array(1.0), np.array(0.0)
    k = step.kind
    if k == "relu":
        return f.maximum(zero)
    if k == "clamp":
        if step.lo is not None:
            f = f.maximum(step.lo)
        return f.minimum(step.hi) if step.hi is not None else f
    if k == "max":
        return f.maximum(step.c)  # type: ignore[arg-type]
    if k == "min":
        return f.minimum(step.c)  # type: ignore[arg-type]
    if k == "add":
        return f.scale_shift(one, step.c)  # type: ignore[arg-type]
    if k == "mul":
        return f.scale_shift(step.c, zero)  # type: ignore[arg-type]
    if k == "div":
        if (step.c == 0).any():  # type: ignore[union-attr]
            raise ChainError("a division by 0", "remove it")
        return f.scale_shift(1.0 / step.c, zero)  # type: ignore[operator]
    if k == "rsub":
        return f.scale_shift(-one, step.c)  # type: ignore[arg-type]
    raise AssertionError(k)


@dataclass(frozen=True)
class Recognised:
    """The activation a chain computes: ``kind`` relu / clip / qcfs / identity."""

    kind: Literal["relu", "clip", "qcfs", "identity"]
    bound: float | np.ndarray | None = None
    levels: int | None = None
    shift: float = 0.5


def _close(a: np.ndarray, b: float | np.ndarray, scale: Any = 1.0) -> bool:
    return bool(np.all(np.abs(a - b) <= RTOL * np.maximum(1.0, np.abs(scale))))


def _as_bound(values: np.ndarray) -> float | np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return float(values) if values.ndim == 0 else values.copy()


def recognise(steps: list[Step]) -> Recognised:
    """The activation computed by ``steps`` applied in order to the pre-activation ``z``."""
    f = ClippedAffine()
    inner: tuple[np.ndarray, np.ndarray] | None = None  # (alpha, beta) inside the floor
    for step in steps:
        if step.kind in ("floor", "round"):
            if inner is not None:
                raise ChainError("two roundings in one activation", "quantise once (QCFS has one floor)")
            if not (f.alpha > 0).all():
                raise ChainError("a floor of a decreasing function", "the QCFS staircase increases with z")
            half = 0.5 if step.kind == "round" else 0.0
            inner = (f.alpha, f.beta + half)
            f = ClippedAffine(np.array(1.0), np.array(0.0), np.floor(f.lo + half), np.floor(f.hi + half))
        else:
            f = _apply(f, step)
    if inner is None:
        return _clip_form(f)
    return _staircase(f, *inner)


def _clip_form(f: ClippedAffine) -> Recognised:
    if not _close(f.alpha, 1.0):
        raise ChainError(f"the activation scales its input by {_show(f.alpha)}",
                         "fold the factor into the previous layer's weights; IF neurons compute clip(z, 0, a)")
    if not _close(f.beta, 0.0, f.hi if np.isfinite(f.hi).all() else 1.0):
        raise ChainError(f"the activation shifts its input by {_show(f.beta)}",
                         "fold the shift into the previous layer's bias; IF neurons compute clip(z, 0, a)")
    if np.isneginf(f.lo).all() and np.isposinf(f.hi).all():
        return Recognised("identity")
    if np.isneginf(f.lo).any():
        raise ChainError("an upper clip without a lower clip at 0 (min(z, a) is not a ReLU)",
                         "clip at 0 too: clamp(z, 0, a)")
    if not _close(f.lo, 0.0, f.hi if np.isfinite(f.hi).all() else 1.0):
        raise ChainError(f"a lower clip at {_show(f.lo)} (IF neurons clip at min=0)",
                         "use ReLU, ReLU6, Hardtanh(0, a), clamp(0, a) or ClippedReLU")
    if np.isposinf(f.hi).all():
        return Recognised("relu")
    if np.isposinf(f.hi).any():
        raise ChainError("an upper bound in some channels only", "give every channel a bound")
    return Recognised("clip", _as_bound(f.hi))


def _staircase(g: ClippedAffine, alpha: np.ndarray, beta: np.ndarray) -> Recognised:
    """Match ``g(floor(alpha z + beta))`` to ``a/L clip(floor(z L / a + s), 0, L)``."""
    k = np.floor(beta + RTOL)
    s = beta - k
    s = np.where(np.abs(s - 1.0) <= RTOL, 0.0, s)
    gamma, delta = g.alpha, g.beta + g.alpha * k  # u = u' + k folded into g
    a = g.hi
    if not (gamma > 0).all() or not np.isfinite(a).all() or not (a > 0).all():
        raise ChainError("a quantisation without a positive upper bound", "clip the staircase: QCFS has clip(., 0, L)")
    if not _close(delta, 0.0, a) or not _close(g.lo, 0.0, a):
        raise ChainError(f"a staircase whose lowest level is {_show(g.lo)}, not 0",
                         "clip at 0: a/L * clip(floor(z L / a + s), 0, L)")
    levels_f = a / gamma
    levels = np.round(levels_f)
    if not _close(levels_f, levels, levels) or (levels < 1).any() or levels.min() != levels.max():
        raise ChainError(f"a staircase with {_show(levels_f)} steps (not one integer L >= 1 for all channels)",
                         "use an integer number of levels L")
    if not _close(alpha * gamma, 1.0):
        raise ChainError(f"a staircase whose input scale {_show(alpha)} is not L / a = {_show(levels / a)}",
                         "quantise z L / a: the step width must equal a / L")
    shift = None
    for doc in DOCUMENTED_SHIFTS:
        if np.all(np.abs(s - doc) <= RTOL):
            shift = doc
    if shift is None:
        raise ChainError(f"a staircase with shift {_show(s)} (documented: 0.5 for QCFS, 0 for floor)",
                         "use floor(z L / a + 0.5) (QCFS) or floor(z L / a)")
    return Recognised("qcfs", _as_bound(a), int(levels.reshape(-1)[0]), shift)


def _show(v: np.ndarray) -> str:
    v = np.asarray(v)
    if v.ndim == 0 or (v == v.reshape(-1)[0]).all():
        return f"{float(v.reshape(-1)[0]):.6g}"
    return f"{float(v.min()):.6g} .. {float(v.max()):.6g} (per channel)"
