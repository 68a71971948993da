"""The rich consoles every command prints through.

Rich falls back to 80 columns when stdout is not a terminal (CI logs, pipes, files), which
squeezes the wide per-layer tables into unreadable ellipses; off a terminal we use a
fixed, wider page instead.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator

import click
from rich.console import Console

PIPE_WIDTH = 160


def console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=PIPE_WIDTH)


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
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
