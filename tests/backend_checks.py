"""Per-step agreement of the exported backends with the reference simulator."""

from __future__ import annotations

import nir
import torch

from bridge.reference import SimulationResult
from validation.backends.norse import NorseBackend
from validation.backends.sinabs import SinabsBackend
from validation.backends.snntorch import SnnTorchBackend
from validation.backends.spikingjelly import SpikingJellyBackend


def assert_exports_agree_per_step(graph: nir.NIRGraph, x: torch.Tensor, steps: int, ref: SimulationResult) -> None:
    """Every export (SpikingJelly, Norse, snnTorch, sinabs) gives the reference run ``ref``:
    the spikes and the potential of every traced node at every step, and the outputs, bit
    for bit."""
    for backend in (SpikingJellyBackend, NorseBackend, SnnTorchBackend, SinabsBackend):
        got = backend(graph).run(x, steps, trace=True)
        for node, rt in ref.traces.items():
            assert torch.equal(got.traces[node].spikes, rt.spikes), (backend.name, node)
            assert torch.equal(got.traces[node].v, rt.v), (backend.name, node)
        assert torch.equal(got.outputs, ref.outputs)
