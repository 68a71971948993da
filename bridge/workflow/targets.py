r"""What a plan's graph becomes for a target that needs more than the graph: integers and Speck.

* :func:`integer_graph`: ``--weights intN`` on a graph read from a NIR file (a model's plan puts
  its graph in fixed point itself, after calibration: :func:`bridge.workflow.run.fixed_point`).
* :func:`speck_export`: ``--to speck``. The (calibrated) graph is legalised for SynSense Speck
  (:func:`bridge.passes.speck.legalise_for_speck`: Linear layers as convolutions, sum pooling,
  one integer threshold per layer, 8-bit weights, 16-bit state with its bounds, a spiking readout
  whose threshold is chosen for T on the calibration images, event-count input), checked against
  the chip's limits (:func:`exporters.speck.check_fits`: one line per broken limit) and written as
  a folder (:func:`exporters.speck.write_speck`). Nothing is written when a check fails.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import nir
import torch

from bridge.format.errors import BridgeError
from bridge.format.graph import input_shape
from bridge.workflow.plan import ConversionPlan, integer_weight_bits
from bridge.workflow.run import load_calibration


def integer_graph(graph: nir.NIRGraph, weights: str) -> nir.NIRGraph:
    """``graph`` with N-bit integer weights for ``weights="intN"`` (see
    :func:`bridge.passes.fixed_point.to_fixed_point`); BridgeError for a float precision, which a
    NIR file already has."""
    bits = integer_weight_bits(weights)
    if bits is None:
        raise BridgeError(f"--weights {weights} converts a PyTorch model; a NIR file keeps the precision it "
                          "was written in (only --weights intN applies to it)")
    from bridge.passes.fixed_point import to_fixed_point

    return to_fixed_point(graph, weight_bits=bits)


@dataclass(frozen=True)
class SpeckExport:
    """A written Speck folder: where, the legalised graph and the per-layer resource table."""

    path: Path
    graph: nir.NIRGraph
    table: str


#: the calibration stages a Speck export runs: the chip applies a bias as a leak on its slow clock,
#: not once per step, so the stages that shift biases (bias correction, joint fits) are left out
SPECK_STAGES: tuple[str, ...] = ("half", "optimized")


def speck_plan(plan: ConversionPlan) -> ConversionPlan:
    """``plan`` for ``--to speck``: checked (:func:`check_speck_plan`), and the calibration pipeline
    limited to :data:`SPECK_STAGES` for a target T unless the caller chose stages."""
    check_speck_plan(plan)
    if plan.pipeline and plan.timesteps is not None and plan.stages is None:
        return replace(plan, stages=SPECK_STAGES)
    return plan


def check_speck_plan(plan: ConversionPlan) -> None:
    """Refuse, before any work, what ``--to speck`` cannot take: no calibration images (the spiking
    readout's threshold is chosen on them), or integer weights (the chip's widths are fixed)."""
    if plan.calibration is None:
        raise BridgeError("--to speck needs --calibration DATA (training images in [0, 1]): the spiking "
                          "readout's threshold is chosen on them")
    if plan.weight_bits is not None:
        raise BridgeError(f"--weights {plan.weights} does not apply to --to speck: the chip takes 8-bit weights "
                          "and 16-bit state, which the Speck export writes itself; drop --weights")


def speck_export(graph: nir.NIRGraph, plan: ConversionPlan, out: str | Path, *, force: bool = False,
                 calibration: torch.Tensor | None = None) -> SpeckExport:
    """Legalise ``graph`` for Speck with the plan's calibration data and T, check it fits the chip and
    write the folder ``out`` (see the module docstring). ``calibration``: the plan's data already
    loaded (:attr:`bridge.workflow.WorkflowResult.calibration`), else it is read here."""
    from bridge.passes.speck import legalise_for_speck
    from exporters.speck import check_fits, resource_table, write_speck

    check_speck_plan(plan)
    if calibration is None:
        calibration = load_calibration(plan.calibration, input_shape(graph), plan.calibration_samples)
    chip = legalise_for_speck(graph, calibration, timesteps=plan.timesteps)
    layers, cores = check_fits(chip)  # one line per broken limit, before anything is written
    path = write_speck(chip, out, force=force)
    return SpeckExport(Path(path), chip, resource_table(layers, cores))


__all__ = ["SPECK_STAGES", "SpeckExport", "check_speck_plan", "speck_plan", "integer_graph", "speck_export"]
