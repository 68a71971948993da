"""Concatenation, channel slices and shuffles through every layer of the pipeline.

The converter writes ``torch.cat`` / ``x[:, a:b]`` / ``chunk`` / channel shuffles with standard
NIR nodes only (the consumer's weight split by input channel, per-channel layers run in each
branch's own channels, IF layers per channel piece): checked here on the zoo's DenseNet,
GoogLeNet, ShuffleNetV2, DLA and DPN (tests/zoo_imagenet.py) through a NIR file on disk: the
reference and both exports agree per step in float64, ``inspect`` describes the graph, the
validation suite passes it, and the optimiser fits it. Both front-ends and the ANN view:
tests/test_zoo_imagenet.py.
"""

from __future__ import annotations

import warnings

import nir
import numpy as np
import pytest
import torch

from bridge.converter import convert
from bridge.format.inspect import inspect_graph
from bridge.format.nirio import read_graph, write_graph
from bridge.passes.optimize import optimize_initial_potentials
from bridge.reference import ann_view, simulate
from tests import zoo_imagenet as zoo
from tests.backend_checks import assert_exports_agree_per_step
from tests.zoo import uniform_input
from validation.backends.spikingjelly import SpikingJellyBackend
from validation.suite import validate

FAMILIES = ["DenseNet-BC", "GoogLeNet", "ShuffleNetV2", "DLA", "DPN"]
STEPS = 12


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, tuple[torch.nn.Module, nir.NIRGraph, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("channel_maps")
    out = {}
    for name in FAMILIES:
        model, shape = zoo.ALL[name]()
        model = model.double()
        x = uniform_input(shape, 6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # GoogLeNet's max pools become average pools
            graph = convert(model, shape, thresholds="max", calibration=x, maxpool="avg")
        out[name] = (model, read_graph(write_graph(graph, folder / f"{name}.nir")), x)
    return out


@pytest.mark.parametrize("name", FAMILIES)
def test_standard_nodes_only_and_no_dangling_node(converted, name: str) -> None:
    _, graph, _ = converted[name]
    allowed = (nir.Input, nir.Output, nir.Conv2d, nir.Affine, nir.IF, nir.Scale, nir.AvgPool2d, nir.Flatten)
    assert all(isinstance(n, allowed) for n in graph.nodes.values())
    sources = {a for a, _ in graph.edges}
    assert all(n in sources for n in graph.nodes if n != "output"), "a node that feeds nothing"


@pytest.mark.parametrize("name", FAMILIES)
def test_reference_and_exports_agree_per_step_in_float64(converted, name: str) -> None:
    _, graph, _ = converted[name]
    shape = tuple(int(d) for d in graph.nodes["input"].input_type["input"])
    x = uniform_input(shape, 2, seed=3)
    ref = simulate(graph, x, STEPS, trace=True)
    assert sum(bool(tr.spikes.any()) for tr in ref.traces.values()) > len(ref.traces) // 2
    assert_exports_agree_per_step(graph, x, STEPS, ref)


def test_ann_view_of_the_file_is_the_model(converted) -> None:
    for name, (model, graph, x) in converted.items():
        if name == "GoogLeNet":
            continue  # max pools replaced: compared with the replaced ANN in test_zoo_imagenet.py
        with torch.no_grad():
            err = (ann_view(graph, x) - model(x)).abs().max().item()
        assert err < 1e-10, (name, err)


def test_inspect_and_validation_suite(converted) -> None:
    _, graph, x = converted["ShuffleNetV2"]
    info = inspect_graph(graph)
    assert info["totals"]["nodes"] == len(graph.nodes) and info["totals"]["edges"] == len(graph.edges)
    assert info["totals"]["if_nodes"] == sum(isinstance(n, nir.IF) for n in graph.nodes.values())
    # a depthwise conv run in a branch's own channels keeps its grouped form
    assert any(e.get("groups", 1) > 1 for e in info["nodes"] if e["type"] == "Conv2d")
    report = validate(graph, ["spikingjelly", "norse"], x[:2].float(), steps=6)
    assert all(b.status == "ok" for b in report.backends), [(b.name, b.status, b.message) for b in report.backends]


def test_optimiser_fits_a_graph_with_concatenations(converted) -> None:
    _, graph, x = converted["DPN"]
    fitted = optimize_initial_potentials(graph, x.float(), 4)
    before = [n for n in graph.nodes.values() if isinstance(n, nir.IF)]
    after = [n for n in fitted.nodes.values() if isinstance(n, nir.IF)]
    assert len(before) == len(after)
    assert set(fitted.nodes) == set(graph.nodes) and sorted(fitted.edges) == sorted(graph.edges)
    out = simulate(fitted, x, 4).outputs
    assert torch.isfinite(out).all()
    assert any(not np.allclose(np.asarray(a.v_threshold), np.asarray(b.v_threshold)) or
               not np.allclose(np.asarray((a.metadata or {}).get("bridge", {}).get("v_init", 0)),
                               np.asarray((b.metadata or {}).get("bridge", {}).get("v_init", 0)))
               for a, b in zip(before, after))


class _Edge(torch.nn.Module):
    """Small models for the builder's less common paths (fallback projections included)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.a, self.b = torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.Conv2d(2, 2, 1)
        self.bn = torch.nn.BatchNorm2d(6)
        self.pool = torch.nn.AdaptiveAvgPool2d(3)
        self.fc = torch.nn.Linear({"output": 5, "twice": 5 * 25, "adaptive": 5 * 9,
                                   "residual": 3 * 25, "flat_bn": 8}[kind], 4)
        self.fc2 = torch.nn.Linear(5 * 25, 3)
        self.bn1 = torch.nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x).relu(), self.b(x).relu()
        if self.kind == "output":  # the readout is a concatenation of two linear maps
            return torch.cat([self.fc(torch.flatten(torch.cat([a, b], 1).mean((2, 3), keepdim=True), 1)),
                              self.fc2(torch.flatten(torch.cat([b, a], 1), 1))], 1)
        if self.kind == "twice":  # the same branch twice: a gather that repeats channels
            y = torch.cat([a, b, a[:, :1]], 1)
            return self.fc(torch.flatten(self.bn(y)[:, :5].relu(), 1))
        if self.kind == "adaptive":  # uneven adaptive pool of a concatenation (Flatten + Affine)
            return self.fc(torch.flatten(self.pool(torch.cat([a, b], 1)), 1))
        if self.kind == "residual":  # a residual sum of a slice and a branch, then an IF layer
            return self.fc(torch.flatten((torch.cat([b, a], 1)[:, 2:] + a).relu(), 1))
        # flat features concatenated, then BatchNorm1d and an IF layer
        f = torch.cat([a.mean((2, 3)), b.mean((2, 3)), a.mean((2, 3))], 1)
        return self.fc(self.bn1(f).relu())


@pytest.mark.parametrize("kind", ["output", "twice", "adaptive", "residual", "flat_bn"])
def test_less_common_channel_maps_are_exact_on_both_paths(kind: str) -> None:
    from bridge.converter import convert_layer_graph, trace_module
    from bridge.converter.aten_frontend import exported_to_layer_graph
    from tests.nir_compare import assert_same_nir

    model = zoo._randomize(_Edge(kind), 5).double().eval()
    with torch.no_grad():  # every branch active on the calibration inputs
        model.a.bias.add_(1.0)
        model.b.bias.add_(1.0)
    shape = (2, 5, 5)
    x = uniform_input(shape, 6)
    graphs = [convert_layer_graph(lg, thresholds="max", calibration=x)
              for lg in (trace_module(model, shape), exported_to_layer_graph(torch.export.export(model, (x,))))]
    assert_same_nir(*graphs)
    with torch.no_grad():
        assert (ann_view(graphs[0], x) - model(x)).abs().max().item() < 1e-10
    ref = simulate(graphs[0], x[:2], 6, trace=True)
    got = SpikingJellyBackend(graphs[0]).run(x[:2], 6, trace=True)
    assert torch.equal(got.outputs, ref.outputs)
