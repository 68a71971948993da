"""Accuracy vs time-steps of a converted network on a labelled data set (``bridge evaluate``).

One simulation of ``max(T)`` steps per batch gives the readout after every T <= max(T)
(``SimulationResult.running_readout``), so the whole sweep costs one run. Per batch only
integer counts are kept (:class:`validation.accuracy.AccuracyCurve`: correct predictions,
agreement with the ANN, spikes per layer in the first T steps): memory does not grow with
the data set, and the counts of several processes add up exactly.

Scale (:mod:`validation.distributed`): under torchrun each rank evaluates a contiguous shard
of the data on its own device and the counts are summed with ``all_reduce``; the numbers
are those of one process. The ANN's predictions come from the same batches in the same
pass: the PyTorch model when one is given, else the ANN view of the graph (every IF
replaced by clip(I / theta, 0, 1)).

Resume: with ``resume=FILE`` every rank's counts and position are written (atomically, by
rank 0) every ``checkpoint_every`` batches; a run started again with the same file and
options continues after the last checkpoint and ends with the same counts.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nir
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from bridge.data.datasets import check_finite_data, check_labels
from bridge.data.streaming import worker_batches
from bridge.format.errors import BridgeError
from bridge.format.graph import if_nodes_in_order, input_shape
from bridge.reference.ops.base import NeuronOp
from bridge.reference.probe import output_classes
from validation.accuracy import AccuracyCurve, parse_timesteps
from validation.distributed import ProcessGroup, shard_bounds

RESUME_FORMAT = "bridge-evaluation-progress"
Progress = Callable[[int, int], None]  # (samples of this rank's shard done, shard size)


class RunInterrupted(BridgeError):
    """The run stopped before the end (the test hook ``stop_after_batches``); resume it."""

    exit_code = 130


@dataclass
class Evaluation:
    """The counts of a whole run and how they were measured."""

    curve: AccuracyCurve
    backend: str = "reference"
    device: str = "cpu"
    dtype: str = "float32"
    world_size: int = 1
    ann_source: str | None = None  # "pytorch model", "ann view of the graph" or None
    seconds: float = 0.0
    resumed_samples: int = 0  # samples counted by an earlier, interrupted run
    notes: list[str] = field(default_factory=list)

    @property
    def timesteps(self) -> list[int]:
        return self.curve.timesteps

    @property
    def samples(self) -> int:
        return self.curve.samples

    @property
    def accuracy(self) -> dict[int, float]:
        return self.curve.accuracy() or {}

    @property
    def ann_agreement(self) -> dict[int, float]:
        return self.curve.ann_agreement() or {}

    @property
    def ann_accuracy(self) -> float | None:
        return self.curve.ann_accuracy()

    @property
    def images_per_second(self) -> float | None:
        done = self.samples - self.resumed_samples
        return done / self.seconds if self.seconds > 0 else None

    def to_dict(self) -> dict:
        return {**self.curve.to_dict(), "backend": self.backend, "device": self.device, "dtype": self.dtype,
                "processes": self.world_size, "ann_source": self.ann_source,
                "spikes_per_sample": {k: {str(t): v for t, v in d.items()}
                                      for k, d in self.curve.spikes_per_sample().items()},
                "seconds": self.seconds, "images_per_second": self.images_per_second,
                "resumed_samples": self.resumed_samples, "notes": self.notes}


# -- one batch: the chosen backend, spikes counted on the way -----------------------------
class _SpikeCounting(NeuronOp):
    """A neuron op of the reference that counts its output spikes at every step.

    It wraps the compiled op (same state, same numbers) and appends the number of neurons
    that fired at each step: the spike counts come without keeping ``[T, B, ...]`` traces.
    """

    def __init__(self, inner: NeuronOp) -> None:
        super().__init__(inner.name)
        self.inner = inner
        self.inplace_step = inner.inplace_step
        self.traceable = inner.traceable
        self.per_step: list[torch.Tensor] = []

    def init_state(self, like: torch.Tensor) -> Any:
        self.per_step = []  # a fresh run
        return self.inner.init_state(like)

    def step(self, current: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        out, state = self.inner.step(current, state)
        self.per_step.append(torch.count_nonzero(out))
        return out, state

    def step_(self, current: torch.Tensor, state: torch.Tensor, out: torch.Tensor) -> None:
        self.inner.step_(current, state, out)
        self.per_step.append(torch.count_nonzero(out))

    def potential(self, state: Any) -> torch.Tensor:
        return self.inner.potential(state)

    def rate(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.rate(x)


class BatchRunner:
    """Runs one batch for T steps on ``backend`` and returns the running readout and the
    spike counts per layer and step (``{layer: [T] int64}``; empty without ``count_spikes``)."""

    def __init__(self, graph: nir.NIRGraph, backend: str, *, dtype: torch.dtype, device: torch.device,
                 count_spikes: bool = True) -> None:
        from bridge.reference import ReferenceSimulator

        self.backend, self.count_spikes = backend, count_spikes
        self.layers: list[str] = []
        if backend == "reference":
            self.simulator = ReferenceSimulator(graph, dtype=dtype, device=device)
            if count_spikes:
                for name in self.simulator.traceable:
                    self.simulator.ops[name] = _SpikeCounting(self.simulator.ops[name])  # type: ignore[arg-type]
                    self.layers.append(name)
            self.input_shape = tuple(self.simulator.input_shape)
        else:
            from validation.backends import get_backend

            cls = get_backend(backend)
            self.instance = cls(graph, dtype=dtype, device=device)
            self.layers = if_nodes_in_order(graph) if count_spikes else []
            self.input_shape = input_shape(graph)
        self.dtype, self.device = dtype, device

    def run(self, x: torch.Tensor, steps: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.backend == "reference":
            result = self.simulator.run(x.to(device=self.device, dtype=self.dtype), steps)
            counts = {n: torch.stack(self.simulator.ops[n].per_step)  # type: ignore[attr-defined]
                      for n in self.layers}
            return result.running_readout, counts
        result = self.instance.run(x.to(self.dtype), steps, trace=self.count_spikes)
        counts = {}
        for n in self.layers:
            trace = result.traces.get(n)
            counts[n] = (trace.spikes.flatten(1).count_nonzero(1) if trace is not None
                         else torch.zeros(steps, dtype=torch.int64))
        return result.running_readout, counts


class AnnPredictor:
    """The ANN's predicted classes for a batch: a PyTorch model on the run's device, else the
    ANN view of the graph (float64, CPU). ``source`` names which; None when there is none."""

    def __init__(self, graph: nir.NIRGraph, model: torch.nn.Module | None, device: torch.device,
                 use_ann_view: bool = True) -> None:
        self.graph, self.model, self.device = graph, model, device
        self.view: object = graph  # what ann_predictions evaluates (an AnnView once compiled)
        self.source: str | None = None
        self.note: str | None = None
        self.per_sample = False
        if model is not None:
            self.model = model.to(device)
            try:
                self.model.eval()
            except NotImplementedError:  # a torch.export program's module: fixed in eval mode
                pass
            self.source = "pytorch model"
        elif use_ann_view:
            from validation.accuracy import compiled_ann_view

            self.source = "ann view of the graph"
            self.view = compiled_ann_view(graph)  # compiled once, not per batch

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.source is None:
            return None
        with torch.no_grad():
            if self.model is not None:
                return self._model_outputs(x).flatten(1).argmax(1)
            from validation.accuracy import ann_predictions

            pred, why = ann_predictions(self.view, x.cpu().double())
            if pred is None:  # a graph without an ANN view: say so once, go on without it
                self.source, self.note = None, why
            return pred


    def _model_outputs(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)
        x = x.to(device=self.device, dtype=dtype)
        if not self.per_sample:
            try:
                return self.model(x)
            except Exception:  # noqa: BLE001  a program exported with a fixed batch of 1
                if len(x) == 1:
                    raise
                self.per_sample = True
                self.note = ("the PyTorch program accepts one sample at a time (exported with a "
                             "fixed batch size); export it with a dynamic batch for speed")
        return torch.cat([self.model(x[i:i + 1]) for i in range(len(x))])


# -- resume files ---------------------------------------------------------------------------
def graph_digest(graph: nir.NIRGraph) -> str:
    """SHA-256 of a graph's nodes (names, types, parameters, metadata) and edges."""
    h = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, np.ndarray):
            h.update(f"array{value.dtype}{value.shape}".encode())
            h.update(np.ascontiguousarray(value).tobytes())
        elif isinstance(value, torch.Tensor):
            feed(value.detach().cpu().numpy())
        elif isinstance(value, dict):
            for k in sorted(value, key=str):
                h.update(f"key{k!r}".encode())
                feed(value[k])
        elif isinstance(value, (list, tuple)):
            h.update(f"seq{len(value)}".encode())
            for v in value:
                feed(v)
        elif isinstance(value, nir.NIRGraph):
            feed({"nodes": value.nodes, "edges": sorted(value.edges)})
        elif isinstance(value, nir.NIRNode):
            h.update(type(value).__name__.encode())
            feed({k: v for k, v in vars(value).items() if k not in ("input_type", "output_type")})
        else:
            h.update(repr(value).encode())

    feed(graph)
    return h.hexdigest()


