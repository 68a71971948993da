"""``bridge export``: a trained model (or a NIR file) -> NIR, SpikingJelly or Norse.

The command only parses options, loads and hands over: loading is :mod:`bridge.model.loading`,
conversion :mod:`bridge.converter`, initial-potential optimisation :mod:`bridge.passes.optimize`,
writing :mod:`bridge.format.nirio` (atomic) and :mod:`exporters` (framework artifacts). Every user
error is a :class:`BridgeError` (one line, exit 2) raised before anything is written.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from bridge.format.errors import BridgeError
from bridge.passes.profiles import PROFILES

TARGETS = ("nir", "spikingjelly", "norse")
DEFAULT_CALIBRATION_SAMPLES = 512


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """``"1,16,16"`` -> ``(1, 16, 16)``: one sample, no batch dimension."""
    if text is None:
        return None
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise BridgeError(
            f"--input-shape {text!r} is not a shape; give positive integers without the batch "
            "dimension, e.g. --input-shape 3,32,32"
        )
    return shape


def conversion_options(thresholds: str = "auto", v_init: str = "half", **fields: Any) -> tuple[Any, bool]:
    """The command line's options as a checked :class:`bridge.converter.ConversionOptions`, and
    whether ``--v-init optimized`` asks for the data-driven fit after conversion (the converter
    itself starts from theta/2 then)."""
    from bridge.converter.options import ConversionOptions

    optimized = v_init == "optimized"
    value: str | float = v_init
    if not optimized and v_init not in ("half", "zero"):
        try:
            value = float(v_init)
        except ValueError:
            value = v_init  # refused by ConversionOptions, naming --v-init
    return ConversionOptions(thresholds=thresholds, v_init="half" if optimized else value, **fields), optimized


def digits_calibration(input_shape: tuple[int, ...], samples: int) -> Any:
    """The embedded digits shaped for the model: (N, 1, H, W), or (N, s*s) for a flat input."""
    import torch
    import torch.nn.functional as F

    from bridge.data.datasets import digits_arrays

    if len(input_shape) == 1:
        side = math.isqrt(input_shape[0])
        if side * side != input_shape[0]:
            raise BridgeError(
                f"--calibration digits needs a square image input; the model takes "
                f"{input_shape[0]} features; pass a .npy/.npz/.pt calibration file instead"
            )
        x, _ = digits_arrays(side)
        return x[:samples].flatten(1)
    if len(input_shape) != 3 or input_shape[0] != 1:
        raise BridgeError(
            f"--calibration digits gives 1-channel images; the model takes input shape "
            f"{list(input_shape)}; pass a .npy/.npz/.pt calibration file instead"
        )
    h, w = input_shape[1:]
    if h == w:
        x, _ = digits_arrays(h)
    else:
        x, _ = digits_arrays(8)
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x[:samples].to(torch.float32).contiguous()


def load_calibration(spec: str | None, input_shape: tuple[int, ...], samples: int) -> Any:
    """``digits``, a tensor file, or None; the first ``samples`` rows, shaped (N, *input_shape)."""
    if spec is None:
        return None
    if samples < 1:
        raise BridgeError(f"--calibration-samples must be >= 1, got {samples}")
    if spec == "digits":
        return digits_calibration(input_shape, samples)
    from bridge.data.datasets import load_tensor_file

    x = load_tensor_file(spec)[:samples]
    if tuple(x.shape[1:]) != input_shape:
        raise BridgeError(
            f"the calibration data in {spec} has samples of shape {list(x.shape[1:])}, the model "
            f"takes {list(input_shape)}; save an array (N, {', '.join(map(str, input_shape))})"
        )
    return x


def _summary(path: Path, graph: Any, target: str) -> None:
    from app.cli.console import console

    from bridge.format.inspect import inspect_graph

    info = inspect_graph(graph)
    tot = info["totals"]
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    theta = (
        f"{tot['threshold_min']:.4g} .. {tot['threshold_max']:.4g}"
        if tot["threshold_min"] is not None else "-"
    )
    console().print(
        f"[bold green]wrote[/] {path} ({target}, {size / 1024:.1f} KiB): {tot['nodes']} nodes, "
        f"{tot['if_nodes']} IF layers, {tot['neurons']:,} neurons, {tot['params']:,} parameters, "
        f"thresholds {theta}",
        highlight=False, soft_wrap=True,
    )


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Show bridge's own warnings (e.g. --maxpool avg) as one line each on stderr;
    library deprecation noise raised while tracing is dropped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    shown: set[str] = set()
    for w in caught:
        message = " ".join(str(w.message).split())
        if issubclass(w.category, UserWarning) and "/bridge/" in w.filename and message not in shown:
            shown.add(message)
            click.echo(f"bridge: warning: {message}", err=True)


def _write_artifact(graph: Any, target: str, out: Path, force: bool) -> Path:
    from exporters import write_artifact

    return write_artifact(graph, target, out, force=force)


def _check_output(out: Path, target: str, force: bool) -> None:
    """Refuse before any work: an existing output without --force, or a missing folder."""
    from bridge.format.nirio import check_output_path
    from bridge.format.output_files import check_output_location

    check_output_location(out)
    if target == "nir":
        if out.is_dir():
            raise BridgeError(f"{out} is a folder; --to nir writes one file, e.g. -o model.nir")
        check_output_path(out, force=force)
    elif out.exists() and not force:
        raise BridgeError(f"{out} already exists; choose another output folder or pass --force")


def _optimize(graph: Any, calibration: Any, timesteps: int) -> Any:
    """--v-init optimized: fit initial potentials (and thresholds) per channel on the data."""
    import torch

    from bridge.passes.optimize import optimize_initial_potentials

    return optimize_initial_potentials(
        graph, torch.as_tensor(calibration, dtype=torch.float64), timesteps,
        channel_wise=True, progress=True,
    )


def _calibrate(graph: Any, calibration: Any, timesteps: int | None) -> Any:
    """The default with --calibration: the calibration pipeline for T (or for every T), with its
    choice and cost printed (bridge.passes.pipeline)."""
    import torch

    from app.cli.console import console

    from bridge.passes.pipeline import CalibrationReport, calibrate

    report = CalibrationReport(timesteps)
    out = console()
    calibrated = calibrate(graph, torch.as_tensor(calibration, dtype=torch.float32), timesteps, report=report,
                           progress=lambda e: out.print(f"[dim]calibrating: {e.task}...[/]", highlight=False)
                           if e.unit == "stages" and e.done == 0 else None)
    out.print(report.summary(), highlight=False, soft_wrap=True)
    return calibrated


@click.command(
    name="export",
    epilog="""\b
