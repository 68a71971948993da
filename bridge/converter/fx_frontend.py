"""torch.fx front-end: an ``nn.Module`` -> :class:`~bridge.converter.ir.LayerGraph`.

The model is traced at module level with a tracer that keeps bridge's activations
(:class:`~bridge.model.activations.ClippedReLU`, :class:`~bridge.model.activations.QCFS`) as leaves,
then run once on an example input (batch of 2) that records every node's shape
so that shape-dependent code (``x.view(x.size(0), -1)``, ``AdaptiveAvgPool2d``, ``padding='same'``)
is resolved to fixed layers. Every op the converter does not know raises a
:class:`~bridge.format.errors.BridgeError` naming the fx node, the op and the model's source line.

Mapping (PyTorch -> layer op):

* ``Conv1d``/``Conv2d`` -> :class:`ConvOp` (``padding='same'`` -> the symmetric integer padding
  ``dilation * (k - 1) / 2``; zero padding only), ``Linear`` -> :class:`LinearOp`,
  ``BatchNorm1d/2d`` -> :class:`BatchNormOp` (running statistics).
* ``ReLU``, ``F.relu``, ``torch.relu`` -> ``ActivationOp(kind="relu")``;
  ``ReLU6``, ``Hardtanh(0, a)``, ``clamp(0, a)``, ``ClippedReLU`` -> ``kind="clip"`` with
  bound ``a`` (``lambda`` for ClippedReLU); ``QCFS`` -> ``kind="qcfs"``.
* ``AvgPool2d`` -> :class:`AvgPoolOp`; ``AdaptiveAvgPool2d`` -> :class:`AvgPoolOp` with
  kernel = stride = ``(H / oh, W / ow)`` when they divide; ``MaxPool2d`` -> :class:`MaxPoolOp`.
* global average pooling ``x.mean(dim=(2, 3))``, ``x.mean((-2, -1))``, ``torch.mean(x, [2, 3])``
  on (N, C, H, W) -> :class:`AvgPoolOp` with kernel = stride = ``(H, W)`` followed by
  :class:`FlattenOp` (no flatten with ``keepdim=True``): ``mean_{h,w} x = avgpool_{H x W}(x)``.
* flatten / view / reshape to ``(batch, -1)`` -> :class:`FlattenOp` (dropped if already flat).
* ``Dropout``, ``Identity``, ``contiguous``: removed (the model runs in eval mode).
* ``+``, ``torch.add``, ``+=`` of two tensors -> :class:`AddOp`.
"""

from __future__ import annotations

import contextlib
import io
import math
import operator
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from bridge.model.activations import QCFS, ClippedReLU
from bridge.format.errors import BridgeError
from bridge.converter.ir import (
    ActivationOp,
    AddOp,
    AvgPoolOp,
    BatchNormOp,
    ConvOp,
    FlattenOp,
    InputOp,
    LayerGraph,
    LinearOp,
    MaxPoolOp,
    Op,
    OutputOp,
)

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_EXAMPLE_BATCH = 2  # > 1 so that a reshape that keeps the batch is told apart from one that folds it


