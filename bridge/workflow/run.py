"""Running a :class:`~bridge.workflow.plan.ConversionPlan`: the one path from a model to its graph.

:func:`run_plan` does, in order: read the model (:mod:`bridge.model.loading`, safe loading),
check its weights are finite, resolve one sample's shape, check the model runs on it, read the
calibration data (the first N samples, float32), convert (:mod:`bridge.converter`), calibrate
(:mod:`bridge.passes.pipeline` or :mod:`bridge.passes.optimize`, as the plan says), record the
provenance in the graph and apply the export profile. It returns the graph, a
:class:`WorkflowReport` (what ran, on which data, what it cost) and the user's ANN, runnable at
any batch size. Nothing here prints: progress goes to a
:data:`bridge.format.progress.ProgressCallback`, warnings through :mod:`warnings`.
"""

from __future__ import annotations

import hashlib
import inspect
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nir
import numpy as np
import torch
from torch import nn

from bridge.format.errors import BridgeError
from bridge.format.progress import ProgressCallback, ProgressEvent
from bridge.workflow.plan import ConversionPlan, describe_calibration

MAXPOOL_WARNING = "max-pooling layer(s)"  # the converter's warning when --maxpool avg swaps a pool


@dataclass
class WorkflowReport:
    """What one run of a plan did: the data it calibrated on, the stages, the cost."""

    input_shape: tuple[int, ...]
    plan: dict[str, Any]
    calibration_source: str = "none"
    calibration_samples: int = 0
    calibration: Any = None  # bridge.passes.pipeline.CalibrationReport when the pipeline ran
    search_seconds: float | None = None  # --v-init optimized
    maxpool_replaced: bool = False
    seconds: float = 0.0

    def data_line(self) -> str | None:
        """``calibration data: <source>, N samples`` (None when nothing was calibrated on data)."""
        if not self.calibration_samples:
            return None
        return f"calibration data: {self.calibration_source}, {self.calibration_samples} samples"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"input_shape": list(self.input_shape), "plan": self.plan,
                               "calibration_data": {"source": self.calibration_source,
                                                    "samples": self.calibration_samples},
                               "maxpool_replaced": self.maxpool_replaced, "seconds": self.seconds}
        rep = self.calibration
        if rep is not None:
            out["calibration"] = rep.to_dict() if hasattr(rep, "to_dict") else asdict(rep)
        if self.search_seconds is not None:
            out["search_seconds"] = self.search_seconds
        return out


@dataclass
class WorkflowResult:
    """The graph to write (profile applied), the report, and (:attr:`ann`) the user's ANN."""

    graph: nir.NIRGraph
    report: WorkflowReport
    source: Any = None  # the model as read (module, program or loaded model)
    stage_graphs: dict[str, nir.NIRGraph] = field(default_factory=dict)
    calibration: torch.Tensor | None = field(default=None, repr=False)  # the data as loaded (float32)
    _ann: nn.Module | None = field(default=None, repr=False)

    @property
    def ann(self) -> nn.Module | None:
        """The user's ANN, runnable at any batch size (built on first use: ``export`` never needs it)."""
        if self._ann is None and self.source is not None:
            self._ann = ann_module(self.source, self.report.input_shape)
        return self._ann


# -- the model -----------------------------------------------------------------------------
def read_source(model: Any, *, arch: str | None = None, trust_pickle: bool = False) -> Any:
    """A path -> :class:`~bridge.model.loading.LoadedModel` (weights checked finite); a module,
    program or loaded model as given."""
    from bridge.model.loading import LoadedModel, check_finite, load_model

    if isinstance(model, (str, Path)):
        from bridge.format.input_files import check_input_file

        check_input_file(Path(model), "model file")
        model = load_model(model, arch=arch, trust_pickle=trust_pickle)
    if isinstance(model, LoadedModel):
        check_finite(model.named_tensors(), str(model.path))
    return model


