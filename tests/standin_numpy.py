"""A second, independent simulator of bridge IF graphs, in a few lines of NumPy, as a backend.

It shares no code with the system under test: it does not call ``bridge.format.neurons``
(the IF rule), ``bridge.format.extension.if_semantics`` or the reference simulator, and reads
the bridge metadata keys itself. A bug in any of those cannot hide behind it.

Supported: Input, Affine, Linear, Scale, Flatten, IF (bridge metadata: subtract reset,
``m >= theta``, ``v(0) = v_init``), Output; several edges into one node are summed. The
``rule`` knobs let tests build deliberately wrong backends.
"""

from __future__ import annotations

from typing import ClassVar

import nir
import numpy as np
import torch

from validation.backends.base import Backend, BackendRefused, NodeTrace, SimulationResult


class NumpyIF(Backend):
    """IF networks in NumPy float64: ``m = v + I; s = [m >= theta]; v = m - theta s``."""

    name = "numpy-if"
    faithful = True
    description = "independent NumPy IF simulator (tests)"
    fires_on_equal: ClassVar[bool] = True  # False: s = [m > theta] (a wrong rule)
    slack: ClassVar[float] = 0.0  # fire when m + slack >= theta (a wrong rule when > 0)
    use_v_init: ClassVar[bool] = True  # False: start at v = 0 (a wrong rule)

    def __init__(self, graph: nir.NIRGraph, **kwargs: object) -> None:
        super().__init__(graph, **kwargs)  # type: ignore[arg-type]
        known = (nir.Input, nir.Output, nir.Affine, nir.Linear, nir.Scale, nir.Flatten, nir.IF)
        for name, node in graph.nodes.items():
            if not isinstance(node, known):
                raise BackendRefused(f"numpy-if runs no {type(node).__name__} node ({name!r})")
            if isinstance(node, nir.IF) and "bridge" not in (node.metadata or {}):
                raise BackendRefused(f"numpy-if runs bridge IF nodes only; {name!r} is a plain NIR IF")
        self.preds: dict[str, list[str]] = {n: [] for n in graph.nodes}
        for src, dst in graph.edges:
            self.preds[dst].append(src)
        self.order: list[str] = []
        while len(self.order) < len(graph.nodes):  # Kahn-style: any node whose inputs are done
            for n in graph.nodes:
                if n not in self.order and all(p in self.order for p in self.preds[n]):
                    self.order.append(n)

    def _apply(self, node: nir.NIRNode, x: np.ndarray) -> np.ndarray:
        if isinstance(node, nir.Affine):
            return x @ np.asarray(node.weight).T + np.asarray(node.bias)
        if isinstance(node, nir.Linear):
            return x @ np.asarray(node.weight).T
        if isinstance(node, nir.Scale):
            return x * np.asarray(node.scale)
        if isinstance(node, nir.Flatten):
            return x.reshape(x.shape[0], -1)
        return x  # Input, Output

    def run(self, x: torch.Tensor, steps: int, *, trace: bool = False) -> SimulationResult:
        g = self.graph
        xin = x.detach().cpu().numpy().astype(np.float64)
        v = {}
        for n, node in g.nodes.items():
            if isinstance(node, nir.IF):
                v0 = np.asarray(node.metadata["bridge"]["v_init"], dtype=np.float64)
                shape = (xin.shape[0], *np.shape(node.v_threshold))
                v[n] = np.broadcast_to(v0 if self.use_v_init else 0.0, shape).copy()
        spikes: dict[str, list[np.ndarray]] = {n: [] for n in v}
        volts: dict[str, list[np.ndarray]] = {n: [] for n in v}
        outputs = []
        for _ in range(steps):
            values: dict[str, np.ndarray] = {}
            for n in self.order:
                node = g.nodes[n]
                inp = xin if isinstance(node, nir.Input) else sum(values[p] for p in self.preds[n])
                if isinstance(node, nir.IF):
                    theta = np.asarray(node.v_threshold, dtype=np.float64)
                    m = v[n] + inp
                    s = (m + self.slack >= theta) if self.fires_on_equal else (m > theta)
                    s = s.astype(np.float64)
                    v[n] = m - theta * s
                    spikes[n].append(s)
                    volts[n].append(v[n].copy())
                    values[n] = s
                else:
                    values[n] = self._apply(node, inp)
                if isinstance(node, nir.Output):
                    outputs.append(values[n])
        traces = {n: NodeTrace(torch.from_numpy(np.stack(spikes[n])), torch.from_numpy(np.stack(volts[n])))
                  for n in v} if trace else {}
        return SimulationResult(torch.from_numpy(np.stack(outputs)), traces, "mean")


class NumpyIFStrict(NumpyIF):
    """The same simulator with the NIR text's strict condition ``m > theta`` (wrong for bridge)."""

    name = "numpy-if-gt"
    fires_on_equal = False


class NumpyIFNoInitialPotential(NumpyIF):
    """The same simulator starting at ``v = 0`` (the initial potential lost: a semantic bug)."""

    name = "numpy-if-v0"
    use_v_init = False
