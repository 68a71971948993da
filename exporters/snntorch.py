"""NIR graph -> native snnTorch 1.0 model (``bridge export --to snntorch``).

The model is built by :mod:`exporters.runtime_snntorch` (the file an artifact ships as
``model.py``) from the export spec of :mod:`exporters.graph_spec`; see those modules for
the neuron construction (a ``snntorch.Leaky`` with beta = 1, ``m >= theta`` and the
reference's subtraction) and why it reproduces the reference simulator exactly.
"""

from __future__ import annotations

import nir

from exporters.graph_spec import graph_to_spec
from exporters.runtime_snntorch import SnnTorchNetwork, build_from_spec

__all__ = ["SnnTorchNetwork", "build"]


def build(graph: nir.NIRGraph, *, init_hidden: bool = True) -> SnnTorchNetwork:
    """An snnTorch network (float64, eval mode) that runs ``graph`` like the reference.

    ``init_hidden=True``: ``forward(x) -> out`` is one time step, the state lives in the
    neurons (``net.reset()`` starts afresh); ``False``: ``forward(x, mems) -> (out, mems)``.
    Raises :class:`bridge.format.errors.BridgeError` for graph content snnTorch cannot
    reproduce.
    """
    spec, tensors = graph_to_spec(graph)
    return build_from_spec(spec, tensors, init_hidden=init_hidden)
