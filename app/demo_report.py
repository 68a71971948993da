"""The demo's report: targets with pass/fail, the terminal table, Markdown, PNG plots, JSON.

Kept apart from :mod:`app.demo` (which measures) so that the report can be rebuilt from
``results.json`` and each file has one job.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from app.demo import DemoConfig, Results

PLOTS = ("accuracy_vs_T.png", "agreement_vs_T.png", "layer_error.png", "firing_rates.png", "synops.png")


@dataclass
class Target:
    """One target of issue #6, checked on the means over splits."""

    text: str
    passed: bool
    detail: str


def _pts(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.2f}"


def _gap(g: float) -> str:
    """A gap ANN - SNN in points, worded by its sign."""
    return f"{abs(100 * g):.2f} pt {'below' if g > 1e-9 else 'above' if g < -1e-9 else 'from'} ANN"


def _bridge_methods(res: Results, model: str) -> list[str]:
    return [m for m in res.methods(model) if not m.startswith("SJ ")]


def bridge_best(res: Results, model: str, t: int) -> float:
    """The best mean accuracy of any bridge method at T = ``t`` (nan where none was measured)."""
    vals = [res.mean(model, m, t) for m in _bridge_methods(res, model)]
    vals = [v for v in vals if not math.isnan(v)]
    return max(vals) if vals else float("nan")


def headline(res: Results, model: str, method: str = "default", within: float = 0.01) -> int | None:
    """The smallest T whose mean accuracy (``method``) is within ``within`` of the ANN's, or None."""
    ann = res.ann_mean(model)
    for t in res.steps:
        m = res.mean(model, method, t)
        if not math.isnan(m) and ann - m <= within + 1e-12:
            return t
    return None


def _models(res: Results, benchmark: str) -> list[str]:
    return [m for m in res.ann if res.benchmark_of.get(m, "digits") == benchmark]


def check_targets(res: Results) -> list[Target]:
    """The issues' targets (#6 on the digits, #12 on MNIST-1D), on mean accuracies (gaps in points)."""
    targets: list[Target] = []
    steps = res.steps
    digits = _models(res, "digits")
    clipped = [m for m in ("clip", "qcfs") if m in digits]

    def gap(model: str, method: str, t: int) -> float:
        return res.ann_mean(model) - res.mean(model, method, t)

    # --- digits (issue #6) ---
    for t, limit in ((4, 0.010), (8, 0.003)):
        if t not in steps or not clipped:
            continue
        gaps = {m: gap(m, "half", t) for m in clipped}
        best = min(gaps, key=gaps.get)
        targets.append(Target(
            f"digits theta/2, best of clipped/QCFS: T={t} within {100 * limit:.1f} pt of its ANN",
            gaps[best] <= limit + 1e-12,
            "; ".join(f"{m}: {_gap(g)}" for m, g in gaps.items())))
    if 8 in steps and clipped:
        agr = {m: res.mean(m, "half", 8, "agreement") for m in clipped}
        best = max(agr, key=agr.get)
        targets.append(Target("digits theta/2, best of clipped/QCFS: agreement with the ANN at T=8 >= 99.5%",
                              agr[best] >= 0.995, "; ".join(f"{m}: {_pts(a)}%" for m, a in agr.items())))
    low = [t for t in steps if t <= 16]
    for model in digits:
        if "zero" not in res.methods(model):
            continue
        worse = [t for t in low if res.mean(model, "half", t) < res.mean(model, "zero", t)]
        ties = [t for t in low if res.mean(model, "half", t) == res.mean(model, "zero", t)]
        targets.append(Target(
            f"{model}: theta/2 beats v_init 0 at every T <= 16", not worse,
            ("zero better at T=" + ",".join(map(str, worse))) if worse else
            ("equal at T=" + ",".join(map(str, ties)) if ties else "better at every T")))
    for model in ("relu", "clip"):
        if model not in digits:
            continue
        for t, limit in ((1, 0.02), (2, 0.005)):
            if t in steps:
                g = gap(model, "default", t)
                targets.append(Target(f"{model}: calibrated (default) T={t} within {100 * limit:.1f} pt of the ANN",
                                      g <= limit + 1e-12, _gap(g)))
    if "resnet" in digits and 4 in steps:
        per = {m: res.mean("resnet", m, 4) for m in _bridge_methods(res, "resnet")}
        per = {m: v for m, v in per.items() if not math.isnan(v)}
        best = max(per, key=per.get)
        targets.append(Target("resnet: >= 95% at T=4 (bridge's best setting)", per[best] >= 0.95,
                              "; ".join(f"{m}: {_pts(a)}%" for m, a in per.items())))
    # --- MNIST-1D (issue #12) ---
    for model in _models(res, "mnist1d"):
        relu = "relu" in model
        limits = ((2, 0.06), (4, 0.02), (8, 0.005)) if relu else ((2, 0.02), (4, 0.005))
        for t, limit in limits:
            if t in steps:
                g = gap(model, "default", t)
                targets.append(Target(f"{model}: default export T={t} within {100 * limit:.1f} pt of the ANN",
                                      g <= limit + 1e-12, _gap(g)))
        misses = []
        for t in steps:
            best, default = bridge_best(res, model, t), res.mean(model, "default", t)
            if not math.isnan(default) and best - default > 0.005 + 1e-12:
                misses.append(f"T={t}: {_pts(default)} vs best {_pts(best)}")
        targets.append(Target(f"{model}: default export within 0.5 pt of bridge's best at every T", not misses,
                              "; ".join(misses) if misses else "at every T"))
    # --- bridge vs SpikingJelly on the same ReLU weights (both benchmarks) ---
    for model in res.ann:
        sj_methods = [m for m in res.methods(model) if m.startswith("SJ ")]
        if not sj_methods:
            continue
        lost = []
        for t in steps:
            b = bridge_best(res, model, t)
            s = max(res.mean(model, m, t) for m in sj_methods)
            if not b > s:
                lost.append(f"T={t}: bridge {_pts(b)} vs SJ {_pts(s)}")
        targets.append(Target(f"{model}: bridge's best beats SJ ann2snn's best at every T in {steps[0]}..{steps[-1]}",
                              not lost, "; ".join(lost) if lost else "bridge ahead at every T"))
    return targets


