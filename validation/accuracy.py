"""Accuracy and agreement with the ANN vs the number of time-steps T.

One run of ``max(T)`` steps gives the readout after every smaller T
(:attr:`SimulationResult.running_readout`), so a whole curve costs one simulation.
For each T in the list and each sample: the prediction after T steps is
``argmax(readout_T)``; *accuracy* is the fraction equal to the label, *ANN agreement*
the fraction equal to the ANN's prediction (``bridge.reference.ann_view``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nir
import torch

from bridge.format.errors import BridgeError
from bridge.reference.result import SimulationResult


def parse_timesteps(spec: str | list[int] | tuple[int, ...], steps: int | None = None) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (sorted, unique, each >= 1 and <= ``steps`` if given)."""
    if isinstance(spec, str):
        try:
            values = [int(s) for s in spec.split(",") if s.strip()]
        except ValueError:
            raise BridgeError(f"--timesteps-list {spec!r} is not a list of integers; e.g. 1,2,4,8") from None
    else:
        values = [int(v) for v in spec]
    if not values or min(values) < 1:
        raise BridgeError("every time-step count must be >= 1; e.g. --timesteps-list 1,2,4,8")
    if steps is not None and max(values) > steps:
        raise BridgeError(f"time-step count {max(values)} exceeds --steps {steps}; raise --steps or shorten the list")
    return sorted(set(values))


@dataclass
class AccuracyCurve:
    """Correct predictions and ANN agreements per T, summed over batches."""

    timesteps: list[int]
    samples: int = 0
    correct: dict[int, int] = field(default_factory=dict)
    ann_agree: dict[int, int] = field(default_factory=dict)
    labelled: bool = True
    with_ann: bool = True

    def add(self, result: SimulationResult, y: torch.Tensor | None, ann_pred: torch.Tensor | None) -> None:
        """Add one batch's run (``result.steps >= max(timesteps)``)."""
        running = result.running_readout
        self.samples += running.shape[1]
        self.labelled = self.labelled and y is not None
        self.with_ann = self.with_ann and ann_pred is not None
        for t in self.timesteps:
            pred = running[t - 1].flatten(1).argmax(dim=1).cpu()
            if y is not None:
                self.correct[t] = self.correct.get(t, 0) + int((pred == y.cpu()).sum())
            if ann_pred is not None:
                self.ann_agree[t] = self.ann_agree.get(t, 0) + int((pred == ann_pred.cpu()).sum())

    def accuracy(self) -> dict[int, float] | None:
        if not self.labelled or not self.samples:
            return None
        return {t: self.correct.get(t, 0) / self.samples for t in self.timesteps}

    def ann_agreement(self) -> dict[int, float] | None:
        if not self.with_ann or not self.samples:
            return None
        return {t: self.ann_agree.get(t, 0) / self.samples for t in self.timesteps}

    def to_dict(self) -> dict:
        acc, agr = self.accuracy(), self.ann_agreement()
        return {
            "timesteps": self.timesteps, "samples": self.samples,
            "accuracy": None if acc is None else {str(k): v for k, v in acc.items()},
            "ann_agreement": None if agr is None else {str(k): v for k, v in agr.items()},
        }


def ann_predictions(graph: nir.NIRGraph, x: torch.Tensor) -> tuple[torch.Tensor | None, str | None]:
    """The ANN's predictions for ``x`` via ``bridge.reference.ann_view`` (or None and why not)."""
    try:
        from bridge.reference import ann_view
    except ImportError:
        return None, "bridge.reference.ann_view is not available in this build: no ANN agreement"
    try:
        with torch.no_grad():
            out = ann_view(graph, x)
    except BridgeError as exc:
        return None, f"no ANN view of this graph: {exc}"
    out = torch.as_tensor(out)
    return out.flatten(1).argmax(dim=1), None
