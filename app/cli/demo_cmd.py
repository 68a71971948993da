"""``bridge demo``: the whole pipeline on the digits and MNIST-1D, with a report folder."""

from __future__ import annotations

from pathlib import Path

import click

from app.cli.option_types import COUNT


@click.command(name="demo")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("bridge-demo"),
              show_default=True, help="Report folder (report.md, PNG plots, results.json, models/).")
@click.option("--seeds", type=COUNT, default=2, show_default=True,
              help="Digits: number of data splits (digits_split(seed), seed = 0..n-1) to average over.")
@click.option("--mnist1d-seeds", type=COUNT, default=None,
              help="MNIST-1D: number of training seeds (default: min(--seeds, 2)).")
@click.option("--benchmark", "benchmarks", type=click.Choice(["digits", "mnist1d"]), multiple=True,
              help="Run only this benchmark (repeatable; default: both).")
@click.option("--quick", is_flag=True, help="Fewer epochs, T up to 16, SJ 99.9% settings only, "
                                            "the pipeline at fewer T, no any-T fit.")
@click.option("--force", is_flag=True, help="Overwrite an existing, non-empty report folder.")
@click.option("--workers", type=COUNT, default=None,
              help="Processes running the (model, seed) jobs side by side (default: one per core, "
                   "at most one per job; 1: everything in this process).")
@click.option("--threads", type=COUNT, default=None,
              help="torch threads per process (default: the cores shared out among the workers).")
@click.option("--strict", is_flag=True, help="Exit with status 1 when a target fails (for CI); by "
                                             "default the last line says which targets fail.")
def demo(out: Path, seeds: int, mnist1d_seeds: int | None, benchmarks: tuple[str, ...], quick: bool,
         force: bool, workers: int | None, threads: int | None, strict: bool) -> None:
    """Train, convert, calibrate, export, validate and report accuracy vs time-steps on the
    digits and MNIST-1D.

    Digits: a clipped-ReLU CNN, a QCFS CNN, a plain-ReLU CNN and a small ResNet. MNIST-1D: a 1D
    CNN and a residual 1D net, each with QCFS and with plain ReLU. Each is converted to NIR,
    calibrated per T (bridge.passes.pipeline, on training data only), exported to SpikingJelly
    and Norse and validated against the reference; accuracy vs T per method, next to
    SpikingJelly's own ann2snn on the same ReLU weights; prints the table, the headline per
    model and the targets; the last line says how many targets pass and names those that fail
    (with --strict a failed target also gives exit status 1; the report is written either way).
    The (model, seed) jobs run side by side in one worker process per core (--workers).

    \b
    Examples:
      bridge demo                                  # both benchmarks, report in ./bridge-demo/
      bridge demo --quick --seeds 1 --out /tmp/d   # a first look (about 2 minutes)
      bridge demo --benchmark mnist1d --mnist1d-seeds 3 --workers 1
    """
    import logging

    from app.cli.console import console as make_console

    from app.demo import BENCHMARKS, DemoConfig, run_demo
    from app.demo_report import check_targets, print_table, summary_line, write_report

    # SpikingJelly's import makes torch log that Triton (a GPU compiler) is absent: noise here
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)
    console = make_console()
    config = DemoConfig.make(out, seeds, quick, force, tuple(benchmarks) or BENCHMARKS, mnist1d_seeds,
                             workers, threads)
    results = run_demo(config, console)
    write_report(results, config, config.out)
    print_table(results, console)
    console.print(f"report: {config.out / 'report.md'}  ({results.seconds:.0f} s)")
    console.print(summary_line(results), highlight=False, soft_wrap=True)
    if strict and not all(t.passed for t in check_targets(results)):
        raise click.exceptions.Exit(1)
