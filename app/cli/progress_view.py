"""Library progress (:class:`bridge.format.progress.ProgressEvent`) drawn for a person.

On a terminal: one rich bar per task (the calibration stage), with its step count, the images it
works on, the elapsed time and the ETA, redrawn in place and cleared at the end. Elsewhere (a log
file, a pipe): one plain line when a task starts or moves to its next stage, then at most one
every ``log_every`` seconds, and one when it ends. The library only reports; this module only draws.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)

from bridge.format.progress import ProgressEvent


def event_line(event: ProgressEvent, eta: float | None = None) -> str:
    """One plain log line: ``task: done/total unit, N images, ETA s (detail)``."""
    parts = [f"{event.done}/{event.total} {event.unit}"]
    if event.images:
        parts.append(f"{event.images} images")
    if eta is not None:
        parts.append(f"ETA {eta:.0f} s")
    if event.detail:
        parts.append(event.detail)
    return f"{event.task}: {', '.join(parts)}"


class ProgressView:
    """A :data:`~bridge.format.progress.ProgressCallback` (call it with events) as a context manager."""

    def __init__(self, console: Console, *, enabled: bool = True, log_every: float = 30.0) -> None:
        self.console, self.enabled, self.log_every = console, enabled, log_every
        self.live = enabled and console.is_terminal
        self._bar: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._started: dict[str, tuple[float, int]] = {}
        self._last_line: dict[str, float] = {}
        self._done: dict[str, int] = {}

    def __enter__(self) -> ProgressView:
        if self.live:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[unit]}"), TextColumn("{task.fields[images]}"),
                                 TextColumn("{task.fields[detail]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self.console, transient=True)
            self._bar.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, exc, tb)

    def _eta(self, event: ProgressEvent, now: float) -> float | None:
        """Time left at the pace so far; none for stages (they differ in cost by orders of magnitude)."""
        if event.unit == "stages":
            return None
        t0, d0 = self._started[event.task]
        if event.done <= d0 or now <= t0 or event.total <= event.done:
            return None
        return (event.total - event.done) * (now - t0) / (event.done - d0)

    def __call__(self, event: ProgressEvent) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        first = event.task not in self._started
        if first:
            self._started[event.task] = (now, event.done)
        if self._bar is not None:
            images = f"{event.images} images" if event.images else ""
            if first:
                self._tasks[event.task] = self._bar.add_task(event.task, total=max(event.total, 1),
                                                             completed=event.done, unit=event.unit, images=images,
                                                             detail=event.detail)
            self._bar.update(self._tasks[event.task], total=max(event.total, 1), completed=event.done,
                             unit=event.unit, images=images, detail=event.detail)
            return
        finished = event.done >= event.total
        moved = event.unit == "stages" and event.done != self._done.get(event.task)  # a new stage
        self._done[event.task] = event.done
        if first or finished or moved or now - self._last_line.get(event.task, 0.0) >= self.log_every:
            self._last_line[event.task] = now
            self.console.print(event_line(event, self._eta(event, now)), highlight=False, soft_wrap=True)


def print_conversion(report: Any, console: Console | None = None) -> None:
    """What a conversion calibrated on (source, samples) and what the pipeline chose, with its
    held-out errors and cost (a :class:`bridge.workflow.WorkflowReport`); nothing if it calibrated nothing."""
    from app.cli.console import console as make_console

    out = console or make_console()
    line = report.data_line()
    if line is not None:
        out.print(line, highlight=False, soft_wrap=True)
    if report.calibration is not None:
        out.print(report.calibration.summary(), highlight=False, soft_wrap=True)
    elif report.search_seconds is not None:
        out.print(f"v_init/threshold search for T={report.plan.get('timesteps')}: {report.search_seconds:.1f} s",
                  highlight=False)
