"""Converter: ANN view of the NIR graph == the model, NIR encoding, determinism, errors."""

from __future__ import annotations

import copy
import warnings

import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bridge.model.activations import ClippedReLU
from bridge.converter import convert, convert_layer_graph, prepare, trace_module
from bridge.converter.build import build_nir
from bridge.converter.ir_eval import evaluate
from bridge.converter.ir_eval import shapes as op_shapes
from bridge.converter.fx_frontend import BridgeTracer
from bridge.converter.ir import ActivationOp, BatchNormOp, ConvOp
from bridge.format.errors import BridgeError
from bridge.format.extension import NAMESPACE, V_INIT, graph_semantics, if_semantics
from bridge.format.nirio import read_graph, write_graph
from tests import zoo
from tests.nir_ann_view import ann_view


def _model_out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return copy.deepcopy(model).double().eval()(x)


def _assert_ann_view(graph: nir.NIRGraph, model: nn.Module, x: torch.Tensor) -> None:
    expected = _model_out(model, x)
    got = ann_view(graph, x)
    assert got.shape == expected.shape
    assert expected.abs().max() > 1e-2  # the comparison is not between two zero tensors
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def _roundtrip(graph: nir.NIRGraph, tmp_path, name: str = "g.nir") -> nir.NIRGraph:
    path = write_graph(graph, tmp_path / name)
    return read_graph(path)  # nir.read re-infers and type-checks the shapes


@pytest.mark.parametrize("builder", [zoo.mlp, zoo.vgg_bn, zoo.resnet_small])
def test_ann_view_matches_model_trained_thresholds(builder, tmp_path):
    model, shape = builder()
    x = zoo.sample_input(shape, 24)
    graph = _roundtrip(convert(model, shape), tmp_path)
    _assert_ann_view(graph, model, x)
    # the clipped activations really clip somewhere, so thresholds matter in this check
    ifs = [n for n in graph.nodes.values() if isinstance(n, nir.IF)]
    assert len(ifs) >= 2


@pytest.mark.parametrize("builder", [zoo.mlp, zoo.vgg_bn, zoo.resnet_small])
@pytest.mark.parametrize("channel_wise", [False, True])
def test_ann_view_matches_model_calibrated_max(builder, channel_wise, tmp_path):
    # With max thresholds taken on x itself, clip(z, 0, theta) == relu(z) on x: exact equality.
    model, shape = builder(act="relu")
    x = zoo.sample_input(shape, 24)
    graph = _roundtrip(convert(model, shape, thresholds="max", channel_wise=channel_wise, calibration=x), tmp_path)
    _assert_ann_view(graph, model, x)
    thetas = [np.asarray(n.v_threshold) for n in graph.nodes.values() if isinstance(n, nir.IF)]
    per_layer_distinct = [len(np.unique(t)) for t in thetas]
    if channel_wise:
        assert max(per_layer_distinct) > 1
    else:
        assert per_layer_distinct == [1] * len(thetas)


def test_grouped_strided_same_padding(tmp_path):
    model, shape = zoo.grouped_strided()
    x = zoo.sample_input(shape, 16)
    graph = _roundtrip(convert(model, shape, thresholds="max", calibration=x), tmp_path)
    _assert_ann_view(graph, model, x)
    convs = {k: n for k, n in graph.nodes.items() if isinstance(n, nir.Conv2d)}
    assert set(convs) == {"conv1", "conv2", "conv3"}
    assert tuple(convs["conv2"].padding) == (1, 1)  # 'same' with kernel 3
    assert all(n.groups == 1 for n in convs.values())  # grouped convs written block-diagonal
    w = np.asarray(convs["conv1"].weight)
    assert np.all(w[:4, 2:] == 0) and np.all(w[4:, :2] == 0)