class BridgeTracer(torch.fx.Tracer):
    """fx tracer that keeps bridge's activations as leaf modules and records source lines.

    Each node gets ``meta["bridge_source"]``: ``"file.py:123 (code)"`` of the innermost frame
    outside torch when it was created (the model's line). This is cheaper than fx's own
    ``record_stack_traces``, which imports torch's compiler stack on first use.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (ClippedReLU, QCFS)):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, *rest, **kw):  # type: ignore[override]
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, *rest, **kw)
        proxy.node.meta["bridge_source"] = _user_frame()
        return proxy


def _user_frame() -> str:
    """The innermost frame of the call stack outside torch and this module, as 'file:line (code)'."""
    frame = sys._getframe(1)
    while frame is not None:
        file = frame.f_code.co_filename
        if not file.startswith(_TORCH_DIR) and file != __file__:
            info = traceback.extract_stack(frame, limit=1)[0]
            return f"{info.filename}:{info.lineno} ({info.line})" if info.line else f"{info.filename}:{info.lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return ""


def _source(node: torch.fx.Node) -> str:
    """'file.py:123 (code)' of the model line that created ``node``, where it was recorded."""
    return node.meta.get("bridge_source", "")


def _fail(node: torch.fx.Node, what: str, fix: str) -> BridgeError:
    src = _source(node)
    where = f" at {src}" if src else ""
    return BridgeError(f"fx node {node.name!r} ({what}){where}: {fix}")


def _unsupported(node: torch.fx.Node, what: str) -> BridgeError:
    return _fail(
        node,
        what,
        "this op is not supported by the converter; rewrite the model with the supported layers "
        "(Conv1d/2d, Linear, BatchNorm, ReLU/clipped ReLU/QCFS, AvgPool, flatten, residual add)",
    )


def _f64(t: torch.Tensor | None, like_shape: int | None = None) -> torch.Tensor:
    if t is None:
        return torch.zeros(like_shape, dtype=torch.float64)  # type: ignore[arg-type]
    return t.detach().to("cpu", torch.float64, copy=True)


def _shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    shape = node.meta.get("bridge_shape")
    return None if shape is None else tuple(shape)


def _pair(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * n
    return tuple(int(i) for i in v)


class _Converter:
    def __init__(self, gm: torch.fx.GraphModule, input_shape: tuple[int, ...]) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.lg = LayerGraph()
        self.input_shape = input_shape
        # fx node name -> name of the layer op that produces its value (aliases for removed ops)
        self.alias: dict[str, str] = {}

    # -- helpers -------------------------------------------------------------------------
    def _ref(self, node: torch.fx.Node, arg: Any) -> str:
        if not isinstance(arg, torch.fx.Node):
            raise _fail(node, f"{self._what(node)} with a constant operand {arg!r}",
                        "only tensors computed from the input can flow through the network")
        if arg.name not in self.alias:
            raise _fail(node, f"{self._what(node)} reads {arg.name!r}, which is not a tensor "
                        "computed from the input", "compute it from the input or remove it")
        return self.alias[arg.name]

    def _what(self, node: torch.fx.Node) -> str:
        if node.op == "call_module":
            return f"module {type(self.modules[node.target]).__name__} {node.target!r}"
        if node.op == "call_function":
            return f"function {getattr(node.target, '__name__', node.target)}"
        return f"{node.op} {node.target}"

    def _add(self, node: torch.fx.Node, op: Op) -> None:
        op.source = _source(node)
        self.lg.add(op)
        self.alias[node.name] = op.name

    def _activation(self, node: torch.fx.Node, x: Any, kind: str, bound: float | None = None,
                    levels: int | None = None) -> None:
        if bound is not None and not (bound > 0 and math.isfinite(bound)):
            raise _fail(node, f"{self._what(node)} with upper bound {bound}",
                        "the upper bound must be a positive finite number")
        self._add(node, ActivationOp(node.name, [self._ref(node, x)], kind=kind,  # type: ignore[arg-type]
                                     bound=bound, levels=levels))

    def _clamp(self, node: torch.fx.Node, x: Any, lo: Any, hi: Any) -> None:
        if lo == 0 and hi is None:
            return self._activation(node, x, "relu")
        if lo == 0 and isinstance(hi, (int, float)):
            return self._activation(node, x, "clip", float(hi))
        raise _fail(node, f"{self._what(node)}(min={lo}, max={hi})",
                    "only clamp/hardtanh with min=0 and a constant max (or no max) convert to IF neurons")

    def _flatten(self, node: torch.fx.Node, x: Any) -> None:
        src = x if isinstance(x, torch.fx.Node) else None
        in_shape = _shape(src) if src is not None else None
        out_shape = _shape(node)
        if in_shape is None or out_shape is None:
            raise _unsupported(node, self._what(node))
        if out_shape != (in_shape[0], math.prod(in_shape[1:])):
            raise _fail(node, f"{self._what(node)} from {list(in_shape)} to {list(out_shape)} on an "
                        f"example batch of {_EXAMPLE_BATCH}",
                        "only flattening everything but the batch dimension, as "
                        "torch.flatten(x, 1) or x.view(x.size(0), -1), is supported")
        ref = self._ref(node, x)
        if len(in_shape) == 2:  # already flat: nothing to do
            self.alias[node.name] = ref
        else:
            self._add(node, FlattenOp(node.name, [ref]))

    def _avgpool(self, node: torch.fx.Node, x: Any, kernel: Any, stride: Any, padding: Any,
                 ceil_mode: bool = False, divisor_override: Any = None) -> None:
        kernel = _pair(kernel, 2)
        stride = _pair(stride if stride not in (None, []) else kernel, 2)
        padding = _pair(padding, 2)
        if any(padding) or divisor_override is not None:
            raise _fail(node, f"{self._what(node)} with padding={padding}, "
                        f"divisor_override={divisor_override}",
                        "use average pooling without padding and without divisor_override")
        self._check_ceil(node, x, kernel, stride, ceil_mode)
        self._add(node, AvgPoolOp(node.name, [self._ref(node, x)], kernel=kernel,  # type: ignore[arg-type]
                                  stride=stride, padding=(0, 0)))  # type: ignore[arg-type]

    def _check_ceil(self, node: torch.fx.Node, x: Any, kernel: tuple, stride: tuple, ceil_mode: bool) -> None:
        shape = _shape(x) if isinstance(x, torch.fx.Node) else None
        if shape is None or len(shape) != 4:
            raise _fail(node, f"{self._what(node)} on an input that is not (N, C, H, W)",
                        "2-d pooling needs a 4-d input")
        if ceil_mode:
            floor_out = tuple((shape[2 + i] - kernel[i]) // stride[i] + 1 for i in range(2))
            if tuple(_shape(node)[2:]) != floor_out:  # type: ignore[index]
                raise _fail(node, f"{self._what(node)} with ceil_mode=True that changes the output size",
                            "use ceil_mode=False or an input size the pool divides")

    def _adaptive(self, node: torch.fx.Node, x: Any, output_size: Any) -> None:
        shape = _shape(x) if isinstance(x, torch.fx.Node) else None
        if shape is None or len(shape) != 4:
            raise _unsupported(node, self._what(node))
        h, w = shape[2:]
        if isinstance(output_size, int):
            out = (output_size, output_size)
        else:  # None keeps that dimension's size
            out = tuple(size if o is None else int(o) for o, size in zip(output_size, (h, w)))
        if h % out[0] or w % out[1]:
            raise _fail(node, f"{self._what(node)} from {h}x{w} to {out[0]}x{out[1]}",
                        "only an adaptive pool whose output size divides the input size is a fixed "
                        "average pool; change --input-shape or use AvgPool2d")
        kernel = (h // out[0], w // out[1])
        self._add(node, AvgPoolOp(node.name, [self._ref(node, x)], kernel=kernel, stride=kernel,
                                  padding=(0, 0)))

    def _mean(self, node: torch.fx.Node, x: Any, dim: Any, keepdim: Any, dtype: Any) -> None:
        """Global average pooling ``x.mean(dim=(2, 3), keepdim=...)`` on (N, C, H, W):
        an average pool over the whole H x W (kernel = stride = (H, W)), then a flatten to
        (N, C) unless ``keepdim``."""
        shape = _shape(x) if isinstance(x, torch.fx.Node) else None
        dims = (dim,) if isinstance(dim, int) else tuple(dim) if isinstance(dim, (tuple, list)) else None
        ok_dims = (shape is not None and dims is not None and all(isinstance(d, int) for d in dims)
                   and len(shape) == 4 and sorted(d % 4 for d in dims) == [2, 3])
        if not ok_dims or dtype is not None or not isinstance(keepdim, bool):
            raise _fail(node, f"{self._what(node)} over dim={dim} of a "
                        f"{len(shape) if shape else '?'}-d tensor" + (f" with dtype={dtype}" if dtype else ""),
                        "only the global average over the spatial dimensions of (N, C, H, W) converts: "
                        "x.mean(dim=(2, 3)) or x.mean((-2, -1)), optionally keepdim=True")
        h, w = shape[2], shape[3]  # type: ignore[index]
        ref = self._ref(node, x)
        if keepdim:
            return self._add(node, AvgPoolOp(node.name, [ref], kernel=(h, w), stride=(h, w), padding=(0, 0)))
        pool = AvgPoolOp(self._fresh(f"{node.name}_pool"), [ref], kernel=(h, w), stride=(h, w), padding=(0, 0))
        pool.source = _source(node)
        self.lg.add(pool)
        self._add(node, FlattenOp(node.name, [pool.name]))

    def _fresh(self, base: str) -> str:
        """An op name used neither by an fx node nor by an op."""
        taken = {n.name for n in self.gm.graph.nodes} | set(self.lg.ops)
        name, i = base, 0
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        return name

    def _maxpool(self, node: torch.fx.Node, x: Any, kernel: Any, stride: Any, padding: Any,
                 dilation: Any, ceil_mode: bool) -> None:
        kernel = _pair(kernel, 2)
        stride = _pair(stride if stride not in (None, []) else kernel, 2)
        if any(_pair(padding, 2)) or _pair(dilation, 2) != (1, 1):
            raise _fail(node, f"{self._what(node)} with padding or dilation",
                        "replace it by AvgPool2d without padding and retrain")
        self._check_ceil(node, x, kernel, stride, ceil_mode)
        self._add(node, MaxPoolOp(node.name, [self._ref(node, x)], kernel=kernel, stride=stride,  # type: ignore[arg-type]
                                  padding=(0, 0)))

    def _add_op(self, node: torch.fx.Node, a: Any, b: Any, alpha: Any = 1) -> None:
        if alpha != 1:
            raise _fail(node, f"{self._what(node)} with alpha={alpha}", "use a plain a + b")
        self._add(node, AddOp(node.name, [self._ref(node, a), self._ref(node, b)]))

    # -- modules -------------------------------------------------------------------------
    def call_module(self, node: torch.fx.Node) -> None:
        m = self.modules[node.target]  # type: ignore[index]
        x = node.args[0] if node.args else None
        if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity)):
            self.alias[node.name] = self._ref(node, x)
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            self._conv(node, m, x)
        elif isinstance(m, nn.Linear):
            self._add(node, LinearOp(node.name, [self._ref(node, x)], weight=_f64(m.weight),
                                     bias=_f64(m.bias, m.out_features)))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.running_mean is None or m.running_var is None:
                raise _fail(node, f"{self._what(node)} without running statistics",
                            "train it with track_running_stats=True so it has fixed inference statistics")
            n = m.num_features
            self._add(node, BatchNormOp(
                node.name, [self._ref(node, x)], mean=_f64(m.running_mean), var=_f64(m.running_var),
                weight=_f64(m.weight) if m.weight is not None else torch.ones(n, dtype=torch.float64),
                bias=_f64(m.bias, n), eps=float(m.eps)))
        elif isinstance(m, ClippedReLU):
            self._activation(node, x, "clip", _bound(m))
        elif isinstance(m, QCFS):
            self._activation(node, x, "qcfs", _bound(m), int(m.levels))
        elif isinstance(m, nn.ReLU6):
            self._activation(node, x, "clip", 6.0)
        elif isinstance(m, nn.ReLU):
            self._activation(node, x, "relu")
        elif isinstance(m, nn.Hardtanh):
            self._clamp(node, x, m.min_val, m.max_val)
        elif isinstance(m, nn.AvgPool2d):
            self._avgpool(node, x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.divisor_override)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            self._adaptive(node, x, m.output_size)
        elif isinstance(m, nn.MaxPool2d):
            self._maxpool(node, x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
        elif isinstance(m, nn.Flatten):
            self._flatten(node, x)
        else:
            raise _unsupported(node, self._what(node))

    def _conv(self, node: torch.fx.Node, m: nn.Conv1d | nn.Conv2d, x: Any) -> None:
        nd = 1 if isinstance(m, nn.Conv1d) else 2
        if m.padding_mode != "zeros":
            raise _fail(node, f"{self._what(node)} with padding_mode={m.padding_mode!r}",
                        "only zero padding converts; use padding_mode='zeros'")
        kernel, dilation = _pair(m.kernel_size, nd), _pair(m.dilation, nd)
        if m.padding == "same":
            totals = [d * (k - 1) for d, k in zip(dilation, kernel)]
            if any(t % 2 for t in totals):
                raise _fail(node, f"{self._what(node)} with padding='same' and an even kernel",
                            "'same' needs asymmetric padding here; use an odd kernel or explicit padding")
            padding = tuple(t // 2 for t in totals)
        elif m.padding == "valid":
            padding = (0,) * nd
        else:
            padding = _pair(m.padding, nd)
        self._add(node, ConvOp(node.name, [self._ref(node, x)], weight=_f64(m.weight),
                               bias=_f64(m.bias, m.out_channels), stride=_pair(m.stride, nd),
                               padding=padding, dilation=dilation, groups=int(m.groups)))

    # -- functions and methods -----------------------------------------------------------
    def call_function(self, node: torch.fx.Node) -> None:
        f, args, kw = node.target, node.args, node.kwargs
        x = args[0] if args else kw.get("input")
        if f in (F.relu, torch.relu, torch.relu_):
            self._activation(node, x, "relu")
        elif f is F.relu6:
            self._activation(node, x, "clip", 6.0)
        elif f in (F.hardtanh, F.hardtanh_):
            lo = args[1] if len(args) > 1 else kw.get("min_val", -1.0)
            hi = args[2] if len(args) > 2 else kw.get("max_val", 1.0)
            self._clamp(node, x, lo, hi)
        elif f in (torch.clamp, torch.clip, torch.clamp_min, torch.clamp_max):
            self._clamp_call(node, f, args, kw)
        elif f in (operator.add, operator.iadd, torch.add):
            self._add_op(node, args[0], args[1] if len(args) > 1 else kw.get("other"), kw.get("alpha", 1))
        elif f is torch.flatten:
            self._flatten(node, x)
        elif f in (F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout):
            self.alias[node.name] = self._ref(node, x)
        elif f is F.avg_pool2d:
            self._avgpool(node, x, _arg(args, kw, 1, "kernel_size"), _arg(args, kw, 2, "stride", None),
                          _arg(args, kw, 3, "padding", 0), _arg(args, kw, 4, "ceil_mode", False),
                          _arg(args, kw, 6, "divisor_override", None))
        elif f is F.adaptive_avg_pool2d:
            self._adaptive(node, x, _arg(args, kw, 1, "output_size"))
        elif f is torch.mean:
            self._mean(node, x, _arg(args, kw, 1, "dim", None), _arg(args, kw, 2, "keepdim", False),
                       kw.get("dtype"))
        elif f is F.max_pool2d or getattr(f, "__name__", "") in ("max_pool2d", "_max_pool2d"):
            self._maxpool(node, x, _arg(args, kw, 1, "kernel_size"), _arg(args, kw, 2, "stride", None),
                          _arg(args, kw, 3, "padding", 0), _arg(args, kw, 4, "dilation", 1),
                          _arg(args, kw, 5, "ceil_mode", False))
        elif not _is_tensor_node(node):
            return  # shape arithmetic (getitem of x.size(), ...): resolved by the example run
        else:
            raise _unsupported(node, self._what(node))

    def _clamp_call(self, node: torch.fx.Node, f: Any, args: tuple, kw: dict) -> None:
        x = args[0] if args else kw.get("input")
        if f is torch.clamp_min:
            lo, hi = _arg(args, kw, 1, "min"), None
        elif f is torch.clamp_max:
            lo, hi = None, _arg(args, kw, 1, "max")
        else:
            lo, hi = _arg(args, kw, 1, "min", None), _arg(args, kw, 2, "max", None)
        self._clamp(node, x, lo, hi)

    def call_method(self, node: torch.fx.Node) -> None:
        name, args, kw = node.target, node.args, node.kwargs
        x = args[0]
        if name in ("relu", "relu_"):
            self._activation(node, x, "relu")
        elif name in ("clamp", "clamp_", "clip", "clip_"):
            self._clamp_call(node, torch.clamp, args, kw)
        elif name in ("clamp_min", "clamp_min_"):
            self._clamp_call(node, torch.clamp_min, args, kw)
        elif name in ("view", "reshape", "flatten"):
            self._flatten(node, x)
        elif name in ("add", "add_", "__add__", "__iadd__"):
            self._add_op(node, x, args[1] if len(args) > 1 else kw.get("other"), kw.get("alpha", 1))
        elif name == "contiguous":
            self.alias[node.name] = self._ref(node, x)
        elif name == "mean":
            self._mean(node, x, _arg(args, kw, 1, "dim", None), _arg(args, kw, 2, "keepdim", False),
                       kw.get("dtype"))
        elif not _is_tensor_node(node):
            return  # shape arithmetic
        else:
            raise _unsupported(node, f"method Tensor.{name}")

    def run(self) -> LayerGraph:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if any(isinstance(o, InputOp) for o in self.lg.ops.values()):
                    raise _fail(node, "a second input", "the converter handles models with one input tensor")
                self._add(node, InputOp(node.name, [], shape=self.input_shape))
            elif node.op == "call_module":
                self.call_module(node)
            elif node.op == "call_function":
                if node.target is getattr:  # x.shape
                    continue
                self.call_function(node)
            elif node.op == "call_method":
                self.call_method(node)
            elif node.op == "output":
                out = node.args[0]
                if not isinstance(out, torch.fx.Node):
                    raise _fail(node, f"output {type(out).__name__}",
                                "the model must return one tensor (the readout)")
                self._add(node, OutputOp(node.name, [self._ref(node, out)]))
            else:  # get_attr: a parameter or buffer used directly in forward
                users = list(node.users)
                target = users[0] if users else node
                raise _unsupported(target, f"{node.op} {node.target!r} used directly in forward")
        return self.lg


def _bound(m: ClippedReLU | QCFS) -> float:
    """The module's lambda = |raw| + min_bound, evaluated in float64 (as the float64 model does)."""
    return float(m.raw_bound.detach().double().abs() + m.min_bound)


