"""The exported sinabs model as a validation backend ('sinabs').

Builds the model with :func:`exporters.sinabs.build` from the graph alone. Each
``IFSqueeze`` neuron runs all T steps in one call (squeezed ``[B*T, ...]``, batch-major);
with ``record_states`` on, sinabs records its post-reset ``v_mem`` at every step. Traces are
reported under the NIR node names as ``[T, B, ...]``, in the reference's units.
"""

from __future__ import annotations

from typing import Any

import nir
import torch
from torch import nn

from validation.backends.exported import ExportedModelBackend


class SinabsBackend(ExportedModelBackend):
    """sinabs 3.1 model from ``bridge export --to sinabs`` (IAFSqueeze, [B*T, ...])."""

    name = "sinabs"
    faithful = True
    description = "exported sinabs 3.1 model (IAFSqueeze, one spike on m >= theta, subtract reset)"

    def build_network(self, graph: nir.NIRGraph) -> nn.Module:
        from exporters.sinabs import build

        return build(graph)

    def set_tracing(self, neuron: nn.Module, on: bool) -> None:
        neuron.record_states = on

    def read_hook(self, neuron: nn.Module, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        batch, steps = neuron.batch_size, neuron.num_timesteps
        spikes = output.reshape(batch, steps, *output.shape[1:]).transpose(0, 1)
        return spikes, neuron.recordings["v_mem"].transpose(0, 1)  # [B, T, ...] -> [T, B, ...]

    def join(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(pieces)  # one call per run: all T steps
