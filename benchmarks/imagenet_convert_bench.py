"""Conversion time and peak memory of torchvision-style ImageNet networks at 3x224x224.

The networks are the zoo's (``tests/zoo_imagenet.py``: written in this repo from the published
layer specifications, full width, 1000 classes, default initialisation): ResNet-18/34/50,
VGG-11/16 with BatchNorm, MobileNetV2 and AlexNet. Each converts through
``bridge.converter.convert`` (torch.fx front-end, BatchNorm folding, ``p99.9`` thresholds from
``--images`` random images, max pools replaced by average pools with ``maxpool='avg'``, NIR
building) in a fresh subprocess, so that its peak memory is its own: peak RSS
(``resource.getrusage`` ``ru_maxrss``; tracemalloc does not see torch's tensors) minus the RSS
after the model is built. Baselines measured in the same run and process: one forward pass of the
model on the calibration images, and the model's parameters in float32 and float64.

Targets (issue 11): under 30 s and 4 GB per model.

    python benchmarks/imagenet_convert_bench.py                   # all models
    python benchmarks/imagenet_convert_bench.py --models resnet18 --threads 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TIME_TARGET_S = 30.0
MEMORY_TARGET_MB = 4096.0
MODELS = ("resnet18", "resnet34", "resnet50", "vgg11_bn", "vgg16_bn", "mobilenet_v2", "alexnet")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def build(name: str):  # noqa: ANN201
    from tests import zoo_imagenet as zoo

    makers = {
        "resnet18": lambda: zoo.ResNet(zoo.BasicBlock, [2, 2, 2, 2]),
        "resnet34": lambda: zoo.ResNet(zoo.BasicBlock, [3, 4, 6, 3]),
        "resnet50": lambda: zoo.ResNet(zoo.Bottleneck, [3, 4, 6, 3]),
        "vgg11_bn": lambda: zoo.VGG("A"),
        "vgg16_bn": lambda: zoo.VGG("D"),
        "mobilenet_v2": lambda: zoo.MobileNetV2(),
        "alexnet": lambda: zoo.AlexNet(),
    }
    return makers[name]().eval()


def one(name: str, images: int, threads: int) -> dict:
    """Runs in the subprocess: build, baseline forward, convert; returns the measurements."""
    import nir
    import torch

    from bridge.converter import convert

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(name)
    params = sum(p.numel() for p in model.parameters())
    x = torch.rand(images, 3, 224, 224)
    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    forward_s = time.perf_counter() - start
    rss_before = _rss_mb()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the maxpool='avg' replacement warns by design
        graph = convert(model, (3, 224, 224), thresholds="p99.9", calibration=x, maxpool="avg")
    convert_s = time.perf_counter() - start
    peak = _rss_mb()
    return {
        "model": name, "params_M": params / 1e6, "fp32_MB": params * 4 / 2**20, "fp64_MB": params * 8 / 2**20,
        "forward_s": forward_s, "convert_s": convert_s, "rss_before_MB": rss_before, "peak_MB": peak,
        "convert_MB": peak - rss_before, "nodes": len(graph.nodes),
        "if_nodes": sum(isinstance(n, nir.IF) for n in graph.nodes.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--images", type=int, default=4, help="calibration images (default 4)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.images, args.threads)))
        return
    print(f"{args.images} calibration images, p99.9, maxpool='avg', {args.threads} thread(s); targets "
          f"{TIME_TARGET_S:.0f} s, {MEMORY_TARGET_MB:.0f} MB", file=sys.stderr)
    header = ("model", "params (M)", "convert (s)", "forward (s)", "convert / forward", "peak RSS (MB)",
              "RSS before (MB)", "convert adds (MB)", "fp64 params (MB)", "IF nodes", "within targets")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in args.models:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--images", str(args.images),
                              "--threads", str(args.threads)], capture_output=True, text=True, check=False)
        if out.returncode:
            print(f"| {name} | failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        ok = r["convert_s"] < TIME_TARGET_S and r["peak_MB"] < MEMORY_TARGET_MB
        print(f"| {r['model']} | {r['params_M']:.1f} | {r['convert_s']:.1f} | {r['forward_s']:.2f} | "
              f"{r['convert_s'] / r['forward_s']:.1f}x | {r['peak_MB']:.0f} | {r['rss_before_MB']:.0f} | "
              f"{r['convert_MB']:.0f} | {r['fp64_MB']:.0f} | {r['if_nodes']} | {'yes' if ok else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
