"""bridge: trained PyTorch ANNs to low-latency spiking networks, carried through NIR.

The Python API mirrors the command line::

    import bridge
    graph = bridge.convert(model, input_shape=(1, 16, 16))          # bridge export --to nir
    bridge.write_graph(graph, "model.nir")
    result = bridge.simulate(graph, x, steps=8)                      # bridge simulate
    result.predictions()

Heavy modules are imported on first use, so ``import bridge`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from bridge.model.activations import QCFS, ClippedReLU
from bridge.format.errors import BridgeError, ValidationFailed
from bridge.format.nirio import read_graph, write_graph



def _package_version() -> str:
    """The installed distribution's version (pyproject.toml's, via its metadata): the one
    version of bridge, shown by ``bridge --version`` and everywhere else."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bridge-snn")
    except PackageNotFoundError:  # a source tree put on sys.path without installing it
        return "0+unknown"


__version__ = _package_version()

_LAZY = {
    "convert": ("bridge.converter", "convert"),
    "simulate": ("bridge.reference", "simulate"),
    "ann_view": ("bridge.reference", "ann_view"),
    "load_model": ("bridge.model.loading", "load_model"),
    "optimize_initial_potentials": ("bridge.passes.optimize", "optimize_initial_potentials"),
    "inspect_graph": ("bridge.format.inspect", "inspect_graph"),
}

__all__ = [
    "QCFS",
    "BridgeError",
    "ClippedReLU",
    "ValidationFailed",
    "read_graph",
    "write_graph",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'bridge' has no attribute {name!r}")
