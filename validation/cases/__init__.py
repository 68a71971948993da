"""Conformance cases as data: tiny NIR graphs, inputs, and the reference's frozen answers.

Modelled on ONNX's backend test cases: each case is a file pair in ``data/`` that any backend
runs unchanged,

* ``<name>.nir``: the graph (bridge semantics, or plain NIR for the ``nir-text`` cases);
* ``<name>.npz``: ``x`` (the input, ``[B, *input_shape]``, the current at every step),
  ``outputs`` (``[T, B, *output_shape]``, the value reaching the Output node at each step),
  and per traced neuron node ``spikes/<node>`` and ``v/<node>`` (``[T, B, *shape]``, the
  potential after the reset of each step);

and ``manifest.json`` lists the cases with their T, ``dt`` (LI/LIF cases), tags and a
description. The files were generated once by ``python -m validation.cases.generate`` from
:mod:`validation.cases.catalog` with the reference simulator, reviewed, and committed; a
change of the reference that changes any number fails ``tests/test_conformance_cases.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import nir
import numpy as np
import torch

from bridge.format.errors import BridgeError
from bridge.format.nirio import read_graph

DATA = Path(__file__).parent / "data"
MANIFEST = DATA / "manifest.json"


@dataclass(frozen=True)
class ExpectedTrace:
    """The reference's spikes and post-reset potentials of one neuron node, ``[T, B, *shape]``."""

    spikes: np.ndarray
    v: np.ndarray


@dataclass(frozen=True)
class Case:
    """One frozen case: run ``graph`` on ``x`` for ``steps`` steps and get exactly ``expected``."""

    name: str
    description: str
    tags: tuple[str, ...]
    steps: int
    dt: float | None
    graph: nir.NIRGraph
    x: np.ndarray
    outputs: np.ndarray
    traces: dict[str, ExpectedTrace]

    def input(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.from_numpy(self.x.copy()).to(dtype)


@cache
def manifest() -> dict[str, dict]:
    """``{name: {"description", "tags", "steps", "dt"}}`` of the committed cases."""
    if not MANIFEST.is_file():
        raise BridgeError(f"{MANIFEST} is missing; run `python -m validation.cases.generate`")
    return json.loads(MANIFEST.read_text())


def names() -> list[str]:
    """The names of the committed cases, in catalogue order."""
    return list(manifest())


def load(name: str) -> Case:
    """Read one committed case (graph and expectations) from ``data/``."""
    entries = manifest()
    if name not in entries:
        raise BridgeError(f"unknown conformance case {name!r}; choose from {', '.join(entries)}")
    entry = entries[name]
    graph = read_graph(DATA / f"{name}.nir")
    with np.load(DATA / f"{name}.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    nodes = sorted({k.split("/", 1)[1] for k in arrays if k.startswith("spikes/")})
    traces = {n: ExpectedTrace(arrays[f"spikes/{n}"], arrays[f"v/{n}"]) for n in nodes}
    return Case(name, entry["description"], tuple(entry["tags"]), int(entry["steps"]), entry["dt"],
                graph, arrays["x"], arrays["outputs"], traces)