def headlines(res: Results) -> list[tuple[str, str]]:
    """Per model: the smallest T within 1 point of the ANN, for the default export and for SJ's best."""
    out = []
    for model in res.ann:
        t = headline(res, model)
        text = f"T={t}" if t is not None else f"none up to T={res.steps[-1]}"
        sj_methods = [m for m in res.methods(model) if m.startswith("SJ ")]
        if sj_methods:
            best_sj = [headline(res, model, m) for m in sj_methods]
            best_sj = [b for b in best_sj if b is not None]
            text += f" (SJ ann2snn best: {'T=' + str(min(best_sj)) if best_sj else 'none'})"
        out.append((res.labels.get(model, model), text))
    return out


def table_rows(res: Results) -> tuple[list[str], list[list[str]]]:
    """Header and rows (mean ± std over splits, in %) of the accuracy table."""
    from app.demo import BRIDGE_METHODS, METHOD_LABELS, MODELS

    header = ["model", "method", "ANN"] + [f"T={t}" for t in res.steps]
    rows = []
    order = {m: i for i, m in enumerate(BRIDGE_METHODS)}
    for spec in MODELS:
        if spec.key not in res.ann:
            continue
        ann = res.ann[spec.key]
        ann_cell = f"{100 * np.mean(ann):.2f}±{100 * np.std(ann):.2f}"
        methods = sorted(res.methods(spec.key), key=lambda m: order.get(m, len(order)))
        for i, method in enumerate(methods):
            cells = []
            for t in res.steps:
                m = res.mean(spec.key, method, t)
                cells.append("-" if math.isnan(m) else f"{100 * m:.2f}±{100 * res.std(spec.key, method, t):.2f}")
            rows.append([spec.label if i == 0 else "", METHOD_LABELS.get(method, method),
                         ann_cell if i == 0 else ""] + cells)
        if not spec.relu:
            rows.append(["", "SJ ann2snn: not applicable (converts nn.ReLU only)", ""] +
                        ["n/a"] * len(res.steps))
    return header, rows


