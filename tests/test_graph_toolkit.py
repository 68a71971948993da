"""The NIR graph toolkit (bridge.format.graph): order, neighbours, input shape, rescaling."""

from __future__ import annotations

import copy

import nir
import numpy as np
import pytest
import torch

from bridge.format.errors import BridgeError
from bridge.format.extension import if_semantics
from bridge.format.graph import (
    channel_consumers,
    feedback_edges,
    if_nodes_in_order,
    input_shape,
    neighbours,
    per_channel,
    rescale_threshold,
    scale_input_channels,
    scale_output_channels,
    topological_order,
)
from bridge.reference import simulate
from bridge.reference.result import running_readout
from tests import zoo


def test_topological_order_places_ready_nodes_first_come_first_served():
    names = ["out", "b", "in", "a", "c"]
    edges = [("in", "b"), ("in", "a"), ("a", "c"), ("b", "out"), ("c", "out")]
    # "in" is the only node without inputs; its successors become ready in edge order (b, a),
    # then a's successor c; "out" waits for both b and c
    assert topological_order(names, edges) == ["in", "b", "a", "c", "out"]
    # two sources: the graph's node order breaks the tie
    assert topological_order(["y", "x", "z"], [("x", "z"), ("y", "z")]) == ["y", "x", "z"]


def test_a_cycle_is_left_out_unless_its_feedback_edge_is_skipped():
    names = ["in", "x", "y", "out"]
    edges = [("in", "x"), ("x", "y"), ("y", "x"), ("y", "out")]
    assert topological_order(names, edges) == ["in"]  # x, y and everything after them wait
    _, succs = neighbours(names, edges)
    found, reached = feedback_edges(succs, ["in"])
    assert found == {("y", "x")} and reached == set(names)
    assert topological_order(names, edges, skip=found) == ["in", "x", "y", "out"]


def test_neighbours_keep_edge_order_and_name_a_dangling_edge():
    preds, succs = neighbours(["a", "b", "c"], [("a", "c"), ("b", "c"), ("a", "b")])
    assert preds == {"a": [], "b": ["a"], "c": ["a", "b"]}
    assert succs == {"a": ["c", "b"], "b": ["c"], "c": []}
    with pytest.raises(BridgeError, match="'ghost'"):
        neighbours(["a"], [("a", "ghost")])


def test_if_nodes_in_order_and_input_shape_of_a_converted_graph():
    graph = zoo.zoo_graphs()["vgg_bn"]
    assert if_nodes_in_order(graph) == ["features_2", "features_5", "features_10", "act_fc"]
    assert input_shape(graph) == (1, 16, 16)
    two = nir.NIRGraph(nodes={**graph.nodes, "input2": nir.Input(input_type={"input": np.array([1, 16, 16])})},
                       edges=list(graph.edges), type_check=False)
    with pytest.raises(BridgeError, match="2 Input nodes"):
        input_shape(two)


def test_per_channel_and_grouped_input_channel_scaling():
    assert np.array_equal(per_channel(np.array([[1.0, 1.0], [2.0, 2.0]])), [1.0, 2.0])
    assert per_channel(np.array([[1.0, 3.0], [2.0, 2.0]])) is None
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(6, 2, 3, 3))  # 3 groups of 2 input channels
    factors = rng.normal(size=6)
    expected = weight.copy()
    for c, f in enumerate(factors):  # input channel c is column c % 2 of group c // 2's rows
        g, j = divmod(c, 2)
        expected[2 * g:2 * g + 2, j] *= f
    assert np.array_equal(scale_input_channels(weight, factors, groups=3), expected)
    with pytest.raises(BridgeError, match="cannot scale"):
        scale_input_channels(weight, factors[:4], groups=3)


def test_channel_consumers_pass_through_pooling_and_flatten():
    graph = zoo.zoo_graphs()["vgg_bn"]
    assert channel_consumers(graph, "features_5") == [("features_7", 0)]  # through AvgPool2d
    per = int(np.prod(np.asarray(graph.nodes["view"].input_type["input"])[1:]))
    assert channel_consumers(graph, "features_10") == [("fc1", per)]  # through pool and Flatten
    with pytest.raises(BridgeError, match=r"reaches 'features_10' \(IF\).*cannot carry the factor"):
        channel_consumers(graph, "features_8")