Examples:
  bridge export model.pt2 --to nir -o model.nir
  bridge export weights.pt --arch mypkg.nets:vgg16 --input-shape 3,32,32 --to nir -o model.nir
  bridge export weights.pt --arch mypkg.nets:vgg16 --input-shape 3,32,32 \\
      --thresholds p99.99 --calibration images.npy --to nir -o model.nir
  bridge export model.pt2 --calibration digits --timesteps 4 --to nir -o m.nir
  bridge export model.pt2 --v-init optimized --timesteps 8 --calibration digits --to nir -o m.nir
  bridge export whole_model.pt --trust-pickle --input-shape 1,16,16 --to nir -o model.nir
  bridge export model.nir --to spikingjelly -o sj_model/
  bridge export model.nir --to norse -o norse_model/

\b
MODEL is detected from its content: a torch.export program (.pt2, recommended), a
state_dict (needs --arch), a TorchScript archive, a pickled module (needs --trust-pickle),
or a NIR file (for --to spikingjelly/norse).""",
)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--to", "target", type=click.Choice(TARGETS), required=True,
              help="Output format: a NIR file, or a SpikingJelly / Norse model folder.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="Output file (nir) or folder (spikingjelly, norse).")
@click.option("--arch", metavar="PKG.MOD:FACTORY",
              help="Code that builds the architecture for a state_dict file.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow unpickling a whole pickled module (runs code from the file).")
@click.option("--input-shape", metavar="C,H,W",
              help="Shape of one input sample without batch (default: the .pt2's example input).")
@click.option("--thresholds", default="auto", show_default=True, metavar="auto|trained|max|pNN.N",
              help="Threshold source: the trained clip bounds, or calibration max / percentile.")
@click.option("--channel-wise/--layer-wise", default=None,
              help="Calibrated thresholds per channel or per layer (default: per channel when the "
                   "calibration pipeline runs, else per layer).")
@click.option("--calibration", metavar="digits|FILE",
              help="Calibration inputs: the embedded digits or a .npy/.npz/.pt tensor file.")
@click.option("--calibration-samples", type=int, default=DEFAULT_CALIBRATION_SAMPLES,
              show_default=True, help="Use the first N calibration samples.")
@click.option("--v-init", default=None, metavar="auto|half|zero|FLOAT|optimized",
              help="Initial potential: auto (default: with --calibration the calibration pipeline, "
                   "else theta/2), theta/2, 0, a fraction of theta, or the v_init/threshold search only.")
@click.option("--timesteps", type=int, help="T to calibrate for (default with --calibration: a "
                                            "setting for every T).")
@click.option("--maxpool", type=click.Choice(["error", "avg"]), default="error", show_default=True,
              help="MaxPool2d: refuse (default) or replace by average pooling (accuracy changes).")
@click.option("--weights", "weight_precision", type=click.Choice(["model", "float32", "float64"]), default="model",
              show_default=True, help="Precision of the weights in the NIR file: the model's own "
                                      "(float32 for a float32 model), or float32 / float64.")
@click.option("--profile", default="exact", show_default=True,
              type=click.Choice(PROFILES),
              help="NIR encoding: exact (bridge metadata), or thresholds normalised to 1 for "
                   "importers that need one scalar threshold (see docs/compatibility.md).")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def export(model: Path, target: str, out: Path, arch: str | None, trust_pickle: bool,
           input_shape: str | None, thresholds: str, channel_wise: bool | None, calibration: str | None,
           calibration_samples: int, v_init: str | None, timesteps: int | None, maxpool: str,
           weight_precision: str, profile: str, force: bool) -> None:
    """Convert a trained PyTorch model to a spiking network (NIR), or a NIR file to a
    SpikingJelly or Norse model.

    Each clipped activation becomes an IF neuron (threshold = clip bound, reset by
    subtraction, spike when v >= theta, initial potential theta/2 by default).
    """
    from bridge.model.loading import check_finite, is_nir_file, load_model

    shape = parse_input_shape(input_shape)
    # --v-init auto (the default): with --calibration the calibration pipeline (bridge.passes.pipeline)
    # after a theta/2 conversion with per-channel thresholds, else theta/2
    pipeline = v_init in (None, "auto") and calibration is not None
    if v_init in (None, "auto"):
        v_init = "half"
    if channel_wise is None:
        channel_wise = pipeline
    options, optimized = conversion_options(thresholds, v_init, channel_wise=channel_wise, maxpool=maxpool,
                                            timesteps=timesteps, weights=weight_precision)
    if optimized and (timesteps is None or calibration is None):
        raise BridgeError("--v-init optimized needs --timesteps T and --calibration data")
    if profile != "exact" and target != "nir":
        raise BridgeError("--profile applies to --to nir; the exporters always build the exact graph")
    if timesteps is not None and timesteps < 1:
        raise BridgeError(f"--timesteps must be >= 1, got {timesteps}")
    from bridge.format.input_files import check_input_file

    check_input_file(model, "model file")
    _check_output(out, target, force)

    if is_nir_file(model):
        from bridge.reference.probe import read_runnable_graph
        from bridge.format.nirio import nir_file_kind

        if target == "nir" and nir_file_kind(model) == "nir":
            raise BridgeError(f"{model} is already a NIR file; use --to spikingjelly or --to norse")
        graph = read_runnable_graph(model)  # an HDF5 file that is not NIR: says so
        _summary(_write_artifact(graph, target, out, force), graph, target)
        return

    loaded = load_model(model, arch=arch, trust_pickle=trust_pickle)
    check_finite(loaded.named_tensors(), str(model))
    shape = model_input_shape(loaded, shape, model)
    calib = load_calibration(calibration, shape, calibration_samples)
    with _one_line_warnings():
        graph = convert_loaded(loaded, shape, options, calibration=calib)
        if optimized:
            assert timesteps is not None
            graph = _optimize(graph, calib, timesteps)
        elif pipeline:
            graph = _calibrate(graph, calib, timesteps)

    if target == "nir":
        from bridge.format.nirio import write_graph
        from bridge.passes.profiles import apply_profile

        written = write_graph(apply_profile(graph, profile), out, force=force)
    else:
        written = _write_artifact(graph, target, out, force)
    _summary(written, graph, target)


def model_input_shape(loaded: Any, given: tuple[int, ...] | None, path: Path) -> tuple[int, ...]:
    """The sample shape: ``--input-shape`` or the program's own (the converter's rule)."""
    from bridge.converter import resolve_input_shape

    own = loaded.input_shape if loaded.module is None else None
    return resolve_input_shape(own, given if given is not None else (
        loaded.input_shape if loaded.module is not None else None), str(path))


def convert_loaded(loaded: Any, input_shape: tuple[int, ...], options: Any, calibration: Any = None) -> Any:
    """Convert a :class:`bridge.model.loading.LoadedModel` (the converter picks the front-end)."""
    from bridge import converter

    if loaded.module is not None:
        check_runs(loaded.module, input_shape)
    return converter.convert(loaded, input_shape, calibration=calibration, options=options)


def check_runs(module: Any, input_shape: tuple[int, ...]) -> None:
    """Run the model once on zeros: a wrong --input-shape fails here with one clear line."""
    import torch

    import inspect

    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        params = []
    required = [p for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(required) > 1:
        raise BridgeError(
            f"the model's forward takes {len(required)} inputs "
            f"({', '.join(p.name for p in required)}); bridge converts networks with exactly "
            "one input tensor (an image or a feature vector)"
        )
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    try:
        with torch.no_grad():
            module.eval()(torch.zeros((2, *input_shape), dtype=dtype))
    except Exception as exc:  # any layer may raise (shape mismatch, reshape, ...)
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        cause = lines[-1].strip()[:200] if lines else type(exc).__name__
        raise BridgeError(
            f"the model does not run on an input of shape {list(input_shape)} ({cause}); pass "
            "the shape of one sample without batch dimension as --input-shape, e.g. 3,32,32"
        ) from None
