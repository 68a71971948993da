"""The conversion rules: pools exactly as torch defines them, activations by the function computed."""

from __future__ import annotations

import copy
import warnings

import nir
import numpy as np
import pytest
import torch
from torch import nn

import bridge
from bridge.converter.pointwise import ChainError, Step, recognise
from bridge.format.errors import BridgeError
from bridge.reference import ann_view
from tests import zoo


def _pool_net(pool: nn.Module, size: int) -> nn.Module:
    with torch.no_grad():
        n = pool(torch.zeros(1, 3, size - 2, size - 2)).numel()
    return zoo._randomize(nn.Sequential(nn.Conv2d(1, 3, 3), bridge.ClippedReLU(1.2), pool, nn.Flatten(),
                                        nn.Linear(n, 4)), 3)


POOLS = [
    ("padding", nn.AvgPool2d(3, 2, padding=1), 9),
    ("count_include_pad=False", nn.AvgPool2d(3, 1, padding=1, count_include_pad=False), 8),
    ("divisor_override", nn.AvgPool2d(2, divisor_override=3), 8),
    ("ceil_mode adds a window", nn.AvgPool2d(2, ceil_mode=True), 9),
    ("ceil_mode, stride 2, kernel 3", nn.AvgPool2d(3, 2, ceil_mode=True), 10),
    ("ceil_mode with padding, no pad count", nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False), 10),
    ("ceil_mode, divisor_override", nn.AvgPool2d((2, 3), (2, 2), ceil_mode=True, divisor_override=5), 9),
]


@pytest.mark.parametrize("pool,size", [p[1:] for p in POOLS], ids=[p[0] for p in POOLS])
def test_average_pools_convert_exactly_as_torch_defines_them(pool, size):
    model = _pool_net(pool, size)
    x = zoo.sample_input((1, size, size), 6)
    for source in (model, torch.export.export(model, (torch.zeros(1, 1, size, size),))):
        graph = bridge.convert(source, (1, size, size) if source is model else None, weights="float64")
        with torch.no_grad():
            expected = copy.deepcopy(model).double()(x)
        torch.testing.assert_close(ann_view(graph, x), expected, rtol=0, atol=1e-10)


def test_maxpool_with_ceil_mode_is_replaced_like_any_max_pool():
    """SqueezeNet's MaxPool2d(3, 2, ceil_mode=True) under --maxpool avg: AvgPool2d with the same
    kernel, stride and ceil_mode (the partial last window averages what it covers)."""
    model = _pool_net(nn.MaxPool2d(3, 2, ceil_mode=True), 10)
    with pytest.raises(BridgeError, match="--maxpool avg"):
        bridge.convert(model, (1, 10, 10))
    with pytest.warns(UserWarning, match="accuracy changes"):
        graph = bridge.convert(model, (1, 10, 10), maxpool="avg", weights="float64")
    avg = copy.deepcopy(model)
    avg[2] = nn.AvgPool2d(3, 2, ceil_mode=True)
    x = zoo.sample_input((1, 10, 10), 6)
    with torch.no_grad():
        expected = avg.double()(x)
    torch.testing.assert_close(ann_view(graph, x), expected, rtol=0, atol=1e-10)
    # the windows are a conv (ceil_mode); the divisor of the partial window is absorbed by the linear layer
    assert isinstance(graph.nodes["_2_windows"], nir.Conv2d) and "_2" not in graph.nodes


def _steps(*spec) -> list[Step]:  # noqa: ANN002
    out = []
    for item in spec:
        kind, *vals = item if isinstance(item, tuple) else (item,)
        if kind == "clamp":
            lo, hi = vals
            out.append(Step("clamp", lo=None if lo is None else np.array(lo), hi=None if hi is None else np.array(hi)))
        else:
            out.append(Step(kind, np.array(vals[0]) if vals else None))
    return out


def test_clipped_relu_spellings():
    up = 1.7
    tcl = recognise(_steps("relu", ("rsub", up), "relu", ("rsub", up)))  # the QCFS authors' TCL
    assert (tcl.kind, tcl.bound) == ("clip", up)
    assert recognise(_steps("relu", ("min", 0.5))).bound == 0.5
    assert recognise(_steps(("clamp", 0.0, None), ("clamp", None, 3.0))).bound == 3.0
    assert recognise(_steps(("max", 0.0))).kind == "relu"
    norm = recognise(_steps(("div", up), ("clamp", 0.0, 1.0), ("mul", up)))  # normalised clip
    assert norm.kind == "clip" and norm.bound == pytest.approx(up, rel=1e-15)
    per_channel = recognise(_steps("relu", ("min", [0.5, 1.0, 2.0])))
    np.testing.assert_array_equal(per_channel.bound, [0.5, 1.0, 2.0])
    assert recognise(_steps(("mul", 2.0), ("div", 2.0))).kind == "identity"


