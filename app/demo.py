"""``bridge demo``: train, convert, calibrate, export, validate and report accuracy vs latency.

Two benchmarks, each over several seeds:

* **digits** (scikit-learn's 8x8 digits upsampled to 16x16, ``digits_split(seed)``): a CNN with the
  trainable clipped ReLU, the same CNN with QCFS, a plain-ReLU CNN and a small ResNet;
* **MNIST-1D** (Greydanus 2020, ``bridge.data.mnist1d``; the fixed published set, the seed changes
  the initialisation, the mini-batches and the calibration images): a 1D CNN and a residual 1D net,
  each with QCFS (trained for low latency) and with plain ReLU (post-hoc calibration only).

For each model the demo

1. trains it (:mod:`bridge.model.train`);
2. converts it to NIR (:func:`bridge.converter.convert`; ReLU models take per-channel p99.99
   thresholds from training images);
3. measures test accuracy at T in 1, 2, 4, ..., 64 (:func:`validation.evaluation.evaluate_graph`,
   float32) for v_init 0 (digits), theta/2, each stage of the calibration pipeline
   (:func:`bridge.passes.pipeline.calibrate`: fitted per T on training images only, each stage
   kept only if it lowers the error on held-out training images), the pipeline's choice (what
   ``bridge export --calibration DATA --timesteps T`` writes), the any-T default (what it writes
   without ``--timesteps``), and SpikingJelly's own ann2snn on the same ReLU weights
   (:mod:`app.ann2snn_baseline`);
4. on the first seed writes the NIR file and the SpikingJelly and Norse artifacts of the
   calibrated graph and validates both exporters against the reference simulator;
5. writes a report folder (Markdown, PNG plots, results.json); :mod:`app.demo_report` checks
   the issues' targets on the means over seeds and prints them with pass/fail.

Each (model, seed) is one :class:`DemoJob` with its own :class:`Results`; with
``DemoConfig.workers`` > 1 the jobs run side by side in worker processes
(:mod:`app.demo_workers`) and their results are merged in job order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import nir
import numpy as np
import torch
from torch import nn

from app import ann2snn_baseline as sj
from bridge.data.datasets import Split, digits_split
from bridge.format.errors import BridgeError
from bridge.model.train import DigitsCNN, DigitsResNet, SignalCNN, SignalResNet, train_model

INPUT_SHAPE = (1, 16, 16)
FULL_STEPS = (1, 2, 4, 8, 16, 32, 64)
QUICK_STEPS = (1, 2, 4, 8, 16)
BENCHMARKS = ("digits", "mnist1d")
BRIDGE_METHODS = ("zero", "half", "optimized", "bias", "joint", "weights", "default", "any-T")
METHOD_LABELS = {"zero": "v_init 0", "half": "v_init theta/2", "optimized": "+ v_init/threshold search",
                 "bias": "+ bias correction", "joint": "+ joint fit (theta, v_init, bias)",
                 "weights": "+ weight calibration", "default": "default export for T (pipeline's choice)",
                 "any-T": "default export, no --timesteps"}
CALIBRATION_STAGES = ("optimized", "bias", "joint", "weights")


@dataclass(frozen=True)
class ModelSpec:
    """One model of the demo: its benchmark, how to build it and how long to train it."""

    key: str
    label: str
    build: Callable[[], nn.Module]
    epochs: int
    benchmark: str = "digits"
    relu: bool = False  # plain ReLU: calibrated thresholds, SpikingJelly ann2snn applies
    #: seconds one job of this model took (a demo run on the 2-core machine, 1 thread): the
    #: longest jobs start first, so that no worker is left alone with a long one at the end
    job_seconds: float = 30.0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return INPUT_SHAPE if self.benchmark == "digits" else (1, 40)


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("clip", "CNN, clipped ReLU", lambda: DigitsCNN("clip"), 20, job_seconds=23),
    ModelSpec("qcfs", "CNN, QCFS (L=4)", lambda: DigitsCNN("qcfs", levels=4), 20, job_seconds=30),
    ModelSpec("relu", "CNN, plain ReLU", lambda: DigitsCNN("relu"), 20, relu=True, job_seconds=40),
    ModelSpec("resnet", "ResNet, clipped ReLU", lambda: DigitsResNet("clip"), 10, job_seconds=59),
    ModelSpec("m1d-cnn-qcfs", "MNIST-1D CNN, QCFS (L=4)", lambda: SignalCNN("qcfs", levels=4), 12, "mnist1d",
              job_seconds=21),
    ModelSpec("m1d-cnn-relu", "MNIST-1D CNN, plain ReLU", lambda: SignalCNN("relu"), 12, "mnist1d", relu=True,
              job_seconds=30),
    ModelSpec("m1d-res-qcfs", "MNIST-1D ResNet, QCFS (L=4)", lambda: SignalResNet("qcfs", levels=4), 8, "mnist1d",
              job_seconds=34),
    ModelSpec("m1d-res-relu", "MNIST-1D ResNet, plain ReLU", lambda: SignalResNet("relu"), 8, "mnist1d", relu=True,
              job_seconds=45),
)
MODEL_BY_KEY: dict[str, ModelSpec] = {m.key: m for m in MODELS}


@dataclass
class DemoConfig:
    """What the demo runs. ``quick`` trades spread and range for time (tests, first look)."""

    out: Path = Path("bridge-demo")
    seeds: int = 2
    quick: bool = False
    force: bool = False
    steps: tuple[int, ...] = FULL_STEPS
    calibration_samples: int = 512
    epochs_scale: float = 1.0
    sj_settings: tuple[sj.SJSetting, ...] = sj.SETTINGS
    export_and_validate: bool = True
    benchmarks: tuple[str, ...] = BENCHMARKS
    mnist1d_seeds: int = 2
    #: the T at which the whole calibration pipeline runs per benchmark (elsewhere: the search only)
    pipeline_steps: dict[str, tuple[int, ...]] = field(
        default_factory=lambda: {"digits": (1, 2), "mnist1d": FULL_STEPS})
    joint_iterations: int = 80
    any_t: bool = True
    #: processes running the (model, seed) jobs side by side (1: all in this process)
    workers: int = 1
    #: torch threads per worker process (None: the cores shared out among the workers)
    threads: int | None = None

    @classmethod
    def make(cls, out: str | Path = "bridge-demo", seeds: int = 2, quick: bool = False,
             force: bool = False, benchmarks: tuple[str, ...] = BENCHMARKS,
             mnist1d_seeds: int | None = None, workers: int | None = None,
             threads: int | None = None) -> DemoConfig:
        """The demo's settings; ``workers`` None: one per core, at most one per job."""
        if seeds < 1:
            raise BridgeError(f"--seeds must be >= 1, got {seeds}")
        for flag, value in (("--workers", workers), ("--threads", threads)):
            if value is not None and value < 1:
                raise BridgeError(f"{flag} must be >= 1, got {value}")
        bad = [b for b in benchmarks if b not in BENCHMARKS]
        if bad or not benchmarks:
            raise BridgeError(f"unknown benchmark {', '.join(bad) or '(none)'}; choose from {', '.join(BENCHMARKS)}")
        m1d = min(seeds, 2) if mnist1d_seeds is None else mnist1d_seeds
        if m1d < 1:
            raise BridgeError(f"--mnist1d-seeds must be >= 1, got {m1d}")
        if quick:
            config = cls(Path(out), seeds, True, force, QUICK_STEPS, 256, 0.5,
                         tuple(s for s in sj.SETTINGS if s.mode == "99.9%"), benchmarks=tuple(benchmarks),
                         mnist1d_seeds=m1d, pipeline_steps={"digits": (1, 2), "mnist1d": (2, 4, 8)},
                         joint_iterations=60, any_t=False, threads=threads)
        else:
            config = cls(Path(out), seeds, False, force, benchmarks=tuple(benchmarks), mnist1d_seeds=m1d,
                         threads=threads)
        config.workers = workers if workers is not None else min(available_cores(), len(config.jobs()))
        return config

    def models(self) -> list[ModelSpec]:
        return [m for m in MODELS if m.benchmark in self.benchmarks]

    def seeds_of(self, benchmark: str) -> list[int]:
        return list(range(self.seeds if benchmark == "digits" else self.mnist1d_seeds))

    def jobs(self) -> list[DemoJob]:
        """Every (model, seed) job, in the order their numbers are listed over seeds."""
        return [DemoJob(benchmark, seed, spec.key, seed == self.seeds_of(benchmark)[0])
                for benchmark in self.benchmarks for seed in self.seeds_of(benchmark)
                for spec in self.models() if spec.benchmark == benchmark]

    def threads_per_worker(self) -> int:
        """torch threads for each worker process: ``threads``, else the cores shared out."""
        return self.threads if self.threads is not None else max(1, available_cores() // max(1, self.workers))


@dataclass(frozen=True)
class DemoJob:
    """One model trained, converted, calibrated and measured on one seed: the unit the demo runs
    in a worker process. ``first``: the first seed of its benchmark, which also writes and
    validates the exported models and the per-layer analysis."""

    benchmark: str
    seed: int
    model: str
    first: bool


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
    job_seconds: dict[str, list[float]] = field(default_factory=dict)  # per model, one per seed
    stage_seconds: dict[str, float] = field(default_factory=dict)  # where the time went
    seconds: float = 0.0
    # calibration cost per model and T (str), one dict per seed: seconds, images, chosen stage
    calibration: dict[str, dict[str, list[dict]]] = field(default_factory=dict)
    benchmark_seeds: dict[str, list[int]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # model key -> label
    benchmark_of: dict[str, str] = field(default_factory=dict)  # model key -> benchmark
    workers: int = 1  # processes the jobs ran in: stage_seconds sums their times

    def merge(self, part: Results) -> None:
        """Append the numbers of ``part`` (one job's results) after this run's: lists over seeds
        keep the order in which the parts are merged."""
        def extend(into: dict, new: dict) -> None:
            for key, value in new.items():
                if isinstance(value, dict):
                    extend(into.setdefault(key, {}), value)
                else:
                    into.setdefault(key, []).extend(value)

        for table in ("ann", "accuracy", "agreement", "train_seconds", "job_seconds", "calibration"):
            extend(getattr(self, table), getattr(part, table))
        for table in ("layers", "validation", "labels", "benchmark_of"):
            getattr(self, table).update(getattr(part, table))
        for stage, seconds in part.stage_seconds.items():
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds

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
                "train_seconds": self.train_seconds, "job_seconds": self.job_seconds,
                "stage_seconds": self.stage_seconds,
                "seconds": self.seconds, "calibration": self.calibration,
                "benchmark_seeds": self.benchmark_seeds, "labels": self.labels,
                "benchmark_of": self.benchmark_of, "workers": self.workers}


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

class TaskBars(Protocol):
    """Where a job reports its progress: ``task(description, total)`` opens a bar and returns
    its update function ``update(done=None, advance=1)``."""

    def task(self, description: str, total: int) -> Callable[..., None]: ...


class _Progress:
    """A rich progress display (or nothing, for library callers); :meth:`relay` draws the
    bars of jobs running in worker processes (:mod:`app.demo_workers`)."""

    def __init__(self, console=None) -> None:
        self.console = console
        self.bar = None
        self._relayed: dict[str, Callable[..., None]] = {}

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

    def relay(self, message: tuple) -> None:
        """Apply one message of a worker's bar: ``(bar id, description, total)`` opens it,
        ``(bar id, done, advance)`` updates it."""
        key, first, second = message
        if key not in self._relayed:
            self._relayed[key] = self.task(first, second)
        else:
            self._relayed[key](done=first, advance=second)


def accuracy_vs_steps(graph: nir.NIRGraph, x: torch.Tensor, y: torch.Tensor, steps: tuple[int, ...],
                      ann: bool) -> tuple[dict[int, float], dict[int, float]]:
    """Test accuracy (and, with ``ann``, agreement with the graph's ANN view) after each T in ``steps``.

    One float32 reference run of max(steps) steps (:func:`validation.evaluation.evaluate_graph`).
    For an uncalibrated conversion the ANN view is the ANN, so the agreement is the agreement
    with the ANN's predictions.
    """
    from validation.evaluation import evaluate_graph

    ev = evaluate_graph(graph, x, y, list(steps), batch_size=len(x), dtype=torch.float32, ann=ann,
                        count_spikes=False)  # only the accuracies are read
    return ev.accuracy, ev.ann_agreement


def _split(benchmark: str, seed: int) -> Split:
    if benchmark == "digits":
        return digits_split(seed)
    from bridge.data.mnist1d import mnist1d_split

    full = mnist1d_split()
    # the published set is fixed; the seed picks the calibration images (a permutation of train)
    perm = torch.randperm(len(full.train_y), generator=torch.Generator().manual_seed(seed))
    return Split(full.train_x[perm], full.train_y[perm], full.test_x, full.test_y)


def run_demo(config: DemoConfig, console=None) -> Results:
    """Run the whole demo and return the numbers (``app.demo_report.write_report`` writes the
    report folder from them). With ``config.workers`` > 1 the jobs run in that many processes
    (:mod:`app.demo_workers`); the numbers are merged in the same order either way."""
    out = config.out
    if out.exists() and any(out.iterdir()) and not config.force:
        raise BridgeError(f"{out} already exists and is not empty; choose another --out or pass --force")
    if out.parent != Path("") and not out.parent.exists():
        raise BridgeError(f"the folder {out.parent} does not exist; create it first")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    jobs = config.jobs()
    res = Results(config.steps, config.seeds_of("digits"), workers=min(config.workers, len(jobs)))
    res.benchmark_seeds = {b: config.seeds_of(b) for b in config.benchmarks}
    threads = torch.get_num_threads()
    with _Progress(console) as progress:
        if res.workers > 1:
            from app.demo_workers import run_jobs_in_processes

            parts = run_jobs_in_processes(jobs, config, progress)
        else:
            if config.threads is not None:
                torch.set_num_threads(config.threads)
            try:
                parts = [run_job(job, config, progress) for job in jobs]
            finally:
                torch.set_num_threads(threads)
    for part in parts:
        res.merge(part)
    res.seconds = time.perf_counter() - start
    return res


def run_job(job: DemoJob, config: DemoConfig, progress: TaskBars) -> Results:
    """One job's numbers, in a :class:`Results` of their own (merged by :func:`run_demo`)."""
    res = Results(config.steps, [job.seed])
    spec = MODEL_BY_KEY[job.model]
    start = time.perf_counter()
    _run_model(spec, _split(job.benchmark, job.seed), job.seed, job.first, config, res, progress)
    res.job_seconds[job.model] = [time.perf_counter() - start]
    return res


def _run_model(spec: ModelSpec, split: Split, seed: int, first: bool, config: DemoConfig,
               res: Results, progress: TaskBars) -> None:
    """Train, convert, calibrate and measure one model on one seed; record into ``res``."""
    from bridge.workflow import ConversionPlan, WorkflowReport, run_plan
    from bridge.workflow.run import calibrate_graph

    x, y = split.test_x, split.test_y
    res.labels[spec.key], res.benchmark_of[spec.key] = spec.label, spec.benchmark
    epochs = max(1, round(spec.epochs * config.epochs_scale))
    pipeline_steps = [t for t in config.steps if t in config.pipeline_steps.get(spec.benchmark, ())]
    bar = progress.task(f"{spec.benchmark} seed {seed}: {spec.label}"[:38],
                        epochs + 2 + len(config.steps) + int(config.any_t))
    t0 = time.perf_counter()
    trained = train_model(spec.build(), split, epochs=epochs, seed=seed, progress=lambda d, n: bar(done=d))
    model = trained.model
    res.ann.setdefault(spec.key, []).append(trained.ann_accuracy)
    res.train_seconds.setdefault(spec.key, []).append(trained.seconds)
    with torch.no_grad():
        ann_pred = model(x).argmax(1)
    cal = split.train_x[:config.calibration_samples]
    t0 = res.clock("train", t0)
    # a ReLU has no trained bound: thresholds are calibrated per channel (p99.99), the same
    # granularity as SpikingJelly's best setting it is compared with
    inits = ("zero", "half") if spec.benchmark == "digits" else ("half",)
    graphs = {v: run_plan(model, ConversionPlan(v_init=v, calibration=cal, calibration_samples=len(cal),
                                                channel_wise=spec.relu), spec.input_shape).graph
              for v in inits}
    bar()
    sweeps: dict[str, dict[int, float]] = {}
    for v, g in graphs.items():
        sweeps[v], agree = accuracy_vs_steps(g, x, y, config.steps, ann=True)
        res.add("accuracy", spec.key, v, sweeps[v])
        res.add("agreement", spec.key, v, agree)
    bar()
    t0 = res.clock("convert + simulate", t0)
    calibrated: dict[int, nir.NIRGraph] = {}
    for t in config.steps:
        if t in pipeline_steps:
            plan = ConversionPlan(calibration=cal, calibration_samples=len(cal), timesteps=t,
                                  iterations=config.joint_iterations)
            report, stage_graphs = WorkflowReport(spec.input_shape, plan.describe()), {}
            calibrated[t] = calibrate_graph(graphs["half"], plan, cal, report, stage_graphs=stage_graphs)
            rep = report.calibration
            res.calibration.setdefault(spec.key, {}).setdefault(str(t), []).append(
                {"seconds": rep.seconds, "images": rep.images, "heldout": rep.heldout, "chosen": rep.chosen,
                 "stages": {st.name: {"seconds": st.seconds, "heldout_error": st.heldout_error, "kept": st.kept}
                            for st in rep.stages}})
            measured = {}
            for stage in CALIBRATION_STAGES:
                if stage in stage_graphs:
                    measured[stage] = accuracy_vs_steps(stage_graphs[stage], x, y, (t,), False)[0]
                    res.add("accuracy", spec.key, stage, measured[stage])
            # the pipeline returns the best graph after its last stage, which is that stage's row
            # (the same arrays, simulated in float32 either way): not simulated a second time
            last = list(stage_graphs)[-1]
            res.add("accuracy", spec.key, "default",
                    measured[last] if last in measured else accuracy_vs_steps(calibrated[t], x, y, (t,), False)[0])
        else:  # the search only (the digits beyond the targets' T: keeps the demo short)
            search = calibration_for(t, split, config.calibration_samples)
            # the search as the only stage: the graph of stages ("half", "optimized"), without
            # the held-out evaluations that would choose between them (the search is always kept)
            calibrated[t] = calibrate_graph(graphs["half"], ConversionPlan(
                calibration=search, calibration_samples=len(search), timesteps=t, stages=("optimized",)),
                search)
            res.add("accuracy", spec.key, "optimized", accuracy_vs_steps(calibrated[t], x, y, (t,), False)[0])
        bar()
    t0 = res.clock("calibrate + simulate", t0)
    if config.any_t:
        plan = ConversionPlan(calibration=cal, calibration_samples=len(cal), iterations=config.joint_iterations)
        report = WorkflowReport(spec.input_shape, plan.describe())  # what export writes without --timesteps
        any_t = calibrate_graph(graphs["half"], plan, cal, report)
        rep = report.calibration
        res.calibration.setdefault(spec.key, {}).setdefault("any", []).append(
            {"seconds": rep.seconds, "images": rep.images, "heldout": rep.heldout, "chosen": rep.chosen})
        # when the pipeline keeps theta/2 (the default without --timesteps) it returns the graph
        # whose sweep is above
        res.add("accuracy", spec.key, "any-T",
                sweeps["half"] if rep.chosen == "half" else accuracy_vs_steps(any_t, x, y, config.steps, False)[0])
        bar()
        t0 = res.clock("calibrate any T + simulate", t0)
    if first:
        t_layer = 4 if 4 in calibrated else config.steps[0]
        res.layers[spec.key] = layer_analysis(graphs["half"], calibrated[t_layer], x[:128], t_layer)
        t0 = res.clock("layer analysis", t0)
        if config.export_and_validate:
            # the calibrated graph (weights, biases, thresholds, v_init changed) must export exactly
            res.validation[spec.key] = validate_exports(
                calibrated[t_layer], config.out / "models" / spec.key, x[:64], y[:64],
                min(16, max(config.steps)), config.force)
            t0 = res.clock("export + validate", t0)
    if spec.relu:
        sj_bar = progress.task(f"seed {seed}: SpikingJelly ann2snn", len(config.sj_settings))
        for setting in config.sj_settings:
            snn = sj.convert(model, cal, setting)
            running = sj.run(snn, x, max(config.steps))
            acc, agree = _readout_stats(running, y, ann_pred, config.steps)
            res.add("accuracy", spec.key, setting.label, acc)
            res.add("agreement", spec.key, setting.label, agree)
            sj_bar()
        res.clock("SpikingJelly ann2snn", t0)
