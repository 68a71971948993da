"""The optimiser's write-back: every fitted (a, f) lands in the returned graph, and nowhere else.

``optimize_initial_potentials`` fits a threshold scale ``a`` and an initial-potential fraction
``f`` per channel of every IF layer. The returned graph must hold, for every IF layer,
``theta' = a theta`` and ``v_init = f theta'``, and every weighted node that consumes the layer
(directly or through pooling and flatten) must have that channel's input weights multiplied
by ``a``, because a spike now carries ``a theta``. The expected graph is computed here from
the original graph and the reported fits, without the optimiser's own surgery helpers.
"""

from __future__ import annotations

import nir
import numpy as np
import pytest

from bridge.converter import convert
from bridge.passes.optimize import optimize_initial_potentials
from tests.zoo import mlp, sample_input, vgg_bn

PASS_THROUGH = (nir.AvgPool2d, nir.SumPool2d, nir.Flatten)
WEIGHTED = (nir.Conv1d, nir.Conv2d, nir.Affine, nir.Linear)


def consumers(graph: nir.NIRGraph, name: str) -> list[str]:
    """Weighted nodes fed by ``name`` directly or through pooling/flatten."""
    found, stack = [], [d for s, d in graph.edges if s == name]
    while stack:
        n = stack.pop()
        if isinstance(graph.nodes[n], PASS_THROUGH):
            stack.extend(d for s, d in graph.edges if s == n)
        elif isinstance(graph.nodes[n], WEIGHTED):
            found.append(n)
    return found


def expected_weight(weight: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``weight`` with input channel c scaled by a[c] (a flattened input: per-channel blocks)."""
    if weight.ndim > 2:  # convolution (Cout, Cin, *k), dense: bridge writes groups = 1
        return weight * a.reshape(1, -1, *([1] * (weight.ndim - 2)))
    per = weight.shape[1] // a.size
    return weight * np.repeat(a, per)[None, :]


@pytest.fixture(scope="module", params=["mlp", "vgg_bn"])
def optimized(request):
    model, shape = {"mlp": mlp, "vgg_bn": vgg_bn}[request.param]()
    graph = convert(model, shape)
    fits = []
    new = optimize_initial_potentials(graph, sample_input(shape, 16), 2, fits=fits)
    return graph, new, {f.name: f for f in fits}


def test_every_if_layer_holds_its_fitted_threshold_and_v_init(optimized):
    graph, new, fits = optimized
    if_names = [n for n, v in graph.nodes.items() if isinstance(v, nir.IF)]
    assert sorted(fits) == sorted(if_names)
    for name in if_names:
        a, f = fits[name].threshold_scale, fits[name].v_init_fraction
        # the fit moved this layer, so a skipped write-back cannot go unnoticed
        assert not (np.allclose(a, 1.0) and np.allclose(f, 0.5)), name
        theta = np.asarray(graph.nodes[name].v_threshold, dtype=np.float64)
        per_channel = (-1,) + (1,) * (theta.ndim - 1)
        theta_new = theta * a.reshape(per_channel)
        np.testing.assert_allclose(new.nodes[name].v_threshold, theta_new, rtol=1e-12, atol=0, err_msg=name)
        v_init = new.nodes[name].metadata["bridge"]["v_init"]
        np.testing.assert_allclose(v_init, f.reshape(per_channel) * theta_new, rtol=1e-12, atol=1e-15,
                                   err_msg=name)
        assert new.nodes[name].metadata["bridge"]["reset"] == "subtract"


def test_consumers_are_rescaled_by_their_layers_threshold_scale(optimized):
    graph, new, fits = optimized
    rescaled = {}
    for name, fit in fits.items():
        for c in consumers(graph, name):
            rescaled[c] = fit.threshold_scale
    assert rescaled and any(not np.allclose(a, 1.0) for a in rescaled.values())
    for name, node in graph.nodes.items():
        if not isinstance(node, WEIGHTED):
            continue
        w_old, w_new = np.asarray(node.weight), np.asarray(new.nodes[name].weight)
        want = expected_weight(w_old, rescaled[name]) if name in rescaled else w_old
        assert w_new.dtype == w_old.dtype, name  # written back in the node's own precision
        np.testing.assert_allclose(w_new, want, rtol=1e-12 if w_old.dtype == np.float64 else 1e-6, atol=0,
                                   err_msg=name)
        if getattr(node, "bias", None) is not None:  # biases hold currents, not spikes: unchanged
            np.testing.assert_array_equal(new.nodes[name].bias, node.bias, err_msg=name)
    assert list(new.edges) == list(graph.edges)
    assert new.metadata["bridge"]["timesteps"] == 2
