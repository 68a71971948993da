"""The validation suite against stand-in backends that share no code with what they check.

``tests.standin_numpy`` re-implements the IF rule in NumPy; it never calls
``bridge.format.neurons``. So when the rule the reference uses breaks (``>=`` turned into
``>``, subtract reset into something else, v_init dropped) these tests see the reference
disagree with an independent implementation instead of agreeing with itself.
"""

from __future__ import annotations

import pytest
import torch

from bridge.reference import simulate
from validation import backends as registry
from validation import cases, conformance
from validation.compare import compare_results
from validation.suite import validate
from tests.standin_numpy import NumpyIF, NumpyIFNoInitialPotential, NumpyIFStrict

IF_CASES = ["affine_if", "linear_scale", "if_ties", "if_neuron_variants", "residual"]


@pytest.fixture
def stand_ins(monkeypatch):
    for cls in (NumpyIF, NumpyIFStrict, NumpyIFNoInitialPotential):
        monkeypatch.setitem(registry.REGISTERED, cls.name, cls)


@pytest.mark.parametrize("case", IF_CASES)
def test_reference_equals_an_independent_implementation_bit_for_bit(stand_ins, case):
    c = cases.load(case)
    report = validate(c.graph, ["numpy-if"], c.input(), steps=c.steps, timesteps=[c.steps])
    comparison = report.backends[0].comparison
    assert report.ok and comparison.layers
    for name, layer in comparison.layers.items():
        assert layer.mismatches == 0, f"{case}/{name}: first divergence {layer.first_divergence}"
        assert layer.max_v_diff_all == 0.0, f"{case}/{name}"
    assert comparison.outputs.max_output_diff == 0.0
    # and the independent implementation reproduces the frozen answers too
    assert conformance.run_case("numpy-if", NumpyIF, c).detail == "exact"


def test_strict_condition_differs_only_at_exact_ties(stand_ins):
    c = cases.load("if_ties")
    ref = simulate(c.graph, c.input(), c.steps, trace=True)
    got = NumpyIFStrict(c.graph).run(c.input(), c.steps, trace=True)
    layer = compare_results(c.graph, got, ref, rel_epsilon=1e-9).layers["neuron"]
    assert layer.mismatches > 0 and layer.ties > 0
    assert layer.unexplained == 0  # every root mismatch sits exactly on the threshold
    assert layer.first_divergence.step == 1  # neurons 0, 1 and 6 tie at t = 1
    report = validate(c.graph, ["numpy-if-gt"], c.input(), steps=c.steps, timesteps=[c.steps])
    assert report.ok  # ties are explained: not a failure


def test_lost_initial_potential_is_unexplained_and_fails(stand_ins):
    c = cases.load("if_neuron_variants")
    report = validate(c.graph, ["numpy-if-v0", "numpy-if"], c.input(), steps=c.steps, timesteps=[c.steps])
    assert [b.status for b in report.backends] == ["failed", "ok"]
    assert not report.ok and report.failures()[0].startswith("numpy-if-v0: ")
    assert report.backends[0].comparison.unexplained > 0


def test_float32_run_agrees_on_the_dyadic_cases(stand_ins):
    """Every sum of the dyadic cases is exact in float32 as well: the same spikes."""
    c = cases.load("if_ties")
    ref32 = simulate(c.graph, c.input(torch.float32), c.steps, trace=True, dtype=torch.float32)
    got = NumpyIF(c.graph).run(c.input(), c.steps, trace=True)
    assert torch.equal(ref32.traces["neuron"].spikes.double(), got.traces["neuron"].spikes)
    assert torch.equal(ref32.traces["neuron"].v.double(), got.traces["neuron"].v)
