"""Exported models' simulation time against the reference simulator, measured in one run.

For each graph (a converted VGG-style CNN with BatchNorm on 3x32x32, and a converted
ResNet-style net with identity shortcuts), the same T, batch, dtype and device:

* ``reference``: ``bridge.reference.ReferenceSimulator.run`` (layer at a time), the baseline;
* ``spikingjelly (m)``: the exported SpikingJelly model in multi-step mode;
* ``spikingjelly (s)``: the same model in single-step mode (a Python loop over T);
* ``norse``: the exported Norse model (one ``forward(x, state)`` per step);
* ``snntorch``: the exported snnTorch model (one ``forward(x)`` per step, state in the neurons);
* ``sinabs``: the exported sinabs model (all T steps in one squeezed ``[B*T, ...]`` call).

The models run round-robin, ``--repeats`` times after one warm-up, so that load from other
processes hits all of them alike; printed are the best and the median time and the ratio
``best time / best reference time`` (< 1: faster than the reference). Every model also has to
predict the same classes as the reference on the batch, or the script exits with 1.

    python benchmarks/export_bench.py [--batch 8] [--steps 16] [--repeats 5] [--threads 1] [--dtype float32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nir
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.model.activations import ClippedReLU  # noqa: E402
from bridge.converter import convert  # noqa: E402
from bridge.reference import ReferenceSimulator  # noqa: E402
from exporters import norse as norse_exporter  # noqa: E402
from exporters import sinabs as sinabs_exporter  # noqa: E402
from exporters import snntorch as snntorch_exporter  # noqa: E402
from exporters import spikingjelly as sj_exporter  # noqa: E402


def vgg_small() -> nn.Sequential:
    """conv-BN-ReLU x4 with average pooling, 2 linear layers: 3x32x32 -> 10."""
    def block(cin: int, cout: int, bound: float) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), ClippedReLU(bound)]

    return nn.Sequential(*block(3, 32, 2.0), *block(32, 32, 1.5), nn.AvgPool2d(2),
                         *block(32, 64, 1.5), *block(64, 64, 1.2), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(64 * 8 * 8, 128), ClippedReLU(1.0), nn.Linear(128, 10))


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), ClippedReLU(1.5)
        self.conv2, self.bn2, self.act2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), ClippedReLU(1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))) + x)


class ResNetSmall(nn.Module):
    """stem conv, three identity blocks, global average pooling, linear: 3x32x32 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), ClippedReLU(2.0))
        self.blocks = nn.Sequential(Block(32), Block(32), Block(32))
        self.pool, self.flat, self.fc = nn.AvgPool2d(32), nn.Flatten(), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.pool(self.blocks(self.stem(x)))))


def bench_graph(name: str, graph: nir.NIRGraph, x: torch.Tensor, steps: int, repeats: int,
                dtype: torch.dtype, device: str) -> bool:
    ref = ReferenceSimulator(graph, dtype=dtype, device=device)
    sj_m = sj_exporter.build(graph, step_mode="m").to(dtype=dtype, device=device)
    sj_s = sj_exporter.build(graph, step_mode="s").to(dtype=dtype, device=device)
    nrs = norse_exporter.build(graph).to(dtype=dtype, device=device)
    snt = snntorch_exporter.build(graph).to(dtype=dtype, device=device)
    sin = sinabs_exporter.build(graph).to(dtype=dtype, device=device)
    x = x.to(dtype=dtype, device=device)
    runs: dict[str, Callable[[], torch.Tensor]] = {
        "reference": lambda: ref.run(x, steps).readout,
        "spikingjelly (m)": lambda: sj_m.predict(x, steps),
        "spikingjelly (s)": lambda: sj_s.predict(x, steps),
        "norse": lambda: nrs.predict(x, steps),
        "snntorch": lambda: snt.predict(x, steps),
        "sinabs": lambda: sin.predict(x, steps),
    }
    outs = {label: fn() for label, fn in runs.items()}  # warm-up (allocations, first calls)
    times: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(repeats):  # round-robin: a burst of load on a shared machine hits all
        for label, fn in runs.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            outs[label] = fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[label].append(time.perf_counter() - t0)
    base = min(times["reference"])
    print(f"\n{name}: batch {x.shape[0]}, T = {steps}, {str(dtype).replace('torch.', '')}, {device}, "
          f"{torch.get_num_threads()} threads, best of {repeats}")
    print(f"  {'model':<18} {'best [s]':>9} {'median':>9} {'ratio':>7}  classes = reference")
    ok = True
    for label in runs:
        same = bool(torch.equal(outs[label].argmax(1), outs["reference"].argmax(1)))
        ok &= same
        best = min(times[label])
        print(f"  {label:<18} {best:9.3f} {statistics.median(times[label]):9.3f} {best / base:7.2f}  "
              f"{'yes' if same else 'NO'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for every model (default 1: stable on a shared machine)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((args.batch, 3, 32, 32), generator=gen)
    ok = True
    for name, model in (("vgg_small (6 IF layers)", vgg_small()), ("resnet_small (7 IF layers, residual)", ResNetSmall())):
        torch.manual_seed(0)
        for m in model.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        graph = convert(model.eval(), (3, 32, 32), v_init="half", timesteps=args.steps)
        ok &= bench_graph(name, graph, x, args.steps, args.repeats, dtype, args.device)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
