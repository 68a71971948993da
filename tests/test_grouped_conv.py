"""Grouped and depthwise convolutions: dense in the file, grouped in bridge's own readers.

nir 1.0.8 cannot read a grouped Conv2d, so the converter writes the dense block-diagonal
weight with ``groups = 1`` and the conv metadata key ``groups``; the reference simulator and
both exporters recover the grouped weight once and run a grouped convolution. Checked on a
MobileNet-style network (depthwise separable blocks) and a RegNetX-style one (grouped 3x3)
through a NIR file on disk.
"""

from __future__ import annotations

import copy

import nir
import numpy as np
import pytest
import torch

from bridge.converter import convert
from bridge.format.errors import BridgeError
from bridge.format.extension import GROUPS, NAMESPACE, conv_metadata, conv_weight
from bridge.format.nirio import read_graph, write_graph
from bridge.reference import ReferenceSimulator, ann_view, simulate
from exporters.graph_spec import graph_to_spec
from tests.backend_checks import assert_exports_agree_per_step
from tests.zoo import sample_input
from tests.zoo_imagenet import mobilenet_v1, regnetx

STEPS = 16


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, tuple[torch.nn.Module, nir.NIRGraph]]:
    folder = tmp_path_factory.mktemp("grouped")
    out = {}
    for name, builder in (("mobilenet", mobilenet_v1), ("regnetx", regnetx)):
        model, shape = builder()
        graph = convert(model, shape, thresholds="max", calibration=sample_input(shape, 32), weights="float64")
        out[name] = (model, read_graph(write_graph(graph, folder / f"{name}.nir")))
    return out


def _grouped_convs(model: torch.nn.Module) -> dict[str, int]:
    return {name.replace(".", "_"): m.groups for name, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d) and m.groups > 1}


def test_file_holds_dense_weights_and_says_so(converted) -> None:
    for name, (model, graph) in converted.items():
        grouped = _grouped_convs(model)
        assert grouped, name
        for node_name, groups in grouped.items():
            node = graph.nodes[node_name]
            assert node.groups == 1  # what nir 1.0.8 can read back
            assert int(node.metadata[NAMESPACE][GROUPS]) == groups
            cin, cout = int(node.input_type["input"][0]), int(node.output_type["output"][0])
            assert node.weight.shape[:2] == (cout, cin)
            weight, g = conv_weight(node, node_name)
            assert g == groups and weight.shape[:2] == (cout, cin // groups)
        dense = [n for n, v in graph.nodes.items() if isinstance(v, nir.Conv2d) and n not in grouped
                 and NAMESPACE not in (v.metadata or {})]
        assert dense, name  # ordinary convs carry no key
        for n in dense:
            assert conv_weight(graph.nodes[n], n)[1] == 1


def test_recovered_weight_is_the_models_weight_times_the_absorbed_threshold(converted) -> None:
    """The recovered grouped weight, per output channel, is the ANN's grouped weight (BN folded)
    times the input threshold: exactly the dense block's diagonal, nothing lost."""
    model, graph = converted["mobilenet"]
    node = graph.nodes["features_1_0"]  # first depthwise conv
    weight, groups = conv_weight(node, "features_1_0")
    dense = np.asarray(node.weight)
    for o in range(dense.shape[0]):
        np.testing.assert_array_equal(weight[o, 0], dense[o, o])
        off = np.delete(dense[o], o, axis=0)
        assert not off.any()


def test_reference_and_exports_run_grouped_convs(converted) -> None:
    for name, (model, graph) in converted.items():
        sim = ReferenceSimulator(graph)
        spec, tensors = graph_to_spec(graph)
        nodes = {n["name"]: n for n in spec["nodes"]}
        for node_name, groups in _grouped_convs(model).items():
            op = sim.ops[node_name]
            assert op.groups == groups
            assert tuple(op.weight.shape[1:2]) == (graph.nodes[node_name].weight.shape[1] // groups,)
            assert nodes[node_name]["groups"] == groups
            assert tensors[f"{node_name}.weight"].shape == op.weight.shape


def test_ann_view_matches_the_model(converted) -> None:
    for name, (model, graph) in converted.items():
        # thresholds = the max of the calibration data: the ANN view equals the ANN where no
        # activation exceeds it; compare on the calibration batch itself
        x = sample_input(tuple(int(d) for d in graph.nodes["input"].input_type["input"]), 32)
        want = model.double()(x)
        model.float()
        got = ann_view(graph, x)
        assert torch.allclose(got, want, atol=1e-10, rtol=0), (name, (got - want).abs().max().item())


@pytest.mark.parametrize("name", ["mobilenet", "regnetx"])
def test_reference_and_exports_agree_per_step_in_float64(converted, name: str) -> None:
    model, graph = converted[name]
    x = sample_input(tuple(int(d) for d in graph.nodes["input"].input_type["input"]), 3, seed=7)
    ref = simulate(graph, x, STEPS, trace=True)
    assert all(tr.spikes.any() for tr in ref.traces.values())
    assert_exports_agree_per_step(graph, x, STEPS, ref)


def _strip(graph: nir.NIRGraph) -> nir.NIRGraph:
    """The same file without the conv key: every reader runs the dense convs."""
    graph = copy.deepcopy(graph)
    for node in graph.nodes.values():
        if isinstance(node, nir.Conv2d):
            node.metadata.pop(NAMESPACE, None)
    return graph


def test_grouped_and_dense_runs_compared_exactly(converted) -> None:
    """Grouped convs with several channels per group sum the very same terms in the same order
    as the dense conv: the runs are bit-identical (RegNetX). A depthwise conv (one channel per
    group) goes to another PyTorch kernel that adds the bias at another point: potentials
    differ in the last bits (measured here: at most 3e-14), the spikes of this run do not."""
    _, graph = converted["regnetx"]
    x = sample_input(tuple(int(d) for d in graph.nodes["input"].input_type["input"]), 3, seed=7)
    grouped, dense = simulate(graph, x, STEPS, trace=True), simulate(_strip(graph), x, STEPS, trace=True)
    for node, tr in grouped.traces.items():
        assert torch.equal(tr.v, dense.traces[node].v), node
    _, graph = converted["mobilenet"]
    grouped, dense = simulate(graph, x, STEPS, trace=True), simulate(_strip(graph), x, STEPS, trace=True)
    for node, tr in grouped.traces.items():
        assert torch.equal(tr.spikes, dense.traces[node].spikes), node
        assert torch.allclose(tr.v, dense.traces[node].v, rtol=0, atol=1e-12), node


def _depthwise_graph(weight: np.ndarray, groups: int, meta: dict) -> nir.NIRGraph:
    conv = nir.Conv2d(input_shape=(5, 5), weight=weight, stride=1, padding=1, dilation=1, groups=1,
                      bias=np.zeros(weight.shape[0]), metadata=meta)
    return nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([weight.shape[1], 5, 5])), "conv": conv,
                               "output": nir.Output(output_type=np.array([weight.shape[0], 5, 5]))},
                        edges=[("input", "conv"), ("conv", "output")])


