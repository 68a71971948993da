"""NIR graph -> native Norse 1.1 model (``bridge export --to norse``).

The model is built by :mod:`exporters.runtime_norse` (the file an artifact ships as
``model.py``) from the export spec of :mod:`exporters.graph_spec`; see those modules for
the neuron construction (subtract reset and ``v >= theta`` from Norse's primitives) and
why it reproduces the reference simulator exactly.
"""

from __future__ import annotations

import nir

from exporters.capabilities import check_unbounded
from exporters.graph_spec import graph_to_spec
from exporters.runtime_norse import NorseNetwork, build_from_spec

__all__ = ["NorseNetwork", "build"]


def build(graph: nir.NIRGraph) -> NorseNetwork:
    """A Norse network (float64, eval mode) that runs ``graph`` like the reference.

    ``forward(x, state=None) -> (out, state)`` is one time step. Raises
    :class:`bridge.format.errors.BridgeError` for graph content Norse cannot reproduce.
    """
    check_unbounded(graph, "Norse")
    spec, tensors = graph_to_spec(graph)
    return build_from_spec(spec, tensors)
