"""``bridge evaluate``: accuracy vs time-steps of a model or NIR file on the user's data."""

from __future__ import annotations

import json
from pathlib import Path

import click

from bridge.format.errors import BridgeError


def _load_graph(model: Path, arch: str | None, trust_pickle: bool, input_shape: str | None,
                v_init: str, timesteps: int | None, calibration_samples: int, data: str):
    """A NIR file as it is; a PyTorch model converted (thresholds auto, v_init as asked)."""
    from bridge.model.loading import is_nir_file

    if not model.is_file():
        raise BridgeError(f"no such file: {model}; check the path")
    if is_nir_file(model):
        from bridge.format.nirio import read_graph

        if v_init != "half" or timesteps is not None:
            raise BridgeError("--v-init/--timesteps apply to PyTorch models; a NIR file is "
                              "evaluated as written (re-export it to change them)")
        return read_graph(model)
    from app.cli.export_cmd import conversion_options, convert_loaded, model_input_shape, parse_input_shape
    from bridge.data.datasets import load_labelled
    from bridge.model.loading import check_finite, load_model

    options, optimized = conversion_options(v_init=v_init, timesteps=timesteps)
    if optimized and timesteps is None:
        raise BridgeError("--v-init optimized needs --timesteps T")
    loaded = load_model(model, arch=arch, trust_pickle=trust_pickle)
    check_finite(loaded.named_tensors(), str(model))
    shape = model_input_shape(loaded, parse_input_shape(input_shape), model)
    # calibration (percentile thresholds of ReLU models, the optimised v_init): the start of the data
    x, _ = load_labelled(data, input_shape=shape)
    calib = x[:calibration_samples]
    graph = convert_loaded(loaded, shape, options, calibration=calib)
    if optimized:
        import torch

        from bridge.passes.optimize import optimize_initial_potentials

        graph = optimize_initial_potentials(graph, calib.to(torch.float64), timesteps)
    return graph


@click.command(
    name="evaluate",
    epilog="""\b
Examples:
  bridge evaluate model.nir --data digits --steps 1,2,4,8,16,32
  bridge evaluate model.pt2 --data cifar10:/data/cifar --steps 4,8,16,32 --device cuda
  bridge evaluate weights.pt --arch recipes.models:vgg16 --input-shape 3,32,32 \\
      --data imagefolder:/data/val --json
  bridge evaluate model.pt2 --data test.npz --v-init optimized --timesteps 4

\b
DATA: digits (embedded), a .npz with arrays x and y, cifar10:DIR / cifar100:DIR (the
official python format), imagefolder:DIR (one sub-folder per class).""",
)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", required=True, metavar="digits|FILE.npz|cifar10:DIR|imagefolder:DIR",
              help="Labelled data to evaluate on.")
@click.option("--steps", default="1,2,4,8,16,32", show_default=True,
              help="Time-steps T to report (one run of max(T) steps gives them all).")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--limit", type=int, default=None, help="Evaluate only the first N samples.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--arch", metavar="PKG.MOD:FACTORY", help="Code that builds the architecture for a state_dict.")
@click.option("--trust-pickle", is_flag=True, help="Allow unpickling a whole pickled module.")
@click.option("--input-shape", metavar="C,H,W", help="One input sample's shape (PyTorch models).")
@click.option("--v-init", default="half", show_default=True, metavar="half|zero|FLOAT|optimized",
              help="Initial potential when converting a PyTorch model.")
@click.option("--timesteps", type=int, help="T to optimise for (with --v-init optimized).")
@click.option("--calibration-samples", type=int, default=512, show_default=True,
              help="Samples of the data used for calibration when converting.")
def evaluate(model: Path, data: str, steps: str, batch_size: int, device: str, dtype: str,
             limit: int | None, as_json: bool, arch: str | None, trust_pickle: bool,
             input_shape: str | None, v_init: str, timesteps: int | None,
             calibration_samples: int) -> None:
    """Accuracy of the spiking network after each of T time-steps, on your labelled data.

    MODEL is a NIR file (evaluated as written) or a PyTorch model (converted first, as by
    `bridge export`). The readout after T steps is the mean of the output over the T steps.
    """
    import torch
    from app.cli.console import console as make_console
    from rich.progress import Progress
    from rich.table import Table

    from bridge.data.datasets import load_labelled
    from validation.evaluation import evaluate_graph, parse_steps
    from bridge.reference import ReferenceSimulator

    ts = parse_steps(steps)
    if device == "cuda" and not torch.cuda.is_available():
        raise BridgeError("--device cuda asked for but no CUDA GPU is available; use --device cpu")
    graph = _load_graph(model, arch, trust_pickle, input_shape, v_init, timesteps,
                        calibration_samples, data)
    x, y = load_labelled(data, input_shape=ReferenceSimulator(graph).input_shape)
    if limit is not None:
        if limit < 1:
            raise BridgeError(f"--limit must be >= 1, got {limit}")
        x, y = x[:limit], y[:limit]
    console = make_console(stderr=True)
    with Progress(console=console, transient=True, disable=as_json) as bar:
        task = bar.add_task(f"simulating T={max(ts)}", total=len(x))
        result = evaluate_graph(graph, x, y, ts, batch_size=batch_size, device=device,
                                dtype=getattr(torch, dtype), progress=lambda n: bar.advance(task, n))
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    table = Table(title=f"{model.name} on {data}: {result.samples} samples, {device}, {dtype}")
    table.add_column("T", justify="right")
    table.add_column("accuracy (%)", justify="right")
    table.add_column("agreement with ANN (%)", justify="right")
    for t in ts:
        table.add_row(str(t), f"{100 * result.accuracy[t]:.2f}", f"{100 * result.ann_agreement[t]:.2f}")
    table.add_row("ANN", f"{100 * (result.ann_accuracy or 0):.2f}", "")
    make_console().print(table)
