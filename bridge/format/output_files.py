"""Writing outputs so that a failure of the environment leaves nothing behind.

Every output (a NIR file, a SpikingJelly/Norse folder, an ``.npz`` of traces) is written
under a temporary name beside its destination and renamed at the end. This module owns
what can go wrong around that:

* **Temporary names** carry the writer's process id: ``.model.nir.bridge-tmp-<pid>-XXXX``.
  A run that is killed (SIGKILL, power loss) cannot clean up; the next run that writes
  beside it removes every such file whose process no longer exists
  (:func:`sweep_stale_temps`), never one of a run still going.
* **Signals**: SIGTERM and SIGHUP are turned into :class:`Terminated` (like Ctrl-C's
  KeyboardInterrupt), so the ``finally`` blocks that delete temporary files run and the
  previous output stays as it was (:func:`termination_handlers`). The steps that must not be
  cut in two (create a temp file and note it for cleanup; rename it into place and note the
  output as written; delete it) run with the signals held (:func:`signals_deferred`); every
  temp file still known at exit is removed (:func:`remove_own_temps`, also at interpreter exit).
* **What is on disk**: every output renamed into place is noted (:func:`publish`), so a
  command stopped by a signal or an error can say which outputs are complete
  (:func:`disk_state`) instead of guessing "nothing was written".
* **OS errors** (read-only folder, a parent that is a file, a name too long, a full disk, a
  file-size limit) become one line naming the cause (:func:`output_error`).
* **Memory**: :func:`require_memory` refuses a run whose results cannot fit before it
  allocates them (``--steps 100000000``).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from bridge.format.errors import BridgeError
from bridge.format.input_files import describe_os_error, first_line

TEMP_TAG = ".bridge-tmp-"
_TEMP_PID = re.compile(re.escape(TEMP_TAG) + r"(\d+)-")


class Terminated(BaseException):
    """SIGTERM/SIGHUP arrived: unwinds like KeyboardInterrupt so cleanup code runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def termination_handlers() -> Iterator[None]:
    """While active, SIGTERM and SIGHUP raise :class:`Terminated` (main thread only; a
    no-op elsewhere); the previous handlers come back afterwards."""
    previous: dict[int, object] = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is None:
            continue
        with contextlib.suppress(ValueError, OSError):  # not the main thread / not allowed
            previous[sig] = signal.signal(sig, _raise_terminated)
    # a write past RLIMIT_FSIZE must fail with EFBIG, not kill the process (CPython ignores
    # SIGXFSZ already; an embedding application might not)
    if hasattr(signal, "SIGXFSZ"):
        with contextlib.suppress(ValueError, OSError):
            previous[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, handler)  # type: ignore[arg-type]


#: the signals a user sends to stop a run (Ctrl-C, kill, a closed terminal)
_STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None))
                      if s is not None)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends, then act on the first one that came
    (its handler runs then: KeyboardInterrupt, :class:`Terminated`, or the default action).

    For the few steps that must not be cut in two: a signal lands before or after them, never
    between. Python runs signal handlers in the main thread only; elsewhere this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    previous: dict[int, object] = {}
    try:
        for sig in _STOP_SIGNALS:
            with contextlib.suppress(ValueError, OSError):
                previous[sig] = signal.signal(sig, hold)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # type: ignore[arg-type]
        if pending:
            handler = previous.get(pending[0])
            if callable(handler):
                handler(pending[0], None)
            elif handler != signal.SIG_IGN:
                signal.raise_signal(pending[0])  # the default action, now that the step is done


# temp files/folders of this process that still exist; the outputs renamed into place while a
# command notes them (None: nobody asked, nothing is kept)
_own_temps: set[Path] = set()
_written: list[Path] | None = None


def track_temp(path: Path) -> None:
    """Note a temp file/folder of this process; :func:`remove_own_temps` removes it if it is
    still there (call inside :func:`signals_deferred`, with the call that creates it)."""
    _own_temps.add(Path(path))


def remove_temp(path: Path) -> None:
    """Delete a temp file/folder of this process (if it exists) and forget it."""
    path = Path(path)
    with signals_deferred():
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        _own_temps.discard(path)


def remove_own_temps() -> None:
    """Delete every temp file/folder this process created and still holds: the last resort for
    a signal that interrupted a cleanup (the CLI calls it before it exits, and at exit)."""
    for path in sorted(_own_temps):
        remove_temp(path)


atexit.register(remove_own_temps)


def publish(tmp: Path, path: Path) -> None:
    """Rename the finished ``tmp`` onto ``path`` (atomic) and note ``path`` as written, with
    the signals held, so that a signal never falls between the two."""
    tmp, path = Path(tmp), Path(path)
    with signals_deferred():
        os.replace(tmp, path)
        _own_temps.discard(tmp)
        if _written is not None and path not in _written:
            _written.append(path)


