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
* ``AvgPool2d`` -> :class:`AvgPoolOp`; ``AdaptiveAvgPool2d`` (any output size) ->
  :class:`AdaptiveAvgPoolOp`; ``MaxPool2d`` -> :class:`MaxPoolOp`.
* ``torch.cat(xs, 1)`` -> :class:`ConcatOp`; slices ``x[:, a:b]``, ``chunk``, ``split``,
  ``narrow``, ``transpose``, ``permute`` and views that are not a flatten are layout steps
  (:mod:`bridge.converter.layout`), read as a :class:`ChannelGatherOp` (a channel shuffle is
  view-transpose-view) or refused.
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
from bridge.converter import rules
from bridge.converter.ir import InputOp, LayerGraph, OutputOp

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_CONVERTER_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
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
        if not file.startswith(_TORCH_DIR) and not file.startswith(_CONVERTER_DIR):
            info = traceback.extract_stack(frame, limit=1)[0]
            return f"{info.filename}:{info.lineno} ({info.line})" if info.line else f"{info.filename}:{info.lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return ""


def _source(node: torch.fx.Node) -> str:
    """'file.py:123 (code)' of the model line that created ``node``, where it was recorded."""
    return node.meta.get("bridge_source", "")


def _f64(value: Any) -> Any:
    """Floating-point tensors as detached float64 copies (constants fold in float64)."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().to("cpu", torch.float64)
    return value


# ---- what each fx node is ---------------------------------------------------------------------
_IDENTITY_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity)
_IDENTITY_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout}
_IDENTITY_METHODS = {"contiguous", "detach", "clone"}
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}
_CLAMP_FUNCTIONS = {torch.clamp, torch.clip, torch.clamp_min, torch.clamp_max}
_ADD = {operator.add, operator.iadd, torch.add}
_SUB = {operator.sub, operator.isub, torch.sub}
_MUL = {operator.mul, operator.imul, torch.mul}
_DIV = {operator.truediv, operator.itruediv, torch.div}
_MIN = {torch.minimum, torch.min, torch.fmin}
_MAX = {torch.maximum, torch.max, torch.fmax}
_LAYER_MODULES = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool2d,
                  nn.AdaptiveAvgPool2d, nn.MaxPool2d, nn.Flatten)
_LAYER_FUNCTIONS = {F.conv1d, F.conv2d, F.linear, F.batch_norm, F.avg_pool2d, F.adaptive_avg_pool2d,
                    F.max_pool2d, torch.flatten, torch.mean, torch.conv1d, torch.conv2d, torch.cat, torch.concat}
_LAYER_METHODS = {"view", "reshape", "flatten", "mean"}
# layout: concatenation, slices, transposes (fixed channel maps, rules.concat and the layout steps)
_LAYOUT_FUNCTIONS = {torch.cat: "cat", torch.concat: "cat", torch.concatenate: "cat", torch.transpose: "transpose",
                     torch.swapaxes: "transpose", torch.permute: "permute", torch.narrow: "narrow",
                     torch.chunk: "chunk", torch.split: "split"}
_LAYOUT_METHODS = {"transpose", "swapaxes", "swapdims", "permute", "narrow", "chunk", "split"}


def _arg(args: tuple, kw: dict, i: int, name: str, default: Any = ...) -> Any:
    if len(args) > i:
        return args[i]
    if name in kw:
        return kw[name]
    if default is ...:
        raise KeyError(name)
    return default


def _bound(m: ClippedReLU | QCFS) -> float:
    """The module's lambda = |raw| + min_bound, evaluated in float64 (as the float64 model does)."""
    return float(m.raw_bound.detach().double().abs() + m.min_bound)


# Python operators named as their torch functions, as ATen programs name them
_OPERATOR_NAMES = {"truediv": "div", "itruediv": "div", "iadd": "add", "isub": "sub", "imul": "mul"}