def test_moving_a_power_of_two_factor_into_the_producers_keeps_every_spike():
    """Producers, threshold and v_init times a per channel (the module doc's first move): the
    same network. Powers of two make the arithmetic exact, so the runs are equal bit for bit."""
    graph = zoo.zoo_graphs(0.3)["vgg_bn"]
    layer = "features_5"
    theta = if_semantics(graph.nodes[layer]).threshold
    a = 2.0 ** np.arange(-2, theta.shape[0] - 2)  # 1/4, 1/2, 1, 2, ...
    moved = rescale_threshold(graph, layer, a)
    (producer,) = [s for s, d in graph.edges if d == layer]
    moved.nodes[producer] = scale_output_channels(graph.nodes[producer], a)
    for consumer, _ in channel_consumers(graph, layer):  # the spikes keep their old value
        moved.nodes[consumer] = graph.nodes[consumer]
    x = zoo.sample_input(input_shape(graph), 6)
    before, after = simulate(graph, x, 5, trace=True), simulate(moved, x, 5, trace=True)
    assert torch.equal(before.outputs, after.outputs)
    for name in if_nodes_in_order(graph):
        assert torch.equal(before.traces[name].spikes, after.traces[name].spikes), name


class _ChannelClip(torch.nn.Module):
    """clip(z, 0, bound_c) per channel: the ANN of an IF layer with per-channel thresholds."""

    def __init__(self, bounds: np.ndarray) -> None:
        super().__init__()
        self.bounds = torch.as_tensor(bounds, dtype=torch.float64).reshape(-1, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.relu(z), self.bounds)


@pytest.mark.parametrize("layer", [5, 10])  # consumers through AvgPool2d; through AvgPool2d + Flatten
def test_a_rescaled_threshold_is_the_ann_with_that_clip_bound(layer):
    """Threshold a_c theta_c with the consumers absorbing a_c: the ANN view is the original ANN
    with that layer's clip bound moved to a_c theta_c per channel (built here in torch alone)."""
    from bridge.converter import convert
    from bridge.reference import ann_view

    model, shape = zoo.vgg_bn()
    graph = convert(model, shape, weights="float64")  # compared to 1e-9
    name = f"features_{layer}"
    theta = if_semantics(graph.nodes[name]).threshold
    a = np.linspace(0.6, 1.7, theta.shape[0])
    moved = rescale_threshold(graph, name, a)
    reference = copy.deepcopy(model).double()
    reference.features[layer] = _ChannelClip(theta[:, 0, 0] * a)
    x = zoo.sample_input(shape, 8)
    with torch.no_grad():
        torch.testing.assert_close(ann_view(moved, x), reference(x), rtol=1e-9, atol=1e-9)


def test_rescaling_one_layer_scales_its_consumers_and_refuses_where_none_can_absorb():
    from validation.compat import single_if_graph

    graph = zoo.zoo_graphs("zero")["mlp"]
    name = "act1"
    (consumer,) = [d for s, d in graph.edges if s == name]
    theta = if_semantics(graph.nodes[name]).threshold
    a = np.linspace(0.5, 1.5, theta.shape[0])
    moved = rescale_threshold(graph, name, a)
    np.testing.assert_array_equal(if_semantics(moved.nodes[name]).threshold, theta * a)
    np.testing.assert_array_equal(if_semantics(moved.nodes[name]).v_init, 0.0)
    np.testing.assert_array_equal(moved.nodes[consumer].weight, np.asarray(graph.nodes[consumer].weight) * a)
    assert moved.nodes[consumer] is not graph.nodes[consumer]  # a copy: the input graph is unchanged
    # IF -> Output: nothing can absorb a factor; factors of 1 need nothing absorbed
    single = single_if_graph(0.5)
    with pytest.raises(BridgeError, match=r"reaches 'output' \(Output\)"):
        rescale_threshold(single, "neuron", np.full(4, 0.5))
    same = rescale_threshold(single, "neuron", np.ones(4))
    np.testing.assert_array_equal(if_semantics(same.nodes["neuron"]).v_init, 0.5)


def test_running_readout_kinds():
    outputs = torch.tensor([[1.0], [3.0], [2.0]])[:, None]  # [T=3, B=1, 1]
    assert running_readout(outputs).flatten().tolist() == [1.0, 2.0, 2.0]
    assert running_readout(outputs, "sum").flatten().tolist() == [1.0, 4.0, 6.0]
    assert running_readout(outputs, "last").flatten().tolist() == [1.0, 3.0, 2.0]
