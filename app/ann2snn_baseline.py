"""The comparison: SpikingJelly 2.0's own ann2snn converter on the same trained weights.

SpikingJelly's ``RateCodingRecipe`` replaces every ``nn.ReLU`` by
``VoltageScaler(1/s) -> IFNode(theta=1, subtract reset) -> VoltageScaler(s)`` where the
scale ``s`` is a statistic of the ReLU's output on calibration data: ``mode="max"`` or a
percentile such as ``"99.9%"``, per layer or (``channel_wise=True``) per channel. With
``half_threshold=True`` (it acts only channel-wise) the neuron is a
``HalfThresholdIFNode``, whose potential starts at theta/2. ``fuse_flag`` folds BatchNorm
into the preceding conv.

It finds activations by ``nn.ReLU`` (and F.relu); a clipped ReLU, QCFS or Hardtanh is left
as it is, so such models are not convertible by it (:func:`applicable` says so).
"""

from __future__ import annotations

import copy
import io
import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from bridge.reference.result import running_readout


@dataclass(frozen=True)
class SJSetting:
    """One setting of SpikingJelly's ann2snn: threshold statistic, granularity, half-threshold."""

    mode: str  # "max" or a percentile like "99.9%"
    channel_wise: bool = False
    half_threshold: bool = False

    @property
    def label(self) -> str:
        where = "channel" if self.channel_wise else "layer"
        half = ", half-thr" if self.half_threshold else ""
        return f"SJ ann2snn {self.mode} {where}{half}"


#: the settings the demo compares (half_threshold acts only channel-wise in SpikingJelly 2.0)
SETTINGS: tuple[SJSetting, ...] = tuple(
    SJSetting(mode, cw, half)
    for mode in ("max", "99.9%")
    for cw, half in ((False, False), (True, False), (True, True))
)


def applicable(model: nn.Module) -> bool:
    """True when every activation of ``model`` is a plain ``nn.ReLU`` (what ann2snn converts)."""
    from bridge.model.activations import QCFS, ClippedReLU

    blocked = (ClippedReLU, QCFS, nn.Hardtanh, nn.ReLU6)
    has_relu = any(isinstance(m, nn.ReLU) for m in model.modules())
    return has_relu and not any(isinstance(m, blocked) for m in model.modules())


def convert(model: nn.Module, calibration: torch.Tensor, setting: SJSetting,
            batch_size: int = 256) -> nn.Module:
    """Convert a copy of ``model`` with SpikingJelly's ``Converter(RateCodingRecipe(...))``."""
    from spikingjelly.activation_based import ann2snn

    ann = copy.deepcopy(model).eval()
    loader = [(calibration[i:i + batch_size], None) for i in range(0, len(calibration), batch_size)]
    recipe = ann2snn.RateCodingRecipe(
        loader, mode=setting.mode, fuse_flag=True,
        channel_wise=setting.channel_wise, half_threshold=setting.half_threshold,
    )
    # its calibration loop prints a tqdm bar to stderr; keep the demo's output readable
    with contextlib.redirect_stderr(io.StringIO()):
        return ann2snn.Converter(recipe).convert(ann)


@torch.no_grad()
def run(snn: nn.Module, x: torch.Tensor, steps: int, batch_size: int = 512) -> torch.Tensor:
    """Run the SpikingJelly SNN for ``steps`` single steps with the analog image as input.

    Returns the running mean of the output, ``[steps, B, classes]`` (accuracy at every
    T <= steps from one run): bridge's readout (:func:`bridge.reference.result.running_readout`).
    """
    from spikingjelly.activation_based import functional

    snn.eval()
    chunks = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        functional.reset_net(snn)
        chunks.append(running_readout(torch.stack([snn(xb) for _ in range(steps)])))
        functional.reset_net(snn)
    return torch.cat(chunks, dim=1)


def accuracy_vs_steps(model: nn.Module, calibration: torch.Tensor, x: torch.Tensor,
                      y: torch.Tensor, steps: list[int], setting: SJSetting) -> dict[int, float]:
    """Accuracy (fraction) of SpikingJelly's conversion of ``model`` at each T in ``steps``."""
    snn = convert(model, calibration, setting)
    running = run(snn, x, max(steps))
    return {t: float((running[t - 1].argmax(-1) == y).float().mean()) for t in steps}