def print_table(res: Results, console) -> None:
    from rich.table import Table

    header, rows = table_rows(res)
    if not console.is_terminal:  # a log file: do not wrap the table at 80 columns
        console.width = max(console.width, 200)
    table = Table(title=f"Test accuracy (%) vs time-steps T, mean ± std over seeds ({_data_line(res)})")
    for h in header:
        table.add_column(h, justify="left" if h in ("model", "method") else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    h = Table(title="Headline: smallest T within 1 point of the ANN (default export)")
    h.add_column("model")
    h.add_column("smallest T")
    for label, text in headlines(res):
        h.add_row(label, text)
    console.print(h)
    c = Table(title="Calibration cost (mean over seeds): chosen stage, seconds, images")
    for col in ("model", "T", "chosen", "seconds", "images (held out)"):
        c.add_column(col)
    for row in calibration_rows(res):
        c.add_row(*row)
    console.print(c)
    t = Table(title="Targets (issues #6 and #12), on the means")
    for h_ in ("target", "result", "detail"):
        t.add_column(h_)
    for tg in check_targets(res):
        t.add_row(tg.text, "[green]pass[/green]" if tg.passed else "[red]FAIL[/red]", tg.detail)
    console.print(t)


def _data_line(res: Results) -> str:
    parts = []
    for bench, seeds in (res.benchmark_seeds or {"digits": res.seeds}).items():
        what = "digits, 360 test images" if bench == "digits" else "MNIST-1D, 1000 test signals"
        parts.append(f"{what}, {len(seeds)} seed(s)")
    return "; ".join(parts)


def calibration_rows(res: Results) -> list[list[str]]:
    """Per model and T: the stage the pipeline chose (per seed), mean seconds, images."""
    rows = []
    for model, per_t in res.calibration.items():
        for t, runs in per_t.items():
            chosen = ",".join(r["chosen"] for r in runs)
            rows.append([res.labels.get(model, model), "any" if t == "any" else t, chosen,
                         f"{np.mean([r['seconds'] for r in runs]):.1f}",
                         f"{runs[0]['images']} ({runs[0]['heldout']})"])
    return rows


def summary_line(res: Results) -> str:
    """One line: how many targets passed, and the failed ones."""
    tg = check_targets(res)
    failed = [t.text for t in tg if not t.passed]
    head = f"targets: {len(tg) - len(failed)}/{len(tg)} passed"
    return head + (f"; FAILED: {'; '.join(failed)}" if failed else "")


def _grid(plt, n: int, cols: int = 4):
    """A figure with ``n`` panels, ``cols`` per row; returns the figure and the flat list of used axes."""
    rows = max(1, -(-n // cols))
    cols = min(cols, max(n, 1))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _plots(res: Results, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from app.demo import METHOD_LABELS, MODELS

    models = [s for s in MODELS if s.key in res.ann]
    for table, fname, ylabel in (("accuracy", PLOTS[0], "test accuracy (%)"),
                                 ("agreement", PLOTS[1], "agreement with the ANN (%)")):
        fig, axes = _grid(plt, len(models))
        for ax, spec in zip(axes, models):
            for method in res.methods(spec.key):
                ts = [t for t in res.steps if not math.isnan(res.mean(spec.key, method, t, table))]
                m = np.array([100 * res.mean(spec.key, method, t, table) for t in ts])
                s = np.array([100 * res.std(spec.key, method, t, table) for t in ts])
                style = "--" if method.startswith("SJ ") else "-"
                ax.errorbar(ts, m, yerr=s, fmt=style, marker="o", ms=3, capsize=2,
                            label=METHOD_LABELS.get(method, method).replace("SJ ann2snn ", "SJ "))
            if table == "accuracy":
                ax.axhline(100 * res.ann_mean(spec.key), color="k", lw=0.8, ls=":", label="ANN")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("time-steps T")
            ax.set_title(spec.label, fontsize=9)
            ax.set_ylim(max(0, ax.get_ylim()[0]), 100.5)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        axes[0].set_ylabel(ylabel)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
    for key_prefix, fname, ylabel in (("error_", PLOTS[2], "mean |rate output - ANN| / theta"),
                                      ("rate_", PLOTS[3], "spikes per neuron per step"),
                                      ("synops_", PLOTS[4], "synaptic ops per inference")):
        fig, axes = _grid(plt, len(models))
        for ax, spec in zip(axes, models):
            rows = [r for r in res.layers.get(spec.key, []) if f"{key_prefix}half" in r]
            if key_prefix != "synops_":
                rows = [r for r in rows if "neurons" in r]
            names = [r["layer"] for r in rows]
            xs = np.arange(len(rows))
            for j, method in enumerate(("half", "optimized")):
                ax.bar(xs + 0.4 * j - 0.2, [r[f"{key_prefix}{method}"] for r in rows], width=0.4,
                       label="theta/2" if method == "half" else "calibrated for T=4")
            ax.set_xticks(xs, names, rotation=60, fontsize=6, ha="right")
            ax.set_title(spec.label, fontsize=9)
            ax.legend(fontsize=6)
            if key_prefix == "synops_":
                ann = [r.get("ann_macs") for r in res.layers.get(spec.key, []) if "ann_macs" in r]
                if ann:
                    ax.set_title(f"{spec.label}\n(ANN: {ann[0]:.3g} MACs)", fontsize=8)
        axes[0].set_ylabel(ylabel)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)


def markdown(res: Results, config: DemoConfig) -> str:
    header, rows = table_rows(res)
    lines = [
        "# bridge demo report",
        "",
        f"{_data_line(res)}. Numbers are mean ± std over seeds, in %. "
        f"Run time {res.seconds:.0f} s{' (--quick)' if config.quick else ''}"
        f"{f', {res.workers} worker processes' if res.workers > 1 else ''}.",
        "",
        "Methods: *v_init 0* and *v_init theta/2*: the converted graph with that initial potential, "
        "simulated once for all T by the reference simulator; the calibration stages "
        "(`bridge.passes.pipeline`, fitted per T on training images, each kept only if it lowers the "
        "error on held-out training images; a row shows the best graph so far after that stage): "
        "*+ v_init/threshold search* (`bridge.passes.optimize`), *+ bias correction* "
        "(`bridge.passes.bias_correction`), *+ joint fit* and *+ weight calibration* "
        "(`bridge.passes.joint_fit`); *default export for T*: the pipeline's choice, what "
        "`bridge export --calibration DATA --timesteps T` writes; *default export, no --timesteps*: "
        "the any-T setting; *SJ ann2snn*: SpikingJelly 2.0's own converter on the same plain-ReLU weights.",
        "",
        "## Accuracy vs T",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "## Headline: smallest T within 1 point of the ANN", "", "| model | smallest T |", "|---|---|"]
    lines += [f"| {label} | {text} |" for label, text in headlines(res)]
    lines += ["", "## Calibration cost", "", "| model | T | chosen stage (per seed) | seconds | images (held out) |",
              "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in calibration_rows(res)]
    lines += ["", "![accuracy](accuracy_vs_T.png)", "", "![agreement](agreement_vs_T.png)", "",
              "## Targets", "", summary_line(res), "", "| target | result | detail |", "|---|---|---|"]
    lines += [f"| {t.text} | {'pass' if t.passed else '**FAIL**'} | {t.detail} |" for t in check_targets(res)]
    lines += ["", "## Per layer (first split)", "",
              "Conversion error at T=4 (theta/2 vs the default export for T=4): mean |theta' N/T - clip(z, 0, theta)| / mean theta of each IF layer "
              "against the ANN view; firing rate: spikes per neuron per step; SynOps: spikes x fan-out "
              "per inference (the input layer's analog MACs counted once).", ""]
    for model, layer_rows in res.layers.items():
        lines += [f"### {model}", "", "| layer | error theta/2 | error calibrated | rate theta/2 | "
                  "rate calibrated | SynOps theta/2 | SynOps calibrated |", "|---|---|---|---|---|---|---|"]
        for r in layer_rows:
            if "neurons" in r:
                lines.append(f"| {r['layer']} | {r['error_half']:.4f} | {r['error_optimized']:.4f} | "
                             f"{r['rate_half']:.3f} | {r['rate_optimized']:.3f} | {r['synops_half']:.3g} | "
                             f"{r['synops_optimized']:.3g} |")
            else:
                lines.append(f"| {r['layer']} | | | | | {r['synops_half']:.3g} | {r['synops_optimized']:.3g} |")
                tot_h = sum(x["synops_half"] for x in layer_rows)
                tot_o = sum(x["synops_optimized"] for x in layer_rows)
                lines.append(f"| total (ANN: {r['ann_macs']:.3g} MACs) | | | | | {tot_h:.3g} | {tot_o:.3g} |")
        lines.append("")
    lines += ["![layer error](layer_error.png)", "", "![firing rates](firing_rates.png)", "",
              "![synops](synops.png)", "", "## Exported models and validation (first split)", "",
              "Each model's NIR file and its SpikingJelly and Norse artifacts are under `models/<model>/`; "
              "`validation.validate` compares every spike of every IF layer at every step with the "
              "reference simulator (float64).", "",
              "| model | backend | status | spike agreement | unexplained mismatches |", "|---|---|---|---|---|"]
    for model, v in res.validation.items():
        for name, b in v["backends"].items():
            lines.append(f"| {model} | {name} | {b['status']} | {100 * b['spike_agreement']:.4f}% | {b['unexplained']} |")
    lines += ["", "Training time per model (s, mean over splits): " +
              ", ".join(f"{k} {np.mean(v):.1f}" for k, v in res.train_seconds.items()),
              "", _time_line(res), ""]
    return "\n".join(lines)


def _time_line(res: Results) -> str:
    where = ", ".join(f"{k} {v:.1f}" for k, v in res.stage_seconds.items())
    if res.workers > 1:
        return (f"Where the time went (s, summed over the {res.workers} worker processes that ran the "
                f"jobs side by side; wall time {res.seconds:.0f} s): {where}")
    return f"Where the run time went (s): {where}"


def write_report(res: Results, config: DemoConfig, out: Path) -> None:
    """Write report.md, the PNG plots and results.json into ``out``."""
    from bridge.format.nirio import write_with

    _plots(res, out)
    data = res.to_dict()
    data["targets"] = [t.__dict__ for t in check_targets(res)]
    write_with(out / "results.json", lambda p: p.write_text(json.dumps(data, indent=2)), force=True)
    write_with(out / "report.md", lambda p: p.write_text(markdown(res, config)), force=True)
