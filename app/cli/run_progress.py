"""One progress line for long evaluations: images done, images/s, time left.

On a terminal it is a rich bar redrawn in place; off a terminal (a log file of a multi-hour
job) it prints one plain line every ``log_every`` seconds instead. Under torchrun only rank 0
shows it: its shard is 1/N of the data and runs at the pace of the others.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text


class ImagesPerSecond(ProgressColumn):
    """The task's speed as images/s."""

    def render(self, task: Task) -> Text:
        return Text("-- img/s" if task.speed is None else f"{task.speed:.1f} img/s")


class RunProgress:
    """``update(done, total)`` after each batch; a no-op when not ``enabled``."""

    def __init__(self, console: Console, description: str, *, enabled: bool = True,
                 log_every: float = 60.0) -> None:
        self.console, self.description, self.enabled = console, description, enabled
        self.live = enabled and console.is_terminal
        self.log_every = log_every
        self._bar: Progress | None = None
        self._task = None
        self._first: tuple[float, int] | None = None
        self._last_log = 0.0

    def __enter__(self) -> RunProgress:
        if self.live:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 ImagesPerSecond(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self.console, transient=True)
            self._bar.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, exc, tb)

    def update(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._first is None:
            self._first = (now, done)  # a resumed run: speed from this run's images only
        if self._bar is not None:
            if self._task is None:
                self._task = self._bar.add_task(self.description, total=total, completed=done)
            self._bar.update(self._task, completed=done)
            return
        if self._last_log == 0.0:  # the first log line comes after log_every, not at 0 images
            self._last_log = now
            return
        if now - self._last_log >= self.log_every or done == total:
            self._last_log = now
            t0, d0 = self._first
            rate = (done - d0) / (now - t0) if now > t0 and done > d0 else None
            eta = f"{(total - done) / rate:.0f} s" if rate else "--"
            speed = f"{rate:.1f} img/s" if rate else "-- img/s"
            self.console.print(f"{self.description}: {done}/{total} images, {speed}, ETA {eta}")
