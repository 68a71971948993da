"""The exported Norse model as a validation backend ('norse').

Builds the model with :func:`exporters.norse.build` from the graph alone; traces come
from each IF cell's ``(z, IAFFeedForwardState)`` at every step, under the NIR node names,
in the reference's units (thresholds are not normalised).
"""

from __future__ import annotations

import nir
import torch

from bridge.errors import BridgeError
from validation.backends.base import Backend, BackendRefused, NodeTrace, SimulationResult


class NorseBackend(Backend):
    """Norse 1.1 model from ``bridge export --to norse`` (one step per call)."""

    name = "norse"
    requires = ("norse",)
    faithful = True
    description = "exported Norse 1.1 model (Norse primitives, subtract reset, v >= theta)"

    def __init__(self, graph: nir.NIRGraph, *, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(graph, dtype=dtype, device=device)
        from exporters.norse import build

        try:
            self.net = build(graph).to(dtype=dtype, device=self.device)
        except BridgeError as exc:
            raise BackendRefused(str(exc)) from None

    def run(self, x: torch.Tensor, steps: int, *, trace: bool = False) -> SimulationResult:
        net = self.net
        x = x.to(dtype=self.dtype, device=self.device)
        spikes: dict[str, list[torch.Tensor]] = {n: [] for n in net.neuron_names}
        volts: dict[str, list[torch.Tensor]] = {n: [] for n in net.neuron_names}
        hooks = []
        if trace:
            for name in net.neuron_names:
                def hook(_mod, _inp, out, name=name):  # out = (z, IAFFeedForwardState)
                    spikes[name].append(out[0])
                    volts[name].append(out[1].v)

                hooks.append(net.neuron(name).register_forward_hook(hook))
        try:
            with torch.no_grad():
                outputs = net.simulate(x, steps)
        finally:
            for h in hooks:
                h.remove()
        traces = {
            name: NodeTrace(spikes=torch.stack(spikes[name]), v=torch.stack(volts[name]))
            for name in (net.neuron_names if trace else [])
        }
        return SimulationResult(outputs=outputs, traces=traces, readout_kind=net.readout_kind)
