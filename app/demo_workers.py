"""The demo's (model, seed) jobs in worker processes, their progress bars drawn by the parent.

Each job (:class:`app.demo.DemoJob`) trains, converts, calibrates and measures one model on one
seed, independent of every other job, so :func:`run_jobs_in_processes` runs them side by side in
``config.workers`` spawned processes (spawned, not forked: a forked torch can hang on the
parent's thread pools), each with ``config.threads_per_worker()`` torch threads. Small models
gain far more from a process per core than from torch's threads inside one process. Every job
returns its own :class:`app.demo.Results`; the caller merges them in job order, so the lists over
seeds are the same as in one process. The first failure stops the pool and is raised here.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import queue as queue_module
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.demo import DemoConfig, DemoJob, Results, _Progress

#: how often the parent redraws the workers' bars (seconds)
POLL_S = 0.2

_messages = None  # the worker's end of the progress queue (set by _start_worker)
_bar_ids = itertools.count()


def _start_worker(messages, threads: int) -> None:
    """Runs once in each worker process."""
    import torch

    global _messages
    _messages = messages
    torch.set_num_threads(threads)
    # SpikingJelly's import makes torch log that Triton (a GPU compiler) is absent: noise here
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)


class _RelayedBars:
    """A job's bars, sent to the parent as messages (:meth:`app.demo._Progress.relay`)."""

    def task(self, description: str, total: int) -> Callable[..., None]:
        key = f"{os.getpid()}-{next(_bar_ids)}"
        _messages.put((key, description, total))

        def update(done: int | None = None, advance: int = 1) -> None:
            _messages.put((key, done, advance))
        return update


def _run_job(job: DemoJob, config: DemoConfig) -> Results:
    from app.demo import run_job

    return run_job(job, config, _RelayedBars())


def _drain(messages, progress: _Progress) -> None:
    while True:
        try:
            progress.relay(messages.get_nowait())
        except queue_module.Empty:
            return


def run_jobs_in_processes(jobs: list[DemoJob], config: DemoConfig, progress: _Progress) -> list[Results]:
    """Every job's :class:`~app.demo.Results`, in the order of ``jobs`` (the longest start first)."""
    from app.demo import MODEL_BY_KEY

    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    pool = context.Pool(min(config.workers, len(jobs)), _start_worker, (messages, config.threads_per_worker()))
    try:
        longest_first = sorted(range(len(jobs)), key=lambda i: -MODEL_BY_KEY[jobs[i].model].job_seconds)
        pending = {i: pool.apply_async(_run_job, (jobs[i], config)) for i in longest_first}
        while not all(p.ready() for p in pending.values()):
            _drain(messages, progress)
            for p in pending.values():
                if p.ready() and not p.successful():
                    p.get()  # raises the job's error
            time.sleep(POLL_S)
        results = [pending[i].get() for i in range(len(jobs))]
        pool.close()
    except BaseException:
        pool.terminate()  # the other jobs' work is of no use without this one
        raise
    finally:
        pool.join()  # a worker's queue is flushed before it exits: the last messages are here
        _drain(messages, progress)
    return results
