r"""The conversion rules, once: what each PyTorch layer becomes in the converter's layer graph.

Both front-ends (:mod:`~bridge.converter.fx_frontend` for ``nn.Module`` s traced with torch.fx,
:mod:`~bridge.converter.aten_frontend` for ``torch.export`` programs) only *read* a layer's
arguments (tensors, ints, flags, shapes) and call the rule here; every decision (what is
accepted, what it becomes, the op's name, the error text) is taken in this module, so the two
front-ends accept the same models and give the same layer graph.

Layer rules (one function each; shapes include the batch dimension):

* :func:`conv`: N-d convolution (N = 1, 2), zero padding only; ``padding='same'`` is the symmetric
  integer padding :math:`p_i = d_i (k_i - 1) / 2` (refused when :math:`d_i (k_i - 1)` is odd),
  ``'valid'`` is 0.
* :func:`linear`, :func:`batch_norm` (inference statistics), :func:`add` (residual ``a + b``).
* :func:`avg_pool`: torch's ``avg_pool2d`` output size and divisor,

  .. math:: O = \Big\lfloor \frac{H + 2p - k}{s} \Big\rfloor + 1 \;(\lceil\cdot\rceil \text{ with ceil\_mode,
            minus one if the last window starts at } \ge H + p),

  each window divided by ``k_H k_W`` (``count_include_pad``), by its number of input elements
  (``count_include_pad=False``), or by ``divisor_override``. NIR's ``AvgPool2d`` (zero padding,
  divisor ``k_H k_W``) states exactly the case where every window has ``k_H k_W`` as divisor
  and ``O`` is the floor size; other pools are refused, naming the argument.
* :func:`max_pool`: kept as a max pool (the ``maxpool`` policy decides in
  :func:`~bridge.converter.fold.replace_maxpool`, which calls :func:`maxpool_replacement`: an
  ``AvgPool2d`` with the same kernel, stride, padding and ceil_mode, torch's defaults otherwise).
* :func:`adaptive_avg_pool`: a fixed average pool ``kernel = stride = (H / o_H, W / o_W)`` when
  the output size divides the input size. :func:`global_mean`: ``x.mean((2, 3))`` is the pool
  ``kernel = stride = (H, W)`` then a flatten (none with ``keepdim``).
* :func:`flatten`: only ``(N, ...) -> (N, prod(...))``; an identity reshape is no op.
* :func:`concat`: ``torch.cat(xs, 1)`` (channels, or features of flat values) -> :class:`ConcatOp`.
* layout steps (:func:`reshape_step`, :func:`transpose_step`, :func:`permute_step`,
  :func:`slice_step`, :func:`getitem_step`, :func:`split_step`): slices, ``split``, ``chunk``,
  ``narrow``, views and transposes are recorded on an index tensor
  (:mod:`bridge.converter.layout`) and, when a layer reads the result, become a
  :class:`ChannelGatherOp` (a fixed selection / permutation of channels: a channel shuffle is
  ``view``-``transpose``-``view``), the identity, or a refusal. The batch dimension must stay.

Activations are recognised by the function they compute (:mod:`bridge.converter.pointwise`):
a chain of element-wise steps is folded into one clipped affine map and matched to
``relu``, ``clip(z, 0, a)`` or the QCFS staircase.

Names: a module's op is named after its module path as torch.fx names it (``features.0`` ->
``features_0``, ``0`` -> ``_0``), a function's op after the front-end's node name; a repeated
name gets ``_1``, ``_2`` ... (:func:`fresh_name`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bridge.format.errors import BridgeError
from bridge.converter import layout as layouts
from bridge.converter.ir_eval import output_size
from bridge.converter.pointwise import ChainError, Recognised, Step, channel_values, describe, recognise
from bridge.converter.ir import (
    ActivationOp,
    AdaptiveAvgPoolOp,
    AddOp,
    AvgPoolOp,
    BatchNormOp,
    ChannelGatherOp,
    ConcatOp,
    ConvOp,
    FlattenOp,
    LayerGraph,
    LayerOp,
    LinearOp,
    MaxPoolOp,
    ScaleOp,
)

SUPPORTED_LAYERS = ("Conv1d/2d, Linear, BatchNorm, ReLU-family activations (ReLU, clamp, clipped ReLU, "
                    "QCFS), AvgPool, adaptive average pooling, flatten, residual add, torch.cat on channels, "
                    "channel slices / split / chunk / shuffle")
ACTIVATION_SWAP = (
    "use bridge.ClippedReLU(bound) (bridge.model.activations.ClippedReLU: clip(z, 0, bound)) or "
    "bridge.QCFS(bound, levels) (bridge.model.activations.QCFS: the quantised clip) in its place, "
    "e.g. `model.set_submodule('{path}', bridge.QCFS(bound=..., levels=...))` with the trained bound, "
    "then load the weights")


# ---- where a layer comes from, and the one error format ------------------------------------
@dataclass(frozen=True)
class Site:
    """A front-end node, for error messages and names: ``label`` says what was read
    (``fx node 'fc' (module Linear 'fc')`` / ``node 'sigmoid' (aten.sigmoid.default)``),
    ``source`` the model's line (``file.py:12 (code)``) where known, ``module`` the path of the
    innermost module whose call ran it (``""``: the model's own forward). ``activation_module``
    (path, class name) is set when the node sits in a user module that computes only
    element-wise functions: an activation written by hand."""

    label: str
    source: str = ""
    module: str = ""
    activation_module: tuple[str, str] | None = None


def refuse(site: Site, problem: str, fix: str) -> BridgeError:
    """The converter's one error format: ``<node> at <source>: <problem>; <fix>``.

    Inside a hand-written activation module the message also says which bridge activation to
    use instead and how to swap it in.
    """
    at = f" at {site.source}" if site.source else ""
    hint = ""
    if site.activation_module is not None:
        path, cls = site.activation_module
        hint = (f"; the activation module {cls} {path!r} is not one bridge can read: "
                + ACTIVATION_SWAP.format(path=path))
    return BridgeError(f"{site.label}{at}: {problem}; {fix}{hint}")


#: functions that are not a clipped ReLU, and why an IF neuron cannot compute them: its rate
#: under a constant input z is clip(z / theta, 0, 1) (times theta), piecewise linear with a kink
#: at 0 and at theta, never negative, one input summed over its incoming edges
_WHY_NOT_IF = (
    (("sigmoid", "hardsigmoid"), "a sigmoid is a smooth S-curve (and SE gating multiplies by it)"),
    (("silu", "swish", "hardswish", "mish"), "SiLU / swish x*sigmoid(x) is smooth and negative for x < 0"),
    (("gelu",), "GELU x*Phi(x) is smooth and negative for x < 0"),
    (("tanh", "softsign"), "tanh is smooth and negative for x < 0"),
    (("elu", "selu", "celu"), "ELU is negative (exponential) for x < 0"),
    (("softplus",), "softplus is smooth and positive for x < 0"),
    (("leaky_relu", "leakyrelu", "prelu", "rrelu"), "a leaky ReLU with a negative slope is negative for x < 0"),
)

#: normalisation layers that divide by statistics of each sample (the name as the front-ends
#: spell it -> the layer): not an activation, so they get a normalisation layer's fix
_SAMPLE_NORMS = {
    "layer_norm": "LayerNorm", "layernorm": "LayerNorm", "group_norm": "GroupNorm",
    "groupnorm": "GroupNorm", "instance_norm": "InstanceNorm", "instancenorm": "InstanceNorm",
    "instancenorm1d": "InstanceNorm", "instancenorm2d": "InstanceNorm", "rms_norm": "RMSNorm",
    "rmsnorm": "RMSNorm", "local_response_norm": "LocalResponseNorm",
    "localresponsenorm": "LocalResponseNorm",
}
_NORM_DOES = {
    "LayerNorm": "a LayerNorm subtracts each sample's own mean and divides by its own standard deviation",
    "GroupNorm": "a GroupNorm subtracts each sample's own mean and divides by its own standard deviation "
                 "(per group of channels)",
    "InstanceNorm": "an InstanceNorm subtracts each sample's own mean and divides by its own standard "
                    "deviation (per channel)",
    "RMSNorm": "an RMSNorm divides each sample by its own root mean square",
    "LocalResponseNorm": "a LocalResponseNorm divides each value by a power of the sum of squares of its "
                         "neighbouring channels",
}
_SOFTMAX = ("softmax", "log_softmax", "_softmax", "_log_softmax", "logsoftmax")


def pointwise_step(out: Any, name: str, x: Any, site: Site, kind: str, operands: tuple[Any, Any, Any], *,
                   computed: bool, constant: Any, fold: Any, shape: Any) -> None:
    """One element-wise step of an activation chain, for both front-ends: ``x`` must be a value
    computed from the input, and every operand (``c``, ``lo``, ``hi``; None where absent) a constant
    at inference (``constant(v)``), folded to a number, a parameter or a buffer (``fold(v)``) with
    one value per layer or per channel of ``shape()``; the step joins ``x``'s chain."""
    if not computed:
        raise refuse(site, "an element-wise op on a value that is not computed from the input",
                     "apply activations to the layers' outputs")
    data_shape = shape()

    def value(v: Any) -> Any:
        if v is None:
            return None
        if not constant(v):
            raise refuse(site, "a bound or factor that depends on the input (not constant at inference)",
                         "use a constant, a parameter or a buffer")
        try:
            return channel_values(fold(v), data_shape)
        except ChainError as exc:
            raise refuse(site, exc.problem, exc.fix) from None

    c, lo, hi = operands
    out.pointwise(name, x, Step(kind, value(c), value(lo), value(hi)), site)  # type: ignore[arg-type]


def unsupported(site: Site) -> BridgeError:
    """No rule for this op. A known activation that is not a clipped ReLU (sigmoid, SiLU, GELU,
    SE gating, LayerNorm ...) says why an IF neuron cannot represent it."""
    what = re.findall(r"[a-z_0-9]+", site.label.lower().replace("aten.", " "))
    norm = next((_SAMPLE_NORMS[w] for w in what if w in _SAMPLE_NORMS), None)
    if norm is not None:  # a normalisation layer, not an activation: a normalisation's fix
        return refuse(site, f"{_NORM_DOES[norm]}: a division by a value computed from the input, "
                      "which no weight, bias or threshold of an IF layer can hold",
                      f"use BatchNorm instead of the {norm} (its running statistics are fixed at "
                      "inference, so bridge folds it into the preceding conv/linear) or remove the "
                      "normalisation, and retrain")
    if any(w in _SOFTMAX for w in what):
        return refuse(site, "softmax divides by a sum over each sample's outputs, which no IF layer "
                      "computes", "remove the softmax from the model: the predicted class (argmax) is "
                      "the same without it; apply softmax to the readout yourself if you need "
                      "probabilities")
    for names, why in _WHY_NOT_IF:
        if any(w in names for w in what):
            return refuse(site, f"not a clipped ReLU: an IF neuron's rate is clip(z / theta, 0, 1) "
                          f"(piecewise linear, never negative), and {why}",
                          "replace it by ReLU, ReLU6, clamp(0, a), bridge.ClippedReLU or bridge.QCFS and retrain")
    return refuse(site, "this operation has no spiking equivalent in bridge",
                  f"rewrite the model with the supported layers ({SUPPORTED_LAYERS})")


# ---- names ------------------------------------------------------------------------------------
def module_op_name(path: str) -> str:
    """The name torch.fx gives a call of the module at ``path`` (``features.0`` -> ``features_0``,
    ``0`` -> ``_0``, ``blockA`` -> ``block_a``)."""
    name = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", path).lower()
    name = re.sub(r"[^0-9a-zA-Z_]+", "_", name) or "_unnamed"
    return f"_{name}" if name[0].isdigit() else name


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2`` ... the first one not in ``taken`` (which gets it)."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


# ---- argument helpers -------------------------------------------------------------------------
def pair(value: Any, n: int = 2) -> tuple[int, ...]:
    """An int or a sequence as an ``n``-tuple of ints (a 1-sequence is repeated)."""
    if isinstance(value, (list, tuple)):
        values = [int(v) for v in value]
        return tuple(values * n) if len(values) == 1 else tuple(values)
    return (int(value),) * n


def weights(t: Any) -> torch.Tensor:
    """A parameter as the layer graph holds it: detached, on the CPU, in the model's own precision
    and (for a CPU model) sharing the model's memory, never written to. Every use up-casts it to
    float64 (exact) where it computes: an ImageNet model then does not exist twice more in
    memory as float64 copies (:mod:`bridge.converter.ir`)."""
    t = torch.as_tensor(t).detach().to("cpu")
    return t if t.is_floating_point() else t.to(torch.float64)


def _zeros(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.float64)


# ---- layers -----------------------------------------------------------------------------------
def conv(site: Site, name: str, src: str, weight: Any, bias: Any, *, stride: Any, padding: Any,
         dilation: Any, groups: int, padding_mode: str = "zeros", transposed: bool = False) -> ConvOp:
    """Conv1d / Conv2d with zero padding; ``padding`` an int, a tuple, 'same' or 'valid'."""
    if transposed:
        raise refuse(site, "transposed convolutions have no IF equivalent here", "use ordinary convolutions")
    if padding_mode != "zeros":
        raise refuse(site, f"padding_mode={padding_mode!r}", "only zero padding converts; use padding_mode='zeros'")
    w = weights(weight)
    nd = w.dim() - 2
    if nd not in (1, 2):
        raise refuse(site, f"{nd}-d convolutions are not supported", "use Conv1d or Conv2d")
    kernel, dil = tuple(w.shape[2:]), pair(dilation, nd)
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(dil, kernel)]
        if any(t % 2 for t in totals):
            raise refuse(site, "padding='same' with an even kernel needs asymmetric padding",
                         "use an odd kernel or explicit padding")
        pad = tuple(t // 2 for t in totals)
    elif padding == "valid":
        pad = (0,) * nd
    else:
        pad = pair(padding, nd)
    b = weights(bias) if bias is not None else _zeros(w.shape[0])
    return ConvOp(name, [src], site.source, weight=w, bias=b.reshape(-1), stride=pair(stride, nd),
                  padding=pad, dilation=dil, groups=int(groups))


def linear(site: Site, name: str, src: str, weight: Any, bias: Any, in_shape: Sequence[int]) -> LinearOp:
    """``y = x W^T + b`` on a flat input (N, features)."""
    if len(in_shape) != 2:
        raise refuse(site, f"a linear layer on a {len(in_shape)}-d input {list(in_shape)}",
                     "flatten the input before the linear layer (torch.flatten(x, 1))")
    w = weights(weight)
    b = weights(bias).reshape(-1).expand(w.shape[0]).clone() if bias is not None else _zeros(w.shape[0])
    return LinearOp(name, [src], site.source, weight=w, bias=b)


def batch_norm(site: Site, name: str, src: str, *, mean: Any, var: Any, weight: Any, bias: Any,
               eps: float, training: bool = False) -> BatchNormOp:
    """Inference BatchNorm on running statistics."""
    if training:
        raise refuse(site, "BatchNorm in training mode", "call model.eval() before converting or exporting")
    if mean is None or var is None:
        raise refuse(site, "BatchNorm without running statistics",
                     "train it with track_running_stats=True so it has fixed inference statistics")
    m, v = weights(mean), weights(var)
    return BatchNormOp(name, [src], site.source, mean=m, var=v,
                       weight=weights(weight) if weight is not None else torch.ones_like(m),
                       bias=weights(bias) if bias is not None else torch.zeros_like(m), eps=float(eps))


def add(site: Site, name: str, a: str, b: str) -> AddOp:
    """Residual ``a + b`` of two tensors computed from the input (``rules.binary`` has refused an
    ``alpha`` other than 1)."""
    return AddOp(name, [a, b], site.source)


def _spatial(in_shape: Sequence[int], site: Site) -> tuple[int, int]:
    if len(in_shape) != 4:
        raise refuse(site, f"2-d pooling of a {len(in_shape)}-d tensor", "2-d pooling needs an (N, C, H, W) input")
    return int(in_shape[2]), int(in_shape[3])


def pool_divisors(size: int, kernel: int, stride: int, padding: int, out: int,
                  count_include_pad: bool) -> list[int]:
    """torch's ``avg_pool2d`` divisor of each window along one dimension (before the product
    over the two dimensions; ``divisor_override`` aside)."""
    divisors = []
    for i in range(out):
        start = i * stride - padding
        end = min(start + kernel, size + padding)
        if count_include_pad:
            divisors.append(end - start)
        else:
            divisors.append(min(end, size) - max(start, 0))
    return divisors


def avg_pool(site: Site, name: str, src: str, in_shape: Sequence[int], *, kernel: Any, stride: Any,
             padding: Any = 0, ceil_mode: bool = False, count_include_pad: bool = True,
             divisor_override: Any = None) -> list[LayerOp]:
    r"""``AvgPool2d`` exactly as torch defines it (see the module docstring).

    Written as a window average with divisor :math:`k_H k_W` (NIR ``AvgPool2d``, zero padding),
    then, where torch divides a window by another :math:`D_{ij}` (``count_include_pad=False``,
    ``divisor_override``, the partial last window of ``ceil_mode``), a constant factor
    :math:`k_H k_W / D_{ij}` per output position (:class:`ScaleOp`; a ``Scale`` node in NIR).
    When ``ceil_mode`` adds a window, the windows are a depthwise convolution with kernel
    :math:`k + d` whose first :math:`d` taps are 0 and padding :math:`p + d`: its windows start
    at :math:`i s - p` as torch's do, and :math:`d < s` is the smallest that gives torch's size
    (NIR's pooling has no asymmetric padding).
    """
    hw = _spatial(in_shape, site)
    k = pair(kernel)
    s = pair(stride) if stride not in (None, [], ()) else k
    p = pair(padding)
    if any(pi > ki // 2 for pi, ki in zip(p, k)):
        raise refuse(site, f"padding {p} larger than half the kernel {k}", "torch refuses it too; reduce the padding")
    if divisor_override is not None and not (isinstance(divisor_override, int) and divisor_override > 0):
        raise refuse(site, f"divisor_override={divisor_override!r}", "use a positive integer or None")
    sizes = [output_size(hw[i], k[i], s[i], p[i], 1, bool(ceil_mode)) for i in range(2)]
    full = k[0] * k[1]
    divisors = [pool_divisors(hw[i], k[i], s[i], p[i], sizes[i], bool(count_include_pad)) for i in range(2)]
    if divisor_override is not None:
        divisor = torch.full(sizes, float(divisor_override), dtype=torch.float64)
    else:
        divisor = torch.outer(torch.tensor(divisors[0], dtype=torch.float64),
                              torch.tensor(divisors[1], dtype=torch.float64))
    extra = []
    for i in range(2):  # taps in front of each window so that a symmetric padding gives torch's windows
        d = next(d for d in range(s[i]) if (hw[i] + 2 * p[i] + d - k[i]) // s[i] + 1 == sizes[i])
        extra.append(d)
    window_name = f"{name}_windows" if (divisor != full).any() else name
    if not any(extra):
        ops: list[LayerOp] = [AvgPoolOp(window_name, [src], site.source, kernel=k, stride=s, padding=p)]  # type: ignore[arg-type]
    else:
        channels = int(in_shape[1])
        weight = torch.zeros(channels, 1, k[0] + extra[0], k[1] + extra[1], dtype=torch.float64)
        weight[:, :, extra[0]:, extra[1]:] = 1.0 / full
        ops = [ConvOp(window_name, [src], site.source, weight=weight, bias=_zeros(channels), stride=s,
                      padding=(p[0] + extra[0], p[1] + extra[1]), dilation=(1, 1), groups=channels)]
    if (divisor != full).any():
        ops.append(ScaleOp(name, [window_name], site.source, factor=(full / divisor).unsqueeze(0)))
    return ops


def max_pool(site: Site, name: str, src: str, in_shape: Sequence[int], *, kernel: Any, stride: Any,
             padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False) -> MaxPoolOp:
    """``MaxPool2d``: kept for the max-pool policy (:func:`maxpool_replacement`)."""
    _spatial(in_shape, site)
    k = pair(kernel)
    s = pair(stride) if stride not in (None, [], ()) else k
    if pair(dilation) != (1, 1):
        raise refuse(site, f"max pooling with dilation {pair(dilation)}", "use MaxPool2d without dilation")
    return MaxPoolOp(name, [src], site.source, kernel=k, stride=s, padding=pair(padding),  # type: ignore[arg-type]
                     ceil_mode=bool(ceil_mode))


def maxpool_replacement(op: MaxPoolOp, in_shape: Sequence[int], taken: set[str]) -> list[LayerOp]:
    """The average pool that replaces ``op`` under ``maxpool='avg'``: ``AvgPool2d(kernel, stride,
    padding, ceil_mode)`` with torch's defaults (zero padding counted in the average), as
    :func:`avg_pool` writes it; the last op keeps ``op``'s name."""
    site = Site(f"max pooling {op.name!r}", op.source)
    ops = avg_pool(site, op.name, op.inputs[0], (1, *in_shape), kernel=op.kernel, stride=op.stride,
                   padding=op.padding, ceil_mode=op.ceil_mode)
    if len(ops) == 2:  # a fresh name for the windows
        ops[0].name = fresh_name(ops[0].name, taken)
        ops[1].inputs = [ops[0].name]
    return ops


def adaptive_avg_pool(site: Site, name: str, src: str, in_shape: Sequence[int], output_size: Any
                      ) -> AdaptiveAvgPoolOp:
    """``AdaptiveAvgPool2d(o)`` on (N, C, H, W), any output size (None keeps a dimension): PyTorch's
    windows, possibly overlapping; the NIR builder writes the exact form
    (:mod:`bridge.converter.adaptive_pool`: an ``AvgPool2d`` where one kernel and stride give the
    same windows)."""
    h, w = _spatial(in_shape, site)
    if isinstance(output_size, int):
        out = (output_size, output_size)
    else:
        sizes = list(output_size) * (2 if len(output_size) == 1 else 1)
        out = tuple(size if o is None else int(o) for o, size in zip(sizes, (h, w)))
    if min(out) < 1:
        raise refuse(site, f"adaptive pooling to {out[0]}x{out[1]}", "give a positive output size")
    return AdaptiveAvgPoolOp(name, [src], site.source, output_size=out)  # type: ignore[arg-type]


def global_mean(site: Site, name: str, pool_name: str, src: str, in_shape: Sequence[int], dim: Any,
                keepdim: Any, dtype: Any = None) -> list[LayerOp]:
    r"""``x.mean(dim=(2, 3), keepdim)`` on (N, C, H, W): :math:`\mathrm{mean}_{h,w}\,x =
    \mathrm{avgpool}_{H\times W}(x)`, then a flatten to (N, C) unless ``keepdim``."""
    dims = (dim,) if isinstance(dim, int) else tuple(dim) if isinstance(dim, (tuple, list)) else None
    ok = (dims is not None and all(isinstance(d, int) for d in dims) and len(in_shape) == 4
          and sorted(int(d) % 4 for d in dims) == [2, 3])
    if not ok or dtype is not None or not isinstance(keepdim, bool):
        raise refuse(site, f"mean over dim={dim} of a {len(in_shape)}-d tensor"
                     + (f" with dtype={dtype}" if dtype is not None else ""),
                     "only the global average over the spatial dimensions of (N, C, H, W) converts: "
                     "x.mean(dim=(2, 3)) or x.mean((-2, -1)), optionally keepdim=True")
    hw = (int(in_shape[2]), int(in_shape[3]))
    if keepdim:
        return [AvgPoolOp(name, [src], site.source, kernel=hw, stride=hw, padding=(0, 0))]
    return [AvgPoolOp(pool_name, [src], site.source, kernel=hw, stride=hw, padding=(0, 0)),
            FlattenOp(name, [pool_name], site.source)]


def is_flatten(in_shape: Sequence[int], out_shape: Sequence[int]) -> bool:
    """Whether a reshape keeps the shape or flattens everything but the batch dimension."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    return out_shape == in_shape or (len(in_shape) >= 1 and out_shape == (in_shape[0], math.prod(in_shape[1:])))


def flatten(site: Site, name: str, src: str, in_shape: Sequence[int], out_shape: Sequence[int],
            example_batch: int | None = None) -> FlattenOp | None:
    """A reshape that keeps the batch and flattens the rest -> :class:`FlattenOp`; a reshape to
    the same shape or of an already flat tensor -> None (no op); anything else is refused."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    if out_shape == in_shape:
        return None
    if out_shape == (in_shape[0], math.prod(in_shape[1:])):
        return None if len(in_shape) == 2 else FlattenOp(name, [src], site.source)
    batch = f" on an example batch of {example_batch}" if example_batch else ""
    raise refuse(site, f"reshape from {list(in_shape)} to {list(out_shape)}{batch} (only flattening "
                 "everything but the batch dimension has a spiking equivalent)",
                 "use torch.flatten(x, 1) or x.view(x.size(0), -1)")


def concat(site: Site, name: str, srcs: Sequence[str], shapes: Sequence[Sequence[int]], dim: Any) -> ConcatOp | None:
    """``torch.cat(xs, dim)`` of tensors computed from the input, along the channels (features of
    flat values): ``dim`` 1 (or ``-ndim + 1``). One tensor: None (the identity)."""
    ndim = len(shapes[0])
    d = int(dim) % ndim if ndim else 0
    if d != 1 or ndim < 2:
        raise refuse(site, f"concatenation along dimension {dim} of {ndim}-d tensors",
                     "only concatenation along the channels (dim=1) has a fixed spiking equivalent")
    if any(len(s) != ndim or tuple(s[2:]) != tuple(shapes[0][2:]) for s in shapes):
        raise refuse(site, f"concatenation of tensors of shapes {[list(s) for s in shapes]}",
                     "the tensors must agree in every dimension but the channels")
    if len(srcs) == 1:
        return None
    return ConcatOp(name, list(srcs), site.source)


def _batch_kept(site: Site, what: str) -> BridgeError:
    return refuse(site, f"{what} changes the batch dimension",
                  "keep the batch dimension first and whole (x[:, ...], view(x.size(0), ...))")


def reshape_step(site: Site, in_shape: Sequence[int], out_shape: Sequence[int]) -> layouts.Step:
    """``view`` / ``reshape`` to ``out_shape`` (with batch), the batch kept."""
    if not out_shape or int(out_shape[0]) != int(in_shape[0]):
        raise _batch_kept(site, f"reshape from {list(in_shape)} to {list(out_shape)}")
    rest = tuple(int(s) for s in out_shape[1:])
    return lambda t: t.reshape((1, *rest))


def transpose_step(site: Site, ndim: int, d0: Any, d1: Any) -> layouts.Step:
    a, b = int(d0) % ndim, int(d1) % ndim
    if 0 in (a, b) and a != b:
        raise _batch_kept(site, f"transpose({d0}, {d1})")
    return lambda t: t.transpose(a, b)


def permute_step(site: Site, ndim: int, dims: Sequence[Any]) -> layouts.Step:
    order = [int(d) % ndim for d in dims]
    if not order or order[0] != 0:
        raise _batch_kept(site, f"permute({list(dims)})")
    return lambda t: t.permute(order)


def slice_step(site: Site, in_shape: Sequence[int], dim: Any, start: Any, end: Any, step: Any = 1) -> layouts.Step:
    """``x[..., start:end:step, ...]`` along ``dim`` (``aten.slice``, ``narrow``)."""
    ndim = len(in_shape)
    d = int(dim) % ndim
    sl = slice(None if start is None else int(start), None if end is None else int(end),
               None if step is None else int(step))
    if d == 0:
        if range(*sl.indices(int(in_shape[0]))) != range(int(in_shape[0])):
            raise _batch_kept(site, "a slice of the batch dimension")
        return lambda t: t
    return lambda t: t[(slice(None),) * d + (sl,)]


def getitem_step(site: Site, in_shape: Sequence[int], index: Any) -> layouts.Step:
    """``x[index]`` with slices only (``x[:, a:b]``, ``x[:, :, ::2]``), the batch whole."""
    items = index if isinstance(index, tuple) else (index,)
    if not all(isinstance(i, slice) or i is Ellipsis for i in items) or items.count(Ellipsis) > 1:
        raise refuse(site, f"indexing with {index!r}", "only slices of whole dimensions (x[:, a:b]) convert")
    if Ellipsis in items:
        at = items.index(Ellipsis)
        items = items[:at] + (slice(None),) * (len(in_shape) - len(items) + 1) + items[at + 1:]
    if items and range(*items[0].indices(int(in_shape[0]))) != range(int(in_shape[0])):
        raise _batch_kept(site, "a slice of the batch dimension")
    rest = tuple(slice(i.start, i.stop, i.step) for i in items[1:])
    return lambda t: t[(slice(None),) + rest]


def split_step(site: Site, ndim: int, kind: str, arg: Any, dim: Any, i: int) -> layouts.Step:
    """Part ``i`` of ``x.split(arg, dim)`` / ``x.chunk(arg, dim)`` / ``split_with_sizes``."""
    d = int(dim) % ndim
    if d == 0:
        raise _batch_kept(site, f"{kind} along dimension {dim}")
    if kind == "chunk":
        return lambda t: t.chunk(int(arg), d)[i]
    sizes = [int(a) for a in arg] if isinstance(arg, (list, tuple)) else int(arg)
    return lambda t: t.split(sizes, d)[i]


def activation(site: Site, name: str, src: str, kind: str, bound: Any = None,
               levels: int | None = None, shift: float = 0.5) -> ActivationOp:
    """An IF layer's activation: ``relu``, ``clip`` (bound a > 0) or ``qcfs`` (bound, L, shift)."""
    if bound is not None:
        values = torch.as_tensor(bound, dtype=torch.float64)
        if not (bool((values > 0).all()) and bool(torch.isfinite(values).all())):
            raise refuse(site, f"an activation with upper bound {bound}",
                         "the upper bound must be a positive finite number")
    return ActivationOp(name, [src], site.source, kind=kind, bound=bound, levels=levels,  # type: ignore[arg-type]
                        shift=shift)


# ---- the layer graph a front-end writes -----------------------------------------------------
@dataclass
class _Chain:
    """Element-wise steps applied to the value of op ``source``, one per front-end node."""

    source: str
    steps: tuple[Step, ...]
    nodes: tuple[str, ...]
    sites: tuple[Site, ...]


class LayerGraphWriter:
    """The layer graph a front-end builds, node by node, with the naming and activation rules.

    Each front-end node that carries data has a *value*: the name of the op that computes it, or
    a pending chain of element-wise steps (closed into one activation op, or refused, when a
    layer reads it: :meth:`ref`). ``members`` maps each module path to the data nodes run inside
    that module's call (nested modules included), ``node_names`` are all the front-end's node
    names (names this writer makes up avoid them), ``display`` the op name of a node where it
    is not the node's own (ATen's in-place ``relu_`` names its op ``relu``, as torch.fx names
    ``F.relu(x, inplace=True)``).
    """

    def __init__(self, members: dict[str, set[str]], node_names: Iterable[str],
                 display: dict[str, str] | None = None) -> None:
        self.graph = LayerGraph()
        self.members = members
        self.taken: set[str] = set(node_names)
        self.module_names = {module_op_name(path) for path in members}
        self.display = display or {}  # node -> the name its op takes, where it differs
        self.values: dict[str, str] = {}
        self.chains: dict[str, _Chain] = {}
        self.layouts: dict[str, tuple[layouts.Layout, Site, tuple[str, ...]]] = {}

    # names
    def name(self, nodes: Sequence[str], module: str) -> str:
        """The op name for the front-end ``nodes`` (in order) run inside ``module``: the module's
        name when these nodes are everything that module's call computes, else the last node's."""
        last = self.display.get(nodes[-1], nodes[-1])
        whole = bool(module) and self.members.get(module) == set(nodes)
        if whole:
            base = module_op_name(module)
            if base == last and base not in self.graph.ops:
                return base
            return fresh_name(base, self.taken | set(self.graph.ops))
        if module and set(nodes) <= self.members.get(module, set()) and self._leaf(module):
            # one of several calls of a module without submodules (a ReLU used twice): the
            # module's name, counted over the ops written
            base = module_op_name(module)
            return fresh_name(base, (self.module_names - {base}) | set(self.graph.ops))
        # a function's op: its name without the front-end's counter, counted again over the ops
        # written (torch.fx and torch.export count differently: fx names module calls by path)
        return fresh_name(re.sub(r"_\d+$", "", last), self.module_names | set(self.graph.ops))

    def _leaf(self, module: str) -> bool:
        return not any(p.startswith(module + ".") for p in self.members)

    def fresh(self, base: str) -> str:
        return fresh_name(base, self.taken | set(self.graph.ops))

    # values
    def has(self, node: str) -> bool:
        return node in self.values or node in self.chains or node in self.layouts

    def layout(self, node: str, x: str, x_shape: Sequence[int], step: layouts.Step, site: Site) -> None:
        """``node = step(x)``, a layout step (slice, view, transpose): extends ``x``'s pending
        layout chain or starts one on ``x``'s value of shape ``x_shape`` (one sample)."""
        if x in self.layouts:
            lay, _, nodes = self.layouts[x]
        else:
            lay, nodes = layouts.start(self.ref(x), x_shape), ()
        try:
            new = layouts.apply(lay, step)
        except (IndexError, RuntimeError, ValueError) as exc:
            raise refuse(site, f"a layout step that does not apply ({exc})", "check the model") from None
        self.layouts[node] = (new, site, nodes + (node,))

    def reshape_is_layout(self, x: str, in_shape: Sequence[int], out_shape: Sequence[int]) -> bool:
        """Whether a reshape of value ``x`` is a layout step (a channel shuffle's 5-d view) rather
        than a flatten or no-op: ``x`` is a pending layout that is not a channel map yet, or the
        shapes are not a flatten's (:func:`is_flatten`)."""
        return (x in self.layouts and not self.layout_is_channel_map(x)) or not is_flatten(in_shape, out_shape)

    def emit_concat(self, node: str, op: ConcatOp | None, first: str) -> None:
        """``node`` = the concatenation :func:`concat` returned: ``op``, or (None, one tensor)
        the value of ``first`` itself."""
        if op is None:
            self.alias(node, first)
        else:
            self.emit(node, op)

    def emit(self, node: str, ops: LayerOp | list[LayerOp]) -> None:
        """Add ``ops``; the last one computes ``node``'s value."""
        ops = ops if isinstance(ops, list) else [ops]
        for i, op in enumerate(ops[:-1]):  # helper ops (a pool's windows) take a free name
            if op.name in self.graph.ops:
                old, op.name = op.name, self.fresh(op.name)
                for later in ops[i + 1:]:
                    later.inputs = [op.name if n == old else n for n in later.inputs]
        for op in ops:
            self.graph.add(op)
        self.values[node] = ops[-1].name

    def alias(self, node: str, other: str) -> None:
        """``node`` has the value of ``other`` (dropout, identity, contiguous, no-op reshape)."""
        if other in self.values:
            self.values[node] = self.values[other]
        elif other in self.layouts:
            self.layouts[node] = self.layouts[other]
        else:
            self.chains[node] = self.chains[other]

    def pointwise(self, node: str, x: str, step: Step, site: Site) -> None:
        """``node = step(x)``: extends ``x``'s chain (or starts one on ``x``'s op)."""
        if x in self.layouts:
            self.ref(x)
        parent = self.chains.get(x)
        if parent is None:
            self.chains[node] = _Chain(self.values[x], (step,), (node,), (site,))
        else:
            self.chains[node] = _Chain(parent.source, parent.steps + (step,), parent.nodes + (node,),
                                       parent.sites + (site,))

    def ref(self, node: str) -> str:
        """The op computing ``node``'s value; a pending chain becomes its activation op(s) here
        (:func:`split_chain`: one IF layer per activation the model spells out)."""
        if node in self.values:
            return self.values[node]
        if node in self.layouts:
            return self._close_layout(node)
        chain = self.chains[node]
        try:
            segments = split_chain(list(chain.steps))
        except ChainError as exc:
            raise refuse(chain.sites[-1], f"an element-wise chain ({', '.join(describe(s) for s in chain.steps)}) "
                         f"that is not an activation bridge converts: {exc.problem}", exc.fix) from None
        src, start = chain.source, 0
        for end, found in segments:
            last = chain.nodes[end - 1]
            if last not in self.values:  # another reader may have closed this part already
                if found.kind == "identity":
                    self.values[last] = src
                else:
                    sites = chain.sites[start:end]
                    op = activation(sites[-1], self.name(chain.nodes[start:end], _common_module(sites)), src,
                                    found.kind, found.bound, found.levels, found.shift)
                    self.emit(last, op)
            src, start = self.values[last], end
        self.values[node] = src
        return src


    def layout_is_channel_map(self, node: str) -> bool:
        """Whether ``node``'s pending layout chain already is a channel gather (or the identity)."""
        return node in self.layouts and layouts.resolve(self.layouts[node][0]) is not None

    def _close_layout(self, node: str) -> str:
        """A pending layout chain read by a layer: the identity, or a :class:`ChannelGatherOp`."""
        lay, site, nodes = self.layouts[node]
        index = layouts.resolve(lay)
        if index is None and layouts.is_flatten_of_base(lay):  # e.g. view(N, C, -1) then flatten
            self.emit(node, FlattenOp(fresh_name("flatten", self.module_names | set(self.graph.ops)),
                                      [lay.source], site.source))
            return self.values[node]
        if index is None:
            raise refuse(site, f"a slice / reshape / transpose from {list(lay.base)} to "
                         f"{list(lay.index.shape[1:])} that is not a fixed map of whole channels",
                         "only channel slices (x[:, a:b], split, chunk), channel permutations (a channel "
                         "shuffle: view-transpose-view) and torch.flatten(x, 1) convert")
        if index == tuple(range(lay.base[0])):
            self.values[node] = lay.source
        else:
            name = fresh_name("channels", self.module_names | set(self.graph.ops))
            self.emit(node, ChannelGatherOp(name, [lay.source], site.source, index=index))
        return self.values[node]


_ACTIVATION_STEPS = ("relu", "clamp", "min", "max")


def split_chain(steps: list[Step]) -> list[tuple[int, Recognised]]:
    """Cut a chain of element-wise steps into activations, as many as the model spells out: a
    cut may only come before an activation function (relu, clamp, min, max) and each part must be
    an activation. So ``relu`` then ``clamp(0, 6)`` are two IF layers, as two activations are
    written, but ``relu`` then ``a - x``, ``relu``, ``a - x`` is one clip, and ``clamp(min=0)``
    then the QCFS arithmetic one staircase. Returns the end index (exclusive) and the activation
    of each part; raises the whole chain's :class:`ChainError` when no cut works."""
    n = len(steps)
    memo: dict[int, list[tuple[int, Recognised]] | None] = {n: []}

    def best(i: int) -> list[tuple[int, Recognised]] | None:
        if i not in memo:
            memo[i] = None
            for j in range(i + 1, n + 1):
                if j < n and steps[j].kind not in _ACTIVATION_STEPS:
                    continue
                try:
                    found = recognise(steps[i:j])
                except ChainError:
                    continue
                rest = best(j)
                if rest is not None:
                    memo[i] = [(j, found)] + rest
                    break
        return memo[i]

    result = best(0)
    if result is None:
        recognise(steps)  # raises the reason for the whole chain
        raise AssertionError("a recognised chain always has a split")
    return result


def _common_module(sites: Sequence[Site]) -> str:
    paths = {s.module for s in sites}
    return paths.pop() if len(paths) == 1 else ""


def binary(site: Site, kind: str, a_data: bool, b_data: bool, alpha: Any = 1) -> tuple[str, int, Any] | None:
    """``a <kind> b`` for kind add / sub / mul / div, told which operands carry data.

    Two data tensors: only a residual ``a + b`` converts (None: write an :class:`AddOp`).
    One data tensor and a constant ``c``: an element-wise step, returned as
    ``(step kind, index of the data operand, factor for c)``: ``x + alpha c``, ``x - alpha c`` =
    ``x + (-alpha) c``, ``c - x`` (rsub), ``c x``, ``x / c``.
    """
    if a_data and b_data:
        if kind != "add":
            raise refuse(site, f"{kind} of two tensors computed from the input",
                         "only residual additions a + b of two tensors convert")
        if alpha != 1:
            raise refuse(site, f"add with alpha={alpha}", "write a plain a + b")
        return None
    if not (a_data or b_data):
        raise unsupported(site)
    if alpha != 1 and b_data:
        raise refuse(site, f"{kind} with alpha={alpha} on activations", "write a plain a + b")
    if kind == "add":
        return ("add", 0 if a_data else 1, alpha)
    if kind == "mul":
        return ("mul", 0 if a_data else 1, 1)
    if kind == "sub":
        return ("add", 0, -alpha) if a_data else ("rsub", 1, 1)
    if not a_data:
        raise refuse(site, "a constant divided by activations", "divide activations by a constant only")
    return ("div", 0, 1)
