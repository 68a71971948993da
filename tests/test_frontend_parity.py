"""The two front-ends accept the same models and give the same NIR graph.

Every case runs through torch.fx (the ``nn.Module``) and through the ATen front-end (the
``torch.export`` program of the same module): both must refuse it, with the reason the case
names, or both must accept it and give the same graph (node names, types, edges, every array
to 1e-12, the IF metadata).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import nir
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bridge
from bridge.format.errors import BridgeError
from recipes import qcfs_models as qcfs_zoo
from tests import zoo
from tests.nir_compare import assert_same_nir


class Fn(nn.Module):
    """``conv -> f(x) -> flatten -> linear`` with the element-wise part ``f`` given as a function,
    and ``extra`` submodules / buffers it may use."""

    def __init__(self, f: Callable, cin: int = 1, cout: int = 3, size: int = 6, extra: dict | None = None,
                 pre: Callable | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.f, self.pre = f, pre
        for name, value in (extra or {}).items():
            if isinstance(value, nn.Module):
                self.add_module(name, value)
            else:
                self.register_buffer(name, value)
        with torch.no_grad():
            out = self.f(self, (pre or (lambda m, x: x))(self, torch.zeros(1, cout, size, size)))
        self.fc = nn.Linear(out[0].numel(), 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.pre is not None:
            y = self.pre(self, y)
        return self.fc(torch.flatten(self.f(self, y), 1))


def tcl(up: float) -> qcfs_zoo.TCL:
    """The QCFS authors' trainable clip (recipes/qcfs_models.py) with its bound set to ``up``."""
    act = qcfs_zoo.TCL()
    with torch.no_grad():
        act.up.fill_(up)
    return act


class Sigmoidal(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x) * 2.0


def seq(*layers: nn.Module) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(*layers)


def fn(f: Callable, **kw) -> Callable[[], nn.Module]:  # noqa: ANN003
    return lambda: Fn(f, **kw)


def _bounds(c: int = 3) -> torch.Tensor:
    return torch.linspace(0.6, 1.4, c).reshape(c, 1, 1)


