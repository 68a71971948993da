"""The MNIST-1D family of benchmarks/family_bench.py: every member is what the issue asks for
and converts exactly (the ANN view of its graph is the model), untrained, in a second."""

from __future__ import annotations

import torch

from bridge.converter import convert
from bridge.data.mnist1d import INPUT_SHAPE, mnist1d_split
from bridge.model.activations import QCFS, ClippedReLU
from bridge.reference import ann_view
from recipes.mnist1d_family import FAMILY, build


def test_the_family_covers_the_issues_axes():
    assert len(FAMILY) >= 12 and len({s.name for s in FAMILY}) == len(FAMILY)
    assert {s.width for s in FAMILY} <= set(range(16, 65)) and {16, 64} <= {s.width for s in FAMILY}
    cnn_depths = {s.depth for s in FAMILY if s.kind == "cnn"}
    assert min(cnn_depths) == 2 and max(cnn_depths) == 6
    assert {s.kind for s in FAMILY} == {"cnn", "res"} and {s.batchnorm for s in FAMILY} == {True, False}
    assert {s.activation for s in FAMILY} == {"relu", "clip-fixed", "clip", "qcfs"}
    assert {s.levels for s in FAMILY if s.activation == "qcfs"} == {2, 4, 8}


def test_every_member_has_its_activation_and_converts_exactly():
    torch.manual_seed(0)
    x = mnist1d_split().train_x[:16]
    for spec in FAMILY:
        model = build(spec)
        acts = [m for m in model.modules() if isinstance(m, (torch.nn.ReLU, ClippedReLU, QCFS))]
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d) and m.kernel_size[0] > 1]
        if spec.kind == "cnn":
            assert len(convs) == spec.depth, spec.name
        if spec.activation == "qcfs":
            assert all(isinstance(a, QCFS) and a.levels == spec.levels for a in acts), spec.name
        elif spec.activation.startswith("clip"):
            assert all(type(a) is ClippedReLU for a in acts), spec.name
            assert all(a.raw_bound.requires_grad == (spec.activation == "clip") for a in acts), spec.name
        else:
            assert all(type(a) is torch.nn.ReLU for a in acts), spec.name
        if spec.activation == "qcfs":
            continue  # the ANN view of a QCFS layer is its clip limit, not the staircase (issue #18 item 6)
        graph = convert(model, INPUT_SHAPE, calibration=x, channel_wise=True)
        if spec.activation == "relu":
            continue  # calibrated thresholds clip the largest activations: not the model's output
        with torch.no_grad():
            torch.testing.assert_close(ann_view(graph, x.double()).float(), model(x), rtol=1e-4, atol=1e-4)
