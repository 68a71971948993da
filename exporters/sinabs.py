"""NIR graph -> native sinabs 3.1 model (``bridge export --to sinabs``).

The model is built by :mod:`exporters.runtime_sinabs` (the file an artifact ships as
``model.py``) from the export spec of :mod:`exporters.graph_spec`; see those modules for
the neuron construction (an ``IAFSqueeze`` with one spike per step on ``m >= theta`` in the
model's dtype, and per-neuron initial potentials) and why it reproduces the reference
simulator exactly.
"""

from __future__ import annotations

import nir

from exporters.graph_spec import graph_to_spec
from exporters.runtime_sinabs import SinabsNetwork, build_from_spec

__all__ = ["SinabsNetwork", "build"]


def build(graph: nir.NIRGraph, *, batch_size: int | None = None,
          num_timesteps: int | None = None) -> SinabsNetwork:
    """A sinabs network (float64, eval mode) that runs ``graph`` like the reference.

    ``forward`` takes sinabs's squeezed ``[B*T, ...]`` layout, so give ``batch_size`` or
    ``num_timesteps`` (or set them later as attributes); ``simulate``/``predict`` need
    neither. Raises :class:`bridge.format.errors.BridgeError` for graph content sinabs
    cannot reproduce.
    """
    spec, tensors = graph_to_spec(graph)
    return build_from_spec(spec, tensors, batch_size=batch_size, num_timesteps=num_timesteps)