ACCEPT = None
S6 = (1, 6, 6)
# (case id, model factory, input shape, options, None = accepted / regex of the refusal)
CASES: list[tuple[str, Callable[[], nn.Module], tuple[int, ...], dict, str | None]] = [
    ("relu module", fn(lambda m, x: m.act(x), extra={"act": nn.ReLU()}), S6, {"thresholds": "max"}, ACCEPT),
    ("relu then relu6: two IF layers", fn(lambda m, x: F.relu6(torch.relu(x))), S6, {"thresholds": "max"}, ACCEPT),
    ("in-place relu", fn(lambda m, x: F.relu(x, inplace=True)), S6, {"thresholds": "max"}, ACCEPT),
    ("clamp_max(relu(x), c)", fn(lambda m, x: torch.clamp_max(torch.relu(x), 0.8)), S6, {}, ACCEPT),
    ("minimum(relu(x), tensor)", fn(lambda m, x: torch.minimum(torch.relu(x), torch.tensor(0.7))), S6, {}, ACCEPT),
    ("clamp(0, a)", fn(lambda m, x: x.clamp(0, 1.25)), S6, {}, ACCEPT),
    ("hardtanh(0, a)", fn(lambda m, x: F.hardtanh(x, 0.0, 2.0)), S6, {}, ACCEPT),
    ("per-channel clip (buffer)", fn(lambda m, x: torch.minimum(x.relu(), m.b), extra={"b": _bounds()}), S6, {},
     ACCEPT),
    ("bridge ClippedReLU", fn(lambda m, x: m.act(x), extra={"act": bridge.ClippedReLU(0.9)}), S6, {}, ACCEPT),
    ("bridge QCFS", fn(lambda m, x: m.act(x), extra={"act": bridge.QCFS(1.3, levels=4)}), S6, {}, ACCEPT),
    ("authors' TCL", fn(lambda m, x: m.act(x), extra={"act": tcl(1.5)}), S6, {}, ACCEPT),
    ("authors' MyFloor", fn(lambda m, x: m.act(x), extra={"act": qcfs_zoo.MyFloor(2.0, 4)}), S6, {}, ACCEPT),
    ("per-channel QCFS", fn(lambda m, x: (torch.floor(x.clamp(min=0) * 4 / m.b + 0.5).clamp(0, 4)) * m.b / 4,
                            extra={"b": _bounds()}), S6, {}, ACCEPT),
    ("round staircase", fn(lambda m, x: torch.round((x * 3 / 1.5).clamp(0, 3)) * 0.5), S6, {}, ACCEPT),
    ("dropout inside a chain", fn(lambda m, x: F.dropout(x.relu(), 0.5, False).clamp(max=1.0)), S6, {}, ACCEPT),
    ("lower clip -1", fn(lambda m, x: F.hardtanh(x)), S6, {}, r"lower clip at -1 \(IF neurons clip at min=0\)"),
    ("scaled activation", fn(lambda m, x: torch.relu(x) * 2.0), S6, {"thresholds": "max"}, r"scales its input by 2"),
    ("shifted activation", fn(lambda m, x: torch.relu(x) - 0.5), S6, {"thresholds": "max"}, r"shifts its input by -0.5"),
    ("min without relu", fn(lambda m, x: torch.clamp_max(x, 1.0)), S6, {}, r"upper clip without a lower clip"),
    ("floor shift 0.3", fn(lambda m, x: torch.floor((x * 4).clamp(0, 4) + 0.3) / 4), S6, {}, r"shift 0.3"),
    ("staircase without clip", fn(lambda m, x: torch.floor(x * 4 + 0.5) / 4), S6, {}, r"without a positive upper bound"),
    ("bound from the input", fn(lambda m, x: torch.minimum(x.relu(), x)), S6, {},
     r"minimum/maximum of two tensors computed from the input"),
    ("product of activations", fn(lambda m, x: x.relu() * x.relu()), S6, {}, r"mul of two tensors"),
    ("activation module with an unsupported op", fn(lambda m, x: m.act(x), extra={"act": Sigmoidal()}), S6, {},
     r"not a clipped ReLU.*activation module Sigmoidal 'act'.*bridge.ClippedReLU.*bridge.QCFS"
     r".*set_submodule\('act'"),
    ("AvgPool2d(padding=1)", seq(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2, padding=1), nn.Flatten(),
                                 nn.Linear(2 * 3 * 3, 3)), (1, 6, 6), {"thresholds": "max"}, ACCEPT),
    ("AvgPool2d count_include_pad=False", seq(nn.Conv2d(1, 2, 3), nn.ReLU(),
                                              nn.AvgPool2d(3, 1, padding=1, count_include_pad=False), nn.Flatten(),
                                              nn.Linear(2 * 4 * 4, 3)), (1, 6, 6), {"thresholds": "max"},
     ACCEPT),
    ("AvgPool2d divisor_override", seq(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2, divisor_override=3),
                                       nn.Flatten(), nn.Linear(2 * 2 * 2, 3)), (1, 6, 6), {"thresholds": "max"},
     ACCEPT),
    ("AvgPool2d ceil_mode, same size", seq(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2, ceil_mode=True),
                                           nn.Flatten(), nn.Linear(2 * 2 * 2, 3)), (1, 6, 6),
     {"thresholds": "max"}, ACCEPT),
    ("AvgPool2d ceil_mode, larger output", seq(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2, ceil_mode=True),
                                               nn.Flatten(), nn.Linear(2 * 3 * 3, 3)), (1, 7, 7),
     {"thresholds": "max"}, ACCEPT),
    ("MaxPool2d ceil_mode, maxpool avg", seq(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                                             nn.Flatten(), nn.Linear(2 * 3 * 3, 3)), (1, 8, 8),
     {"thresholds": "max", "maxpool": "avg"}, ACCEPT),
    ("MaxPool2d refused by default", seq(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                         nn.Linear(2 * 2 * 2, 3)), (1, 6, 6), {"thresholds": "max"},
     r"max of spike trains is not the max of their rates"),
    ("MaxPool2d(padding=1), maxpool avg", seq(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
                                              nn.Flatten(), nn.Linear(2 * 2 * 2, 3)), (1, 6, 6),
     {"thresholds": "max", "maxpool": "avg"}, ACCEPT),
    ("MaxPool2d dilation", seq(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2, dilation=2), nn.Flatten(),
                               nn.Linear(2 * 1 * 1, 3)), (1, 6, 6), {"thresholds": "max", "maxpool": "avg"},
     r"dilation"),
    ("adaptive pool that divides", seq(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3),
                                       nn.Flatten(), nn.Linear(18, 3)), (1, 6, 6), {"thresholds": "max"}, ACCEPT),
    ("adaptive pool that does not divide", seq(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(3),
                                               nn.Flatten(), nn.Linear(18, 3)), (1, 6, 6), {"thresholds": "max"},
     ACCEPT),
    ("adaptive pool with overlapping windows, then a conv", seq(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(3),
                                                               nn.Conv2d(2, 2, 1), nn.Flatten(), nn.Linear(18, 3)),
     (1, 7, 7), {"thresholds": "max"}, r"windows of different sizes"),
    ("ResNet stem: 7x7/2 conv, padded 3x3/2 max pool, maxpool avg",
     seq(nn.Conv2d(1, 4, 7, 2, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
         nn.Flatten(), nn.Linear(4 * 4 * 4, 3)), (1, 16, 16), {"thresholds": "max", "maxpool": "avg"}, ACCEPT),
    ("global mean", fn(lambda m, x: x.relu().mean((2, 3))), S6, {"thresholds": "max"}, ACCEPT),
    ("mean over channels", fn(lambda m, x: x.relu().mean(1)), S6, {"thresholds": "max"},
     r"only the global average over the spatial dimensions"),
    ("reshape keeping channels, then flatten", fn(lambda m, x: x.relu().reshape(x.shape[0], 3, -1)), S6,
     {"thresholds": "max"}, ACCEPT),
    ("reshape mixing channels and positions", fn(lambda m, x: m.c2(x.relu().reshape(x.shape[0], 6, 3, 6)),
                                                 extra={"c2": nn.Conv2d(6, 2, 1)}), S6, {"thresholds": "max"},
     r"not a fixed map of whole channels"),
    ("reshape folding the batch", fn(lambda m, x: x.relu().reshape(-1, 6, 6)), S6, {"thresholds": "max"},
     r"changes the batch dimension"),
    # concatenation, slices, shuffles: fixed channel maps
    ("cat of two branches", fn(lambda m, x: torch.cat([x.relu(), m.c2(x).relu()], 1), extra={"c2": nn.Conv2d(3, 2, 1)}),
     S6, {"thresholds": "max"}, ACCEPT),
    ("cat then BatchNorm, relu, conv (dense block)",
     fn(lambda m, x: m.c3(m.bn(torch.cat([x, m.c2(x.relu())], 1)).relu()),
        extra={"c2": nn.Conv2d(3, 2, 3, padding=1), "bn": nn.BatchNorm2d(5), "c3": nn.Conv2d(5, 2, 1)}),
     S6, {"thresholds": "max"}, ACCEPT),
    ("cat along the width", fn(lambda m, x: torch.cat([x.relu(), x.relu()], 3)), S6, {"thresholds": "max"},
     r"concatenation along dimension 3"),
    ("cat of flat features", fn(lambda m, x: torch.cat([x.relu().flatten(1), m.c2(x).relu().flatten(1)], 1),
                                extra={"c2": nn.Conv2d(3, 1, 1)}), S6, {"thresholds": "max"}, ACCEPT),
    ("channel slice x[:, 1:]", fn(lambda m, x: m.c2(x.relu()[:, 1:]), extra={"c2": nn.Conv2d(2, 2, 1)}), S6,
     {"thresholds": "max"}, ACCEPT),
    ("slice then relu", fn(lambda m, x: x[:, 1:].relu()), S6, {"thresholds": "max"}, ACCEPT),
    ("chunk, reordered, cat", fn(lambda m, x: (lambda c: torch.cat([c[2], c[0], c[1]], 1))(x.relu().chunk(3, 1))), S6,
     {"thresholds": "max"}, ACCEPT),
    ("split with sizes", fn(lambda m, x: m.c2(torch.split(x.relu(), [1, 2], 1)[1]), extra={"c2": nn.Conv2d(2, 2, 1)}),
     S6, {"thresholds": "max"}, ACCEPT),
    ("narrow", fn(lambda m, x: x.relu().narrow(1, 1, 2)), S6, {"thresholds": "max"}, ACCEPT),
    ("channel shuffle (view-transpose-view)",
     fn(lambda m, x: m.c2(x.relu().view(x.shape[0], 2, 2, 6, 6).transpose(1, 2).reshape(x.shape[0], 4, 6, 6)),
        cout=4, extra={"c2": nn.Conv2d(4, 2, 3, padding=1, groups=2)}), S6, {"thresholds": "max"}, ACCEPT),
    ("shuffle then depthwise conv", fn(lambda m, x: m.dw(torch.cat([x.relu(), m.c2(x).relu()], 1)
                                                         .view(x.shape[0], 2, 2, 6, 6).transpose(1, 2)
                                                         .reshape(x.shape[0], 4, 6, 6)),
                                       cout=2, extra={"c2": nn.Conv2d(2, 2, 1), "dw": nn.Conv2d(4, 4, 3, groups=4)}),
     S6, {"thresholds": "max"}, ACCEPT),
    ("dual path: slices added and concatenated, then relu",
     fn(lambda m, x: (lambda y: torch.cat([x[:, :1] + y[:, :1], x[:, 1:], y[:, 1:]], 1).relu())(m.c2(x)),
        extra={"c2": nn.Conv2d(3, 2, 1)}), S6, {"thresholds": "max"}, ACCEPT),
    ("slice of a spatial axis", fn(lambda m, x: m.c2(x.relu()[:, :, 1:]), extra={"c2": nn.Conv2d(3, 2, 1)}), S6,
     {"thresholds": "max"}, r"not a fixed map of whole channels"),
    ("slice of the batch", fn(lambda m, x: x.relu()[:1]), S6, {"thresholds": "max"}, r"slice of the batch"),
    ("conv padding='same'", seq(nn.Conv2d(1, 2, 3, padding="same"), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3)),
     (1, 6, 6), {"thresholds": "max"}, ACCEPT),
    ("conv padding='same', even kernel", seq(nn.Conv2d(1, 2, 2, padding="same"), nn.ReLU(), nn.Flatten(),
                                             nn.Linear(72, 3)), (1, 6, 6), {"thresholds": "max"}, r"even kernel"),
    ("grouped strided conv", seq(nn.Conv2d(2, 4, 3, stride=2, groups=2), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(4 * 2 * 2, 3)), (2, 6, 6), {"thresholds": "max"}, ACCEPT),
    ("BatchNorm with nothing to fold into", seq(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2), nn.Flatten(),
                                                nn.Linear(32, 3)), (1, 6, 6), {"thresholds": "max"}, ACCEPT),
    ("residual add", fn(lambda m, x: x.relu() + m.c2(x.relu()), extra={"c2": nn.Conv2d(3, 3, 1)}), S6,
     {"thresholds": "max"}, ACCEPT),
    ("sigmoid", fn(lambda m, x: torch.sigmoid(x)), S6, {}, r"not a clipped ReLU.*S-curve"),
    ("SiLU", fn(lambda m, x: F.silu(x)), S6, {}, r"'silu'.*not a clipped ReLU.*negative for x < 0"),
    ("GELU module", fn(lambda m, x: m.act(x), extra={"act": nn.GELU()}), S6, {}, r"gelu.*not a clipped ReLU.*GELU"),
    ("SE gating", fn(lambda m, x: x.relu() * torch.sigmoid(m.fc1(x.relu().mean((2, 3)))).unsqueeze(-1).unsqueeze(-1),
                     extra={"fc1": nn.Linear(3, 3)}), S6, {"thresholds": "max"}, r"sigmoid.*not a clipped ReLU"),
    # normalisation layers get a normalisation layer's fix (BatchNorm or remove it), not an activation's
    ("LayerNorm", fn(lambda m, x: m.ln(x).relu(), extra={"ln": nn.LayerNorm([3, 6, 6])}), S6, {"thresholds": "max"},
     r"^(?!.*(replace it by ReLU|clipped ReLU)).*a LayerNorm subtracts each sample's own mean and divides by its "
     r"own standard deviation.*; use BatchNorm instead of the LayerNorm .*folds it.* or remove the normalisation"),
    ("GroupNorm", fn(lambda m, x: m.gn(x).relu(), extra={"gn": nn.GroupNorm(1, 3)}), S6, {"thresholds": "max"},
     r"^(?!.*replace it by ReLU).*a GroupNorm subtracts.*; use BatchNorm instead of the GroupNorm"),
    ("InstanceNorm", fn(lambda m, x: m.inorm(x).relu(), extra={"inorm": nn.InstanceNorm2d(3)}), S6,
     {"thresholds": "max"}, r"^(?!.*replace it by ReLU).*an InstanceNorm subtracts.*; use BatchNorm instead of the"),
    ("RMSNorm", fn(lambda m, x: m.rms(x.flatten(1)).relu(), extra={"rms": nn.RMSNorm(108)}), S6,
     {"thresholds": "max"}, r"^(?!.*replace it by ReLU).*an RMSNorm divides each sample.*; use BatchNorm instead"),
    ("softmax at the end", fn(lambda m, x: torch.softmax(x.relu().flatten(1), 1)), S6, {"thresholds": "max"},
     r"^(?!.*replace it by ReLU).*softmax divides by a sum.*; remove the softmax from the model: the predicted "
     r"class \(argmax\) is the same"),
    ("leaky relu 0.1", fn(lambda m, x: F.leaky_relu(x, 0.1)), S6, {}, r"leaky_relu.*not a clipped ReLU"),
    ("leaky relu, slope 0", fn(lambda m, x: m.act(x), extra={"act": nn.LeakyReLU(0.0)}), S6, {"thresholds": "max"},
     ACCEPT),
]


