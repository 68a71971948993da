"""The Speck-shaped CNN: the ANN of sinabs's own MNIST example (a network the chip runs).

Three bias-free convolutions with plain ReLU and 2x2 average pooling, then two bias-free linear
layers (1x28x28 -> 20x24x24 -> 12x12 -> 32x8x8 -> 4x4 -> 128x2x2 -> 1x1 -> 500 -> 10), as in
sinabs's documentation (the converted network of its MNIST / DynapCNN tutorials). ``bias=True``
gives the same network with biases (to measure what removing them costs).
"""

from __future__ import annotations

from torch import nn

INPUT_SHAPE = (1, 28, 28)


def speck_mnist_ann(*, bias: bool = False) -> nn.Sequential:
    """conv(1->20, 5)-ReLU-avgpool2 - conv(20->32, 5)-ReLU-avgpool2 - conv(32->128, 3)-ReLU-avgpool2
    - flatten - fc(128->500)-ReLU - fc(500->10)."""
    return nn.Sequential(
        nn.Conv2d(1, 20, 5, 1, bias=bias), nn.ReLU(), nn.AvgPool2d(2, 2),
        nn.Conv2d(20, 32, 5, 1, bias=bias), nn.ReLU(), nn.AvgPool2d(2, 2),
        nn.Conv2d(32, 128, 3, 1, bias=bias), nn.ReLU(), nn.AvgPool2d(2, 2),
        nn.Flatten(), nn.Linear(128, 500, bias=bias), nn.ReLU(), nn.Linear(500, 10, bias=bias),
    )


def speck_mnist(bias: bool = False) -> tuple[nn.Module, tuple[int, ...]]:
    """``(model, input_shape)`` for ``bridge export weights.pt --arch recipes.speck_models:speck_mnist``."""
    return speck_mnist_ann(bias=bias), INPUT_SHAPE
