"""Presenting a :class:`~validation.suite.ValidationReport`: terminal tables (rich),
Markdown, and PNG plots (matplotlib, Agg): accuracy vs T per backend, a per-layer spike
agreement heat map, per-layer firing rates."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from bridge.format.errors import BridgeError

if TYPE_CHECKING:
    from rich.console import Console

    from validation.suite import BackendReport, ValidationReport

PLOTS = {"accuracy": "accuracy_vs_T.png", "agreement": "layer_agreement.png", "rates": "firing_rates.png"}


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


def _num(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def _status(b: BackendReport) -> str:
    return "measured" if b.status == "ok" and not b.faithful else b.status


def _curve(b: BackendReport, what: str) -> dict[int, float] | None:
    if b.accuracy is None:
        return None
    return b.accuracy.accuracy() if what == "accuracy" else b.accuracy.ann_agreement()


def _ann_accuracy(report: ValidationReport) -> float | None:
    """The ANN's accuracy on the same samples (None without labels or without an ANN view)."""
    curve = report.reference.accuracy
    return None if curve is None else curve.ann_accuracy()


#: what "ANN" means in validate: the graph itself with every IF neuron as its rate function
ANN_MEANING = "the graph with every IF neuron replaced by clip(I / theta, 0, 1)"


def _with_curves(report: ValidationReport) -> list[BackendReport]:
    """The backends with an accuracy curve, the reference first (once)."""
    listed = any(b.name == "reference" for b in report.backends)
    return [b for b in ([] if listed else [report.reference]) + report.backends
            if _curve(b, "accuracy") is not None or _curve(b, "agreement") is not None]


def _curve_rows(b: BackendReport) -> list[tuple[str, dict[int, float]]]:
    """(measure, curve) rows of one backend: accuracy on the labels, agreement with the ANN."""
    rows = []
    for what, label in (("accuracy", "accuracy"), ("agreement", "same class as the ANN")):
        curve = _curve(b, what)
        if curve is not None:
            rows.append((label, curve))
    return rows


# -- terminal ------------------------------------------------------------------------------
def render(report: ValidationReport, console: Console) -> None:
    """Tables: one summary row per backend, then one table per compared backend and layer."""
    from rich.table import Table

    summary = Table(title=f"bridge validate: {report.samples} samples, T = {report.steps}, "
                          f"{report.dtype}, {report.semantics}",
                    caption="against the reference, every neuron and step: agree = same spike; first "
                            "divergence = layer and step of the first other spike; unexpl. = differences "
                            "no rounding tie explains; max|dv| = largest potential difference before a "
                            "divergence; same pred = same predicted class; acc = accuracy on the labels",
                    caption_justify="left")
    for col in ("backend", "status", "agree", "first divergence", "unexpl.",
                "max|dv|", "same pred", f"acc T={report.steps}"):
        summary.add_column(col)
    listed = any(b.name == "reference" for b in report.backends)
    for b in ([] if listed else [report.reference]) + report.backends:
        c = b.comparison
        acc = _curve(b, "accuracy")
        first = c.first_divergence if c else None
        total = sum(l.neuron_steps for l in c.layers.values()) if c else 0
        agree = (1 - sum(l.mismatches for l in c.layers.values()) / total) if c and total else None
        vmax = max((l.max_v_diff for l in c.layers.values() if l.max_v_diff is not None), default=None) if c else None
        summary.add_row(
            b.name,
            _status(b) if b is not report.reference else "-",
            _pct(agree), f"{first[0]} {first[1]}" if first else ("none" if c else "-"),
            str(c.unexplained) if c else "-", _num(vmax),
            _pct(c.outputs.prediction_agreement) if c else "-",
            _pct(acc[report.steps]) if acc and report.steps in acc else "-",
        )
    ann = _ann_accuracy(report)
    if ann is not None:
        summary.add_row("ANN", "-", "-", "-", "-", "-", "-", _pct(ann))
    console.print(summary)
    for b in report.backends:
        if b.message:
            console.print(f"[bold]{b.name}[/bold]: {b.message}")
        if b.comparison is None or b.name == "reference":
            continue
        t = Table(title=f"{b.name}: per layer (tie epsilon {b.comparison.relative_epsilon:g} x max(1, |theta|))")
        for col in ("layer", "neurons", "agree", "ties", "propag.", "unexpl.",
                    "first divergence", "max|dv|", "rate", "ref rate"):
            t.add_column(col)
        for name, l in b.comparison.layers.items():
            t.add_row(name, str(l.neurons), _pct(l.agreement), str(l.ties), str(l.propagated),
                      f"[red]{l.unexplained}[/red]" if l.unexplained and b.faithful else str(l.unexplained),
                      str(l.first_divergence) if l.first_divergence else "none", _num(l.max_v_diff),
                      f"{l.firing_rate:.3f}", f"{l.ref_firing_rate:.3f}")
        console.print(t)
    with_ann = ann is not None or any(_curve(b, "agreement") for b in _with_curves(report))
    acc_table = Table(title="accuracy and agreement with the ANN vs T",
                      caption="accuracy: on the labels; same class as the ANN: the share of samples given "
                              f"the ANN's class; ANN: {ANN_MEANING} (no T)" if with_ann else None,
                      caption_justify="left")
    acc_table.add_column("backend")
    acc_table.add_column("measure")
    for ts in report.timesteps:
        acc_table.add_column(f"T={ts}", justify="right")
    if ann is not None:
        acc_table.add_row("ANN", "accuracy", *[_pct(ann)] * len(report.timesteps), end_section=True)
    for b in _with_curves(report):
        rows = _curve_rows(b)
        for i, (measure, curve) in enumerate(rows):
            acc_table.add_row(b.name if i == 0 else "", measure,
                              *[_pct(curve.get(ts)) for ts in report.timesteps], end_section=i == len(rows) - 1)
    console.print(acc_table)
    for note in report.notes:
        console.print(f"note: {note}")


