"""The converter's internal layer graph, between the front-ends and the NIR builder.

Two front-ends produce a :class:`LayerGraph`: one traces ``nn.Module`` s with torch.fx at
module level, the other reads ``torch.export`` programs at ATen level. Everything after
(BatchNorm folding, thresholds, initial potentials, NIR building) works on this one
representation, so each conversion rule is written once.

Parameter tensors are detached CPU tensors in the model's own precision: a front-end keeps the
model's parameters as they are (sharing their memory, never writing to them), while tensors the
converter computes (folded BatchNorms, constants folded from parameters, pool corrections) are
float64. Every computation up-casts to float64 first (exact for float16/bfloat16/float32), so a
float32 parameter gives the same results as its float64 copy did, without an ImageNet model's
weights existing a second time, twice as large (:func:`cast_op` per op, where it is used).
``inputs`` name the producing ops; an op with several inputs other than :class:`AddOp` and
:class:`ConcatOp` is not allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch


@dataclass
class LayerOp:
    """One layer of the converter's layer graph (a torch operation, before NIR exists).

    Not to be confused with :class:`bridge.reference.ops.base.NodeOp`, the reference
    simulator's compiled NIR node.
    """

    name: str
    inputs: list[str]
    source: str = ""  # "file.py:123 (the source line)" for error messages, where known


@dataclass
class InputOp(LayerOp):
    shape: tuple[int, ...] = ()  # one sample, no batch


@dataclass
class ConvOp(LayerOp):
    """N-d convolution (N = 1 or 2), PyTorch semantics, explicit integer padding."""

    weight: torch.Tensor = None  # type: ignore[assignment]  (Cout, Cin/groups, *kernel)
    bias: torch.Tensor = None  # type: ignore[assignment]  (Cout,) - zeros when absent
    stride: tuple[int, ...] = (1,)
    padding: tuple[int, ...] = (0,)
    dilation: tuple[int, ...] = (1,)
    groups: int = 1


@dataclass
class LinearOp(LayerOp):
    weight: torch.Tensor = None  # type: ignore[assignment]  (out, in)
    bias: torch.Tensor = None  # type: ignore[assignment]  (out,) - zeros when absent


@dataclass
class BatchNormOp(LayerOp):
    """Inference BatchNorm: y = (x - mean) / sqrt(var + eps) * weight + bias, per channel."""

    mean: torch.Tensor = None  # type: ignore[assignment]
    var: torch.Tensor = None  # type: ignore[assignment]
    weight: torch.Tensor = None  # type: ignore[assignment]
    bias: torch.Tensor = None  # type: ignore[assignment]
    eps: float = 1e-5


ActivationKind = Literal["relu", "clip", "qcfs"]


@dataclass
class ActivationOp(LayerOp):
    """A ReLU-family activation that becomes an IF layer.

    ``kind="relu"``: no upper bound (threshold from calibration data);
    ``"clip"``: clip(z, 0, bound) (ClippedReLU, ReLU6, Hardtanh(0, a), clamp(0, a));
    ``"qcfs"``: the QCFS quantised clip with ``levels`` steps (bound = lambda) and ``shift`` s:
    ``bound / L * clip(floor(z L / bound + s), 0, L)``. ``bound`` is one float, or one value per
    channel (a float64 array of shape (C,)).
    """

    kind: ActivationKind = "relu"
    bound: float | np.ndarray | None = None
    levels: int | None = None
    shift: float = 0.5


@dataclass
class AvgPoolOp(LayerOp):
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)


@dataclass
class AdaptiveAvgPoolOp(LayerOp):
    """``F.adaptive_avg_pool2d(x, output_size)`` on (N, C, H, W), PyTorch's (possibly overlapping)
    windows; lowered to NIR by :mod:`bridge.converter.adaptive_pool`."""

    output_size: tuple[int, int] = (1, 1)


@dataclass
class MaxPoolOp(LayerOp):
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    ceil_mode: bool = False


@dataclass
class ScaleOp(LayerOp):
    """Element-wise constant factor ``y = factor * x`` (``factor`` broadcasts to one sample), e.g.
    the per-window divisor correction of an average pool."""

    factor: torch.Tensor = None  # type: ignore[assignment]


@dataclass
class FlattenOp(LayerOp):
    """torch.flatten(x, 1): everything but the batch dimension into one."""


@dataclass
class ConcatOp(LayerOp):
    """``torch.cat(inputs, dim=1)``: the inputs' channels (features, for flat values) one after
    another, in the order of ``inputs`` (the same op may appear more than once)."""


@dataclass
class ChannelGatherOp(LayerOp):
    """``y[:, j] = x[:, index[j]]``: a fixed selection / permutation of channels (features, for
    flat values): slices ``x[:, a:b]``, ``split``, ``chunk``, a channel shuffle."""

    index: tuple[int, ...] = ()


@dataclass
class AddOp(LayerOp):
    """Element-wise sum of all inputs (residual additions)."""


@dataclass
class OutputOp(LayerOp):
    """The network output (the readout); exactly one input."""


@dataclass
class LayerGraph:
    """Ops in topological order, keyed by name (the fx node names)."""

    ops: dict[str, LayerOp] = field(default_factory=dict)
    # the precision of the model's weights (the ops hold them as they are, see the module docstring)
    model_dtype: torch.dtype = torch.float32

    def add(self, op: LayerOp) -> LayerOp:
        if op.name in self.ops:
            raise ValueError(f"duplicate op name {op.name!r}")
        self.ops[op.name] = op
        return op

    @property
    def input(self) -> InputOp:
        (op,) = [o for o in self.ops.values() if isinstance(o, InputOp)]
        return op

    @property
    def output(self) -> OutputOp:
        (op,) = [o for o in self.ops.values() if isinstance(o, OutputOp)]
        return op

    def consumers(self, name: str) -> list[LayerOp]:
        return [o for o in self.ops.values() if name in o.inputs]


def cast_op(op: LayerOp, dtype: torch.dtype) -> LayerOp:
    """``op`` with its parameter tensors in ``dtype``: ``op`` itself when they already are, else a
    copy (the graph's own op and tensors are left as they are)."""
    changes = {f.name: value.to(dtype) for f in dataclasses.fields(op)
               if isinstance(value := getattr(op, f.name), torch.Tensor) and value.dtype != dtype}
    return dataclasses.replace(op, **changes) if changes else op
