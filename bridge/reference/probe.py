"""One dry run of a graph read from disk: do its nodes fit together?

:mod:`bridge.format.graph_checks` checks each node on its own. Whether the shapes of connected
nodes agree (an Affine of 24 outputs feeding an IF layer of 32 neurons, a Flatten whose
input is not what its source emits, a conv whose input channels differ) is decided by the
definition of what runs: the reference simulator, compiled and run for two steps on one
zero sample. Every command that reads a NIR file calls :func:`read_runnable_graph`, so a
graph that ``simulate`` would refuse is refused by ``inspect`` (and every other command)
in the same words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import nir
import torch

from bridge.format.errors import BridgeError
from bridge.format.input_files import first_line
from bridge.format.nirio import read_graph

_LEAKY = (nir.LI, nir.LIF)


def _has_leaky(graph: nir.NIRGraph) -> bool:
    return any(
        isinstance(n, _LEAKY) or (isinstance(n, nir.NIRGraph) and _has_leaky(n))
        for n in graph.nodes.values()
    )


@dataclass(frozen=True)
class GraphProbe:
    """What the dry run found: one sample's output shape and how many IF/LIF neurons a trace
    records (what a run's memory needs per sample and step)."""

    output_shape: tuple[int, ...]
    traced_neurons: int

    @property
    def classes(self) -> int:
        """The number of classes the graph's output scores (elements of one sample's output)."""
        return math.prod(self.output_shape)

    def step_footprint(self, itemsize: int, trace: bool) -> int:
        """Bytes one sample needs per time step in a run's results: the output (kept for the
        readout) and, with ``trace``, the spikes (1 byte) and potentials of every IF/LIF node."""
        return self.classes * itemsize + (self.traced_neurons * (1 + itemsize) if trace else 0)


def probe_graph(graph: nir.NIRGraph, source: str | Path = "the graph") -> GraphProbe:
    """Compile ``graph`` with the reference simulator and run it, traced, on one zero sample for
    two steps. Raises BridgeError if it cannot run."""
    from bridge.reference import ReferenceSimulator

    # leaky nodes need a dt to run at all; any positive one tells whether the shapes fit
    dt = 1e-3 if _has_leaky(graph) else None
    try:
        sim = ReferenceSimulator(graph, dtype=torch.float64, dt=dt)
        x = torch.zeros((1, *sim.input_shape), dtype=torch.float64)
        result = sim.run(x, 2, trace=True)
    except BridgeError as exc:
        raise BridgeError(f"{source}: {exc}") from None
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            ZeroDivisionError, OverflowError, MemoryError) as exc:
        raise BridgeError(
            f"{source}: the graph does not run: its nodes do not fit together "
            f"({first_line(exc)}); the file is damaged or was edited; re-export it"
        ) from None
    traced = sum(tr.v[0, 0].numel() for tr in result.traces.values())
    return GraphProbe(tuple(result.outputs.shape[2:]), traced)


def read_probed_graph(path: str | Path) -> tuple[nir.NIRGraph, GraphProbe]:
    """:func:`bridge.format.nirio.read_graph` plus :func:`probe_graph`: the graph is valid and
    runs; the probe's facts come with it, so that no caller runs the graph again for them."""
    graph = read_graph(path)
    return graph, probe_graph(graph, path)


def read_runnable_graph(path: str | Path) -> nir.NIRGraph:
    """:func:`read_probed_graph` without the probe."""
    return read_probed_graph(path)[0]


def output_classes(graph: nir.NIRGraph) -> int:
    """The number of classes the graph's output scores (one dry run; see :class:`GraphProbe`)."""
    return probe_graph(graph).classes


def step_footprint(graph: nir.NIRGraph, itemsize: int, trace: bool) -> int:
    """:meth:`GraphProbe.step_footprint` of ``graph`` (one dry run)."""
    return probe_graph(graph).step_footprint(itemsize, trace)
