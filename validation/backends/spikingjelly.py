"""The exported SpikingJelly model as a validation backend ('spikingjelly', 'spikingjelly-s').

Builds the model with :func:`exporters.spikingjelly.build` from the graph alone and reports
per-IF-node traces under the NIR node names (the submodules carry those names). The
neurons keep the graph's thresholds (no normalisation), so spikes and potentials are in
the reference's units as they are.
"""

from __future__ import annotations

from typing import Any, ClassVar

import nir
import torch
from torch import nn

from validation.backends.exported import ExportedModelBackend


class SpikingJellyBackend(ExportedModelBackend):
    """SpikingJelly 2.0 model from ``bridge export --to spikingjelly``, multi-step mode."""

    name = "spikingjelly"
    faithful = True
    description = "exported SpikingJelly 2.0 model (IFNode family, step mode 'm')"
    step_mode: ClassVar[str] = "m"

    def build_network(self, graph: nir.NIRGraph) -> nn.Module:
        from exporters.spikingjelly import build

        return build(graph, step_mode=self.step_mode)

    def set_tracing(self, neuron: nn.Module, on: bool) -> None:
        # multi-step mode keeps the potential of every step only when asked to
        neuron.store_v_seq = on and self.step_mode == "m"

    def read_hook(self, neuron: nn.Module, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        # post-reset v of this call: [T, B, ...] in mode 'm', [B, ...] in mode 's'
        return output, (neuron.v_seq if self.step_mode == "m" else neuron.v.clone())

    def join(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(pieces) if self.step_mode == "m" else torch.stack(pieces)


class SpikingJellySingleStepBackend(SpikingJellyBackend):
    """The same model in single-step mode (one ``forward`` per time step)."""

    name = "spikingjelly-s"
    description = "exported SpikingJelly 2.0 model, step mode 's'"
    step_mode = "s"
