"""The 1D models for MNIST-1D: shapes, activations by name, exact conversion; the MNIST-1D recipe."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from bridge.converter import convert
from bridge.data.mnist1d import INPUT_SHAPE, mnist1d_split
from bridge.model.activations import QCFS
from bridge.model.train import SignalCNN, SignalResNet
from bridge.reference import ann_view


@pytest.mark.parametrize("build", [lambda: SignalCNN("qcfs", levels=3), lambda: SignalCNN("relu"),
                                   lambda: SignalResNet("qcfs", levels=3), lambda: SignalResNet("relu")])
def test_1d_models_convert_exactly(build):
    """The graph's ANN view is the model (QCFS as its staircase, recorded in the IF metadata; ReLU
    thresholds at the calibration max, so nothing clips on those inputs)."""
    torch.manual_seed(0)
    model = build().eval()
    qcfs = [m for m in model.modules() if isinstance(m, QCFS)]
    assert all(q.levels == 3 for q in qcfs)
    x = mnist1d_split().train_x[:16]
    graph = convert(model, INPUT_SHAPE, calibration=x, thresholds="auto" if qcfs else "max")
    with torch.no_grad():
        want = copy.deepcopy(model).double()(x.double())
    torch.testing.assert_close(ann_view(graph, x.double()), want, rtol=1e-6, atol=1e-6)


def test_signal_resnet_has_identity_and_conv_shortcuts():
    model = SignalResNet("relu")
    assert isinstance(model.layer1.shortcut, nn.Identity)
    assert isinstance(model.layer2.shortcut, nn.Sequential)
    assert isinstance(model.layer2.conv1, nn.Conv1d)
    assert model(torch.zeros(2, 1, 40)).shape == (2, 10)


@pytest.mark.slow
def test_mnist1d_recipe_writes_files_that_bridge_exports_with_the_pipeline(tmp_path, capsys):
    from app.cli import main
    from recipes.train_mnist1d import main as recipe

    recipe(["--arch", "cnn", "--activation", "qcfs", "--levels", "4", "--epochs", "1",
            "--calibration-samples", "96", "--out", str(tmp_path / "run")])
    for name in ("weights.pt", "model.pt2", "calib.npy"):
        assert (tmp_path / "run" / name).is_file()
    assert np.load(tmp_path / "run" / "calib.npy").shape == (96, 1, 40)
    code = main(["export", str(tmp_path / "run" / "model.pt2"), "--calibration", str(tmp_path / "run" / "calib.npy"),
                 "--timesteps", "2", "--to", "nir", "-o", str(tmp_path / "m.nir")])
    out = capsys.readouterr().out
    assert code == 0 and "calibration for T=2: chose" in out
    assert (tmp_path / "m.nir").is_file()
