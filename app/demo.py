"""``bridge demo``: train, convert, export, validate and report accuracy vs latency on digits.

For each data split (``digits_split(seed)``) the demo

1. trains four small models (:mod:`bridge.model.train`): a CNN with the trainable clipped ReLU, the
   same CNN with QCFS, a plain-ReLU baseline and a small ResNet with clipped ReLUs;
2. converts each to NIR (:func:`bridge.converter.convert`) and, on the first split, writes the
   NIR file, the SpikingJelly and Norse artifacts (:func:`exporters.write_artifact`) and
   validates both exporters against the reference simulator (:func:`validation.validate`);
3. measures accuracy at T in 1, 2, 4, ..., 64 with the reference simulator for the initial
   potentials 0, theta/2 and optimised (:func:`bridge.passes.optimize.optimize_initial_potentials`,
   fitted per T on training images), and SpikingJelly's own ann2snn converter on the same
   plain-ReLU weights (:mod:`app.ann2snn_baseline`);
4. writes a report folder (Markdown, PNG plots, results.json) and prints the table.

Every number is a mean over the splits with its standard deviation; the targets of issue #6
are checked on the means and printed with pass/fail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nir
import numpy as np
import torch
from torch import nn

from app import ann2snn_baseline as sj
from bridge.data.datasets import Split, digits_split
from bridge.format.errors import BridgeError
from bridge.model.train import DigitsCNN, DigitsResNet, train_model

INPUT_SHAPE = (1, 16, 16)
FULL_STEPS = (1, 2, 4, 8, 16, 32, 64)
QUICK_STEPS = (1, 2, 4, 8, 16)
BRIDGE_METHODS = ("zero", "half", "optimized")
METHOD_LABELS = {"zero": "v_init 0", "half": "v_init theta/2", "optimized": "optimized"}


@dataclass(frozen=True)
class ModelSpec:
    """One model of the demo: how to build it and how long to train it."""

    key: str
    label: str
    build: Callable[[], nn.Module]
    epochs: int


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("clip", "CNN, clipped ReLU", lambda: DigitsCNN("clip"), 20),
    ModelSpec("qcfs", "CNN, QCFS (L=4)", lambda: DigitsCNN("qcfs", levels=4), 20),
    ModelSpec("relu", "CNN, plain ReLU", lambda: DigitsCNN("relu"), 20),
    ModelSpec("resnet", "ResNet, clipped ReLU", lambda: DigitsResNet("clip"), 10),
)


@dataclass
class DemoConfig:
    """What the demo runs. ``quick`` trades spread and range for time (tests, first look)."""

    out: Path = Path("bridge-demo")
    seeds: int = 3
    quick: bool = False
    force: bool = False
    steps: tuple[int, ...] = FULL_STEPS
    calibration_samples: int = 256
    epochs_scale: float = 1.0
    sj_settings: tuple[sj.SJSetting, ...] = sj.SETTINGS
    export_and_validate: bool = True

    @classmethod
    def make(cls, out: str | Path = "bridge-demo", seeds: int = 3, quick: bool = False,
             force: bool = False) -> DemoConfig:
        if seeds < 1:
            raise BridgeError(f"--seeds must be >= 1, got {seeds}")
        if quick:
            return cls(Path(out), seeds, True, force, QUICK_STEPS, 128, 0.5,
                       tuple(s for s in sj.SETTINGS if s.mode == "99.9%"))
        return cls(Path(out), seeds, False, force)


# --- results --------------------------------------------------------------------------------

@dataclass
class Results:
    """All numbers of a demo run: lists over seeds (fractions in [0, 1])."""

    steps: tuple[int, ...]
    seeds: list[int]
    ann: dict[str, list[float]] = field(default_factory=dict)
    # accuracy[model][method][T] and agreement with the ANN's predictions
    accuracy: dict[str, dict[str, dict[int, list[float]]]] = field(default_factory=dict)
    agreement: dict[str, dict[str, dict[int, list[float]]]] = field(default_factory=dict)
    layers: dict[str, list[dict]] = field(default_factory=dict)  # per model, first seed
    validation: dict[str, dict] = field(default_factory=dict)  # per model, first seed
    train_seconds: dict[str, list[float]] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # where the time went
    seconds: float = 0.0

    def clock(self, stage: str, since: float) -> float:
        """Add the time since ``since`` to ``stage``; return now."""
        now = time.perf_counter()
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + now - since
        return now

    def add(self, table: str, model: str, method: str, per_t: dict[int, float]) -> None:
        target = getattr(self, table).setdefault(model, {}).setdefault(method, {})
        for t, v in per_t.items():
            target.setdefault(t, []).append(float(v))

    def mean(self, model: str, method: str, t: int, table: str = "accuracy") -> float:
        vals = getattr(self, table).get(model, {}).get(method, {}).get(t)
        return float(np.mean(vals)) if vals else float("nan")

    def std(self, model: str, method: str, t: int, table: str = "accuracy") -> float:
        vals = getattr(self, table).get(model, {}).get(method, {}).get(t)
        return float(np.std(vals)) if vals else float("nan")

    def ann_mean(self, model: str) -> float:
        return float(np.mean(self.ann[model]))

    def methods(self, model: str) -> list[str]:
        return list(self.accuracy.get(model, {}))

    def to_dict(self) -> dict:
        def conv(d):  # int keys -> str for JSON
            return {str(k): conv(v) if isinstance(v, dict) else v for k, v in d.items()}
        return {"steps": list(self.steps), "seeds": self.seeds, "ann": self.ann,
                "accuracy": conv(self.accuracy), "agreement": conv(self.agreement),
                "layers": self.layers, "validation": self.validation,
                "train_seconds": self.train_seconds, "stage_seconds": self.stage_seconds,
                "seconds": self.seconds}


# --- measurements -----------------------------------------------------------------------------

def _readout_stats(running: torch.Tensor, y: torch.Tensor, ann_pred: torch.Tensor,
                   steps: tuple[int, ...]) -> tuple[dict[int, float], dict[int, float]]:
    acc, agree = {}, {}
    for t in steps:
        if t > running.shape[0]:
            continue
        pred = running[t - 1].flatten(1).argmax(1)
        acc[t] = float((pred == y).float().mean())
        agree[t] = float((pred == ann_pred).float().mean())
    return acc, agree


def sweep(graph: nir.NIRGraph, x: torch.Tensor, steps: int) -> torch.Tensor:
    """The running readout ``[T, B, K]`` of ``graph`` for the accuracy sweeps, in float32.

    Accuracy needs the argmax, not bit-level agreement (which the float64 validation of the
    exports checks): float32 with windows of 4 steps batched through each conv runs ~3x faster
    here, and gave the same prediction as float64 for every image at every T <= 64 on the
    clipped CNN (360 test images).
    """
    from bridge.reference import simulate

    return simulate(graph, x, steps, dtype=torch.float32, time_chunk=4).running_readout


def calibration_for(steps: int, split: Split, samples: int) -> torch.Tensor:
    """Training images for the search at T = ``steps``: its cost grows with T x samples, so
    fewer samples are used at large T (where theta/2 is already close to the ANN)."""
    n = int(max(32, min(samples, samples * 4 // max(steps, 1))))
    return split.train_x[:n]


def _fanout(graph: nir.NIRGraph, name: str) -> float:
    """Synaptic events one spike of IF ``name`` causes: sum over the weighted consumers it reaches
    (through pooling/flatten) of their MACs per input value."""
    total = 0.0
    stack = [d for s, d in graph.edges if s == name]
    prev_shape = {d: np.asarray(graph.nodes[name].output_type["output"]) for d in stack}
    while stack:
        n = stack.pop()
        node = graph.nodes[n]
        in_size = float(np.prod(prev_shape[n]))
        if isinstance(node, (nir.AvgPool2d, nir.SumPool2d, nir.Flatten)):
            for s, d in graph.edges:
                if s == n:
                    stack.append(d)
                    prev_shape[d] = np.asarray(node.output_type["output"])
        elif isinstance(node, (nir.Conv1d, nir.Conv2d, nir.Affine, nir.Linear, nir.Scale)):
            total += macs(node) / in_size
    return total


def macs(node: nir.NIRNode) -> float:
    """Multiply-accumulates of one weighted node per sample."""
    out = float(np.prod(np.asarray(node.output_type["output"])))
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        return out * float(np.prod(np.asarray(node.weight).shape[1:]))
    if isinstance(node, (nir.Affine, nir.Linear)):
        return float(np.asarray(node.weight).size)
    if isinstance(node, nir.Scale):
        return out
    return 0.0


def layer_analysis(graph: nir.NIRGraph, optimized: nir.NIRGraph, x: torch.Tensor, steps: int) -> list[dict]:
    """Per IF layer at T = ``steps``: conversion error (theta/2 and optimised), firing rate, SynOps.

    The error is mean |theta' N/T - clip(z, 0, theta)| / mean(theta): the layer's T-step rate
    output against the ANN view's activation of the same layer (both graphs fed the same x).
    """
    from bridge.format.extension import if_semantics
    from bridge.passes.optimize import current_subgraph
    from bridge.reference import ann_view, simulate

    names = [n for n, v in graph.nodes.items() if isinstance(v, nir.IF)]
    rows = []
    runs = {"half": simulate(graph, x, steps, trace=True),
            "optimized": simulate(optimized, x, steps, trace=True)}
    for name in names:
        theta = torch.as_tensor(if_semantics(graph.nodes[name], name).threshold)
        z = ann_view(current_subgraph(graph, name), x.double())
        target = torch.minimum(torch.relu(z), theta)
        row: dict = {"layer": name, "neurons": int(theta.numel())}
        for key, res in runs.items():
            g = graph if key == "half" else optimized
            th = torch.as_tensor(if_semantics(g.nodes[name], name).threshold)
            spikes = res.traces[name].spikes
            rate = spikes.mean(0)
            row[f"error_{key}"] = float((th * rate - target).abs().mean() / theta.mean())
            row[f"rate_{key}"] = float(spikes.mean())
            row[f"synops_{key}"] = float(spikes.sum() / x.shape[0]) * _fanout(g, name)
        rows.append(row)
    first = [d for s, d in graph.edges if isinstance(graph.nodes[s], nir.Input)]
    ann_macs = sum(macs(v) for v in graph.nodes.values())
    rows.append({"layer": "(input layer, once)", "synops_half": sum(macs(graph.nodes[n]) for n in first),
                 "synops_optimized": sum(macs(graph.nodes[n]) for n in first), "ann_macs": ann_macs})
    return rows


def validate_exports(graph: nir.NIRGraph, folder: Path, x: torch.Tensor, y: torch.Tensor,
                     steps: int, force: bool) -> dict:
    """Write NIR + SpikingJelly + Norse artifacts of ``graph`` and validate both exporters."""
    from bridge.format.nirio import write_graph
    from exporters import write_artifact
    from validation import validate

    folder.mkdir(parents=True, exist_ok=True)
    write_graph(graph, folder / "model.nir", force=force)
    for target in ("spikingjelly", "norse"):
        write_artifact(graph, target, folder / target, force=force)  # type: ignore[arg-type]
    report = validate(graph, ["spikingjelly", "norse"], x, y, steps=steps, timesteps=[steps])
    out = {"ok": report.ok, "samples": report.samples, "steps": steps, "backends": {}}
    for b in report.backends:
        c = b.comparison
        steps_total = sum(l.neuron_steps for l in c.layers.values()) if c else 0
        mism = sum(l.mismatches for l in c.layers.values()) if c else 0
        out["backends"][b.name] = {
            "status": b.status, "ok": b.ok,
            "spike_agreement": 1.0 - mism / steps_total if steps_total else float("nan"),
            "unexplained": c.unexplained if c else None, "message": b.message}
    return out


# --- the pipeline ------------------------------------------------------------------------------

class _Progress:
    """A rich progress display (or nothing, for library callers)."""

    def __init__(self, console=None) -> None:
        self.console = console
        self.bar = None

    def __enter__(self):
        if self.console is not None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description:<38}"), BarColumn(),
                                TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                console=self.console, transient=False)
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def task(self, description: str, total: int):
        if self.bar is None:
            return lambda done=None, advance=1: None
        tid = self.bar.add_task(description, total=total)

        def update(done: int | None = None, advance: int = 1) -> None:
            if done is None:
                self.bar.advance(tid, advance)
            else:
                self.bar.update(tid, completed=done)
        return update


def run_demo(config: DemoConfig, console=None) -> Results:
    """Run the whole demo; write the report folder; return the numbers."""
    from bridge.converter import convert
    from bridge.passes.optimize import optimize_initial_potentials

    out = config.out
    if out.exists() and any(out.iterdir()) and not config.force:
        raise BridgeError(f"{out} already exists and is not empty; choose another --out or pass --force")
    if out.parent != Path("") and not out.parent.exists():
        raise BridgeError(f"the folder {out.parent} does not exist; create it first")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    seeds = list(range(config.seeds))
    res = Results(config.steps, seeds)
    tmax = max(config.steps)
    with _Progress(console) as progress:
        for seed in seeds:
            split = digits_split(seed)
            x, y = split.test_x, split.test_y
            for spec in MODELS:
                epochs = max(1, round(spec.epochs * config.epochs_scale))
                bar = progress.task(f"split {seed}: {spec.label}", epochs + 3 + len(config.steps))
                t0 = time.perf_counter()
                trained = train_model(spec.build(), split, epochs=epochs, seed=seed,
                                      progress=lambda d, n: bar(done=d))
                model = trained.model
                res.ann.setdefault(spec.key, []).append(trained.ann_accuracy)
                res.train_seconds.setdefault(spec.key, []).append(trained.seconds)
                with torch.no_grad():
                    ann_pred = model(x).argmax(1)
                cal = split.train_x[:config.calibration_samples]
                t0 = res.clock("train", t0)
                # a ReLU has no trained bound: thresholds are calibrated per channel (p99.99), the
                # same granularity as SpikingJelly's best setting it is compared with
                graphs = {v: convert(model, INPUT_SHAPE, calibration=cal, v_init=v,
                                     channel_wise=spec.key == "relu")
                          for v in ("zero", "half")}
                bar()
                for v, g in graphs.items():
                    running = sweep(g, x, tmax)
                    acc, agree = _readout_stats(running, y, ann_pred, config.steps)
                    res.add("accuracy", spec.key, v, acc)
                    res.add("agreement", spec.key, v, agree)
                bar()
                t0 = res.clock("convert + simulate", t0)
                optimized_graphs = {}
                for t in config.steps:
                    go = optimize_initial_potentials(graphs["half"], calibration_for(t, split, config.calibration_samples), t)
                    optimized_graphs[t] = go
                    running = sweep(go, x, t)
                    acc, agree = _readout_stats(running, y, ann_pred, (t,))
                    res.add("accuracy", spec.key, "optimized", acc)
                    res.add("agreement", spec.key, "optimized", agree)
                    bar()
                t0 = res.clock("optimize + simulate", t0)
                if seed == seeds[0]:
                    t_layer = 4 if 4 in config.steps else config.steps[0]
                    res.layers[spec.key] = layer_analysis(graphs["half"], optimized_graphs[t_layer], x[:128], t_layer)
                    t0 = res.clock("layer analysis", t0)
                    if config.export_and_validate:
                        res.validation[spec.key] = validate_exports(
                            graphs["half"], out / "models" / spec.key, x[:64], y[:64],
                            min(16, tmax), config.force)
                        t0 = res.clock("export + validate", t0)
                bar()
                if spec.key == "relu":
                    sj_bar = progress.task(f"split {seed}: SpikingJelly ann2snn", len(config.sj_settings))
                    for setting in config.sj_settings:
                        snn = sj.convert(model, cal, setting)
                        running = sj.run(snn, x, tmax)
                        acc, agree = _readout_stats(running, y, ann_pred, config.steps)
                        res.add("accuracy", spec.key, setting.label, acc)
                        res.add("agreement", spec.key, setting.label, agree)
                        sj_bar()
                    res.clock("SpikingJelly ann2snn", t0)
    res.seconds = time.perf_counter() - start
    from app.demo_report import write_report

    write_report(res, config, out)
    return res
