"""Front-end for ``torch.export`` programs: an ATen-level graph -> :class:`LayerGraph`.

A ``torch.export.ExportedProgram`` (a ``.pt2`` file, or a TorchScript archive converted by
PyTorch's own ``TS2EPConverter``) holds an FX graph of ATen operators whose parameters are
graph inputs listed in ``ep.graph_signature``. This module maps each operator to the op of
:mod:`bridge.converter.ir` that the module-level front-end (torch.fx on an ``nn.Module``)
produces for the same layer, so that both front-ends feed the same folding, threshold and
NIR-building code.

Rules:

* Nodes that depend only on parameters, buffers and constants (``t(W)``, ``abs(raw_bound) +
  1e-3``) are evaluated once in float64 ("constant folding"); every other node carries data.
* ``bridge.model.activations.ClippedReLU`` and ``QCFS`` are recognised as a whole through each
  node's ``nn_module_stack`` metadata (the module type path), and their bound is read from the
  program's state_dict: ``lambda = |raw_bound| + 1e-3`` (see :mod:`bridge.model.activations`).
  Without that metadata (TorchScript conversions) ``minimum(relu(z), c)`` with a constant
  ``c`` is the same clip and is recognised as such.
* Dropout, clone, alias, contiguous and detach are identities in inference and vanish.
* ``aten.mean.dim`` over the spatial dimensions (2, 3) of (N, C, H, W) is global average
  pooling: an average pool with kernel = stride = (H, W), then a flatten unless ``keepdim``.
* Op names follow the module-level front-end: the module path with ``.`` -> ``_``
  (``features.0`` -> ``features_0``) for a module's main op, the ATen node name otherwise.
* An operator with no rule raises :class:`BridgeError` naming the node, the op and the
  source line of the model (``node.meta["stack_trace"]``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch.fx import Node

from bridge.model.activations import QCFS, ClippedReLU, _Bounded
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
from bridge.format.errors import BridgeError

aten = torch.ops.aten


def _ops(*names: str) -> list[Any]:
    """ATen overloads by name ("conv2d.padding"), skipping those this torch lacks."""
    found = []
    for name in names:
        packet, _, overload = name.partition(".")
        op = getattr(getattr(aten, packet, None), overload or "default", None)
        if op is not None:
            found.append(op)
    return found


# A program records each module's class by its qualified name. bridge 0.1 defined the
# activations in ``bridge.activations``; programs exported then still name that module.
_MODULE_KINDS = {
    f"{cls.__module__}.{cls.__qualname__}": kind
    for cls, kind in ((ClippedReLU, "clip"), (QCFS, "qcfs"))
} | {"bridge.activations.ClippedReLU": "clip", "bridge.activations.QCFS": "qcfs"}

# identities in inference: the output is the input
_IDENTITY_OPS = set(_ops("dropout", "feature_dropout", "alpha_dropout", "clone", "alias",
                         "contiguous", "detach", "lift_fresh_copy"))
# nodes that compute nothing we need (shape assertions, symbolic sizes)
_IGNORED_OPS = set(_ops("_assert_tensor_metadata", "sym_size.int", "_assert_scalar"))
_CLAMP_OPS = set(_ops("clamp", "clamp.Tensor"))
_RESHAPE_OPS = set(_ops("view", "reshape", "_unsafe_view", "flatten.using_ints"))


def _source(node: Node) -> str:
    """``file.py:123 (code)`` of the model line that produced ``node`` (the last frame
    outside torch), or ``""`` when the program kept no stack trace."""
    trace = node.meta.get("stack_trace") or ""
    lines = [line.strip() for line in trace.strip().splitlines()]
    frames = []
    for i, line in enumerate(lines):
        if line.startswith("File "):
            code = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("File ") else ""
            frames.append((line, code))
    if not frames:
        return ""
    user = [f for f in frames if "/torch/" not in f[0] and "site-packages" not in f[0]]
    where, code = (user or frames)[-1]
    try:
        file = where.split('"')[1]
        lineno = where.split("line ")[1].split(",")[0]
        where = f"{file}:{lineno}"
    except IndexError:
        pass
    return f"{where} ({code})" if code else where


def _module(node: Node) -> tuple[str, str] | None:
    """(path, type) of the innermost module that ran ``node``, if the program recorded it."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    key, value = list(stack.items())[-1]
    path, mtype = value
    return (str(path) if path is not None else str(key)), str(mtype)


