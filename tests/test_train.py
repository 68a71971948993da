"""Training loops, the demo's models and the CIFAR recipes (on a tiny synthetic CIFAR)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bridge.model.activations import QCFS, ClippedReLU
from bridge.data.datasets import digits_split
from bridge.model.train import DigitsCNN, DigitsResNet, accuracy, make_activation, train_model


def test_activation_factory_builds_each_kind_and_refuses_others():
    assert isinstance(make_activation("clip"), ClippedReLU)
    q = make_activation("qcfs", levels=3)
    assert isinstance(q, QCFS) and q.levels == 3
    assert isinstance(make_activation("relu"), nn.ReLU)
    with pytest.raises(ValueError, match="unknown activation"):
        make_activation("gelu")


@pytest.mark.parametrize("kind", ["clip", "qcfs", "relu"])
def test_cnn_uses_the_chosen_activation_and_avg_pooling(kind):
    model = DigitsCNN(kind)
    acts = [m for m in model.modules() if isinstance(m, (ClippedReLU, QCFS, nn.ReLU))]
    assert len(acts) == 3 and all(type(a) is type(make_activation(kind)) for a in acts)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)


def test_resnet_has_identity_and_conv_shortcuts():
    model = DigitsResNet()
    assert isinstance(model.layer1.shortcut, nn.Identity)
    assert isinstance(model.layer2.shortcut, nn.Sequential)
    assert model(torch.zeros(3, 1, 16, 16)).shape == (3, 10)


def test_training_is_seeded_deterministic_and_learns():
    split = digits_split(0)
    calls = []
    a = train_model(DigitsCNN("clip", channels=(4, 8), hidden=16), split, epochs=3, seed=1,
                    progress=lambda d, n: calls.append((d, n)))
    b = train_model(DigitsCNN("clip", channels=(4, 8), hidden=16), split, epochs=3, seed=1)
    c = train_model(DigitsCNN("clip", channels=(4, 8), hidden=16), split, epochs=3, seed=2)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert a.ann_accuracy > 0.85  # 10 classes: chance is 0.1
    assert a.ann_accuracy == accuracy(a.model, split.test_x, split.test_y)
    assert not a.model.training


def test_sgd_option_trains_too():
    split = digits_split(1)
    r = train_model(DigitsCNN("relu", channels=(4, 8), hidden=16), split, epochs=3, lr=0.05,
                    seed=0, optimizer="sgd")
    assert r.ann_accuracy > 0.6


@pytest.mark.parametrize("arch", ["vgg16", "resnet20", "resnet18"])
def test_cifar_recipe_runs_on_synthetic_cifar_and_its_model_converts(tmp_path, arch):
    import nir

    from app.cli import main
    from recipes.train_cifar import main as train_main
    from recipes.models import ARCHS

    out = tmp_path / "run"
    acc = train_main(["--arch", arch, "--synthetic", str(tmp_path / "data"), "--epochs", "1",
                      "--max-batches", "2", "--batch-size", "16", "--width", "0.0625",
                      "--device", "cpu", "--out", str(out)])
    assert 0.0 <= acc <= 1.0
    assert (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").is_file()
    # the state_dict loads into the recipe's architecture, every activation is a ClippedReLU
    model, shape = ARCHS[arch](width=0.0625)
    model.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    assert shape == (3, 32, 32)
    assert not any(isinstance(m, (nn.ReLU, nn.MaxPool2d)) for m in model.modules())
    assert any(isinstance(m, ClippedReLU) for m in model.modules())
    # and the exported program converts with bridge
    code = main(["export", str(out / "model.pt2"), "--to", "nir", "-o", str(tmp_path / "m.nir")])
    assert code == 0
    graph = nir.read(tmp_path / "m.nir")
    assert any(isinstance(n, nir.IF) for n in graph.nodes.values())
