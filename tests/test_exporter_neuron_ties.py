"""Exact ties (m == theta) and near ties for every neuron class the exporters use, float64 and float32.

Each class is driven by constant currents chosen so that the pre-reset potential lands exactly
on the threshold at t = 1, 2 or 4, or one unit in the last place below it (in the run's dtype).
The expected spikes and potentials come from the rule written out here in NumPy
(``m = v + I; s = [m >= theta]; v = m - theta s``), not from bridge's code: a neuron that
fires on ``>`` or rounds the reset differently fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from spikingjelly.activation_based import functional, neuron

from exporters.runtime_norse import IFSubtractCell
from exporters.runtime_spikingjelly import (InitialPotentialIFNode, PerNeuronThresholdIFNode,
                                            make_if_node)

STEPS = 6
DTYPES = [torch.float64, torch.float32]


def currents(theta: np.ndarray, v_init: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """[T, 1, 4 * N]: per neuron four columns: a tie at t = 1, at t = 2, at t = 4, and
    m = nextafter(theta, -inf) at t = 1."""
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    theta, v_init = theta.astype(np_dtype), v_init.astype(np_dtype)
    below = np.nextafter(theta, np_dtype(-np.inf)) - v_init
    assert np.all(below + v_init == np.nextafter(theta, np_dtype(-np.inf)))  # exact by construction
    gap = theta - v_init
    cols = np.concatenate([gap, gap / 2, gap / 4, below])
    return np.broadcast_to(cols, (STEPS, 1, cols.size)).copy()


def expected(x: np.ndarray, theta: np.ndarray, v_init: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bridge IF rule, step by step, in the dtype of ``x``."""
    theta = np.tile(theta, 4).astype(x.dtype)
    v = np.broadcast_to(np.tile(v_init, 4).astype(x.dtype), x.shape[1:]).copy()
    spikes, volts = [], []
    for t in range(x.shape[0]):
        m = v + x[t]
        s = (m >= theta).astype(x.dtype)
        v = m - theta * s
        spikes.append(s), volts.append(v.copy())
    return np.stack(spikes), np.stack(volts)


