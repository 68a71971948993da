"""Compare a backend's run with the reference's, neuron by neuron and step by step.

For every IF node both runs observe, with ``s`` the backend's spikes and ``s_ref``, ``v_ref``
the reference's, a *mismatch* is a neuron-step with ``s != s_ref``. Each mismatch is
classified:

- **propagated** (explained): the sample had already diverged earlier, in this neuron at an
  earlier step or in an upstream IF node at the same or an earlier step. From then on
  the two runs see different inputs or states and may differ anywhere downstream; the
  root cause is counted where it happened.
- **tie** (explained): a root mismatch where the reference's pre-reset potential
  ``m = v_ref + theta * s_ref`` (subtract reset; ``m = v_ref`` for a hard-reset node that
  did not fire) lies within ``epsilon`` of the threshold: ``|m - theta| <= epsilon``.
  Two correct implementations may round such a sum differently.
  ``epsilon = rel * max(1, |theta|)`` with ``rel`` = :data:`REL_EPSILON_FLOAT64` when both
  runs are float64 and :data:`REL_EPSILON_FLOAT32` otherwise.
- **unexplained**: any other root mismatch: a semantic difference. On a faithful backend
  it fails the validation.

The comparison is done batch by batch; :meth:`LayerComparison.merge` adds the counts up.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import nir
import numpy as np
import torch

from bridge.format.extension import if_semantics
from bridge.format.graph import if_nodes_in_order, neighbours
from bridge.reference.result import SimulationResult

REL_EPSILON_FLOAT64 = 1e-9
REL_EPSILON_FLOAT32 = 1e-4
NEVER = 2**62  # "no divergence yet" as a step index


def relative_epsilon(*dtypes: torch.dtype) -> float:
    """The tie tolerance relative to max(1, |theta|) for runs in these dtypes."""
    return REL_EPSILON_FLOAT64 if all(d == torch.float64 for d in dtypes) else REL_EPSILON_FLOAT32


@dataclass(frozen=True)
class Divergence:
    """Where two runs first differ: step t (1-based), sample index, neuron index (node shape)."""

    step: int
    sample: int
    neuron: tuple[int, ...]

    def __str__(self) -> str:
        idx = ",".join(map(str, self.neuron))
        return f"t={self.step} sample {self.sample} [{idx}]"

    def key(self) -> tuple[int, int, tuple[int, ...]]:
        return (self.step, self.sample, self.neuron)


def _earliest(a: Divergence | None, b: Divergence | None) -> Divergence | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a.key() <= b.key() else b


def _max(a: float | None, b: float | None) -> float | None:
    vals = [v for v in (a, b) if v is not None and not math.isnan(v)]
    return max(vals) if vals else (None if a is None and b is None else float("nan"))


@dataclass
class LayerComparison:
    """Per-IF-node agreement of one backend with the reference (counts over all samples)."""

    node: str
    neurons: int  # per sample
    neuron_steps: int = 0
    mismatches: int = 0
    ties: int = 0
    propagated: int = 0
    unexplained: int = 0
    first_divergence: Divergence | None = None
    first_unexplained: Divergence | None = None
    max_v_diff: float | None = None  # max |v - v_ref| while the sample had not diverged
    max_v_diff_all: float | None = None  # max |v - v_ref| over everything
    spikes: int = 0  # backend spike count
    ref_spikes: int = 0

    @property
    def agreement(self) -> float:
        """Fraction of neuron-steps with equal spikes."""
        return 1.0 - self.mismatches / self.neuron_steps if self.neuron_steps else float("nan")

    @property
    def firing_rate(self) -> float:
        return self.spikes / self.neuron_steps if self.neuron_steps else float("nan")

    @property
    def ref_firing_rate(self) -> float:
        return self.ref_spikes / self.neuron_steps if self.neuron_steps else float("nan")

    def merge(self, other: LayerComparison) -> LayerComparison:
        """Counts of both (``other``'s samples already carry global indices)."""
        return LayerComparison(
            self.node, self.neurons,
            self.neuron_steps + other.neuron_steps, self.mismatches + other.mismatches,
            self.ties + other.ties, self.propagated + other.propagated,
            self.unexplained + other.unexplained,
            _earliest(self.first_divergence, other.first_divergence),
            _earliest(self.first_unexplained, other.first_unexplained),
            _max(self.max_v_diff, other.max_v_diff), _max(self.max_v_diff_all, other.max_v_diff_all),
            self.spikes + other.spikes, self.ref_spikes + other.ref_spikes,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("first_divergence", "first_unexplained"):
            v = getattr(self, k)
            d[k] = None if v is None else {"step": v.step, "sample": v.sample, "neuron": list(v.neuron)}
        d.update(agreement=self.agreement, firing_rate=self.firing_rate, ref_firing_rate=self.ref_firing_rate)
        return d


@dataclass
class OutputComparison:
    """Agreement of the outputs (per step and readout) and of the predicted classes."""

    samples: int = 0
    max_output_diff: float = 0.0  # max |out(t) - out_ref(t)| over all steps
    max_readout_diff: float = 0.0  # max |readout - readout_ref| after T steps
    same_prediction: int = 0

    @property
    def prediction_agreement(self) -> float:
        return self.same_prediction / self.samples if self.samples else float("nan")

    def merge(self, other: OutputComparison) -> OutputComparison:
        return OutputComparison(
            self.samples + other.samples, max(self.max_output_diff, other.max_output_diff),
            max(self.max_readout_diff, other.max_readout_diff), self.same_prediction + other.same_prediction,
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "prediction_agreement": self.prediction_agreement}


@dataclass
class Comparison:
    """One backend against the reference: outputs and every observed IF node."""

    layers: dict[str, LayerComparison] = field(default_factory=dict)
    outputs: OutputComparison = field(default_factory=OutputComparison)
    unobserved: list[str] = field(default_factory=list)  # IF nodes the backend did not trace
    relative_epsilon: float = REL_EPSILON_FLOAT64

    @property
    def unexplained(self) -> int:
        return sum(layer.unexplained for layer in self.layers.values())

    @property
    def spike_agreement(self) -> float:
        """Fraction of neuron-steps with equal spikes over all compared IF nodes."""
        total = sum(layer.neuron_steps for layer in self.layers.values())
        return 1.0 - sum(layer.mismatches for layer in self.layers.values()) / total if total else float("nan")

    @property
    def first_divergence(self) -> tuple[str, Divergence] | None:
        """The earliest divergence over all layers (ties broken by topological order)."""
        best: tuple[str, Divergence] | None = None
        for name, layer in self.layers.items():  # layers are in topological order
            d = layer.first_divergence
            if d is not None and (best is None or d.key()[:2] < best[1].key()[:2]):
                best = (name, d)
        return best

    def merge(self, other: Comparison) -> Comparison:
        layers = {k: (self.layers[k].merge(v) if k in self.layers else v) for k, v in other.layers.items()}
        return Comparison(layers, self.outputs.merge(other.outputs), other.unobserved, other.relative_epsilon)


def if_ancestors(graph: nir.NIRGraph) -> dict[str, set[str]]:
    """For each IF node, the IF nodes upstream of it (through any path)."""
    preds, _ = neighbours(graph.nodes, graph.edges)
    result: dict[str, set[str]] = {}
    for n, node in graph.nodes.items():
        if not isinstance(node, nir.IF):
            continue
        found: set[str] = set()
        stack, seen = list(preds[n]), set()
        while stack:
            p = stack.pop()
            if p in seen or p == n:
                continue
            seen.add(p)
            if isinstance(graph.nodes[p], nir.IF):
                found.add(p)
            stack.extend(preds[p])
        result[n] = found
    return result


def compare_results(
    graph: nir.NIRGraph,
    result: SimulationResult,
    reference: SimulationResult,
    *,
    rel_epsilon: float,
    sample_offset: int = 0,
) -> Comparison:
    """Compare one batch run of a backend with the reference run of the same batch."""
    ancestors = if_ancestors(graph)
    layer_first: dict[str, torch.Tensor] = {}  # per node: first mismatch step per sample [B]
    comparison = Comparison(relative_epsilon=rel_epsilon)
    batch = reference.outputs.shape[1]
    for name in if_nodes_in_order(graph):
        if name not in reference.traces:
            continue
        if name not in result.traces:
            comparison.unobserved.append(name)
            continue
        sem = if_semantics(graph.nodes[name], name)
        ref, got = reference.traces[name], result.traces[name]
        steps = ref.spikes.shape[0]
        shape = tuple(ref.spikes.shape[2:])
        s_ref = ref.spikes.reshape(steps, batch, -1).to(torch.float64)
        s = got.spikes.reshape(steps, batch, -1).to(torch.float64)
        v_ref = ref.v.reshape(steps, batch, -1).to(torch.float64)
        v = got.v.reshape(steps, batch, -1).to(torch.float64)
        theta = torch.as_tensor(sem.threshold, dtype=torch.float64).reshape(-1)
        if sem.reset == "subtract":
            m_ref = v_ref + theta * s_ref
        else:  # hard reset: the potential before a spike is lost
            m_ref = torch.where(s_ref > 0, torch.full_like(v_ref, float("nan")), v_ref)
        eps = rel_epsilon * torch.clamp(theta.abs(), min=1.0)
        tie = (m_ref - theta).abs() <= eps
        mism = s != s_ref  # [T, B, N]
        t_idx = torch.arange(steps).view(-1, 1, 1)
        neuron_first = torch.where(mism, t_idx, NEVER).min(dim=0).values  # [B, N]
        upstream_first = torch.full((batch,), NEVER, dtype=torch.long)
        for a in ancestors[name]:
            if a in layer_first:
                upstream_first = torch.minimum(upstream_first, layer_first[a])
        layer_first[name] = neuron_first.min(dim=1).values
        propagated = mism & ((t_idx >= upstream_first.view(1, -1, 1)) | (t_idx > neuron_first.unsqueeze(0)))
        root = mism & ~propagated
        ties = root & tie
        unexplained = root & ~tie
        clean = (t_idx < upstream_first.view(1, -1, 1)) & (t_idx < neuron_first.unsqueeze(0))
        vdiff = (v - v_ref).abs()
        lc = LayerComparison(
            name, int(np.prod(shape)) if shape else 1,
            neuron_steps=int(mism.numel()), mismatches=int(mism.sum()), ties=int(ties.sum()),
            propagated=int(propagated.sum()), unexplained=int(unexplained.sum()),
            first_divergence=_first(mism, shape, sample_offset),
            first_unexplained=_first(unexplained, shape, sample_offset),
            max_v_diff=_nanmax(vdiff[clean]), max_v_diff_all=_nanmax(vdiff),
            spikes=int(s.sum()), ref_spikes=int(s_ref.sum()),
        )
        comparison.layers[name] = lc
    out, out_ref = result.outputs.to(torch.float64), reference.outputs.to(torch.float64)
    comparison.outputs = OutputComparison(
        samples=batch,
        max_output_diff=float((out - out_ref).abs().max()) if out.numel() else 0.0,
        max_readout_diff=float((result.readout.to(torch.float64) - reference.readout.to(torch.float64)).abs().max()),
        same_prediction=int((result.predictions() == reference.predictions()).sum()),
    )
    return comparison


def _nanmax(values: torch.Tensor) -> float | None:
    if values.numel() == 0:
        return None
    finite = values[~torch.isnan(values)]
    return float(finite.max()) if finite.numel() else float("nan")


def _first(mask: torch.Tensor, shape: tuple[int, ...], offset: int) -> Divergence | None:
    """The first (step, sample, neuron) where ``mask`` [T, B, N] is set."""
    hits = mask.nonzero()
    if hits.numel() == 0:
        return None
    t, b, n = (int(v) for v in hits[0])  # nonzero() is in lexicographic (t, b, n) order
    neuron = tuple(int(i) for i in np.unravel_index(n, shape)) if shape else (n,)
    return Divergence(t + 1, b + offset, neuron)
