"""Conformance: every faithful backend reproduces the reference on every graph, at every step.

The same checks as ``bridge validate`` over the zoo's converted graphs (MLP, VGG-style with
BatchNorm, ResNet-style with residuals, per-channel thresholds, grouped/strided/dilated
convolutions) and initial potentials 0, theta/2 and per-neuron random. A backend that
drifts (one spike anywhere, a potential off by more than rounding) fails here.
"""

from __future__ import annotations

import copy

import nir
import numpy as np
import pytest
import torch

from bridge.format.extension import NAMESPACE, V_INIT
from tests.zoo import sample_input, zoo_graphs
from validation.backends import BACKENDS, get_backend, missing_requirement
from validation.suite import input_shape, validate

FAITHFUL = [n for n in BACKENDS if n != "reference" and missing_requirement(n) is None and get_backend(n).faithful]
STEPS = 8
BATCH = 2


def with_v_init(graph: nir.NIRGraph, kind: str, seed: int = 0) -> nir.NIRGraph:
    """The same graph with other initial potentials ('zero' or per-neuron uniform in [0, theta))."""
    g = copy.deepcopy(graph)
    rng = np.random.default_rng(seed)
    for node in g.nodes.values():
        if isinstance(node, nir.IF):
            theta = np.asarray(node.v_threshold)
            v0 = np.zeros_like(theta) if kind == "zero" else rng.uniform(0, 1, theta.shape) * theta
            node.metadata[NAMESPACE][V_INIT] = v0
    return g


@pytest.fixture(scope="module")
def graphs() -> dict[str, nir.NIRGraph]:
    base = zoo_graphs()  # v_init = theta / 2
    cases = {f"{k}-half": v for k, v in base.items()}
    for k in ("mlp", "resnet_small_channel_wise"):
        cases[f"{k}-zero"] = with_v_init(base[k], "zero")
        cases[f"{k}-random"] = with_v_init(base[k], "random")
    return cases


CASES = [f"{k}-half" for k in ("mlp", "vgg_bn", "resnet_small", "grouped_strided", "vgg_bn_channel_wise",
                              "resnet_small_channel_wise")] + [
    f"{k}-{v}" for k in ("mlp", "resnet_small_channel_wise") for v in ("zero", "random")]


def test_there_are_faithful_backends():
    assert {"spikingjelly", "norse"} <= set(FAITHFUL)


@pytest.mark.parametrize("backend", FAITHFUL)
@pytest.mark.parametrize("case", CASES)
def test_backend_matches_reference_float64(graphs, case, backend):
    graph = graphs[case]
    x = sample_input(input_shape(graph), BATCH, seed=CASES.index(case))
    report = validate(graph, [backend], x, steps=STEPS, timesteps=[1, STEPS])
    b = report.backends[0]
    assert b.status == "ok", b.message
    c = b.comparison
    assert not c.unobserved, f"{backend} does not trace {c.unobserved}"
    assert list(c.layers) == report.layers and report.layers
    for name, layer in c.layers.items():
        assert layer.mismatches == 0, f"{name}: first divergence {layer.first_divergence}"
        assert layer.max_v_diff is not None and layer.max_v_diff <= 1e-9, name
    assert c.outputs.max_output_diff <= 1e-9
    assert c.outputs.prediction_agreement == 1.0
    assert report.ok


@pytest.mark.parametrize("backend", FAITHFUL)
@pytest.mark.parametrize("case", ["resnet_small_channel_wise-random"])
def test_backend_float32_has_only_explained_mismatches(graphs, case, backend):
    graph = graphs[case]
    x = sample_input(input_shape(graph), BATCH, seed=7)
    report = validate(graph, [backend], x, steps=STEPS, dtype=torch.float32)
    b = report.backends[0]
    assert b.status == "ok", b.message
    assert b.comparison.unexplained == 0, report.failures()
    assert report.ok