def _graphs(make: Callable[[], nn.Module], shape: tuple[int, ...], options: dict):
    """(fx result, ATen result): a NIR graph or the BridgeError, for one model."""
    model = zoo._randomize(make(), 7)
    program = torch.export.export(model, (torch.zeros(2, *shape),))
    opts = dict(options)
    if opts.get("thresholds") == "max":
        opts["calibration"] = zoo.sample_input(shape, 8)
    out = []
    for source in (model, program):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the maxpool='avg' warning
                out.append(bridge.convert(source, shape if source is model else None, **opts))
        except BridgeError as exc:
            out.append(exc)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_both_front_ends_give_the_same_verdict_and_graph(case):
    _, make, shape, options, refusal = case
    via_fx, via_aten = _graphs(make, shape, options)
    if refusal is None:
        assert isinstance(via_fx, nir.NIRGraph), via_fx
        assert isinstance(via_aten, nir.NIRGraph), via_aten
        assert_same_nir(via_fx, via_aten)
        assert any(isinstance(n, nir.IF) for n in via_fx.nodes.values())
    else:
        for result in (via_fx, via_aten):
            assert isinstance(result, BridgeError), f"accepted, expected a refusal matching {refusal!r}"
            assert "\n" not in str(result)
            assert __import__("re").search(refusal, str(result)), str(result)


