r"""The conversion plan: everything one conversion does, checked once (``__post_init__``).

A :class:`ConversionPlan` is what ``bridge export``, ``bridge evaluate``, the demo, the
benchmarks and :func:`bridge.convert` hand to :func:`bridge.workflow.run.run_plan`; the same
plan gives the same graph, byte for byte, whoever runs it. A bad value raises a
:class:`BridgeError` naming the option both ways (``--timesteps`` / ``timesteps=``) before any
work is done, like :class:`bridge.converter.ConversionOptions` (which the plan builds).

The initial-potential policy ``v_init`` decides what runs after the converter:

* ``auto`` (default): with calibration data the calibration pipeline
  (:func:`bridge.passes.pipeline.calibrate`) for T = ``timesteps`` (None: every T), after a
  :math:`v_{init} = \theta/2` conversion with per-channel thresholds; without data theta/2;
* ``half`` / ``zero`` / a fraction f of theta in [0, 1): :math:`v_{init} = f\theta`, nothing else;
* ``optimized``: theta/2, then the per-channel v_init / threshold search for T
  (:func:`bridge.passes.optimize.optimize_initial_potentials`).

``timesteps`` is the T a calibration fits; without calibration a graph is the same for every T,
so a plan with ``timesteps`` and nothing that fits for it is refused (it would record a T the
graph was never optimised for).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.converter.options import (
    MAXPOOL_POLICIES, V_INIT_HELP, WEIGHT_PRECISIONS, ConversionOptions, check_timesteps, v_init_fraction,
)
from bridge.format.errors import BridgeError

DEFAULT_CALIBRATION_SAMPLES = 512
INTEGER_WEIGHT_BITS = range(2, 17)  # --weights int2 .. int16: bridge.passes.fixed_point


def integer_weight_bits(weights: str) -> int | None:
    """``"int8"`` -> 8 (a fixed-point graph, :func:`bridge.passes.fixed_point.to_fixed_point`);
    None for a float precision (``model``, ``float32``, ``float64``); else BridgeError."""
    if weights in WEIGHT_PRECISIONS:
        return None
    bits = int(weights[3:]) if isinstance(weights, str) and weights[:3] == "int" and weights[3:].isdigit() else 0
    if bits not in INTEGER_WEIGHT_BITS:
        raise BridgeError(f"unknown weight precision {weights!r} (--weights / weights=); use model, float32, "
                          f"float64, or intN for N-bit integer weights with N in 2..16 (e.g. int8)")
    return bits
V_INIT_POLICIES_HELP = "use auto (default), half, zero, a fraction of theta in [0, 1), or optimized"


def check_count(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; else BridgeError naming the option ``name`` both ways."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BridgeError(f"{flag} / {name}= must be an integer >= {minimum}, got {value!r}")
    return value


def parse_v_init(value: Any) -> str | float:
    """The one reading of ``--v-init`` / ``v_init=``: ``"auto"``, ``"optimized"``, ``"half"``,
    ``"zero"`` or a float fraction of theta in [0, 1) (a numeric string becomes a float)."""
    if value is None or value == "auto":
        return "auto"
    if value in ("optimized", "half", "zero"):
        return value
    try:
        fraction = v_init_fraction(value)
    except BridgeError:
        raise BridgeError(f"unknown v_init {value!r} (--v-init / v_init=); {V_INIT_POLICIES_HELP}") from None
    return fraction


def describe_calibration(source: Any) -> str:
    """A short name of a calibration source for messages and provenance (never a path's folders)."""
    if source is None:
        return "none"
    if isinstance(source, str) and source == "digits":
        return "digits (training part of the fixed split)"
    if isinstance(source, (str, Path)):
        return Path(source).name
    return f"a {type(source).__name__} given in Python"


@dataclass(frozen=True)
class ConversionPlan:
    """One conversion, from a trained model to the graph that is written.

    ``thresholds``: ``auto`` (trained bound, else ``p99.99`` on the calibration data),
    ``trained``, ``max`` or ``p<q>``; ``channel_wise``: calibrated thresholds per channel (None:
    per channel when the calibration pipeline runs, else per layer); ``v_init``: the policy of the
    module docstring; ``timesteps``: the T the calibration fits (None: every T); ``calibration``:
    ``"digits"`` (the training part of the fixed digits split), a ``.npy/.npz/.pt`` path, a tensor
    / array ``(N, *input_shape)`` or an iterable of batches; ``calibration_samples``: its first N
    samples are used (float32); ``stages``: the pipeline's stages (None: its default for T);
    ``iterations``: joint-fit iterations; ``maxpool``: ``error`` or ``avg``; ``weights``: the
    precision of the weights (``model``, ``float32``, ``float64``), or ``intN`` (N in 2..16): after
    calibration the graph is put in fixed point (N-bit integer weights, 16-bit integer thresholds,
    initial potentials and biases; :func:`bridge.passes.fixed_point.to_fixed_point`); ``profile``: the NIR encoding
    (``exact`` or an importer profile of :mod:`bridge.passes.profiles`); ``time_budget``: seconds
    the calibration pipeline's joint fits may use in all (None: the pipeline's default, the larger
    of 20 s and 8 one-T-step simulations of the calibration set).
    """

    thresholds: str = "auto"
    channel_wise: bool | None = None
    v_init: str | float = "auto"
    timesteps: int | None = None
    calibration: Any = field(default=None, compare=False)
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    stages: tuple[str, ...] | None = None
    iterations: int = 150
    maxpool: str = "error"
    weights: str = "model"
    profile: str = "exact"
    time_budget: float | None = None

    def __post_init__(self) -> None:
        from bridge.passes.pipeline import ANY_T_STAGES, STAGES
        from bridge.passes.profiles import PROFILES

        object.__setattr__(self, "v_init", parse_v_init(self.v_init))
        check_timesteps(self.timesteps)
        check_count(self.calibration_samples, "calibration_samples")
        check_count(self.iterations, "iterations")
        if self.time_budget is not None and (isinstance(self.time_budget, bool) or not isinstance(
                self.time_budget, (int, float)) or not 0 < self.time_budget < float("inf")):
            raise BridgeError(f"--time-budget / time_budget= must be a number of seconds > 0, got {self.time_budget!r}")
        if self.channel_wise is not None and not isinstance(self.channel_wise, bool):
            raise BridgeError(f"channel_wise must be True, False or None, got {self.channel_wise!r}")
        if self.maxpool not in MAXPOOL_POLICIES:
            raise BridgeError(f"unknown maxpool policy {self.maxpool!r} (--maxpool / maxpool=); use 'error' or 'avg'")
        integer_weight_bits(self.weights)
        if self.profile not in PROFILES:
            raise BridgeError(f"unknown profile {self.profile!r} (--profile / profile=); use {', '.join(PROFILES)}")
        self.conversion_options()  # thresholds and the converter's own checks
        has_data = self.calibration is not None
        if self.v_init == "optimized" and (self.timesteps is None or not has_data):
            raise BridgeError("--v-init optimized / v_init='optimized' needs --timesteps T and --calibration "
                              "data (timesteps=, calibration=)")
        if self.timesteps is not None and not self.calibrates:
            why = ("there is no calibration data" if not has_data
                   else f"--v-init {self.v_init} fixes the initial potential without fitting")
            raise BridgeError(
                f"--timesteps / timesteps={self.timesteps} is the T a calibration fits, but {why}; "
                "pass --calibration DATA (with --v-init auto or optimized), or drop --timesteps "
                "(the graph is then the same for every T)")
        if self.stages is not None:
            if not self.pipeline:
                raise BridgeError("stages= choose the calibration pipeline's stages; they need calibration "
                                  "data and v_init='auto'")
            stages = tuple(self.stages)
            allowed = STAGES if self.timesteps is not None else ANY_T_STAGES
            bad = [s for s in stages if s not in allowed]
            if not stages or bad:
                raise BridgeError(f"unknown calibration stage(s) {bad or stages} for "
                                  f"{'T=' + str(self.timesteps) if self.timesteps else 'any T'}; "
                                  f"choose from {', '.join(allowed)}")
            object.__setattr__(self, "stages", stages)

    @property
    def pipeline(self) -> bool:
        """The calibration pipeline runs (``v_init='auto'`` with calibration data)."""
        return self.v_init == "auto" and self.calibration is not None

    @property
    def optimized(self) -> bool:
        """The v_init / threshold search alone runs (``v_init='optimized'``)."""
        return self.v_init == "optimized"

    @property
    def calibrates(self) -> bool:
        """Something after the converter fits the graph to the calibration data for T."""
        return self.pipeline or self.optimized

    def conversion_options(self) -> ConversionOptions:
        """What the converter is given: theta/2 under ``auto`` / ``optimized`` (the passes start
        there), thresholds per channel by default when the pipeline runs; no T (the passes record it)."""
        channel_wise = self.pipeline if self.channel_wise is None else self.channel_wise
        v_init = "half" if self.v_init in ("auto", "optimized") else self.v_init
        # integer weights are made from the model's own precision after calibration (fixed_point)
        weights = "model" if self.weight_bits is not None else self.weights
        return ConversionOptions(thresholds=self.thresholds, channel_wise=channel_wise, v_init=v_init,
                                 maxpool=self.maxpool, weights=weights)  # type: ignore[arg-type]

    @property
    def weight_bits(self) -> int | None:
        """N for ``weights="intN"`` (the graph is written in fixed point), else None."""
        return integer_weight_bits(self.weights)

    def stage_names(self) -> tuple[str, ...]:
        """The pipeline's stages for this plan (its default for T unless ``stages`` is given)."""
        from bridge.passes.pipeline import default_stages

        return self.stages if self.stages is not None else default_stages(self.timesteps)

    def changed(self) -> list[str]:
        """The options (as ``--flags``) that differ from the defaults: what a NIR file cannot take."""
        defaults = ConversionPlan()
        out = [f"--{name.replace('_', '-')}" for name in
               ("thresholds", "channel_wise", "v_init", "timesteps", "calibration_samples", "stages",
                "iterations", "maxpool", "weights", "time_budget")
               if getattr(self, name) != getattr(defaults, name)]
        if self.calibration is not None:
            out.insert(0, "--calibration")
        return out

    def describe(self) -> dict[str, Any]:
        """The plan as plain values (provenance and ``--json``), without the data or its name (the
        same plan from a file or from a tensor writes the same bytes)."""
        out: dict[str, Any] = {
            "thresholds": self.thresholds,
            "channel_wise": self.conversion_options().channel_wise,
            "v_init": self.v_init if isinstance(self.v_init, str) else float(self.v_init),
            "maxpool": self.maxpool, "weights": self.weights, "profile": self.profile,
        }
        if self.timesteps is not None:
            out["timesteps"] = self.timesteps
        if self.pipeline:
            out["stages"] = list(self.stage_names())
            out["iterations"] = self.iterations
            if self.time_budget is not None:
                out["time_budget"] = float(self.time_budget)
        return out


__all__ = ["ConversionPlan", "DEFAULT_CALIBRATION_SAMPLES", "integer_weight_bits", "V_INIT_HELP", "check_count", "parse_v_init",
           "describe_calibration"]
