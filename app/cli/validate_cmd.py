"""``bridge validate``: every backend against the reference, at every time-step."""

from __future__ import annotations

import click

from app.cli.option_types import COUNT

from bridge.format.errors import BridgeError, ValidationFailed
from bridge.passes.profiles import PROFILES

DTYPES = ("float64", "float32")


@click.command(
    name="validate",
    epilog="""\b
Examples:
  bridge validate model.nir --backends reference,spikingjelly,norse --steps 32 --data digits
  bridge validate model.nir --backends spikingjelly,norse-nir,spikingjelly-nir --steps 64 \\
      --data cifar10:~/data/cifar-10-batches-py --limit 500 --report out/
  bridge validate model.nir --json > validation.json
  torchrun --nproc_per_node 4 -m bridge validate model.nir --data test.npz   # 4 shards

\b
Backends: reference, spikingjelly, norse (bridge's exporters: must match the reference
exactly), norse-nir, spikingjelly-nir, snntorch-nir, sinabs-nir (other projects' NIR
importers: measured, never failed). Exit code 1 when a faithful backend has a spike
mismatch that no numerical tie explains, 2 on bad input.""",
)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--backends", default="reference,spikingjelly,norse", show_default=True,
              help="Comma-separated backend names.")
@click.option("--steps", type=COUNT, default=32, show_default=True, help="Time-steps T to simulate.")
@click.option("--data", default="digits", show_default=True,
              help="digits, a .npz with x and y, cifar10:DIR, cifar100:DIR or an ImageFolder DIR.")
@click.option("--limit", type=COUNT, default=None, help="Use only the first N samples.")
@click.option("--timesteps-list", default=None,
              help="T values for the accuracy curve, e.g. 1,2,4,8,16,32 (default: powers of 2 up to --steps).")
@click.option("--dtype", type=click.Choice(DTYPES), default="float64", show_default=True)
@click.option("--batch-size", type=COUNT, default=64, show_default=True)
@click.option("--tie-epsilon", type=float, default=None,
              help="Relative tolerance of a numerical tie (default 1e-9 in float64, 1e-4 in float32).")
@click.option("--profile", type=click.Choice(PROFILES),
              default="exact", show_default=True,
              help="Validate the graph re-encoded by an export profile (see docs/compatibility.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Write report.md and PNG plots into this folder.")
@click.option("--force", is_flag=True, help="Overwrite existing report files.")
def validate(model: str, backends: str, steps: int, data: str, limit: int | None,
             timesteps_list: str | None, dtype: str, batch_size: int, tie_epsilon: float | None,
             profile: str, as_json: bool, report_dir: str | None, force: bool) -> None:
    """Run MODEL (a NIR file) on every backend and compare each with the reference simulator.

    Per backend and IF layer: spike agreement, the first step and neuron where it diverges,
    the largest membrane-potential difference, and whether each mismatch is a numerical tie;
    plus accuracy and agreement with the ANN at every T of the list.
    """
    import torch
    from app.cli.console import console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bridge.data.datasets import load_labelled
    from bridge.reference.probe import probe_graph, read_probed_graph
    from validation.accuracy import parse_timesteps
    from validation.backends import parse_backends
    from validation.distributed import distributed_session, merge_validation_reports, shard_bounds
    from validation.report import render, write_report
    from bridge.format.graph import input_shape
    from validation.suite import validate as run_validation

    if tie_epsilon is not None and not (tie_epsilon >= 0 and tie_epsilon < float("inf")):
        raise BridgeError(f"--tie-epsilon must be a finite number >= 0, got {tie_epsilon}")
    if report_dir:  # refuse an unwritable report folder before the work, not after
        from pathlib import Path

        from bridge.format.output_files import check_output_location

        check_output_location(Path(report_dir))
    names = parse_backends(backends)  # unknown / not installed: BridgeError before any work
    ts = parse_timesteps(timesteps_list, steps) if timesteps_list else _powers_of_two(steps)
    graph, probe = read_probed_graph(model)
    if profile != "exact":
        from bridge.passes.profiles import apply_profile

        graph = apply_profile(graph, profile)
        probe = probe_graph(graph, model)
    x, y = load_labelled(data, input_shape=input_shape(graph), classes=probe.classes)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    from bridge.format.output_files import require_memory

    # per batch, the reference and each backend keep spikes and potentials [T, batch, ...]
    itemsize = torch_dtype.itemsize
    require_memory(2.0 * (1 + len(names)) * steps * min(batch_size, len(x))
                   * probe.step_footprint(itemsize, trace=True),
                   f"validating {len(names)} backend(s) for T = {steps} with batches of {batch_size}",
                   "lower --steps or --batch-size")
    with distributed_session("cpu") as group:  # under torchrun: one shard of the data per process
        if len(x) < group.world_size:
            raise BridgeError(f"{len(x)} samples for {group.world_size} processes; use more data or fewer processes")
        start, stop = shard_bounds(len(x), group.rank, group.world_size)
        x, y = x[start:stop], y[start:stop]
        err = console(stderr=True)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=True,
                      disable=len(x) * steps < 2000 or not group.is_main or not err.is_terminal) as bar:
            # the reference runs once as the baseline (and once more if it is also listed)
            tasks = {n: bar.add_task(n, total=len(x) * (1 + (n == "reference"))) for n in dict.fromkeys(["reference", *names])}
            report = run_validation(
                graph, names, x, y, steps=steps, timesteps=ts, dtype=torch_dtype, batch_size=batch_size,
                rel_epsilon=tie_epsilon, progress=lambda name, n: bar.advance(tasks[name], n),
            )
        shards = group.gather((report, start))  # every shard's report on rank 0
        merged = None if shards is None else merge_validation_reports(*map(list, zip(*shards)))
        ok = group.broadcast(None if merged is None else merged.ok)
        if not group.is_main:
            if not ok:
                raise click.exceptions.Exit(1)  # rank 0 says why
            return
    assert merged is not None
    report = merged
    if as_json:
        click.echo(report.to_json())
    else:
        render(report, console())
    if report_dir:
        try:
            path = write_report(report, report_dir, force=force)
        except OSError as exc:
            from pathlib import Path

            from bridge.format.output_files import output_error

            raise output_error(Path(report_dir), exc) from None
        err.print(f"report written to {path}")
    if not report.ok:
        raise ValidationFailed("; ".join(report.failures()))

def _powers_of_two(steps: int) -> list[int]:
    ts, t = [], 1
    while t < steps:
        ts.append(t)
        t *= 2
    return [*ts, steps]
