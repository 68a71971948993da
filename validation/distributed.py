"""Several processes (and GPUs) on one evaluation, through ``torch.distributed``.

``torchrun --nproc_per_node N -m bridge evaluate ...`` starts N copies of the command with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set;
:func:`distributed_session` joins them into one process group (NCCL when the ranks run on
CUDA, gloo on CPU). Each rank takes a contiguous, disjoint shard of the data
(:func:`shard_bounds`: no sample is padded or repeated, so counts are exact), counts on its
own device, and the integer counts are summed with ``all_reduce``: the numbers do not depend
on the number of processes. Without torchrun (``WORLD_SIZE`` unset or 1) everything runs in
this process and no process group is created.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from bridge.format.errors import BridgeError


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the run: ``rank`` of ``world_size``, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # "gloo" | "nccl" | None (one process)

    @property
    def is_main(self) -> bool:
        """Rank 0 prints and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, counts: torch.Tensor) -> torch.Tensor:
        """Sum of ``counts`` (int64) over all ranks, on every rank, as a CPU tensor."""
        if not self.distributed:
            return counts.clone()
        import torch.distributed as dist

        t = counts.to(self._comm_device, dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu()

    def all_gather(self, values: torch.Tensor) -> list[torch.Tensor]:
        """``values`` (int64, the same length on every rank) of every rank, in rank order."""
        if not self.distributed:
            return [values.clone()]
        import torch.distributed as dist

        t = values.to(self._comm_device, dtype=torch.int64)
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return [o.cpu() for o in out]

    def slowest(self, seconds: float) -> float:
        """The largest of every rank's ``seconds`` (to the microsecond): a collective run lasts as
        long as its slowest rank."""
        return max(int(v[0]) for v in self.all_gather(torch.tensor([int(seconds * 1e6)]))) / 1e6

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (small picklable objects: our own processes only)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._comm_device)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order), None elsewhere."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def agree(self, ok: bool) -> bool:
        """True on every rank when ``ok`` is True on every rank (so all ranks stop together)."""
        return int(self.all_reduce_sum(torch.tensor([0 if ok else 1]))[0]) == 0

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")


def shard_bounds(samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s samples ``[start, stop)``: contiguous blocks whose sizes differ by <= 1.

    The blocks cover ``range(samples)`` exactly once (no padding, unlike
    ``DistributedSampler``), so the summed counts are those of one process.
    """
    if not 0 <= rank < world_size:
        raise BridgeError(f"rank {rank} is not in a world of {world_size}")
    base, extra = divmod(samples, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def pick_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto``: this rank's GPU when CUDA is available, else the CPU; ``cuda``: ``cuda:LOCAL_RANK``."""
    if device not in ("auto", "cpu", "cuda"):
        raise BridgeError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BridgeError("--device cuda asked for but no CUDA GPU is available; use --device cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise BridgeError(f"local rank {local_rank} has no GPU ({count} visible); start at most "
                          f"{count} processes per node (torchrun --nproc_per_node {count})")
    return torch.device("cuda", local_rank)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value in (None, "") else int(value)
    except ValueError:
        raise BridgeError(f"the environment variable {name}={value!r} is not an integer; "
                          "start the run with torchrun") from None


@contextlib.contextmanager
def distributed_session(device: str = "auto") -> Iterator[ProcessGroup]:
    """The process group torchrun set up in the environment (or a one-process group).

    The group is created on entry and destroyed on exit; CUDA ranks use NCCL on their
    ``cuda:LOCAL_RANK``, CPU ranks gloo.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    dev = pick_device(device, local_rank)
    if world <= 1:
        yield ProcessGroup(0, 1, 0, dev, None)
        return
    import torch.distributed as dist

    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = not dist.is_initialized()
    if created:
        try:
            dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                    **({"device_id": dev} if dev.type == "cuda" else {}))
        except ValueError as exc:  # MASTER_ADDR / MASTER_PORT missing
            raise BridgeError(f"cannot join the process group: {exc}; start the run with torchrun") from None
    try:
        yield ProcessGroup(rank, world, local_rank, dev, backend)
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


# -- bridge validate over shards ------------------------------------------------------------
_STATUS_RANK = {"ok": 0, "failed": 1, "refused": 2, "error": 3, "not installed": 4}


def _shift(comparison: Any, offset: int) -> Any:
    """A shard's comparison with its sample indices made global (shard start ``offset``)."""
    from dataclasses import replace

    def move(d: Any) -> Any:
        return None if d is None else replace(d, sample=d.sample + offset)

    layers = {k: replace(v, first_divergence=move(v.first_divergence),
                         first_unexplained=move(v.first_unexplained)) for k, v in comparison.layers.items()}
    return replace(comparison, layers=layers)


def _merge_backend(a: Any, b: Any, offset: int) -> Any:
    """Two shards' reports of one backend: counts added, the worse status kept."""
    from dataclasses import replace

    worse = b if _STATUS_RANK.get(b.status, 5) > _STATUS_RANK.get(a.status, 5) else a
    comparison = a.comparison
    if b.comparison is not None:
        shifted = _shift(b.comparison, offset)
        comparison = shifted if comparison is None else comparison.merge(shifted)
    accuracy = a.accuracy if b.accuracy is None else (b.accuracy if a.accuracy is None else a.accuracy.merge(b.accuracy))
    return replace(a, status=worse.status, message=worse.message, comparison=comparison,
                   accuracy=accuracy, seconds=max(a.seconds, b.seconds))


def merge_validation_reports(reports: list[Any], offsets: list[int]) -> Any:
    """One :class:`validation.suite.ValidationReport` from the reports of data shards.

    ``offsets[i]`` is the index of shard i's first sample: divergences keep global sample
    indices. Counts add up; a backend's status is the worst any shard saw; seconds are the
    slowest shard's (the shards ran side by side).
    """
    from dataclasses import replace

    if offsets[0] != 0:
        raise BridgeError("the first shard must start at sample 0")
    merged = replace(reports[0], backends=list(reports[0].backends), notes=list(reports[0].notes))
    for report, offset in zip(reports[1:], offsets[1:]):
        merged.samples += report.samples
        merged.reference = _merge_backend(merged.reference, report.reference, offset)
        merged.backends = [_merge_backend(a, b, offset) for a, b in zip(merged.backends, report.backends)]
        merged.notes += [n for n in report.notes if n not in merged.notes]
    for b in merged.backends:  # a shard that failed fails the whole run
        if b.status == "ok" and b.faithful and b.comparison is not None and b.comparison.unexplained:
            b.status = "failed"
    return merged
