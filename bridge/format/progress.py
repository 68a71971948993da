"""Progress of long library work, as plain events: the library reports, the app draws.

A long-running function (the calibration pipeline, an evaluation) takes an optional
``progress: ProgressCallback`` and calls it with a :class:`ProgressEvent` whenever it moves on.
The library never draws a bar itself: the command line turns events into a rich progress bar
on a terminal and into plain log lines elsewhere; a Python caller may ignore them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    """``done`` of ``total`` units of the task ``task`` (e.g. ``"joint fit"``, 40 of 150 iterations).

    ``unit`` names what is counted (``"iterations"``, ``"layers"``, ``"images"``); ``images`` is
    how many samples the task works on (0 if it does not apply); ``detail`` is a short free text
    (e.g. the current held-out error with its unit).
    """

    task: str
    done: int
    total: int
    unit: str = "steps"
    images: int = 0
    detail: str = ""


ProgressCallback = Callable[[ProgressEvent], None]
