"""A summary of a NIR graph: nodes, shapes, thresholds, initial potentials, semantics.

:func:`inspect_graph` returns plain Python data (the ``--json`` output of ``bridge
inspect``); :func:`render` draws it as rich tables. Both read the graph only through
:mod:`bridge.format.extension`, so a plain NIR graph (no bridge metadata) is described with the
NIR-text semantics (hard reset to ``v_reset``, spike when ``v > theta``, ``v(0) = 0``).

``v_init`` is reported as a fraction of the threshold, ``v_init / theta`` (0.5 for the
paper's optimum ``theta / 2``), over the neurons of a layer.
"""

from __future__ import annotations

from typing import Any

import nir
import numpy as np

from bridge.format.extension import conv_weight, graph_semantics, if_semantics, qcfs_staircase
from bridge.format.graph import topological_order

# array fields that hold a layer's parameters (weights, biases, scales)
_PARAM_FIELDS = ("weight", "bias", "scale")


def _shape(types: dict[str, Any] | None, key: str) -> list[int] | None:
    if not types or key not in types or types[key] is None:
        return None
    return [int(s) for s in np.asarray(types[key]).reshape(-1)]


def _topological(graph: nir.NIRGraph) -> list[str]:
    """Node names in data-flow order (:func:`bridge.format.graph.topological_order`); nodes on
    or after a cycle last, in the file's order."""
    order = topological_order(graph.nodes, graph.edges)
    placed = set(order)
    return order + [n for n in graph.nodes if n not in placed]


def _params(node: nir.NIRNode) -> int:
    total = 0
    for name in _PARAM_FIELDS:
        value = getattr(node, name, None)
        if value is not None and not isinstance(value, str):
            total += int(np.asarray(value).size)
    return total


def _float(x: Any) -> float:
    return float(np.asarray(x, dtype=np.float64))


def inspect_graph(graph: nir.NIRGraph) -> dict[str, Any]:
    """Describe ``graph`` as JSON-ready data.

    Returns ``{"semantics": {...}, "nodes": [...], "totals": {...}}``. Each node entry has
    ``name``, ``type``, ``inputs`` (the nodes with an edge into it: two or more where branches
    are summed, e.g. a residual addition), ``input_shape``, ``output_shape``, ``params`` and, for IF nodes,
    ``neurons``, ``threshold_min/max``, ``v_init_min/max`` (fractions of theta), ``reset``
    and ``spike_condition``; a dense-encoded grouped conv (bridge conv metadata) has ``groups``
    and ``grouped_params`` (the parameters of the grouped form bridge runs),
    plus ``qcfs_levels`` / ``qcfs_shift`` where the IF node stands for a
    QCFS staircase (the SNN reproduces it at T = L with ``v_init = shift * theta``).
    """
    sem = graph_semantics(graph)
    nodes: list[dict[str, Any]] = []
    thresholds: list[np.ndarray] = []
    resets: set[str] = set()
    conditions: set[str] = set()
    inputs: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for src, dst in graph.edges:  # in the file's edge order
        if dst in inputs:
            inputs[dst].append(src)
    for name in _topological(graph):
        node = graph.nodes[name]
        entry: dict[str, Any] = {
            "name": name,
            "type": type(node).__name__,
            "inputs": inputs[name],
            "input_shape": _shape(getattr(node, "input_type", None), "input"),
            "output_shape": _shape(getattr(node, "output_type", None), "output"),
            "params": _params(node),
        }
        if isinstance(node, (nir.Conv1d, nir.Conv2d)):
            weight, groups = conv_weight(node, name)
            if groups > 1 and int(node.groups) == 1:
                entry.update(groups=groups, grouped_params=entry["params"] - int(np.asarray(node.weight).size)
                             + int(weight.size))
        if isinstance(node, nir.IF):
            rule = if_semantics(node, name)
            theta = rule.threshold
            with np.errstate(divide="ignore", invalid="ignore"):
                frac = np.where(theta != 0, rule.v_init / theta, 0.0)
            entry.update(
                neurons=int(theta.size),
                threshold_min=_float(theta.min()),
                threshold_max=_float(theta.max()),
                v_init_min=_float(frac.min()),
                v_init_max=_float(frac.max()),
                reset=rule.reset,
                spike_condition=rule.spike_condition,
            )
            staircase = qcfs_staircase(node)
            if staircase is not None:
                entry.update(qcfs_levels=staircase[0], qcfs_shift=staircase[1])
            thresholds.append(theta.reshape(-1))
            resets.add(rule.reset)
            conditions.add(rule.spike_condition)
        nodes.append(entry)
    all_theta = np.concatenate(thresholds) if thresholds else np.zeros(0)
    semantics: dict[str, Any] = {
        "bridge_extension": sem.is_bridge,
        "version": sem.version,
        "input_encoding": sem.input_encoding,
        "readout": sem.readout,
        "timesteps": sem.timesteps,
        "reset": "/".join(sorted(resets)) or None,
        "spike_condition": "/".join(sorted(conditions)) or None,
    }
    totals = {
        "nodes": len(nodes),
        "edges": len(graph.edges),
        "if_nodes": len(thresholds),
        "neurons": int(all_theta.size),
        "params": sum(n["params"] for n in nodes),
        "threshold_min": _float(all_theta.min()) if all_theta.size else None,
        "threshold_max": _float(all_theta.max()) if all_theta.size else None,
    }
    return {"semantics": semantics, "nodes": nodes, "totals": totals}