def _load_progress(path: Path, fingerprint: dict, group: ProcessGroup) -> list[dict] | None:
    """The per-rank progress saved in ``path`` (read by rank 0, sent to all), or None."""
    state: dict | None | str = None
    if group.is_main and path.exists():
        try:
            state = json.loads(path.read_text())
            if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
                state = f"{path} is not a bridge evaluation progress file; give another --resume path"
        except (OSError, ValueError) as exc:
            state = f"cannot read {path} ({exc}); delete it to start over"
        if isinstance(state, dict):
            old = state.get("fingerprint", {})
            diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
            if diff:
                state = (f"{path} holds the progress of another run (it differs in {', '.join(diff)}); "
                         "resume with the same model, data and options, or give a new --resume path")
    state = group.broadcast(state)
    if isinstance(state, str):
        raise BridgeError(state)
    return None if state is None else state["ranks"]


def _save_progress(path: Path, fingerprint: dict, ranks: list[dict], complete: bool) -> None:
    from bridge.format.nirio import atomic_path

    text = json.dumps({"format": RESUME_FORMAT, "version": 1, "fingerprint": fingerprint,
                       "complete": complete, "ranks": ranks}, indent=1)
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(text)


# -- the run --------------------------------------------------------------------------------
def _check_batch(x: torch.Tensor, y: torch.Tensor, classes: int, first: int) -> None:
    """Streamed data is checked batch by batch as it arrives (it is never held whole), by the
    same rules as data loaded whole: finite inputs, integer labels in ``[0, classes)``."""
    source = f"the data (samples {first}..{first + len(x) - 1})"
    check_finite_data(x, source)
    check_labels(x, y, source, classes)


