"""The architectures ANN-to-SNN papers convert, written here from their published layer specs.

Not copied code: each class follows the layer table of its paper (and, for the ImageNet
definitions, the layout torchvision made standard: ``features`` / ``avgpool`` /
``classifier``, ``AdaptiveAvgPool2d`` before the classifier). torchvision cannot be imported
beside the CPU torch here (docs/model-families.md), and tests need tiny widths anyway:
every builder takes ``width`` (channels are divided by it, at least 1 ... 4 kept) and an
input size, and returns ``(model, input_shape)`` in eval mode with deterministic weights
and BatchNorm statistics (:func:`tests.zoo._randomize`).

ImageNet style (3x224x224 at ``width=1``): ResNet-18/34 (He et al. 2016, basic blocks),
ResNet-50 (bottleneck blocks, expansion 4), VGG-11/16 with BatchNorm (Simonyan & Zisserman
2015, configurations A and D), MobileNetV2 (Sandler et al. 2018, inverted residuals with
ReLU6), AlexNet (Krizhevsky et al. 2012, torchvision's single-tower variant).

CIFAR style (3x32x32): DenseNet-BC (Huang et al. 2017), GoogLeNet (Szegedy et al. 2015,
Inception v1 modules), ShuffleNetV2 (Ma et al. 2018), DLA (Yu et al. 2018, tree aggregation
with a concatenating root), DPN (Chen et al. 2017, dual path: residual sum + dense concat),
PreAct-ResNet (He et al. 2016b, BN-ReLU-conv; the next block's BN is applied to the sum),
RegNetX (Radosavovic et al. 2020, X blocks with grouped 3x3 convs), MobileNet v1 (Howard
et al. 2017, depthwise separable convs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tests.zoo import _randomize


def _c(channels: int, width: int) -> int:
    """Channels at ``1/width`` of the published width (at least 4: BN statistics stay sane)."""
    return max(4, channels // width)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act)
    return nn.Sequential(*layers)


# -- ImageNet style -------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """Two 3x3 convs, identity or 1x1-conv+BN shortcut, ReLU after the sum (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, as torchvision v1.5), 1x1 expand x4; ReLU after the sum."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """7x7/2 stem, 3x3/2 max pool, four stages (64, 128, 256, 512 planes), global pool, fc."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], width: int = 1,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = _c(64, width)
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._stage(block, _c(64, width), layers[0], 1)
        self.layer2 = self._stage(block, _c(128, width), layers[1], 2)
        self.layer3 = self._stage(block, _c(256, width), layers[2], 2)
        self.layer4 = self._stage(block, _c(512, width), layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(_c(512, width) * block.expansion, num_classes)

    def _stage(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [block(self.inplanes, planes, stride)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


VGG_CONFIGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """3x3 convs with BN and ReLU, 2x2 max pools, AdaptiveAvgPool2d((7, 7)), 4096-4096 classifier."""

    def __init__(self, config: str, width: int = 1, num_classes: int = 1000, hidden: int = 4096) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in VGG_CONFIGS[config]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                cout = _c(int(v), width)
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        hidden = max(8, hidden // width)
        self.classifier = nn.Sequential(
            nn.Linear(cin * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1 linear project; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1, act=nn.ReLU6(inplace=True)))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6(inplace=True)),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """Stem 3x3/2 (32), inverted residual stages (t, c, n, s), 1x1 to 1280, global pool, fc."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, width: int = 1, num_classes: int = 1000, expand_cap: int = 6) -> None:
        super().__init__()
        cin = _c(32, width)
        layers: list[nn.Module] = [_conv_bn(3, cin, 3, 2, act=nn.ReLU6(inplace=True))]
        for t, c, n, s in self.SETTINGS:
            cout = _c(c, width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, min(t, expand_cap)))
                cin = cout
        last = _c(1280, width)
        layers.append(_conv_bn(cin, last, 1, act=nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class AlexNet(nn.Module):
    """11x11/4, 5x5, three 3x3 convs, 3x3/2 max pools, AdaptiveAvgPool2d((6, 6)), 4096-4096."""

    def __init__(self, width: int = 1, num_classes: int = 1000, hidden: int = 4096) -> None:
        super().__init__()
        c1, c2, c3, c4 = _c(64, width), _c(192, width), _c(384, width), _c(256, width)
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c4, c4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        hidden = max(8, hidden // width)
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(c4 * 36, hidden), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# -- CIFAR style ----------------------------------------------------------------------------
class DenseLayer(nn.Module):
    """DenseNet-BC bottleneck: BN-ReLU-1x1 (4k), BN-ReLU-3x3 (k), concatenated to the input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(4 * growth), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class DenseNet(nn.Module):
    """3x3 stem (2k), dense blocks with BN-ReLU-1x1-avgpool transitions (compression 0.5)."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2), growth: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        c = 2 * growth
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, n in enumerate(blocks):
            for _ in range(n):
                stages.append(DenseLayer(c, growth))
                c += growth
            if i < len(blocks) - 1:
                out = c // 2
                stages += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, out, 1, bias=False), nn.AvgPool2d(2)]
                c = out
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(c)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.features(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class Inception(nn.Module):
    """Four branches: 1x1; 1x1-3x3; 1x1-3x3-3x3 (the 5x5 as two 3x3); 3x3/1 max pool-1x1; concat."""

    def __init__(self, cin: int, n1: int, n3r: int, n3: int, n5r: int, n5: int, pool: int) -> None:
        super().__init__()
        relu = lambda: nn.ReLU(True)  # noqa: E731
        self.b1 = _conv_bn(cin, n1, 1, act=relu())
        self.b2 = nn.Sequential(_conv_bn(cin, n3r, 1, act=relu()), _conv_bn(n3r, n3, 3, act=relu()))
        self.b3 = nn.Sequential(_conv_bn(cin, n5r, 1, act=relu()), _conv_bn(n5r, n5, 3, act=relu()),
                                _conv_bn(n5, n5, 3, act=relu()))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), _conv_bn(cin, pool, 1, act=relu()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class GoogLeNet(nn.Module):
    """Stem 3x3, inception 3a/3b, 3x3/2 max pool, inception 4a, global pool, fc (trimmed depth)."""

    def __init__(self, width: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        w = lambda c: _c(c, width)  # noqa: E731
        self.pre = _conv_bn(3, w(192), 3, act=nn.ReLU(True))
        self.a3 = Inception(w(192), w(64), w(96), w(128), w(16), w(32), w(32))
        cin = w(64) + w(128) + w(32) + w(32)
        self.b3 = Inception(cin, w(128), w(128), w(192), w(32), w(96), w(64))
        cin = w(128) + w(192) + w(96) + w(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.a4 = Inception(cin, w(192), w(96), w(208), w(16), w(48), w(64))
        cin = w(192) + w(208) + w(48) + w(64)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool(self.b3(self.a3(self.pre(x))))
        out = self.a4(out)
        return self.linear(torch.flatten(self.avgpool(out), 1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, g*c, H, W) -> view (N, g, c, H, W) -> transpose -> (N, c*g, H, W)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleBlock(nn.Module):
    """ShuffleNetV2 unit: split channels, 1x1-dw3x3-1x1 on one half, concat, shuffle (stride 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels // 2
        self.branch = nn.Sequential(_conv_bn(c, c, 1, act=nn.ReLU()), _conv_bn(c, c, 3, groups=c),
                                    _conv_bn(c, c, 1, act=nn.ReLU()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([x1, self.branch(x2)], 1), 2)


class DownBlock(nn.Module):
    """ShuffleNetV2 stride-2 unit: two branches on the whole input, concat, shuffle."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.left = nn.Sequential(_conv_bn(cin, cin, 3, 2, groups=cin), _conv_bn(cin, mid, 1, act=nn.ReLU()))
        self.right = nn.Sequential(_conv_bn(cin, mid, 1, act=nn.ReLU()), _conv_bn(mid, mid, 3, 2, groups=mid),
                                   _conv_bn(mid, mid, 1, act=nn.ReLU()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, channels: tuple[int, ...] = (8, 16), blocks: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 8, 3, act=nn.ReLU())
        layers: list[nn.Module] = []
        cin = 8
        for c in channels:
            layers.append(DownBlock(cin, c))
            layers += [ShuffleBlock(c) for _ in range(blocks)]
            cin = c
        self.layers = nn.Sequential(*layers)
        self.head = _conv_bn(cin, 2 * cin, 1, act=nn.ReLU())
        self.linear = nn.Linear(2 * cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.layers(self.stem(x)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class Root(nn.Module):
    """DLA root: concatenate the children, 1x1 conv + BN + ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _conv_bn(cin, cout, 1, act=nn.ReLU())

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(torch.cat(xs, 1))


class SimpleBlock(nn.Module):
    """A residual basic block with ReLU (DLA's level block)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride, act=nn.ReLU()), _conv_bn(cout, cout, 3))
        self.short = nn.Sequential() if stride == 1 and cin == cout else _conv_bn(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.short(x))


class Tree(nn.Module):
    """DLA tree of level 1: two blocks, their outputs aggregated by a root."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.left = SimpleBlock(cin, cout, stride)
        self.right = SimpleBlock(cout, cout)
        self.root = Root(2 * cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.left(x)
        return self.root([a, self.right(a)])


class DLA(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.base = _conv_bn(3, 8, 3, act=nn.ReLU())
        self.tree1 = Tree(8, 8, 1)
        self.tree2 = Tree(8, 16, 2)
        self.linear = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.tree2(self.tree1(self.base(x)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class DualPathBlock(nn.Module):
    """DPN block: 1x1-grouped 3x3-1x1; the first ``out`` channels add to the residual path,
    the remaining ``dense`` channels are concatenated to the dense path."""

    def __init__(self, cin: int, mid: int, out: int, dense: int, stride: int, first: bool, groups: int = 2) -> None:
        super().__init__()
        self.out = out
        self.body = nn.Sequential(_conv_bn(cin, mid, 1, act=nn.ReLU()), _conv_bn(mid, mid, 3, stride, groups, nn.ReLU()),
                                  _conv_bn(mid, out + dense, 1))
        self.short = _conv_bn(cin, out + dense, 1, stride) if first else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        s = self.short(x) if self.short is not None else x
        d = self.out
        return F.relu(torch.cat([s[:, :d] + y[:, :d], s[:, d:], y[:, d:]], 1))


class DPN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 8, 3, act=nn.ReLU())
        self.b1 = DualPathBlock(8, 8, 8, 4, 1, first=True)
        self.b2 = DualPathBlock(16, 8, 8, 4, 1, first=False)
        self.linear = nn.Linear(20, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.b2(self.b1(self.stem(x)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3; the shortcut taken after the first BN-ReLU when it
    has a conv. No ReLU after the sum: the next block's BN normalises the sum itself."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + short


class PreActResNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.layers = nn.Sequential(PreActBlock(8, 8), PreActBlock(8, 8), PreActBlock(8, 16, 2))
        self.bn = nn.BatchNorm2d(16)
        self.linear = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class XBlock(nn.Module):
    """RegNet X block: 1x1-BN-ReLU, grouped 3x3 (group width gw)-BN-ReLU, 1x1-BN, + shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 1, act=nn.ReLU()),
                                  _conv_bn(cout, cout, 3, stride, cout // group_width, nn.ReLU()),
                                  _conv_bn(cout, cout, 1))
        self.short = nn.Sequential() if stride == 1 and cin == cout else _conv_bn(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.short(x))


class RegNetX(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (8, 16), depths: tuple[int, ...] = (1, 2), group_width: int = 4,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 8, 3, act=nn.ReLU())
        layers: list[nn.Module] = []
        cin = 8
        for w, d in zip(widths, depths):
            for i in range(d):
                layers.append(XBlock(cin, w, 2 if i == 0 else 1, group_width))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class MobileNetV1(nn.Module):
    """3x3 stem, depthwise separable blocks (dw 3x3-BN-ReLU, pw 1x1-BN-ReLU), global pool, fc."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 32, 64), strides: tuple[int, ...] = (1, 2, 1, 2),
                 num_classes: int = 10, stem: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, stem, 3, act=nn.ReLU())]
        cin = stem
        for c, s in zip(channels, strides):
            layers += [_conv_bn(cin, cin, 3, s, groups=cin, act=nn.ReLU()), _conv_bn(cin, c, 1, act=nn.ReLU())]
            cin = c
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


# -- builders --------------------------------------------------------------------------------
Builder = Callable[..., tuple[nn.Module, tuple[int, ...]]]


def resnet18(width: int = 16, size: int = 64) -> tuple[nn.Module, tuple[int, ...]]:
    return _randomize(ResNet(BasicBlock, [2, 2, 2, 2], width, num_classes=10), 101), (3, size, size)


def resnet34(width: int = 16, size: int = 64) -> tuple[nn.Module, tuple[int, ...]]:
    return _randomize(ResNet(BasicBlock, [3, 4, 6, 3], width, num_classes=10), 102), (3, size, size)


def resnet50(width: int = 16, size: int = 64) -> tuple[nn.Module, tuple[int, ...]]:
    return _randomize(ResNet(Bottleneck, [3, 4, 6, 3], width, num_classes=10), 103), (3, size, size)


def vgg11_bn(width: int = 16, size: int = 32) -> tuple[nn.Module, tuple[int, ...]]:
    return _randomize(VGG("A", width, num_classes=10), 104), (3, size, size)


def vgg16_bn(width: int = 16, size: int = 32) -> tuple[nn.Module, tuple[int, ...]]:
    return _randomize(VGG("D", width, num_classes=10), 105), (3, size, size)


def mobilenet_v2(width: int = 8, size: int = 32) -> tuple[nn.Module, tuple[int, ...]]:
    return _randomize(MobileNetV2(width, num_classes=10, expand_cap=2 if width > 1 else 6), 106), (3, size, size)


def alexnet(width: int = 16, size: int = 64) -> tuple[nn.Module, tuple[int, ...]]:
    return _randomize(AlexNet(width, num_classes=10), 107), (3, size, size)


def densenet() -> tuple[nn.Module, tuple[int, ...]]:
    return _randomize(DenseNet(), 111), (3, 16, 16)


def googlenet() -> tuple[nn.Module, tuple[int, ...]]:
    return _randomize(GoogLeNet(), 112), (3, 16, 16)


def shufflenet_v2() -> tuple[nn.Module, tuple[int, ...]]:
    return _randomize(ShuffleNetV2(), 113), (3, 16, 16)


def dla() -> tuple[nn.Module, tuple[int, ...]]:
    return _randomize(DLA(), 114), (3, 16, 16)


def dpn() -> tuple[nn.Module, tuple[int, ...]]:
    return _randomize(DPN(), 115), (3, 16, 16)


def preact_resnet() -> tuple[nn.Module, tuple[int, ...]]:
    return _randomize(PreActResNet(), 116), (3, 16, 16)


def regnetx() -> tuple[nn.Module, tuple[int, ...]]:
    return _randomize(RegNetX(), 117), (3, 16, 16)


def mobilenet_v1() -> tuple[nn.Module, tuple[int, ...]]:
    return _randomize(MobileNetV1(), 118), (3, 16, 16)


IMAGENET: dict[str, Builder] = {
    "ResNet-18": resnet18, "ResNet-34": resnet34, "ResNet-50": resnet50, "VGG-11-BN": vgg11_bn,
    "VGG-16-BN": vgg16_bn, "MobileNetV2": mobilenet_v2, "AlexNet": alexnet,
}
CIFAR: dict[str, Builder] = {
    "DenseNet-BC": densenet, "GoogLeNet": googlenet, "ShuffleNetV2": shufflenet_v2, "DLA": dla, "DPN": dpn,
    "PreAct-ResNet": preact_resnet, "RegNetX": regnetx, "MobileNet": mobilenet_v1,
}
ALL: dict[str, Builder] = {**IMAGENET, **CIFAR}