def test_scale_nodes_for_paths_no_weight_can_absorb(tmp_path):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.act6 = nn.ReLU6()
            self.pool = nn.AdaptiveAvgPool2d(2)
            self.ident = nn.Identity()
            self.bn_feat = nn.BatchNorm1d(16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.act6(self.bn(self.conv(x)))
            a = F.hardtanh(F.avg_pool2d(a, 2), 0.0, 1.5)  # pool of spikes into an IF: Scale
            a = torch.relu(a)  # IF fed by an IF: Scale
            a = torch.add(a, a)  # x + x: one edge with factor 2
            a = self.ident(self.pool(a))  # adaptive pool 4x4 -> 2x2
            a = self.bn_feat(a.flatten(1))  # BN with nothing to fold into: diagonal Affine
            return a.clamp(0, 0.9)  # the output is an activation: Scale before Output

    model = zoo._randomize(Net(), 5)
    x = zoo.sample_input((1, 8, 8), 16)
    graph = _roundtrip(convert(model, (1, 8, 8), thresholds="max", calibration=x), tmp_path)
    _assert_ann_view(graph, model, x)
    scales = [k for k, n in graph.nodes.items() if isinstance(n, nir.Scale)]
    assert len(scales) >= 3
    assert isinstance(graph.nodes["bn_feat"], nir.Affine)
    w = np.asarray(graph.nodes["bn_feat"].weight)
    assert np.count_nonzero(w - np.diag(np.diag(w))) == 0


def test_conv1d_batchnorm_clamp_and_unfoldable_batchnorm(tmp_path):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn_in = nn.BatchNorm1d(2)  # first op: nothing to fold into -> 1x1 Conv1d
            self.conv = nn.Conv1d(2, 4, 3, stride=2, padding=1, dilation=2)
            self.bn = nn.BatchNorm1d(4)
            self.fc = nn.Linear(4 * 7, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn(self.conv(self.bn_in(x))).clamp(0, 1.25)
            return self.fc(torch.flatten(y, 1))

    model = zoo._randomize(Net(), 6)
    x = zoo.sample_input((2, 16), 16)
    graph = _roundtrip(convert(model, (2, 16)), tmp_path)
    _assert_ann_view(graph, model, x)
    assert isinstance(graph.nodes["bn_in"], nir.Conv1d)
    assert np.asarray(graph.nodes["clamp"].v_threshold).max() == 1.25


def test_batchnorm_not_folded_when_its_layer_has_another_consumer(tmp_path):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)
            self.act = ClippedReLU(1.0)
            self.fc = nn.Linear(3 * 36, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            y = self.act(self.bn(y) + y)
            return self.fc(y.flatten(1))

    model = zoo._randomize(Net(), 7)
    layers = prepare(trace_module(model, (1, 6, 6)))
    assert any(isinstance(op, BatchNormOp) for op in layers.ops.values())
    x = zoo.sample_input((1, 6, 6), 8)
    _assert_ann_view(_roundtrip(convert(model, (1, 6, 6)), tmp_path), model, x)
    vgg_layers = prepare(trace_module(*zoo.vgg_bn()))
    # every BN after a conv/linear is folded; only the one after the pool stays
    assert [op.name for op in vgg_layers.ops.values() if isinstance(op, BatchNormOp)] == ["features_7"]


def test_layer_graph_evaluator_matches_model():
    for builder in (zoo.mlp, zoo.vgg_bn, zoo.resnet_small, zoo.grouped_strided):
        model, shape = builder()
        x = zoo.sample_input(shape, 8)
        torch.testing.assert_close(evaluate(trace_module(model, shape), x), _model_out(model, x),
                                   rtol=0, atol=1e-10)


def test_encoding_names_and_metadata():
    model, shape = zoo.resnet_small()
    graph = convert(model, shape, timesteps=8)
    sem = graph_semantics(graph)
    assert sem.is_bridge and sem.version == "1.0" and sem.timesteps == 8
    assert isinstance(graph.nodes["input"], nir.Input) and isinstance(graph.nodes["output"], nir.Output)
    assert list(np.asarray(graph.nodes["input"].input_type["input"])) == [3, 8, 8]
    fx_names = {n.name for n in BridgeTracer().trace(model).nodes}
    assert {"conv1", "layer1_0_conv1", "layer2_0_shortcut_0", "fc"} <= set(graph.nodes)
    for name, node in graph.nodes.items():
        if isinstance(node, nir.IF):
            assert name in fx_names  # IF layers keep the activation's fx name
            s = if_semantics(node, name)
            assert s.reset == "subtract" and s.spike_condition == "ge"
            assert np.all(s.r == 1) and np.all(s.v_reset == 0)
            assert s.threshold.shape == s.v_init.shape
    # the identity shortcut of a block gets a Scale(theta) of the producing IF layer
    theta = np.asarray(graph.nodes["act1"].v_threshold)
    np.testing.assert_array_equal(np.asarray(graph.nodes["act1_scale"].scale), theta)
    assert ("act1_scale", "layer1_0_act2") in graph.edges and ("layer1_0_conv2", "layer1_0_act2") in graph.edges


def test_round_trip_type_checks_and_is_deterministic(tmp_path):
    graphs_a = zoo.zoo_graphs()
    graphs_b = zoo.zoo_graphs()
    assert set(graphs_a) >= {"mlp", "vgg_bn", "resnet_small", "grouped_strided", "vgg_bn_channel_wise"}
    for name in graphs_a:
        pa = write_graph(graphs_a[name], tmp_path / f"{name}_a.nir")
        pb = write_graph(graphs_b[name], tmp_path / f"{name}_b.nir")
        assert pa.read_bytes() == pb.read_bytes(), name
        back = nir.read(pa)
        assert set(back.nodes) == set(graphs_a[name].nodes)
        back_again = nir.NIRGraph(nodes=back.nodes, edges=back.edges, metadata=back.metadata, type_check=True)
        assert sorted(back_again.edges) == sorted(graphs_a[name].edges)


@pytest.mark.parametrize("v_init,fraction", [("half", 0.5), ("zero", 0.0), (0.25, 0.25), ("0.75", 0.75)])
def test_v_init_options(v_init, fraction, tmp_path):
    model, shape = zoo.vgg_bn()
    graph = _roundtrip(convert(model, shape, v_init=v_init), tmp_path)
    ifs = [(k, n) for k, n in graph.nodes.items() if isinstance(n, nir.IF)]
    assert ifs
    for name, node in ifs:
        v0 = np.asarray(node.metadata[NAMESPACE][V_INIT])
        np.testing.assert_allclose(v0, fraction * np.asarray(node.v_threshold), rtol=0, atol=0)
        assert if_semantics(node, name).v_init.shape == np.asarray(node.v_threshold).shape


@pytest.mark.parametrize("bad", ["optimized", "bogus", 1.0, -0.1, True, None])
def test_v_init_rejects(bad):
    model, shape = zoo.mlp()
    with pytest.raises(BridgeError) as err:
        convert(model, shape, v_init=bad)
    msg = str(err.value)
    assert "half" in msg and "zero" in msg
    if bad == "optimized":
        assert "bridge.passes.optimize" in msg


class _MaxPoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = ClippedReLU(1.0)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.act(self.conv(x))), 1))


