"""The ANN view of a converted graph: every IF replaced by its rate function.

Under a constant input current z an IF neuron (subtract reset, 0 <= v_init < theta)
fires :math:`N_T = \\mathrm{clip}(\\lfloor (T z + v_{init}) / \\theta \\rfloor, 0, T)` times,
so its rate tends to :math:`\\mathrm{clip}(z / \\theta, 0, 1)` as T grows. Evaluating the
graph once with that rate in place of every IF node (unit spikes: the consumers' weights
hold theta) must reproduce the ANN the graph was converted from: the converter uses it
to prove a conversion correct. An IF node marked with a QCFS staircase (``qcfs_levels`` L,
``qcfs_shift`` s; :mod:`bridge.format.extension`) is the staircase
:math:`\frac{1}{L}\mathrm{clip}(\lfloor z L / \theta + s \rfloor, 0, L)` the model was trained
with (what its IF layer computes at T = L), so the view of a QCFS model is that model.
"""

from __future__ import annotations

import nir
import torch

from bridge.format.errors import BridgeError
from bridge.reference.simulator import ReferenceSimulator


class AnnView:
    """The ANN view of ``graph`` compiled once (float64 rate neurons), to call on many batches.

    BridgeError when the graph has none (feedback edges; neurons other than IF say so when
    called)."""

    def __init__(self, graph: nir.NIRGraph) -> None:
        # dt only matters to LI/LIF nodes, which have no rate: any value lets them say so
        self.sim = ReferenceSimulator(graph, dtype=torch.float64, dt=1.0)
        if self.sim.plan.has_cycles:
            raise BridgeError("the graph has feedback edges: it has no ANN view")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The value reaching the Output node for ``x`` ``[B, *input_shape]``, ``[B, *output_shape]``."""
        sim, plan = self.sim, self.sim.plan
        shape = sim.input_shape
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != shape or x.dim() != len(shape) + 1:
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise BridgeError(f"the input has shape {got}, the ANN view expects "
                              f"[B, {', '.join(map(str, shape))}]; reshape the input")
        values: dict[str, torch.Tensor] = {}
        for name in plan.order:
            if name == plan.input_name:
                value = x.to(torch.float64)
            else:
                srcs = plan.inputs[name]
                value = values[srcs[0]]
                for src in srcs[1:]:
                    value = value + values[src]
            values[name] = sim.ops[name].rate(value)  # type: ignore[attr-defined]
        return values[plan.output_name]


def ann_view(graph: nir.NIRGraph, x: torch.Tensor) -> torch.Tensor:
    """Evaluate ``graph`` once on ``x`` ``[B, *input_shape]`` in float64 with rate neurons.

    Returns the value reaching the Output node, ``[B, *output_shape]``. Graphs with
    feedback edges or neurons other than IF have no ANN view (BridgeError). For many batches
    build an :class:`AnnView` once.
    """
    return AnnView(graph)(x)
