r"""Joint fit of thresholds, initial potentials and biases through the unrolled SNN.

The graph is unrolled for T steps in torch, layer at a time, with the stateless nodes of the
reference simulator (:mod:`bridge.reference.ops`) and, for every IF layer :math:`l`, per
channel :math:`c` three parameters: a threshold scale :math:`a_{l,c}`, an initial-potential
fraction :math:`f_{l,c}` and a bias shift :math:`\delta_{l,c} = d_{l,c}\,\bar\theta_{l,c}`:

.. math::
    m(t) &= v(t-1) + I_l(t) + \delta_{l,c}, \qquad \theta' = a_{l,c}\,\theta_l,
    \qquad v(0) = f_{l,c}\,\theta' \\
    s(t) &= H(m(t) - \theta'), \qquad v(t) = m(t) - \theta' s(t),
    \qquad \text{out}(t) = a_{l,c}\, s(t)

(the consumers' weights hold :math:`\theta`, so a spike worth :math:`\theta'` reaches them as
:math:`a\,s`). The Heaviside step keeps its exact forward value; its derivative is replaced by
the triangle surrogate :math:`\partial s/\partial m = \max(0, 1 - |m - \theta'|/\theta')/\theta'`.
The readout is the running mean :math:`R_T = \frac1T\sum_{t \le T} \text{out}(t) + \delta_{out}`.

Objective, on calibration data only, against the ANN's logits :math:`A` (the ANN view of the
graph before calibration), for a target T:

.. math:: \mathcal{L}_T = \mathbb{E}_x \big\| R_T(x) - A(x) \big\|^2

(the squared logit error: on MNIST-1D, 1024 training signals, the ReLU CNN reached 89.4 / 94.6%
at T = 2 / 4 with it against 89.2 / 94.7% with KL(softmax(A) || softmax(R_T)) and 512 signals,
and its held-out curve was smooth where KL's jumped between checkpoints: the ANN is
near-certain on its own training data, so KL carries little signal there)

and for a graph meant for every T (``timesteps=None``) the mean of :math:`\mathcal{L}_T` over
T in {1, 2, 4, 8, 16, 32} plus the same loss of the graph's rate limit (T -> infinity: every IF
replaced by :math:`a\,\mathrm{clip}((I + \delta)/\theta', 0, 1)`), so that no T is given up
for another. Adam on mini-batches; the held-out quarter of the calibration data (exact forward,
no surrogate) picks the best checkpoint, the starting point included, so the fit never returns a
graph worse on held-out calibration data than the one it was given.

What is learnt is written back as standard bridge NIR: :math:`\theta'` into ``v_threshold`` with
the consumers' weights multiplied by :math:`a` (:func:`bridge.passes.optimize.apply_fit`),
:math:`v_{init} = f\theta'` into the IF metadata, :math:`\delta` into the bias of the Conv/Affine
feeding the layer (:func:`bridge.passes.calibration_edits.shift_bias`), :math:`\delta_{out}` into
the output bias. A layer whose consumers cannot absorb :math:`a` keeps :math:`a = 1`; one without a
private bias node keeps :math:`\delta = 0`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import nir
import numpy as np
import torch
from torch import nn

from bridge.format.errors import BridgeError
from bridge.format.extension import dense_conv_weight, if_semantics
from bridge.passes.calibration_edits import (
    bias_node, current_fractions, if_names, output_bias_node, shift_bias, with_timesteps,
)
from bridge.passes.optimize import apply_fit, can_rescale
from bridge.reference.result import running_readout

#: the T whose readouts the any-T objective averages (plus the rate limit, T -> infinity)
ANY_T_STEPS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
F_RANGE = (0.0, 0.999)
A_RANGE = (0.1, 2.0)


class _Spike(torch.autograd.Function):
    """H(u) forward; triangle surrogate max(0, 1 - |u|/w)/w backward."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, width: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(u, width)
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        u, width = ctx.saved_tensors
        return grad * torch.clamp(1 - u.abs() / width, min=0) / width, None


@dataclass
class JointFitReport:
    """What the fit did: steps run, held-out loss at the start and of the kept checkpoint."""

    steps: int = 0
    loss_start: float = float("nan")
    loss_best: float = float("nan")
    best_step: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)


