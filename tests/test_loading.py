"""Model loading (format from content) and the torch.export (ATen) front-end.

Real files on disk: torch.export programs, state_dicts, pickled modules and TorchScript
archives of the zoo models; the ATen front-end must give the same NIR graph as the
module-level (torch.fx) front-end.
"""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch
from torch import nn

from bridge.model.activations import QCFS, ClippedReLU
from bridge.converter import convert, convert_layer_graph
from bridge.converter.aten_frontend import exported_to_layer_graph
from bridge.converter.ir import ActivationOp, BatchNormOp, ConvOp, LinearOp
from bridge.format.errors import BridgeError
from bridge.model.loading import check_finite, detect_format, load_model
from tests import zoo
from tests.nir_compare import assert_same_nir

ZOO = {
    "mlp": (zoo.mlp, {}),
    "vgg_bn": (zoo.vgg_bn, {}),
    "resnet_small": (zoo.resnet_small, {}),
    "grouped_strided": (zoo.grouped_strided, {"thresholds": "max"}),
}


def _options(name: str, shape: tuple[int, ...]) -> dict:
    opts = dict(ZOO[name][1])
    if "thresholds" in opts:
        opts["calibration"] = zoo.sample_input(shape, 8)
    return opts


def _save_pt2(model: nn.Module, shape: tuple[int, ...], path, decompose: bool = False):
    ep = torch.export.export(model.eval(), (torch.zeros(1, *shape),))
    if decompose:  # the core ATen op set: convolution, addmm, native batch norm ...
        ep = ep.run_decompositions()
    torch.export.save(ep, path.with_suffix(".pt2"))
    path.with_suffix(".pt2").rename(path)  # any name: the format is read from the content
    return path


def assert_same_graph(a: nir.NIRGraph, b: nir.NIRGraph, atol: float = 1e-12) -> None:
    """Same node names, types, edges, and every weight/threshold/v_init to ``atol``."""
    assert_same_nir(a, b, atol, ordered=False)
    assert sum(isinstance(n, nir.IF) for n in a.nodes.values()) >= 2  # thresholds and v_init compared


@pytest.mark.parametrize("name", list(ZOO))
def test_pt2_converts_to_the_same_nir_as_the_module(name, tmp_path):
    model, shape = ZOO[name][0]()
    path = _save_pt2(model, shape, tmp_path / "model.bin")
    loaded = load_model(path)
    assert loaded.format == "export" and loaded.input_shape == shape
    direct = convert(model, shape, **_options(name, shape))
    via_aten = convert_layer_graph(exported_to_layer_graph(loaded.program), **_options(name, shape))
    assert_same_graph(direct, via_aten)


def test_decomposed_program_converts_to_the_same_nir(tmp_path):
    """Core-ATen programs (convolution, addmm, _native_batch_norm_legit_no_training)."""
    model, shape = zoo.vgg_bn()
    path = _save_pt2(model, shape, tmp_path / "m.pt2", decompose=True)
    ep = load_model(path).program
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "aten.convolution.default" in targets and "aten.addmm.default" in targets
    assert_same_graph(convert(model, shape), convert_layer_graph(exported_to_layer_graph(ep)))


class _Bounded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.clip = ClippedReLU(0.37)
        self.conv2 = nn.Conv2d(3, 3, 3)
        self.q = QCFS(1.9, levels=5)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.minimum(torch.relu(self.conv(x)), torch.tensor(0.8))  # generic clip
        y = self.q(self.conv2(self.clip(y)))
        return torch.clamp(self.fc(y.flatten(1)), 0, 2.5)


def test_bridge_activations_and_clip_forms_are_recognised():
    model = _Bounded().eval()
    with torch.no_grad():
        model.clip.raw_bound.fill_(-0.37)  # bound = |raw| + 1e-3 stays positive
    ep = torch.export.export(model, (torch.zeros(1, 1, 8, 8),))
    lg = exported_to_layer_graph(ep)
    acts = {op.name: op for op in lg.ops.values() if isinstance(op, ActivationOp)}
    assert acts["clip"].kind == "clip" and acts["clip"].bound == pytest.approx(0.371, abs=1e-7)
    assert acts["q"].kind == "qcfs" and acts["q"].levels == 5
    assert acts["q"].bound == pytest.approx(1.901, abs=1e-6)
    generic = [op for op in acts.values() if op.name not in ("clip", "q")]
    assert sorted(op.bound for op in generic) == pytest.approx([0.8, 2.5])
    assert all(op.kind == "clip" for op in generic)
    assert [type(op).__name__ for op in lg.ops.values()].count("ActivationOp") == 4
    conv = lg.ops["conv"]
    # the program's own weight, in its precision (no float64 copy: bridge.converter.ir)
    assert isinstance(conv, ConvOp) and conv.weight.dtype == torch.float32
    assert torch.equal(conv.weight, model.conv.weight.detach())


def test_unsupported_op_names_node_op_and_source_line():
    class Sig(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.fc(x))  # the line the error must point at

    ep = torch.export.export(Sig().eval(), (torch.zeros(1, 4),))
    with pytest.raises(BridgeError) as err:
        exported_to_layer_graph(ep)
    msg = str(err.value)
    assert "'sigmoid'" in msg and "aten.sigmoid" in msg
    assert "test_loading.py:" in msg and "torch.sigmoid(self.fc(x))" in msg
    assert "\n" not in msg


def test_training_mode_batchnorm_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU()).train()
    ep = torch.export.export(model, (torch.zeros(2, 1, 5, 5),))
    with pytest.raises(BridgeError, match="model.eval"):
        exported_to_layer_graph(ep)


