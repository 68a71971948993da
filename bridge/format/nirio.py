"""Reading and writing NIR files: atomic, deterministic, with clear errors.

The data model lives in ``nir`` and the extension keys in :mod:`bridge.format.extension`; this
module only moves graphs between memory and disk.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import nir

from bridge.format.errors import BridgeError
from bridge.format.extension import graph_semantics


def check_output_path(path: str | Path, *, force: bool = False) -> Path:
    """Refuse to overwrite an existing file unless ``force`` (nothing the user had is lost)."""
    path = Path(path)
    if path.exists() and not force:
        raise BridgeError(f"{path} already exists; choose another output path or pass --force")
    if path.parent != Path("") and not path.parent.exists():
        raise BridgeError(f"the folder {path.parent} does not exist; create it first")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A crash or an error leaves no partial output behind and never touches an existing
    file until the new one is complete.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent or ".")
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the output the permissions a plain open() would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_graph(graph: nir.NIRGraph, path: str | Path, *, force: bool = False) -> Path:
    """Write ``graph`` to ``path`` atomically; the same graph gives a byte-identical file."""
    path = check_output_path(path, force=force)
    with atomic_path(path, ".nir") as tmp:
        if _has_large_array(graph):
            _write_nir(tmp, graph)
        else:
            nir.write(tmp, graph)
    return path


LARGE_ARRAY_BYTES = 16 << 20


def _has_large_array(graph: nir.NIRGraph) -> bool:
    import numpy as np

    return any(isinstance(v, np.ndarray) and v.nbytes >= LARGE_ARRAY_BYTES
               for node in graph.nodes.values() for v in vars(node).values())


def _write_nir(path: Path, graph: nir.NIRGraph) -> None:
    """``nir.write`` for graphs with large arrays: those that are not constant are stored uncompressed.

    Trained weights barely compress (a few %), and gzip on hundreds of MB takes longer than the
    whole conversion of an ImageNet model; constant arrays (per-neuron thresholds of one value,
    r, v_reset) and everything below 16 MB are gzipped as ``nir.write`` does (graphs without a
    large array go through ``nir.write`` itself). Any HDF5 reader (``nir.read``) reads both.
    """
    import h5py
    import numpy as np

    def compression(v: np.ndarray) -> dict:
        if v.nbytes >= LARGE_ARRAY_BYTES and v.size and v.min() != v.max():
            return {}
        return {"compression": "gzip", "compression_opts": None}

    def write_recursive(group: h5py.Group, node: dict) -> None:  # as nir.serialization.write
        for k, v in node.items():
            if k == "metadata":
                if not v == {}:
                    write_recursive(group.create_group(k), v)
            elif isinstance(v, str):
                group.create_dataset(k, data=v, dtype=h5py.string_dtype())
            elif isinstance(v, np.ndarray):
                group.create_dataset(k, data=v, dtype=v.dtype, **compression(v))
            elif isinstance(v, dict):
                write_recursive(group.create_group(str(k)), v)
            else:
                group.create_dataset(k, data=v)

    with h5py.File(path, "w") as f:
        f.create_dataset("version", data=nir.version, dtype=h5py.string_dtype())
        write_recursive(f.create_group("node"), _as_dict(graph))


def _as_dict(node: nir.NIRNode) -> dict:
    """``node.to_dict()`` without its copies: nir builds the dict with ``dataclasses.asdict``,
    which deep-copies every array (twice for a graph's nodes): seconds and gigabytes for an
    ImageNet model. The same keys in the same order, holding the node's own arrays."""
    import dataclasses

    out = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)
           if f.name not in ("input_type", "output_type")}
    out["type"] = type(node).__name__
    if isinstance(node, nir.NIRGraph):
        out["nodes"] = {k: _as_dict(n) for k, n in node.nodes.items()}
    elif isinstance(node, nir.Input):
        out["shape"] = node.input_type["input"]
    elif isinstance(node, nir.Output):
        out["shape"] = node.output_type["output"]
    elif isinstance(node, nir.Flatten):
        out["input_type"] = node.input_type["input"]
    return out


def _read(path: Path) -> nir.NIRGraph:
    try:
        return nir.read(path)
    except Exception as exc:  # h5py/nir raise many types on a damaged or foreign file
        raise BridgeError(
            f"{path} is not a readable NIR file ({exc.__class__.__name__}: {exc}); "
            "write it with `bridge export --to nir` or nir.write"
        ) from None


def read_graph(path: str | Path) -> nir.NIRGraph:
    """Read a NIR file; refuse one whose bridge extension version this bridge does not know."""
    path = Path(path)
    if not path.is_file():
        raise BridgeError(f"no such file: {path}; check the path")
    graph = _read(path)
    graph_semantics(graph)  # raises on an unknown extension version
    return graph


def write_with(path: str | Path, writer: Callable[[Path], None], *, force: bool = False) -> Path:
    """Atomically write any file: ``writer(tmp_path)`` fills a temp file that becomes ``path``."""
    path = check_output_path(path, force=force)
    with atomic_path(path, path.suffix) as tmp:
        writer(tmp)
    return path
