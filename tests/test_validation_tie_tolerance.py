"""The tie tolerance of the comparison, pinned: just inside epsilon is a tie, just outside is not.

A root mismatch (the first place two runs differ) is explained as a tie only when the
reference's pre-reset potential lies within ``epsilon = rel * max(1, |theta|)`` of the
threshold, with ``rel = 1e-9`` when both runs are float64 and ``1e-4`` otherwise. A larger
epsilon would hide real semantic differences; these tests fail if it grows (or shrinks).
The runs are made by hand (no simulator), so only the comparison is under test.
"""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch

from bridge.format.extension import graph_metadata, make_if
from bridge.reference.result import NodeTrace, SimulationResult
from validation import backends as registry
from validation.backends.base import Backend
from validation.compare import REL_EPSILON_FLOAT32, REL_EPSILON_FLOAT64, compare_results, relative_epsilon
from validation.suite import validate


def one_if_graph(theta: float) -> nir.NIRGraph:
    nodes = {"input": nir.Input(np.array([2])), "neuron": make_if(np.full(2, theta), np.zeros(2)),
             "output": nir.Output(np.array([2]))}
    return nir.NIRGraph(nodes, [("input", "neuron"), ("neuron", "output")], metadata=graph_metadata())


def runs(theta: float, below: float) -> tuple[SimulationResult, SimulationResult]:
    """One step, one sample: neuron 0 reaches m = theta - below in the reference and does not
    fire; the other run fires there. Neuron 1 agrees (no spike)."""
    m = theta - below
    ref = torch.tensor([[[0.0, 0.0]]], dtype=torch.float64)
    got = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    v_ref = torch.tensor([[[m, 0.0]]], dtype=torch.float64)
    v_got = torch.tensor([[[m - theta, 0.0]]], dtype=torch.float64)
    return (SimulationResult(got, {"neuron": NodeTrace(got, v_got)}),
            SimulationResult(ref, {"neuron": NodeTrace(ref, v_ref)}))


def test_the_epsilons_are_pinned():
    assert REL_EPSILON_FLOAT64 == 1e-9
    assert REL_EPSILON_FLOAT32 == 1e-4
    assert relative_epsilon(torch.float64, torch.float64) == 1e-9
    assert relative_epsilon(torch.float32, torch.float64) == 1e-4
    assert relative_epsilon(torch.float64, torch.float32) == 1e-4


@pytest.mark.parametrize("rel", [REL_EPSILON_FLOAT64, REL_EPSILON_FLOAT32])
@pytest.mark.parametrize("theta", [1.0, 0.25, 4.0])  # epsilon = rel * max(1, |theta|)
def test_just_inside_is_a_tie_just_outside_is_unexplained(rel, theta):
    eps = rel * max(1.0, abs(theta))
    graph = one_if_graph(theta)
    inside = compare_results(graph, *runs(theta, 0.9 * eps), rel_epsilon=rel).layers["neuron"]
    assert (inside.mismatches, inside.ties, inside.unexplained) == (1, 1, 0)
    outside = compare_results(graph, *runs(theta, 1.1 * eps), rel_epsilon=rel).layers["neuron"]
    assert (outside.mismatches, outside.ties, outside.unexplained) == (1, 0, 1)
    assert outside.first_unexplained.key() == (1, 0, (0,))


class SlackBackend(Backend):
    """Fires when ``m + slack >= theta``: wrong by ``slack`` (one IF node fed by the input)."""

    name = "test-slack"
    slack = 0.0

    def run(self, x: torch.Tensor, steps: int, *, trace: bool = False) -> SimulationResult:
        theta = torch.as_tensor(np.asarray(self.graph.nodes["neuron"].v_threshold), dtype=torch.float64)
        m = x.to(torch.float64)
        s = (m + self.slack >= theta).to(torch.float64)
        v = m - theta * s
        return SimulationResult(s[None], {"neuron": NodeTrace(s[None], v[None])})


@pytest.mark.parametrize("dtype, rel", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_validate_uses_the_pinned_epsilon_for_its_dtype(monkeypatch, dtype, rel):
    """Through validate(): a backend off by 0.5 epsilon passes, one off by 2 epsilon fails."""
    graph = one_if_graph(1.0)
    for below, ok in ((0.5 * rel, True), (2 * rel, False)):
        cls = type("Slack", (SlackBackend,), {"slack": 3 * rel})
        monkeypatch.setitem(registry.REGISTERED, "test-slack", cls)
        x = torch.tensor([[1.0 - below, 0.0]], dtype=torch.float64)
        report = validate(graph, ["test-slack"], x, steps=1, timesteps=[1], dtype=dtype)
        c = report.backends[0].comparison
        assert c.relative_epsilon == rel
        assert c.layers["neuron"].mismatches == 1
        assert report.ok is ok, (below, report.failures())
