"""What a simulation returns: outputs per step and, on request, per-node traces.

Every backend (the reference, exporters' models, third-party importers) reports in these
types so that the validation suite compares like with like, aligned by NIR node name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class NodeTrace:
    """Spikes and membrane potential of one IF node at every step.

    ``spikes[t]`` is s(t+1) and ``v[t]`` the potential v(t+1) *after* the reset of step
    t+1 (the state carried into the next step); both ``[T, B, *neuron_shape]``. The
    potential before the reset is ``m = v + theta * spikes`` (subtract reset).
    """

    spikes: torch.Tensor
    v: torch.Tensor


@dataclass
class SimulationResult:
    """Outputs of a T-step run.

    ``outputs[t]`` is the value reaching the graph's Output node at step t+1,
    ``[T, B, *output_shape]``. ``traces`` maps IF node names to :class:`NodeTrace`;
    it holds only the nodes asked for.
    """

    outputs: torch.Tensor
    traces: dict[str, NodeTrace] = field(default_factory=dict)
    readout_kind: str = "mean"

    @property
    def steps(self) -> int:
        return int(self.outputs.shape[0])

    @property
    def running_readout(self) -> torch.Tensor:
        """The readout after each t = 1..T, ``[T, B, ...]`` (accuracy at every T in one run)."""
        return running_readout(self.outputs, self.readout_kind)

    @property
    def readout(self) -> torch.Tensor:
        """The network's output after T steps, ``[B, ...]`` (mean over T for bridge graphs)."""
        return self.running_readout[-1]

    def predictions(self) -> torch.Tensor:
        """Predicted class per sample, ``[B]``, from the readout (flattened per sample)."""
        return self.readout.flatten(1).argmax(dim=1)


def running_readout(outputs: torch.Tensor, kind: str = "mean") -> torch.Tensor:
    """The readout of ``outputs`` ``[T, B, ...]`` after each t = 1..T, ``[T, B, ...]``.

    ``kind`` is the graph's readout (:class:`bridge.format.extension.GraphSemantics`):
    ``"mean"`` (bridge graphs) :math:`\frac{1}{t}\sum_{u \le t} o(u)`, ``"sum"``
    :math:`\sum_{u \le t} o(u)`, ``"last"`` :math:`o(t)`. The one definition of the readout;
    the exported runtimes restate it because they run where bridge is not installed.
    """
    if kind == "last":
        return outputs
    csum = torch.cumsum(outputs, dim=0)
    if kind == "sum":
        return csum
    t = torch.arange(1, outputs.shape[0] + 1, dtype=csum.dtype, device=csum.device)
    return csum / t.view(-1, *([1] * (csum.dim() - 1)))
