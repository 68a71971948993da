"""The trainable activations: values, positivity of the bound, QCFS = IF rate at T = L."""

from __future__ import annotations

import torch

from bridge.model.activations import QCFS, ClippedReLU
from bridge.format.neurons import if_constant_input_spike_count


def test_clipped_relu_clips_and_trains_its_bound():
    act = ClippedReLU(bound=2.0)
    x = torch.tensor([-1.0, 0.5, 3.0], requires_grad=True)
    y = act(x)
    assert torch.allclose(y, torch.tensor([0.0, 0.5, 2.0 + act.min_bound]))
    y.sum().backward()
    assert act.raw_bound.grad.item() == 1.0  # only the clipped element pushes the bound


def test_bound_stays_positive_when_the_raw_parameter_goes_negative():
    act = ClippedReLU(bound=1.0)
    with torch.no_grad():
        act.raw_bound.fill_(-0.7)
    assert act.bound.item() > 0


def test_qcfs_equals_if_rate_with_half_threshold_at_t_equals_levels():
    levels, lam = 4, 1.5
    act = QCFS(bound=lam, levels=levels)
    z = torch.linspace(-1, 3, 401, dtype=torch.float64)
    theta = act.bound.detach().double()
    count = if_constant_input_spike_count(z, theta, theta / 2, levels)
    rate = theta * count / levels
    assert torch.allclose(act(z.float()).double(), rate, atol=1e-6)