def input_shape_of(source: Any, given: tuple[int, ...] | None) -> tuple[int, ...]:
    """One sample's shape: ``given`` (``--input-shape`` / ``input_shape=``) or the program's own
    (a ``.pt2``'s example input, an architecture factory's shape); both must agree."""
    from bridge.converter import resolve_input_shape
    from bridge.model.loading import LoadedModel

    if isinstance(source, LoadedModel):
        own = source.input_shape if source.module is None else None
        fallback = source.input_shape if source.module is not None else None
        return resolve_input_shape(own, given if given is not None else fallback, str(source.path))
    if isinstance(source, torch.export.ExportedProgram):
        args = source.example_inputs[0] if source.example_inputs is not None else ()
        own = tuple(int(s) for s in args[0].shape[1:]) if len(args) == 1 else None
        return resolve_input_shape(own, given, "the program")
    return resolve_input_shape(None, given, "the model")


def _suggested_shape(module: nn.Module, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]] | None:
    """(first layer, the sample shape it takes) from the first conv / linear layer, if that tells."""
    for name, layer in module.named_modules():
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            dims = len(layer.kernel_size)
            spatial = shape[-dims:] if len(shape) >= dims else None
            if spatial is None:
                return None
            return f"{name!r} ({type(layer).__name__}, {layer.in_channels} input channels)", (layer.in_channels, *spatial)
        if isinstance(layer, nn.Linear):
            return f"{name!r} (Linear, {layer.in_features} features)", (layer.in_features,)
    return None


def check_runs(module: nn.Module, input_shape: tuple[int, ...]) -> None:
    """Run the model once on a batch of zeros; a wrong input shape fails as one line that names
    the shape the first layer takes (``--input-shape 16,16`` on a 1-channel CNN: use 1,16,16)."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        params = []  # type: ignore[assignment]
    required = [p for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(required) > 1:
        raise BridgeError(
            f"the model's forward takes {len(required)} inputs ({', '.join(p.name for p in required)}); "
            "bridge converts networks with exactly one input tensor (an image or a feature vector)")
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    try:
        with torch.no_grad():
            module.eval()(torch.zeros((2, *input_shape), dtype=dtype))
        return
    except Exception as exc:  # any layer may raise (shape mismatch, reshape, ...)
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        cause = lines[-1].strip()[:200] if lines else type(exc).__name__
    shape = list(input_shape)
    hint = _suggested_shape(module, tuple(input_shape))
    if hint is not None and list(hint[1]) != shape:
        layer, good = hint
        text = ",".join(map(str, good))
        raise BridgeError(
            f"the model does not run on an input of shape {shape} (one sample, no batch dimension): its first "
            f"layer {layer} takes samples of shape {list(good)}; pass --input-shape {text} / "
            f"input_shape=({', '.join(map(str, good))}{',' if len(good) == 1 else ''})")
    raise BridgeError(
        f"the model does not run on an input of shape {shape} (one sample, no batch dimension; on a batch "
        f"of 2: {cause}); pass the shape of one sample the model takes as --input-shape C,H,W / "
        "input_shape=(C, H, W)")


def ann_module(source: Any, input_shape: tuple[int, ...]) -> nn.Module:
    """The user's ANN as a module that runs at any batch size (a fixed-batch program included)."""
    from bridge.model.loading import LoadedModel, any_batch_module

    if isinstance(source, LoadedModel):
        if source.module is not None:
            return source.module
        return any_batch_module(source.exported_program(input_shape))
    if isinstance(source, torch.export.ExportedProgram):
        return any_batch_module(source)
    return source