def test_the_table_covers_both_verdicts():
    accepted = sum(c[4] is None for c in CASES)
    assert accepted >= 20 and len(CASES) - accepted >= 15


def test_convert_reads_a_pt2_file_and_an_exported_program(tmp_path):
    model, shape = zoo.vgg_bn()
    program = torch.export.export(model, (torch.zeros(1, *shape),))
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    direct = bridge.convert(model, shape)
    assert_same_nir(direct, bridge.convert(program))
    assert_same_nir(direct, bridge.convert(path))
    assert_same_nir(direct, bridge.convert(str(path), shape))
    with pytest.raises(BridgeError, match=r"exported for input shape \[1, 16, 16\], not \[1, 8, 8\]"):
        bridge.convert(path, (1, 8, 8))
    with pytest.raises(BridgeError, match="input shape of the model is unknown"):
        bridge.convert(model)


def test_options_object_is_checked_once_and_shared():
    from bridge.converter import ConversionOptions, convert

    model, shape = zoo.mlp()
    opts = ConversionOptions(v_init="zero", timesteps=4)
    graph = convert(model, shape, options=opts)  # the converter alone records any T it is given
    assert graph.metadata["bridge"]["timesteps"] == 4
    # a keyword overrides the options object
    assert convert(model, shape, options=opts, timesteps=8).metadata["bridge"]["timesteps"] == 8
    # bridge.convert runs the plan, which refuses a T that nothing fits (no calibration data)
    with pytest.raises(BridgeError, match="the T a calibration fits"):
        bridge.convert(model, shape, options=opts)
    assert "timesteps" not in bridge.convert(model, shape, options=ConversionOptions(v_init="zero")).metadata["bridge"]
    for bad, pattern in [({"thresholds": "p0"}, r"unknown threshold source 'p0' \(--thresholds / thresholds=\)"),
                         ({"v_init": 1.5}, r"outside \[0, 1\) \(--v-init / v_init=\)"),
                         ({"maxpool": "min"}, r"unknown maxpool policy 'min' \(--maxpool / maxpool=\)"),
                         ({"timesteps": 0}, r"positive integer"),
                         ({"channel_wise": "yes"}, r"channel_wise must be True or False")]:
        with pytest.raises(BridgeError, match=pattern):
            ConversionOptions(**bad)
