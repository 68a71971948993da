"""``bridge export``: a trained model (or a NIR file) -> NIR, SpikingJelly or Norse.

The command parses options into a :class:`bridge.workflow.ConversionPlan`, runs it with
:func:`bridge.workflow.run_plan` (loading, conversion, calibration, provenance: the library) and
prints; writing is :mod:`bridge.format.nirio` (atomic) and :mod:`exporters` (framework
artifacts). Every user error is a :class:`BridgeError` (one line, exit 2) raised before anything
is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from app.cli.console import one_line_warnings
from app.cli.option_types import COUNT, parse_input_shape, time_budget_option
from bridge.format.errors import BridgeError
from bridge.passes.profiles import PROFILES
from bridge.workflow.plan import DEFAULT_CALIBRATION_SAMPLES

TARGETS = ("nir", "spikingjelly", "norse", "snntorch", "sinabs", "speck")


def _summary(path: Path, graph: Any, target: str, *, as_json: bool = False, report: Any = None) -> None:
    from app.cli.console import console

    from bridge.format.inspect import inspect_graph

    info = inspect_graph(graph)
    tot = info["totals"]
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    if as_json:
        payload = {"output": str(path), "target": target, "bytes": size, "totals": tot,
                   "conversion": None if report is None else report.to_dict()}
        click.echo(json.dumps(payload, indent=2, default=str))
        return
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


def _write_artifact(graph: Any, target: str, out: Path, force: bool) -> Path:
    from exporters import write_artifact

    return write_artifact(graph, target, out, force=force)


def _write(graph: Any, target: str, out: Path, force: bool, plan: Any, as_json: bool = False,
           calibration: Any = None) -> tuple[Path, Any]:
    """Write ``graph`` as ``target``: a NIR file, a framework folder, or a Speck folder (legalised,
    checked against the chip, its resource table printed). Returns the path and the graph written."""
    if target == "nir":
        from bridge.format.nirio import write_graph

        return write_graph(graph, out, force=force), graph
    if target == "speck":
        from app.cli.console import console
        from bridge.workflow.targets import speck_export

        written = speck_export(graph, plan, out, force=force, calibration=calibration)
        console(stderr=as_json).print(written.table, highlight=False, soft_wrap=True)  # stdout keeps the JSON
        return written.path, written.graph
    return _write_artifact(graph, target, out, force), graph


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
  bridge export model.pt2 --calibration digits --timesteps 4 --weights int8 --to nir -o m_int8.nir
  bridge export model.nir --weights int8 --to nir -o m_int8.nir
  bridge export model.pt2 --calibration images.npy --timesteps 8 --to speck -o speck_model/

\b
MODEL is detected from its content: a torch.export program (.pt2, recommended), a
state_dict (needs --arch), a TorchScript archive, a pickled module (needs --trust-pickle),
or a NIR file (for the framework and chip targets, and for --weights intN).""",
)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--to", "target", type=click.Choice(TARGETS), required=True,
              help="Output format: a NIR file, a SpikingJelly / Norse / snnTorch / sinabs model folder, or "
                   "a SynSense Speck folder (integer graph, sinabs layers, resource table; needs --calibration).")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="Output file (nir) or folder (the other targets).")
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
              help="Calibration inputs: digits (the training part of the fixed digits split, never "
                   "the test part that --data digits evaluates) or a .npy/.npz/.pt tensor file.")
@click.option("--calibration-samples", type=COUNT, default=DEFAULT_CALIBRATION_SAMPLES,
              show_default=True, help="Use the first N calibration samples.")
@click.option("--v-init", default=None, metavar="auto|half|zero|FLOAT|optimized",
              help="Initial potential: auto (default: with --calibration the calibration pipeline, "
                   "else theta/2), theta/2, 0, a fraction of theta, or the v_init/threshold search only.")
@click.option("--timesteps", type=COUNT, help="T to calibrate for (needs --calibration; default with "
                                              "--calibration: a setting for every T).")
@click.option("--maxpool", type=click.Choice(["error", "avg"]), default="error", show_default=True,
              help="MaxPool2d: refuse (default) or replace by average pooling (accuracy changes).")
