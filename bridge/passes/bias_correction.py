r"""Per-channel bias correction of each layer's expected conversion error, for a given T.

The IF layer :math:`l` of the SNN approximates its ANN activation
:math:`y_l = \mathrm{clip}(z_l, 0, \theta_l)` (:math:`z_l`: the ANN's pre-activation, from the
ANN view of the graph *before* any calibration) by its T-step rate in value units,

.. math:: r_l = \theta'_l\,\frac{N_T(I_l + \delta_l;\ \theta'_l,\ v_{init,l})}{T},

where :math:`I_l(t)` is the current that reaches layer :math:`l` at step :math:`t` **in the SNN
whose upstream layers are already corrected** (one layer-at-a-time walk of the reference simulator's
operators on the calibration data, float32: :func:`bridge.passes.layerwise.walk`), :math:`\theta'_l` its (possibly fitted) threshold and :math:`N_T` the spike
count of the IF rule (subtract reset, :math:`m \ge \theta`). The quantisation and the
spike-arrival noise make the error :math:`y_l - r_l` biased per channel (Li et al., ICML 2021,
"SNN Calibration": bias calibration). The pass chooses, input to output, per channel :math:`c`,

.. math:: \delta_{l,c}:\qquad \mathbb{E}_{b,\,i \in c}\big[r_l(\delta_{l,c})\big] = \mathbb{E}_{b,\,i \in c}\big[y_l\big]

(the mean rate is non-decreasing in :math:`\delta`, so bisection finds it; the search is
bounded to :math:`|\delta| \le \theta'`; the result steps :math:`10^{-4}\theta'` off the jump
it converged to, on the side whose mean rate is closer, so no neuron sits at an exact tie), and adds :math:`\delta_{l,c}` to the bias of the
Conv/Affine that feeds layer :math:`l` (:func:`bridge.passes.calibration_edits.bias_node`).
Finally the output bias absorbs the mean logit error,

.. math:: b_{out} \mathrel{+}= \mathbb{E}_b\big[\mathrm{ANN}(x_b) - \mathrm{SNN}_T(x_b)\big].

Unlike a correction computed from the ANN's activations alone, each layer sees the real
current of the already-corrected SNN, so upstream corrections are accounted for. The graph
keeps its node types: only biases change, so exports stay exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import nir
import numpy as np
import torch

from bridge.format.errors import BridgeError
from bridge.format.extension import graph_semantics, if_semantics
from bridge.reference.result import running_readout
from bridge.passes.calibration_edits import bias_node, if_names, output_bias_node, shift_bias, with_timesteps
from bridge.format.neurons import if_step


@dataclass
class BiasFit:
    """The correction of one layer: its bias node, the shift per channel, mean |error| before/after."""

    layer: str
    bias_node: str
    shift: np.ndarray
    error_before: float
    error_after: float


def layer_rates(current: torch.Tensor, theta: torch.Tensor, v_init: torch.Tensor,
                shift: torch.Tensor) -> torch.Tensor:
    r"""Rates in value units :math:`\theta N_T(I + \delta)/T` of an IF layer.

    ``current`` ``[T, B, C, ...]``; ``theta``, ``v_init`` ``[C, ...]``; ``shift`` ``[G, C]``
    candidates (one per row). Returns ``[G, B, C, ...]``. The same subtract-reset rule as
    :func:`bridge.format.neurons.if_step`.
    """
    steps = current.shape[0]
    extra = (1,) * (current.dim() - 3)
    d = shift.reshape(shift.shape[0], 1, shift.shape[1], *extra)  # [G, 1, C, ...]
    v = (v_init + 0 * d).expand(d.shape[0], current.shape[1], *v_init.shape).clone()
    count = torch.zeros_like(v)
    for t in range(steps):
        s, v = if_step(current[t] + d, v, theta)
        count += s
    return count * theta / steps


def channel_shift(current: torch.Tensor, target: torch.Tensor, theta: torch.Tensor,
                  v_init: torch.Tensor, iterations: int = 16) -> torch.Tensor:
    """Per channel shift delta_c whose mean rate matches the mean target (bisection, all channels at once)."""
    channels = theta.shape[0]
    dims = [d for d in range(target.dim()) if d != 1]
    want = target.mean(dim=dims)  # [C]
    bound = theta.reshape(channels, -1).amax(dim=1)
    lo, hi = -bound, bound.clone()

    def mean_rate(d: torch.Tensor) -> torch.Tensor:
        r = layer_rates(current, theta, v_init, d[None])[0]
        return r.mean(dim=dims)

    for _ in range(iterations):
        mid = (lo + hi) / 2
        below = mean_rate(mid) < want
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    # lo and hi now straddle a jump of the mean rate, where some neurons sit exactly at the
    # threshold: step a margin away from it (so float32 and float64 count the same spikes) on
    # the side whose mean rate is closer to the target
    margin = 1e-4 * bound
    below_d, above_d = lo - margin, hi + margin
    up = (mean_rate(above_d) - want).abs() < (mean_rate(below_d) - want).abs()
    return torch.where(up, above_d, below_d)


def correct_biases(
    graph: nir.NIRGraph,
    calibration: torch.Tensor,
    timesteps: int,
    *,
    reference: nir.NIRGraph | None = None,
    output: bool = True,
    fits: list[BiasFit] | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_samples: int = 512,
    max_neuron_steps: int = 16_000_000,
) -> nir.NIRGraph:
    """A copy of ``graph`` with each IF layer's bias corrected for T = ``timesteps`` (module docstring).

    ``reference``: the graph whose ANN view gives the targets (default ``graph``; pass the
    uncalibrated conversion when ``graph`` has already been fitted, so that the targets stay the
    ANN's). ``output``: also correct the output bias. ``fits`` collects a :class:`BiasFit` per layer.
    One layer-at-a-time walk of the SNN (:func:`bridge.passes.layerwise.walk`, float32) gives
    every layer the current of the already-corrected upstream layers. At most ``max_samples``
    samples are used, and fewer when the widest layer times T times the samples would exceed
    ``max_neuron_steps`` (the per-channel means need few samples of a wide layer). Arrays are
    written back in the dtype each node had.
    """
    from bridge.passes.calibration_edits import keep_dtypes
    from bridge.passes.layerwise import ann_activations, walk

    if timesteps < 1:
        raise BridgeError(f"timesteps must be >= 1, got {timesteps}")
    if len(calibration) < 1:
        raise BridgeError("the calibration data is empty; pass at least one sample")
    original = graph
    reference = graph if reference is None else reference
    names = if_names(graph)
    widest = max((int(np.asarray(graph.nodes[n].v_threshold).size) for n in names), default=1)
    n = max(1, min(max_samples, max(32, max_neuron_steps // (widest * timesteps))))
    x = calibration[:n].to(torch.float32)
    targets, want = ann_activations(reference, x)
    total = len(names) + int(output)

    def fit(g: nir.NIRGraph, name: str, current: torch.Tensor) -> nir.NIRGraph:
        target_node = bias_node(g, name)
        if target_node is not None:
            target = targets[name]
            sem = if_semantics(g.nodes[name], name)
            theta = torch.as_tensor(sem.threshold, dtype=torch.float32)
            v0 = torch.as_tensor(sem.v_init, dtype=torch.float32)
            shift = channel_shift(current, target, theta, v0)
            if fits is not None:
                dims = [d for d in range(target.dim()) if d != 1]
                zero = torch.zeros(1, theta.shape[0], dtype=theta.dtype)
                before = (layer_rates(current, theta, v0, zero)[0] - target).mean(dim=dims).abs().mean()
                after = (layer_rates(current, theta, v0, shift[None])[0] - target).mean(dim=dims).abs().mean()
                fits.append(BiasFit(name, target_node, shift.double().numpy(), float(before), float(after)))
            g = shift_bias(g, target_node, shift.double().numpy())
        if progress is not None:
            progress(names.index(name) + 1, total)
        return g

    graph, out = walk(graph, x, timesteps, fit)
    out_node = output_bias_node(graph) if output else None
    if out_node is not None:
        got = running_readout(out, graph_semantics(graph).readout)[-1]  # the readout after T steps
        err = (want - got).reshape(len(x), -1).mean(dim=0).double()
        graph = shift_bias(graph, out_node, err.numpy())
        if fits is not None:
            fits.append(BiasFit("(output)", out_node, err.numpy(), float(err.abs().mean()), 0.0))
        if progress is not None:
            progress(total, total)
    return keep_dtypes(with_timesteps(graph, timesteps), original)
