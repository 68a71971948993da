"""The reference simulator: the executable statement of what a bridge NIR graph computes.

``simulate(graph, x, steps)`` runs a graph; :class:`ReferenceSimulator` compiles it once for
many runs; :func:`ann_view` evaluates it once with rate neurons (the ANN it came from).
One operator per NIR node type lives in :mod:`bridge.reference.ops`; the semantics are
documented in ``docs/reference-simulator.md``.
"""

from bridge.reference.ann import AnnView, ann_view
from bridge.reference.result import NodeTrace, SimulationResult
from bridge.reference.simulator import ReferenceSimulator, simulate

__all__ = ["AnnView", "NodeTrace", "ReferenceSimulator", "SimulationResult", "ann_view", "simulate"]
