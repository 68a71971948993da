"""Does calibration hold on models it was not tuned on? The MNIST-1D family (issue #18, item 5).

For every model of :mod:`recipes.mnist1d_family` (trained once, cached under /tmp) and seed, and
each T in {1, 2, 4, 8, 16}, on the 1000 test signals: the ANN, theta/2 (the converted graph),
the search alone (the ``optimized`` stage's own output), the default export for T
(:func:`bridge.passes.pipeline.calibrate` with its default stages) and, for plain-ReLU models,
SpikingJelly's best ann2snn setting (99.9% percentile, channel-wise, half threshold; the other
models have activations ann2snn does not convert). Calibration uses the first 512 training
signals only (the pipeline holds out its last 128). Prints a table per model (mean over seeds),
the mean and worst gap of the default export to the ANN, and the issue's targets, pass or miss.

    python benchmarks/family_bench.py --seeds 3 --json /tmp/family.json > /tmp/family.log
"""

from __future__ import annotations

import argparse
import json
import time

STEPS = (1, 2, 4, 8, 16)
METHODS = ("theta/2", "search", "default", "SJ best")


def run_model(spec, seed: int, cal, x, y, steps) -> dict:
    import torch

    from app import ann2snn_baseline as sj
    from bridge.converter import convert
    from bridge.passes.pipeline import CalibrationReport, calibrate
    from bridge.reference import simulate
    from recipes.mnist1d_family import load_or_train

    model, ann_acc = load_or_train(spec, seed)
    graph = convert(model, tuple(x.shape[1:]), calibration=cal, channel_wise=True)

    def acc(g, t: int) -> float:
        out = simulate(g, x, t, dtype=torch.float32).readout.flatten(1)
        return float((out.argmax(1) == y).float().mean())

    half_run = simulate(graph, x, max(steps), dtype=torch.float32).running_readout
    row: dict = {"ann": ann_acc, "theta/2": {}, "search": {}, "default": {}, "SJ best": {}, "chosen": {},
                 "seconds": {}}
    for t in steps:
        row["theta/2"][t] = float((half_run[t - 1].flatten(1).argmax(1) == y).float().mean())
        rep, cands = CalibrationReport(t), {}
        out = calibrate(graph, cal, t, report=rep, candidates=cands)
        row["default"][t] = acc(out, t)
        row["search"][t] = acc(cands["optimized"], t)
        row["chosen"][t] = rep.chosen
        row["seconds"][t] = rep.seconds
        # every stage's own candidate: held-out numbers (calibration data) and test accuracy,
        # to judge the choice rule
        row.setdefault("stages", {})[t] = [
            {"name": st.name, "heldout_error": st.heldout_error, "heldout_agreement": st.heldout_agreement,
             "kept": st.kept, "test": acc(cands[st.name], t) if st.name in cands else None}
            for st in rep.stages]
    if sj.applicable(model):
        row["SJ best"] = sj.accuracy_vs_steps(model, cal, x, y, list(steps), sj.SJSetting("99.9%", True, True))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--models", default=None)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None, metavar="JSON",
                   help="print the markdown table of a finished run's JSON and exit")
    args = p.parse_args()
    if args.markdown:
        with open(args.markdown) as fh:
            results = json.load(fh)
        print_summary(results)
        print()
        print_markdown(results)
        return

    import torch

    torch.set_num_threads(args.threads)
    from bridge.data.mnist1d import mnist1d_split
    from recipes.mnist1d_family import FAMILY

    split = mnist1d_split()
    cal, x, y = split.train_x[:args.samples], split.test_x, split.test_y
    specs = [s for s in FAMILY if args.models is None or s.name in args.models.split(",")]
    results: dict = {}
    start = time.perf_counter()
    for spec in specs:
        rows = []
        for seed in range(args.seeds):
            rows.append(run_model(spec, seed, cal, x, y, STEPS))
            print(f"# {spec.name} seed {seed}: chosen {rows[-1]['chosen']}, "
                  f"pipeline s {[round(v, 1) for v in rows[-1]['seconds'].values()]} "
                  f"({time.perf_counter() - start:.0f} s elapsed)", flush=True)
        results[spec.name] = {"group": spec.group, "rows": rows}
        print_model(spec.name, spec.group, rows)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)
    print_summary(results)


