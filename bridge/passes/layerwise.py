r"""One layer-at-a-time pass over a graph whose IF layers are refitted on the way (the greedy passes).

The greedy calibration passes (the threshold/initial-potential search, the bias correction) fit
IF layer :math:`l` on the current :math:`I_l(t)` that reaches it in the SNN whose layers before
:math:`l` are already fitted. Re-simulating the upstream graph for every layer costs
:math:`O(L^2)` layer evaluations; this walker costs one simulation: it runs the graph node by
node in topological order (the reference simulator's own operators, layer at a time:
stateless nodes on ``[T*B, ...]``, IF nodes stepping their state over T), and at each IF node
hands its current to ``fit(graph, name, current)``, which returns the graph with ``name``
refitted. Then the walk goes on with the new graph:

* nodes not yet computed (``name`` itself, its consumers whose weights absorbed a new threshold
  scale) are recompiled from the new graph before they run;
* a node already computed may only have changed its bias (the bias correction shifts the
  Conv/Affine feeding ``name``): its stored value gets :math:`b' - b` added, which is exactly
  what re-running it would give, since it feeds ``name`` only.

So the current each layer sees is the one the reference simulator computes on the graph as
written at that point (float32, one big batch: ``exact_batching=False``).

The ANN side is :func:`ann_activations`: one pass of the ANN view keeping
:math:`y_l = \mathrm{clip}(r z_l, 0, \theta_l)` (value units) for every IF layer.
"""

from __future__ import annotations

from collections.abc import Callable

import nir
import numpy as np
import torch

from bridge.format.errors import BridgeError
from bridge.format.extension import if_semantics

FitFn = Callable[[nir.NIRGraph, str, torch.Tensor], nir.NIRGraph]


def _sum(values: dict[str, tuple[torch.Tensor, bool]], srcs: list[str]) -> tuple[torch.Tensor, bool]:
    varying = any(values[s][1] for s in srcs)
    total = None
    for s in srcs:
        value, v = values[s]
        if varying and not v:
            value = value.unsqueeze(0)
        total = value if total is None else total + value
    assert total is not None
    return total, varying


def _bias_change(old: nir.NIRNode, new: nir.NIRNode, name: str) -> np.ndarray:
    """``b' - b`` of a weighted node whose only change is its bias (BridgeError otherwise)."""
    same_weight = np.array_equal(np.asarray(getattr(old, "weight", None)), np.asarray(getattr(new, "weight", None)))
    if not (type(old) is type(new) and same_weight and hasattr(new, "bias")):
        raise BridgeError(f"a layer-wise pass changed node {name!r}, which was already computed, "
                          "in more than its bias; fit nodes downstream of the current layer only")
    return np.asarray(new.bias, dtype=np.float64) - np.asarray(old.bias, dtype=np.float64)


def walk(graph: nir.NIRGraph, x: torch.Tensor, steps: int, fit: FitFn, *,
         dtype: torch.dtype = torch.float32) -> tuple[nir.NIRGraph, torch.Tensor]:
    """Run ``graph`` on ``x`` for ``steps`` steps, calling ``fit`` at every IF node (module docstring).

    Returns the final graph and its output ``[T, B, *output_shape]`` (the per-step values that
    reach the Output node, computed with the fitted layers).
    """
    from bridge.reference import ReferenceSimulator
    from bridge.reference.ops import build_op

    sim = ReferenceSimulator(graph, dtype=dtype, exact_batching=False)
    plan, ops = sim.plan, dict(sim.ops)
    if plan.has_cycles:
        raise BridgeError("the graph has feedback edges; calibration works on feed-forward graphs only")
    missing = [n for n in plan.order if n not in graph.nodes]
    if missing:
        raise BridgeError(f"nodes {missing[:3]} of the plan are not top-level nodes of the graph; "
                          "flatten nested graphs before calibrating")
    pos = {n: i for i, n in enumerate(plan.order)}
    last = {n: pos[n] for n in plan.order}
    for dst in plan.order:
        for src in plan.inputs[dst]:
            last[src] = max(last[src], pos[dst])
    last[plan.output_name] = len(plan.order)
    values: dict[str, tuple[torch.Tensor, bool]] = {}
    for i, name in enumerate(plan.order):
        if name == plan.input_name:
            values[name] = (x.to(dtype), False)
            continue
        total, varying = _sum(values, plan.inputs[name])
        node = graph.nodes[name]
        if isinstance(node, nir.IF):
            current = total if varying else total.unsqueeze(0).expand(steps, *total.shape)
            new = fit(graph, name, current)
            for n in plan.order:
                if new.nodes[n] is graph.nodes[n]:
                    continue
                if n in values:  # already computed: only a bias may have moved
                    delta = torch.as_tensor(_bias_change(graph.nodes[n], new.nodes[n], n), dtype=dtype)
                    value, v = values[n]
                    sample_dims = value.dim() - 1 - int(v)
                    if delta.dim() == 1 and sample_dims > 1:  # per channel, broadcast over positions
                        delta = delta.reshape((-1,) + (1,) * (sample_dims - 1))
                    values[n] = (value + delta, v)
                    if n in plan.inputs[name]:
                        total, varying = _sum(values, plan.inputs[name])
                else:
                    ops[n] = build_op(n, new.nodes[n], dtype, sim.device, None)
            graph = new
            op = ops[name]
            state = op.init_state(total[0] if varying else total)  # type: ignore[attr-defined]
            out = []
            for t in range(steps):
                s, state = op.step(total[t] if varying else total, state)  # type: ignore[attr-defined]
                out.append(s)
            values[name] = (torch.stack(out), True)
        elif varying:
            t, b = total.shape[:2]
            values[name] = (ops[name].forward(total.flatten(0, 1)).unflatten(0, (t, b)), True)  # type: ignore[attr-defined]
        else:
            values[name] = (ops[name].forward(total), False)  # type: ignore[attr-defined]
        for src in plan.inputs[name]:
            if last[src] <= i:
                del values[src]
    out, varying = values[plan.output_name]
    if not varying:
        out = out.unsqueeze(0).expand(steps, *out.shape)
    return graph, out


def ann_activations(graph: nir.NIRGraph, x: torch.Tensor, *, dtype: torch.dtype = torch.float32,
                    staircase: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    r"""One ANN-view pass: per IF layer :math:`y_l = \theta_l\,\mathrm{rate}(z_l)` (value units, the
    layer's target), and the output ``[B, *output_shape]``. The rate is the ANN view's: the QCFS
    staircase for a marked layer, else :math:`\mathrm{clip}(r z_l/\theta_l, 0, 1)`;
    ``staircase=False`` takes the clip for every layer (the clipped twin of a QCFS network)."""
    from bridge.reference import ReferenceSimulator

    sim = ReferenceSimulator(graph, dtype=dtype, dt=1.0, exact_batching=False)
    plan = sim.plan
    values: dict[str, torch.Tensor] = {}
    targets: dict[str, torch.Tensor] = {}
    for name in plan.order:
        if name == plan.input_name:
            values[name] = x.to(dtype)
            continue
        srcs = plan.inputs[name]
        value = values[srcs[0]]
        for src in srcs[1:]:
            value = value + values[src]
        op = sim.ops[name]
        clip = not staircase and hasattr(op, "clip_rate")
        values[name] = op.clip_rate(value) if clip else op.rate(value)  # type: ignore[attr-defined]
        if isinstance(graph.nodes.get(name), nir.IF):
            theta = torch.as_tensor(if_semantics(graph.nodes[name], name).threshold, dtype=dtype)
            targets[name] = values[name] * theta
    return targets, values[plan.output_name]
