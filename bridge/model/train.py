"""Small CNNs for the 16x16 digits and MNIST-1D, and a seeded, deterministic training loop.

The models are what ``bridge demo`` trains and converts: a two-conv CNN whose activation
is chosen by name (``clip``: :class:`~bridge.model.activations.ClippedReLU`, ``qcfs``:
:class:`~bridge.model.activations.QCFS`, ``relu``: plain ReLU, the baseline that SpikingJelly's
ann2snn converts too) and a small residual network with clipped ReLUs. Pooling is average
pooling, because a max of spikes is not a max of rates (the converter refuses max-pooling).

Training is plain cross-entropy with Adam, mini-batches drawn from a seeded generator, so
the same seed gives the same weights on the same machine and thread count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from bridge.model.activations import QCFS, ClippedReLU
from bridge.data.datasets import Split

ActivationName = Literal["clip", "qcfs", "relu"]
ACTIVATIONS: tuple[str, ...] = ("clip", "qcfs", "relu")


def make_activation(kind: str, *, bound: float = 2.0, levels: int = 4) -> nn.Module:
    """The activation factory: ``clip`` (trainable bound), ``qcfs`` (``levels`` steps), ``relu``.

    A starting bound of 2 suits digits in [0, 1]; it is trained with the weights.
    """
    if kind == "clip":
        return ClippedReLU(bound)
    if kind == "qcfs":
        return QCFS(bound, levels=levels)
    if kind == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {kind!r}; choose one of {', '.join(ACTIVATIONS)}")


class DigitsCNN(nn.Module):
    """conv(1->c1, 3x3)-act-avgpool-conv(c1->c2, 3x3)-act-avgpool-fc(hidden)-act-fc(10).

    Input ``(B, 1, 16, 16)``; BatchNorm after each conv when ``batchnorm`` (the converter
    folds it into the conv).
    """

    def __init__(self, activation: str = "clip", *, channels: tuple[int, int] = (16, 32),
                 hidden: int = 64, batchnorm: bool = True, levels: int = 4,
                 classes: int = 10, size: int = 16) -> None:
        super().__init__()
        c1, c2 = channels
        act = lambda: make_activation(activation, levels=levels)  # noqa: E731
        bn = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), bn(c1), act(), nn.AvgPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), bn(c2), act(), nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * (size // 4) ** 2, hidden), act(), nn.Linear(hidden, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: act(x + bn(conv(act(bn(conv(x)))))), 1x1-conv shortcut on a change of shape.

    ``dims`` = 2 (images, Conv2d) or 1 (signals, Conv1d); ``levels``: QCFS steps.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, activation: str = "clip", *,
                 dims: int = 2, levels: int = 4) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        self.conv1 = conv(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(cout)
        self.act1 = make_activation(activation, levels=levels)
        self.conv2 = conv(cout, cout, 3, padding=1, bias=False)
        self.bn2 = norm(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride=stride, bias=False), norm(cout))
        self.act2 = make_activation(activation, levels=levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class DigitsResNet(nn.Module):
    """A small ResNet for digits: stem conv, an identity block, a strided 1x1-shortcut block, pool, fc."""

    def __init__(self, activation: str = "clip", *, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
            make_activation(activation),
        )
        self.layer1 = BasicBlock(width, width, 1, activation)
        self.layer2 = BasicBlock(width, 2 * width, 2, activation)
        self.pool = nn.AvgPool2d(8)  # 16x16 -> 8x8 after layer2 -> 1x1
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class SignalCNN(nn.Module):
    """A 1D CNN for MNIST-1D signals ``(B, 1, 40)``: strided convolutions instead of pooling.

    conv(1->c, k5)-BN-act, then ``depth`` x [conv(c->c, k3, stride 2)-BN-act] (40 -> 20 -> 10 -> 5),
    flatten, fc(10). Strided convolutions keep every layer a Conv1d (NIR has no 1D pooling).
    ``levels``: the QCFS steps L (train with L near the target T).
    """

    def __init__(self, activation: str = "clip", *, channels: int = 32, depth: int = 3,
                 levels: int = 4, length: int = 40, classes: int = 10) -> None:
        super().__init__()
        act = lambda: make_activation(activation, levels=levels)  # noqa: E731
        layers: list[nn.Module] = [nn.Conv1d(1, channels, 5, padding=2), nn.BatchNorm1d(channels), act()]
        for _ in range(depth):
            layers += [nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.BatchNorm1d(channels), act()]
            length = (length + 1) // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels * length, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SignalResNet(nn.Module):
    """A residual 1D net for MNIST-1D: stem conv, an identity block, two strided 1x1-shortcut blocks, fc.

    ``(B, 1, 40)`` -> stem (c, 40) -> block (c, 40) -> block (2c, 20) -> block (2c, 10) -> flatten -> fc(10).
    """

    def __init__(self, activation: str = "clip", *, width: int = 16, levels: int = 4,
                 length: int = 40, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(1, width, 5, padding=2, bias=False), nn.BatchNorm1d(width),
                                  make_activation(activation, levels=levels))
        self.layer1 = BasicBlock(width, width, 1, activation, dims=1, levels=levels)
        self.layer2 = BasicBlock(width, 2 * width, 2, activation, dims=1, levels=levels)
        self.layer3 = BasicBlock(2 * width, 2 * width, 2, activation, dims=1, levels=levels)
        self.fc = nn.Linear(2 * width * (length // 4), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(x, 1))


@dataclass
class TrainedModel:
    """A trained model (in eval mode) and its test accuracy (fraction in [0, 1])."""

    model: nn.Module
    ann_accuracy: float
    seconds: float = 0.0


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``(x, y)``."""
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / max(len(y), 1)


def train_model(
    model: nn.Module,
    split: Split,
    epochs: int = 20,
    lr: float = 1e-2,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    *,
    batch_size: int = 64,
    optimizer: Literal["adam", "sgd"] = "adam",
    weight_decay: float = 0.0,
) -> TrainedModel:
    """Train ``model`` in place on ``split`` with cross-entropy; return it (eval mode) and its test accuracy.

    Seeded: the weights are re-initialised from ``seed`` and mini-batches are drawn from a
    generator seeded with ``seed``, so the same call gives the same weights. The learning
    rate follows a cosine schedule to 0. ``progress(done, total)`` is called after every
    epoch (e.g. to advance a rich progress bar).
    """
    torch.manual_seed(seed)
    for module in model.modules():  # a fresh, seeded initialisation
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()  # type: ignore[operator]
    gen = torch.Generator().manual_seed(seed)
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    n = len(split.train_y)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs * steps_per_epoch, 1))
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(split.train_x[idx]), split.train_y[idx])
            loss.backward()
            opt.step()
            sched.step()
        if progress is not None:
            progress(epoch + 1, epochs)
    seconds = time.perf_counter() - start
    model.eval()
    return TrainedModel(model, accuracy(model, split.test_x, split.test_y), seconds)
