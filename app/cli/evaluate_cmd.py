"""``bridge evaluate``: accuracy vs time-steps of a model or NIR file on the user's data."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from app.cli.option_types import COUNT, WORKERS, time_budget_option
from bridge.format.errors import BridgeError
from bridge.workflow.plan import DEFAULT_CALIBRATION_SAMPLES


def _plan(calibration: str | None, calibration_samples: int, v_init: str | None, timesteps: int | None,
          maxpool: str, thresholds: str, time_budget: float | None = None) -> Any:
    from bridge.workflow import ConversionPlan

    return ConversionPlan(thresholds=thresholds, v_init=v_init, timesteps=timesteps, calibration=calibration,
                          calibration_samples=calibration_samples, maxpool=maxpool, time_budget=time_budget)


def _load_graph(model: Path, plan: Any, arch: str | None, trust_pickle: bool, input_shape: str | None,
                show_progress: bool) -> tuple[Any, Any, Any]:
    """A NIR file as it is; a PyTorch model converted by the plan (:func:`bridge.workflow.run_plan`).

    Returns ``(graph, ann, report)``: ``ann`` is the user's PyTorch model runnable at any batch
    size (None for a NIR file), measured on the same batches as the spiking network.
    """
    from app.cli.console import console, one_line_warnings
    from app.cli.option_types import parse_input_shape
    from app.cli.progress_view import ProgressView
    from bridge.format.input_files import check_input_file
    from bridge.model.loading import is_nir_file
    from bridge.workflow import run_plan
    from bridge.workflow.run import refuse_for_nir_file

    check_input_file(model, "model file")
    shape = parse_input_shape(input_shape)
    if is_nir_file(model):
        from bridge.reference.probe import read_runnable_graph

        given = tuple(flag for flag, value in (("--arch", arch), ("--trust-pickle", trust_pickle),
                                               ("--input-shape", input_shape)) if value)
        refuse_for_nir_file(plan, model, given)
        return read_runnable_graph(model), None, None
    with one_line_warnings(), ProgressView(console(stderr=True), enabled=show_progress) as bar:
        result = run_plan(model, plan, shape, arch=arch, trust_pickle=trust_pickle, progress=bar)
    return result.graph, result.ann, result.report


def _deprecated_steps(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        click.echo("bridge: warning: `evaluate --steps LIST` is now --timesteps-list LIST "
                   "(as in `bridge validate`); --steps will be removed", err=True)
    return value


@click.command(
    name="evaluate",
    epilog="""\b
Examples:
  bridge evaluate model.nir --data digits --timesteps-list 1,2,4,8,16,32
  bridge evaluate model.pt2 --data cifar10:/data/cifar --timesteps-list 4,8,16,32 --device cuda
  bridge evaluate weights.pt --arch recipes.models:resnet34 --input-shape 3,224,224 \\
      --data imagefolder:/data/imagenet/val --transform imagenet --workers 8 \\
      --resume progress.json --output result.json
  torchrun --nproc_per_node 8 -m bridge evaluate model.nir --data imagefolder:/data/val \\
      --transform imagenet --workers 8 --output result.json   # one shard per GPU
  bridge evaluate model.pt2 --data test.npz --calibration train.npy --timesteps 4
  bridge evaluate model.pt2 --data digits --calibration digits --maxpool avg