def test_format_is_detected_from_content_not_name(tmp_path):
    model, shape = zoo.mlp()
    pt2 = _save_pt2(model, shape, tmp_path / "looks_like.npy")
    sd = tmp_path / "weights.pt2"
    torch.save(model.state_dict(), sd)
    ts = tmp_path / "script.pth"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, *shape)), ts)
    text = tmp_path / "model.pt"
    text.write_text("not a model\n")
    np.save(tmp_path / "arr.npy", np.zeros(3))
    assert detect_format(pt2) == "export"
    assert detect_format(sd) == "torch_save"
    assert detect_format(ts) == "torchscript"
    assert detect_format(text) is None
    assert detect_format(tmp_path / "arr.npy") is None
    with pytest.raises(BridgeError, match="not a model file"):
        load_model(text)
    with pytest.raises(BridgeError, match="no such file"):
        load_model(tmp_path / "missing.pt2")


def test_state_dict_needs_a_matching_architecture(tmp_path):
    model, shape = zoo.vgg_bn()
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(BridgeError, match="--arch package.module:factory"):
        load_model(path)
    loaded = load_model(path, arch="tests.zoo:vgg_bn")
    assert loaded.format == "state_dict" and loaded.input_shape == shape
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[k], v)
    assert_same_graph(convert(model, shape), convert(loaded.module, shape))
    # a checkpoint dict that nests the state_dict is accepted too
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, tmp_path / "ckpt.pt")
    assert load_model(tmp_path / "ckpt.pt", arch="tests.zoo:VGGBN").input_shape is None
    with pytest.raises(BridgeError, match="do not fit --arch tests.zoo:mlp: missing"):
        load_model(path, arch="tests.zoo:mlp")
    with pytest.raises(BridgeError, match="cannot import 'tests.no_such_module'"):
        load_model(path, arch="tests.no_such_module:vgg_bn")
    with pytest.raises(BridgeError, match="has no attribute 'nope'"):
        load_model(path, arch="tests.zoo:nope")
    with pytest.raises(BridgeError, match="package.module:factory"):
        load_model(path, arch="tests.zoo.vgg_bn")
    with pytest.raises(BridgeError, match="must build the model without arguments"):
        load_model(path, arch="tests.zoo:sample_input")  # needs an argument
    with pytest.raises(BridgeError, match="returned OrderedDict; it must return an nn.Module"):
        load_model(path, arch="collections:OrderedDict")


def test_pickled_module_needs_trust(tmp_path):
    model, shape = zoo.resnet_small()
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(BridgeError) as err:
        load_model(path)
    msg = str(err.value)
    assert "arbitrary code" in msg and "--trust-pickle" in msg and "tests.zoo.ResNetSmall" in msg
    loaded = load_model(path, trust_pickle=True)
    assert loaded.format == "pickle" and not loaded.module.training
    assert_same_graph(convert(model, shape), convert(loaded.module, shape))


def test_torchscript_goes_through_torch_export(tmp_path):
    model, shape = zoo.mlp()
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, *shape)), path)
    loaded = load_model(path)
    assert loaded.format == "torchscript" and loaded.input_shape is None
    program = loaded.exported_program(shape)
    graph = convert_layer_graph(exported_to_layer_graph(program))
    direct = convert(model, shape)
    # TorchScript loses the module structure: same layers and weights, ATen node names;
    # the clip bound is folded from |raw| + 1e-3 (a float32 constant): equal to 1e-6
    assert [type(n).__name__ for n in graph.nodes.values()].count("IF") == 2
    theta = sorted(float(n.v_threshold.max()) for n in graph.nodes.values() if isinstance(n, nir.IF))
    expected = sorted(float(n.v_threshold.max()) for n in direct.nodes.values() if isinstance(n, nir.IF))
    assert theta == pytest.approx(expected, abs=1e-6)
    w = sorted(np.asarray(n.weight).sum() for n in graph.nodes.values() if isinstance(n, nir.Affine))
    w0 = sorted(np.asarray(n.weight).sum() for n in direct.nodes.values() if isinstance(n, nir.Affine))
    assert w == pytest.approx(w0, abs=1e-9)


def test_non_finite_weights_are_refused():
    model, _ = zoo.mlp()
    state = model.state_dict()
    check_finite(state, "m")  # finite: passes
    state["fc2.weight"][0, 0] = float("nan")
    with pytest.raises(BridgeError, match="'fc2.weight' has 1 NaN/inf"):
        check_finite(state, "m")


def test_linear_and_batchnorm_ops_read_from_the_state_dict():
    model, shape = zoo.vgg_bn()
    ep = torch.export.export(model, (torch.zeros(1, *shape),))
    lg = exported_to_layer_graph(ep)
    bn = lg.ops["bn_fc"]
    assert isinstance(bn, BatchNormOp) and bn.inputs == ["fc1"]
    assert torch.equal(bn.var, model.bn_fc.running_var)  # the statistics as the model has them
    fc = lg.ops["fc2"]
    assert isinstance(fc, LinearOp) and fc.inputs == ["act_fc"]  # dropout removed


def test_torchscript_that_pytorch_cannot_convert_says_how_to_resave(tmp_path, monkeypatch):
    import torch._export.converter as ts_converter

    model, shape = zoo.mlp()
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, *shape)), path)

    class Failing:  # stands in for a script PyTorch's converter does not support
        def __init__(self, *args, **kwargs) -> None:
            pass

        def convert(self):
            raise RuntimeError("Unsupported node kind prim::Uninitialized\nmore detail")

    monkeypatch.setattr(ts_converter, "TS2EPConverter", Failing)
    with pytest.raises(BridgeError) as err:
        load_model(path).exported_program(shape)
    msg = str(err.value)
    assert "prim::Uninitialized" in msg and "torch.export.save(torch.export.export(" in msg
    assert "\n" not in msg