def _is_tensor_node(node: torch.fx.Node) -> bool:
    return "bridge_shape" in node.meta


def _arg(args: tuple, kw: dict, i: int, name: str, default: Any = ...) -> Any:
    if len(args) > i:
        return args[i]
    if name in kw:
        return kw[name]
    if default is ...:
        raise KeyError(name)
    return default


class _ShapeRecorder(torch.fx.Interpreter):
    """Runs the traced model once and stores each tensor result's shape in the node.

    A failing node raises :class:`_ShapeError` naming the layer, the input shape it expects
    and the one it got (fx's own error decoration is switched off).
    """

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.extra_traceback = False  # fx would append the graph's code to the message
        self.suggestion = ""  # the --input-shape the first layer implies, where it tells

    def run_node(self, n: torch.fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as exc:
            msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise _ShapeError(f"{self._expected(n)}: {msg}") from None
        if isinstance(result, torch.Tensor):
            # only the shape is needed (fx's ShapeProp metadata also checks memory formats: slow)
            n.meta["bridge_shape"] = tuple(int(s) for s in result.shape)
        return result

    def _expected(self, n: torch.fx.Node) -> str:
        """'layer X (Linear) expects (batch, 3600), got [2, 784]' for the node that failed."""
        try:
            args, _ = self.fetch_args_kwargs_from_env(n)
        except Exception:  # noqa: BLE001 - only for the message
            args = ()
        got = next((list(a.shape) for a in args if isinstance(a, torch.Tensor)), None)
        got_text = f"got {got} on an example batch of {_EXAMPLE_BATCH}" if got is not None else ""
        where = f"fx node {n.name!r}"
        if n.op == "call_module":
            m = self.module.get_submodule(str(n.target))
            where = f"layer {n.target!r} ({type(m).__name__})"
            first = any(isinstance(a, torch.fx.Node) and a.op == "placeholder" for a in n.args)
            if isinstance(m, nn.Linear):
                self.suggestion = str(m.in_features) if first else ""
                return f"{where} expects input (batch, ..., {m.in_features}), {got_text}"
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                spatial = ["L"] if isinstance(m, nn.Conv1d) else ["H", "W"]
                self.suggestion = ",".join([str(m.in_channels)] + spatial) if first else ""
                return f"{where} expects input ({', '.join(['batch', str(m.in_channels)] + spatial)}), {got_text}"
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                return f"{where} expects {m.num_features} channels in dimension 1, {got_text}"
        return f"{where}, {got_text}" if got_text else where


class _ShapeError(Exception):
    pass


def trace_module(model: nn.Module, input_shape: Sequence[int]) -> LayerGraph:
    """Trace ``model`` (one sample of shape ``input_shape``, no batch) into a LayerGraph.

    The model is put in eval mode (Dropout off, BatchNorm on running statistics); its
    weights are copied as float64 and not modified.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or any(s <= 0 for s in input_shape):
        raise BridgeError(f"input shape {list(input_shape)} is not a valid sample shape; "
                          "give the shape of one sample without batch, e.g. --input-shape 3,32,32")
    model.eval()
    try:
        graph = BridgeTracer().trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, ... on dynamic control flow
        raise BridgeError(
            f"torch.fx cannot trace the model ({exc.__class__.__name__}: {str(exc).splitlines()[0]}); "
            "remove data-dependent control flow from forward() or export it with torch.export") from None
    gm = torch.fx.GraphModule(model, graph)
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    example = torch.zeros((_EXAMPLE_BATCH, *input_shape),
                          dtype=param.dtype if param is not None else torch.float32,
                          device=param.device if param is not None else "cpu")
    # The example run must fail as one BridgeError line and print nothing: the run uses its own
    # interpreter (fx's ShapeProp calls traceback.print_exc on a failing node), and stderr is held
    # back in case a module prints (fx's GraphModule.__call__ prints its code when it fails).
    # A successful run passes what was held on (the model's own warnings).
    held = io.StringIO()
    recorder = _ShapeRecorder(gm)
    try:
        with torch.no_grad(), contextlib.redirect_stderr(held):
            recorder.run(example)
    except _ShapeError as exc:
        hint = recorder.suggestion
        py = hint.replace(",", ", ") + ("," if "," not in hint else "")
        example_text = f"--input-shape {hint} / input_shape=({py})" if hint else "--input-shape / input_shape="
        raise BridgeError(
            f"the model does not run on an input of shape {list(input_shape)} (one sample, no batch "
            f"dimension): {exc}; pass the shape of one sample the model takes, without the batch "
            f"dimension, as {example_text}") from None
    except BaseException:
        sys.stderr.write(held.getvalue())
        raise
    if held.getvalue():
        sys.stderr.write(held.getvalue())
    return _Converter(gm, input_shape).run()
