"""The QCFS authors' models (recipes/qcfs_models.py) convert as published: same NIR by both front-ends,
exact ANN views (the staircase the model was trained with), the staircase's L and shift in the metadata, and the SNN at T = L agrees with the
ANN on trained digits models (exactly for one layer; for the deep models with theta/2 as the
method promises in expectation, and closer still after bridge's initial-potential search)."""

from __future__ import annotations

import copy

import nir
import numpy as np
import pytest
import torch

import bridge
from bridge.converter import trace_module
from bridge.converter.ir_eval import evaluate
from bridge.format.extension import drop_qcfs_mark, qcfs_staircase
from bridge.format.inspect import inspect_graph, render
from bridge.reference import ann_view
from recipes import qcfs_models as qcfs_zoo
from tests import zoo
from tests.nir_compare import assert_same_nir

MODELS = {"vgg16": (qcfs_zoo.VGG16, (1, 32, 32)), "resnet18": (qcfs_zoo.ResNet18, (1, 16, 16)),
          "resnet20": (qcfs_zoo.ResNet20, (1, 16, 16))}
LEVELS = 4


def _model(name: str, act: str, seed: int = 5) -> tuple[torch.nn.Module, tuple[int, ...]]:
    cls, shape = MODELS[name]
    model = zoo._randomize(cls(act, levels=LEVELS), seed)
    return qcfs_zoo.set_bounds(model, seed), shape


def _out(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return copy.deepcopy(model).double().eval()(x)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("act", ["myfloor", "tcl"])
def test_authors_models_convert_by_both_paths_with_the_same_nir(name, act):
    model, shape = _model(name, act)
    program = torch.export.export(model, (torch.zeros(1, *shape),))
    graph = bridge.convert(model, shape)
    assert_same_nir(graph, bridge.convert(program))
    ifs = {k: n for k, n in graph.nodes.items() if isinstance(n, nir.IF)}
    bounds = [float(m.up) for m in model.modules() if isinstance(m, (qcfs_zoo.MyFloor, qcfs_zoo.TCL))]
    assert len(ifs) == len(bounds)  # one IF layer per activation module, named after it
    thetas = sorted(float(np.asarray(n.v_threshold).max()) for n in ifs.values())
    np.testing.assert_allclose(thetas, sorted(bounds), rtol=1e-7)  # float32 `up` read as the model has it
    x = zoo.sample_input(shape, 8) * 2
    if act == "tcl":
        assert all(qcfs_staircase(n) is None for n in ifs.values())
        torch.testing.assert_close(ann_view(graph, x), _out(model, x), rtol=0, atol=1e-5)
        return
    assert {qcfs_staircase(n) for n in ifs.values()} == {(LEVELS, 0.5)}
    # the staircase as the converter read it (a, L, shift) computes what the model computes
    torch.testing.assert_close(evaluate(trace_module(model, shape), x), _out(model, x), rtol=0, atol=1e-5)
    # the ANN view of a marked IF node is the staircase with the recorded L and shift: the model itself
    torch.testing.assert_close(ann_view(graph, x), _out(model, x), rtol=0, atol=1e-5)
    # not the clip with the same bounds (the TCL twin of the model), which is another network
    twin = MODELS[name][0]("tcl", levels=LEVELS)
    twin.load_state_dict(model.state_dict())
    assert (ann_view(graph, x) - _out(twin.eval(), x)).abs().max() > 1e-3
    # a mark dropped (what a pass that moves theta does): the view is the clip again
    unmarked = nir.NIRGraph(nodes={k: drop_qcfs_mark(n) for k, n in graph.nodes.items()},
                            edges=list(graph.edges), metadata=graph.metadata)
    assert all(qcfs_staircase(n) is None for n in unmarked.nodes.values())
    torch.testing.assert_close(ann_view(unmarked, x), _out(twin.eval(), x), rtol=0, atol=1e-5)


def test_inspect_shows_the_staircase():
    model, shape = _model("resnet20", "myfloor")
    info = inspect_graph(bridge.convert(model, shape))
    entries = [n for n in info["nodes"] if n["type"] == "IF"]
    assert entries and all((n["qcfs_levels"], n["qcfs_shift"]) == (LEVELS, 0.5) for n in entries)
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render(info))
    assert f"IF (QCFS L={LEVELS}, shift 0.5)" in console.export_text()