class UnrolledSNN(nn.Module):
    """A bridge graph as a differentiable T-step SNN with per-channel (a, f, d) per IF layer."""

    def __init__(self, graph: nir.NIRGraph, *, weights: bool = False) -> None:
        super().__init__()
        from bridge.reference import ReferenceSimulator

        sim = ReferenceSimulator(graph, dtype=torch.float32)
        self.plan, self.ops = sim.plan, sim.ops
        # weight calibration: the weights and biases of every Conv/Affine node train too
        self.weights = nn.ParameterDict()
        if weights:
            for name, op in self.ops.items():
                if isinstance(self.plan.nodes[name], (nir.Conv1d, nir.Conv2d, nir.Affine, nir.Linear)):
                    op.weight = self.weights[self._key(name) + "__w"] = nn.Parameter(op.weight.clone())  # type: ignore[attr-defined]
                    if getattr(op, "bias", None) is not None:
                        op.bias = self.weights[self._key(name) + "__b"] = nn.Parameter(op.bias.clone())  # type: ignore[attr-defined]
        self.if_names = if_names(graph)
        self.log_a = nn.ParameterDict()
        self.f = nn.ParameterDict()
        self.d = nn.ParameterDict()
        self.theta: dict[str, torch.Tensor] = {}
        self.theta_channel: dict[str, torch.Tensor] = {}
        self.scalable: dict[str, bool] = {}
        self.biased: dict[str, str | None] = {}
        for name in self.if_names:
            sem = if_semantics(graph.nodes[name], name)
            theta = torch.as_tensor(sem.threshold, dtype=torch.float32)
            channels = theta.shape[0]
            key = self._key(name)
            self.theta[name] = theta
            self.theta_channel[name] = theta.reshape(channels, -1).mean(1)
            self.scalable[name] = can_rescale(graph, name)
            self.biased[name] = bias_node(graph, name)
            self.log_a[key] = nn.Parameter(torch.zeros(channels), requires_grad=self.scalable[name])
            self.f[key] = nn.Parameter(torch.as_tensor(current_fractions(graph, name), dtype=torch.float32))
            self.d[key] = nn.Parameter(torch.zeros(channels), requires_grad=self.biased[name] is not None)
        self.out_bias = output_bias_node(graph)
        out_channels = int(np.asarray(graph.nodes[self.plan.output_name].output_type["output"]).ravel()[0])
        self.d_out = nn.Parameter(torch.zeros(out_channels), requires_grad=self.out_bias is not None)

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def _channel(self, p: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return p.reshape((-1,) + (1,) * (like.dim() - 1))

    def layer_params(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a, f, delta) of IF ``name``, broadcastable to its neurons, within their ranges."""
        key, theta = self._key(name), self.theta[name]
        a = torch.exp(self.log_a[key]).clamp(*A_RANGE)
        f = self.f[key].clamp(*F_RANGE)
        delta = self.d[key] * self.theta_channel[name]
        return self._channel(a, theta), self._channel(f, theta), self._channel(delta, theta)

    def forward(self, x: torch.Tensor, steps: int | None) -> torch.Tensor:
        """Output ``[T, B, K]`` per step (``steps``), or the rate limit ``[B, K]`` (``steps=None``)."""
        plan = self.plan
        values: dict[str, tuple[torch.Tensor, bool]] = {}
        for name in plan.order:
            if name == plan.input_name:
                values[name] = (x, False)
                continue
            srcs = [values[s] for s in plan.inputs[name]]
            varying = any(v for _, v in srcs)
            total = None
            for value, v in srcs:
                if varying and not v:
                    value = value.unsqueeze(0)
                total = value if total is None else total + value
            assert total is not None
            op = self.ops[name]
            if name in self.theta:
                values[name] = (self._if(name, total, varying, steps), steps is not None)
            elif varying:
                t, b = total.shape[:2]
                values[name] = (op.forward(total.flatten(0, 1)).unflatten(0, (t, b)), True)  # type: ignore[attr-defined]
            else:
                values[name] = (op.forward(total), False)  # type: ignore[attr-defined]
        out, varying = values[plan.output_name]
        if steps is not None and not varying:
            out = out.unsqueeze(0).expand(steps, *out.shape)
        return out + self.d_out

    def _if(self, name: str, current: torch.Tensor, varying: bool, steps: int | None) -> torch.Tensor:
        a, f, delta = self.layer_params(name)
        theta = self.theta[name] * a
        if steps is None:  # rate limit
            return torch.clamp((current + delta) / theta, 0, 1) * a
        v = (f * theta).expand_as(current[0] if varying else current)
        outs = []
        for t in range(steps):
            m = v + (current[t] if varying else current) + delta
            s = _Spike.apply(m - theta, theta)
            v = m - theta * s
            outs.append(s * a)
        return torch.stack(outs)

    def readouts(self, x: torch.Tensor, steps: Sequence[int]) -> dict[int, torch.Tensor]:
        """The running-mean readout ``[B, K]`` after each T in ``steps`` (one run of max T)."""
        running = running_readout(self.forward(x, max(steps)).flatten(2), "mean")
        return {t: running[t - 1] for t in steps}

    def write(self, graph: nir.NIRGraph) -> nir.NIRGraph:
        """``graph`` (the one this module was built from) with the learnt values, as bridge NIR."""
        with torch.no_grad():
            if len(self.weights):
                nodes = dict(graph.nodes)
                for name in self.ops:
                    key = self._key(name)
                    if key + "__w" in self.weights:
                        node = copy.deepcopy(nodes[name])
                        learnt = self.weights[key + "__w"].double().numpy()
                        groups = getattr(self.ops[name], "groups", 1)  # the op runs the grouped weight
                        if groups > 1 and int(getattr(node, "groups", 1)) == 1:  # the file's dense encoding
                            learnt = dense_conv_weight(learnt, groups)
                        node.weight = learnt.reshape(np.shape(node.weight))
                        if key + "__b" in self.weights:
                            node.bias = self.weights[key + "__b"].double().numpy().reshape(np.shape(node.bias))
                        nodes[name] = node
                graph = nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=copy.deepcopy(graph.metadata))
            for name in self.if_names:
                key = self._key(name)
                a = torch.exp(self.log_a[key]).clamp(*A_RANGE).double().numpy()
                f = self.f[key].clamp(*F_RANGE).double().numpy()
                if not self.scalable[name]:
                    a = np.ones_like(a)
                graph = apply_fit(graph, name, a, f)
                target = self.biased[name]
                if target is not None:
                    delta = (self.d[key] * self.theta_channel[name]).double().numpy()
                    graph = shift_bias(graph, target, delta)
            if self.out_bias is not None:
                graph = shift_bias(graph, self.out_bias, self.d_out.detach().double().numpy())
        return graph


def heldout_count(n: int) -> int:
    """How many of ``n`` calibration samples (the last ones) are held out to pick the best fit:
    a quarter, at least 32, of 64 or more; else half. The pipeline scores its stages on the
    same tail, so both take it from here."""
    return max(32, n // 4) if n >= 64 else max(1, n // 2)


def _readout_error(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the squared logit error ||R_T - A||^2."""
    return (logits - target).square().sum(1).mean()


def _loss(model: UnrolledSNN, x: torch.Tensor, target_logp: torch.Tensor, timesteps: int | None) -> torch.Tensor:
    if timesteps is not None:
        return _readout_error(model.readouts(x, [timesteps])[timesteps], target_logp)
    reads = model.readouts(x, ANY_T_STEPS)
    losses = [_readout_error(r, target_logp) for r in reads.values()]
    losses.append(_readout_error(model.forward(x, None).flatten(1), target_logp))
    return torch.stack(losses).mean()


def joint_fit(
    graph: nir.NIRGraph,
    calibration: torch.Tensor,
    timesteps: int | None,
    *,
    reference: nir.NIRGraph | None = None,
    iterations: int = 150,
    batch_size: int = 128,
    lr: float = 0.01,
    weight_lr: float = 1e-3,
    weights: bool = False,
    eval_every: int = 25,
    seed: int = 0,
    report: JointFitReport | None = None,
    progress: Callable[[int, int], None] | None = None,
    targets: torch.Tensor | None = None,
    patience: int | None = None,
    deadline: float | None = None,
    start_loss: float | None = None,
    max_batch_neuron_steps: int = 100_000_000,
) -> nir.NIRGraph:
    """A copy of ``graph`` with thresholds, initial potentials and biases fitted jointly (module docstring).

    ``timesteps``: the target T, or None for a graph meant for every T. ``reference``: the graph
    whose ANN view gives the target logits (default ``graph``). The last quarter of
    ``calibration`` (at least 32 samples, when there are 64 or more) is held out to choose the
    checkpoint. ``seed`` fixes the mini-batch order. ``targets``: the ANN logits of
    ``calibration`` when the caller has them (else the float64 ANN view of ``reference``).

    Bounded cost: with ``patience`` the fit stops once that many held-out evaluations in a row
    did not improve on the best (early stopping); with ``deadline`` (a ``time.perf_counter()``
    value) it stops at the first step that would end after it (judged by the mean step time so
    far, plus one held-out evaluation). Either way it returns the best checkpoint seen.
    ``start_loss``: the held-out loss of ``graph`` when the caller has measured it (skips one
    evaluation). The mini-batch is cut so that batch x IF neurons x T stays within
    ``max_batch_neuron_steps`` (the unrolled graph keeps every step for the backward pass).
    Arrays are written back in the dtype each node had.
    """
    import time

    from bridge.passes.calibration_edits import keep_dtypes
    from bridge.reference import ann_view

    if timesteps is not None and timesteps < 1:
        raise BridgeError(f"timesteps must be >= 1, got {timesteps}")
    if len(calibration) < 2:
        raise BridgeError("the joint fit needs at least 2 calibration samples")
    reference = graph if reference is None else reference
    x = calibration.to(torch.float32)
    if targets is not None:
        target = targets.flatten(1).float()
    else:
        with torch.no_grad():
            target = ann_view(reference, x.double()).flatten(1).float()
    held = heldout_count(len(x))
    x_fit, t_fit, x_val, t_val = x[:-held], target[:-held], x[-held:], target[-held:]
    model = UnrolledSNN(graph, weights=weights)
    neuron_params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("weights.")]
    groups = [{"params": neuron_params, "lr": lr}]
    if weights:
        groups.append({"params": list(model.weights.parameters()), "lr": weight_lr})
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, iterations))
    gen = torch.Generator().manual_seed(seed)
    rep = report if report is not None else JointFitReport()

    def held_out() -> float:
        with torch.no_grad():
            return float(_loss(model, x_val, t_val, timesteps))

    t0 = time.perf_counter()
    best = held_out() if start_loss is None else float(start_loss)
    eval_s = time.perf_counter() - t0 if start_loss is None else None
    rep.loss_start, rep.loss_best, rep.history = best, best, [(0, best)]
    best_state = copy.deepcopy(model.state_dict())
    neurons = sum(int(t.numel()) for t in model.theta.values())
    batch = max(1, min(batch_size, len(x_fit), max_batch_neuron_steps // max(1, neurons * (timesteps or max(ANY_T_STEPS)))))
    stale, it, last_eval, start = 0, 0, 0, time.perf_counter()

    def evaluate(step: int) -> None:
        nonlocal best, best_state, stale, eval_s
        t_e = time.perf_counter()
        val = held_out()
        eval_s = time.perf_counter() - t_e
        rep.history.append((step, val))
        if val < best:
            best, rep.loss_best, rep.best_step, stale = val, val, step, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1

    for it in range(1, iterations + 1):
        if deadline is not None and it > 1:
            per_step = (time.perf_counter() - start - (eval_s or 0) * (len(rep.history) - 1)) / (it - 1)
            if time.perf_counter() + per_step + (eval_s or per_step) > deadline:
                it -= 1
                if last_eval < it:  # the steps since the last evaluation still count
                    evaluate(it)
                break
        elif deadline is not None and time.perf_counter() + (eval_s or 0) > deadline:
            it = 0
            break
        idx = torch.randint(len(x_fit), (batch,), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss = _loss(model, x_fit[idx], t_fit[idx], timesteps)
        loss.backward()
        opt.step()
        sched.step()
        if it % eval_every == 0 or it == iterations:
            evaluate(it)
            last_eval = it
        if progress is not None:
            progress(it, iterations)
        if patience is not None and stale >= patience:
            break
    rep.steps = it
    model.load_state_dict(best_state)
    return keep_dtypes(with_timesteps(model.write(graph), timesteps), graph)