def test_maxpool_error_and_avg_replacement():
    model = zoo._randomize(_MaxPoolNet(), 8)
    with pytest.raises(BridgeError, match=r"'pool'.*max of spike trains is not the max of their rates.*--maxpool avg"):
        convert(model, (1, 8, 8))
    with pytest.warns(UserWarning, match="accuracy changes"):
        graph = convert(model, (1, 8, 8), maxpool="avg")
    assert isinstance(graph.nodes["pool"], nir.AvgPool2d)
    avg = copy.deepcopy(model)
    avg.pool = nn.AvgPool2d(2)
    x = zoo.sample_input((1, 8, 8), 8)
    _assert_ann_view(graph, avg, x)


def test_unsupported_op_names_node_op_and_source_line():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.fc(x))  # the unsupported line

    with pytest.raises(BridgeError) as err:
        convert(Net(), (4,))
    msg = str(err.value)
    assert "'sigmoid'" in msg and "function sigmoid" in msg
    assert "test_converter.py:" in msg and "torch.sigmoid(self.fc(x))" in msg

    with pytest.raises(BridgeError, match=r"fx node 'act' \(module Tanh 'act'\)"):
        convert(_seq_tanh(), (4,))


def _seq_tanh() -> nn.Module:
    net = nn.Sequential()
    net.add_module("fc", nn.Linear(4, 4))
    net.add_module("act", nn.Tanh())
    return net


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize(
    "make,shape,pattern",
    [
        (lambda: _nan_model(), (4,), r"layer 'fc1'.*NaN or infinite.*weight"),
        (lambda: zoo.mlp()[0], (1, 9, 9), r"does not run on an input of shape \[1, 9, 9\].*--input-shape"),
        (lambda: zoo.mlp()[0], (0, 8), r"not a valid sample shape"),
        (lambda: zoo.mlp(act="relu")[0], (1, 8, 8), r"'act1'.*no trained bound.*calibration"),
        (lambda: nn.Sequential(nn.Conv2d(1, 2, 2, padding="same"), nn.ReLU()), (1, 4, 4), r"even kernel"),
        (lambda: _branchy(), (4,), r"cannot trace"),
        (lambda: nn.Sequential(nn.Linear(4, 4), nn.Hardtanh(-1.0, 1.0)), (4,), r"min=-1.0.*min=0"),
        (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(3)), (1, 7, 7), r"divides"),
    ],
)
def test_bad_input_raises_bridge_error(make, shape, pattern):
    with pytest.raises(BridgeError, match=pattern):
        convert(make(), shape)