def _display_names(nodes: list[torch.fx.Node]) -> dict[str, str]:
    """``truediv_1`` -> ``div_1``, ``iadd`` -> ``add``: the names a torch.export program gives."""
    names = {}
    for node in nodes:
        op = getattr(node.target, "__name__", "") if node.op == "call_function" else ""
        if op in _OPERATOR_NAMES and node.name.startswith(op):
            names[node.name] = _OPERATOR_NAMES[op] + node.name[len(op):]
    return names


def _module_stack(node: torch.fx.Node) -> list[tuple[str, type]]:
    return [(str(path), cls) for path, cls in (node.meta.get("nn_module_stack") or {}).values()]


class _Converter:
    """One pass over the traced graph: read each node's arguments, call the rule."""

    def __init__(self, gm: torch.fx.GraphModule, input_shape: tuple[int, ...]) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.input_shape = input_shape
        self.consts: dict[str, Any] = {}  # fx node -> value (float64), for nodes without data
        self.tuples: dict[str, tuple] = {}  # split / chunk nodes -> (input, kind, argument, dim)
        nodes = list(gm.graph.nodes)
        for node in nodes:
            self._fold(node)
        members: dict[str, set[str]] = {}
        self.layer_modules: set[str] = set()
        for node in nodes:
            if node.op in ("call_module", "call_function", "call_method") and self._carries_data(node):
                for path, _ in _module_stack(node):
                    members.setdefault(path, set()).add(node.name)
                    if self._is_layer(node):
                        self.layer_modules.add(path)
        self.out = rules.LayerGraphWriter(members, (n.name for n in nodes), _display_names(nodes))

    # ---- constants and data ---------------------------------------------------------------
    def _fold(self, node: torch.fx.Node) -> None:
        """Nodes computed from parameters, buffers and literals only are evaluated once, in
        float64 (as the torch.export front-end folds them). A parameter itself is kept as the model
        has it (a weight the layer graph shares, :func:`bridge.converter.rules.weights`) and
        up-cast where it is computed with."""
        if node.op == "get_attr":
            value = self.gm
            for part in str(node.target).split("."):
                value = getattr(value, part)
            self.consts[node.name] = value.detach() if isinstance(value, torch.Tensor) else value
            return
        if node.op not in ("call_function", "call_method") or node.target is getattr:
            return
        if not all(n.name in self.consts for n in node.all_input_nodes):
            return
        if not node.all_input_nodes and node.op == "call_function" and "bridge_shape" not in node.meta:
            return  # shape arithmetic on Python numbers
        args = torch.fx.node.map_arg(node.args, lambda n: _f64(self.consts[n.name]))
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: _f64(self.consts[n.name]))
        if node.op == "call_method":
            self.consts[node.name] = _f64(getattr(args[0], str(node.target))(*args[1:], **kwargs))
        else:
            self.consts[node.name] = _f64(node.target(*args, **kwargs))  # type: ignore[operator]

    def _carries_data(self, node: torch.fx.Node) -> bool:
        return "bridge_shape" in node.meta and node.name not in self.consts

    def _is_const(self, arg: Any) -> bool:
        return not isinstance(arg, torch.fx.Node) or arg.name in self.consts

    def _const(self, arg: Any) -> Any:
        return self.consts[arg.name] if isinstance(arg, torch.fx.Node) else arg

    def _is_layer(self, node: torch.fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.modules[node.target], _LAYER_MODULES)  # type: ignore[index]
        if node.op == "call_function":
            return node.target in _LAYER_FUNCTIONS or (
                node.target in _ADD and all(not self._is_const(a) for a in node.args[:2]))
        return node.target in _LAYER_METHODS

    # ---- sites and values -----------------------------------------------------------------
    def _what(self, node: torch.fx.Node) -> str:
        if node.op == "call_module":
            return f"module {type(self.modules[node.target]).__name__} {node.target!r}"
        if node.op == "call_function":
            return f"function {getattr(node.target, '__name__', node.target)}"
        if node.op == "call_method":
            return f"method Tensor.{node.target}"
        return f"{node.op} {node.target}"

    def _site(self, node: torch.fx.Node) -> rules.Site:
        stack = _module_stack(node)
        module = stack[-1][0] if stack else ""
        user = [(p, c) for p, c in stack if not c.__module__.startswith("torch.")]
        act = None
        if user and user[-1][0] not in self.layer_modules and not issubclass(user[-1][1], (ClippedReLU, QCFS)):
            act = (user[-1][0], user[-1][1].__name__)
        return rules.Site(f"fx node {node.name!r} ({self._what(node)})", _source(node), module, act)

    def _ref(self, node: torch.fx.Node, arg: Any) -> str:
        """The op computing ``arg`` (a data node) for the layer at ``node``."""
        if not isinstance(arg, torch.fx.Node) or not self.out.has(arg.name):
            what = f"a constant operand {arg!r}" if not isinstance(arg, torch.fx.Node) else \
                f"an input {arg.name!r} that is not a tensor computed from the model input"
            raise rules.refuse(self._site(node), what, "only tensors computed from the input can flow "
                               "through the network; compute it from the input or remove it")
        return self.out.ref(arg.name)

    def _identity(self, node: torch.fx.Node, x: Any) -> None:
        """``node`` passes ``x`` on unchanged (dropout in eval mode, identity, contiguous)."""
        if not isinstance(x, torch.fx.Node) or not self.out.has(x.name):
            self._ref(node, x)  # raises: not a value computed from the input
        self.out.alias(node.name, x.name)

    def _shape(self, arg: Any) -> tuple[int, ...]:
        shape = arg.meta.get("bridge_shape") if isinstance(arg, torch.fx.Node) else None
        return () if shape is None else tuple(shape)

    def _name(self, node: torch.fx.Node) -> str:
        return self.out.name([node.name], self._site(node).module)

    def _emit(self, node: torch.fx.Node, ops: Any) -> None:
        if ops is None:  # an identity (an already flat reshape)
            return self.out.alias(node.name, node.args[0].name)
        self.out.emit(node.name, ops)

    def _pointwise(self, node: torch.fx.Node, x: Any, kind: str, c: Any = None, lo: Any = None,
                   hi: Any = None) -> None:
        computed = isinstance(x, torch.fx.Node) and self.out.has(x.name)
        rules.pointwise_step(self.out, node.name, x.name if computed else None, self._site(node), kind,
                             (c, lo, hi), computed=computed, constant=self._is_const, fold=self._const,
                             shape=lambda: self._shape(x))

    def _binary(self, node: torch.fx.Node, kind: str, a: Any, b: Any, alpha: Any = 1) -> None:
        """``a (+, -, *, /) b``: a residual sum of two data tensors, or a step with a constant."""
        site = self._site(node)
        spec = rules.binary(site, kind, not self._is_const(a), not self._is_const(b), alpha)
        if spec is None:
            return self.out.emit(node.name, rules.add(site, self._name(node), self._ref(node, a),
                                                      self._ref(node, b)))
        step, i, factor = spec
        data, const = (a, b) if i == 0 else (b, a)
        c = _f64(self._const(const))
        return self._pointwise(node, data, step, c * factor if factor != 1 else c)

    # ---- modules -------------------------------------------------------------------------
    def call_module(self, node: torch.fx.Node) -> None:
        m = self.modules[node.target]  # type: ignore[index]
        x = node.args[0] if node.args else None
        site = self._site(node)
        if isinstance(m, _IDENTITY_MODULES):
            return self._identity(node, x)
        if isinstance(m, (ClippedReLU, QCFS)):  # bridge's own: the bound read as the module defines it
            levels = int(m.levels) if isinstance(m, QCFS) else None
            return self.out.emit(node.name, rules.activation(
                site, self._name(node), self._ref(node, x), "qcfs" if levels else "clip", _bound(m), levels))
        if isinstance(m, nn.ReLU):
            return self._pointwise(node, x, "relu")
        if isinstance(m, nn.LeakyReLU) and m.negative_slope == 0:
            return self._pointwise(node, x, "relu")
        if isinstance(m, nn.ReLU6):
            return self._pointwise(node, x, "clamp", lo=0.0, hi=6.0)
        if isinstance(m, nn.Hardtanh):
            return self._pointwise(node, x, "clamp", lo=float(m.min_val), hi=float(m.max_val))
        name = self._name(node)
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            return self._emit(node, rules.conv(site, name, self._ref(node, x), m.weight, m.bias, stride=m.stride,
                                               padding=m.padding, dilation=m.dilation, groups=m.groups,
                                               padding_mode=m.padding_mode))
        if isinstance(m, nn.Linear):
            return self._emit(node, rules.linear(site, name, self._ref(node, x), m.weight, m.bias, self._shape(x)))
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return self._emit(node, rules.batch_norm(site, name, self._ref(node, x), mean=m.running_mean,
                                                     var=m.running_var, weight=m.weight, bias=m.bias, eps=m.eps))
        if isinstance(m, nn.AvgPool2d):
            return self._emit(node, rules.avg_pool(
                site, name, self._ref(node, x), self._shape(x), kernel=m.kernel_size, stride=m.stride,
                padding=m.padding, ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad,
                divisor_override=m.divisor_override))
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self._emit(node, rules.adaptive_avg_pool(site, name, self._ref(node, x), self._shape(x),
                                                            m.output_size))
        if isinstance(m, nn.MaxPool2d):
            return self._emit(node, rules.max_pool(site, name, self._ref(node, x), self._shape(x),
                                                   kernel=m.kernel_size, stride=m.stride, padding=m.padding,
                                                   dilation=m.dilation, ceil_mode=m.ceil_mode))
        if isinstance(m, nn.Flatten):
            return self._flatten(node, x)
        raise rules.unsupported(site)

    def _flatten(self, node: torch.fx.Node, x: Any) -> None:
        if isinstance(x, torch.fx.Node) and self.out.has(x.name) and \
                self.out.reshape_is_layout(x.name, self._shape(x), self._shape(node)):
            # a view that is not a flatten (a channel shuffle's 5-d view): a layout step
            return self._layout(node, x, rules.reshape_step(self._site(node), self._shape(x), self._shape(node)))
        src = self._ref(node, x)
        self._emit(node, rules.flatten(self._site(node), self._name(node), src, self._shape(x),
                                       self._shape(node), _EXAMPLE_BATCH))

    # ---- layout: concatenation, slices, views -----------------------------------------------
    def _layout(self, node: torch.fx.Node, x: Any, step: Any) -> None:
        if not isinstance(x, torch.fx.Node) or not self.out.has(x.name):
            self._ref(node, x)  # raises: not a value computed from the input
        self.out.layout(node.name, x.name, self._shape(x)[1:], step, self._site(node))

    def _cat(self, node: torch.fx.Node, tensors: Any, dim: Any) -> None:
        if not isinstance(tensors, (list, tuple)) or not tensors:
            raise rules.unsupported(self._site(node))
        srcs = [self._ref(node, t) for t in tensors]
        op = rules.concat(self._site(node), self._name(node), srcs, [self._shape(t) for t in tensors], dim)
        self.out.emit_concat(node.name, op, tensors[0].name)

    def _split(self, node: torch.fx.Node, x: Any, kind: str, arg: Any, dim: Any) -> None:
        """``chunk`` / ``split``: a tuple, read part by part through ``getitem``."""
        if not isinstance(x, torch.fx.Node) or not self.out.has(x.name):
            self._ref(node, x)
        self.tuples[node.name] = (x, kind, arg, dim)

    def _getitem(self, node: torch.fx.Node, x: Any, index: Any) -> bool:
        """``parts[i]`` of a split or ``x[slices]`` of a value: a layout step (False: not data)."""
        if isinstance(x, torch.fx.Node) and x.name in self.tuples:
            src, kind, arg, dim = self.tuples[x.name]
            self._layout(node, src, rules.split_step(self._site(node), len(self._shape(src)), kind, arg, dim,
                                                     int(index)))
            return True
        if isinstance(x, torch.fx.Node) and self.out.has(x.name) and "bridge_shape" in node.meta:
            self._layout(node, x, rules.getitem_step(self._site(node), self._shape(x), index))
            return True
        return False

    def _layout_call(self, node: torch.fx.Node, name: str, args: tuple, kw: dict) -> bool:
        """Layout functions and methods by name (``transpose``, ``permute``, ``narrow``, ``chunk``,
        ``split``, ``cat``); False when ``name`` is none of them."""
        x = args[0] if args else kw.get("input")
        site = self._site(node)
        if name in ("cat", "concat", "concatenate"):
            self._cat(node, _arg(args, kw, 0, "tensors"), _arg(args, kw, 1, "dim", 0))
        elif name in ("transpose", "swapaxes", "swapdims"):
            self._layout(node, x, rules.transpose_step(site, len(self._shape(x)), _arg(args, kw, 1, "dim0"),
                                                       _arg(args, kw, 2, "dim1")))
        elif name == "permute":
            dims = args[1:] if len(args) > 2 or (len(args) == 2 and isinstance(args[1], int)) else \
                _arg(args, kw, 1, "dims")
            self._layout(node, x, rules.permute_step(site, len(self._shape(x)), list(dims)))
        elif name == "narrow":
            start, length = int(_arg(args, kw, 2, "start")), int(_arg(args, kw, 3, "length"))
            self._layout(node, x, rules.slice_step(site, self._shape(x), _arg(args, kw, 1, "dim"), start, start + length))
        elif name in ("chunk", "split"):
            key = "chunks" if name == "chunk" else "split_size_or_sections"
            arg = _arg(args, kw, 1, key, None)
            if arg is None:
                arg = kw.get("split_size")
            self._split(node, x, name, arg, _arg(args, kw, 2, "dim", 0))
        else:
            return False
        return True

    # ---- functions and methods -----------------------------------------------------------
    def call_function(self, node: torch.fx.Node) -> None:
        f, args, kw = node.target, node.args, node.kwargs
        x = args[0] if args else kw.get("input")
        site = self._site(node)
        if f is operator.getitem and self._getitem(node, x, args[1]):
            return None
        if f in _LAYOUT_FUNCTIONS and self._layout_call(node, _LAYOUT_FUNCTIONS[f], args, kw):
            return None
        if f in _RELU_FUNCTIONS:
            return self._pointwise(node, x, "relu")
        if f is F.leaky_relu and _arg(args, kw, 1, "negative_slope", 0.01) == 0:
            return self._pointwise(node, x, "relu")
        if f is F.relu6:
            return self._pointwise(node, x, "clamp", lo=0.0, hi=6.0)
        if f in (F.hardtanh, F.hardtanh_):
            return self._pointwise(node, x, "clamp", lo=_arg(args, kw, 1, "min_val", -1.0),
                                   hi=_arg(args, kw, 2, "max_val", 1.0))
        if f in _CLAMP_FUNCTIONS:
            return self._clamp(node, f, args, kw)
        if f in _MIN or f in _MAX:
            other = _arg(args, kw, 1, "other", None)
            if other is None or (isinstance(other, int) and not isinstance(other, bool) and f in (torch.min, torch.max)
                                 and not isinstance(other, torch.fx.Node)):
                raise rules.unsupported(site)  # a reduction over a dimension
            a, b = (x, other) if not self._is_const(x) else (other, x)
            if not self._is_const(b):
                raise rules.refuse(site, "the minimum/maximum of two tensors computed from the input",
                                   "clip with a constant or a parameter")
            return self._pointwise(node, a, "min" if f in _MIN else "max", b)
        for kind, table in (("add", _ADD), ("sub", _SUB), ("mul", _MUL), ("div", _DIV)):
            if f in table:
                if kind == "div" and kw.get("rounding_mode") is not None:
                    raise rules.refuse(site, f"division with rounding_mode={kw['rounding_mode']!r}",
                                       "divide exactly; quantise with floor")
                return self._binary(node, kind, args[0], _arg(args, kw, 1, "other"), kw.get("alpha", 1))
        if f in (operator.neg, torch.neg):
            return self._pointwise(node, x, "mul", -1.0)
        if f is torch.floor:
            return self._pointwise(node, x, "floor")
        if f is torch.round and not kw.get("decimals"):
            return self._pointwise(node, x, "round")
        if f in _IDENTITY_FUNCTIONS:
            return self._identity(node, x)
        name = self._name(node)
        if f is torch.flatten:
            return self._flatten(node, x)
        if f in (F.conv1d, F.conv2d, torch.conv1d, torch.conv2d):
            return self._emit(node, rules.conv(
                site, name, self._ref(node, x), self._weight(node, _arg(args, kw, 1, "weight")),
                self._weight(node, _arg(args, kw, 2, "bias", None)), stride=_arg(args, kw, 3, "stride", 1),
                padding=_arg(args, kw, 4, "padding", 0), dilation=_arg(args, kw, 5, "dilation", 1),
                groups=_arg(args, kw, 6, "groups", 1)))
        if f is F.linear:
            return self._emit(node, rules.linear(site, name, self._ref(node, x), self._weight(node, args[1]),
                                                 self._weight(node, _arg(args, kw, 2, "bias", None)), self._shape(x)))
        if f is F.batch_norm:
            return self._emit(node, rules.batch_norm(
                site, name, self._ref(node, x), mean=self._weight(node, _arg(args, kw, 1, "running_mean")),
                var=self._weight(node, _arg(args, kw, 2, "running_var")),
                weight=self._weight(node, _arg(args, kw, 3, "weight", None)),
                bias=self._weight(node, _arg(args, kw, 4, "bias", None)),
                training=bool(_arg(args, kw, 5, "training", False)), eps=_arg(args, kw, 7, "eps", 1e-5)))
        if f is F.avg_pool2d:
            return self._emit(node, rules.avg_pool(
                site, name, self._ref(node, x), self._shape(x), kernel=_arg(args, kw, 1, "kernel_size"),
                stride=_arg(args, kw, 2, "stride", None), padding=_arg(args, kw, 3, "padding", 0),
                ceil_mode=_arg(args, kw, 4, "ceil_mode", False),
                count_include_pad=_arg(args, kw, 5, "count_include_pad", True),
                divisor_override=_arg(args, kw, 6, "divisor_override", None)))
        if f is F.adaptive_avg_pool2d:
            return self._emit(node, rules.adaptive_avg_pool(site, name, self._ref(node, x), self._shape(x),
                                                            _arg(args, kw, 1, "output_size")))
        if f is torch.mean:
            return self._mean(node, x, _arg(args, kw, 1, "dim", None), _arg(args, kw, 2, "keepdim", False),
                              kw.get("dtype"))
        if f is F.max_pool2d or getattr(f, "__name__", "") in ("max_pool2d", "_max_pool2d"):
            return self._emit(node, rules.max_pool(
                site, name, self._ref(node, x), self._shape(x), kernel=_arg(args, kw, 1, "kernel_size"),
                stride=_arg(args, kw, 2, "stride", None), padding=_arg(args, kw, 3, "padding", 0),
                dilation=_arg(args, kw, 4, "dilation", 1), ceil_mode=_arg(args, kw, 5, "ceil_mode", False)))
        if "bridge_shape" not in node.meta:
            return None  # shape arithmetic (getitem of x.size(), ...): resolved by the example run
        raise rules.unsupported(site)

    def _weight(self, node: torch.fx.Node, arg: Any) -> Any:
        if arg is None:
            return None
        if not self._is_const(arg):
            raise rules.refuse(self._site(node), "a weight that depends on the input", "use parameters as weights")
        return self._const(arg)

    def _clamp(self, node: torch.fx.Node, f: Any, args: tuple, kw: dict) -> None:
        x = args[0] if args else kw.get("input")
        if f is torch.clamp_min:
            lo, hi = _arg(args, kw, 1, "min"), None
        elif f is torch.clamp_max:
            lo, hi = None, _arg(args, kw, 1, "max")
        else:
            lo, hi = _arg(args, kw, 1, "min", None), _arg(args, kw, 2, "max", None)
        self._pointwise(node, x, "clamp", lo=lo, hi=hi)

    def _mean(self, node: torch.fx.Node, x: Any, dim: Any, keepdim: Any, dtype: Any) -> None:
        name = self._name(node)
        self._emit(node, rules.global_mean(self._site(node), name, self.out.fresh(f"{name}_pool"),
                                           self._ref(node, x), self._shape(x), dim, keepdim, dtype))

    def call_method(self, node: torch.fx.Node) -> None:
        name, args, kw = str(node.target), node.args, node.kwargs
        x = args[0]
        if name in _LAYOUT_METHODS and self._layout_call(node, name, args, kw):
            return None
        if name in ("relu", "relu_"):
            return self._pointwise(node, x, "relu")
        if name in ("clamp", "clamp_", "clip", "clip_"):
            return self._clamp(node, torch.clamp, args, kw)
        if name in ("clamp_min", "clamp_min_"):
            return self._clamp(node, torch.clamp_min, args, kw)
        if name in ("clamp_max", "clamp_max_"):
            return self._clamp(node, torch.clamp_max, args, kw)
        if name in ("minimum", "maximum"):
            return self.call_function_as(node, torch.minimum if name == "minimum" else torch.maximum)
        binary = {"add": "add", "add_": "add", "__add__": "add", "__iadd__": "add", "__radd__": "add",
                  "sub": "sub", "sub_": "sub", "__sub__": "sub", "mul": "mul", "mul_": "mul", "__mul__": "mul",
                  "__rmul__": "mul", "div": "div", "div_": "div", "__truediv__": "div"}
        if name in binary:
            if kw.get("rounding_mode") is not None:
                raise rules.refuse(self._site(node), f"division with rounding_mode={kw['rounding_mode']!r}",
                                   "divide exactly; quantise with floor")
            return self._binary(node, binary[name], x, _arg(args, kw, 1, "other"), kw.get("alpha", 1))
        if name == "__rsub__":
            return self._binary(node, "sub", args[1], x)
        if name in ("neg", "neg_", "__neg__"):
            return self._pointwise(node, x, "mul", -1.0)
        if name in ("floor", "floor_"):
            return self._pointwise(node, x, "floor")
        if name in ("round", "round_") and not kw.get("decimals"):
            return self._pointwise(node, x, "round")
        if name in _IDENTITY_METHODS:
            return self._identity(node, x)
        if name in ("view", "reshape", "flatten"):
            return self._flatten(node, x)
        if name == "mean":
            return self._mean(node, x, _arg(args, kw, 1, "dim", None), _arg(args, kw, 2, "keepdim", False),
                              kw.get("dtype"))
        if "bridge_shape" not in node.meta:
            return None  # shape arithmetic
        raise rules.unsupported(self._site(node))

    def call_function_as(self, node: torch.fx.Node, f: Any) -> None:
        saved = node.target
        node.target = f
        try:
            self.call_function(node)
        finally:
            node.target = saved

    def run(self) -> LayerGraph:
        for node in self.gm.graph.nodes:
            if node.name in self.consts:
                continue  # parameters and what is computed from them alone
            if node.op == "placeholder":
                if self.out.graph.ops and any(isinstance(o, InputOp) for o in self.out.graph.ops.values()):
                    raise rules.refuse(self._site(node), "a second input",
                                       "the converter handles models with one input tensor")
                self.out.emit(node.name, InputOp(node.name, [], shape=self.input_shape))
            elif node.op == "call_module":
                self.call_module(node)
            elif node.op == "call_function":
                if node.target is not getattr:  # x.shape
                    self.call_function(node)
            elif node.op == "call_method":
                self.call_method(node)
            elif node.op == "output":
                out = node.args[0]
                if not isinstance(out, torch.fx.Node):
                    raise rules.refuse(self._site(node), f"output {type(out).__name__}",
                                       "the model must return one tensor (the readout)")
                self.out.emit(node.name, OutputOp(node.name, [self._ref(node, out)], _source(node)))
        param = next((p for p in self.gm.parameters() if p.is_floating_point()), None)
        self.out.graph.model_dtype = param.dtype if param is not None else torch.float32
        return self.out.graph


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
    weights are not modified: the layer graph refers to them as they are (no float64 copies,
    see :mod:`bridge.converter.ir`).
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
