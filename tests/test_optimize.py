"""Data-driven initial potentials and thresholds (bridge.passes.optimize) on real converted graphs."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch

from bridge.converter import convert
from bridge.data.datasets import digits_split
from bridge.format.extension import graph_metadata, graph_semantics, if_semantics, make_if
from bridge.format.neurons import if_constant_input_spike_count
from bridge.format.nirio import read_graph, write_graph
from bridge.passes.optimize import LayerFit, apply_fit, current_subgraph, optimize_initial_potentials
from bridge.reference import ann_view, simulate
from bridge.model.train import DigitsCNN, train_model


@pytest.fixture(scope="module")
def trained():
    split = digits_split(0)
    result = train_model(DigitsCNN("clip", channels=(8, 16), hidden=32), split, epochs=8, seed=0)
    graph = convert(result.model, (1, 16, 16), calibration=split.train_x[:128])
    return split, result, graph


def _acc(graph, x, y, steps):
    return float((simulate(graph, x, steps).running_readout[-1].argmax(1) == y).float().mean())


@pytest.mark.parametrize("steps", [1, 2])
def test_optimized_beats_half_threshold_at_low_latency(trained, steps):
    split, result, graph = trained
    fits: list[LayerFit] = []
    opt = optimize_initial_potentials(graph, split.train_x[:128], steps, fits=fits)
    half = _acc(graph, split.test_x, split.test_y, steps)
    best = _acc(opt, split.test_x, split.test_y, steps)
    assert best > half, (steps, half, best)
    assert best > result.ann_accuracy - 0.08
    # the search never makes a layer's calibration error worse than theta/2 (it starts there)
    assert len(fits) == 3 and all(f.mse_best <= f.mse_half for f in fits)
    assert fits[0].mse_best < fits[0].mse_half


def test_optimized_graph_is_valid_nir_after_write_and_read(trained, tmp_path):
    split, _, graph = trained
    opt = optimize_initial_potentials(graph, split.train_x[:64], 2, channel_wise=False)
    path = write_graph(opt, tmp_path / "opt.nir")
    back = read_graph(path)
    assert graph_semantics(back).timesteps == 2
    assert graph_semantics(graph).timesteps is None  # the input graph is not modified
    for name, node in back.nodes.items():
        if isinstance(node, nir.IF):
            sem = if_semantics(node, name)
            assert sem.reset == "subtract" and sem.spike_condition == "ge"
            assert sem.v_init.shape == sem.threshold.shape
            assert np.all(sem.threshold > 0) and np.all(sem.v_init >= 0)
            assert np.all(sem.v_init < sem.threshold)
    x = split.test_x[:32]
    assert torch.equal(simulate(back, x, 4).outputs, simulate(opt, x, 4).outputs)


def test_layer_wise_fit_uses_one_value_per_layer(trained):
    split, _, graph = trained
    fits: list[LayerFit] = []
    optimize_initial_potentials(graph, split.train_x[:64], 1, channel_wise=False, fits=fits)
    for f in fits:
        assert np.unique(f.threshold_scale).size == 1 and np.unique(f.v_init_fraction).size == 1


def test_thresholds_false_keeps_every_threshold(trained):
    split, _, graph = trained
    opt = optimize_initial_potentials(graph, split.train_x[:64], 1, thresholds=False)
    moved = 0
    for name, node in graph.nodes.items():
        if isinstance(node, nir.IF):
            np.testing.assert_array_equal(opt.nodes[name].v_threshold, node.v_threshold)
            moved += not np.array_equal(if_semantics(opt.nodes[name], name).v_init,
                                        if_semantics(node, name).v_init)
        elif hasattr(node, "weight"):
            np.testing.assert_array_equal(opt.nodes[name].weight, node.weight)
    assert moved > 0  # at T = 1 theta/2 is not the best initial potential everywhere


def test_threshold_change_is_absorbed_by_the_consumers_through_pool_and_flatten():
    """ReLU net with 'max' thresholds: no activation on x reaches theta, so raising thresholds
    by a >= 1 (and the consumers' weights by a) must leave the ANN view on x unchanged."""
    torch.manual_seed(0)
    split = digits_split(0)
    model = DigitsCNN("relu", channels=(4, 6), hidden=8).eval()
    x = split.train_x[:64]
    graph = convert(model, (1, 16, 16), thresholds="max", calibration=x)
    before = ann_view(graph, x.double())
    rng = np.random.default_rng(0)
    for name in [n for n, v in graph.nodes.items() if isinstance(v, nir.IF)]:
        c = np.asarray(graph.nodes[name].v_threshold).shape[0]
        graph = apply_fit(graph, name, rng.uniform(1.0, 2.0, c), np.full(c, 0.5))
    # 1e-6: 'max' thresholds are float32-rounded maxima, so the largest activation may sit a
    # rounding error above theta; a wrong rescale would be off by O(1)
    torch.testing.assert_close(ann_view(graph, x.double()), before, rtol=1e-6, atol=1e-6)


def test_apply_fit_spikes_follow_the_closed_form_with_new_threshold_and_v_init():
    """Input -> Affine -> IF -> Affine -> Output: after a = 0.8, f = 0.3 the readout is
    W2 * a theta N_T / T with N_T from the closed form at theta' = a theta, v0 = f theta'."""
    theta = np.array([1.0, 2.0, 0.5])
    w1 = np.eye(3)
    w2 = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]) * theta  # the consumer absorbs theta
    nodes = {"input": nir.Input(input_type={"input": np.array([3])}),
             "fc1": nir.Affine(weight=w1, bias=np.zeros(3)),
             "if1": make_if(theta, theta / 2),
             "fc2": nir.Affine(weight=w2, bias=np.zeros(2)),
             "output": nir.Output(output_type={"output": np.array([2])})}
    edges = [("input", "fc1"), ("fc1", "if1"), ("if1", "fc2"), ("fc2", "output")]
    graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph_metadata())
    a, f, T = np.array([0.8, 1.2, 0.6]), np.array([0.3, 0.1, 0.9]), 5
    new = apply_fit(graph, "if1", a, f)
    z = torch.tensor([[0.37, 1.1, 0.2], [0.9, 0.05, 0.49]], dtype=torch.float64)
    th = torch.as_tensor(theta * a)
    n = if_constant_input_spike_count(z, th, torch.as_tensor(f) * th, T)
    expected = (th * n / T) @ torch.as_tensor(w2 / theta).T
    got = simulate(new, z, T).running_readout[-1]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_current_subgraph_outputs_the_input_current_of_a_layer(trained):
    split, _, graph = trained
    names = [n for n, v in graph.nodes.items() if isinstance(v, nir.IF)]
    x = split.test_x[:8]
    res = simulate(graph, x, 3, trace=[names[1]])
    tr = res.traces[names[1]]
    theta = torch.as_tensor(np.asarray(graph.nodes[names[1]].v_threshold))
    v0 = torch.as_tensor(if_semantics(graph.nodes[names[1]], names[1]).v_init).expand_as(tr.v[0])
    prev = torch.cat([v0.unsqueeze(0), tr.v[:-1]])
    current = tr.v + theta * tr.spikes - prev  # m(t) - v(t-1)
    sub = simulate(current_subgraph(graph, names[1]), x, 3).outputs
    torch.testing.assert_close(sub, current, rtol=1e-9, atol=1e-9)


def test_bad_arguments_are_user_errors(trained):
    from bridge.format.errors import BridgeError

    split, _, graph = trained
    with pytest.raises(BridgeError, match="timesteps"):
        optimize_initial_potentials(graph, split.train_x[:4], 0)
    with pytest.raises(BridgeError, match="empty"):
        optimize_initial_potentials(graph, split.train_x[:0], 2)