# -- markdown ------------------------------------------------------------------------------
def markdown(report: ValidationReport, images: dict[str, str]) -> str:
    """The whole report as Markdown (``images``: plot kind -> relative file name)."""
    lines = [
        "# bridge validation report", "",
        f"- samples: {report.samples}, T = {report.steps}, dtype {report.dtype}, semantics: {report.semantics}",
        f"- result: **{'PASS' if report.ok else 'FAIL'}**",
        *([f"- ANN accuracy: {_pct(_ann_accuracy(report))} ({ANN_MEANING})"]
          if _ann_accuracy(report) is not None else []), "",
        "A mismatch is a neuron-step whose spike differs from the reference's. *tie*: the reference's "
        "pre-reset potential was within epsilon of the threshold (a rounding tie); *propagated*: the sample "
        "had already diverged upstream or earlier in that neuron; *unexplained*: anything else (a semantic "
        "difference; fails a faithful backend).", "",
        "| backend | faithful | status | spike agreement | first divergence | unexplained | max abs v diff | "
        "same prediction | max readout diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b in report.backends:
        c = b.comparison
        if c is None:
            lines.append(f"| {b.name} | {b.faithful} | {b.status}: {b.message or ''} | - | - | - | - | - | - |")
            continue
        total = sum(l.neuron_steps for l in c.layers.values())
        agree = 1 - sum(l.mismatches for l in c.layers.values()) / total if total else None
        first = c.first_divergence
        vmax = max((l.max_v_diff for l in c.layers.values() if l.max_v_diff is not None), default=None)
        lines.append(
            f"| {b.name} | {b.faithful} | {_status(b)} | {_pct(agree)} | "
            f"{f'{first[0]} {first[1]}' if first else 'none'} | {c.unexplained} | {_num(vmax)} | "
            f"{_pct(c.outputs.prediction_agreement)} | {_num(c.outputs.max_readout_diff)} |")
    for b in report.backends:
        if b.comparison is None or not b.comparison.layers:
            continue
        lines += ["", f"## {b.name}: per layer", "",
                  f"Tie epsilon: {b.comparison.relative_epsilon:g} x max(1, |theta|).", "",
                  "| layer | neurons | agreement | ties | propagated | unexplained | first divergence | "
                  "max abs v diff (before divergence) | firing rate | reference rate |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, l in b.comparison.layers.items():
            lines.append(f"| {name} | {l.neurons} | {_pct(l.agreement)} | {l.ties} | {l.propagated} | "
                         f"{l.unexplained} | {l.first_divergence or 'none'} | {_num(l.max_v_diff)} | "
                         f"{l.firing_rate:.4f} | {l.ref_firing_rate:.4f} |")
        if b.comparison.unobserved:
            lines.append(f"\nNot observed by this backend: {', '.join(b.comparison.unobserved)}.")
    lines += ["", "## Accuracy and agreement with the ANN vs T", "",
              "*accuracy*: on the labels; *same class as the ANN*: the share of samples whose predicted class "
              f"is the ANN's ({ANN_MEANING}; the ANN has no T).", "",
              "| backend | measure | " + " | ".join(f"T={t}" for t in report.timesteps) + " |",
              "|---|---|" + "---|" * len(report.timesteps)]
    ann = _ann_accuracy(report)
    if ann is not None:
        lines.append("| ANN | accuracy | " + " | ".join(_pct(ann) for _ in report.timesteps) + " |")
    for b in _with_curves(report):
        for i, (measure, curve) in enumerate(_curve_rows(b)):
            lines.append(f"| {b.name if i == 0 else ''} | {measure} | "
                         + " | ".join(_pct(curve.get(t)) for t in report.timesteps) + " |")
    for kind, title in (("accuracy", "Accuracy vs T"), ("agreement", "Per-layer spike agreement"),
                        ("rates", "Per-layer firing rates")):
        if kind in images:
            lines += ["", f"## {title}", "", f"![{title}]({images[kind]})"]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


# -- plots ---------------------------------------------------------------------------------
#: one look per curve (marker, line style, line width, marker size): drawn in order, each
#: thinner than the last, so curves that coincide all stay visible
_LOOKS = [("o", "-", 3.2, 10), ("s", "--", 2.4, 8), ("^", ":", 2.0, 7), ("D", "-.", 1.6, 6),
          ("v", (0, (5, 1)), 1.3, 5), ("x", (0, (1, 1)), 1.1, 5), ("P", (0, (3, 1, 1, 1)), 1.0, 4)]


def figure(report: ValidationReport, kind: str):
    """One plot as a matplotlib Figure (Agg), None when there is nothing to draw. The caller
    closes it (:func:`plot` saves and closes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    try:
        drawn = {"accuracy": _accuracy_plot, "agreement": _agreement_plot, "rates": _rates_plot}[kind](
            report, fig, ax)
    except BaseException:
        plt.close(fig)
        raise
    if not drawn:
        plt.close(fig)
        return None
    ax.set_title({"accuracy": "accuracy vs T", "agreement": "per-layer spike agreement",
                  "rates": "per-layer firing rates"}[kind])
    fig.tight_layout()
    return fig


def plot(report: ValidationReport, kind: str, path: Path) -> bool:
    """Draw one plot into ``path`` (PNG); False when there is nothing to draw."""
    import matplotlib.pyplot as plt

    fig = figure(report, kind)
    if fig is None:
        return False
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return True


def _accuracy_plot(report: ValidationReport, fig, ax) -> bool:
    """Accuracy vs T per backend (agreement with the ANN when there are no labels), the ANN's
    accuracy as a horizontal line; a curve equal to an earlier one says so in the legend."""
    labelled = bool(report.reference.accuracy and report.reference.accuracy.labelled)
    what = "accuracy" if labelled else "agreement"
    drawn: list[tuple[str, dict[int, float]]] = []
    for b in _with_curves(report):
        curve = _curve(b, what)
        if not curve:
            continue
        marker, style, width, size = _LOOKS[len(drawn) % len(_LOOKS)]
        same = next((name for name, other in drawn if other == curve), None)
        ax.plot(list(curve), [100 * v for v in curve.values()], marker=marker, linestyle=style,
                linewidth=width, markersize=size, markerfacecolor="none", markeredgewidth=1.5,
                label=b.name + (f" (= {same})" if same else ""), zorder=2 + len(drawn))
        drawn.append((b.name, curve))
    if not drawn:
        return False
    ann = _ann_accuracy(report)
    if labelled and ann is not None:
        ax.axhline(100 * ann, color="black", linestyle=(0, (6, 3)), linewidth=1.2,
                   label=f"ANN ({_pct(ann)}, no T)", zorder=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(report.timesteps, [str(t) for t in report.timesteps])
    ax.set_xlabel("time-steps T")
    ax.set_ylabel("accuracy (%)" if labelled else "same class as the ANN (%)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.grid(alpha=0.3)
    return True


def _compared(report: ValidationReport) -> list[BackendReport]:
    return [b for b in report.backends if b.comparison is not None and b.comparison.layers]


def _agreement_plot(report: ValidationReport, fig, ax) -> bool:
    import numpy as np

    compared = _compared(report)
    if not compared:
        return False
    data = np.array([[100 * b.comparison.layers[l].agreement if l in b.comparison.layers else np.nan
                      for l in report.layers] for b in compared])
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=min(90.0, float(np.nanmin(data))), vmax=100)
    ax.set_yticks(range(len(compared)), [b.name for b in compared])
    ax.set_xticks(range(len(report.layers)), report.layers, rotation=45, ha="right")
    fig.colorbar(im, ax=ax, label="spike agreement (%)")
    for (i, j), v in np.ndenumerate(data):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="white" if v < 97 else "black")
    return True


def _rates_plot(report: ValidationReport, fig, ax) -> bool:
    """Per layer, the reference's firing rate and each other backend's, side by side; the
    legend sits outside the axes, where it covers no bar."""
    import numpy as np

    compared = _compared(report)
    if not compared:
        return False
    base = compared[0].comparison  # every comparison holds the same reference rates
    others = [b for b in compared if b.name != "reference"]  # the reference is the first bar
    xs = np.arange(len(report.layers))
    width = 0.8 / (len(others) + 1)
    ax.bar(xs, [base.layers[l].ref_firing_rate if l in base.layers else np.nan for l in report.layers],
           width, label="reference")
    for i, b in enumerate(others, 1):
        ax.bar(xs + i * width, [b.comparison.layers[l].firing_rate if l in b.comparison.layers else np.nan
                                for l in report.layers], width, label=b.name)
    ax.set_xticks(xs + width * len(others) / 2, report.layers, rotation=45, ha="right")
    ax.set_ylabel("spikes per neuron per step")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return True


def write_report(report: ValidationReport, folder: str | Path, *, force: bool = False) -> Path:
    """Write ``report.md`` and its PNG plots into ``folder`` (created if missing).

    Existing files are replaced only with ``force``; each file is written atomically.
    """
    from bridge.format.nirio import atomic_path, check_output_path

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BridgeError(f"{folder} exists and is not a folder; choose another --report path")
    if not folder.parent.exists():
        raise BridgeError(f"the folder {folder.parent} does not exist; create it first")
    folder.mkdir(exist_ok=True)
    targets = [folder / "report.md", *(folder / n for n in PLOTS.values())]
    for t in targets:
        check_output_path(t, force=force)
    images: dict[str, str] = {}
    for kind, name in PLOTS.items():
        try:
            with atomic_path(folder / name, ".png") as tmp:
                if not plot(report, kind, tmp):
                    raise _Skip  # nothing to draw: leave no (empty) file behind
            images[kind] = name
        except _Skip:
            pass
    md = folder / "report.md"
    with atomic_path(md, ".md") as tmp:
        tmp.write_text(markdown(report, images))
    for t in targets:
        if t.exists():
            default_mode(t)
    return md


def default_mode(path: Path) -> None:
    """Give ``path`` the mode a plain ``open()`` would (atomic_path's temp files are 0600)."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


class _Skip(Exception):
    pass
