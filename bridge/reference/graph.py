"""The graph walker's plan: nodes in execution order, forward and feedback edges.

NIR subgraphs (``NIRGraph`` nodes) are inlined first: their nodes are renamed
``outer.inner``, an edge into the subgraph goes to its ``Input`` node and an edge out of
it leaves from its ``Output`` node.

A depth-first search from the ``Input`` node, following edges in the order the graph
lists them, marks every edge that closes a cycle (it points back to a node on the
search stack) as a *feedback* edge: it delivers the value its source had one step
earlier (zero before the first step). The remaining edges form a DAG that is executed in
topological order (both from :mod:`bridge.format.graph`, which states the tie-break).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nir

from bridge.format.errors import BridgeError
from bridge.format.graph import feedback_edges, neighbours, node_input_shape, topological_order


@dataclass
class Plan:
    """Execution order and edges of a flattened graph."""

    nodes: dict[str, nir.NIRNode]
    order: list[str]
    input_name: str
    output_name: str
    inputs: dict[str, list[str]]  # forward (same-step) predecessors, in edge order
    feedback: dict[str, list[str]] = field(default_factory=dict)  # one-step-delayed ones

    @property
    def has_cycles(self) -> bool:
        return any(self.feedback.values())

    @property
    def input_shape(self) -> tuple[int, ...]:
        return node_input_shape(self.nodes[self.input_name])


def _input_output(graph: nir.NIRGraph, subject: str) -> tuple[str, str]:
    """The names of the single Input and Output node of ``graph`` (BridgeError otherwise)."""
    ins = [n for n, v in graph.nodes.items() if isinstance(v, nir.Input)]
    outs = [n for n, v in graph.nodes.items() if isinstance(v, nir.Output)]
    if len(ins) != 1 or len(outs) != 1:
        raise BridgeError(f"{subject} {len(ins)} Input and {len(outs)} Output nodes; the reference "
                          "simulator runs graphs and subgraphs with exactly one of each")
    return ins[0], outs[0]


def _inline(graph: nir.NIRGraph, prefix: str = "") -> tuple[dict[str, nir.NIRNode], list[tuple[str, str]]]:
    """Nodes and edges with every NIRGraph node replaced by its (renamed) contents."""
    nodes: dict[str, nir.NIRNode] = {}
    edges: list[tuple[str, str]] = []
    entry: dict[str, str] = {}  # subgraph name -> its Input node's new name
    exit_: dict[str, str] = {}  # subgraph name -> its Output node's new name
    for name, node in graph.nodes.items():
        full = prefix + name
        if isinstance(node, nir.NIRGraph):
            inner_nodes, inner_edges = _inline(node, full + ".")
            inner_in, inner_out = _input_output(node, f"subgraph {full!r} has")
            entry[name], exit_[name] = f"{full}.{inner_in}", f"{full}.{inner_out}"
            nodes.update(inner_nodes)
            edges.extend(inner_edges)
        else:
            nodes[full] = node
    for src, dst in graph.edges:
        edges.append((exit_[src] if src in exit_ else prefix + src,
                      entry[dst] if dst in entry else prefix + dst))
    return nodes, edges


def plan_graph(graph: nir.NIRGraph) -> Plan:
    """Flatten, find Input/Output, split edges into forward and feedback, order the nodes."""
    nodes, edges = _inline(graph)
    _, succ = neighbours(nodes, edges)
    # the graph's own Input/Output (a subgraph's inner ones are plain pass-through nodes)
    input_name, output_name = _input_output(graph, "the graph has")
    # a depth-first search from the Input: an edge to a node still on the stack closes a cycle
    feedback_set, reached = feedback_edges(succ, [input_name])
    unreachable = [n for n in nodes if n not in reached]
    if unreachable:
        raise BridgeError(
            f"nodes {unreachable} cannot be reached from the Input node {input_name!r}; connect "
            "them or remove them from the graph"
        )
    if output_name not in reached:
        raise BridgeError(f"the Output node {output_name!r} is not reachable from the Input node")

    inputs: dict[str, list[str]] = {n: [] for n in nodes}
    feedback: dict[str, list[str]] = {n: [] for n in nodes}
    for src, dst in edges:
        (feedback if (src, dst) in feedback_set else inputs)[dst].append(src)
    order = topological_order(nodes, edges, skip=feedback_set)
    return Plan(nodes, order, input_name, output_name, inputs, feedback)