# -- the calibration data --------------------------------------------------------------------
def load_calibration(source: Any, input_shape: tuple[int, ...], samples: int) -> torch.Tensor | None:
    """The first ``samples`` calibration samples as float32 ``(N, *input_shape)``.

    ``source``: ``"digits"`` (the training part of the fixed split, never a test image), a
    ``.npy/.npz/.pt`` path, a tensor / array, or an iterable of tensors / ``(x, y)`` batches.
    """
    if source is None:
        return None
    shape = tuple(input_shape)
    if isinstance(source, str) and source == "digits":
        from bridge.data.datasets import digits_calibration

        return digits_calibration(shape, samples)
    if isinstance(source, (str, Path)):
        from bridge.data.datasets import load_tensor_file

        x, what = load_tensor_file(source)[:samples], f"the calibration data in {source}"
    elif isinstance(source, (torch.Tensor, np.ndarray)):
        x, what = torch.as_tensor(source)[:samples], "the calibration tensor"
    elif isinstance(source, Iterable):
        parts, count = [], 0
        for item in source:
            batch = torch.as_tensor(item[0] if isinstance(item, (tuple, list)) else item)
            parts.append(batch[:samples - count])
            count += len(parts[-1])
            if count >= samples:
                break
        if not parts:
            raise BridgeError("the calibration data hold no samples; give at least 8 samples")
        x, what = torch.cat(parts), "the calibration batches"
    else:
        raise BridgeError(f"calibration must be 'digits', a .npy/.npz/.pt path, a tensor or an iterable of "
                          f"batches, got a {type(source).__name__}")
    if tuple(x.shape[1:]) != shape:
        raise BridgeError(
            f"{what} has samples of shape {list(x.shape[1:])}, the model takes {list(shape)}; "
            f"save an array (N, {', '.join(map(str, shape))})")
    if not x.is_floating_point():
        x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise BridgeError(f"{what} holds NaN/inf values; clean the data")
    return x.to(torch.float32).contiguous()


def data_digest(x: torch.Tensor) -> str:
    """SHA-256 of the calibration tensor's float32 bytes (provenance: the data, not its path)."""
    return hashlib.sha256(np.ascontiguousarray(x.numpy()).tobytes()).hexdigest()


# -- the passes ------------------------------------------------------------------------------
def calibrate_graph(graph: nir.NIRGraph, plan: ConversionPlan, calibration: torch.Tensor | None = None,
                    report: WorkflowReport | None = None, *, progress: ProgressCallback | None = None,
                    stage_graphs: dict[str, nir.NIRGraph] | None = None) -> nir.NIRGraph:
    """The calibration step of ``plan`` on a graph converted by ``plan`` (the graph itself when the
    plan calibrates nothing). ``calibration``: the loaded data (default: the plan's, read for the
    graph's input shape); ``report`` receives the pipeline's report (``report.calibration``)."""
    if not plan.calibrates:
        return graph
    if calibration is None:
        from bridge.format.graph import input_shape

        calibration = load_calibration(plan.calibration, input_shape(graph), plan.calibration_samples)
    assert calibration is not None
    if report is None:
        report = WorkflowReport((), plan.describe(), describe_calibration(plan.calibration), len(calibration))
    if plan.optimized:
        from bridge.passes.optimize import optimize_initial_potentials

        assert plan.timesteps is not None
        n = len(calibration)

        def layers(done: int, total: int) -> None:
            if progress is not None:
                progress(ProgressEvent(task="v_init/threshold search", done=done, total=total, unit="layers",
                                       images=n))

        t0 = time.perf_counter()
        out = optimize_initial_potentials(graph, calibration.to(torch.float64), plan.timesteps,
                                          channel_wise=True, progress=layers)
        report.search_seconds = time.perf_counter() - t0
        return out
    from bridge.passes.pipeline import CalibrationReport, calibrate

    stages = plan.stage_names()
    rep = CalibrationReport(plan.timesteps)
    out = calibrate(graph, calibration, plan.timesteps, stages=stages, report=rep, graphs=stage_graphs,
                    iterations=plan.iterations, time_budget=plan.time_budget, progress=progress)
    if progress is not None:
        progress(ProgressEvent(task="calibration", done=len(stages), total=len(stages), unit="stages",
                               images=len(calibration), detail=f"chose {rep.chosen}"))
    report.calibration = rep
    return out


