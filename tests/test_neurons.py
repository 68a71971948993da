"""The IF step rule against its closed form, exhaustively over a grid of inputs."""

from __future__ import annotations

import torch

from bridge.format.neurons import if_constant_input_spike_count, if_step


def run_if(current, threshold, v_init, steps, **kw):
    v = v_init.clone()
    count = torch.zeros_like(current)
    for _ in range(steps):
        s, v = if_step(current, v, threshold, **kw)
        count += s
    return count, v


def test_constant_input_spike_count_matches_closed_form():
    torch.manual_seed(0)
    z = torch.linspace(-0.5, 2.5, 3001, dtype=torch.float64)
    theta = torch.full_like(z, 1.7)
    for frac in (0.0, 0.5, 0.25):
        for steps in (1, 2, 4, 8, 16, 64):
            count, _ = run_if(z, theta, theta * frac, steps)
            expected = if_constant_input_spike_count(z, theta, theta * frac, steps)
            # Ties (T z + v0 exactly a multiple of theta) may round either way in float;
            # away from them the counts must be equal.
            ratio = (steps * z + theta * frac) / theta
            away = (ratio - ratio.round()).abs() > 1e-9
            assert torch.equal(count[away], expected[away])


def test_half_threshold_turns_floor_into_rounding():
    z = torch.tensor([0.24, 0.26, 0.49, 0.51, 0.74, 0.76], dtype=torch.float64)
    theta = torch.ones_like(z)
    zero, _ = run_if(z, theta, torch.zeros_like(z), 2)
    half, _ = run_if(z, theta, theta / 2, 2)
    assert zero.tolist() == [0, 0, 0, 1, 1, 1]  # floor(2 z)
    assert half.tolist() == [0, 1, 1, 1, 1, 2]  # round(2 z)


def test_reset_and_spike_condition_variants():
    theta = torch.tensor([1.0])
    s, v = if_step(torch.tensor([1.0]), torch.tensor([0.0]), theta)
    assert (s.item(), v.item()) == (1.0, 0.0)  # >= fires at equality
    s, v = if_step(torch.tensor([1.0]), torch.tensor([0.0]), theta, spike_condition="gt")
    assert (s.item(), v.item()) == (0.0, 1.0)
    s, v = if_step(torch.tensor([0.75]), torch.tensor([0.5]), theta, reset="zero", v_reset=-0.125)
    assert (s.item(), v.item()) == (1.0, -0.125)
    s, v = if_step(torch.tensor([0.75]), torch.tensor([0.5]), theta)
    assert (s.item(), v.item()) == (1.0, 0.25)


def test_in_place_step_is_bit_identical_to_the_pure_rule():
    from bridge.format.neurons import if_step_

    torch.manual_seed(1)
    theta = torch.rand(5, 7, dtype=torch.float64) + 0.1
    for reset in ("subtract", "zero"):
        for cond in ("ge", "gt"):
            v_pure = theta * torch.rand(5, 7, dtype=torch.float64)
            v_inplace = v_pure.clone()
            out = torch.empty_like(v_pure)
            for t in range(20):
                current = torch.randn(5, 7, dtype=torch.float64) * 0.5
                if t == 3:  # land exactly on the threshold: the tie must go the same way
                    current = theta - v_pure
                s, v_pure = if_step(current, v_pure, theta, reset=reset, spike_condition=cond,
                                    v_reset=-0.25)
                if_step_(current, v_inplace, theta, out, reset=reset, spike_condition=cond,
                         v_reset=-0.25)
                assert torch.equal(out, s) and torch.equal(v_inplace, v_pure)
