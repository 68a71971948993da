"""The reference simulator as a backend: the semantics every other backend is measured against."""

from __future__ import annotations

import nir
import torch

from validation.backends.base import Backend, SimulationResult


class ReferenceBackend(Backend):
    """``bridge.reference.ReferenceSimulator``: the bridge extension semantics (or the NIR text).

    The graph is compiled once and run on every batch. ``dt`` is the time step of LI/LIF
    nodes (NIR carries none; only graphs with such nodes need it).
    """

    name = "reference"
    faithful = True
    description = "bridge reference simulator (defines correctness)"

    def __init__(self, graph: nir.NIRGraph, *, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu", dt: float | None = None) -> None:
        super().__init__(graph, dtype=dtype, device=device)
        from bridge.reference import ReferenceSimulator

        self.simulator = ReferenceSimulator(graph, dtype=dtype, device=self.device, dt=dt)

    def run(self, x: torch.Tensor, steps: int, *, trace: bool = False) -> SimulationResult:
        return self.simulator.run(x.to(self.dtype), steps, trace=trace)
