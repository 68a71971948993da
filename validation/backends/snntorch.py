"""The exported snnTorch model as a validation backend ('snntorch').

Builds the model with :func:`exporters.snntorch.build` from the graph alone; traces come
from each ``IFLeaky`` neuron at every step (its spikes and ``mem``, the post-reset
potential), under the NIR node names, in the reference's units.
"""

from __future__ import annotations

from typing import Any

import nir
import torch
from torch import nn

from validation.backends.exported import ExportedModelBackend


class SnnTorchBackend(ExportedModelBackend):
    """snnTorch 1.0 model from ``bridge export --to snntorch`` (one step per call)."""

    name = "snntorch"
    faithful = True
    description = "exported snnTorch 1.0 model (Leaky with beta = 1, m >= theta, subtract reset)"

    def build_network(self, graph: nir.NIRGraph) -> nn.Module:
        from exporters.snntorch import build

        return build(graph)

    def read_hook(self, neuron: nn.Module, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return output, neuron.mem  # init_hidden: forward returns the spikes, mem is v(t)