def make_temp_folder(path: Path) -> Path:
    """A new temp folder beside ``path`` (the output it will become), created with the stop signals
    held and noted for cleanup: a signal never leaves one behind."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    with signals_deferred():
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".tmp", dir=parent))
        track_temp(tmp)
    return tmp


def publish_folder(tmp: Path, path: Path) -> None:
    """Put the finished folder ``tmp`` in place of ``path``; an existing folder there (``--force``)
    is moved aside only now that the new one is whole, and deleted after the rename."""
    tmp, path = Path(tmp), Path(path)
    if not path.exists():
        publish(tmp, path)
        return
    parent = path.parent if str(path.parent) else Path(".")
    with signals_deferred():
        old = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".old", dir=parent))
        track_temp(old)
        os.replace(path, old / "x")
    publish(tmp, path)
    remove_temp(old)


@contextlib.contextmanager
def noting_outputs() -> Iterator[None]:
    """While active (one command of the CLI), every output renamed into place is noted for
    :func:`written_outputs` and :func:`disk_state`; outside, nothing is kept."""
    global _written
    previous, _written = _written, []
    try:
        yield
    finally:
        _written = previous


def written_outputs() -> list[Path]:
    """The outputs renamed into place since :func:`noting_outputs` began."""
    return list(_written or [])


def disk_state() -> str:
    """What a command that stopped early leaves on disk, for its last line: ``nothing was
    written`` or the outputs that were completely written before it stopped."""
    written = written_outputs()
    if not written:
        return "nothing was written"
    names = ", ".join(str(p) for p in written)
    verb = "was" if len(written) == 1 else "were"
    return f"{names} {verb} written completely before that; nothing else was written"


def temp_prefix(path: Path) -> str:
    """The name prefix of this process's temporary files for ``path``."""
    return f".{path.name}{TEMP_TAG}{os.getpid()}-"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def sweep_stale_temps(path: Path) -> None:
    """Remove temporary files/folders for ``path`` left by bridge runs that were killed."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    prefix = f".{path.name}{TEMP_TAG}"
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        found = _TEMP_PID.search(entry.name[len(path.name) + 1:])
        if found is None or _alive(int(found.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def output_error(path: Path, exc: OSError) -> BridgeError:
    """One line for an OSError while writing ``path``, with the fix where there is one."""
    cause = describe_os_error(exc)
    fixes = {
        errno.EACCES: "choose a folder you can write to",
        errno.EPERM: "choose a folder you can write to",
        errno.EROFS: "choose a writable folder",
        errno.ENOSPC: "free some space or write elsewhere",
        errno.EDQUOT: "free some space or write elsewhere",
        errno.EFBIG: "raise the limit (ulimit -f) or write less (--limit, fewer --steps)",
        errno.ENAMETOOLONG: "choose a shorter name",
        errno.ENOTDIR: "fix the path",
    }
    fix = fixes.get(exc.errno or -1, "check the path and the disk")
    return BridgeError(f"cannot write {path}: {cause}; {fix}; nothing was written there")


def write_failure(path: Path, exc: BaseException) -> BridgeError:
    """One line for a library error while writing (torch.save and HDF5 report a short write
    on a full disk or past a file-size limit as RuntimeError, not OSError)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return output_error(path, exc)
    return BridgeError(f"cannot write {path}: {first_line(exc)}; the disk may be full or a "
                       "file-size limit set (ulimit -f); nothing was written there")


def check_output_location(path: Path) -> None:
    """Refuse an output whose parent is missing or not a folder, or whose name is too long."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent_is_dir = parent.is_dir()
        parent_exists = parent_is_dir or os.path.lexists(parent)
        os.stat(path)  # ENAMETOOLONG / ENOTDIR show up here; ENOENT is the normal case
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise output_error(path, exc) from None
    if not parent_exists:
        # a parent of the parent may be a file: say which
        for ancestor in parent.parents:
            if ancestor.exists() and not ancestor.is_dir():
                raise BridgeError(f"cannot write {path}: {ancestor} is a file, not a folder; "
                                  "fix the path")
        raise BridgeError(f"the folder {parent} does not exist; create it first")
    if not parent_is_dir:
        raise BridgeError(f"cannot write {path}: {parent} is a file, not a folder; fix the path")
    if len(path.name.encode()) + len(TEMP_TAG) + 24 > 255:
        raise BridgeError(f"cannot write {path}: file name too long; choose a shorter name")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BridgeError(f"cannot write {path}: permission denied in {parent}; choose a folder "
                          "you can write to")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def require_memory(needed: float, what: str, fix: str) -> None:
    """Refuse before allocating when ``needed`` bytes cannot fit in the available memory."""
    available = available_memory()
    if available is not None and needed > 0.8 * available:
        raise BridgeError(f"{what} needs about {_gib(needed)} of memory, {_gib(available)} is "
                          f"available; {fix}")