def evaluate_dataset(
    graph: nir.NIRGraph,
    dataset: Dataset,
    timesteps: Sequence[int],
    *,
    batch_size: int = 256,
    workers: int = 0,
    group: ProcessGroup | None = None,
    dtype: torch.dtype = torch.float32,
    backend: str = "reference",
    ann_model: torch.nn.Module | None = None,
    ann: bool = True,
    count_spikes: bool = True,
    resume: str | Path | None = None,
    checkpoint_every: int = 20,
    progress: Progress | None = None,
    fingerprint: dict | None = None,
    stop_after_batches: int | None = None,
    classes: int | None = None,
) -> Evaluation:
    """Accuracy of ``graph`` after each T in ``timesteps`` on ``dataset`` (samples ``(x, label)``).

    ``group`` (default: one process on the CPU) says which shard this process takes and on
    which device it runs; every rank returns the same, summed :class:`Evaluation`.
    ``ann_model``: the PyTorch ANN, run on the same batches (else the graph's ANN view when
    ``ann``). ``resume``: the progress file (see the module docstring); ``fingerprint``:
    what must match for a resume (the data, the model) besides the options given here.
    ``stop_after_batches``: a test hook that stops this process after that many batches, as
    a kill would (the counts since the last checkpoint are lost). ``classes``: the graph's
    output size when the caller has it already (else one dry run finds it).
    """
    group = group or ProcessGroup()
    ts = parse_timesteps(list(timesteps))
    tmax = max(ts)
    if batch_size < 1:
        raise BridgeError(f"--batch-size must be >= 1, got {batch_size}")
    if workers < 0:
        raise BridgeError(f"--workers must be >= 0, got {workers}")
    if checkpoint_every < 1:
        raise BridgeError(f"--checkpoint-every must be >= 1, got {checkpoint_every}")
    total = len(dataset)  # type: ignore[arg-type]
    if total == 0:
        raise BridgeError("the data set is empty")
    runner = BatchRunner(graph, backend, dtype=dtype, device=group.device, count_spikes=count_spikes)
    predictor = AnnPredictor(graph, ann_model, group.device, ann)
    curve = AccuracyCurve(ts, with_ann=predictor.source is not None)
    layers = runner.layers
    start, stop = shard_bounds(total, group.rank, group.world_size)
    path = Path(resume) if resume is not None else None
    done = 0
    if path is not None:
        if path.parent != Path("") and not path.parent.is_dir():
            raise BridgeError(f"the folder of --resume {path} does not exist; create it first")
        # the graph's digest (a hash of every weight) only where a resume needs it
        fingerprint = {**(fingerprint or {}), "graph": graph_digest(graph), "samples": total, "timesteps": ts,
                       "backend": backend, "dtype": str(dtype).removeprefix("torch."), "batch_size": batch_size,
                       "processes": group.world_size, "ann": predictor.source, "spikes": layers}
        saved = _load_progress(path, fingerprint, group)
        if saved is not None:
            mine = saved[group.rank]
            done = int(mine["done"])
            curve.add_counts(mine["counts"], layers)
    resumed = int(group.all_reduce_sum(torch.tensor([done]))[0])
    # checkpoints are collective: only at batch counts every rank reaches
    shard_sizes = [b - a for a, b in (shard_bounds(total, r, group.world_size) for r in range(group.world_size))]
    common_batches = -(-min(shard_sizes) // batch_size)
    batches_done = -(-done // batch_size)
    loader = DataLoader(Subset(dataset, range(start + done, stop)), batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=group.device.type == "cuda",
                        persistent_workers=False)
    classes = output_classes(graph) if classes is None else classes
    t0 = time.perf_counter()
    this_run = 0
    if progress is not None:
        progress(done, stop - start)
    for xb, yb in worker_batches(loader):  # a worker's error as its own one line
        _check_batch(xb, yb, classes, done)
        running, spikes = runner.run(xb, tmax)
        curve.add_readout(running, yb, predictor(xb))
        if spikes:
            curve.add_spikes(spikes)
        done += len(yb)
        batches_done += 1
        this_run += 1
        if progress is not None:
            progress(done, stop - start)
        if path is not None and batches_done % checkpoint_every == 0 and batches_done <= common_batches:
            _checkpoint(path, fingerprint, group, done, curve, layers, complete=False)
        if stop_after_batches is not None and this_run >= stop_after_batches:
            raise RunInterrupted(f"stopped after {this_run} batches (test hook); run again with "
                                 f"--resume {path} to continue")
    seconds = time.perf_counter() - t0
    mine = curve.to_counts(layers)
    summed = AccuracyCurve(ts, labelled=curve.labelled, with_ann=group.agree(curve.with_ann))
    summed.add_counts(group.all_reduce_sum(mine), layers)
    if path is not None:
        _checkpoint(path, fingerprint, group, done, curve, layers, complete=True)
    seconds = group.slowest(seconds)
    notes = [predictor.note] if predictor.note else []
    return Evaluation(summed, backend, str(group.device), str(dtype).removeprefix("torch."), group.world_size,
                      predictor.source if summed.with_ann else None, seconds, resumed, notes)


def _checkpoint(path: Path, fingerprint: dict, group: ProcessGroup, done: int, curve: AccuracyCurve,
                layers: list[str], *, complete: bool) -> None:
    """Every rank's position and counts, gathered and written by rank 0."""
    vectors = group.all_gather(torch.cat([torch.tensor([done]), curve.to_counts(layers)]))
    if group.is_main:
        ranks = [{"rank": r, "done": int(v[0]), "counts": [int(c) for c in v[1:].tolist()]}
                 for r, v in enumerate(vectors)]
        _save_progress(path, fingerprint, ranks, complete)


def evaluate_graph(
    graph: nir.NIRGraph,
    x: torch.Tensor,
    y: torch.Tensor,
    timesteps: Sequence[int],
    *,
    batch_size: int = 256,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    ann: bool = True,
    **options: Any,
) -> Evaluation:
    """:func:`evaluate_dataset` on tensors in memory: ``x`` ``[N, *input_shape]``, labels ``y``."""
    if len(x) != len(y):
        raise BridgeError(f"{len(x)} samples but {len(y)} labels; give one label per sample")
    shape = input_shape(graph)
    if tuple(x.shape[1:]) != shape:
        raise BridgeError(f"the data has samples of shape {list(x.shape[1:])}, the network expects "
                          f"{list(shape)}; use data of that shape")
    group = ProcessGroup(device=torch.device(device))
    return evaluate_dataset(graph, TensorDataset(x, y.long()), timesteps, batch_size=batch_size,
                            group=group, dtype=dtype, ann=ann, **options)
