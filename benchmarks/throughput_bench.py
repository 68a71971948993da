"""Evaluation throughput: images/s of the reference simulator against T ANN forward passes.

For VGG-16 and ResNet-18 (CIFAR shape, 3x32x32) and ResNet-34 (3x224x224), each with random
weights and ClippedReLU activations converted by ``bridge.converter.convert``, and for
T = 4, 8, 32, prints in one run on the same device and data:

* ``snn img/s``: images per second of what ``bridge evaluate`` runs per batch (the reference
  simulator for T steps in float32, spikes of every layer counted);
* ``ann img/s``: images per second of T forward passes of the same PyTorch network;
* ``ratio``: SNN time / time of T ANN passes (1.0: a T-step simulation costs exactly T
  forward passes of the ANN; below 1 it is cheaper, because the layers before the first
  neuron run once);

for 1 process (all CPU threads) and 2 processes under torchrun (gloo, each half of the
images, CPU threads split between them). ``--device cuda`` runs on GPUs (1 process per GPU).

    python benchmarks/throughput_bench.py [--cifar-images 16] [--imagenet-images 4]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.converter import convert  # noqa: E402
from bridge.model.activations import ClippedReLU  # noqa: E402
from recipes.models import ResNet, resnet18, vgg16_4096  # noqa: E402
from validation.distributed import distributed_session, shard_bounds  # noqa: E402
from validation.evaluation import BatchRunner  # noqa: E402

STEPS = (4, 8, 32)


def imagenet_stem() -> nn.Sequential:
    """The ImageNet 7x7/2 stem with 2x2/2 average pooling (112 -> 56 as the 3x3/2 max pool; no padding)."""
    return nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), ClippedReLU(), nn.AvgPool2d(2))


NETWORKS = {
    "VGG-16 (3x32x32)": (vgg16_4096, (3, 32, 32), "cifar"),
    "ResNet-18 (3x32x32)": (lambda: resnet18()[0], (3, 32, 32), "cifar"),
    "ResNet-34 (3x224x224)": (lambda: ResNet((3, 4, 6, 3), (64, 128, 256, 512), 1000, stem=imagenet_stem()),
                              (3, 224, 224), "imagenet"),
}


def build(name: str) -> tuple[nn.Module, object, tuple[int, ...]]:
    factory, shape, _ = NETWORKS[name]
    torch.manual_seed(0)
    model = factory().eval()
    with torch.no_grad():  # BatchNorm statistics that keep activations in range
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.1, 0.1)
    return model, convert(model, shape), shape


def measure(name: str, images: int, batch: int, group) -> dict:
    """Seconds of the SNN at each T and of T ANN passes, on this rank's shard (max over ranks)."""
    model, graph, shape = build(name)
    start, stop = shard_bounds(images, group.rank, group.world_size)
    torch.manual_seed(1)
    x = torch.rand(images, *shape)[start:stop]
    model = model.to(group.device)
    runner = BatchRunner(graph, "reference", dtype=torch.float32, device=group.device)
    with torch.no_grad():  # warm-up: first-call allocations and kernel selection are not timed
        runner.run(x[:1].to(group.device), 2)
        model(x[:1].to(group.device))
    out = {}
    for steps in STEPS:
        for kind in ("snn", "ann"):
            sync = torch.cuda.synchronize if group.device.type == "cuda" else (lambda: None)
            t0 = time.perf_counter()
            with torch.no_grad():
                for i in range(0, len(x), batch):
                    xb = x[i:i + batch].to(group.device)
                    if kind == "snn":
                        runner.run(xb, steps)
                    else:
                        for _ in range(steps):
                            model(xb)
            sync()
            seconds = time.perf_counter() - t0
            out[f"{kind}{steps}"] = group.slowest(seconds)
    return out


def worker(args: argparse.Namespace) -> None:
    """One process (torchrun rank, or the whole single-process run)."""
    with distributed_session(args.device) as group:
        if group.device.type == "cpu":
            torch.set_num_threads(args.threads or max(1, len(os.sched_getaffinity(0)) // group.world_size))
        results = {}
        for name in NETWORKS:
            images = args.imagenet_images if NETWORKS[name][2] == "imagenet" else args.cifar_images
            t0 = time.perf_counter()
            results[name] = {"images": images, **measure(name, images, args.batch, group)}
            if group.is_main:
                print(f"  measured {name} in {time.perf_counter() - t0:.0f} s with {group.world_size} "
                      "process(es)", file=sys.stderr, flush=True)
        if group.is_main:
            Path(args.result).write_text(json.dumps({"processes": group.world_size,
                                                     "device": str(group.device),
                                                     "threads": torch.get_num_threads(), "results": results}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: argparse.Namespace, processes: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        common = ["--worker", "--result", str(result), "--device", args.device, "--batch", str(args.batch),
                  *(["--threads", str(args.threads)] if args.threads else []),
                  "--cifar-images", str(args.cifar_images), "--imagenet-images", str(args.imagenet_images)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
        if processes == 1:
            cmd = [sys.executable, __file__, *common]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node",
                   str(processes), "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                   __file__, *common]
        subprocess.run(cmd, env=env, check=True)
        return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cifar-images", type=int, default=16)
    parser.add_argument("--imagenet-images", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--processes", default="1,2", help="Process counts to measure, e.g. 1,2 or 1,8.")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads per process (default: the CPU cores split between the processes).")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.device == "cpu":
        gpu = "a CUDA GPU is visible but was not used" if torch.cuda.is_available() else "no GPU on this machine"
        print(f"device: CPU only ({gpu}; CUDA throughput was not measured), "
              f"{len(os.sched_getaffinity(0))} CPU cores, torch {torch.__version__}, float32")
    else:
        print(f"device: CUDA ({torch.cuda.get_device_name(0)}), torch {torch.__version__}, float32")
    print(f"load average {os.getloadavg()[0]:.1f} at the start (other jobs share this machine)")
    print(f"batch {args.batch}; ratio = SNN time / time of T ANN forward passes (same device, same images)\n")
    header = f"{'network':24} {'procs':>5} {'thr':>3} {'images':>6} {'T':>3} {'snn img/s':>10} {'ann img/s':>10} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for processes in (int(p) for p in args.processes.split(",")):
        data = run(args, processes)
        for name, r in data["results"].items():
            for steps in STEPS:
                snn, ann = r[f"snn{steps}"], r[f"ann{steps}"]
                print(f"{name:24} {processes:>5} {data['threads']:>3} {r['images']:>6} {steps:>3} {r['images'] / snn:>10.2f} "
                      f"{r['images'] / ann:>10.2f} {snn / ann:>6.2f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
