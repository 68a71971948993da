"""Accuracy and agreement with the ANN vs the number of time-steps T: the one definition.

One run of ``max(T)`` steps gives the readout after every smaller T
(:attr:`SimulationResult.running_readout`), so a whole curve costs one simulation.
For each T in the list and each sample: the prediction after T steps is
``argmax(readout_T)`` (the readout flattened per sample); *accuracy* is the fraction equal
to the label, *ANN agreement* the fraction equal to the ANN's prediction.

Everything is kept as integer counts (:class:`AccuracyCurve`), never as per-sample
predictions: batches, data shards and processes add up exactly (``merge``,
``to_counts`` / ``add_counts`` for ``torch.distributed.all_reduce``), and memory does not
grow with the data set. ``bridge evaluate``, ``bridge validate`` and the demo all count here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import nir
import torch

from bridge.format.errors import BridgeError
from bridge.reference.ann import AnnView
from bridge.reference.result import SimulationResult


def parse_timesteps(spec: str | Sequence[int], steps: int | None = None) -> list[int]:
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


def predictions_at(running_readout: torch.Tensor, timesteps: Sequence[int]) -> torch.Tensor:
    """The predicted class after each T in ``timesteps``: ``[len(timesteps), B]``.

    ``running_readout`` is ``[T_max, B, ...]`` (row t-1: the readout after t steps).
    """
    if max(timesteps) > running_readout.shape[0]:
        raise BridgeError(f"accuracy asked for T = {max(timesteps)} but the run has "
                          f"{running_readout.shape[0]} steps; simulate at least max(T) steps")
    index = torch.as_tensor([t - 1 for t in timesteps], device=running_readout.device)
    return running_readout.index_select(0, index).flatten(2).argmax(dim=2)


@dataclass
class AccuracyCurve:
    """Integer counts per T, summed over batches (and, merged, over shards and processes).

    ``correct[T]``: predictions after T steps equal to the label; ``ann_agree[T]``: equal to
    the ANN's prediction; ``ann_correct``: the ANN's own predictions equal to the label;
    ``spikes[layer][T]``: spikes of that neuron layer in the first T steps, over all samples
    (spikes x fan-out = synaptic operations). ``labelled`` / ``with_ann`` say whether labels /
    ANN predictions were given for every batch.
    """

    timesteps: list[int]
    samples: int = 0
    correct: dict[int, int] = field(default_factory=dict)
    ann_agree: dict[int, int] = field(default_factory=dict)
    ann_correct: int = 0
    spikes: dict[str, dict[int, int]] = field(default_factory=dict)
    labelled: bool = True
    with_ann: bool = True

    # -- counting ------------------------------------------------------------------------
    def add(self, result: SimulationResult, y: torch.Tensor | None, ann_pred: torch.Tensor | None) -> None:
        """Add one batch's run (``result.steps >= max(timesteps)``)."""
        self.add_readout(result.running_readout, y, ann_pred)

    def add_readout(self, running_readout: torch.Tensor, y: torch.Tensor | None,
                    ann_pred: torch.Tensor | None) -> None:
        """Add one batch from its running readout ``[T_max, B, ...]``, labels and ANN predictions."""
        pred = predictions_at(running_readout, self.timesteps)  # [len(ts), B]
        self.samples += int(pred.shape[1])
        self.labelled = self.labelled and y is not None
        self.with_ann = self.with_ann and ann_pred is not None
        rows = []
        if y is not None:
            y = y.to(pred.device)
            rows.append((pred == y).sum(dim=1))
        if ann_pred is not None:
            ann_pred = ann_pred.to(pred.device)
            rows.append((pred == ann_pred).sum(dim=1))
        if y is not None and ann_pred is not None:
            rows.append((ann_pred == y).sum().reshape(1).expand(len(self.timesteps)))
        if not rows:
            return
        counts = torch.stack(rows).tolist()  # one device sync per batch
        row = 0
        if y is not None:
            for t, c in zip(self.timesteps, counts[row]):
                self.correct[t] = self.correct.get(t, 0) + int(c)
            row += 1
        if ann_pred is not None:
            for t, c in zip(self.timesteps, counts[row]):
                self.ann_agree[t] = self.ann_agree.get(t, 0) + int(c)
            row += 1
        if y is not None and ann_pred is not None:
            self.ann_correct += int(counts[row][0])

    def add_spikes(self, per_step: Mapping[str, torch.Tensor | Sequence[int]]) -> None:
        """Add spike counts per layer and step (``[T_max]`` integers, summed over the batch)."""
        for layer, counts in per_step.items():
            cum = torch.as_tensor(counts, dtype=torch.int64).cpu().cumsum(0)
            if max(self.timesteps) > len(cum):
                raise BridgeError(f"spike counts of {layer!r} cover {len(cum)} steps, fewer than "
                                  f"T = {max(self.timesteps)}")
            into = self.spikes.setdefault(layer, {})
            for t in self.timesteps:
                into[t] = into.get(t, 0) + int(cum[t - 1])

    def merge(self, other: AccuracyCurve) -> AccuracyCurve:
        """The counts of both (same timesteps)."""
        if other.timesteps != self.timesteps:
            raise BridgeError(f"cannot merge accuracy curves over T = {self.timesteps} and {other.timesteps}")
        out = AccuracyCurve(list(self.timesteps), labelled=self.labelled and other.labelled,
                            with_ann=self.with_ann and other.with_ann)
        out.add_counts(self.to_counts(self.layers), self.layers)
        out.add_counts(other.to_counts(self.layers), self.layers)
        return out

    # -- a flat int64 vector: all_reduce and resume files ---------------------------------
    @property
    def layers(self) -> list[str]:
        return list(self.spikes)

    def to_counts(self, layers: Sequence[str] | None = None) -> torch.Tensor:
        """``[samples, ann_correct, correct[T]..., ann_agree[T]..., spikes[layer][T]...]``, int64.

        Two curves with the same timesteps and ``layers`` lay their counts out alike, so
        summing the vectors (``all_reduce``) sums the counts.
        """
        layers = self.layers if layers is None else list(layers)
        ts = self.timesteps
        values = [self.samples, self.ann_correct]
        values += [self.correct.get(t, 0) for t in ts] + [self.ann_agree.get(t, 0) for t in ts]
        for layer in layers:
            values += [self.spikes.get(layer, {}).get(t, 0) for t in ts]
        return torch.tensor(values, dtype=torch.int64)

    def add_counts(self, counts: torch.Tensor | Sequence[int], layers: Sequence[str]) -> None:
        """Add a vector laid out by :meth:`to_counts` with the same ``layers``."""
        values = [int(v) for v in (counts.tolist() if isinstance(counts, torch.Tensor) else counts)]
        ts, n = self.timesteps, len(self.timesteps)
        if len(values) != 2 + n * (2 + len(layers)):
            raise BridgeError(f"a count vector of length {len(values)} does not fit T = {ts} and "
                              f"{len(layers)} layers")
        self.samples += values[0]
        self.ann_correct += values[1]
        for i, t in enumerate(ts):
            self.correct[t] = self.correct.get(t, 0) + values[2 + i]
            self.ann_agree[t] = self.ann_agree.get(t, 0) + values[2 + n + i]
        for j, layer in enumerate(layers):
            into = self.spikes.setdefault(layer, {})
            for i, t in enumerate(ts):
                into[t] = into.get(t, 0) + values[2 + n * (2 + j) + i]

    # -- results ---------------------------------------------------------------------------
    def accuracy(self) -> dict[int, float] | None:
        if not self.labelled or not self.samples:
            return None
        return {t: self.correct.get(t, 0) / self.samples for t in self.timesteps}

    def ann_agreement(self) -> dict[int, float] | None:
        if not self.with_ann or not self.samples:
            return None
        return {t: self.ann_agree.get(t, 0) / self.samples for t in self.timesteps}

    def ann_accuracy(self) -> float | None:
        if not (self.with_ann and self.labelled) or not self.samples:
            return None
        return self.ann_correct / self.samples

    def spikes_per_sample(self) -> dict[str, dict[int, float]]:
        """Mean spikes per sample of each layer in the first T steps."""
        if not self.samples:
            return {}
        return {layer: {t: c / self.samples for t, c in per_t.items()} for layer, per_t in self.spikes.items()}

    def to_dict(self) -> dict:
        acc, agr = self.accuracy(), self.ann_agreement()
        return {
            "timesteps": self.timesteps, "samples": self.samples,
            "accuracy": None if acc is None else {str(k): v for k, v in acc.items()},
            "ann_agreement": None if agr is None else {str(k): v for k, v in agr.items()},
            "ann_accuracy": self.ann_accuracy(),
            "counts": {
                "correct": {str(t): self.correct.get(t, 0) for t in self.timesteps} if self.labelled else None,
                "ann_agree": {str(t): self.ann_agree.get(t, 0) for t in self.timesteps} if self.with_ann else None,
                "ann_correct": self.ann_correct if self.with_ann and self.labelled else None,
                "spikes": {layer: {str(t): c for t, c in per_t.items()} for layer, per_t in self.spikes.items()},
            },
        }