def _fmt_shape(shape: list[int] | None) -> str:
    return "?" if shape is None else "(" + ", ".join(map(str, shape)) + ")"


def _fmt_range(lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None:
        return ""
    return f"{lo:.4g}" if np.isclose(lo, hi, rtol=1e-9, atol=0) else f"{lo:.4g} .. {hi:.4g}"


def _fmt_inputs(names: list[str]) -> str:
    """The node's inputs: ``-`` for none, ``a + b`` where several are summed."""
    return " + ".join(names) if names else "-"


def render(info: dict[str, Any], title: str = "") -> Any:
    """The summary as a rich renderable: the node table, then semantics and totals."""
    from rich.console import Group
    from rich.table import Table

    table = Table(title=title or None, title_justify="left")
    for col, justify in (("node", "left"), ("inputs", "left"), ("type", "left"), ("input -> output", "left"),
                         ("threshold", "right"), ("v_init / theta", "right"), ("params", "right")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for n in info["nodes"]:
        shapes = f"{_fmt_shape(n['input_shape'])} -> {_fmt_shape(n['output_shape'])}"
        kind = f"{n['type']} (groups={n['groups']})" if "groups" in n else n["type"]
        kind += f" (QCFS L={n['qcfs_levels']}, shift {n['qcfs_shift']:g})" if "qcfs_levels" in n else ""
        table.add_row(n["name"], _fmt_inputs(n["inputs"]), kind, shapes,
                      _fmt_range(n.get("threshold_min"), n.get("threshold_max")),
                      _fmt_range(n.get("v_init_min"), n.get("v_init_max")),
                      f"{n['params']:,}" if n["params"] else "")
    sem, tot = info["semantics"], info["totals"]
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    if sem["bridge_extension"]:
        facts.add_row("semantics", f"bridge NIR extension {sem['version']}")
    else:
        facts.add_row("semantics", "plain NIR (no bridge metadata): NIR-text rules")
    facts.add_row("reset", {"subtract": "by subtraction (v <- m - theta s)",
                            "zero": "hard, to v_reset"}.get(sem["reset"] or "", sem["reset"] or "-"))
    facts.add_row("spike condition", {"ge": "m >= theta", "gt": "m > theta"}.get(
        sem["spike_condition"] or "", sem["spike_condition"] or "-"))
    facts.add_row("input encoding", {"constant": "the same analog input at every step",
                                     "per_step": "one input per step"}[sem["input_encoding"]])
    facts.add_row("readout", f"{sem['readout']} of the output over T")
    if sem["timesteps"] is not None:
        facts.add_row("optimised for", f"T = {sem['timesteps']}")
    facts.add_row("totals", f"{tot['nodes']} nodes, {tot['edges']} edges, {tot['if_nodes']} IF "
                  f"layers, {tot['neurons']:,} neurons, {tot['params']:,} parameters")
    if tot["threshold_min"] is not None:
        facts.add_row("thresholds", _fmt_range(tot["threshold_min"], tot["threshold_max"]))
    return Group(table, facts)