def run_spikingjelly(node: neuron.BaseNode, x: torch.Tensor, step_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    functional.reset_net(node)
    if step_mode == "m":
        node.store_v_seq = True
        return node(x), node.v_seq
    spikes, volts = [], []
    for xt in x:
        spikes.append(node(xt)), volts.append(node.v.clone())
    return torch.stack(spikes), torch.stack(volts)


# (label, per-neuron theta, v_init, the class make_if_node must choose)
KINDS = [
    ("uniform theta, v_init theta/2", np.full(3, 0.75), np.full(3, 0.375), neuron.HalfThresholdIFNode),
    ("uniform theta, other v_init", np.full(3, 1.25), np.array([0.0, 0.5, 0.125]), InitialPotentialIFNode),
    ("per-neuron theta and v_init", np.array([0.5, 1.0, 1.5]), np.array([0.25, 0.0, 0.375]),
     PerNeuronThresholdIFNode),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("step_mode", ["m", "s"])
@pytest.mark.parametrize("label, theta, v_init, cls", KINDS, ids=[k[0] for k in KINDS])
def test_spikingjelly_exporter_neurons_fire_on_exact_ties(label, theta, v_init, cls, step_mode, dtype):
    wide_theta, wide_v = np.tile(theta, 4), np.tile(v_init, 4)
    node = make_if_node(torch.from_numpy(wide_theta), torch.from_numpy(wide_v), step_mode=step_mode).to(dtype)
    assert type(node) is cls
    x = currents(theta, v_init, dtype)
    s, v = run_spikingjelly(node, torch.from_numpy(x), step_mode)
    s_want, v_want = expected(x, theta, v_init)
    assert s.dtype == dtype
    np.testing.assert_array_equal(s.numpy(), s_want)
    np.testing.assert_array_equal(v.numpy(), v_want)
    n = theta.size
    assert s_want[0, 0, :n].tolist() == [1.0] * n  # the tie at t = 1 fires ...
    assert s_want[0, 0, 3 * n:].tolist() == [0.0] * n  # ... one ulp below does not
    assert s_want[1, 0, n:2 * n].tolist() == [1.0] * n and s_want[3, 0, 2 * n:3 * n].tolist() == [1.0] * n


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_spikingjelly_ifnode_kernel_fires_on_exact_ties(step_mode, dtype):
    """SpikingJelly's own IFNode (subtract reset, v(0) = 0): the kernel InitialPotentialIFNode runs."""
    theta, v_init = np.full(3, 0.75), np.zeros(3)
    node = neuron.IFNode(v_threshold=0.75, v_reset=None, step_mode=step_mode).to(dtype)
    x = currents(theta, v_init, dtype)
    s, v = run_spikingjelly(node, torch.from_numpy(x), step_mode)
    s_want, v_want = expected(x, theta, v_init)
    np.testing.assert_array_equal(s.numpy(), s_want)
    np.testing.assert_array_equal(v.numpy(), v_want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("label, theta, v_init, cls", KINDS, ids=[k[0] for k in KINDS])
def test_norse_exporter_cell_fires_on_exact_ties(label, theta, v_init, cls, dtype):
    cell = IFSubtractCell(torch.from_numpy(np.tile(theta, 4)), torch.from_numpy(np.tile(v_init, 4))).to(dtype)
    x = currents(theta, v_init, dtype)
    state, spikes, volts = None, [], []
    for xt in torch.from_numpy(x):
        z, state = cell(xt, state)
        spikes.append(z), volts.append(state.v)
    s_want, v_want = expected(x, theta, v_init)
    assert spikes[0].dtype == dtype
    np.testing.assert_array_equal(torch.stack(spikes).numpy(), s_want)
    np.testing.assert_array_equal(torch.stack(volts).numpy(), v_want)


def _step_snntorch(neuron, explicit: bool):
    """One snnTorch step per call: (spikes, mem) from init_hidden or from an explicit mem."""
    mem = neuron.reset_mem()

    def step(xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal mem
        if explicit:
            spk, mem = neuron(xt, mem)
            return spk, mem
        return neuron(xt), neuron.mem

    return step


def _step_sinabs(neuron, explicit: bool):
    """sinabs's squeezed layout, one step per call ([B*T, ...] with T = 1); state kept in the layer."""
    import sinabs

    sinabs.reset_states(neuron)
    neuron.batch_size, neuron.num_timesteps = 1, 1

    def step(xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return neuron(xt), neuron.v_mem.clone()

    return step


def _snntorch_neuron(theta, v_init, explicit):
    from exporters.runtime_snntorch import IFLeaky

    return IFLeaky(theta, v_init, init_hidden=not explicit)


def _sinabs_neuron(theta, v_init, explicit):
    from exporters.runtime_sinabs import IFSqueeze

    return IFSqueeze(theta, v_init, batch_size=1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("framework, make, stepper, explicit", [
    ("snntorch init_hidden", _snntorch_neuron, _step_snntorch, False),
    ("snntorch explicit mem", _snntorch_neuron, _step_snntorch, True),
    ("sinabs IAFSqueeze", _sinabs_neuron, _step_sinabs, False),
], ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("label, theta, v_init, cls", KINDS, ids=[k[0] for k in KINDS])
def test_snntorch_and_sinabs_exporter_neurons_fire_on_exact_ties(label, theta, v_init, cls, framework, make,
                                                                 stepper, explicit, dtype):
    """snnTorch alone fires on mem > threshold and resets a step late; sinabs's SingleSpike
    returns float32 spikes that round a float64 threshold: the exported neurons do neither."""
    neuron = make(torch.from_numpy(np.tile(theta, 4)), torch.from_numpy(np.tile(v_init, 4)), explicit).to(dtype)
    step = stepper(neuron, explicit)
    x = currents(theta, v_init, dtype)
    spikes, volts = [], []
    with torch.no_grad():
        for xt in torch.from_numpy(x):
            s, v = step(xt)
            spikes.append(s), volts.append(v)
    s_want, v_want = expected(x, theta, v_init)
    assert spikes[0].dtype == dtype and volts[0].dtype == dtype
    np.testing.assert_array_equal(torch.stack(spikes).numpy(), s_want)
    np.testing.assert_array_equal(torch.stack(volts).numpy(), v_want)
