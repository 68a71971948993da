"""The exported Norse model as a validation backend ('norse').

Builds the model with :func:`exporters.norse.build` from the graph alone; traces come
from each IF cell's ``(z, IAFFeedForwardState)`` at every step, under the NIR node names,
in the reference's units (thresholds are not normalised).
"""

from __future__ import annotations

from typing import Any

import nir
import torch
from torch import nn

from validation.backends.exported import ExportedModelBackend


class NorseBackend(ExportedModelBackend):
    """Norse 1.1 model from ``bridge export --to norse`` (one step per call)."""

    name = "norse"
    faithful = True
    description = "exported Norse 1.1 model (Norse primitives, subtract reset, v >= theta)"

    def build_network(self, graph: nir.NIRGraph) -> nn.Module:
        from exporters.norse import build

        return build(graph)

    def read_hook(self, neuron: nn.Module, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        z, state = output  # a Norse cell returns (spikes, IAFFeedForwardState)
        return z, state.v
