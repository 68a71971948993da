"""The rich consoles every command prints through.

Rich falls back to 80 columns when stdout is not a terminal (CI logs, pipes, files), which
squeezes the wide per-layer tables into unreadable ellipses; off a terminal we use a
fixed, wider page instead.
"""

from __future__ import annotations

import sys

from rich.console import Console

PIPE_WIDTH = 160


def console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=PIPE_WIDTH)
