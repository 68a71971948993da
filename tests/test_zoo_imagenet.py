"""The architecture zoo (tests/zoo_imagenet.py) through the converter, at tiny widths.

What converts today must keep converting with an exact ANN view (thresholds = the per-layer
max on the very inputs compared, so the view must equal the ANN to rounding); what does not
must be refused with a BridgeError (never another exception), so that the families a later
converter rule adds (concatenation, slicing, shuffle) turn these cases green without edits.
The full table, both front-ends: benchmarks/arch_coverage.py -> docs/model-families.md.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from bridge.converter import convert, convert_layer_graph, prepare, trace_module
from bridge.converter.aten_frontend import exported_to_layer_graph
from bridge.converter.ir_eval import evaluate
from bridge.format.errors import BridgeError
from bridge.reference import ann_view
from tests import zoo_imagenet as zoo

# name -> (builder, front-end, maxpool policy)
CONVERTS = {
    "ResNet-18": (lambda: zoo.resnet18(16, 64), "export", "avg"),  # module path: padded stem max pool refused
    "ResNet-34": (lambda: zoo.resnet34(16, 64), "export", "avg"),
    "ResNet-50": (lambda: zoo.resnet50(16, 64), "export", "avg"),
    "VGG-11-BN": (lambda: zoo.vgg11_bn(16, 224), "module", "avg"),
    "VGG-16-BN": (lambda: zoo.vgg16_bn(16, 224), "module", "avg"),
    "MobileNetV2": (lambda: zoo.mobilenet_v2(8, 32), "module", "error"),
    "AlexNet": (lambda: zoo.alexnet(16, 224), "module", "avg"),
    "MobileNet": (zoo.mobilenet_v1, "module", "error"),
    "PreAct-ResNet": (zoo.preact_resnet, "module", "error"),
    "RegNetX": (zoo.regnetx, "module", "error"),
}
NOT_YET = ["DenseNet-BC", "GoogLeNet", "ShuffleNetV2", "DLA", "DPN"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _inputs(shape: tuple[int, ...], n: int = 4) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("name", list(zoo.ALL))
def test_every_model_runs_and_has_its_published_structure(name: str) -> None:
    model, shape = zoo.ALL[name]()
    assert not model.training
    out = model.double()(_inputs(shape, 2))
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
def test_converts_with_an_exact_ann_view(name: str) -> None:
    build, path, maxpool = CONVERTS[name]
    model, shape = build()
    model = model.double()
    x = _inputs(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the maxpool='avg' replacement warns by design
        if path == "module":
            layer_graph = trace_module(model, shape)
        else:
            layer_graph = exported_to_layer_graph(torch.export.export(model, (x,)))
        graph = convert_layer_graph(layer_graph, thresholds="max", calibration=x, maxpool=maxpool)
        ann = model(x) if maxpool == "error" else evaluate(prepare(layer_graph, maxpool=maxpool), x)
    with torch.no_grad():
        err = (ann_view(graph, x) - ann).abs().max().item()
    assert err < 1e-5 * max(1.0, ann.abs().max().item()), err


@pytest.mark.parametrize("name", NOT_YET)
def test_other_families_are_refused_cleanly_or_convert_exactly(name: str) -> None:
    model, shape = zoo.ALL[name]()
    model = model.double()
    x = _inputs(shape)
    try:
        graph = convert(model, shape, thresholds="max", calibration=x)
    except BridgeError as e:
        assert "node" in str(e)  # names the node that is refused
        return
    with torch.no_grad():
        assert (ann_view(graph, x) - model(x)).abs().max().item() < 1e-5
