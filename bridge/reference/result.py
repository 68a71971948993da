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
        if self.readout_kind == "last":
            return self.outputs
        csum = torch.cumsum(self.outputs, dim=0)
        if self.readout_kind == "sum":
            return csum
        t = torch.arange(1, self.steps + 1, dtype=csum.dtype, device=csum.device)
        return csum / t.view(-1, *([1] * (csum.dim() - 1)))

    @property
    def readout(self) -> torch.Tensor:
        """The network's output after T steps, ``[B, ...]`` (mean over T for bridge graphs)."""
        return self.running_readout[-1]

    def predictions(self) -> torch.Tensor:
        """Predicted class per sample, ``[B]``, from the readout (flattened per sample)."""
        return self.readout.flatten(1).argmax(dim=1)
