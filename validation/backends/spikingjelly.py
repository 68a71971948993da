"""The exported SpikingJelly model as a validation backend ('spikingjelly', 'spikingjelly-s').

Builds the model with :func:`exporters.spikingjelly.build` from the graph alone and reports
per-IF-node traces under the NIR node names (the submodules carry those names). The
neurons keep the graph's thresholds (no normalisation), so spikes and potentials are in
the reference's units as they are.
"""

from __future__ import annotations

from typing import ClassVar

import nir
import torch

from bridge.errors import BridgeError
from validation.backends.base import Backend, BackendRefused, NodeTrace, SimulationResult


class SpikingJellyBackend(Backend):
    """SpikingJelly 2.0 model from ``bridge export --to spikingjelly``, multi-step mode."""

    name = "spikingjelly"
    requires = ("spikingjelly",)
    faithful = True
    description = "exported SpikingJelly 2.0 model (IFNode family, step mode 'm')"
    step_mode: ClassVar[str] = "m"

    def __init__(self, graph: nir.NIRGraph, *, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(graph, dtype=dtype, device=device)
        from exporters.spikingjelly import build

        try:
            self.net = build(graph, step_mode=self.step_mode).to(dtype=dtype, device=self.device)
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
                node = net.neuron(name)

                def hook(mod, _inp, out, name=name):  # post-reset v of this call
                    spikes[name].append(out)
                    volts[name].append(mod.v_seq if self.step_mode == "m" else mod.v.clone())

                node.store_v_seq = self.step_mode == "m"
                hooks.append(node.register_forward_hook(hook))
        try:
            with torch.no_grad():
                outputs = net.simulate(x, steps)
        finally:
            for h in hooks:
                h.remove()
            for name in net.neuron_names:
                net.neuron(name).store_v_seq = False
        traces: dict[str, NodeTrace] = {}
        for name in net.neuron_names if trace else []:
            stack = torch.cat if self.step_mode == "m" else torch.stack
            traces[name] = NodeTrace(spikes=stack(spikes[name]), v=stack(volts[name]))
        return SimulationResult(outputs=outputs, traces=traces, readout_kind=net.readout_kind)


class SpikingJellySingleStepBackend(SpikingJellyBackend):
    """The same model in single-step mode (one ``forward`` per time step)."""

    name = "spikingjelly-s"
    description = "exported SpikingJelly 2.0 model, step mode 's'"
    step_mode = "s"