def test_snn_at_t_equals_l_reproduces_the_trained_qcfs_layer_exactly():
    """QCFS with theta/2: after T = L steps of a constant current the IF layer's rate is the
    staircase itself, so a trained model with one MyFloor layer gives the ANN's output exactly.
    (Deeper layers receive uneven spike trains, where T = L is only approximate: see the report.)"""
    from bridge.data.datasets import digits_split
    from bridge.model.train import train_model

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3), qcfs_zoo.MyFloor(2.0, LEVELS), torch.nn.Flatten(),
                                torch.nn.Linear(6 * 6 * 6, 10))
    split = digits_split(size=8)
    trained = train_model(model, split, epochs=3, lr=1e-2)
    assert trained.ann_accuracy > 0.8
    graph = bridge.convert(trained.model, (1, 8, 8))
    x = split.test_x.double()
    result = bridge.simulate(graph, x, steps=LEVELS)
    ann = _out(trained.model, x)
    torch.testing.assert_close(result.readout, ann, rtol=0, atol=1e-5)  # float32 weights in the file
    assert torch.equal(result.predictions(), ann.argmax(1))
    off = bridge.simulate(graph, x, steps=LEVELS + 1).readout  # T != L: not the staircase
    assert (off - ann).abs().max() > 1e-3


# Agreement of the SNN's predictions with the ANN's on the 360 test digits, measured by
# benchmarks/qcfs_t_equals_l.py over seeds 0-2 (docs/model-families.md): theta/2 at T = L
# VGG-16 0.42-0.98, ResNet-20 0.73-0.98 (seed 0 here: 0.98 / 0.93); at T = 4L 0.97-1.00;
# after the initial-potential search at T = L 0.986-0.994 on every seed (ResNet-18 too).
SEARCHED_AT_L = 0.97
THETA_HALF_AT_4L = 0.95


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg16", "resnet20"])
def test_trained_authors_models_at_t_equals_l_agree_with_the_ann(name):
    """The authors' VGG-16 / ResNet-20 trained on the digits (MyFloor, L = 4): both front-ends give
    the same NIR; with theta/2 the SNN's predictions agree with the ANN's more as T grows from L
    to 4L, and after bridge's initial-potential search at T = L (fitted on training digits) on
    almost every test digit."""
    from bridge.passes.optimize import optimize_initial_potentials

    trained, split, shape = qcfs_zoo.train_on_digits(name, seed=0, levels=LEVELS)
    assert trained.ann_accuracy > 0.95
    graph = bridge.convert(trained.model, shape)
    assert_same_nir(graph, bridge.convert(torch.export.export(trained.model, (split.test_x[:1],))))
    x = split.test_x.double()
    ann = _out(trained.model, x).argmax(1)

    def agreement(g: nir.NIRGraph, steps: int) -> float:
        return float((bridge.simulate(g, x, steps=steps).predictions() == ann).double().mean())

    at_l, at_4l = agreement(graph, LEVELS), agreement(graph, 4 * LEVELS)
    assert 0.35 < at_l <= at_4l  # theta/2: right in expectation, far above chance (0.1) at T = L
    assert at_4l >= THETA_HALF_AT_4L
    searched = optimize_initial_potentials(graph, split.train_x[:384].float(), LEVELS)
    at_l_searched = agreement(searched, LEVELS)
    # the search fits the clipped ReLU's rate, not the staircase: where theta/2 is already right
    # it may cost a digit (ResNet-18 seed 1 in the benchmark: 99.2% -> 98.9%)
    assert at_l_searched >= max(at_l - 0.01, SEARCHED_AT_L)
