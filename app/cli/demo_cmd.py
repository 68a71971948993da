"""``bridge demo``: the whole pipeline on the embedded digits, with a report folder."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="demo")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("bridge-demo"),
              show_default=True, help="Report folder (report.md, PNG plots, results.json, models/).")
@click.option("--seeds", type=int, default=3, show_default=True,
              help="Number of data splits (digits_split(seed), seed = 0..n-1) to average over.")
@click.option("--quick", is_flag=True, help="Fewer epochs, T up to 16, SJ 99.9% settings only.")
@click.option("--force", is_flag=True, help="Overwrite an existing, non-empty report folder.")
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
def demo(out: Path, seeds: int, quick: bool, force: bool, threads: int | None) -> None:
    """Train, convert, export, validate and report accuracy vs time-steps on the digits.

    Trains a clipped-ReLU CNN, a QCFS CNN, a plain-ReLU CNN and a small ResNet; converts each
    to NIR; exports SpikingJelly and Norse models and validates them against the reference;
    sweeps T with initial potential 0, theta/2 and optimised, next to SpikingJelly's own
    ann2snn on the same ReLU weights; prints the table and the targets.
    """
    import logging

    import torch
    from app.cli.console import console as make_console

    from app.demo import DemoConfig, run_demo
    from app.demo_report import print_table

    # SpikingJelly's import makes torch log that Triton (a GPU compiler) is absent: noise here
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    console = make_console()
    config = DemoConfig.make(out, seeds, quick, force)
    results = run_demo(config, console)
    print_table(results, console)
    console.print(f"report: {config.out / 'report.md'}  ({results.seconds:.0f} s)")