def _pair(value: Any, n: int = 2) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        value = [int(v) for v in value]
        return tuple(value * n) if len(value) == 1 else tuple(value)
    return (int(value),) * n


class _Reader:
    """One pass over the program's graph, building the LayerGraph."""

    def __init__(self, ep: torch.export.ExportedProgram) -> None:
        self.ep = ep
        self.graph = LayerGraph()
        self.consts: dict[str, torch.Tensor | Any] = {}  # fx node name -> folded value
        self.produced: dict[str, str] = {}  # fx node name -> IR op name carrying its data
        self.names: set[str] = set()
        self.module_groups: dict[str, tuple[str, str]] = {}  # fx node -> (module path, type)
        self._params = self._parameter_table()

    # ---- parameters -------------------------------------------------------------------
    def _parameter_table(self) -> dict[str, torch.Tensor]:
        sig = self.ep.graph_signature
        state, consts = self.ep.state_dict, self.ep.constants
        table: dict[str, torch.Tensor] = {}
        for name, fqn in sig.inputs_to_parameters.items():
            table[name] = state[fqn]
        for name, fqn in sig.inputs_to_buffers.items():
            table[name] = state[fqn] if fqn in state else consts[fqn]
        for name, fqn in sig.inputs_to_lifted_tensor_constants.items():
            table[name] = consts[fqn]
        for name, fqn in getattr(sig, "inputs_to_lifted_custom_objs", {}).items():
            table[name] = consts[fqn]
        return table

    def _fqn(self, node: Node) -> str | None:
        sig = self.ep.graph_signature
        return sig.inputs_to_parameters.get(node.name) or sig.inputs_to_buffers.get(node.name)

    # ---- helpers ----------------------------------------------------------------------
    def _error(self, node: Node, what: str, fix: str) -> BridgeError:
        src = _source(node)
        at = f" at {src}" if src else ""
        return BridgeError(f"node {node.name!r} ({node.target}){at}: {what}; {fix}")

    def _is_const(self, arg: Any) -> bool:
        if isinstance(arg, Node):
            return arg.name in self.consts
        if isinstance(arg, (list, tuple)):
            return all(self._is_const(a) for a in arg)
        return True

    def _value(self, arg: Any) -> Any:
        if isinstance(arg, Node):
            return self.consts[arg.name]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self._value(a) for a in arg)
        return arg

    def _tensor(self, node: Node, arg: Any) -> torch.Tensor | None:
        if arg is None:
            return None
        if not self._is_const(arg):
            raise self._error(node, "a weight depends on the input", "use parameters as weights")
        return torch.as_tensor(self._value(arg)).detach().to(torch.float64).clone()

    def _data(self, node: Node, arg: Any) -> str:
        if not isinstance(arg, Node) or arg.name not in self.produced:
            raise self._error(node, "its input is not a tensor computed from the model input",
                              "only layers applied to the input's data are supported")
        return self.produced[arg.name]

    def _shape(self, arg: Node) -> tuple[int, ...]:
        val = arg.meta.get("val")
        if val is None or not hasattr(val, "shape"):
            raise self._error(arg, "the program has no shape for this node",
                              "re-save the model with torch.export.export")
        return tuple(int(s) for s in val.shape)

    def _name(self, node: Node) -> str:
        """The module path (``features.0`` -> ``features_0``) for a module's op, else the
        ATen node name; ``_1``, ``_2`` ... on repeated calls, as torch.fx names them."""
        mod = self.module_groups.get(node.name) or _module(node)
        base = node.name
        if mod is not None and mod[0] and self._is_main_op(node, mod[0]):
            base = mod[0].replace(".", "_")
        name, i = base, 0
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def _is_main_op(self, node: Node, path: str) -> bool:
        # a module's op is its main op when no other data node of the same module call
        # follows it (the last op of the module's forward)
        for user in node.users:
            if user.target is operator.getitem:  # a result of a multi-output op: look past it
                if not self._is_main_op(user, path):
                    return False
                continue
            mod = _module(user)
            if mod is not None and mod[0] == path and user.name not in self.consts:
                return False
        return True

    def _add(self, node: Node, op: Op) -> None:
        op.source = _source(node)
        self.graph.add(op)
        self.produced[node.name] = op.name

    # ---- the pass ---------------------------------------------------------------------
    def run(self) -> LayerGraph:
        sig = self.ep.graph_signature
        user_inputs = list(sig.user_inputs)
        if len(user_inputs) != 1:
            raise BridgeError(
                f"the program takes {len(user_inputs)} inputs; bridge converts models with "
                "exactly one input tensor"
            )
        self._group_bounded_modules()
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                if node.name in self._params:
                    self.consts[node.name] = self._params[node.name]
                elif node.name == user_inputs[0]:
                    shape = self._shape(node)
                    op = InputOp(name=self._name(node), inputs=[], shape=shape[1:])
                    self._add(node, op)
                else:
                    raise self._error(node, "an input that is neither data nor a parameter",
                                      "export the model with one input tensor")
            elif node.op == "get_attr":
                self.consts[node.name] = getattr(self.ep.graph_module, str(node.target))
            elif node.op == "call_function":
                self._call(node)
            elif node.op == "output":
                self._output(node)
        return self.graph

    def _group_bounded_modules(self) -> None:
        """Find the nodes of each ClippedReLU / QCFS call (same module path, same type)."""
        for node in self.ep.graph.nodes:
            if node.op != "call_function":
                continue
            mod = _module(node)
            if mod is not None and mod[1] in _MODULE_KINDS:
                self.module_groups[node.name] = mod

    def _output(self, node: Node) -> None:
        outs = node.args[0]
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        user_outputs = set(self.ep.graph_signature.user_outputs)
        data = [o for o in outs if isinstance(o, Node) and o.name in user_outputs]
        if len(data) != 1:
            raise BridgeError(
                f"the program returns {len(data)} outputs; bridge converts models with exactly "
                "one output tensor (the readout)"
            )
        op = OutputOp(name="output", inputs=[self._data(node, data[0])])
        self._add(node, op)

    def _call(self, node: Node) -> None:
        target = node.target
        if target in _IGNORED_OPS:
            return
        # constant folding: anything computed from parameters/constants only
        if self._is_const(list(node.args)) and self._is_const(list(node.kwargs.values())):
            args = [self._fold_arg(a) for a in node.args]
            kwargs = {k: self._fold_arg(v) for k, v in node.kwargs.items()}
            self.consts[node.name] = target(*args, **kwargs)  # type: ignore[operator]
            return
        group = self.module_groups.get(node.name)
        if group is not None:
            self._bounded_module(node, group)
            return
        if target in _IDENTITY_OPS:
            self.produced[node.name] = self._data(node, node.args[0])
            return
        handler = _HANDLERS.get(target)  # type: ignore[arg-type]
        if handler is None:
            raise self._error(
                node, "this operation has no spiking equivalent in bridge",
                "use Conv/Linear/BatchNorm/ReLU-family/AvgPool/Flatten/residual add layers "
                "(see docs/cli.md)",
            )
        handler(self, node)

    def _fold_arg(self, arg: Any) -> Any:
        value = self._value(arg)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(torch.float64)
        return value

    # ---- bridge's activation modules ---------------------------------------------------
    def _bounded_module(self, node: Node, group: tuple[str, str]) -> None:
        """Inner nodes of a ClippedReLU / QCFS call pass the data through; the last one
        (the call's output) becomes one ActivationOp with the module's bound."""
        path, mtype = group
        data_inputs = [a for a in node.all_input_nodes if a.name in self.produced]
        inner = [u for u in node.users if self.module_groups.get(u.name) == group]
        if inner:  # not the module's output yet: remember the data source
            self.produced[node.name] = self._data(node, data_inputs[0]) if data_inputs else ""
            return
        raw_name = f"{path}.raw_bound" if path else "raw_bound"
        if raw_name not in self.ep.state_dict:
            raise self._error(node, f"no parameter {raw_name!r} for this {mtype}",
                              "export the model with its parameters")
        # lambda = |raw| + min_bound in float64, as the module-level front-end (and the
        # float64 model) computes it
        raw = self.ep.state_dict[raw_name].detach().to(torch.float64)
        bound = float(raw.abs() + _Bounded.min_bound)
        levels = None
        kind = _MODULE_KINDS[mtype]
        if kind == "qcfs":
            levels = self._qcfs_levels(node, group)
        source = self._group_source(node, group)
        op = ActivationOp(name=self._name(node), inputs=[source], kind=kind,  # type: ignore[arg-type]
                          bound=bound, levels=levels)
        self._add(node, op)

    def _group_source(self, node: Node, group: tuple[str, str]) -> str:
        """The IR op feeding a module call: walk back through the call's own nodes."""
        seen: set[str] = set()
        stack = [node]
        while stack:
            cur = stack.pop()
            for arg in cur.all_input_nodes:
                if arg.name in seen:
                    continue
                seen.add(arg.name)
                if self.module_groups.get(arg.name) == group:
                    stack.append(arg)
                elif arg.name in self.produced:
                    return self.produced[arg.name]
        raise self._error(node, "the activation has no data input", "check the model")

    def _qcfs_levels(self, node: Node, group: tuple[str, str]) -> int:
        for cand in self.ep.graph.nodes:
            if self.module_groups.get(cand.name) == group and cand.target in _CLAMP_OPS:
                hi = cand.args[2] if len(cand.args) > 2 else cand.kwargs.get("max")
                if hi is not None and self._is_const(hi):
                    return int(round(float(torch.as_tensor(self._value(hi)))))
        raise self._error(node, "cannot read the QCFS quantisation levels",
                          "use bridge.model.activations.QCFS unchanged")


