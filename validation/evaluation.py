"""Accuracy vs time-steps of a converted network on labelled data (``bridge evaluate``).

One reference-simulator run of ``max(steps)`` steps per batch gives the readout after every
T <= max(steps) (``SimulationResult.running_readout``: the mean of the output over the
first T steps), so the whole sweep costs one simulation. The ANN view of the same graph
(every IF replaced by clip(I / theta, 0, 1)) gives the accuracy the SNN converges to and the
predictions the SNN is compared with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import nir
import torch

from bridge.format.errors import BridgeError


@dataclass
class Evaluation:
    """Accuracy (fraction) and agreement with the ANN view's predictions at each T."""

    steps: list[int]
    samples: int
    accuracy: dict[int, float] = field(default_factory=dict)
    ann_agreement: dict[int, float] = field(default_factory=dict)
    ann_accuracy: float | None = None
    device: str = "cpu"
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return {"samples": self.samples, "steps": self.steps, "device": self.device, "dtype": self.dtype,
                "ann_accuracy": self.ann_accuracy,
                "accuracy": {str(t): a for t, a in self.accuracy.items()},
                "ann_agreement": {str(t): a for t, a in self.ann_agreement.items()}}


def parse_steps(text: str | Sequence[int]) -> list[int]:
    """``"1,2,4,8"`` -> [1, 2, 4, 8] (sorted, unique, each >= 1)."""
    try:
        values = [int(v) for v in (text.split(",") if isinstance(text, str) else text) if str(v).strip()]
    except ValueError:
        raise BridgeError(f"--steps must be comma-separated integers like 1,2,4,8, got {text!r}") from None
    if not values or min(values) < 1:
        raise BridgeError(f"--steps needs integers >= 1, got {text!r}")
    return sorted(set(values))


def evaluate_graph(
    graph: nir.NIRGraph,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: Sequence[int],
    *,
    batch_size: int = 256,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    ann: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Accuracy of ``graph`` on ``(x, y)`` after each T in ``steps`` (reference simulator, batched).

    ``progress(n)`` is called with the number of samples done after each batch.
    """
    from bridge.reference import ReferenceSimulator, ann_view

    steps = parse_steps(list(steps))
    if batch_size < 1:
        raise BridgeError(f"--batch-size must be >= 1, got {batch_size}")
    if len(x) != len(y):
        raise BridgeError(f"{len(x)} samples but {len(y)} labels; give one label per sample")
    if len(x) == 0:
        raise BridgeError("the data set is empty")
    sim = ReferenceSimulator(graph, dtype=dtype, device=device)
    if tuple(x.shape[1:]) != tuple(sim.input_shape):
        raise BridgeError(f"the data has samples of shape {list(x.shape[1:])}, the network expects "
                          f"{list(sim.input_shape)}; use data of that shape")
    tmax = max(steps)
    correct = {t: 0 for t in steps}
    agree = {t: 0 for t in steps}
    ann_correct = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        yb = y[i:i + batch_size].to(device)
        running = sim.run(xb.to(device=device, dtype=dtype), tmax).running_readout
        ann_pred = None
        if ann:
            ann_pred = ann_view(graph, xb.double()).flatten(1).argmax(1).to(device)
            ann_correct += int((ann_pred == yb).sum())
        for t in steps:
            pred = running[t - 1].flatten(1).argmax(1)
            correct[t] += int((pred == yb).sum())
            if ann_pred is not None:
                agree[t] += int((pred == ann_pred).sum())
        if progress is not None:
            progress(len(xb))
    n = len(x)
    return Evaluation(
        steps, n, {t: correct[t] / n for t in steps},
        {t: agree[t] / n for t in steps} if ann else {},
        ann_correct / n if ann else None, str(device), str(dtype).replace("torch.", ""))
