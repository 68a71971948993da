"""The QCFS authors' VGG-16, ResNet-18 and ResNet-20 (recipes/qcfs_models.py) on the digits: how often
the SNN's prediction equals the ANN's at T = L, 2L, 4L, 8L with theta/2, and at T = L after
bridge's initial-potential / threshold search.

The ANN is the trained model itself (its MyFloor staircase with L levels, float64); the SNN is
its conversion run by the reference simulator on the 360 test digits. "agree" is the fraction of
test digits where both predict the same class; the baseline of the same run is theta/2 at
T = L, the method's promise (zero conversion error in expectation). The search
(:func:`bridge.passes.optimize.optimize_initial_potentials`, per channel, T = L) is fitted on
384 training digits only.

    python benchmarks/qcfs_t_equals_l.py                         # the three models, seeds 0 1 2
    python benchmarks/qcfs_t_equals_l.py --models resnet20 --seeds 0 --width 2   # a narrower net
    python benchmarks/qcfs_t_equals_l.py --json out.json

About 3 minutes per model and seed on one CPU thread.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # recipes/ (the model definitions)

CALIBRATION_DIGITS = 384


def measure(name: str, seed: int, levels: int, width: int | None) -> dict:
    """Train one model, convert it and measure the agreement; one row of numbers."""
    import torch

    import bridge
    from bridge.workflow import ConversionPlan, run_plan
    from recipes import qcfs_models

    width = qcfs_models.DIGITS_RECIPES[name].width if width is None else width
    t0 = time.perf_counter()
    trained, split, shape = qcfs_models.train_on_digits(name, seed, levels, width=width)
    train_s = time.perf_counter() - t0
    x = split.test_x.double()
    with torch.no_grad():
        ann = copy.deepcopy(trained.model).double().eval()(x).argmax(1)
    graph = bridge.convert(trained.model, shape)

    def agreement(g, steps: int) -> tuple[float, float]:  # noqa: ANN001
        pred = bridge.simulate(g, x, steps=steps).predictions()
        return float((pred == ann).double().mean()), float((pred == split.test_y).double().mean())

    row = {"model": name, "seed": seed, "levels": levels, "width": width,
           "ann_accuracy": trained.ann_accuracy, "train_s": train_s}
    for k in (1, 2, 4, 8):
        row[f"agree_T{k * levels}"], row[f"snn_accuracy_T{k * levels}"] = agreement(graph, k * levels)
    t0 = time.perf_counter()
    # the search alone, as `bridge export --v-init optimized --timesteps L --calibration ...` runs it
    plan = ConversionPlan(v_init="optimized", calibration=split.train_x, calibration_samples=CALIBRATION_DIGITS,
                          timesteps=levels)
    searched = run_plan(trained.model, plan, shape).graph
    row["search_s"] = time.perf_counter() - t0
    row["agree_searched_T"], row["snn_accuracy_searched_T"] = agreement(searched, levels)
    return row


def _mean_std(rows: list[dict], key: str) -> str:
    values = [100 * r[key] for r in rows]
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f}±{std:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg16,resnet18,resnet20")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--levels", type=int, default=4, help="L of the MyFloor staircase")
    parser.add_argument("--width", type=int, default=None, help="divide the channels by this (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write every row to this file")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows: dict[str, list[dict]] = {}
    for name in args.models.split(","):
        for seed in args.seeds:
            row = measure(name, seed, args.levels, args.width)
            rows.setdefault(name, []).append(row)
            print(f"{name} seed {seed}: ANN {row['ann_accuracy']:.3f}; agree at T=L {row['agree_T' + str(args.levels)]:.3f}"
                  f", searched {row['agree_searched_T']:.3f} (train {row['train_s']:.0f} s, search {row['search_s']:.0f} s)",
                  flush=True)
    L = args.levels
    print(f"\nagreement of the SNN's prediction with the ANN's (%, mean±std over seeds {args.seeds}), L = {L}")
    print(f"| model | width | ANN accuracy | T={L} | T={2 * L} | T={4 * L} | T={8 * L} | T={L}, searched v_init | search time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rs in rows.items():
        cells = [_mean_std(rs, f"agree_T{k * L}") for k in (1, 2, 4, 8)]
        ratio = statistics.mean(r["agree_searched_T"] for r in rs) / statistics.mean(r[f"agree_T{L}"] for r in rs)
        print(f"| {name} | 1/{rs[0]['width']} | {_mean_std(rs, 'ann_accuracy')} | " + " | ".join(cells)
              + f" | {_mean_std(rs, 'agree_searched_T')} ({ratio:.2f}x theta/2) | "
              f"{statistics.mean(r['search_s'] for r in rs):.0f} s |")
    if args.json:
        Path(args.json).write_text(json.dumps([r for rs in rows.values() for r in rs], indent=1))


if __name__ == "__main__":
    main()
