"""Reading and writing NIR files: atomic, deterministic, with clear errors.

The data model lives in ``nir`` and the extension keys in :mod:`bridge.format.extension`; this
module only moves graphs between memory and disk.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import nir

from bridge.format.errors import BridgeError
from bridge.format.graph_checks import check_graph
from bridge.format.input_files import check_input_file, first_line
from bridge.format.output_files import (
    check_output_location,
    output_error,
    publish,
    remove_temp,
    signals_deferred,
    sweep_stale_temps,
    temp_prefix,
    track_temp,
)


def check_output_path(path: str | Path, *, force: bool = False) -> Path:
    """Refuse to overwrite an existing file unless ``force`` (nothing the user had is lost),
    and refuse a destination that cannot be written (see :mod:`bridge.format.output_files`)."""
    path = Path(path)
    check_output_location(path)
    if path.is_dir():
        raise BridgeError(f"{path} is a directory; give the path of a file to write")
    if path.exists() and not force:
        raise BridgeError(f"{path} already exists; choose another output path or pass --force")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A crash, an error or a signal (SIGINT, SIGTERM: see :mod:`bridge.format.output_files`) leaves
    no partial output behind and never touches an existing file until the new one is
    complete; a temporary file stranded by SIGKILL is removed by the next run. An OSError
    (read-only folder, full disk, file-size limit) becomes a one-line BridgeError.
    """
    path = Path(path)
    sweep_stale_temps(path)
    tmp: Path | None = None
    try:
        with signals_deferred():  # the temp file exists only once it is noted for cleanup
            fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=suffix or ".tmp",
                                            dir=path.parent or ".")
            tmp = Path(tmp_name)
            track_temp(tmp)
            os.close(fd)
        # mkstemp creates 0600; give the output the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        yield tmp
        publish(tmp, path)  # renamed and noted as written, a signal before or after, not between
        tmp = None
    except OSError as exc:
        raise output_error(path, exc) from None
    finally:
        if tmp is not None:
            remove_temp(tmp)


def write_graph(graph: nir.NIRGraph, path: str | Path, *, force: bool = False) -> Path:
    """Write ``graph`` to ``path`` atomically; the same graph gives a byte-identical file."""
    path = check_output_path(path, force=force)
    if _has_large_array(graph):
        # hundreds of MB (an ImageNet model): HDF5 writes straight into the temp file, since a
        # buffer in memory would double the peak; the space is checked first, so the HDF5 library
        # does not meet a short write (a size limit or a full disk) in the middle of the file
        require_space(path.parent, sum(_array_bytes(graph)))
        with atomic_path(path, ".nir") as tmp:
            try:
                _write_nir(tmp, graph)
            except OSError:
                raise
            except Exception as exc:  # nir/h5py refuse a graph they cannot store
                raise BridgeError(f"cannot store the graph as NIR ({first_line(exc)})") from None
        return path
    data = graph_bytes(graph)
    with atomic_path(path, ".nir") as tmp:
        tmp.write_bytes(data)  # an OSError (full disk, size limit) is named by atomic_path
    return path


def graph_bytes(graph: nir.NIRGraph) -> memoryview:
    """The NIR file of ``graph``, built in memory.

    HDF5 is never pointed at the disk: a short write inside the HDF5 library (a full disk,
    a file-size limit) crashes the process while it closes the file; Python's own write of
    finished bytes fails with a plain OSError instead.
    """
    buf = io.BytesIO()
    try:
        _write_nir(buf, graph)
    except Exception as exc:  # nir/h5py refuse a graph they cannot store
        raise BridgeError(f"cannot store the graph as NIR ({first_line(exc)})") from None
    return buf.getbuffer()  # no copy: an ImageNet graph is hundreds of MB


LARGE_ARRAY_BYTES = 16 << 20


def _array_bytes(graph: nir.NIRGraph) -> list[int]:
    import numpy as np

    return [v.nbytes for node in graph.nodes.values() for v in vars(node).values() if isinstance(v, np.ndarray)]


def require_space(folder: Path, nbytes: int) -> None:
    """Refuse, before writing, a file of about ``nbytes`` that the file-size limit (``ulimit -f``)
    or the free space of ``folder`` cannot hold."""
    import resource
    import shutil

    need = int(nbytes * 1.05) + (1 << 20)  # HDF5's headers and chunk indexes
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and need > soft:
        raise BridgeError(f"the NIR file needs about {need >> 20} MB but the file-size limit (ulimit -f) "
                          f"is {soft >> 20} MB; raise the limit or write elsewhere")
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # the write itself will say what is wrong with the folder
    if need > free:
        raise BridgeError(f"the NIR file needs about {need >> 20} MB but {folder} has {free >> 20} MB free; "
                          "free some space or write elsewhere")


