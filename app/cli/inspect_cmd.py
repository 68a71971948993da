"""``bridge inspect``: the nodes, thresholds and semantics of a NIR file."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command(
    name="inspect",
    epilog="""\b
Examples:
  bridge inspect model.nir
  bridge inspect model.nir --json > model.json""",
)
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (for machines).")
def inspect(path: Path, as_json: bool) -> None:
    """Show the nodes, shapes, thresholds, initial potentials and semantics of a NIR file.

    v_init is shown as a fraction of the threshold (0.5 = theta/2). A plain NIR file (no
    bridge metadata) is described with the NIR-text semantics.
    """
    from bridge.format.inspect import inspect_graph, render
    from bridge.reference.probe import read_runnable_graph

    # the same checks (and dry run) as every command that runs the graph: a file inspect
    # accepts is one simulate accepts
    info = inspect_graph(read_runnable_graph(path))
    if as_json:
        click.echo(json.dumps({"file": str(path), **info}, indent=2))
        return
    from app.cli.console import console

    console().print(render(info, title=str(path)))
