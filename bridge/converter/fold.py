r"""Graph rewrites before thresholds: weight checks, max-pool policy, BatchNorm folding.

BatchNorm folding (``torch.nn.utils.fusion``). An inference BatchNorm after a conv/linear
layer ``z = W x + b`` computes, per output channel ``c``,

.. math::
    y_c = \gamma_c \frac{z_c - \mu_c}{\sqrt{\sigma^2_c + \epsilon}} + \beta_c
    \;=\; W'_c x + b'_c, \qquad
    W'_c = \frac{\gamma_c}{\sqrt{\sigma^2_c + \epsilon}} W_c, \quad
    b'_c = \frac{\gamma_c (b_c - \mu_c)}{\sqrt{\sigma^2_c + \epsilon}} + \beta_c .

It is folded when the BatchNorm is the only consumer of that layer (otherwise another
consumer would see the folded values). A BatchNorm with nothing to fold into stays a
:class:`~bridge.converter.ir.BatchNormOp`: the per-channel affine map
``y_c = a_c x_c + (beta_c - a_c mu_c)`` with ``a_c = gamma_c / sqrt(var_c + eps)``, which
the NIR builder writes as an ``Affine`` with a diagonal weight (features) or a 1x1
``Conv2d``/``Conv1d`` with a diagonal weight (channels). Folding computes in float64 (the
layer's and the BatchNorm's tensors up-cast, exactly), so a folded layer holds float64 tensors.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from bridge.format.errors import BridgeError
from bridge.converter.ir import BatchNormOp, ConvOp, LayerGraph, LayerOp, LinearOp, MaxPoolOp, cast_op
from bridge.converter.ir_eval import shapes as op_shapes
from bridge.converter.options import MAXPOOL_POLICIES
from bridge.converter.rules import maxpool_replacement


def _where(op: LayerOp) -> str:
    return f" ({op.source})" if op.source else ""


def check_finite(graph: LayerGraph) -> None:
    """Raise a BridgeError naming the first layer with a NaN or infinite parameter."""
    for op in graph.ops.values():
        for field in ("weight", "bias", "mean", "var"):
            t = getattr(op, field, None)
            # a finite sum implies finite elements (NaN and inf propagate); only then is it cheap
            if isinstance(t, torch.Tensor) and not (torch.isfinite(t.sum()) or torch.isfinite(t).all()):
                raise BridgeError(
                    f"layer {op.name!r}{_where(op)} has NaN or infinite values in its {field}; "
                    "the model is damaged or diverged in training: use a checkpoint with finite weights")
        if isinstance(op, BatchNormOp) and (op.var.to(torch.float64) + op.eps <= 0).any():
            raise BridgeError(f"BatchNorm {op.name!r}{_where(op)} has running_var + eps <= 0; "
                              "use a checkpoint with valid BatchNorm statistics")


def replace_maxpool(graph: LayerGraph, maxpool: str) -> LayerGraph:
    """Apply the max-pool policy: ``"error"`` refuses, ``"avg"`` swaps in the average pool of
    :func:`bridge.converter.rules.maxpool_replacement` (same kernel, stride, padding, ceil_mode)."""
    if maxpool not in MAXPOOL_POLICIES:
        raise BridgeError(f"unknown maxpool policy {maxpool!r}; use 'error' or 'avg'")
    pools = [op for op in graph.ops.values() if isinstance(op, MaxPoolOp)]
    if not pools:
        return graph
    if maxpool == "error":
        op = pools[0]
        raise BridgeError(
            f"max pooling {op.name!r}{_where(op)} cannot be converted: the max of spike trains is not "
            "the max of their rates, so an IF network computes something else; replace it by average "
            "pooling explicitly with --maxpool avg (maxpool='avg'; accuracy changes, better retrain "
            "with AvgPool2d)")
    warnings.warn(
        f"replacing {len(pools)} max-pooling layer(s) ({', '.join(p.name for p in pools)}) by average "
        "pooling of the same size: the converted network computes a different function and its "
        "accuracy changes; retrain with AvgPool2d for a faithful conversion",
        stacklevel=3,
    )
    shapes = op_shapes(graph)
    out = LayerGraph(model_dtype=graph.model_dtype)
    for op in graph.ops.values():
        for new in maxpool_replacement(op, shapes[op.inputs[0]], set(graph.ops)) if isinstance(op, MaxPoolOp) else [op]:
            out.add(new)
    return out


def fold_batchnorm(graph: LayerGraph) -> LayerGraph:
    """A copy of ``graph`` with every foldable BatchNorm folded into its conv/linear producer."""
    out = LayerGraph(model_dtype=graph.model_dtype)
    rename: dict[str, str] = {}  # folded BN name -> name of the layer that absorbed it
    folded: dict[str, LayerOp] = {}
    for op in graph.ops.values():
        if isinstance(op, BatchNormOp):
            (src_name,) = op.inputs
            src = graph.ops[src_name]
            if isinstance(src, (ConvOp, LinearOp)) and len(graph.consumers(src_name)) == 1:
                folded[src_name] = _fold(src, op)
                rename[op.name] = src_name
    for op in graph.ops.values():
        if op.name in rename:
            continue
        new = copy.copy(folded.get(op.name, op))
        new.inputs = [rename.get(i, i) for i in op.inputs]
        out.add(new)
    return out


def _fold(layer: ConvOp | LinearOp, bn: BatchNormOp) -> ConvOp | LinearOp:
    """The folded layer, computed in float64 (its tensors are float64, see the module docstring)."""
    fuse = fuse_conv_bn_weights if isinstance(layer, ConvOp) else fuse_linear_bn_weights
    layer64, bn64 = cast_op(layer, torch.float64), cast_op(bn, torch.float64)
    with torch.no_grad():
        w, b = fuse(layer64.weight, layer64.bias, bn64.mean, bn64.var, bn.eps, bn64.weight, bn64.bias)
    new = copy.copy(layer)
    new.weight, new.bias = w.detach().clone(), b.detach().clone()
    return new