def accuracy_vs_timesteps(running_readout: torch.Tensor, labels: torch.Tensor | None,
                          timesteps: Sequence[int],
                          ann_predictions: torch.Tensor | None = None) -> AccuracyCurve:
    """Counts of one run: ``running_readout`` ``[T_max, B, ...]`` against ``labels`` ``[B]``
    (and the ANN's predictions ``[B]``) at each T of ``timesteps``.

    ``curve.accuracy()[T]`` / ``curve.ann_agreement()[T]`` give the fractions.
    """
    curve = AccuracyCurve(parse_timesteps(list(timesteps), int(running_readout.shape[0])))
    curve.add_readout(running_readout, labels, ann_predictions)
    return curve


def ann_predictions(graph: nir.NIRGraph | AnnView, x: torch.Tensor) -> tuple[torch.Tensor | None, str | None]:
    """The ANN's predictions for ``x`` via the graph's ANN view (``bridge.reference.AnnView``;
    pass one built once when calling per batch), or None and why not."""
    try:
        with torch.no_grad():
            out = (graph if isinstance(graph, AnnView) else AnnView(graph))(x)
    except BridgeError as exc:
        return None, f"no ANN view of this graph: {exc}"
    return torch.as_tensor(out).flatten(1).argmax(dim=1), None


def compiled_ann_view(graph: nir.NIRGraph) -> AnnView | nir.NIRGraph:
    """An :class:`AnnView` of ``graph`` built once for :func:`ann_predictions` on many batches;
    the graph itself when it has none (``ann_predictions`` then says why)."""
    try:
        return AnnView(graph)
    except BridgeError:
        return graph
