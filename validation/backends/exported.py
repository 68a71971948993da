"""What the exporters' backends share: build from the graph, trace through forward hooks.

An exported network (SpikingJelly, Norse, snnTorch or sinabs) carries its IF neurons as submodules named
after the NIR nodes and offers ``simulate(x, steps) -> [T, B, ...]``; a forward hook on
each neuron records its spikes and post-reset potential. Subclasses say how to build the
network and how to read one hook call.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import nir
import torch
from torch import nn

from bridge.format.errors import BridgeError
from validation.backends.base import Backend, BackendRefused, NodeTrace, SimulationResult


class ExportedModelBackend(Backend):
    """A backend running the model an exporter builds from the NIR graph alone."""

    def __init__(self, graph: nir.NIRGraph, *, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(graph, dtype=dtype, device=device)
        try:
            self.net = self.build_network(graph).to(dtype=dtype, device=self.device)
        except BridgeError as exc:
            raise BackendRefused(str(exc)) from None

    @abstractmethod
    def build_network(self, graph: nir.NIRGraph) -> nn.Module:
        """The exporter's model for ``graph``."""

    @abstractmethod
    def read_hook(self, neuron: nn.Module, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(spikes, post-reset potential) from one forward call of a neuron module."""

    def set_tracing(self, neuron: nn.Module, on: bool) -> None:
        """Switch on whatever the neuron needs to expose its potential (default: nothing)."""

    def join(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        """The recorded pieces as ``[T, B, ...]`` (default: one piece per step)."""
        return torch.stack(pieces)

    def run(self, x: torch.Tensor, steps: int, *, trace: bool = False) -> SimulationResult:
        net = self.net
        names = list(net.neuron_names) if trace else []
        spikes: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        volts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        hooks = []
        for name in names:
            neuron = net.neuron(name)

            def hook(mod: nn.Module, _inp: Any, out: Any, name: str = name) -> None:
                s, v = self.read_hook(mod, out)
                spikes[name].append(s)
                volts[name].append(v)

            self.set_tracing(neuron, True)
            hooks.append(neuron.register_forward_hook(hook))
        try:
            with torch.no_grad():
                outputs = net.simulate(x.to(dtype=self.dtype, device=self.device), steps)
        finally:
            for h in hooks:
                h.remove()
            for name in names:
                self.set_tracing(net.neuron(name), False)
        traces = {n: NodeTrace(spikes=self.join(spikes[n]), v=self.join(volts[n])) for n in names}
        return SimulationResult(outputs=outputs, traces=traces, readout_kind=net.readout_kind)
