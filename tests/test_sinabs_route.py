"""sinabs's ANN -> SNN route (the anchor of the integer benchmarks), on real sinabs code."""

from __future__ import annotations

import torch
from torch import nn

from bridge.model.train import DigitsCNN, SignalCNN
from validation.sinabs_route import fold_batchnorm, sinabs_accuracy, sinabs_snn


def _trained_bn(model: nn.Module, x: torch.Tensor) -> nn.Module:
    model.train()
    with torch.no_grad():
        for _ in range(3):  # give BatchNorm non-trivial running statistics
            model(x)
    return model.eval()


def test_fold_batchnorm_keeps_the_function():
    torch.manual_seed(0)
    for model, shape in ((DigitsCNN("relu", channels=(4, 8), hidden=16), (1, 16, 16)),
                         (SignalCNN("relu", channels=8), (1, 40))):
        x = torch.rand(8, *shape)
        model = _trained_bn(model, x)
        folded = fold_batchnorm(model)
        assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in folded.modules())
        assert torch.allclose(folded(x), model(x), atol=1e-5)


def test_discretised_route_has_integer_layers_and_runs():
    import sinabs.layers as sl

    torch.manual_seed(0)
    model = _trained_bn(DigitsCNN("relu", channels=(4, 8), hidden=16), torch.rand(8, 1, 16, 16))
    snn = sinabs_snn(model, batch_size=4, discretize=True)
    weights = [m for m in snn.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for w in weights:
        assert torch.equal(w.weight, w.weight.round()) and w.weight.abs().max() <= 128
    iafs = [m for m in snn.modules() if isinstance(m, sl.IAFSqueeze)]
    assert len(iafs) == 3 and all(float(m.spike_threshold) == round(float(m.spike_threshold)) > 1 for m in iafs)
    x, y = torch.rand(6, 1, 16, 16), torch.randint(0, 10, (6,))
    acc = sinabs_accuracy(snn, x, y, [1, 4], batch_size=4)
    assert set(acc) == {1, 4} and all(0.0 <= a <= 1.0 for a in acc.values())
    # the float route on the same weights runs too, and its readout sums the steps
    acc_float = sinabs_accuracy(sinabs_snn(model, batch_size=4, discretize=False), x, y, [2], batch_size=6)
    assert 0.0 <= acc_float[2] <= 1.0
