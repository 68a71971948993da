"""``validate``: run a NIR graph on every chosen backend and compare each with the reference.

The reference runs once per batch with traces of every IF node; every backend runs the same
batch for the same T and is compared step by step (:mod:`validation.compare`); the accuracy
curve vs T comes from the same runs (:mod:`validation.accuracy`). Batches keep memory bounded:
traces are ``[T, batch, neurons]`` per IF node and are dropped after each comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import nir
import numpy as np
import torch

from bridge.format.errors import BridgeError
from bridge.format.extension import graph_semantics
from bridge.format.graph import if_nodes_in_order, input_shape
from validation.accuracy import AccuracyCurve, ann_predictions, compiled_ann_view, parse_timesteps
from validation.backends import get_backend
from validation.backends.base import Backend, BackendRefused
from validation.compare import Comparison, compare_results, relative_epsilon

Progress = Callable[[str, int], None]  # (backend name, samples done in this batch)


@dataclass
class BackendReport:
    """One backend's outcome: ``status`` is ok | failed | refused | error | not installed."""

    name: str
    faithful: bool
    description: str
    status: str = "ok"
    message: str | None = None
    comparison: Comparison | None = None
    accuracy: AccuracyCurve | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """A faithful backend must run and have no unexplained mismatch; others only run or refuse."""
        if not self.faithful:
            return True
        return self.status == "ok" and (self.comparison is None or self.comparison.unexplained == 0)

    def to_dict(self) -> dict:
        c = self.comparison
        return {
            "name": self.name, "faithful": self.faithful, "description": self.description,
            "status": self.status, "message": self.message, "ok": self.ok, "seconds": self.seconds,
            "layers": None if c is None else {k: v.to_dict() for k, v in c.layers.items()},
            "unobserved_layers": None if c is None else c.unobserved,
            "outputs": None if c is None else c.outputs.to_dict(),
            "relative_epsilon": None if c is None else c.relative_epsilon,
            "first_divergence": None if c is None or c.first_divergence is None else {
                "node": c.first_divergence[0], "step": c.first_divergence[1].step,
                "sample": c.first_divergence[1].sample, "neuron": list(c.first_divergence[1].neuron)},
            "accuracy": None if self.accuracy is None else self.accuracy.to_dict(),
        }


