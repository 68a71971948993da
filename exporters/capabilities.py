"""What the framework exporters cannot reproduce, refused with one line before a model is built.

The SpikingJelly, Norse, snnTorch and sinabs exporters rebuild bridge's
IF rule with their frameworks' neurons, none of which saturates the membrane potential. A graph
whose IF nodes state the state's range (``v_min`` / ``v_max``, bridge NIR extension 1.1, written
for a chip target such as Speck) would run there without the bounds, so it is refused here. The
fixed-point graph of ``--weights int8`` states no bounds and is exported unchanged.
"""

from __future__ import annotations

import nir

from bridge.format.errors import BridgeError
from bridge.format.extension import graph_has_bounds


def check_unbounded(graph: nir.NIRGraph, target: str = "this exporter") -> None:
    """Raise a one-line BridgeError if an IF node of ``graph`` bounds its potential."""
    bounded = graph_has_bounds(graph)
    if bounded:
        more = f" (and {len(bounded) - 1} more)" if len(bounded) > 1 else ""
        raise BridgeError(
            f"IF node {bounded[0]!r}{more} bounds its potential (v_min / v_max, bridge NIR 1.1), which "
            f"{target} cannot reproduce (no saturating neuron); export the graph without bounds "
            "(fixed point without a chip target writes none) or use the Speck target")