# ---- handlers: one per ATen op family ---------------------------------------------------
def _arg(node: Node, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _conv(r: _Reader, node: Node) -> None:
    x = node.args[0]
    if node.target is aten.convolution.default:
        weight, bias, stride, padding, dilation, transposed, _, groups = node.args[1:9]
        if transposed:
            raise r._error(node, "transposed convolutions have no IF equivalent here",
                           "use ordinary convolutions")
    else:
        weight = node.args[1]
        bias = _arg(node, 2, "bias")
        stride = _arg(node, 3, "stride", 1)
        padding = _arg(node, 4, "padding", 0)
        dilation = _arg(node, 5, "dilation", 1)
        groups = _arg(node, 6, "groups", 1)
    w = r._tensor(node, weight)
    assert w is not None
    n = w.dim() - 2
    if n not in (1, 2):
        raise r._error(node, f"{n}-d convolutions are not supported", "use Conv1d or Conv2d")
    dil = _pair(dilation, n)
    if isinstance(padding, str):
        if padding == "valid":
            pad = (0,) * n
        else:  # "same" with stride 1: total padding d (k - 1) on each side, if it is even
            totals = [d * (k - 1) for d, k in zip(dil, w.shape[2:])]
            if any(t % 2 for t in totals):
                raise r._error(node, "padding='same' needs asymmetric padding here",
                               "use an odd kernel or explicit padding")
            pad = tuple(t // 2 for t in totals)
    else:
        pad = _pair(padding, n)
    b = r._tensor(node, bias)
    op = ConvOp(
        name=r._name(node), inputs=[r._data(node, x)], weight=w,
        bias=b if b is not None else torch.zeros(w.shape[0], dtype=torch.float64),
        stride=_pair(stride, n), padding=pad, dilation=dil, groups=int(groups),
    )
    r._add(node, op)


def _linear(r: _Reader, node: Node) -> None:
    if node.target is aten.linear.default:
        x, weight, bias = node.args[0], node.args[1], _arg(node, 2, "bias")
        w = r._tensor(node, weight)
    elif node.target is aten.addmm.default:  # bias + x @ W^T
        bias, x, wt = node.args[0], node.args[1], node.args[2]
        if _arg(node, 3, "beta", 1) != 1 or _arg(node, 4, "alpha", 1) != 1:
            raise r._error(node, "scaled addmm", "use nn.Linear")
        w = r._tensor(node, wt)
        w = None if w is None else w.T.contiguous()
    else:  # mm: x @ W^T without bias
        x, wt, bias = node.args[0], node.args[1], None
        w = r._tensor(node, wt)
        w = None if w is None else w.T.contiguous()
    assert w is not None
    b = r._tensor(node, bias)
    if b is not None:
        b = b.reshape(-1).expand(w.shape[0]).clone()
    if len(r._shape(x)) != 2:
        raise r._error(node, "a linear layer on a non-flat input",
                       "flatten the input before the linear layer")
    op = LinearOp(name=r._name(node), inputs=[r._data(node, x)], weight=w,
                  bias=b if b is not None else torch.zeros(w.shape[0], dtype=torch.float64))
    r._add(node, op)


def _batch_norm(r: _Reader, node: Node) -> None:
    x = node.args[0]
    if node.target is aten.batch_norm.default:
        weight, bias, mean, var, training, _, eps = node.args[1:8]
        if training:
            raise r._error(node, "BatchNorm was exported in training mode",
                           "call model.eval() before torch.export.export")
    else:  # _native_batch_norm_legit_no_training(x, w, b, mean, var, momentum, eps)
        weight, bias, mean, var, _, eps = node.args[1:7]
    m, v = r._tensor(node, mean), r._tensor(node, var)
    assert m is not None and v is not None
    w, b = r._tensor(node, weight), r._tensor(node, bias)
    op = BatchNormOp(
        name=r._name(node), inputs=[r._data(node, x)], mean=m, var=v,
        weight=w if w is not None else torch.ones_like(m),
        bias=b if b is not None else torch.zeros_like(m), eps=float(eps),
    )
    r._add(node, op)


def _activation(r: _Reader, node: Node, kind: str, bound: float | None) -> None:
    op = ActivationOp(name=r._name(node), inputs=[r._data(node, node.args[0])],
                      kind=kind, bound=bound)  # type: ignore[arg-type]
    r._add(node, op)


def _scalar(r: _Reader, node: Node, arg: Any) -> float | None:
    if arg is None:
        return None
    if not r._is_const(arg):
        raise r._error(node, "a bound that depends on the input", "use a constant bound")
    value = torch.as_tensor(r._value(arg)).to(torch.float64)
    if value.numel() != 1:
        raise r._error(node, "a bound per element", "use one bound per layer (a scalar)")
    return float(value.reshape(()).item())


def _clip(r: _Reader, node: Node, lo: float | None, hi: float | None) -> None:
    if lo != 0.0:
        raise r._error(node, f"clip with lower bound {lo} (IF neurons clip at 0)",
                       "use ReLU, ReLU6, Hardtanh(0, a), clamp(0, a) or ClippedReLU")
    _activation(r, node, "relu" if hi is None else "clip", hi)


def _relu(r: _Reader, node: Node) -> None:
    _activation(r, node, "relu", None)


def _hardtanh(r: _Reader, node: Node) -> None:
    _clip(r, node, _scalar(r, node, _arg(node, 1, "min_val", -1.0)),
          _scalar(r, node, _arg(node, 2, "max_val", 1.0)))


def _relu6(r: _Reader, node: Node) -> None:
    _activation(r, node, "clip", 6.0)


def _clamp(r: _Reader, node: Node) -> None:
    lo = _scalar(r, node, _arg(node, 1, "min"))
    hi = _scalar(r, node, _arg(node, 2, "max"))
    _clip(r, node, lo, hi)


def _clamp_min(r: _Reader, node: Node) -> None:
    _clip(r, node, _scalar(r, node, node.args[1]), None)


def _minimum(r: _Reader, node: Node) -> None:
    """minimum(relu(z), c) or clamp_max(relu(z), c) with a constant c: clip(z, 0, c)."""
    a, c = node.args[0], node.args[1]
    if r._is_const(a):
        a, c = c, a
    src = r.graph.ops.get(r._data(node, a))
    if not (isinstance(src, ActivationOp) and src.kind == "relu" and r._is_const(c)
            and isinstance(a, Node) and len(a.users) == 1):
        raise r._error(node, "minimum of values that are not a ReLU output and a constant",
                       "write the clip as clamp(x, 0, a) or use bridge.model.activations.ClippedReLU")
    bound = _scalar(r, node, c)
    del r.graph.ops[src.name]  # relu then min = one clip activation
    r.names.discard(src.name)
    op = ActivationOp(name=r._name(node), inputs=list(src.inputs), kind="clip", bound=bound)
    r._add(node, op)


def _add(r: _Reader, node: Node) -> None:
    a, b = node.args[0], node.args[1]
    if _arg(node, 2, "alpha", 1) != 1:
        raise r._error(node, "add with alpha != 1", "write a plain a + b")
    if not (isinstance(a, Node) and isinstance(b, Node)) or r._is_const(a) or r._is_const(b):
        raise r._error(node, "adding a constant to activations", "fold it into a layer's bias")
    op = AddOp(name=r._name(node), inputs=[r._data(node, a), r._data(node, b)])
    r._add(node, op)


def _avg_pool(r: _Reader, node: Node) -> None:
    kernel = _pair(node.args[1])
    stride = _pair(_arg(node, 2, "stride", []) or kernel)
    padding = _pair(_arg(node, 3, "padding", 0))
    ceil_mode = _arg(node, 4, "ceil_mode", False)
    include_pad = _arg(node, 5, "count_include_pad", True)
    divisor = _arg(node, 6, "divisor_override")
    if ceil_mode or divisor is not None or (any(padding) and not include_pad):
        raise r._error(node, "average pooling with ceil_mode, divisor_override or "
                       "count_include_pad=False", "use plain AvgPool2d(kernel, stride, padding)")
    op = AvgPoolOp(name=r._name(node), inputs=[r._data(node, node.args[0])],
                   kernel=kernel, stride=stride, padding=padding)  # type: ignore[arg-type]
    r._add(node, op)


def _adaptive_avg_pool(r: _Reader, node: Node) -> None:
    shape = r._shape(node.args[0])
    out = _pair(node.args[1])
    out = tuple(shape[2 + i] if o is None else o for i, o in enumerate(out))
    h, w = shape[2], shape[3]
    if h % out[0] or w % out[1]:
        raise r._error(node, f"adaptive pooling from {h}x{w} to {out[0]}x{out[1]} is not a "
                       "fixed pool", "choose an output size that divides the input size")
    kernel = (h // out[0], w // out[1])
    op = AvgPoolOp(name=r._name(node), inputs=[r._data(node, node.args[0])],
                   kernel=kernel, stride=kernel, padding=(0, 0))
    r._add(node, op)


def _mean(r: _Reader, node: Node) -> None:
    """Global average pooling ``mean(x, dim=(2, 3), keepdim)`` on (N, C, H, W): an average pool
    with kernel = stride = (H, W), then a flatten to (N, C) unless ``keepdim``."""
    x = node.args[0]
    shape = r._shape(x)
    dim = _arg(node, 1, "dim")
    dims = (dim,) if isinstance(dim, int) else tuple(dim or ())
    keepdim = bool(_arg(node, 2, "keepdim", False))
    if len(shape) != 4 or sorted(int(d) % 4 for d in dims) != [2, 3] or node.kwargs.get("dtype") is not None:
        raise r._error(node, f"mean over dim={list(dims)} of a {len(shape)}-d tensor",
                       "only the global average over the spatial dimensions of (N, C, H, W) converts: "
                       "x.mean(dim=(2, 3)) or x.mean((-2, -1)), optionally keepdim=True")
    kernel = (shape[2], shape[3])
    name = r._name(node)
    if keepdim:
        r._add(node, AvgPoolOp(name=name, inputs=[r._data(node, x)], kernel=kernel, stride=kernel,
                               padding=(0, 0)))
        return
    pool_name, i = f"{name}_pool", 0
    while pool_name in r.names:
        i += 1
        pool_name = f"{name}_pool_{i}"
    r.names.add(pool_name)
    pool = AvgPoolOp(name=pool_name, inputs=[r._data(node, x)], kernel=kernel, stride=kernel, padding=(0, 0))
    pool.source = _source(node)
    r.graph.add(pool)
    r._add(node, FlattenOp(name=name, inputs=[pool_name]))


def _max_pool(r: _Reader, node: Node) -> None:
    kernel = _pair(node.args[1])
    stride = _pair(_arg(node, 2, "stride", []) or kernel)
    padding = _pair(_arg(node, 3, "padding", 0))
    dilation = _pair(_arg(node, 4, "dilation", 1))
    if _arg(node, 5, "ceil_mode", False) or dilation != (1, 1):
        raise r._error(node, "max pooling with ceil_mode or dilation",
                       "use plain MaxPool2d(kernel, stride, padding)")
    op = MaxPoolOp(name=r._name(node), inputs=[r._data(node, node.args[0])],
                   kernel=kernel, stride=stride, padding=padding)  # type: ignore[arg-type]
    r._add(node, op)


def _reshape(r: _Reader, node: Node) -> None:
    x = node.args[0]
    before, after = r._shape(x), r._shape(node)
    if after == before:
        r.produced[node.name] = r._data(node, x)
        return
    if len(after) == 2 and after[0] == before[0]:
        if len(before) == 2:
            r.produced[node.name] = r._data(node, x)
            return
        r._add(node, FlattenOp(name=r._name(node), inputs=[r._data(node, x)]))
        return
    raise r._error(node, f"reshape from {before} to {after} (only flattening to "
                   "(batch, features) has a spiking equivalent)", "use torch.flatten(x, 1)")


def _getitem(r: _Reader, node: Node) -> None:
    # the first result of a multi-output op (max_pool2d_with_indices, native batch norm)
    src, index = node.args
    if index != 0 and not node.users:  # an unused secondary result (saved statistics)
        return
    if index != 0 or src.name not in r.produced:
        raise r._error(node, "uses a secondary result of an operation",
                       "use only the main output of each layer")
    r.produced[node.name] = r.produced[src.name]


_HANDLERS: dict[Any, Callable[[_Reader, Node], None]] = {
    **{op: _conv for op in _ops("conv1d", "conv2d", "conv1d.padding", "conv2d.padding", "convolution")},
    aten.linear.default: _linear,
    aten.addmm.default: _linear,
    aten.mm.default: _linear,
    aten.batch_norm.default: _batch_norm,
    aten._native_batch_norm_legit_no_training.default: _batch_norm,
    aten.relu.default: _relu,
    aten.hardtanh.default: _hardtanh,
    aten.relu6.default: _relu6,
    **{op: _clamp for op in _CLAMP_OPS},
    aten.clamp_min.default: _clamp_min,
    aten.minimum.default: _minimum,
    aten.clamp_max.default: _minimum,
    aten.add.Tensor: _add,
    aten.avg_pool2d.default: _avg_pool,
    aten.adaptive_avg_pool2d.default: _adaptive_avg_pool,
    aten._adaptive_avg_pool2d.default: _adaptive_avg_pool,
    aten.mean.dim: _mean,
    aten.max_pool2d.default: _max_pool,
    aten.max_pool2d_with_indices.default: _max_pool,
    operator.getitem: _getitem,
    # in-place variants (``out += shortcut``, ``relu(inplace=True)``) have the same value
    aten.add_.Tensor: _add,
    aten.relu_.default: _relu,
    aten.hardtanh_.default: _hardtanh,
    aten.clamp_.default: _clamp,
    aten.clamp_min_.default: _clamp_min,
    **{op: _reshape for op in _RESHAPE_OPS},
}


def exported_to_layer_graph(ep: torch.export.ExportedProgram) -> LayerGraph:
    """Read a ``torch.export`` program (ATen graph) into the converter's :class:`LayerGraph`.

    Weights come from ``ep.state_dict`` and ``ep.constants`` through ``ep.graph_signature``
    (float64 copies); the input shape is the program's example input shape without batch.
    Raises :class:`BridgeError` on any operator without a spiking equivalent.
    """
    return _Reader(ep).run()
