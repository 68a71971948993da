"""The QCFS authors' model code, as published (activations spelled with their own ops).

The QCFS follow-up of bridge's method trains VGG-16, ResNet-18 and ResNet-20 with two hand-written
activations, not bridge's modules:

* ``MyFloor`` (the quantised clip, QCFS): ``x / up``, clamp to [0, 1], ``floor(x t + 0.5) / t``
  (a custom autograd function with a straight-through gradient), ``* up``;
* ``TCL`` (the trainable clip): ``relu``, ``up - x``, ``relu``, ``up - x`` = ``clip(x, 0, up)``.

Both keep their bound ``up`` as a one-element parameter. The converter must recognise them by
the function they compute. Widths are divided by ``width`` so that the digits train in seconds.

:func:`train_on_digits` trains them on the digits with the recipes measured in
``benchmarks/qcfs_t_equals_l.py`` (VGG-16 and ResNet-18 at a quarter width on 32x32 and 16x16,
ResNet-20 at full width on 16x16): narrower nets train to the same ANN accuracy but their SNN at T = L agrees far less
with the ANN (docs/model-families.md, "The authors' QCFS models at T = L").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bridge.data.datasets import Split, digits_split
from bridge.model.train import TrainedModel, train_model


class GradFloor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return x.floor()

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return grad


myfloor = GradFloor.apply


class MyFloor(nn.Module):
    def __init__(self, up: float = 8.0, t: int = 32) -> None:
        super().__init__()
        self.up = nn.Parameter(torch.tensor([up]), requires_grad=True)
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / self.up
        x = torch.clamp(x, 0, 1)
        x = myfloor(x * self.t + 0.5) / self.t
        x = x * self.up
        return x


class TCL(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Parameter(torch.Tensor([4.0]), requires_grad=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x, inplace="True")  # the authors pass a truthy string
        x = self.up - x
        x = F.relu(x, inplace="True")
        x = self.up - x
        return x


def _act(kind: str, levels: int) -> nn.Module:
    return MyFloor(2.0, levels) if kind == "myfloor" else TCL()


VGG16_CFG = [64, 64, "A", 128, 128, "A", 256, 256, 256, "A", 512, 512, 512, "A", 512, 512, 512, "A"]


class VGG16(nn.Module):
    """The authors' VGG-16 (max pooling already replaced by average pooling), on (C, 32, 32)."""

    def __init__(self, act: str = "myfloor", levels: int = 4, width: int = 16, in_channels: int = 1,
                 classes: int = 10, hidden: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in VGG16_CFG:
            if v == "A":
                layers.append(nn.AvgPool2d(2))
            else:
                cout = max(int(v) // width, 2)
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), _act(act, levels)]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(cin, hidden), _act(act, levels), nn.Dropout(0.5),
            nn.Linear(hidden, hidden), _act(act, levels), nn.Dropout(0.5), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: str, levels: int) -> None:
        super().__init__()
        self.residual_function = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), _act(act, levels),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = _act(act, levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual_function(x) + self.shortcut(x))


class CifarResNet(nn.Module):
    """The authors' CIFAR ResNets: a 3x3 stem (no max pool), stages of basic blocks (the first
    stage at stride 1, the others halving), a global average pool and a linear readout."""

    def __init__(self, stage_widths: tuple[int, ...], blocks_per_stage: int, act: str = "myfloor",
                 levels: int = 4, width: int = 2, in_channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        widths = [w // width for w in stage_widths]
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                   nn.BatchNorm2d(widths[0]), _act(act, levels))
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, cout in enumerate(widths):
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, act, levels))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.conv1(x))
        out = self.avg_pool(out)
        return self.fc(out.view(out.size(0), -1))


class ResNet20(CifarResNet):
    """The authors' ResNet-20: three stages of three basic blocks, 16 / 32 / 64 channels."""

    def __init__(self, act: str = "myfloor", levels: int = 4, width: int = 2, in_channels: int = 1,
                 classes: int = 10) -> None:
        super().__init__((16, 32, 64), 3, act, levels, width, in_channels, classes)


class ResNet18(CifarResNet):
    """The authors' ResNet-18 (CIFAR layout): four stages of two basic blocks, 64 to 512 channels."""

    def __init__(self, act: str = "myfloor", levels: int = 4, width: int = 16, in_channels: int = 1,
                 classes: int = 10) -> None:
        super().__init__((64, 128, 256, 512), 2, act, levels, width, in_channels, classes)


def set_bounds(model: nn.Module, seed: int = 0) -> nn.Module:
    """A different bound ``up`` per activation (as after training), from a seed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (MyFloor, TCL)):
                m.up.fill_(float(torch.rand((), generator=g) * 1.5 + 0.5))
    return model


@dataclass(frozen=True)
class DigitsRecipe:
    """How one of the authors' models is trained on the digits (Adam, cosine schedule)."""

    width: int  # channels divided by this
    size: int  # the digits upsampled to size x size
    epochs: int
    lr: float


DIGITS_RECIPES = {
    "vgg16": DigitsRecipe(width=4, size=32, epochs=15, lr=1e-3),  # 5 poolings: 32x32 -> 1x1
    "resnet18": DigitsRecipe(width=4, size=16, epochs=10, lr=1e-2),
    "resnet20": DigitsRecipe(width=1, size=16, epochs=10, lr=1e-2),
}
ARCHITECTURES = {"vgg16": VGG16, "resnet18": ResNet18, "resnet20": ResNet20}


def train_on_digits(name: str, seed: int = 0, levels: int = 4, act: str = "myfloor",
                    width: int | None = None) -> tuple[TrainedModel, Split, tuple[int, ...]]:
    """The authors' ``name`` (``vgg16`` / ``resnet18`` / ``resnet20``) with L = ``levels``, trained
    on the digits by its :data:`DIGITS_RECIPES` entry from ``seed`` (``width``: another channel
    divisor than the recipe's): (trained model, split, input shape)."""
    recipe = DIGITS_RECIPES[name]
    split = digits_split(size=recipe.size)
    model = ARCHITECTURES[name](act, levels=levels, width=recipe.width if width is None else width)
    trained = train_model(model, split, epochs=recipe.epochs, lr=recipe.lr, seed=seed)
    return trained, split, (1, recipe.size, recipe.size)
