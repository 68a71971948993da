"""Tiny deterministic models for everyone's tests, and their converted NIR graphs.

Every builder returns ``(model, input_shape)`` in eval mode, with weights drawn from a
fixed seed (the global RNG is left untouched), BatchNorm layers with non-trivial running
statistics, and ClippedReLU bounds that differ per layer. ``act="relu"`` swaps every
ClippedReLU for a plain ReLU (thresholds then come from calibration data).
"""

from __future__ import annotations

from pathlib import Path

import nir
import torch
import torch.nn.functional as F
from torch import nn

from bridge.model.activations import ClippedReLU
from bridge.converter import convert
from bridge.format.nirio import write_graph


def _act(act: str, bound: float) -> nn.Module:
    return ClippedReLU(bound) if act == "clipped" else nn.ReLU()


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Deterministic weights and BatchNorm statistics (without touching the global RNG)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def sample_input(input_shape: tuple[int, ...], n: int = 16, seed: int = 1) -> torch.Tensor:
    """Deterministic inputs (N, *input_shape), float64."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *input_shape), generator=g, dtype=torch.float64)


def uniform_input(input_shape: tuple[int, ...], n: int = 4, seed: int = 0) -> torch.Tensor:
    """Deterministic inputs (N, *input_shape), float64, uniform in [0, 1) like images."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *input_shape), generator=g, dtype=torch.float64)


class MLP(nn.Module):
    def __init__(self, act: str = "clipped") -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, 32)
        self.act1 = _act(act, 1.0)
        self.fc2 = nn.Linear(32, 24)
        self.act2 = _act(act, 0.7)
        self.drop = nn.Dropout(0.2)
        self.fc3 = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.drop(self.act2(self.fc2(self.act1(self.fc1(self.flatten(x)))))))


def mlp(act: str = "clipped") -> tuple[nn.Module, tuple[int, ...]]:
    """Flatten -> 64-32-24-10 MLP with two activations, on (1, 8, 8)."""
    return _randomize(MLP(act), 10), (1, 8, 8)


class VGGBN(nn.Module):
    def __init__(self, act: str = "clipped") -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), _act(act, 1.5),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), _act(act, 1.0),
            nn.AvgPool2d(2),
            nn.BatchNorm2d(8),  # nothing to fold into: a per-channel affine (1x1 conv)
            nn.Conv2d(8, 16, 3, padding="same"), nn.BatchNorm2d(16), _act(act, 0.8),
            nn.AvgPool2d(2),
        )
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.bn_fc = nn.BatchNorm1d(32)
        self.act_fc = _act(act, 1.2)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.fc2(self.drop(self.act_fc(self.bn_fc(self.fc1(x)))))


def write_mlp_nir(path: Path) -> Path:
    """The MLP (input (1, 8, 8), 10 outputs) converted with the defaults, written to ``path``."""
    model, shape = mlp()
    write_graph(convert(model, shape), path)
    return path


def vgg_bn(act: str = "clipped") -> tuple[nn.Module, tuple[int, ...]]:
    """VGG-style convs with BatchNorm, clipped ReLUs and average pooling, on (1, 16, 16)."""
    return _randomize(VGGBN(act), 20), (1, 16, 16)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: str, bounds: tuple[float, float]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = _act(act, bounds[0])
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act2 = _act(act, bounds[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        out += self.shortcut(x)
        return self.act2(out)


class ResNetSmall(nn.Module):
    def __init__(self, act: str = "clipped") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = _act(act, 1.0)
        self.layer1 = nn.Sequential(BasicBlock(8, 8, 1, act, (0.9, 1.3)), BasicBlock(8, 8, 1, act, (1.1, 0.8)))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2, act, (1.2, 1.4)))
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.act1(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet_small(act: str = "clipped") -> tuple[nn.Module, tuple[int, ...]]:
    """ResNet-20-style: stem, two identity blocks, one 1x1-conv+BN shortcut block, on (3, 8, 8)."""
    return _randomize(ResNetSmall(act), 30), (3, 8, 8)


class GroupedStrided(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding="same", groups=4)  # (no 2-d dilation: float64 dilated convs are very slow on CPU)
        self.conv3 = nn.Conv2d(8, 12, 2, stride=(2, 1))
        self.fc = nn.Linear(12 * 3 * 5, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.conv3(x).clamp(min=0)
        return self.fc(x.reshape(x.shape[0], -1))


def grouped_strided() -> tuple[nn.Module, tuple[int, ...]]:
    """Grouped, strided convs (padding="same") with plain ReLUs (thresholds need calibration), on (4, 12, 12)."""
    return _randomize(GroupedStrided(), 40), (4, 12, 12)


def zoo_graphs(v_init: str | float = "half") -> dict[str, nir.NIRGraph]:
    """The zoo converted to NIR. Calibrated variants use ``sample_input(shape, 32)``.

    ``vgg_bn_channel_wise`` and ``resnet_small_channel_wise`` use plain ReLUs and per-channel
    ``max`` thresholds (a different threshold in every channel).
    """
    graphs: dict[str, nir.NIRGraph] = {}
    for name, builder in (("mlp", mlp), ("vgg_bn", vgg_bn), ("resnet_small", resnet_small)):
        model, shape = builder()
        graphs[name] = convert(model, shape, v_init=v_init)
    model, shape = grouped_strided()
    graphs["grouped_strided"] = convert(model, shape, thresholds="max",
                                        calibration=sample_input(shape, 32), v_init=v_init)
    for name, builder in (("vgg_bn", vgg_bn), ("resnet_small", resnet_small)):
        model, shape = builder(act="relu")
        graphs[f"{name}_channel_wise"] = convert(model, shape, thresholds="max", channel_wise=True,
                                                 calibration=sample_input(shape, 32), v_init=v_init)
    return graphs
