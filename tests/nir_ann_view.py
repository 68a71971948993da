"""A small NIR "ANN view" evaluator for the converter's tests (float64).

Every IF node is replaced by its rate function ``clip(I / theta, 0, 1)`` (unit spikes: the
consumers hold theta); every other node computes its NIR meaning; a node's input is the
sum of its incoming edges. Independent of bridge's own code on purpose: it reads only the
NIR graph.
"""

from __future__ import annotations

import nir
import numpy as np
import torch
import torch.nn.functional as F


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def _node(node: nir.NIRNode, x: torch.Tensor) -> torch.Tensor:
    if isinstance(node, (nir.Input, nir.Output)):
        return x
    if isinstance(node, nir.Affine):
        return x @ _t(node.weight).T + _t(node.bias)
    if isinstance(node, nir.Linear):
        return x @ _t(node.weight).T
    if isinstance(node, nir.Scale):
        return x * _t(node.scale)
    if isinstance(node, nir.Conv2d):
        return F.conv2d(x, _t(node.weight), _t(node.bias), tuple(node.stride), tuple(node.padding),
                        tuple(node.dilation), int(node.groups))
    if isinstance(node, nir.Conv1d):
        return F.conv1d(x, _t(node.weight), _t(node.bias), int(node.stride), int(node.padding),
                        int(node.dilation), int(node.groups))
    if isinstance(node, nir.AvgPool2d):
        return F.avg_pool2d(x, tuple(int(k) for k in node.kernel_size), tuple(int(s) for s in node.stride),
                            tuple(int(p) for p in node.padding))
    if isinstance(node, nir.Flatten):
        return torch.flatten(x, int(node.start_dim) + 1)
    if isinstance(node, nir.IF):
        return torch.clamp(x / _t(node.v_threshold), 0.0, 1.0)
    raise TypeError(f"no ANN view for {type(node).__name__}")


def ann_view(graph: nir.NIRGraph, x: torch.Tensor) -> torch.Tensor:
    """Output of the graph's ANN view for a batch ``x`` (N, *input shape)."""
    preds: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for src, dst in graph.edges:
        preds[dst].append(src)
    values: dict[str, torch.Tensor] = {}
    pending = list(graph.nodes)
    while pending:
        ready = [n for n in pending if all(p in values for p in preds[n])]
        assert ready, "cycle in the graph"
        for name in ready:
            node = graph.nodes[name]
            inp = x.to(torch.float64) if isinstance(node, nir.Input) else sum(values[p] for p in preds[name])
            values[name] = _node(node, inp)
            pending.remove(name)
    (out,) = [n for n, node in graph.nodes.items() if isinstance(node, nir.Output)]
    return values[out]