@pytest.mark.parametrize("order", ["clamp first", "floor first", "bridge QCFS", "round"])
def test_qcfs_staircase_spellings(order):
    up, t = 2.5, 8
    spellings = {
        # the authors' MyFloor: x / up, clamp [0, 1], floor(x t + 0.5) / t, * up
        "clamp first": _steps(("div", up), ("clamp", 0.0, 1.0), ("mul", t), ("add", 0.5), "floor", ("div", t),
                              ("mul", up)),
        "floor first": _steps(("div", up), ("mul", t), ("add", 0.5), "floor", ("div", t), ("clamp", 0.0, 1.0),
                              ("mul", up)),
        "bridge QCFS": _steps(("mul", t), ("div", up), ("add", 0.5), "floor", ("clamp", 0.0, t), ("mul", up),
                              ("div", t)),
        "round": _steps(("mul", t / up), "round", ("clamp", 0.0, t), ("mul", up / t)),
    }
    found = recognise(spellings[order])
    assert (found.kind, found.levels, found.shift) == ("qcfs", t, 0.5)
    assert found.bound == pytest.approx(up, rel=1e-12)
    z = torch.linspace(-1, 4, 1001, dtype=torch.float64)
    ann = torch.clamp(torch.floor(z * t / up + 0.5), 0, t) * up / t
    ours = torch.clamp(torch.floor(z * found.levels / found.bound + found.shift), 0, found.levels) \
        * found.bound / found.levels
    torch.testing.assert_close(ours, ann, rtol=0, atol=1e-12)
    floor_only = recognise(_steps(("mul", t / up), "floor", ("clamp", 0.0, t), ("mul", up / t)))
    assert (floor_only.kind, floor_only.shift) == ("qcfs", 0.0)


@pytest.mark.parametrize("spec,pattern", [
    ((("mul", 2.0), "relu"), r"scales its input by 2"),
    (("relu", ("add", 0.1)), r"shifts its input by 0.1"),
    ((("clamp", None, 1.0),), r"upper clip without a lower clip"),
    ((("clamp", -1.0, 1.0),), r"lower clip at -1"),
    ((("mul", 4.0), ("add", 0.3), "floor", ("clamp", 0.0, 4.0), ("div", 4.0)), r"shift 0.3"),
    ((("mul", 4.0), ("add", 0.5), "floor", ("clamp", 0.0, 4.0), ("div", 3.0)), r"input scale"),
    ((("mul", 4.0), ("add", 0.5), "floor", ("clamp", 0.0, 4.5), ("div", 4.0)), r"4.5 steps"),
    ((("mul", 4.0), "floor", "floor", ("clamp", 0.0, 4.0)), r"two roundings"),
    ((("mul", -1.0), "floor", ("clamp", 0.0, 4.0)), r"decreasing"),
    ((("mul", 4.0), ("add", 0.5), "floor", ("div", 4.0)), r"without a positive upper bound"),
])
def test_look_alikes_are_refused_with_the_reason(spec, pattern):
    with pytest.raises(ChainError, match=pattern):
        recognise(_steps(*spec))


def test_a_model_clip_that_only_looks_constant_is_refused():
    class InputBound(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x)
            return torch.minimum(torch.relu(y), y.detach().abs().max())  # a bound computed from the data

    with pytest.raises(BridgeError, match="not constant at inference|two tensors|no spiking equivalent"):
        bridge.convert(InputBound(), (4,))


def test_per_channel_bound_becomes_per_channel_thresholds():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3)
            self.register_buffer("bound", torch.tensor([0.5, 1.0, 1.5]).reshape(1, 3, 1, 1))
            self.fc = nn.Linear(3 * 4 * 4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.clamp(self.conv(x), min=torch.zeros(()), max=self.bound).flatten(1))

    model = zoo._randomize(Net(), 4)
    graph = bridge.convert(model, (1, 6, 6), weights="float64")
    (name,) = [k for k, n in graph.nodes.items() if isinstance(n, nir.IF)]
    theta = np.asarray(graph.nodes[name].v_threshold)
    np.testing.assert_array_equal(theta[:, 0, 0], [0.5, 1.0, 1.5])
    x = zoo.sample_input((1, 6, 6), 5)
    with torch.no_grad(), warnings.catch_warnings():
        expected = copy.deepcopy(model).double()(x)
    torch.testing.assert_close(ann_view(graph, x), expected, rtol=0, atol=1e-10)


def test_weights_are_written_in_the_models_precision():
    model, shape = zoo.vgg_bn()
    x = zoo.sample_input(shape, 8)
    by_default, wide = bridge.convert(model, shape), bridge.convert(model, shape, weights="float64")
    for name, node in by_default.nodes.items():
        if isinstance(node, (nir.Conv2d, nir.Affine)):
            assert node.weight.dtype == np.float32 and node.bias.dtype == np.float32, name
            assert wide.nodes[name].weight.dtype == np.float64
            np.testing.assert_allclose(node.weight, wide.nodes[name].weight, rtol=1e-7, atol=1e-8)
        if isinstance(node, nir.IF):  # thresholds and initial potentials stay float64
            assert np.asarray(node.v_threshold).dtype == np.float64
    with torch.no_grad():
        expected = copy.deepcopy(model).double()(x)
    torch.testing.assert_close(ann_view(by_default, x), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(ann_view(wide, x), expected, rtol=0, atol=1e-10)
    assert bridge.convert(copy.deepcopy(model).double(), shape).nodes["fc2"].weight.dtype == np.float64


def test_export_weights_flag(tmp_path, capsys):
    from app.cli import main

    model, shape = zoo.mlp()
    program = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, *shape),)), program)
    for flag, dtype in (([], np.float32), (["--weights", "float64"], np.float64)):
        out = tmp_path / f"m{len(flag)}.nir"
        assert main(["export", str(program), "--to", "nir", "-o", str(out), *flag]) == 0, capsys.readouterr().err
        assert bridge.read_graph(out).nodes["fc1"].weight.dtype == dtype
    assert main(["export", str(program), "--to", "nir", "-o", str(tmp_path / "x.nir"), "--weights", "half"]) == 2
