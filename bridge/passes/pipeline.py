r"""The calibration pipeline: conversion stages in order, each checked on held-out calibration data.

For a target T the stages are, each starting from the best graph so far:

1. ``half``: the converted graph, :math:`v_{init} = \theta/2` (the converter's output);
2. ``optimized``: per-channel threshold scale and initial potential by grid search, layer by
   layer on the SNN (:func:`bridge.passes.optimize.optimize_initial_potentials`);
3. ``bias``: per-channel bias correction of each layer's expected error on the already
   corrected upstream SNN (:func:`bridge.passes.bias_correction.correct_biases`);
4. ``joint``: thresholds, initial potentials and biases fitted jointly through the unrolled SNN
   (:func:`bridge.passes.joint_fit.joint_fit`);
5. ``weights``: the same joint fit with the Conv/Affine weights free too (weight calibration,
   Li et al. 2021; small learning rate), the strongest post-hoc stage measured here.

The calibration data is split once: the first three quarters fit, the last quarter (at least 32
samples) is held out. A stage's graph is kept only if its held-out error

.. math:: E_T = \frac{1}{|H|} \sum_{x \in H} \big\| \mathrm{SNN}_T(x) - \mathrm{ANN}(x) \big\|^2

(reference simulator, float32; :math:`\mathrm{ANN}` the ANN view of the uncalibrated graph) is
lower than the best so far (for ``timesteps=None``: the mean is lower and no T of the set is more
than 2% worse), so the pipeline never returns a graph worse on held-out data than
theta/2. Nothing is tuned on test data.

For ``timesteps=None`` (a graph for every T) the default is ``half`` alone; ``stages=("half",
"any-T")`` adds the joint fit
(thresholds, initial potentials, biases; weights held) on the mean readout error over T in {1, 2, 4, 8, 16, 32} plus the rate limit,
and the held-out error is the mean of :math:`E_T` over those T and the ANN view of the fitted
graph. A graph fitted for one small T is never the default for unknown T.

Every stage writes standard bridge NIR (IF nodes in the bridge encoding, Conv/Affine with new
biases and weights): the exporters stay exact on the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import nir
import torch

from bridge.format.errors import BridgeError

STAGES: tuple[str, ...] = ("half", "optimized", "bias", "joint", "weights")
ANY_T_STAGES: tuple[str, ...] = ("half", "any-T")
STAGE_LABELS = {"half": "theta/2", "optimized": "+ v_init/threshold search", "bias": "+ bias correction",
                "joint": "+ joint fit", "weights": "+ weight calibration", "any-T": "joint fit, any T"}


@dataclass
class StageResult:
    """One stage: its held-out error, whether it was kept, what it cost."""

    name: str
    heldout_error: float
    kept: bool
    seconds: float


@dataclass
class CalibrationReport:
    """What :func:`calibrate` ran and chose."""

    timesteps: int | None
    images: int = 0
    heldout: int = 0
    seconds: float = 0.0
    stages: list[StageResult] = field(default_factory=list)
    chosen: str = "half"

    def summary(self) -> str:
        """One line: the chosen stage, the stages' held-out errors, the cost."""
        target = f"T={self.timesteps}" if self.timesteps is not None else "any T (1..64)"
        steps = ", ".join(f"{s.name} {s.heldout_error:.3g}{'*' if s.name == self.chosen else ''}"
                          for s in self.stages)
        return (f"calibration for {target}: chose {self.chosen} ({STAGE_LABELS[self.chosen]}); "
                f"held-out error per stage: {steps}; {self.images} images "
                f"({self.heldout} held out), {self.seconds:.1f} s")


#: above this T the joint fits are skipped: their cost grows with T and theta/2 + search + bias
#: correction are within noise of the ANN there (measured on MNIST-1D, see docs/calibration.md)
JOINT_MAX_T = 8


def default_stages(timesteps: int | None) -> tuple[str, ...]:
    """The stages ``bridge export --calibration DATA [--timesteps T]`` runs."""
    if timesteps is None:
        # the any-T joint fit was never kept in the demo (MNIST-1D, 4 models x 2 seeds: the
        # no-T-worse rule refused it every time) and cost 50-100 s each: theta/2 is the default
        return ANY_T_STAGES[:1]
    return STAGES if timesteps <= JOINT_MAX_T else STAGES[:3]


