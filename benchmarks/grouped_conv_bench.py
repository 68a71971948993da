"""What the dense encoding of depthwise convolutions costs: NIR file size and reference time.

nir 1.0.8 cannot read a grouped ``Conv2d``, so bridge writes each grouped conv as a dense
block-diagonal ``groups = 1`` conv and marks it with the conv metadata key ``groups``
(docs/nir-extension.md); bridge's reference simulator and exporters run it grouped again.
This script converts a MobileNet (v1, CIFAR layout: depthwise separable blocks up to 512
channels on 3x32x32) and measures, in the same run:

* the NIR file as bridge writes it (dense weights) against the same graph with the grouped
  weights (``groups = g``, written with ``nir.write``; nir 1.0.8 could not read that one back),
  and the conv weights in memory once a reader has loaded the file;
* the reference simulator on the file as written (grouped convs, the default) against the
  same file without the key (every reader's dense convs), float64 and float32, and the
  largest difference of their outputs.

    python benchmarks/grouped_conv_bench.py                    # full width, T = 8, batch 16
    python benchmarks/grouped_conv_bench.py --width 4 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nir  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from bridge.converter import convert  # noqa: E402
from bridge.format.extension import NAMESPACE, conv_weight  # noqa: E402
from bridge.format.nirio import write_graph  # noqa: E402
from bridge.reference import ReferenceSimulator  # noqa: E402

# MobileNet v1 on CIFAR (Howard et al. 2017, the CIFAR layout of the public model zoos)
CHANNELS = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)


def mobilenet(width: int) -> nn.Module:
    def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    cin = 32 // width
    layers = conv_bn(3, cin, 3, 1, 1)
    for c, s in zip(CHANNELS, STRIDES):
        c //= width
        layers += conv_bn(cin, cin, 3, s, cin) + conv_bn(cin, c, 1, 1, 1)
        cin = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def without_key(graph: nir.NIRGraph) -> nir.NIRGraph:
    """The same graph as a reader that ignores bridge's conv key sees it (dense convs)."""
    graph = copy.deepcopy(graph)
    for node in graph.nodes.values():
        if isinstance(node, (nir.Conv1d, nir.Conv2d)):
            node.metadata.pop(NAMESPACE, None)
    return graph


def grouped_form(graph: nir.NIRGraph) -> nir.NIRGraph:
    """The same graph with grouped weights (groups = g): what NIR would hold if it could."""
    graph = copy.deepcopy(graph)
    for name, node in graph.nodes.items():
        if isinstance(node, nir.Conv2d):
            node.weight, node.groups = conv_weight(node, name)
            node.metadata.pop(NAMESPACE, None)
    return graph


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1, help="divide every channel count by this")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all CPUs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = (3, 32, 32)
    model = mobilenet(args.width)
    calib = torch.rand((32, *shape), generator=torch.Generator().manual_seed(1))
    graph = convert(model, shape, thresholds="max", calibration=calib)
    grouped = sum(1 for n in graph.nodes.values() if isinstance(n, nir.Conv2d) and NAMESPACE in n.metadata)
    print(f"MobileNet v1 (CIFAR, width 1/{args.width}): {len(graph.nodes)} nodes, {grouped} depthwise convs; "
          f"torch threads {torch.get_num_threads()}, T = {args.steps}, batch {args.batch}")

    with tempfile.TemporaryDirectory() as tmp:
        dense_path = write_graph(graph, Path(tmp) / "dense.nir")
        grouped_path = Path(tmp) / "grouped.nir"
        nir.write(grouped_path, grouped_form(graph))
        dense_mb, grouped_mb = os.path.getsize(dense_path) / 2**20, os.path.getsize(grouped_path) / 2**20
    dense_params = sum(np.asarray(n.weight).size for n in graph.nodes.values() if isinstance(n, nir.Conv2d))
    grouped_params = sum(conv_weight(n, k)[0].size for k, n in graph.nodes.items() if isinstance(n, nir.Conv2d))
    print(f"NIR file (HDF5, gzip: zeros compress): dense {dense_mb:.2f} MiB, grouped {grouped_mb:.2f} MiB, "
          f"ratio {dense_mb / grouped_mb:.2f}x")
    print(f"conv weights in memory once read (float64): dense {dense_params * 8 / 2**20:.1f} MiB, grouped "
          f"{grouped_params * 8 / 2**20:.1f} MiB, ratio {dense_params / grouped_params:.1f}x "
          f"({dense_params:,} vs {grouped_params:,} numbers)")

    x = torch.rand((args.batch, *shape), generator=torch.Generator().manual_seed(2))
    for dtype in (torch.float64, torch.float32):
        sims = {"grouped": ReferenceSimulator(graph, dtype=dtype), "dense": ReferenceSimulator(without_key(graph), dtype=dtype)}
        outs, times = {}, {}
        for name, sim in sims.items():
            outs[name] = sim.run(x, args.steps).outputs
            times[name] = best_time(lambda sim=sim: sim.run(x, args.steps), args.repeats)
        diff = (outs["grouped"] - outs["dense"]).abs().max().item()
        print(f"reference {str(dtype).removeprefix('torch.')}: dense {times['dense']:.3f} s, grouped {times['grouped']:.3f} s, "
              f"ratio {times['dense'] / times['grouped']:.1f}x; outputs bit-identical: "
              f"{torch.equal(outs['grouped'], outs['dense'])} (max |diff| {diff:.2e})")


if __name__ == "__main__":
    main()