@pytest.mark.parametrize("damage, message", [
    ("off_diagonal", "non-zero entries outside the block diagonal"),
    ("not_dividing", "does not divide"),
    ("not_integer", "not a positive integer"),
    ("both_groups", "describes a dense"),
])
def test_damaged_grouped_encoding_is_refused(damage: str, message: str, tmp_path) -> None:
    rng = np.random.default_rng(0)
    dense = np.zeros((4, 4, 3, 3))
    for c in range(4):
        dense[c, c] = rng.normal(size=(3, 3))
    meta = conv_metadata(4)
    if damage == "off_diagonal":
        dense[0, 1, 1, 1] = 1e-9
    elif damage == "not_dividing":
        meta = conv_metadata(3)
    elif damage == "not_integer":
        meta = {NAMESPACE: {GROUPS: 1.5}}
    graph = _depthwise_graph(dense, 4, meta)
    if damage == "both_groups":
        graph.nodes["conv"].groups = 2
    graph = read_graph(write_graph(graph, tmp_path / "g.nir")) if damage != "both_groups" else graph
    for compile_ in (ReferenceSimulator, graph_to_spec):
        with pytest.raises(BridgeError, match=message):
            compile_(graph)


def test_a_plain_dense_conv_is_untouched() -> None:
    rng = np.random.default_rng(1)
    graph = _depthwise_graph(rng.normal(size=(4, 4, 3, 3)), 1, {})
    weight, groups = conv_weight(graph.nodes["conv"], "conv")
    assert groups == 1 and np.array_equal(weight, graph.nodes["conv"].weight)
    assert conv_metadata(1) == {}


def test_inspect_shows_the_grouped_form(converted) -> None:
    from bridge.format.inspect import inspect_graph

    model, graph = converted["mobilenet"]
    info = {n["name"]: n for n in inspect_graph(graph)["nodes"]}
    for node_name, groups in _grouped_convs(model).items():
        entry = info[node_name]
        assert entry["groups"] == groups
        node = graph.nodes[node_name]
        assert entry["params"] == node.weight.size + node.bias.size
        assert entry["grouped_params"] == node.weight.size // groups + node.bias.size
    assert all("groups" not in info[n] for n in info if n not in _grouped_convs(model))
