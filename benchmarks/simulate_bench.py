"""Reference simulator speed and memory on VGG-16 (CIFAR shape), measured in one run.

Prints, in float32 on this machine's CPU (or --device cuda):

* the reference simulator (layer at a time) vs 32 forward passes of the same ANN in
  torch (target: ratio <= 1.0), and vs a hand-written step loop (per step: every layer
  on the batch, then the IF update);
* peak memory (RSS high-water mark above the pre-run level, CPU only) without traces,
  with traces of every IF layer, and with ``time_chunk`` windows, at T and 2T.

The VGG-16 has random weights and ClippedReLU bounds calibrated on random inputs; it is
converted to a bridge NIR graph by ``bridge.converter.convert`` when that exists, else by
the small hand converter below (the same rules: weights times the producer's threshold,
IF with theta = lambda and v_init = theta / 2).

    python benchmarks/simulate_bench.py [--batch 32] [--steps 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nir
import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.model.activations import ClippedReLU  # noqa: E402
from bridge.format.extension import graph_metadata, make_if  # noqa: E402
from bridge.format.neurons import if_step  # noqa: E402
from bridge.reference import ReferenceSimulator  # noqa: E402
from recipes.models import vgg16_4096  # noqa: E402


def fold_and_calibrate(model: nn.Sequential, x: torch.Tensor) -> nn.Sequential:
    """Fold BatchNorm into the convs, set each bound to the 99.9th percentile on ``x``."""
    layers: list[nn.Module] = []
    mods = list(model)
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv2d) and i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm2d):
            m = torch.nn.utils.fusion.fuse_conv_bn_eval(m.eval(), mods[i + 1].eval())
            i += 1
        layers.append(m)
        i += 1
    folded = nn.Sequential(*layers).eval()
    with torch.no_grad():
        h = x
        for m in folded:
            if isinstance(m, ClippedReLU):
                m.raw_bound.fill_(float(torch.quantile(h.flatten()[:1_000_000].float(), 0.999)))
            h = m(h)
    return folded


def to_nir(model: nn.Sequential, input_shape: tuple[int, ...]) -> tuple[nir.NIRGraph, str]:
    """The bridge NIR graph of ``model`` and which converter made it."""
    try:
        from bridge.converter import convert
    except ImportError:
        return hand_convert(model, input_shape), "hand converter (bridge.converter missing)"
    try:
        return convert(model, input_shape, thresholds="trained"), "bridge.converter.convert"
    except Exception as exc:  # the converter is developed in parallel: say so, don't hide it
        return hand_convert(model, input_shape), f"hand converter (convert failed: {exc})"


def hand_convert(model: nn.Sequential, input_shape: tuple[int, ...]) -> nir.NIRGraph:
    """Hand conversion of a Sequential (conv/linear/avgpool/flatten/ClippedReLU) to bridge NIR."""
    nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type=np.array(input_shape))}
    edges: list[tuple[str, str]] = []
    prev, theta_prev = "input", 1.0
    h = torch.zeros(1, *input_shape)
    for i, m in enumerate(model):
        name = f"l{i}"
        with torch.no_grad():
            shape_in, h = tuple(h.shape[1:]), m(h)
        if isinstance(m, nn.Conv2d):
            nodes[name] = nir.Conv2d(
                input_shape=shape_in[1:], weight=m.weight.detach().double().numpy() * theta_prev,
                stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups,
                bias=m.bias.detach().double().numpy())
            theta_prev = 1.0
        elif isinstance(m, nn.Linear):
            nodes[name] = nir.Affine(weight=m.weight.detach().double().numpy() * theta_prev,
                                     bias=m.bias.detach().double().numpy())
            theta_prev = 1.0
        elif isinstance(m, nn.AvgPool2d):
            nodes[name] = nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                                        padding=np.array([0, 0]))
        elif isinstance(m, nn.Flatten):
            nodes[name] = nir.Flatten(input_type={"input": np.array(shape_in)}, start_dim=0)
        elif isinstance(m, ClippedReLU):
            theta = float(m.bound)
            nodes[name] = make_if(np.full(tuple(h.shape[1:]), theta), theta / 2)
            theta_prev = theta
        else:
            raise TypeError(type(m))
        edges.append((prev, name))
        prev = name
    nodes["output"] = nir.Output(output_type=np.array(h.shape[1:]))
    edges.append((prev, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph_metadata())


class _StepIF(nn.Module):
    """A stateful IF layer for the hand-written step loop (threshold theta, v(0) = theta/2)."""

    def __init__(self, theta: float) -> None:
        super().__init__()
        self.theta, self.v = theta, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.v is None:
            self.v = torch.full_like(x, self.theta / 2)
        s, self.v = if_step(x, self.v, torch.tensor(self.theta, dtype=x.dtype))
        return s * self.theta  # the spike reaches the next layer with weight theta


def step_loop(model: nn.Sequential, x: torch.Tensor, steps: int) -> torch.Tensor:
    """What a user writes by hand: for t: the whole SNN on the batch, mean of the outputs."""
    snn = nn.Sequential(*[_StepIF(float(m.bound)) if isinstance(m, ClippedReLU) else m for m in model])
    total = None
    for _ in range(steps):
        y = snn(x)
        total = y if total is None else total + y
    return total / steps


def best_time(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def peak_rss_mib(fn: Callable[[], object]) -> float | None:
    """RSS high-water mark above the level before ``fn`` (Linux: reset via clear_refs)."""
    try:
        gc.collect()
        try:  # hand memory freed by earlier work (graph building) back to the OS first
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status("VmRSS")
        fn()
        return (_status("VmHWM") - base) / 1024
    except OSError:
        return None


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(key)


def build(batch: int) -> tuple[nn.Sequential, nir.NIRGraph, str, torch.Tensor]:
    """The calibrated ANN, its NIR graph, the converter used, and a random input batch."""
    torch.manual_seed(0)
    ann = fold_and_calibrate(vgg16_4096(), torch.rand(64, 3, 32, 32))
    graph, how = to_nir(ann, (3, 32, 32))
    return ann, graph, how, torch.rand(batch, 3, 32, 32)


def probe(kind: str, batch: int, steps: int, chunk: int) -> None:
    """One memory measurement in this (fresh) process; prints MiB."""
    torch.set_grad_enabled(False)
    ann, graph, _, x = build(batch)
    sim = ReferenceSimulator(graph, dtype=torch.float32)
    if kind == "ann":
        fn: Callable[[], object] = lambda: [ann(x) for _ in range(steps)]
    else:
        fn = lambda: sim.run(x, steps, trace=kind == "trace", time_chunk=chunk or None)
    mib = peak_rss_mib(fn)
    print("n/a" if mib is None else f"{mib:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=8, help="time_chunk for the memory line")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    ap.add_argument("--probe", choices=["ann", "ref", "trace"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        if args.threads:
            torch.set_num_threads(args.threads)
        return probe(args.probe, args.batch, args.steps, args.chunk)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.set_grad_enabled(False)
    ann, graph, how, x = build(args.batch)
    T, B = args.steps, args.batch
    ann_d, x_d = ann.to(dev), x.to(dev)
    sim = ReferenceSimulator(graph, dtype=torch.float32, device=dev)

    print(f"VGG-16 CIFAR shape, batch {B}, T = {T}, float32, device {dev}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; graph by {how}")
    t_ann = best_time(lambda: [ann_d(x_d) for _ in range(T)], args.repeats, sync)
    t_ref = best_time(lambda: sim.run(x_d, T), args.repeats, sync)
    t_loop = best_time(lambda: step_loop(ann_d, x_d, T), args.repeats, sync)
    xs = x_d.repeat(T, 1, 1, 1)
    t_big = best_time(lambda: ann_d(xs), args.repeats, sync)
    print(f"  ANN, {T} forward passes          {t_ann:8.2f} s")
    print(f"  ANN, one pass on the T*B batch   {t_big:8.2f} s   (the simulator's convolution work "
          "in one batch)")
    print(f"  reference simulator (layers)    {t_ref:8.2f} s   ratio vs ANN {t_ref / t_ann:5.2f} "
          "(target <= 1.0)")
    print(f"  hand-written step loop          {t_loop:8.2f} s   reference / loop {t_ref / t_loop:5.2f}")

    # agreement: the simulator's readout vs the hand loop's (same rule; float32 rounding only)
    ref_out = sim.run(x_d, T).readout
    loop_out = step_loop(ann_d, x_d, T)
    agree = (ref_out.argmax(1) == loop_out.argmax(1)).float().mean().item()
    print(f"  reference vs step loop: same class for {agree:.1%} of the batch, "
          f"max |diff| {float((ref_out - loop_out).abs().max()):.3g}")

    if dev.type == "cpu" and not args.no_memory:
        print("  peak memory of the run (RSS high-water mark above the pre-run level, "
              "each in a fresh process):")
        probes = [("ann", T, 0), ("ref", T, 0), ("ref", 2 * T, 0), ("trace", T, 0),
                  ("ref", T, args.chunk), ("ref", 2 * T, args.chunk)]
        for kind, steps, chunk in probes:
            label = {"ann": f"ANN, {steps} passes", "ref": f"reference T={steps}, no traces",
                     "trace": f"reference T={steps}, traces of every IF"}[kind]
            if chunk:
                label += f", time_chunk={chunk}"
            out = subprocess.run(
                [sys.executable, __file__, "--probe", kind, "--threads", str(args.threads), "--steps", str(steps),
                 "--chunk", str(chunk), "--batch", str(B)],
                capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            print(f"    {label:48s} {out:>8s} MiB")
        t_chunk = best_time(lambda: sim.run(x, T, time_chunk=args.chunk), args.repeats, sync)
        print(f"  reference with time_chunk={args.chunk}: {t_chunk:.2f} s (ratio vs ANN "
              f"{t_chunk / t_ann:.2f})")
    elif dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        for label, fn in [("no traces", lambda: sim.run(x_d, T)),
                          ("traces of every IF", lambda: sim.run(x_d, T, trace=True))]:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            print(f"    CUDA peak, {label:24s} {(torch.cuda.max_memory_allocated() - base) / 2**20:8.0f} MiB")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