@click.option("--weights", "weight_precision", default="model", show_default=True,
              metavar="model|float32|float64|intN",
              help="Precision of the weights in the NIR file: the model's own (float32 for a float32 "
                   "model), float32 / float64, or intN (N = 2..16): fixed point after calibration, "
                   "N-bit integer weights and 16-bit integer thresholds (docs/integer-networks.md).")
@click.option("--profile", default="exact", show_default=True,
              type=click.Choice(PROFILES),
              help="NIR encoding: exact (bridge metadata), or thresholds normalised to 1 for "
                   "importers that need one scalar threshold (see docs/compatibility.md).")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
@time_budget_option
@click.option("--json", "as_json", is_flag=True,
              help="Print the result as JSON (the plan, the calibration data, every calibration stage).")
def export(model: Path, target: str, out: Path, arch: str | None, trust_pickle: bool,
           input_shape: str | None, thresholds: str, channel_wise: bool | None, calibration: str | None,
           calibration_samples: int, v_init: str | None, timesteps: int | None, maxpool: str,
           weight_precision: str, profile: str, force: bool, time_budget: float | None, as_json: bool) -> None:
    """Convert a trained PyTorch model to a spiking network (NIR), or a NIR file to a
    SpikingJelly or Norse model.

    Each clipped activation becomes an IF neuron (threshold = clip bound, reset by
    subtraction, spike when v >= theta, initial potential theta/2 by default).
    """
    from bridge.format.input_files import check_input_file
    from bridge.model.loading import is_nir_file
    from bridge.workflow import ConversionPlan, run_plan
    from bridge.workflow.run import refuse_for_nir_file

    shape = parse_input_shape(input_shape)
    plan = ConversionPlan(thresholds=thresholds, channel_wise=channel_wise, v_init=v_init, timesteps=timesteps,
                          calibration=calibration, calibration_samples=calibration_samples, maxpool=maxpool,
                          weights=weight_precision, profile=profile, time_budget=time_budget)
    if profile != "exact" and target != "nir":
        raise BridgeError("--profile applies to --to nir; the exporters always build the exact graph")
    check_input_file(model, "model file")
    _check_output(out, target, force)

    if target == "speck":
        from bridge.workflow.targets import speck_plan

        plan = speck_plan(plan)
    if is_nir_file(model):
        from bridge.format.nirio import nir_file_kind
        from bridge.reference.probe import read_runnable_graph

        given = tuple(flag for flag, value in (("--arch", arch), ("--trust-pickle", trust_pickle),
                                               ("--input-shape", input_shape)) if value)
        # a NIR file is used as written; it can still be put in fixed point, and Speck's readout
        # threshold is chosen on calibration images for T
        usable = (("--weights",) if plan.weight_bits is not None else ()) + (
            ("--calibration", "--calibration-samples", "--timesteps") if target == "speck" else ())
        refuse_for_nir_file(plan, model, given, allowed=usable)
        if target == "nir" and nir_file_kind(model) == "nir" and plan.weight_bits is None:
            raise BridgeError(f"{model} is already a NIR file; use --to spikingjelly, norse, snntorch, sinabs "
                              "or speck, or --weights intN for a fixed-point copy")
        graph = read_runnable_graph(model)  # an HDF5 file that is not NIR: says so
        if plan.weight_bits is not None:
            from bridge.workflow.targets import integer_graph

            graph = integer_graph(graph, plan.weights)
        _summary(*_write(graph, target, out, force, plan, as_json), target, as_json=as_json)
        return

    from app.cli.console import console
    from app.cli.progress_view import ProgressView, print_conversion

    with one_line_warnings(), ProgressView(console(stderr=True), enabled=not as_json) as bar:
        result = run_plan(model, plan, shape, arch=arch, trust_pickle=trust_pickle, progress=bar)
    graph, report = result.graph, result.report
    if not as_json:
        print_conversion(report)
    written, graph = _write(graph, target, out, force, plan, as_json, result.calibration)
    _summary(written, graph, target, as_json=as_json, report=report)