def _has_large_array(graph: nir.NIRGraph) -> bool:
    import numpy as np

    return any(isinstance(v, np.ndarray) and v.nbytes >= LARGE_ARRAY_BYTES
               for node in graph.nodes.values() for v in vars(node).values())


def _write_nir(path: Path | io.BytesIO, graph: nir.NIRGraph) -> None:
    """``nir.write`` for graphs with large arrays: those that are not constant are stored uncompressed.

    Trained weights barely compress (a few %), and gzip on hundreds of MB takes longer than the
    whole conversion of an ImageNet model; constant arrays (per-neuron thresholds of one value,
    r, v_reset) and everything below 16 MB are gzipped as ``nir.write`` does: a graph without a
    large array gives ``nir.write``'s file byte for byte, without the two deep copies of every
    array that ``nir.write`` makes (``to_dict``; a ResNet-50's per-neuron thresholds and initial
    potentials are hundreds of MB). Any HDF5 reader (``nir.read``) reads both.
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


#: the node types whose own ``to_dict`` :func:`_as_dict` restates
_OWN_DICTS = (nir.NIRGraph, nir.Input, nir.Output, nir.Flatten)


def _as_dict(node: nir.NIRNode) -> dict:
    """``node.to_dict()`` without its copies: nir builds the dict with ``dataclasses.asdict``,
    which deep-copies every array (twice for a graph's nodes): seconds and gigabytes for an
    ImageNet model. The same keys in the same order, holding the node's own arrays."""
    import dataclasses

    if type(node).to_dict is not nir.NIRNode.to_dict and type(node) not in _OWN_DICTS:
        return node.to_dict()  # a node type with its own to_dict (nir.Identity): nir's, copies and all
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


HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"  # the first 8 bytes of every HDF5 file


def nir_file_kind(path: str | Path) -> str:
    """``"nir"`` (an HDF5 file with NIR's top-level 'node' group), ``"hdf5"`` (another HDF5
    file) or ``"other"``; never raises for a readable regular file."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != HDF5_MAGIC:
                return "other"
        import h5py

        with h5py.File(path, "r") as f:
            return "nir" if isinstance(f.get("node"), h5py.Group) else "hdf5"
    except Exception:  # a damaged HDF5 file: let the reader say what is wrong
        return "hdf5"


def _read(path: Path) -> nir.NIRGraph:
    kind = nir_file_kind(path)
    if kind == "other":
        raise BridgeError(
            f"{path} is not a readable NIR file (not HDF5); write one with `bridge export --to nir`"
        )
    if kind == "hdf5":
        raise BridgeError(
            f"{path} is an HDF5 file but not a NIR graph (no readable 'node' group); write one "
            "with `bridge export --to nir` or nir.write"
        )
    try:
        return nir.read(path, type_check=False)  # shapes: check_graph and the dry run
    except Exception as exc:  # h5py/nir raise many types on a damaged or foreign file
        raise BridgeError(
            f"{path} is not a readable NIR file ({first_line(exc)}); the file is damaged or "
            "was edited; write it again with `bridge export --to nir` or nir.write"
        ) from None


def read_graph(path: str | Path) -> nir.NIRGraph:
    """Read a NIR file and validate it once (:func:`bridge.format.graph_checks.check_graph`):
    a damaged, nonsensical or unknown-version graph is refused before anything runs."""
    path = check_input_file(path, "NIR file")
    graph = _read(path)
    try:
        check_graph(graph)
    except BridgeError as exc:
        raise BridgeError(f"{path}: {exc}") from None
    try:  # nir's own shape inference and edge check, after the clearer node checks
        _infer_types(graph)
    except Exception as exc:  # nir raises many types on shapes that do not fit
        raise BridgeError(
            f"{path}: the node shapes do not fit together along the edges ({first_line(exc)}); the "
            "file is damaged or was edited; re-export it with `bridge export`"
        ) from None
    return graph


def _infer_types(graph: nir.NIRGraph) -> None:
    for node in graph.nodes.values():
        if isinstance(node, nir.NIRGraph):
            _infer_types(node)
    graph.infer_types()
    graph.check_types()


def write_with(path: str | Path, writer: Callable[[Path], None], *, force: bool = False) -> Path:
    """Atomically write any file: ``writer(tmp_path)`` fills a temp file that becomes ``path``."""
    path = check_output_path(path, force=force)
    with atomic_path(path, path.suffix) as tmp:
        writer(tmp)
    return path