def test_bad_options_raise_before_work():
    model, shape = zoo.mlp()
    for kwargs, pattern in [
        ({"thresholds": "p200"}, r"unknown threshold source 'p200'.*p99.9"),
        ({"thresholds": "median"}, r"unknown threshold source"),
        ({"maxpool": "min"}, r"unknown maxpool policy"),
        ({"timesteps": 0}, r"positive integer"),
    ]:
        with pytest.raises(BridgeError, match=pattern):
            convert(model, shape, **kwargs)


def _nan_model() -> nn.Module:
    net = nn.Sequential()
    net.add_module("fc1", nn.Linear(4, 4))
    net.add_module("act", ClippedReLU(1.0))
    net.add_module("fc2", nn.Linear(4, 2))
    with torch.no_grad():
        net.fc1.weight[0, 0] = float("nan")
    return net


def _branchy() -> nn.Module:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.fc(x)
            return x

    return Net()


def test_convert_layer_graph_is_the_same_conversion():
    model, shape = zoo.resnet_small()
    direct = convert(model, shape)
    via = convert_layer_graph(trace_module(model, shape))
    assert list(direct.nodes) == list(via.nodes) and direct.edges == via.edges
    for name in direct.nodes:
        if isinstance(direct.nodes[name], nir.Conv2d):
            np.testing.assert_array_equal(direct.nodes[name].weight, via.nodes[name].weight)


def test_model_ops_keep_inputs_untouched():
    model, shape = zoo.vgg_bn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    convert(model, shape)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(isinstance(op, ConvOp) for op in trace_module(model, shape).ops.values())


def test_silences_nothing():
    # conversion of a supported model emits no warning
    model, shape = zoo.resnet_small()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert(model, shape)


