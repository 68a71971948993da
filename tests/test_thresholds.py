"""Threshold sources: trained bounds, max / percentiles on calibration data, errors."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bridge.model.activations import QCFS, ClippedReLU
from bridge.converter import convert, prepare, trace_module
from bridge.converter.calibration import TopK
from bridge.converter.thresholds import compute_thresholds
from bridge.format.errors import BridgeError
from tests import zoo


def _if_thresholds(graph: nir.NIRGraph) -> dict[str, np.ndarray]:
    return {k: np.asarray(n.v_threshold) for k, n in graph.nodes.items() if isinstance(n, nir.IF)}


def _pre_activations(model: nn.Module, x: torch.Tensor, kinds=(nn.ReLU,)) -> dict[str, np.ndarray]:
    """z of every activation module of the float64 model, by hooks (independent of bridge)."""
    import copy

    model = copy.deepcopy(model).double().eval()
    out: dict[str, np.ndarray] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: out.__setitem__(name, i[0].numpy().copy()))
             for name, m in model.named_modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return {name.replace(".", "_"): z for name, z in out.items()}


def test_thresholds_equal_trained_bounds():
    for builder in (zoo.mlp, zoo.vgg_bn, zoo.resnet_small):
        model, shape = builder()
        thetas = _if_thresholds(convert(model, shape))
        bounds = {name.replace(".", "_"): float(m.bound.detach().double()) for name, m in model.named_modules()
                  if isinstance(m, ClippedReLU)}
        assert set(thetas) == set(bounds)
        assert len(set(bounds.values())) == len(bounds)  # each layer has its own bound
        for name, theta in thetas.items():
            np.testing.assert_allclose(theta, bounds[name], rtol=1e-6)
            assert np.all(theta == theta.flat[0])
        # channel_wise does not change trained thresholds
        cw = _if_thresholds(convert(model, shape, channel_wise=True, thresholds="trained"))
        for name in thetas:
            np.testing.assert_array_equal(cw[name], thetas[name])


def test_fixed_bounds_of_relu6_hardtanh_clamp_and_qcfs():
    net = nn.Sequential()
    net.add_module("fc1", nn.Linear(4, 5))
    net.add_module("r6", nn.ReLU6())
    net.add_module("fc2", nn.Linear(5, 5))
    net.add_module("ht", nn.Hardtanh(0.0, 2.5))
    net.add_module("fc3", nn.Linear(5, 5))
    net.add_module("q", QCFS(1.75, levels=4))
    net.add_module("fc4", nn.Linear(5, 2))
    thetas = _if_thresholds(convert(net, (4,), thresholds="trained"))
    assert {k: float(v[0]) for k, v in thetas.items()} == pytest.approx({"r6": 6.0, "ht": 2.5, "q": 1.75 + 1e-3})


@pytest.mark.parametrize("source,q", [("max", 1.0), ("p99.9", 0.999), ("p90", 0.9), ("p99.99", 0.9999)])
@pytest.mark.parametrize("channel_wise", [False, True])
def test_calibrated_thresholds_equal_numpy_quantiles(source, q, channel_wise):
    model, shape = zoo.vgg_bn(act="relu")
    x = zoo.sample_input(shape, 40)
    zs = _pre_activations(model, x)
    # uneven batches through a DataLoader give the same numbers as numpy on everything at once
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=7)
    thetas = _if_thresholds(convert(model, shape, thresholds=source, channel_wise=channel_wise, calibration=loader))
    assert set(thetas) == set(zs)
    for name, z in zs.items():
        a = np.maximum(z, 0.0)
        if channel_wise:
            per_c = a.swapaxes(0, 1).reshape(a.shape[1], -1)
            expected = np.quantile(per_c, q, axis=1)
            expected = np.where(expected > 0, expected, expected.max())
            expected = expected.reshape((-1,) + (1,) * (z.ndim - 2))
        else:
            expected = np.quantile(a, q)
        np.testing.assert_allclose(thetas[name], np.broadcast_to(expected, z.shape[1:]), rtol=1e-12, atol=1e-12)


def test_auto_uses_p99_99_for_unbounded_and_bounds_elsewhere():
    net = nn.Sequential()
    net.add_module("fc1", nn.Linear(6, 8))
    net.add_module("relu", nn.ReLU())
    net.add_module("fc2", nn.Linear(8, 8))
    net.add_module("clip", ClippedReLU(0.6))
    net.add_module("fc3", nn.Linear(8, 2))
    net = zoo._randomize(net, 3)
    x = zoo.sample_input((6,), 300)
    thetas = _if_thresholds(convert(net, (6,), calibration=x))
    z = _pre_activations(net, x)["relu"]
    np.testing.assert_allclose(thetas["relu"], np.quantile(np.maximum(z, 0), 0.9999), rtol=1e-12)
    bound = float(net.clip.raw_bound.detach().double().abs() + net.clip.min_bound)  # as the float64 model
    np.testing.assert_array_equal(thetas["clip"], bound)
    # max on a bounded activation never exceeds its bound
    maxed = _if_thresholds(convert(net, (6,), thresholds="max", calibration=x))
    assert 0 < maxed["clip"].max() <= bound


def test_calibration_formats_agree():
    model, shape = zoo.grouped_strided()
    x = zoo.sample_input(shape, 20).float()
    as_tensor = _if_thresholds(convert(model, shape, thresholds="p99", calibration=x))
    as_numpy = _if_thresholds(convert(model, shape, thresholds="p99", calibration=x.numpy()))
    as_list = _if_thresholds(convert(model, shape, thresholds="p99", calibration=[x[:3], x[3:11], x[11:]]))
    as_pairs = _if_thresholds(convert(model, shape, thresholds="p99", calibration=[(x[:10], 0), (x[10:], 1)]))
    for other in (as_numpy, as_list, as_pairs):
        for name in as_tensor:
            np.testing.assert_allclose(other[name], as_tensor[name], rtol=1e-12)


def test_topk_streaming_quantile_matches_numpy():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((3, 5000)) ** 3
    for q in (1.0, 0.9999, 0.999, 0.9, 0.5, 0.0):
        topk = TopK(3, 5000, q)
        for chunk in np.array_split(data, 13, axis=1):
            topk.update(chunk)
        np.testing.assert_allclose(topk.result(), np.quantile(data, q, axis=1), rtol=1e-12)
        assert topk.buffer.shape[1] == min(topk.k, 5000)


def test_percentile_beyond_torch_quantile_limit():
    """More than 2^24 activations in one layer: torch.quantile refuses, bridge is exact."""
    net = nn.Sequential()
    net.add_module("fc1", nn.Linear(4, 256))
    net.add_module("relu", nn.ReLU())
    net.add_module("fc2", nn.Linear(256, 2))
    net = zoo._randomize(net, 4)
    n = 65_600
    assert n * 256 > 2**24
    x = zoo.sample_input((4,), n, seed=9)
    z = _pre_activations(net, x)["relu"]
    a = np.maximum(z, 0.0)
    with pytest.raises(RuntimeError):
        torch.quantile(torch.from_numpy(a).reshape(-1), 0.999)
    theta = compute_thresholds(prepare(trace_module(net, (4,))), "p99.9", calibration=x)["relu"]
    np.testing.assert_allclose(theta, np.quantile(a, 0.999), rtol=1e-12)
    del z, a


def test_dead_channel_takes_the_layer_threshold():
    net = nn.Sequential()
    net.add_module("conv", nn.Conv2d(1, 3, 3))
    net.add_module("relu", nn.ReLU())
    net.add_module("flat", nn.Flatten())
    net.add_module("fc", nn.Linear(3 * 16, 2))
    net = zoo._randomize(net, 11)
    with torch.no_grad():
        net.conv.weight[1] = 0.0
        net.conv.bias[1] = -1.0  # channel 1 never fires
    x = zoo.sample_input((1, 6, 6), 10)
    theta = _if_thresholds(convert(net, (1, 6, 6), thresholds="max", channel_wise=True, calibration=x))["relu"]
    assert theta[1].max() == max(theta[0].max(), theta[2].max()) > 0


def _dead_net() -> nn.Module:
    net = nn.Sequential()
    net.add_module("fc1", nn.Linear(4, 4))
    net.add_module("dead", nn.ReLU())
    net.add_module("fc2", nn.Linear(4, 2))
    with torch.no_grad():
        net.fc1.weight.zero_()
        net.fc1.bias.fill_(-1.0)
    return net


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"model": _dead_net, "thresholds": "max"}, r"layer 'dead'.*never activates.*threshold would be 0"),
        ({"thresholds": "trained"}, r"activation 'relu'.*no trained bound"),
        ({"thresholds": "max", "calibration": None}, r"need calibration.*--calibration"),
        ({"thresholds": "max", "calibration": torch.zeros(5, 3)}, r"calibration batch has shape \[5, 3\].*\(batch, 4\)"),
        ({"thresholds": "max", "calibration": torch.zeros(0, 4)}, r"calibration data is empty"),
        ({"thresholds": "max", "calibration": "digits.npy"}, r"not understood"),
        ({"thresholds": "p0"}, r"unknown threshold source"),
    ],
)
def test_threshold_errors(kwargs, pattern):
    kwargs = dict(kwargs)
    make = kwargs.pop("model", None)
    if make is None:
        net = nn.Sequential()
        net.add_module("fc1", nn.Linear(4, 4))
        net.add_module("relu", nn.ReLU())
        net.add_module("fc2", nn.Linear(4, 2))
    else:
        net = make()
    kwargs.setdefault("calibration", zoo.sample_input((4,), 8))
    with pytest.raises(BridgeError, match=pattern):
        convert(net, (4,), **kwargs)


@pytest.mark.parametrize("channel_wise", [False, True])
def test_float32_calibration_agrees_with_float64(channel_wise):
    """Float32 data runs the calibration in float32: the same thresholds up to float32 rounding."""
    from bridge.converter.calibration import compute_dtype

    model, shape = zoo.resnet_small(act="relu")
    x64 = zoo.sample_input(shape, 100)  # > one chunk of CALIBRATION_BATCH
    x32 = x64.float()
    assert compute_dtype([x32]) == torch.float32 and compute_dtype([x64]) == torch.float64
    assert compute_dtype([x64, x32]) == torch.float32
    for source in ("max", "p99"):
        t64 = _if_thresholds(convert(model, shape, thresholds=source, channel_wise=channel_wise, calibration=x64))
        t32 = _if_thresholds(convert(model, shape, thresholds=source, channel_wise=channel_wise,
                                     calibration=DataLoader(TensorDataset(x32), batch_size=33)))
        assert set(t32) == set(t64) and len(t64) >= 3
        for name in t64:
            assert t32[name].dtype == np.float64
            np.testing.assert_allclose(t32[name], t64[name], rtol=2e-5, atol=0)


def test_evaluation_frees_each_activation_after_its_last_use():
    """Calibration memory: no pre-activation of an earlier layer is alive when the next is recorded."""
    import weakref

    from bridge.converter.ir_eval import evaluate

    model, shape = zoo.vgg_bn(act="relu")
    layers = prepare(trace_module(model, shape))
    refs: list[weakref.ref] = []
    alive: list[int] = []

    def record(op, z, a):  # noqa: ANN001, ANN202
        alive.append(sum(r() is not None for r in refs))
        refs.append(weakref.ref(z))

    evaluate(layers, zoo.sample_input(shape, 4), record=record)
    assert len(alive) >= 3 and max(alive) == 0
