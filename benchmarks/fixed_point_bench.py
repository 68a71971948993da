"""What integers cost: int8 graphs against float graphs, and the Speck export, next to sinabs's route.

    PYTHONPATH=. python benchmarks/fixed_point_bench.py [--seeds 2] [--quick] [--json out.json]

Part 1 (digits 16x16 with the demo's plain-ReLU DigitsCNN; MNIST-1D with its plain-ReLU
SignalCNN): per seed, train on the training split, convert with thresholds calibrated on
training images (per channel), and at each T in 1..64 run the calibration pipeline's search
(``half`` + ``optimized``, training images only) for that T; the int8 graph is that graph after
:func:`bridge.passes.fixed_point.to_fixed_point` (quantisation after calibration; 8-bit weights
per output channel, 16-bit state, no bounds). Test accuracy of both (reference, float32),
and sinabs's route on the same trained weights (``sinabs.from_model``, and with sinabs's DynapCNN
discretisation functions), analog input at every step. Targets: int8 within 0.5 point of float
at T >= 4; int8 ahead of sinabs's discretised route at every T.

Part 2 (Speck): the ANN of sinabs's MNIST example (bias-free) trained on digits at 28x28; per T
in 4..64 the calibrated graph legalised for Speck (event counts round(4 x) per step, spiking
readout with its threshold chosen for T on the training images, one threshold per layer, integers,
16-bit range), checked against the chip limits, its
accuracy in bridge's reference, in sinabs's multi-spike emulation of the same network (and the
two's prediction agreement), next to the float graph and sinabs's route (float; discretised with a
spiking output layer, what the chip would run). Plus the cost of biases: the same ANN trained with
biases, and that model with its biases dropped for Speck.

Means over seeds; nothing is tuned on test data. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.converter import convert  # noqa: E402
from bridge.data.datasets import Split, digits_split  # noqa: E402
from bridge.format.speck import event_counts  # noqa: E402
from bridge.model.train import DigitsCNN, SignalCNN, train_model  # noqa: E402
from bridge.passes.fixed_point import to_fixed_point  # noqa: E402
from bridge.passes.pipeline import calibrate  # noqa: E402
from bridge.passes.speck import legalise_for_speck  # noqa: E402
from exporters.speck import build_sinabs, check_fits, resource_table, run_sinabs  # noqa: E402
from recipes.speck_models import speck_mnist_ann  # noqa: E402
from validation.evaluation import evaluate_graph  # noqa: E402
from validation.sinabs_route import sinabs_accuracy, sinabs_snn  # noqa: E402

STEPS = (1, 2, 4, 8, 16, 32, 64)
SPECK_STEPS = (4, 8, 16, 32, 64)


def _mnist1d(seed: int) -> Split:
    from bridge.data.mnist1d import mnist1d_split

    full = mnist1d_split()
    perm = torch.randperm(len(full.train_y), generator=torch.Generator().manual_seed(seed))
    return Split(full.train_x[perm], full.train_y[perm], full.test_x, full.test_y)


def _acc(graph, x, y, steps) -> dict[int, float]:
    return evaluate_graph(graph, x, y, list(steps), batch_size=256, dtype=torch.float32, ann=False,
                          count_spikes=False).accuracy


def _calibrated(graph, split: Split, t: int, samples: int):
    n = int(max(32, min(samples, samples * 4 // t)))  # as the demo: fewer images at large T
    return calibrate(graph, split.train_x[:n], t, stages=("half", "optimized"))


def cost_table(dataset: str, seeds: list[int], steps: tuple[int, ...], epochs: int, samples: int) -> dict:
    rows: dict[str, dict[int, list[float]]] = {k: {t: [] for t in steps} for k in
                                              ("float", "int8", "int8_layer", "sinabs", "sinabs_int")}
    ann = []
    for seed in seeds:
        t0 = time.perf_counter()
        split = digits_split(seed) if dataset == "digits" else _mnist1d(seed)
        model = DigitsCNN("relu") if dataset == "digits" else SignalCNN("relu")
        shape = (1, 16, 16) if dataset == "digits" else (1, 40)
        trained = train_model(model, split, epochs=epochs, seed=seed)
        ann.append(trained.ann_accuracy)
        graph = convert(trained.model, shape, calibration=split.train_x[:samples], channel_wise=True)
        x, y = split.test_x, split.test_y
        for t in steps:
            g_t = _calibrated(graph, split, t, samples)
            rows["float"][t].append(_acc(g_t, x, y, (t,))[t])
            rows["int8"][t].append(_acc(to_fixed_point(g_t), x, y, (t,))[t])
            rows["int8_layer"][t].append(_acc(to_fixed_point(g_t, per_channel=False), x, y, (t,))[t])
        for key, disc in (("sinabs", False), ("sinabs_int", True)):
            acc = sinabs_accuracy(sinabs_snn(trained.model, batch_size=32, discretize=disc), x, y, list(steps))
            for t in steps:
                rows[key][t].append(acc[t])
        print(f"  {dataset} seed {seed}: ANN {trained.ann_accuracy:.3f}, {time.perf_counter() - t0:.0f} s",
              flush=True)
    return {"ann": ann, "rows": rows}


def speck_table(seeds: list[int], steps: tuple[int, ...], epochs: int, samples: int, levels: int) -> dict:
    keys = ("float", "speck", "speck_multi", "agree_multi", "sinabs", "sinabs_int", "biased_dropped")
    rows: dict[str, dict[int, list[float]]] = {k: {t: [] for t in steps} for k in keys}
    ann, ann_biased, table = [], [], ""
    for seed in seeds:
        t0 = time.perf_counter()
        split = digits_split(seed, size=28)
        trained = train_model(speck_mnist_ann(), split, epochs=epochs, seed=seed, lr=3e-3)
        biased = train_model(speck_mnist_ann(bias=True), split, epochs=epochs, seed=seed, lr=3e-3)
        ann.append(trained.ann_accuracy)
        ann_biased.append(biased.ann_accuracy)
        cal = split.train_x[:samples]
        graph = convert(trained.model, (1, 28, 28), calibration=cal)
        graph_b = convert(biased.model, (1, 28, 28), calibration=cal)
        x, y = split.test_x, split.test_y
        counts = event_counts(x, levels)
        for t in steps:
            g_t = _calibrated(graph, split, t, samples)
            rows["float"][t].append(_acc(g_t, x, y, (t,))[t])
            chip = legalise_for_speck(g_t, cal, input_levels=levels, timesteps=t)
            layers, cores = check_fits(chip)
            table = table or resource_table(layers, cores)
            pred = evaluate_graph(chip, counts, y, [t], batch_size=256, dtype=torch.float32, ann=False,
                                  count_spikes=False)
            rows["speck"][t].append(pred.accuracy[t])
            multi = run_sinabs(build_sinabs(chip, multi_spike=True), counts, t)
            single = run_sinabs(build_sinabs(chip, multi_spike=False), counts, t)
            rows["speck_multi"][t].append(float((multi.argmax(1) == y).float().mean()))
            rows["agree_multi"][t].append(float((multi.argmax(1) == single.argmax(1)).float().mean()))
            chip_b = legalise_for_speck(_calibrated(graph_b, split, t, samples), cal, input_levels=levels,
                                        biases="drop", timesteps=t)
            rows["biased_dropped"][t].append(_acc(chip_b, counts, y, (t,))[t])
        acc = sinabs_accuracy(sinabs_snn(trained.model, batch_size=32, discretize=False), x, y, list(steps))
        acc_int = sinabs_accuracy(sinabs_snn(trained.model, batch_size=32, discretize=True, spiking_output=True),
                                  x, y, list(steps))
        for t in steps:
            rows["sinabs"][t].append(acc[t])
            rows["sinabs_int"][t].append(acc_int[t])
        print(f"  speck seed {seed}: ANN {trained.ann_accuracy:.3f} (with biases {biased.ann_accuracy:.3f}), "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    return {"ann": ann, "ann_biased": ann_biased, "rows": rows, "resources": table}


def _mean(values: list[float]) -> float:
    return 100.0 * sum(values) / len(values)


def print_cost(name: str, res: dict, steps: tuple[int, ...]) -> None:
    r = res["rows"]
    print(f"\n{name}: ANN {_mean(res['ann']):.1f}% (mean of {len(res['ann'])} seeds); test accuracy %")
    print(f"{'T':>3s} {'float':>6s} {'int8':>6s} {'int8-layer':>10s} {'int8-float':>10s} {'target':>6s} "
          f"{'sinabs':>7s} {'sinabs-int':>10s} {'ahead':>5s}")
    for t in steps:
        f, i, il, s, si = (_mean(r[k][t]) for k in ("float", "int8", "int8_layer", "sinabs", "sinabs_int"))
        target = ("pass" if i >= f - 0.5 else "miss") if t >= 4 else "-"
        print(f"{t:3d} {f:6.1f} {i:6.1f} {il:10.1f} {i - f:+10.1f} {target:>6s} {s:7.1f} {si:10.1f} "
              f"{'pass' if i > si else 'miss':>5s}")


def print_speck(res: dict, steps: tuple[int, ...], levels: int) -> None:
    r = res["rows"]
    print(f"\nSpeck (sinabs's MNIST ANN, digits 28x28): ANN {_mean(res['ann']):.1f}% bias-free, "
          f"{_mean(res['ann_biased']):.1f}% with biases; input round({levels} x) events per step")
    print(f"{'T':>3s} {'float':>6s} {'speck':>6s} {'multi':>6s} {'agree':>6s} {'sinabs':>7s} {'sinabs-int':>10s} "
          f"{'ahead':>5s} {'biased-dropped':>14s}")
    for t in steps:
        f, sp, mu, ag, s, si, bd = (_mean(r[k][t]) for k in
                                    ("float", "speck", "speck_multi", "agree_multi", "sinabs", "sinabs_int",
                                     "biased_dropped"))
        print(f"{t:3d} {f:6.1f} {sp:6.1f} {mu:6.1f} {ag:6.1f} {s:7.1f} {si:10.1f} {'pass' if sp > si else 'miss':>5s} "
              f"{bd:14.1f}")
    print("\nresources (seed 0, T = 4):\n" + res["resources"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer epochs and T (a smoke run, not the table)")
    parser.add_argument("--levels", type=int, default=4, help="Speck input events per step at x = 1")
    parser.add_argument("--parts", default="digits,mnist1d,speck")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    steps, speck_steps = ((1, 4, 16), (4, 16)) if args.quick else (STEPS, SPECK_STEPS)
    parts = args.parts.split(",")
    out: dict = {}
    start = time.perf_counter()
    if "digits" in parts:
        out["digits"] = cost_table("digits", seeds, steps, 4 if args.quick else 20, 512)
        print_cost("digits (DigitsCNN, plain ReLU)", out["digits"], steps)
    if "mnist1d" in parts:
        out["mnist1d"] = cost_table("mnist1d", seeds, steps, 3 if args.quick else 12, 512)
        print_cost("MNIST-1D (SignalCNN, plain ReLU)", out["mnist1d"], steps)
    if "speck" in parts:
        out["speck"] = speck_table(seeds, speck_steps, 3 if args.quick else 15, 512, args.levels)
        print_speck(out["speck"], speck_steps, args.levels)
    print(f"\n{time.perf_counter() - start:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
