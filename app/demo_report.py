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


def check_targets(res: Results) -> list[Target]:
    """The issue's targets, evaluated on mean accuracies (gaps in percentage points)."""
    from app.demo import BRIDGE_METHODS

    targets: list[Target] = []
    steps = res.steps
    clipped = [m for m in ("clip", "qcfs") if m in res.ann]

    def gap(model: str, method: str, t: int) -> float:
        return res.ann_mean(model) - res.mean(model, method, t)

    for t, limit in ((4, 0.010), (8, 0.003)):
        if t not in steps or not clipped:
            continue
        gaps = {m: gap(m, "half", t) for m in clipped}
        best = min(gaps, key=gaps.get)
        targets.append(Target(
            f"theta/2, best of clipped/QCFS: T={t} within {100 * limit:.1f} pt of its ANN",
            gaps[best] <= limit + 1e-12,
            "; ".join(f"{m}: {_gap(g)}" for m, g in gaps.items())))
    if 8 in steps and clipped:
        agr = {m: res.mean(m, "half", 8, "agreement") for m in clipped}
        best = max(agr, key=agr.get)
        targets.append(Target("theta/2, best of clipped/QCFS: agreement with the ANN at T=8 >= 99.5%",
                              agr[best] >= 0.995, "; ".join(f"{m}: {_pts(a)}%" for m, a in agr.items())))
    low = [t for t in steps if t <= 16]
    for model in res.ann:
        worse = [t for t in low if res.mean(model, "half", t) < res.mean(model, "zero", t)]
        ties = [t for t in low if res.mean(model, "half", t) == res.mean(model, "zero", t)]
        targets.append(Target(
            f"{model}: theta/2 beats v_init 0 at every T <= 16", not worse,
            ("zero better at T=" + ",".join(map(str, worse))) if worse else
            ("equal at T=" + ",".join(map(str, ties)) if ties else "better at every T")))
    for model in ("relu", "clip"):
        if model not in res.ann:
            continue
        for t, limit in ((1, 0.02), (2, 0.005)):
            if t in steps:
                g = gap(model, "optimized", t)
                targets.append(Target(f"{model}: optimized T={t} within {100 * limit:.1f} pt of the ANN",
                                      g <= limit + 1e-12, _gap(g)))
    if "resnet" in res.ann and 4 in steps:
        per = {m: res.mean("resnet", m, 4) for m in BRIDGE_METHODS if m in res.methods("resnet")}
        best = max(per, key=per.get)
        targets.append(Target("resnet: >= 95% at T=4 (bridge's best setting)", per[best] >= 0.95,
                              "; ".join(f"{m}: {_pts(a)}%" for m, a in per.items())))
    if "relu" in res.ann:
        sj_methods = [m for m in res.methods("relu") if m.startswith("SJ ")]
        bridge_methods = [m for m in res.methods("relu") if not m.startswith("SJ ")]
        if sj_methods:
            lost = []
            for t in low:
                b = max(res.mean("relu", m, t) for m in bridge_methods)
                s = max(res.mean("relu", m, t) for m in sj_methods)
                if not b > s:
                    lost.append(f"T={t}: bridge {_pts(b)} vs SJ {_pts(s)}")
            targets.append(Target("same ReLU weights: bridge's best beats SJ ann2snn's best at every T <= 16",
                                  not lost, "; ".join(lost) if lost else "bridge ahead at every T"))
    return targets


def table_rows(res: Results) -> tuple[list[str], list[list[str]]]:
    """Header and rows (mean ± std over splits, in %) of the accuracy table."""
    from app.demo import METHOD_LABELS, MODELS

    header = ["model", "method", "ANN"] + [f"T={t}" for t in res.steps]
    rows = []
    for spec in MODELS:
        if spec.key not in res.ann:
            continue
        ann = res.ann[spec.key]
        ann_cell = f"{100 * np.mean(ann):.2f}±{100 * np.std(ann):.2f}"
        methods = res.methods(spec.key)
        for i, method in enumerate(methods):
            cells = []
            for t in res.steps:
                m = res.mean(spec.key, method, t)
                cells.append("-" if math.isnan(m) else f"{100 * m:.2f}±{100 * res.std(spec.key, method, t):.2f}")
            rows.append([spec.label if i == 0 else "", METHOD_LABELS.get(method, method),
                         ann_cell if i == 0 else ""] + cells)
        if spec.key != "relu":
            rows.append(["", "SJ ann2snn: not applicable (converts nn.ReLU only)", ""] +
                        ["n/a"] * len(res.steps))
    return header, rows