\b
DATA: digits (the test part of the fixed digits split; --calibration digits reads only its
training part), a .npz with arrays x and y, cifar10:DIR / cifar100:DIR (the
official python format), imagefolder:DIR (one sub-folder per class). Samples are read one
at a time through a DataLoader: memory does not grow with the data set.
--transform imagenet: resize 256, centre crop 224, ImageNet mean/std (or KEY=VALUE,...:
resize=N, crop=N, mean=A/B/C, std=A/B/C). Under torchrun each process takes one shard
(its own GPU with --device auto/cuda) and rank 0 prints the summed counts. A PyTorch model is
converted as by `bridge export` with the same options; calibration data come only from
--calibration, never from --data.""",
)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", required=True, metavar="digits|FILE.npz|cifar10:DIR|imagefolder:DIR",
              help="Labelled data to evaluate on.")
@click.option("--timesteps-list", default="1,2,4,8,16,32", show_default=True,
              help="Time-steps T to report (one run of max(T) steps gives them all).")
@click.option("--steps", "steps_alias", default=None, hidden=True, callback=_deprecated_steps,
              help="Deprecated spelling of --timesteps-list.")
@click.option("--batch-size", type=COUNT, default=256, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: this process's GPU (cuda:LOCAL_RANK) when CUDA is available, else the CPU.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--backend", default="reference", show_default=True,
              help="The simulator: reference, or a validation backend (spikingjelly, norse, ...).")
@click.option("--limit", type=COUNT, default=None, help="Evaluate only the first N samples.")
@click.option("--workers", type=WORKERS, default=None,
              help="DataLoader worker processes per rank [default: 0 for in-memory data, else min(4, CPUs)].")
@click.option("--transform", default=None, metavar="imagenet|KEY=VALUE,...",
              help="Image preprocessing (default: fit the images to the model's input size).")
@click.option("--spikes/--no-spikes", default=True, show_default=True,
              help="Count spikes per layer (for synaptic operations).")
@click.option("--resume", "resume_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Progress file: saved every --checkpoint-every batches; an existing one is continued.")
@click.option("--checkpoint-every", type=COUNT, default=20, show_default=True, help="Batches between saves.")
@click.option("--output", "output_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the result as JSON to this file (atomically, by rank 0).")
@click.option("--force", is_flag=True, help="Overwrite an existing --output file.")
@click.option("--stop-after-batches", type=COUNT, default=None, hidden=True,
              help="Test hook: stop as if killed after N batches of each process.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--arch", metavar="PKG.MOD:FACTORY", help="Code that builds the architecture for a state_dict.")
@click.option("--trust-pickle", is_flag=True, help="Allow unpickling a whole pickled module.")
@click.option("--input-shape", metavar="C,H,W", help="One input sample's shape (PyTorch models).")
@click.option("--thresholds", default="auto", show_default=True, metavar="auto|trained|max|pNN.N",
              help="Threshold source when converting a PyTorch model (as in `bridge export`).")
@click.option("--calibration", metavar="digits|FILE",
              help="Calibration inputs when converting a PyTorch model: digits (the training part of "
                   "the fixed split) or a .npy/.npz/.pt tensor file; never taken from --data.")
@click.option("--calibration-samples", type=COUNT, default=DEFAULT_CALIBRATION_SAMPLES, show_default=True,
              help="Use the first N calibration samples.")
@click.option("--v-init", default=None, metavar="auto|half|zero|FLOAT|optimized",
              help="Initial potential when converting (as in `bridge export`; default auto).")
@click.option("--timesteps", type=COUNT, help="T to calibrate for (needs --calibration).")
@click.option("--maxpool", type=click.Choice(["error", "avg"]), default="error", show_default=True,
              help="MaxPool2d in a PyTorch model: refuse, or replace by average pooling (the table "
                   "shows the ANN's accuracy before and after the swap).")
@time_budget_option
def evaluate(model: Path, data: str, timesteps_list: str, steps_alias: str | None, batch_size: int,
             device: str, dtype: str, backend: str, limit: int | None, workers: int | None,
             transform: str | None, spikes: bool, resume_path: Path | None, checkpoint_every: int,
             output_path: Path | None, force: bool, stop_after_batches: int | None, as_json: bool,
             arch: str | None, trust_pickle: bool, input_shape: str | None, thresholds: str,
             calibration: str | None, calibration_samples: int, v_init: str | None, timesteps: int | None,
             maxpool: str, time_budget: float | None) -> None:
    """Accuracy of the spiking network after each of T time-steps, on your labelled data.

    MODEL is a NIR file (evaluated as written) or a PyTorch model (converted first, as by
    `bridge export`; its own accuracy is measured on the same batches). The readout after T
    steps is the mean of the output over the T steps.
    """
    import torch
    from torch.utils.data import Subset

    from app.cli.console import console as make_console
    from app.cli.run_progress import RunProgress
    from bridge.data.streaming import open_dataset, parse_transform
    from bridge.format.nirio import check_output_path
    from validation.accuracy import parse_timesteps
    from validation.distributed import distributed_session
    from validation.evaluation import evaluate_dataset
    from validation.suite import input_shape as graph_input_shape

    ts = parse_timesteps(steps_alias if steps_alias is not None else timesteps_list)
    plan = _plan(calibration, calibration_samples, v_init, timesteps, maxpool, thresholds, time_budget)
    if output_path is not None:
        check_output_path(output_path, force=force)
    image_transform = parse_transform(transform)
    if backend != "reference":
        from validation.backends import parse_backends

        if len(parse_backends(backend)) != 1:
            raise BridgeError("--backend takes one backend name, e.g. reference or spikingjelly")
    with distributed_session(device) as group:
        graph, ann, report = _load_graph(model, plan, arch, trust_pickle, input_shape,
                                         show_progress=group.is_main and not as_json)
        if report is not None and group.is_main and not as_json:
            from app.cli.progress_view import print_conversion

            print_conversion(report)
        from bridge.format.output_files import require_memory
        from bridge.reference.probe import output_classes

        # one batch holds its outputs and running readouts [max T, batch, classes]
        itemsize = getattr(torch, dtype).itemsize
        classes = output_classes(graph)
        require_memory(4.0 * max(ts) * batch_size * classes * itemsize,
                       f"evaluating up to T = {max(ts)} with batches of {batch_size}",
                       "lower --timesteps-list or --batch-size")
        dataset = open_dataset(data, input_shape=graph_input_shape(graph), transform=image_transform)
        if len(dataset) == 0:
            raise BridgeError(f"the data {data} hold no samples; give at least one labelled sample")
        if limit is not None and limit < len(dataset):
            dataset = Subset(dataset, range(limit))
        in_memory = getattr(getattr(dataset, "dataset", dataset), "in_memory", False)
        n_workers = workers if workers is not None else (0 if in_memory else min(4, len(os.sched_getaffinity(0))))
        err = make_console(stderr=True)
        where = f"rank 0 of {group.world_size}, " if group.distributed else ""
        with RunProgress(err, f"{where}T={max(ts)} on {group.device}",
                         enabled=group.is_main and not as_json) as bar:
            result = evaluate_dataset(
                graph, dataset, ts, batch_size=batch_size, workers=n_workers, group=group,
                dtype=getattr(torch, dtype), backend=backend, ann_model=ann, count_spikes=spikes, classes=classes,
                resume=resume_path, checkpoint_every=checkpoint_every, progress=bar.update,
                fingerprint={"model": str(model.resolve()), "data": data, "limit": limit,
                             "transform": transform, "conversion": None if report is None else report.plan},
                stop_after_batches=stop_after_batches)
        swapped = None
        if report is not None and report.maxpool_replaced:
            # the ANN after --maxpool avg: the ANN view of the graph (average pooling), same samples
            swapped = evaluate_dataset(graph, dataset, [1], batch_size=batch_size, workers=n_workers, group=group,
                                       dtype=getattr(torch, dtype), ann_model=None, count_spikes=False,
                                       classes=classes).ann_accuracy
        if not group.is_main:
            return
    payload = {"model": str(model), "data": data, **result.to_dict()}
    if swapped is not None:
        payload["ann_accuracy_after_maxpool_swap"] = swapped
    if report is not None:
        payload["conversion"] = report.to_dict()
    if output_path is not None:
        from bridge.format.nirio import write_with

        write_with(output_path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2)), force=force)
    if as_json:
        click.echo(json.dumps(payload, indent=2))
        return
    _print_table(model, data, result, swapped)
    if output_path is not None:
        print(f"result written to {output_path}", file=sys.stderr)


def _print_table(model: Path, data: str, result: Any, swapped: float | None = None) -> None:
    from rich.table import Table

    from app.cli.console import console as make_console

    procs = f", {result.world_size} processes" if result.world_size > 1 else ""
    speed = result.images_per_second
    table = Table(title=f"{model.name} on {data}: {result.samples} samples, {result.backend} on "
                        f"{result.device}{procs}, {result.dtype}"
                        + (f", {speed:.1f} images/s" if speed else ""))
    table.add_column("T", justify="right")
    table.add_column("accuracy (%)", justify="right")
    table.add_column("agreement with ANN (%)", justify="right")
    table.add_column("spikes / image", justify="right")
    per_sample = result.curve.spikes_per_sample()
    for t in result.timesteps:
        agree = result.ann_agreement.get(t)
        spikes = sum(d[t] for d in per_sample.values()) if per_sample else None
        table.add_row(str(t), f"{100 * result.accuracy[t]:.2f}",
                      "-" if agree is None else f"{100 * agree:.2f}",
                      "-" if spikes is None else f"{spikes:.0f}")
    if result.ann_accuracy is not None:
        before = ", before the MaxPool swap" if swapped is not None else ""
        table.add_row(f"ANN ({result.ann_source}{before})", f"{100 * result.ann_accuracy:.2f}", "", "")
    if swapped is not None:
        table.add_row("ANN after --maxpool avg (ann view of the graph)", f"{100 * swapped:.2f}", "", "")
    out = make_console()
    out.print(table)
    for note in result.notes:
        out.print(f"note: {note}")