def _mean(v: list[float]) -> float:
    return sum(v) / len(v)


def print_model(name: str, group: str, rows: list[dict]) -> None:
    ann = 100 * _mean([r["ann"] for r in rows])
    print(f"\n{name} ({group}), ANN {ann:.2f}% (mean of {len(rows)} seeds)")
    print(f"  {'method':<10}" + "".join(f"{'T=' + str(t):>9}" for t in STEPS))
    for m in METHODS:
        if not rows[0][m]:
            continue
        print(f"  {m:<10}" + "".join(f"{100 * _mean([r[m][t] for r in rows]):9.2f}" for t in STEPS))


def _int_keys(results: dict) -> dict:
    out = {}
    for name, v in results.items():
        rows = [{m: ({int(k): x for k, x in r[m].items()} if isinstance(r[m], dict) else r[m]) for m in r}
                for r in v["rows"]]
        out[name] = {**v, "rows": rows}
    return out


def print_summary(results: dict) -> None:
    """Mean and worst gap of the default export per group and T; the issue's targets."""
    results = _int_keys(results)
    print("\nGap of the default export to the ANN (points; mean over models of the seed-mean, worst model)")
    for group in ("relu", "clipped", "qcfs"):
        models = {k: v["rows"] for k, v in results.items() if v["group"] == group}
        if not models:
            continue
        line = f"  {group:<8}"
        for t in STEPS:
            gaps = [100 * _mean([r["ann"] - r["default"][t] for r in rows]) for rows in models.values()]
            line += f"  T={t}: {_mean(gaps):5.2f} / {max(gaps):5.2f}"
        print(line)
    print("\nPer model (seed means): default below theta/2 or search by > 0.5 pt, or not above SJ best at T <= 8")
    for name, v in results.items():
        rows, bad = v["rows"], []
        for t in STEPS:
            d = _mean([r["default"][t] for r in rows])
            for m in ("theta/2", "search"):
                if d < _mean([r[m][t] for r in rows]) - 0.005:
                    bad.append(f"T={t} {m} by {100 * (_mean([r[m][t] for r in rows]) - d):.2f}")
            if rows[0]["SJ best"] and t <= 8 and d <= _mean([r["SJ best"][t] for r in rows]):
                bad.append(f"T={t} SJ by {100 * (_mean([r['SJ best'][t] for r in rows]) - d):.2f}")
        print(f"  {name:<22} {'pass' if not bad else 'MISS: ' + '; '.join(bad)}")


def print_markdown(results: dict) -> None:
    """The family table of docs/calibration.md: per model, mean over seeds, T = 1..16."""
    def cell(rows, m, t):
        return f"{100 * _mean([r[m][t] for r in rows]):.1f}" if rows[0][m] else "-"
    print("| model | group | ANN | method | " + " | ".join(f"T={t}" for t in STEPS) + " |")
    print("|---|---|---|---|" + "---|" * len(STEPS))
    for name, v in results.items():
        rows = [{m: {int(k): x for k, x in r[m].items()} if isinstance(r[m], dict) else r[m]
                 for m in r} for r in v["rows"]]
        ann = f"{100 * _mean([r['ann'] for r in rows]):.1f}"
        first = True
        for m in METHODS:
            if not rows[0][m]:
                continue
            head = f"| {name} | {v['group']} | {ann} |" if first else "| | | |"
            label = "**default export**" if m == "default" else m
            print(f"{head} {label} | " + " | ".join(cell(rows, m, t) for t in STEPS) + " |")
            first = False


if __name__ == "__main__":
    main()