def print_table(res: Results, console) -> None:
    from rich.table import Table

    header, rows = table_rows(res)
    if not console.is_terminal:  # a log file: do not wrap the table at 80 columns
        console.width = max(console.width, 200)
    table = Table(title=f"Test accuracy (%) vs time-steps T, mean ± std over {len(res.seeds)} split(s) "
                        f"of the digits (360 test images each)")
    for h in header:
        table.add_column(h, justify="left" if h in ("model", "method") else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    t = Table(title="Targets (issue #6), on the means")
    for h in ("target", "result", "detail"):
        t.add_column(h)
    for tg in check_targets(res):
        t.add_row(tg.text, "[green]pass[/green]" if tg.passed else "[red]FAIL[/red]", tg.detail)
    console.print(t)


def _plots(res: Results, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from app.demo import METHOD_LABELS, MODELS

    models = [s for s in MODELS if s.key in res.ann]
    for table, fname, ylabel in (("accuracy", PLOTS[0], "test accuracy (%)"),
                                 ("agreement", PLOTS[1], "agreement with the ANN (%)")):
        fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
        for ax, spec in zip(axes[0], models):
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
        axes[0][0].set_ylabel(ylabel)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
    for key_prefix, fname, ylabel in (("error_", PLOTS[2], "mean |rate output - ANN| / theta"),
                                      ("rate_", PLOTS[3], "spikes per neuron per step"),
                                      ("synops_", PLOTS[4], "synaptic ops per inference")):
        fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
        for ax, spec in zip(axes[0], models):
            rows = [r for r in res.layers.get(spec.key, []) if f"{key_prefix}half" in r]
            if key_prefix != "synops_":
                rows = [r for r in rows if "neurons" in r]
            names = [r["layer"] for r in rows]
            xs = np.arange(len(rows))
            for j, method in enumerate(("half", "optimized")):
                ax.bar(xs + 0.4 * j - 0.2, [r[f"{key_prefix}{method}"] for r in rows], width=0.4,
                       label=METHOD_LABELS[method])
            ax.set_xticks(xs, names, rotation=60, fontsize=6, ha="right")
            ax.set_title(spec.label, fontsize=9)
            ax.legend(fontsize=6)
            if key_prefix == "synops_":
                ann = [r.get("ann_macs") for r in res.layers.get(spec.key, []) if "ann_macs" in r]
                if ann:
                    ax.set_title(f"{spec.label}\n(ANN: {ann[0]:.3g} MACs)", fontsize=8)
        axes[0][0].set_ylabel(ylabel)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)


def markdown(res: Results, config: DemoConfig) -> str:
    header, rows = table_rows(res)
    lines = [
        "# bridge demo report",
        "",
        f"Digits (scikit-learn, upsampled to 16x16), {len(res.seeds)} split(s) `digits_split(seed)`, "
        f"seeds {res.seeds}; 360 test images per split. Numbers are mean ± std over splits, in %. "
        f"Run time {res.seconds:.0f} s{' (--quick)' if config.quick else ''}.",
        "",
        "Methods: *v_init 0* and *v_init theta/2*: the converted graph with that initial potential, "
        "simulated once for all T by the reference simulator; *optimized*: thresholds and initial "
        "potentials fitted per channel on training images for each T (`bridge.passes.optimize`); "
        "*SJ ann2snn*: SpikingJelly 2.0's own converter on the same plain-ReLU weights.",
        "",
        "## Accuracy vs T",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "![accuracy](accuracy_vs_T.png)", "", "![agreement](agreement_vs_T.png)", "",
              "## Targets", "", "| target | result | detail |", "|---|---|---|"]
    lines += [f"| {t.text} | {'pass' if t.passed else '**FAIL**'} | {t.detail} |" for t in check_targets(res)]
    lines += ["", "## Per layer (first split)", "",
              "Conversion error: mean |theta' N/T - clip(z, 0, theta)| / mean theta of each IF layer "
              "against the ANN view; firing rate: spikes per neuron per step; SynOps: spikes x fan-out "
              "per inference (the input layer's analog MACs counted once).", ""]
    for model, layer_rows in res.layers.items():
        lines += [f"### {model}", "", "| layer | error theta/2 | error optimized | rate theta/2 | "
                  "rate optimized | SynOps theta/2 | SynOps optimized |", "|---|---|---|---|---|---|---|"]
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
              "", "Where the run time went (s): " +
              ", ".join(f"{k} {v:.1f}" for k, v in res.stage_seconds.items()), ""]
    return "\n".join(lines)


def write_report(res: Results, config: DemoConfig, out: Path) -> None:
    """Write report.md, the PNG plots and results.json into ``out``."""
    from bridge.format.nirio import write_with

    _plots(res, out)
    data = res.to_dict()
    data["targets"] = [t.__dict__ for t in check_targets(res)]
    write_with(out / "results.json", lambda p: p.write_text(json.dumps(data, indent=2)), force=True)
    write_with(out / "report.md", lambda p: p.write_text(markdown(res, config)), force=True)
