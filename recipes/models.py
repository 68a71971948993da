"""CIFAR architectures for conversion: VGG-16, ResNet-18 and ResNet-20 with ClippedReLU.

What makes them convertible (Bu et al., AAAI 2022): every activation is
:class:`bridge.model.activations.ClippedReLU` (its trained bound becomes the IF threshold), pooling
is average pooling (a max of spikes is not a max of rates), BatchNorm follows each conv
(the converter folds it), and the classifier ends in a Linear layer without activation
(the readout). Each factory returns ``(model, input_shape)`` so that
``bridge export weights.pt --arch recipes.models:vgg16`` knows the input shape.
"""

from __future__ import annotations

import torch
from torch import nn

from bridge.model.activations import ClippedReLU

INPUT_SHAPE = (3, 32, 32)
VGG16_CFG = (64, 64, "A", 128, 128, "A", 256, 256, 256, "A", 512, 512, 512, "A", 512, 512, 512, "A")


def vgg16_features(bound: float = 4.0, width: float = 1.0, *, bias: bool = False) -> tuple[list[nn.Module], int]:
    """VGG-16's feature layers for 3-channel input: 13 conv3x3-BN-ClippedReLU and 5 average
    pools (``width`` scales the channels). Returns the layers and the channels they output."""
    layers: list[nn.Module] = []
    cin = 3
    for v in VGG16_CFG:
        if v == "A":
            layers.append(nn.AvgPool2d(2))
        else:
            c = max(1, int(v * width))
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=bias), nn.BatchNorm2d(c), ClippedReLU(bound)]
            cin = c
    return layers, cin


class VGG16(nn.Module):
    """VGG-16 for 32x32 inputs: 13 conv-BN-ClippedReLU, 5 average pools, 3 linear layers."""

    def __init__(self, classes: int = 10, bound: float = 4.0, width: float = 1.0) -> None:
        super().__init__()
        layers, cin = vgg16_features(bound, width)
        self.features = nn.Sequential(*layers)
        hidden = max(1, int(4096 * width))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(cin, hidden), ClippedReLU(bound), nn.Dropout(0.2),
            nn.Linear(hidden, hidden), ClippedReLU(bound), nn.Dropout(0.2), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block with clipped ReLUs; a 1x1-conv shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, bound: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = ClippedReLU(bound)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act2 = ClippedReLU(bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: stem conv, stages of basic blocks, global average pool, linear readout.
    ``stem`` replaces the 3x3 stem (e.g. an ImageNet 7x7/2 one ending in ``widths[0]`` channels)."""

    def __init__(self, blocks: tuple[int, ...], widths: tuple[int, ...], classes: int = 10,
                 bound: float = 4.0, stem: nn.Module | None = None) -> None:
        super().__init__()
        self.stem = stem if stem is not None else nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), ClippedReLU(bound))
        layers: list[nn.Module] = []
        cin = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1, bound))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def vgg16_4096(num_classes: int = 10) -> nn.Sequential:
    """VGG-16 for 32x32 inputs with the 4096-wide classifier, as converted by Bu et al.:
    ClippedReLU, average pooling (the benchmarks' model)."""
    layers, _ = vgg16_features(bias=True)
    layers += [nn.Flatten(), nn.Linear(512, 4096), ClippedReLU(), nn.Linear(4096, 4096),
               ClippedReLU(), nn.Linear(4096, num_classes)]
    return nn.Sequential(*layers)


def vgg16(classes: int = 10, width: float = 1.0) -> tuple[nn.Module, tuple[int, ...]]:
    return VGG16(classes, width=width), INPUT_SHAPE


def resnet18(classes: int = 10, width: float = 1.0) -> tuple[nn.Module, tuple[int, ...]]:
    w = tuple(max(1, int(c * width)) for c in (64, 128, 256, 512))
    return ResNet((2, 2, 2, 2), w, classes), INPUT_SHAPE


def resnet20(classes: int = 10, width: float = 1.0) -> tuple[nn.Module, tuple[int, ...]]:
    w = tuple(max(1, int(c * width)) for c in (16, 32, 64))
    return ResNet((3, 3, 3), w, classes), INPUT_SHAPE


ARCHS = {"vgg16": vgg16, "resnet18": resnet18, "resnet20": resnet20}
