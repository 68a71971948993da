"""The one small interface every backend implements (reference, exporters, importers).

Modelled on ONNX's backend tests: the reference defines the semantics, each backend
builds itself from the same NIR graph and runs the same inputs, and the suite compares
outputs and per-node traces aligned by NIR node name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import nir
import torch

from bridge.format.errors import BridgeError
from bridge.reference.result import NodeTrace, SimulationResult

__all__ = ["Backend", "BackendRefused", "NodeTrace", "SimulationResult"]


class BackendRefused(BridgeError):
    """A backend cannot run this graph (e.g. a third-party importer rejects a node or
    parameter). The validation suite records the message as the backend's result."""


class Backend(ABC):
    """A way of running a NIR graph for T steps.

    Subclasses set ``name`` (the ``--backends`` name; the framework it needs is named in
    :data:`validation.backends.BACKENDS`) and ``faithful`` (True when the backend is expected to reproduce the
    reference exactly; third-party importers that cannot read bridge metadata are not,
    and are measured instead of failed).
    """

    name: ClassVar[str]
    faithful: ClassVar[bool] = True
    description: ClassVar[str] = ""

    def __init__(self, graph: nir.NIRGraph, *, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu") -> None:
        self.graph = graph
        self.dtype = dtype
        self.device = torch.device(device)

    @abstractmethod
    def run(self, x: torch.Tensor, steps: int, *, trace: bool = False) -> SimulationResult:
        """Run ``steps`` steps on the batch ``x`` ``[B, *input_shape]`` from a fresh state.

        The input is encoded as the graph says (bridge graphs: ``x`` is the current at
        every step). With ``trace=True`` the result holds a :class:`NodeTrace` for every IF
        node the backend can observe, keyed by NIR node name.
        """