def heldout_errors(graph: nir.NIRGraph, x: torch.Tensor, ann: torch.Tensor, timesteps: int | None) -> list[float]:
    """:math:`[E_T]` of the module docstring (for ``None``: one per T of the any-T set, then the ANN view's)."""
    from bridge.passes.joint_fit import ANY_T_STEPS
    from bridge.reference import ann_view, simulate

    def err(out: torch.Tensor) -> float:
        return float((out.flatten(1).double() - ann).square().sum(1).mean())

    if timesteps is not None:
        return [err(simulate(graph, x, timesteps, dtype=torch.float32).readout)]
    running = simulate(graph, x, max(ANY_T_STEPS), dtype=torch.float32).running_readout
    return [err(running[t - 1]) for t in ANY_T_STEPS] + [err(ann_view(graph, x.double()))]


def improves(candidate: list[float], best: list[float] | None, tolerance: float = 0.02) -> bool:
    """Kept when the mean error is lower and no single T gets worse by more than ``tolerance`` (relative)."""
    if best is None:
        return True
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return mean(candidate) < mean(best) and all(c <= b * (1 + tolerance) for c, b in zip(candidate, best))


def run_stage(name: str, graph: nir.NIRGraph, reference: nir.NIRGraph, x_fit: torch.Tensor,
              x_all: torch.Tensor, timesteps: int | None, *, iterations: int = 150) -> nir.NIRGraph:
    """One stage applied to ``graph`` (``reference``: the uncalibrated conversion, for targets)."""
    from bridge.passes.bias_correction import correct_biases
    from bridge.passes.joint_fit import joint_fit
    from bridge.passes.optimize import optimize_initial_potentials

    if name == "half":
        return graph
    if name == "optimized":
        assert timesteps is not None
        return optimize_initial_potentials(graph, x_fit, timesteps)
    if name == "bias":
        assert timesteps is not None
        # the cost grows with samples x T: fewer samples at large T, where the errors are small
        return correct_biases(graph, x_fit, timesteps, reference=reference,
                              max_samples=max(64, 4096 // timesteps))
    if name in ("joint", "weights", "any-T"):
        return joint_fit(graph, x_all, timesteps, reference=reference, weights=name == "weights",
                         iterations=iterations if timesteps is not None else max(1, iterations // 2))
    raise BridgeError(f"unknown calibration stage {name!r}; choose from {', '.join(STAGES + ANY_T_STAGES)}")


def calibrate(
    graph: nir.NIRGraph,
    calibration: torch.Tensor,
    timesteps: int | None,
    *,
    stages: Sequence[str] | None = None,
    report: CalibrationReport | None = None,
    graphs: dict[str, nir.NIRGraph] | None = None,
    iterations: int = 150,
    progress: Callable[[str], None] | None = None,
) -> nir.NIRGraph:
    """The best graph the pipeline finds for T = ``timesteps`` (None: every T); see the module docstring.

    ``stages``: default :func:`default_stages`. ``report`` is filled in; ``graphs`` receives the
    graph after each stage (the best so far at that point: what the demo measures per stage).
    ``progress(stage)`` is called before each stage.
    """
    from bridge.passes.joint_fit import heldout_count
    from bridge.reference import ann_view

    if timesteps is not None and timesteps < 1:
        raise BridgeError(f"timesteps must be >= 1, got {timesteps}")
    if len(calibration) < 8:
        raise BridgeError(f"calibration needs at least 8 samples, got {len(calibration)}; pass more data")
    stages = tuple(default_stages(timesteps) if stages is None else stages)
    rep = report if report is not None else CalibrationReport(timesteps)
    rep.timesteps = timesteps
    start = time.perf_counter()
    x_all = calibration.to(torch.float32)
    held = heldout_count(len(x_all))  # calibrate() needs >= 8 samples: the same tail as joint_fit's
    x_fit, x_val = x_all[:-held], x_all[-held:]
    rep.images, rep.heldout = len(x_all), held
    ann = ann_view(graph, x_val.double()).flatten(1)
    reference, best, best_err = graph, graph, None
    for name in stages:
        if progress is not None:
            progress(name)
        t0 = time.perf_counter()
        candidate = run_stage(name, best, reference, x_fit, x_all, timesteps, iterations=iterations)
        errs = heldout_errors(candidate, x_val, ann, timesteps)
        kept = improves(errs, best_err)
        if kept:
            best, best_err, rep.chosen = candidate, errs, name
        rep.stages.append(StageResult(name, sum(errs) / len(errs), kept, time.perf_counter() - t0))
        if graphs is not None:
            graphs[name] = best
    rep.seconds = time.perf_counter() - start
    from bridge.passes.calibration_edits import with_timesteps

    return with_timesteps(best, timesteps)