@dataclass
class ValidationReport:
    """Everything ``bridge validate`` shows; ``ok`` is False when a faithful backend drifted."""

    steps: int
    samples: int
    timesteps: list[int]
    dtype: str
    semantics: str  # "bridge NIR extension 1.0" or "NIR text ..."
    layers: list[str]
    reference: BackendReport
    backends: list[BackendReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(b.ok for b in self.backends)

    def failures(self) -> list[str]:
        """One line per faithful backend that failed."""
        lines = []
        for b in self.backends:
            if b.ok:
                continue
            if b.comparison is not None and b.comparison.unexplained:
                firsts = [(n, l.first_unexplained) for n, l in b.comparison.layers.items() if l.first_unexplained]
                n, d = min(firsts, key=lambda p: p[1].key()[:2])
                lines.append(f"{b.name}: {b.comparison.unexplained} unexplained spike mismatches, "
                             f"first in {n} at {d}")
            else:
                lines.append(f"{b.name}: {b.status}: {b.message}")
        return lines

    def to_dict(self) -> dict:
        return {
            "ok": self.ok, "steps": self.steps, "samples": self.samples, "timesteps": self.timesteps,
            "dtype": self.dtype, "semantics": self.semantics, "layers": self.layers,
            "reference": self.reference.to_dict(), "backends": [b.to_dict() for b in self.backends],
            "notes": self.notes,
        }

    def to_json(self, **kwargs) -> str:
        import json

        return json.dumps(_no_nan(self.to_dict()), indent=kwargs.pop("indent", 2), default=_jsonable,
                          allow_nan=False, **kwargs)


def _no_nan(obj):
    """NaN (nothing measured) becomes null: strict JSON for other tools."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    return obj


def _jsonable(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def check_input(graph: nir.NIRGraph, x: torch.Tensor) -> None:
    """BridgeError when ``x`` ``[B, *shape]`` does not fit the graph's Input node."""
    want = input_shape(graph)
    if tuple(x.shape[1:]) != want:
        raise BridgeError(
            f"the data has samples of shape {tuple(x.shape[1:])}, the graph's Input node wants {want}; "
            "choose data that fits the model (e.g. --data digits resizes to the graph's H, W)"
        )


def validate(
    graph: nir.NIRGraph,
    backends: Sequence[str],
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    steps: int = 32,
    timesteps: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float64,
    batch_size: int = 64,
    rel_epsilon: float | None = None,
    progress: Progress | None = None,
) -> ValidationReport:
    """Run ``x`` through the reference and every backend for ``steps`` steps and compare.

    ``backends`` are registry names (:mod:`validation.backends`); an unknown name or a
    missing framework raises BridgeError before anything runs. Third-party importers that
    refuse the graph are recorded, not raised. ``rel_epsilon`` overrides the tie tolerance.
    """
    if steps < 1:
        raise BridgeError(f"--steps must be >= 1, got {steps}")
    check_input(graph, x)
    if y is not None and len(y) != len(x):
        raise BridgeError(f"{len(x)} samples but {len(y)} labels; give one label per sample")
    ts = parse_timesteps(list(timesteps) if timesteps else [steps], steps)
    classes = [get_backend(name) for name in backends]  # BridgeError on unknown / missing
    sem = graph_semantics(graph)
    ref_cls = get_backend("reference")
    reference = BackendReport("reference", True, ref_cls.description, accuracy=AccuracyCurve(ts))
    reports = [BackendReport(c.name, c.faithful, c.description, accuracy=AccuracyCurve(ts)) for c in classes]
    instances: list[Backend | None] = []
    for cls, rep in zip(classes, reports):
        try:
            instances.append(cls(graph, dtype=dtype))
        except BackendRefused as exc:
            rep.status, rep.message = ("refused" if not cls.faithful else "error"), str(exc)
            instances.append(None)
        except Exception as exc:  # a backend that crashes while building: that is its result
            rep.status, rep.message = "error", f"{exc.__class__.__name__}: {exc}"
            instances.append(None)
    ref_backend = ref_cls(graph, dtype=dtype)
    notes: list[str] = []
    ann_note_done = False
    view = compiled_ann_view(graph)  # compiled once, not per batch
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        yb = None if y is None else y[start : start + batch_size]
        t0 = time.perf_counter()
        ref = ref_backend.run(xb, steps, trace=True)
        reference.seconds += time.perf_counter() - t0
        ann, why = ann_predictions(view, xb)
        if why and not ann_note_done:
            notes.append(why)
            ann_note_done = True
        reference.accuracy.add(ref, yb, ann)
        if progress:
            progress("reference", len(xb))
        for inst, rep in zip(instances, reports):
            if inst is None or rep.status != "ok":
                continue
            t0 = time.perf_counter()
            try:
                res = inst.run(xb, steps, trace=True)
            except BackendRefused as exc:
                rep.status, rep.message = ("refused" if not rep.faithful else "error"), str(exc)
                continue
            except Exception as exc:  # a crash in a backend is that backend's result
                rep.status, rep.message = "error", f"{exc.__class__.__name__}: {exc}"
                continue
            finally:
                rep.seconds += time.perf_counter() - t0
            eps = rel_epsilon if rel_epsilon is not None else relative_epsilon(
                dtype, getattr(inst, "compute_dtype", inst.dtype), ref.outputs.dtype, res.outputs.dtype)
            comp = compare_results(graph, res, ref, rel_epsilon=eps, sample_offset=start)
            rep.comparison = comp if rep.comparison is None else rep.comparison.merge(comp)
            rep.accuracy.add(res, yb, ann)
            if progress:
                progress(rep.name, len(xb))
    for rep in reports:
        if rep.status == "ok" and rep.faithful and rep.comparison is not None and rep.comparison.unexplained:
            rep.status = "failed"
    return ValidationReport(
        steps=steps, samples=len(x), timesteps=ts, dtype=str(dtype).removeprefix("torch."),
        semantics=f"bridge NIR extension {sem.version}" if sem.is_bridge else "NIR text (no bridge metadata)",
        layers=if_nodes_in_order(graph), reference=reference, backends=reports, notes=notes,
    )


__all__ = ["BackendReport", "ValidationReport", "validate", "input_shape", "check_input"]
