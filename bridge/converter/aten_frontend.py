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
* ``aten.cat`` on channels is a :class:`ConcatOp`; ``slice``, ``split``/``chunk`` + ``getitem``,
  ``narrow``, ``transpose``, ``permute`` and views that are not a flatten are layout steps
  (:mod:`bridge.converter.layout`), read as a :class:`ChannelGatherOp` or refused, exactly as
  the module-level front-end reads them.
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
from bridge.converter import rules
from bridge.converter.ir import InputOp, LayerGraph, OutputOp
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
_CONV_OPS = set(_ops("conv1d", "conv2d", "conv1d.padding", "conv2d.padding", "convolution"))
_LAYER_OPS = _CONV_OPS | _RESHAPE_OPS | set(_ops(
    "linear", "addmm", "mm", "batch_norm", "_native_batch_norm_legit_no_training", "avg_pool2d",
    "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "mean.dim", "max_pool2d", "max_pool2d_with_indices", "cat"))
# element-wise ops with a constant operand: x <op> c
_BINARY = {op: kind for kind, names in (
    ("add", ("add.Tensor", "add_.Tensor", "add.Scalar")),
    ("sub", ("sub.Tensor", "sub_.Tensor", "sub.Scalar")),
    ("mul", ("mul.Tensor", "mul_.Tensor", "mul.Scalar")),
    ("div", ("div.Tensor", "div_.Tensor", "div.Scalar")),
) for op in _ops(*names)}
_RSUB = set(_ops("rsub.Scalar", "rsub.Tensor"))
_CHUNK_OPS = set(_ops("chunk"))


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


def _module_stack(node: Node) -> list[tuple[str, str]]:
    """(path, type name) of the modules whose calls ran ``node``, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    return [(str(path) if path is not None else str(key), str(mtype)) for key, (path, mtype) in stack.items()]


def _module(node: Node) -> tuple[str, str] | None:
    """(path, type) of the innermost module that ran ``node``, if the program recorded it."""
    stack = _module_stack(node)
    return stack[-1] if stack else None


def _display_names(ep: torch.export.ExportedProgram) -> dict[str, str]:
    """In-place ops named as their out-of-place op (``relu_`` -> ``relu``, ``relu__1`` -> ``relu_1``),
    as torch.fx names ``F.relu(x, inplace=True)`` and ``out += y``."""
    names = {}
    for node in ep.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        packet = schema.name.split("::")[-1] if schema is not None else ""
        if packet.endswith("_") and not packet.startswith("_") and node.name.startswith(packet):
            names[node.name] = packet[:-1] + node.name[len(packet):]
    return names


def _arg(node: Node, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


class _Reader:
    """One pass over the program's graph: read each node's arguments, call the rule."""

    def __init__(self, ep: torch.export.ExportedProgram) -> None:
        self.ep = ep
        self.consts: dict[str, torch.Tensor | Any] = {}  # fx node name -> folded value
        self.tuples: dict[str, tuple] = {}  # split / chunk nodes -> (input, kind, argument, dim)
        self.module_groups: dict[str, tuple[str, str]] = {}  # fx node -> (module path, type)
        self._params = self._parameter_table()
        self._fold_constants()
        members: dict[str, set[str]] = {}
        self.layer_modules: set[str] = set()
        for node in ep.graph.nodes:
            if node.op == "call_function" and self._carries_data(node):
                for path, _ in _module_stack(node):
                    members.setdefault(path, set()).add(node.name)
                    if node.target in _LAYER_OPS or (node.target in _BINARY and _BINARY[node.target] == "add"
                                                     and all(not self._is_const(a) for a in node.args[:2])):
                        self.layer_modules.add(path)
        self.out = rules.LayerGraphWriter(members, (n.name for n in ep.graph.nodes), _display_names(ep))

    # ---- parameters and constants -----------------------------------------------------
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

    def _fold_constants(self) -> None:
        """Nodes that depend only on parameters, buffers and literals, evaluated once in float64."""
        for node in self.ep.graph.nodes:
            if node.op == "placeholder" and node.name in self._params:
                self.consts[node.name] = self._params[node.name]
            elif node.op == "get_attr":
                self.consts[node.name] = getattr(self.ep.graph_module, str(node.target))
            elif (node.op == "call_function" and node.target not in _IGNORED_OPS
                  and self._is_const(list(node.args)) and self._is_const(list(node.kwargs.values()))):
                args = [self._fold_arg(a) for a in node.args]
                kwargs = {k: self._fold_arg(v) for k, v in node.kwargs.items()}
                self.consts[node.name] = node.target(*args, **kwargs)  # type: ignore[operator]

    def _carries_data(self, node: Node) -> bool:
        return (node.name not in self.consts and node.target not in _IGNORED_OPS
                and node.target not in _IDENTITY_OPS and node.target is not operator.getitem)

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

    def _fold_arg(self, arg: Any) -> Any:
        value = self._value(arg)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(torch.float64)
        return value

    def tensor(self, node: Node, arg: Any) -> torch.Tensor | None:
        """A weight: a constant of the program (None stays None)."""
        if arg is None:
            return None
        if not self._is_const(arg):
            raise rules.refuse(self.site(node), "a weight that depends on the input", "use parameters as weights")
        return torch.as_tensor(self._value(arg))

    # ---- sites, values, names -------------------------------------------------------------
    def site(self, node: Node) -> rules.Site:
        stack = _module_stack(node)
        module = stack[-1][0] if stack else ""
        user = [(p, t) for p, t in stack if not t.startswith("torch.") and t not in _MODULE_KINDS]
        act = None
        if user and user[-1][0] not in self.layer_modules:
            act = (user[-1][0], user[-1][1].rsplit(".", 1)[-1])
        return rules.Site(f"node {node.name!r} ({node.target})", _source(node), module, act)

    def data(self, node: Node, arg: Any) -> str:
        """The op computing ``arg``, a value computed from the model input."""
        if not isinstance(arg, Node) or not self.out.has(arg.name):
            raise rules.refuse(self.site(node), "its input is not a tensor computed from the model input",
                               "only layers applied to the input's data are supported")
        return self.out.ref(arg.name)

    def shape(self, arg: Node) -> tuple[int, ...]:
        val = arg.meta.get("val")
        if val is None or not hasattr(val, "shape"):
            raise rules.refuse(self.site(arg), "the program has no shape for this node",
                               "re-save the model with torch.export.export")
        return tuple(int(s) for s in val.shape)

    def name(self, node: Node) -> str:
        return self.out.name([node.name], self.site(node).module)

    def layout(self, node: Node, x: Any, step: Any) -> None:
        """``node = step(x)``, a layout step (slice, view, transpose) of a value."""
        if not isinstance(x, Node) or not self.out.has(x.name):
            self.data(node, x)  # raises: not a value computed from the input
        self.out.layout(node.name, x.name, self.shape(x)[1:], step, self.site(node))

    def emit(self, node: Node, ops: Any) -> None:
        if ops is None:  # an identity
            return self.out.alias(node.name, node.args[0].name)
        self.out.emit(node.name, ops)

    def pointwise(self, node: Node, kind: str, x: Any, c: Any = None, lo: Any = None, hi: Any = None) -> None:
        computed = isinstance(x, Node) and self.out.has(x.name)
        rules.pointwise_step(self.out, node.name, x.name if computed else None, self.site(node), kind, (c, lo, hi),
                             computed=computed, constant=self._is_const, fold=self._fold_arg,
                             shape=lambda: self.shape(x))

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
            if node.name in self.consts:
                continue
            if node.op == "placeholder":
                if node.name == user_inputs[0]:
                    self.out.emit(node.name, InputOp(self.name(node), [], shape=self.shape(node)[1:]))
                else:
                    raise rules.refuse(self.site(node), "an input that is neither data nor a parameter",
                                       "export the model with one input tensor")
            elif node.op == "call_function":
                self._call(node)
            elif node.op == "output":
                self._output(node)
        weight = next((t for t in self.ep.state_dict.values() if isinstance(t, torch.Tensor) and t.is_floating_point()),
                      None)
        self.out.graph.model_dtype = weight.dtype if weight is not None else torch.float32
        return self.out.graph

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
        found = [o for o in outs if isinstance(o, Node) and o.name in user_outputs]
        if len(found) != 1:
            raise BridgeError(
                f"the program returns {len(found)} outputs; bridge converts models with exactly "
                "one output tensor (the readout)"
            )
        self.out.emit(node.name, OutputOp("output", [self.data(node, found[0])], _source(node)))

    def _call(self, node: Node) -> None:
        target = node.target
        if target in _IGNORED_OPS:
            return
        group = self.module_groups.get(node.name)
        if group is not None:
            return self._bounded_module(node, group)
        if target in _IDENTITY_OPS:
            if not (isinstance(node.args[0], Node) and self.out.has(node.args[0].name)):
                self.data(node, node.args[0])  # raises: not a value computed from the input
            return self.out.alias(node.name, node.args[0].name)
        handler = _HANDLERS.get(target)  # type: ignore[arg-type]
        if handler is None:
            raise rules.unsupported(self.site(node))
        handler(self, node)

    # ---- bridge's activation modules ---------------------------------------------------
    def _bounded_module(self, node: Node, group: tuple[str, str]) -> None:
        """Inner nodes of a ClippedReLU / QCFS call pass the data through; the last one
        (the call's output) becomes one activation with the module's bound."""
        path, mtype = group
        inner = [u for u in node.users if self.module_groups.get(u.name) == group]
        if inner:  # not the module's output yet
            return
        raw_name = f"{path}.raw_bound" if path else "raw_bound"
        if raw_name not in self.ep.state_dict:
            raise rules.refuse(self.site(node), f"no parameter {raw_name!r} for this {mtype}",
                               "export the model with its parameters")
        # lambda = |raw| + min_bound in float64, as the module-level front-end (and the
        # float64 model) computes it
        raw = self.ep.state_dict[raw_name].detach().to(torch.float64)
        bound = float(raw.abs() + _Bounded.min_bound)
        kind = _MODULE_KINDS[mtype]
        levels = self._qcfs_levels(node, group) if kind == "qcfs" else None
        nodes = [n.name for n in self.ep.graph.nodes if self.module_groups.get(n.name) == group
                 and self._carries_data(n)]
        name = self.out.name(nodes, path)
        self.out.emit(node.name, rules.activation(self.site(node), name, self._group_source(node, group),
                                                  kind, bound, levels))

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
                elif self.out.has(arg.name):
                    return self.out.ref(arg.name)
        raise rules.refuse(self.site(node), "the activation has no data input", "check the model")

    def _qcfs_levels(self, node: Node, group: tuple[str, str]) -> int:
        for cand in self.ep.graph.nodes:
            if self.module_groups.get(cand.name) == group and cand.target in _CLAMP_OPS:
                hi = cand.args[2] if len(cand.args) > 2 else cand.kwargs.get("max")
                if hi is not None and self._is_const(hi):
                    return int(round(float(torch.as_tensor(self._value(hi)))))
        raise rules.refuse(self.site(node), "cannot read the QCFS quantisation levels",
                           "use bridge.model.activations.QCFS unchanged")


# ---- handlers: read one ATen op's arguments, call the rule --------------------------------
def _conv(r: _Reader, node: Node) -> None:
    x = node.args[0]
    transposed = False
    if node.target is aten.convolution.default:
        weight, bias, stride, padding, dilation, transposed, _, groups = node.args[1:9]
    else:
        weight = node.args[1]
        bias = _arg(node, 2, "bias")
        stride = _arg(node, 3, "stride", 1)
        padding = _arg(node, 4, "padding", 0)
        dilation = _arg(node, 5, "dilation", 1)
        groups = _arg(node, 6, "groups", 1)
    r.emit(node, rules.conv(r.site(node), r.name(node), r.data(node, x), r.tensor(node, weight),
                            r.tensor(node, bias), stride=stride, padding=padding, dilation=dilation,
                            groups=int(groups), transposed=bool(transposed)))


def _linear(r: _Reader, node: Node) -> None:
    if node.target is aten.linear.default:
        x, weight, bias = node.args[0], r.tensor(node, node.args[1]), r.tensor(node, _arg(node, 2, "bias"))
    elif node.target is aten.addmm.default:  # bias + x @ W^T
        if _arg(node, 3, "beta", 1) != 1 or _arg(node, 4, "alpha", 1) != 1:
            raise rules.refuse(r.site(node), "scaled addmm", "use nn.Linear")
        bias, x, wt = r.tensor(node, node.args[0]), node.args[1], r.tensor(node, node.args[2])
        weight = wt.T  # type: ignore[union-attr]
    else:  # mm: x @ W^T without bias
        x, weight, bias = node.args[0], r.tensor(node, node.args[1]).T, None  # type: ignore[union-attr]
    r.emit(node, rules.linear(r.site(node), r.name(node), r.data(node, x), weight, bias, r.shape(x)))


def _batch_norm(r: _Reader, node: Node) -> None:
    training = False
    if node.target is aten.batch_norm.default:
        weight, bias, mean, var, training, _, eps = node.args[1:8]
    else:  # _native_batch_norm_legit_no_training(x, w, b, mean, var, momentum, eps)
        weight, bias, mean, var, _, eps = node.args[1:7]
    r.emit(node, rules.batch_norm(r.site(node), r.name(node), r.data(node, node.args[0]),
                                  mean=r.tensor(node, mean), var=r.tensor(node, var), weight=r.tensor(node, weight),
                                  bias=r.tensor(node, bias), eps=float(eps), training=bool(training)))


def _relu(r: _Reader, node: Node) -> None:
    r.pointwise(node, "relu", node.args[0])


def _leaky_relu(r: _Reader, node: Node) -> None:
    """``leaky_relu(x, 0)`` is ``relu``; any other slope is refused (negative outputs)."""
    if float(_arg(node, 1, "negative_slope", 0.01)) != 0.0:
        raise rules.unsupported(r.site(node))
    r.pointwise(node, "relu", node.args[0])


def _hardtanh(r: _Reader, node: Node) -> None:
    r.pointwise(node, "clamp", node.args[0], lo=_arg(node, 1, "min_val", -1.0), hi=_arg(node, 2, "max_val", 1.0))


def _relu6(r: _Reader, node: Node) -> None:
    r.pointwise(node, "clamp", node.args[0], lo=0.0, hi=6.0)


def _clamp(r: _Reader, node: Node) -> None:
    r.pointwise(node, "clamp", node.args[0], lo=_arg(node, 1, "min"), hi=_arg(node, 2, "max"))


def _clamp_min(r: _Reader, node: Node) -> None:
    r.pointwise(node, "clamp", node.args[0], lo=node.args[1])


def _clamp_max(r: _Reader, node: Node) -> None:
    r.pointwise(node, "clamp", node.args[0], hi=node.args[1])


def _min_max(r: _Reader, node: Node) -> None:
    a, b = node.args[0], node.args[1]
    if r._is_const(a):
        a, b = b, a
    if not r._is_const(b):
        raise rules.refuse(r.site(node), "the minimum/maximum of two tensors computed from the input",
                           "clip with a constant or a parameter")
    r.pointwise(node, "min" if node.target is aten.minimum.default else "max", a, b)


def _binary(r: _Reader, node: Node) -> None:
    if node.target in _RSUB:  # rsub(x, c, alpha) = c - alpha x
        a, b, kind = node.args[1], node.args[0], "sub"
        if _arg(node, 2, "alpha", 1) != 1:
            raise rules.refuse(r.site(node), "rsub with alpha != 1", "write c - x")
        alpha = 1
    else:
        a, b, kind = node.args[0], node.args[1], _BINARY[node.target]  # type: ignore[index]
        alpha = node.kwargs.get("alpha", node.args[2] if len(node.args) > 2 and kind in ("add", "sub") else 1)
    site = r.site(node)
    spec = rules.binary(site, kind, not r._is_const(a), not r._is_const(b), alpha)
    if spec is None:
        return r.emit(node, rules.add(site, r.name(node), r.data(node, a), r.data(node, b)))
    step, i, factor = spec
    data, const = (a, b) if i == 0 else (b, a)
    c = r._fold_arg(const)
    r.pointwise(node, step, data, c * factor if factor != 1 else c)


def _div_mode(r: _Reader, node: Node) -> None:
    mode = node.kwargs.get("rounding_mode", node.args[2] if len(node.args) > 2 else None)
    if mode is not None:
        raise rules.refuse(r.site(node), f"division with rounding_mode={mode!r}", "divide exactly; quantise with floor")
    _binary(r, node)


def _neg(r: _Reader, node: Node) -> None:
    r.pointwise(node, "mul", node.args[0], -1.0)


def _floor(r: _Reader, node: Node) -> None:
    r.pointwise(node, "floor", node.args[0])


def _round(r: _Reader, node: Node) -> None:
    if node.kwargs.get("decimals"):
        raise rules.unsupported(r.site(node))
    r.pointwise(node, "round", node.args[0])


def _avg_pool(r: _Reader, node: Node) -> None:
    x = node.args[0]
    r.emit(node, rules.avg_pool(
        r.site(node), r.name(node), r.data(node, x), r.shape(x), kernel=node.args[1],
        stride=_arg(node, 2, "stride", []), padding=_arg(node, 3, "padding", 0),
        ceil_mode=bool(_arg(node, 4, "ceil_mode", False)), count_include_pad=bool(_arg(node, 5, "count_include_pad", True)),
        divisor_override=_arg(node, 6, "divisor_override")))


def _adaptive_avg_pool(r: _Reader, node: Node) -> None:
    x = node.args[0]
    r.emit(node, rules.adaptive_avg_pool(r.site(node), r.name(node), r.data(node, x), r.shape(x), node.args[1]))


def _mean(r: _Reader, node: Node) -> None:
    x = node.args[0]
    name = r.name(node)
    r.emit(node, rules.global_mean(r.site(node), name, r.out.fresh(f"{name}_pool"), r.data(node, x), r.shape(x),
                                   _arg(node, 1, "dim"), bool(_arg(node, 2, "keepdim", False)),
                                   node.kwargs.get("dtype")))


def _max_pool(r: _Reader, node: Node) -> None:
    x = node.args[0]
    r.emit(node, rules.max_pool(
        r.site(node), r.name(node), r.data(node, x), r.shape(x), kernel=node.args[1],
        stride=_arg(node, 2, "stride", []), padding=_arg(node, 3, "padding", 0),
        dilation=_arg(node, 4, "dilation", 1), ceil_mode=bool(_arg(node, 5, "ceil_mode", False))))


def _reshape(r: _Reader, node: Node) -> None:
    x = node.args[0]
    src = r.data(node, x)
    r.emit(node, rules.flatten(r.site(node), r.name(node), src, r.shape(x), r.shape(node)))


def _reshape_or_layout(r: _Reader, node: Node) -> None:
    """A flatten (or no-op reshape) as before; any other view is a layout step (a channel shuffle)."""
    x = node.args[0]
    if isinstance(x, Node) and r.out.has(x.name) and r.out.reshape_is_layout(x.name, r.shape(x), r.shape(node)):
        return r.layout(node, x, rules.reshape_step(r.site(node), r.shape(x), r.shape(node)))
    _reshape(r, node)


def _cat(r: _Reader, node: Node) -> None:
    tensors = list(node.args[0])
    srcs = [r.data(node, t) for t in tensors]
    op = rules.concat(r.site(node), r.name(node), srcs, [r.shape(t) for t in tensors], _arg(node, 1, "dim", 0))
    r.out.emit_concat(node.name, op, tensors[0].name)


def _transpose(r: _Reader, node: Node) -> None:
    x = node.args[0]
    r.layout(node, x, rules.transpose_step(r.site(node), len(r.shape(x)), node.args[1], node.args[2]))


def _permute(r: _Reader, node: Node) -> None:
    x = node.args[0]
    r.layout(node, x, rules.permute_step(r.site(node), len(r.shape(x)), list(node.args[1])))


def _slice(r: _Reader, node: Node) -> None:
    x = node.args[0]
    r.layout(node, x, rules.slice_step(r.site(node), r.shape(x), _arg(node, 1, "dim", 0), _arg(node, 2, "start"),
                                       _arg(node, 3, "end"), _arg(node, 4, "step", 1)))


def _narrow(r: _Reader, node: Node) -> None:
    x = node.args[0]
    start = int(node.args[2])
    r.layout(node, x, rules.slice_step(r.site(node), r.shape(x), node.args[1], start, start + int(node.args[3])))


def _split(r: _Reader, node: Node) -> None:
    """``split`` / ``split_with_sizes`` / ``chunk``: a tuple, read part by part through ``getitem``."""
    x = node.args[0]
    if not (isinstance(x, Node) and r.out.has(x.name)):
        r.data(node, x)  # raises: not a value computed from the input
    kind = "chunk" if node.target in _CHUNK_OPS else "split"
    r.tuples[node.name] = (x, kind, node.args[1], _arg(node, 2, "dim", 0))


def _getitem(r: _Reader, node: Node) -> None:
    # the first result of a multi-output op (max_pool2d_with_indices, native batch norm)
    src, index = node.args
    if src.name in r.tuples:  # a part of a split / chunk
        x, kind, arg, dim = r.tuples[src.name]
        return r.layout(node, x, rules.split_step(r.site(node), len(r.shape(x)), kind, arg, dim, int(index)))
    if index != 0 and not node.users:  # an unused secondary result (saved statistics)
        return
    if index != 0 or not r.out.has(src.name):
        raise rules.refuse(r.site(node), "uses a secondary result of an operation",
                           "use only the main output of each layer")
    r.out.alias(node.name, src.name)


_HANDLERS: dict[Any, Callable[[_Reader, Node], None]] = {
    **{op: _conv for op in _CONV_OPS},
    aten.linear.default: _linear,
    aten.addmm.default: _linear,
    aten.mm.default: _linear,
    aten.batch_norm.default: _batch_norm,
    aten._native_batch_norm_legit_no_training.default: _batch_norm,
    **{op: _relu for op in _ops("relu", "relu_")},
    **{op: _hardtanh for op in _ops("hardtanh", "hardtanh_")},
    **{op: _leaky_relu for op in _ops("leaky_relu", "leaky_relu_")},
    aten.relu6.default: _relu6,
    **{op: _clamp for op in _ops("clamp", "clamp.Tensor", "clamp_", "clamp_.Tensor")},
    **{op: _clamp_min for op in _ops("clamp_min", "clamp_min.Tensor", "clamp_min_")},
    **{op: _clamp_max for op in _ops("clamp_max", "clamp_max.Tensor", "clamp_max_")},
    aten.minimum.default: _min_max,
    aten.maximum.default: _min_max,
    **{op: _binary for op in list(_BINARY) + list(_RSUB)},
    **{op: _div_mode for op in _ops("div.Tensor_mode", "div_.Tensor_mode")},
    **{op: _neg for op in _ops("neg", "neg_")},
    **{op: _floor for op in _ops("floor", "floor_")},
    **{op: _round for op in _ops("round", "round_", "round.decimals")},
    aten.avg_pool2d.default: _avg_pool,
    aten.adaptive_avg_pool2d.default: _adaptive_avg_pool,
    aten._adaptive_avg_pool2d.default: _adaptive_avg_pool,
    aten.mean.dim: _mean,
    aten.max_pool2d.default: _max_pool,
    aten.max_pool2d_with_indices.default: _max_pool,
    operator.getitem: _getitem,
    **{op: _reshape_or_layout for op in _RESHAPE_OPS},
    **{op: _cat for op in _ops("cat", "concat")},
    **{op: _transpose for op in _ops("transpose.int", "swapaxes", "swapdims")},
    **{op: _permute for op in _ops("permute")},
    **{op: _slice for op in _ops("slice.Tensor")},
    **{op: _narrow for op in _ops("narrow")},
    **{op: _split for op in _ops("split.Tensor", "split_with_sizes", "chunk", "split.sizes")},
}


def exported_to_layer_graph(ep: torch.export.ExportedProgram) -> LayerGraph:
    """Read a ``torch.export`` program (ATen graph) into the converter's :class:`LayerGraph`.

    Weights come from ``ep.state_dict`` and ``ep.constants`` through ``ep.graph_signature``
    (as the program holds them, see :mod:`bridge.converter.ir`); the input shape is the program's example input shape without batch.
    Raises :class:`BridgeError` on any operator without a spiking equivalent.
    """
    return _Reader(ep).run()