def with_provenance(graph: nir.NIRGraph, plan: ConversionPlan, calibration: torch.Tensor | None,
                    report: WorkflowReport) -> nir.NIRGraph:
    """``graph`` with how it was made in its bridge metadata (informative; readers ignore it)."""
    from bridge.format.extension import PROVENANCE, with_graph_info

    info: dict[str, Any] = {"plan": plan.describe()}
    if calibration is not None:
        info["calibration"] = {"samples": len(calibration), "sha256": data_digest(calibration)}
    if report.calibration is not None:
        info["chosen_stage"] = report.calibration.chosen
    return with_graph_info(graph, PROVENANCE, info)


def convert_source(source: Any, input_shape: tuple[int, ...], plan: ConversionPlan,
                   calibration: torch.Tensor | None, report: WorkflowReport) -> nir.NIRGraph:
    """The converter's graph for ``plan`` (before calibration); a MaxPool swap is recorded."""
    from bridge import converter
    from bridge.model.loading import LoadedModel

    module = source.module if isinstance(source, LoadedModel) else source
    if isinstance(module, nn.Module):
        check_runs(module, input_shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = converter.convert(source, input_shape, calibration=calibration, options=plan.conversion_options())
    for w in caught:  # shown again to the caller (the CLI prints bridge's own as one line each)
        report.maxpool_replaced |= MAXPOOL_WARNING in str(w.message)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return graph


def run_plan(model: Any, plan: ConversionPlan, input_shape: tuple[int, ...] | None = None, *,
             arch: str | None = None, trust_pickle: bool = False, progress: ProgressCallback | None = None,
             stage_graphs: dict[str, nir.NIRGraph] | None = None) -> WorkflowResult:
    """Convert ``model`` (a path, an ``nn.Module``, a ``torch.export`` program or a loaded model)
    as ``plan`` says; see the module docstring. ``stage_graphs`` receives the pipeline's graph
    after each stage (the demo measures them)."""
    start = time.perf_counter()
    if not isinstance(plan, ConversionPlan):
        raise BridgeError(f"plan must be a bridge.workflow.ConversionPlan, got {type(plan).__name__}")
    source = read_source(model, arch=arch, trust_pickle=trust_pickle)
    shape = input_shape_of(source, None if input_shape is None else tuple(int(s) for s in input_shape))
    calibration = load_calibration(plan.calibration, shape, plan.calibration_samples)
    report = WorkflowReport(shape, plan.describe(), describe_calibration(plan.calibration),
                            0 if calibration is None else len(calibration))
    graph = convert_source(source, shape, plan, calibration, report)
    graph = calibrate_graph(graph, plan, calibration, report, progress=progress, stage_graphs=stage_graphs)
    graph = fixed_point(graph, plan)
    graph = with_provenance(graph, plan, calibration, report)
    if plan.profile != "exact":
        from bridge.passes.profiles import apply_profile

        graph = apply_profile(graph, plan.profile)
    report.seconds = time.perf_counter() - start
    return WorkflowResult(graph, report, source, stage_graphs if stage_graphs is not None else {}, calibration)


def fixed_point(graph: nir.NIRGraph, plan: ConversionPlan) -> nir.NIRGraph:
    """``graph`` in fixed point when the plan asks for integer weights (``weights="intN"``), after
    calibration: what the calibration fitted is quantised, not fitted around (measured in
    docs/integer-networks.md); else ``graph`` unchanged."""
    if plan.weight_bits is None:
        return graph
    from bridge.passes.fixed_point import to_fixed_point

    return to_fixed_point(graph, weight_bits=plan.weight_bits)


def refuse_for_nir_file(plan: ConversionPlan, path: Path, extra: tuple[str, ...] = (),
                        allowed: tuple[str, ...] = ()) -> None:
    """A NIR file is used as written: every conversion option given for it is refused by name
    (but those in ``allowed``: what the target still does with a graph, e.g. ``--weights int8``)."""
    given = [flag for flag in (*plan.changed(), *extra) if flag not in allowed]
    if given:
        raise BridgeError(f"{', '.join(given)} apply to PyTorch models; {path.name} is a NIR file and is "
                          "used as written: drop them, or convert the model again with them")
