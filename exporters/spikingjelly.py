"""NIR graph -> native SpikingJelly 2.0 model (``bridge export --to spikingjelly``).

The model is built by :mod:`exporters.runtime_spikingjelly` (the file an artifact ships as
``model.py``) from the export spec of :mod:`exporters.graph_spec`; see those modules for
the neuron construction and why it reproduces the reference simulator exactly.
"""

from __future__ import annotations

import nir

from bridge.format.errors import BridgeError
from exporters.capabilities import check_unbounded
from exporters.graph_spec import graph_to_spec
from exporters.runtime_spikingjelly import SpikingJellyNetwork, build_from_spec

__all__ = ["SpikingJellyNetwork", "build"]


def build(graph: nir.NIRGraph, *, step_mode: str = "m") -> SpikingJellyNetwork:
    """A SpikingJelly network (float64, eval mode) that runs ``graph`` like the reference.

    ``step_mode`` ``'m'`` (``[T, B, ...]`` per call) or ``'s'`` (one step per call); change it
    later with ``spikingjelly.activation_based.functional.set_step_mode``. Raises
    :class:`bridge.format.errors.BridgeError` for graph content SpikingJelly cannot reproduce.
    """
    if step_mode not in ("s", "m"):
        raise BridgeError(f"step_mode must be 's' or 'm', got {step_mode!r}")
    check_unbounded(graph, "SpikingJelly")
    spec, tensors = graph_to_spec(graph)
    return build_from_spec(spec, tensors, step_mode=step_mode)