def test_functional_spellings(tmp_path):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(1, 4, 3, padding=1)
            self.c2 = nn.Conv2d(4, 4, 1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = F.avg_pool2d(F.relu6(self.c(x)), 2)
            a = self.c2(F.dropout(a, 0.5, training=False)).relu()
            a = torch.clip(self.c2(a), 0, 1.0)
            a = self.c2(a).clamp_min(0).contiguous()
            a = F.adaptive_avg_pool2d(a, 1)
            return self.fc(a.flatten(1))

    model = zoo._randomize(Net(), 12)
    x = zoo.sample_input((1, 8, 8), 8)
    graph = _roundtrip(convert(model, (1, 8, 8), thresholds="max", calibration=x), tmp_path)
    _assert_ann_view(graph, model, x)
    assert {k for k, n in graph.nodes.items() if isinstance(n, nir.IF)} == {"relu6", "relu", "clip", "clamp_min"}
    assert np.asarray(graph.nodes["relu6"].v_threshold).max() <= 6.0


def test_per_neuron_thresholds_get_scale_nodes_where_weights_cannot_absorb(tmp_path):
    """Thresholds that vary inside a channel: Scale in front of convs and pools, absorbed per feature."""
    model, shape = zoo.vgg_bn()
    layers = prepare(trace_module(model, shape))
    shapes = op_shapes(layers)
    rng = np.random.default_rng(0)
    theta = {op.name: rng.uniform(0.3, 1.5, shapes[op.name]) for op in layers.ops.values()
             if isinstance(op, ActivationOp)}
    graph = _roundtrip(build_nir(layers, theta), tmp_path)
    x = zoo.sample_input(shape, 8)
    expected = evaluate(layers, x, thresholds=theta)  # the ANN with clip(z, 0, theta) per neuron
    torch.testing.assert_close(ann_view(graph, x), expected, rtol=0, atol=1e-10)
    scales = {k for k, n in graph.nodes.items() if isinstance(n, nir.Scale)}
    # conv after an IF layer and the pools after IF layers need Scale; the flatten->linear path does not
    assert {"features_2_scale", "features_5_scale", "features_10_scale"} <= scales
    assert "act_fc_scale" not in scales


def test_reference_ann_view_agrees_with_the_test_evaluator():
    from bridge.reference.ann import ann_view as reference_ann_view

    for name, graph in zoo.zoo_graphs().items():
        shape = tuple(int(s) for s in graph.nodes["input"].input_type["input"])
        x = zoo.sample_input(shape, 4)
        torch.testing.assert_close(reference_ann_view(graph, x), ann_view(graph, x), rtol=0, atol=1e-12, msg=name)


class _GlobalMean(nn.Module):
    """conv -> clip -> conv -> relu6 -> global average by ``mean`` (spelling given) -> linear."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.act1 = ClippedReLU(1.5)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.c2(self.act1(self.c1(x))))
        if self.spelling == "method":
            y = y.mean(dim=(2, 3))
        elif self.spelling == "negative":
            y = y.mean((-2, -1))
        elif self.spelling == "function_keepdim":
            y = torch.mean(y, dim=[2, 3], keepdim=True).flatten(1)
        else:  # keepdim then the readout on the 4-d tensor flattened by view
            y = y.mean(dim=[3, 2], keepdim=True)
            y = y.view(y.size(0), -1)
        return self.fc(y)


@pytest.mark.parametrize("spelling", ["method", "negative", "function_keepdim", "method_keepdim_view"])
def test_global_mean_pooling_becomes_a_full_average_pool(spelling, tmp_path):
    model = zoo._randomize(_GlobalMean(spelling), 21)
    shape = (2, 6, 6)
    x = zoo.sample_input(shape, 12)
    graph = _roundtrip(convert(model, shape), tmp_path)
    _assert_ann_view(graph, model, x)
    pools = [n for n in graph.nodes.values() if isinstance(n, nir.AvgPool2d)]
    assert len(pools) == 1 and list(np.asarray(pools[0].kernel_size)) == [3, 3]  # 6x6 stride 2 -> 3x3
    assert list(np.asarray(graph.nodes["output"].output_type["output"])) == [3]


@pytest.mark.parametrize("spelling", ["method", "function_keepdim"])
def test_global_mean_pooling_through_torch_export(spelling, tmp_path):
    from bridge.converter.aten_frontend import exported_to_layer_graph

    model = zoo._randomize(_GlobalMean(spelling), 22).eval()
    shape = (2, 6, 6)
    ep = torch.export.export(model, (torch.zeros(1, *shape),))
    graph = _roundtrip(convert_layer_graph(exported_to_layer_graph(ep)), tmp_path)
    _assert_ann_view(graph, model, zoo.sample_input(shape, 12))
    assert sum(isinstance(n, nir.AvgPool2d) for n in graph.nodes.values()) == 1


@pytest.mark.parametrize("dims", [(1,), (1, 2, 3), (3,)])
def test_mean_over_other_dims_is_refused(dims):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(1, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.c(x)).mean(dim=dims)

    with pytest.raises(BridgeError, match=r"mean.*only the global average over the spatial dimensions"):
        convert(Net(), (1, 6, 6))


def test_wrong_input_shape_is_one_error_line_and_prints_nothing(capfd):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), ClippedReLU(1.0), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    with pytest.raises(BridgeError) as err:
        convert(model, (1, 32, 32))
    msg = str(err.value)
    assert "\n" not in msg and err.value.__cause__ is None and err.value.__suppress_context__
    assert "input of shape [1, 32, 32]" in msg  # given
    assert "layer '0' (Conv2d) expects input (batch, 3, H, W), got [2, 1, 32, 32]" in msg  # expected
    assert "--input-shape 3,H,W / input_shape=(3, H, W)" in msg  # the fix
    with pytest.raises(BridgeError, match=r"layer '3' \(Linear\) expects input \(batch, \.\.\., 3600\), "
                       r"got \[2, 784\].*--input-shape / input_shape="):
        convert(model, (3, 16, 16))
    with pytest.raises(BridgeError, match=r"--input-shape 8 / input_shape=\(8,\)"):
        convert(nn.Sequential(nn.Linear(8, 3), nn.ReLU()), (1, 9, 9))
    # an fx GraphModule as the model: fx's own error printing is held back too
    with pytest.raises(BridgeError, match=r"does not run on an input of shape \[7\]"):
        convert(torch.fx.symbolic_trace(nn.Sequential(nn.Linear(8, 3), nn.ReLU())), (7,))
    out, errout = capfd.readouterr()
    assert out == "" and errout == ""
