"""The architecture zoo (tests/zoo_imagenet.py) through the converter, at tiny widths.

Every family converts through both front-ends (torch.fx and torch.export) to the same NIR
graph, with an exact ANN view (thresholds = the per-layer max on the very inputs compared, so
the view must equal the ANN to rounding). Concatenating families through the reference and both
exports: tests/test_channel_maps.py.
The full table, both front-ends: benchmarks/arch_coverage.py -> docs/model-families.md.
"""

from __future__ import annotations

import warnings

import nir
import numpy as np
import pytest
import torch

from bridge.converter import convert, convert_layer_graph, prepare, trace_module
from bridge.converter.aten_frontend import exported_to_layer_graph
from bridge.converter.ir_eval import evaluate
from bridge.reference import ann_view
from tests import zoo_imagenet as zoo
from tests.zoo import uniform_input
from tests.nir_compare import assert_same_nir

# name -> (builder, maxpool policy); every family converts through both front-ends
CONVERTS = {
    "ResNet-18": (lambda: zoo.resnet18(16, 64), "avg"),
    "ResNet-34": (lambda: zoo.resnet34(16, 64), "avg"),
    "ResNet-50": (lambda: zoo.resnet50(16, 64), "avg"),
    "VGG-11-BN": (lambda: zoo.vgg11_bn(16, 224), "avg"),
    "VGG-16-BN": (lambda: zoo.vgg16_bn(16, 224), "avg"),
    "VGG-11-BN at 3x100x100 (adaptive pool 3x3 -> 7x7)": (lambda: zoo.vgg11_bn(16, 100), "avg"),
    "MobileNetV2": (lambda: zoo.mobilenet_v2(8, 32), "error"),
    "AlexNet": (lambda: zoo.alexnet(16, 224), "avg"),
    "MobileNet": (zoo.mobilenet_v1, "error"),
    "PreAct-ResNet": (zoo.preact_resnet, "error"),
    "RegNetX": (zoo.regnetx, "error"),
    "DenseNet-BC": (zoo.densenet, "error"),
    "GoogLeNet": (zoo.googlenet, "avg"),
    "ShuffleNetV2": (zoo.shufflenet_v2, "error"),
    "DLA": (zoo.dla, "error"),
    "DPN": (zoo.dpn, "error"),
}


@pytest.mark.parametrize("name", list(zoo.ALL))
def test_every_model_runs_and_has_its_published_structure(name: str) -> None:
    model, shape = zoo.ALL[name]()
    assert not model.training
    out = model.double()(uniform_input(shape, 2))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_published_depths() -> None:
    """Weighted layers of the published networks (convs + linear): 18, 34, 50, 11, 16, 8 (AlexNet)."""
    def depth(model: torch.nn.Module) -> int:
        return sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())

    def shortcut(model: torch.nn.Module) -> int:  # 1x1 projection shortcuts are not counted
        return sum(1 for n, _ in model.named_modules() if n.endswith("downsample.0"))

    for build, layers in ((zoo.resnet18, 18), (zoo.resnet34, 34), (zoo.resnet50, 50)):
        model = build()[0]
        assert depth(model) - shortcut(model) == layers
    assert depth(zoo.vgg11_bn()[0]) == 11 and depth(zoo.vgg16_bn()[0]) == 16 and depth(zoo.alexnet()[0]) == 8
    mb2 = zoo.MobileNetV2()
    assert sum(isinstance(m, zoo.InvertedResidual) for m in mb2.modules()) == 17


@pytest.mark.parametrize("name", list(CONVERTS))
def test_converts_on_both_paths_with_the_same_nir_and_an_exact_ann_view(name: str) -> None:
    build, maxpool = CONVERTS[name]
    model, shape = build()
    model = model.double()
    x = uniform_input(shape)
    graphs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the maxpool='avg' replacement warns by design
        for layer_graph in (trace_module(model, shape), exported_to_layer_graph(torch.export.export(model, (x,)))):
            graphs.append(convert_layer_graph(layer_graph, thresholds="max", calibration=x, maxpool=maxpool))
        ann = model(x) if maxpool == "error" else evaluate(prepare(layer_graph, maxpool=maxpool), x)
    assert_same_nir(*graphs)
    with torch.no_grad():
        err = (ann_view(graphs[0], x) - ann).abs().max().item()
    assert err < 1e-5 * max(1.0, ann.abs().max().item()), err


def test_a_concatenation_costs_no_more_than_its_consumer() -> None:
    """DenseNet: the consumer of a concatenation reads each branch through its own slice of the
    weight (no projection node): the file's weights are the model's, to within the IF layers the
    BatchNorm-ReLU pairs add per branch (each BatchNorm runs in its branch's channels)."""
    model, shape = zoo.densenet()
    graph = convert(model.double(), shape, thresholds="max", calibration=uniform_input(shape))
    model_convs = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    file_convs = sum(int(np.asarray(n.weight).size) for n in graph.nodes.values()
                     if isinstance(n, nir.Conv2d) and not (n.metadata or {}).get("bridge"))
    assert file_convs == model_convs
