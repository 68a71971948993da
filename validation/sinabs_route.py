"""sinabs's own ANN -> SNN route, the anchor that bridge's integer and Speck exports are measured against.

``sinabs.from_model`` (every ReLU becomes an ``IAFSqueeze``: threshold 1, subtract reset,
``MultiSpike``, ``min_v_mem = -1``), then, with ``discretize``, sinabs's DynapCNN discretisation
functions (``sinabs.backend.dynapcnn.discretize``: ``determine_discretization_scale`` /
``discretize_tensor``, the code behind ``DynapcnnNetwork(..., discretize=True)``) on each weight
layer and the spiking layer after it: one scale per layer, the largest that keeps the weights in 8
bits, the biases in 8 bits and the thresholds (with ``min_v_mem``) in 16 bits. The same trained
weights as bridge's graph (BatchNorm folded first, as sinabs's own ``merge_conv_bn`` does), the
analog input repeated at every step (sinabs's most favourable input), the readout the sum over T
of the last layer's output.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from validation.sinabs_standin import import_dynapcnn

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose BatchNorm layers (each right after a conv / linear layer in a
    Sequential) are folded into that layer and replaced by Identity."""
    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(1, len(seq)):
            bn, layer = seq[i], seq[i - 1]
            if isinstance(bn, _BATCHNORM) and isinstance(layer, _WEIGHTED):
                scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
                shape = (-1,) + (1,) * (layer.weight.dim() - 1)
                bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(bn.running_mean)
                layer.weight = nn.Parameter(layer.weight.detach() * scale.reshape(shape))
                layer.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias.detach())
                seq[i] = nn.Identity()
    return model


def sinabs_snn(model: nn.Module, *, batch_size: int, discretize: bool, spiking_output: bool = False) -> nn.Module:
    """The SNN of sinabs's route for ``model`` (plain-ReLU network), optionally discretised."""
    import sinabs
    import sinabs.layers as sl

    snn = sinabs.from_model(fold_batchnorm(model), batch_size=batch_size,
                            add_spiking_output=spiking_output).spiking_model.eval()
    if discretize:
        disc = import_dynapcnn().discretize
        modules = [m for m in snn.modules() if isinstance(m, (*_WEIGHTED, sl.IAFSqueeze))]
        for i, layer in enumerate(modules):
            if not isinstance(layer, _WEIGHTED):
                continue
            spk = modules[i + 1] if i + 1 < len(modules) and isinstance(modules[i + 1], sl.IAFSqueeze) else None
            _discretise(disc, layer, spk)
    return snn


@torch.no_grad()
def _discretise(disc, layer: nn.Module, spk) -> None:
    """sinabs's per-layer discretisation (``_discretize_conv_spk_``'s arithmetic, for any weight layer)."""
    weight = layer.weight.data
    bias = layer.bias.data if layer.bias is not None else torch.zeros(weight.shape[0])
    scales = [disc.determine_discretization_scale(weight, disc.DYNAPCNN_WEIGHT_PRECISION_BITS)]
    if bool((bias != 0).any()):
        scales.append(disc.determine_discretization_scale(bias, disc.DYNAPCNN_WEIGHT_PRECISION_BITS))
    if spk is not None:
        low = -(2 ** 15) if spk.min_v_mem is None else float(spk.min_v_mem)
        thresholds = torch.tensor((low, float(spk.spike_threshold)))
        scales.append(disc.determine_discretization_scale(thresholds, disc.DYNAPCNN_STATE_PRECISION_BITS))
    scaling = float(min(scales))
    layer.weight.data = disc.discretize_tensor(weight, scaling, to_int=False).float()
    if layer.bias is not None:
        layer.bias.data = disc.discretize_tensor(bias, scaling, to_int=False).float()
    if spk is not None:
        low, theta = disc.discretize_tensor(thresholds, scaling, to_int=False)
        spk.min_v_mem = nn.Parameter(low, requires_grad=False)
        spk.spike_threshold = nn.Parameter(theta, requires_grad=False)


@torch.no_grad()
def sinabs_accuracy(snn: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: list[int], *,
                    batch_size: int = 32) -> dict[int, float]:
    """Accuracy after each T in ``steps`` (one run of max(steps) steps, input repeated every step,
    readout = the sum over steps of the network's output)."""
    import sinabs.layers as sl

    t_max = max(steps)
    correct = dict.fromkeys(steps, 0)
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size].float(), y[i:i + batch_size]
        b = len(yb)
        for m in snn.modules():
            if isinstance(m, sl.IAFSqueeze):
                m.batch_size = b
                m.reset_states()
        out = snn(xb[:, None].expand(b, t_max, *xb.shape[1:]).reshape(b * t_max, *xb.shape[1:]))
        running = out.reshape(b, t_max, -1).cumsum(1)
        for t in steps:
            correct[t] += int((running[:, t - 1].argmax(1) == yb).sum())
    return {t: correct[t] / len(y) for t in steps}
