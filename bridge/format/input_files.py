"""Opening the files a user hands to bridge: one clear line for every way a path can be wrong.

Every command reads its inputs through :func:`check_input_file` / :func:`read_input_bytes`
so that a folder, a FIFO, a missing file or an unreadable one is named for what it is
("is a directory", "is not a regular file", "permission denied") instead of failing deep
inside a library. :func:`read_input_bytes` reads a file once: callers check and then parse
the same bytes, so the file cannot change between the check and the use.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from bridge.format.errors import BridgeError


def describe_os_error(exc: OSError) -> str:
    """A one-line cause for an OSError, e.g. ``permission denied`` or ``no space left``."""
    reasons = {
        errno.ENOENT: "no such file or folder",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "read-only file system",
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file too large (a file-size limit is set)",
        errno.ENAMETOOLONG: "file name too long",
        errno.ENOTDIR: "a parent in the path is a file, not a folder",
        errno.EISDIR: "is a directory",
        errno.EEXIST: "already exists",
        errno.EIO: "input/output error",
    }
    return reasons.get(exc.errno or -1) or " ".join((exc.strerror or str(exc)).split()).lower()


def check_input_file(path: str | Path, what: str = "file") -> Path:
    """``path`` as a Path if it is an existing regular file; otherwise a BridgeError naming why."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise BridgeError(f"no such file: {path}; check the path") from None
    except OSError as exc:
        raise BridgeError(f"cannot read the {what} {path}: {describe_os_error(exc)}") from None
    if stat.S_ISDIR(mode):
        raise BridgeError(f"{path} is a directory, not a {what}; give the path of a file")
    if not stat.S_ISREG(mode):
        raise BridgeError(
            f"{path} is not a regular file (a FIFO, socket or device); give the path of a {what}"
        )
    return path


def read_input_bytes(path: str | Path, what: str = "file") -> bytes:
    """The whole content of a regular file, read once."""
    path = check_input_file(path, what)
    try:
        with open(path, "rb") as f:
            return f.read()
    except MemoryError:
        raise BridgeError(f"the {what} {path} does not fit in memory") from None
    except OSError as exc:
        raise BridgeError(f"cannot read the {what} {path}: {describe_os_error(exc)}") from None


def first_line(exc: BaseException, limit: int = 200) -> str:
    """A library exception as one short line: ``Type: first meaningful line``.

    Framework errors are often paragraphs (torch's weights_only message is a dozen lines);
    a user needs the cause, not the essay.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = " ".join(text.split())[:limit]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
