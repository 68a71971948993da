"""Loading a trained model from disk, with the format read from the file's content.

Four formats, detected from the bytes (never from the file name):

============================  =============================================================
``torch.export`` program      zip with ``archive_format`` / ``models/*.json`` members
                              (``torch.export.save``; the recommended format)
TorchScript archive           zip with ``code/`` and ``constants.pkl`` members
                              (``torch.jit.save``); converted with PyTorch's own
                              ``TS2EPConverter`` when a model is converted
``torch.save`` pickle         zip with ``data.pkl`` (or a legacy pickle stream): read with
                              ``torch.load(weights_only=True)``; a state_dict needs ``arch``,
                              a pickled ``nn.Module`` needs ``trust_pickle=True``
anything else                 refused: not a model
============================  =============================================================

A pickled module is never unpickled without ``trust_pickle=True``: unpickling runs
arbitrary code stored in the file. The same holds for the pickles *inside* archives: a
``.pt2`` or TorchScript archive is checked member by member (:mod:`bridge.model.safety`)
before PyTorch reads it, and the file is read once, so what was checked is what is loaded.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from bridge.format.errors import BridgeError
from bridge.format.input_files import first_line, read_input_bytes
from bridge.format.nirio import HDF5_MAGIC
from bridge.model.safety import (
    check_export_archive,
    check_torchscript_archive,
    weights_only_torch_load,
)

ModelFormat = Literal["export", "torchscript", "state_dict", "pickle"]

_PICKLE_PROTOCOL_MAGIC = b"\x80"  # pickle protocol >= 2 opcode
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
# keys under which training scripts commonly nest a state_dict in a checkpoint dict
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
_RESAVE_HINT = (
    "re-save it with `torch.export.save(torch.export.export(model.eval(), (example_input,)), "
    "'model.pt2')`"
)


@dataclass
class LoadedModel:
    """A model read from disk, in the form its file holds.

    Exactly one of ``module`` (state_dict + architecture, or a trusted pickle),
    ``program`` (a ``torch.export`` program) and ``script`` (a TorchScript module, converted
    to a program on :meth:`exported_program`) is set. ``input_shape`` (one sample, no batch)
    is known for programs (their example input) and for architecture factories that return
    ``(model, input_shape)``.
    """

    format: ModelFormat
    path: Path
    module: nn.Module | None = None
    program: torch.export.ExportedProgram | None = None
    script: Any = None
    input_shape: tuple[int, ...] | None = None

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """All weights and buffers (for the NaN/inf check)."""
        if self.module is not None:
            return dict(self.module.state_dict())
        if self.program is not None:
            out = dict(self.program.state_dict)
            out.update({k: v for k, v in self.program.constants.items() if isinstance(v, torch.Tensor)})
            return out
        if self.script is not None:
            return dict(self.script.state_dict())
        return {}

    def exported_program(self, input_shape: tuple[int, ...]) -> torch.export.ExportedProgram:
        """The ``torch.export`` program (TorchScript goes through ``TS2EPConverter``)."""
        if self.program is not None:
            return self.program
        if self.script is None:
            raise ValueError("this model is an nn.Module; convert it directly")
        try:
            from torch._export.converter import TS2EPConverter
        except ImportError:  # pragma: no cover - depends on the torch version
            raise BridgeError(
                f"{self.path} is a TorchScript archive and this PyTorch has no TorchScript-to-"
                f"export converter; {_RESAVE_HINT}"
            ) from None
        example = (torch.zeros((1, *input_shape)),)
        # the converter logs (and prints) its failures and shape specialisations: the one
        # line below says what matters
        try:
            with warnings.catch_warnings(), _quiet_torch_logs():
                warnings.simplefilter("ignore")
                self.program = TS2EPConverter(self.script, example).convert()
        except Exception as exc:  # the converter raises many types on unsupported scripts
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BridgeError(
                f"PyTorch could not convert the TorchScript archive {self.path} to a "
                f"torch.export program ({first[:200]}); {_RESAVE_HINT}"
            ) from None
        return self.program


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights with NaN or inf: they make every downstream threshold meaningless."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise BridgeError(
                f"{where}: tensor {name!r} has {bad} NaN/inf value(s); retrain or repair the "
                "model before converting it"
            )


_ZIP_MAGIC = b"PK\x03\x04"


def _zip_members(data: bytes) -> list[str] | None:
    """The member names of the zip ``data``, or None if it is not one whole zip.

    A truncated archive that holds a stored zip (a ``.pt2`` keeps its example inputs as a
    ``torch.save`` zip) can still show a zip directory: the *inner* one. The first local
    header names the outer archive's first member; if the directory does not list it, the
    directory found is not the file's own.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None
    if data.startswith(_ZIP_MAGIC) and len(data) >= 30:
        name_len = int.from_bytes(data[26:28], "little")
        first = data[30:30 + name_len].decode("utf-8", errors="replace")
        if first not in names:
            return None
    return names


def _format_of(data: bytes) -> Literal["export", "torchscript", "torch_save"] | None:
    members = _zip_members(data)
    if members is not None:
        tails = {m.split("/", 1)[1] if "/" in m else m for m in members}
        if "archive_format" in tails or any(t.startswith("models/") and t.endswith(".json") for t in tails):
            return "export"
        if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
            return "torchscript"
        if "data.pkl" in tails:
            return "torch_save"
        return None
    if data.startswith(_LEGACY_TORCH_MAGIC) or data.startswith(_PICKLE_PROTOCOL_MAGIC):
        return "torch_save"
    return None


def _damaged_zip_kind(data: bytes) -> str | None:
    """What a zip that cannot be opened (truncated, corrupt) was meant to be, from the
    member names in its local headers; None when ``data`` is not a zip at all."""
    if not data.startswith(_ZIP_MAGIC) or _zip_members(data) is not None:
        return None
    if any(m in data for m in (b"archive_format", b"/models/", b"/data/weights/",
                               b"/data/constants/", b"/data/sample_inputs/")):
        return "torch.export archive (.pt2)"
    if b"/code/" in data or b"constants.pkl" in data:
        return "TorchScript archive"
    if b"data.pkl" in data:
        return "torch.save file"
    return "zip file"


def detect_format(path: Path) -> Literal["export", "torchscript", "torch_save"] | None:
    """The format of ``path`` from its content, or None when it holds no model."""
    return _format_of(read_input_bytes(path, "model file"))


def import_factory(arch: str) -> Any:
    """Import ``package.module:factory`` (the current directory is importable, as with
    ``python -m``)."""
    if ":" not in arch:
        raise BridgeError(
            f"--arch {arch!r} must be 'package.module:factory' (a module path, a colon and the "
            "name of a function or class that builds the model)"
        )
    module_name, attr = arch.split(":", 1)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BridgeError(
            f"cannot import {module_name!r} for --arch {arch} ({exc}); check the module path "
            "and run from the folder that contains the package"
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BridgeError(f"module {module_name!r} has no attribute {attr!r}; check --arch {arch}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BridgeError(f"--arch {arch} names {type(obj).__name__}, not a function or class")
    return obj


def _build(arch: str) -> tuple[nn.Module, tuple[int, ...] | None]:
    factory = import_factory(arch)
    try:
        built = factory()
    except Exception as exc:  # the user's code may raise anything
        raise BridgeError(
            f"calling --arch {arch}() failed ({type(exc).__name__}: {str(exc)[:200]}); it must "
            "build the model without arguments"
        ) from None
    shape = None
    if isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module):
        built, shape = built[0], tuple(int(s) for s in built[1])
    if not isinstance(built, nn.Module):
        raise BridgeError(
            f"--arch {arch} returned {type(built).__name__}; it must return an nn.Module "
            "(or (module, input_shape))"
        )
    return built, shape


def _as_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """A state_dict, possibly nested in a checkpoint dict; None if ``obj`` is not one."""
    if isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj):
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj  # type: ignore[return-value]
        for key in _CHECKPOINT_KEYS:
            inner = _as_state_dict(obj.get(key))
            if inner is not None:
                return inner
    return None


def _load_state_dict(module: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    result_keys = set(module.state_dict())
    missing = sorted(result_keys - set(state))
    unexpected = sorted(set(state) - result_keys)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) e.g. {', '.join(unexpected[:3])}")
        raise BridgeError(
            f"the weights in {path} do not fit --arch {arch}: {'; '.join(parts)}; pass the "
            "architecture the weights were trained with"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise BridgeError(
            f"the weights in {path} do not fit --arch {arch} ({detail}); pass the architecture "
            "the weights were trained with"
        ) from None


def _torch_load(data: bytes, path: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        safe_error = exc
    message = str(safe_error)
    if "GLOBAL" not in message and "weights_only" not in message.lower():
        # not a refused global: the file itself is damaged (truncated, bad zip, bad pickle)
        raise BridgeError(
            f"{path} is a truncated or corrupt torch.save file ({first_line(safe_error)}); "
            "save it again"
        ) from None
    if not trust_pickle:
        found = re.search(r"GLOBAL ([\w.]+)", message)
        hint = f" ({found.group(1)})" if found else ""
        raise BridgeError(
            f"{path} holds a pickled Python object{hint}, not plain weights; unpickling it would "
            "run arbitrary code stored in the file, so bridge refuses by default; if you trust "
            "its source pass --trust-pickle (Python: trust_pickle=True), or better save a "
            "state_dict or a torch.export program"
        )
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise BridgeError(
            f"cannot unpickle {path} ({first_line(exc)}); the code that "
            f"defines the model must be importable; {_RESAVE_HINT}"
        ) from None


def _load_export(data: bytes, path: Path, trust_pickle: bool) -> torch.export.ExportedProgram:
    """``torch.export.load`` on the checked bytes (see :mod:`bridge.model.safety`)."""
    guard = contextlib.nullcontext() if trust_pickle else weights_only_torch_load()
    if not trust_pickle:
        check_export_archive(data, path)
    try:
        with warnings.catch_warnings(), _quiet_torch_logs(), guard:
            warnings.simplefilter("ignore")
            return torch.export.load(io.BytesIO(data))
    except Exception as exc:
        raise BridgeError(
            f"cannot read the torch.export program {path} ({first_line(exc)}); the archive is "
            "corrupt or from another PyTorch version; save it again with torch.export.save"
        ) from None


@contextlib.contextmanager
def _quiet_torch_logs() -> Any:
    """Silence what PyTorch prints while it loads or converts a model: torch.export.load
    logs a traceback at WARNING before it falls back to an old format, the TorchScript
    converter logs its failures; bridge's own error says it afterwards, in one line."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def load_model(path: str | Path, *, arch: str | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Read a model file; the format is detected from its content (see the module docstring).

    ``arch`` is ``"package.module:factory"``: code that builds the architecture for a
    state_dict (the factory returns an ``nn.Module`` or ``(nn.Module, input_shape)``); the
    weights are loaded strictly. ``trust_pickle`` allows unpickling a whole pickled module,
    which runs code from the file.
    """
    path = Path(path)
    data = read_input_bytes(path, "model file")  # read once: checked and loaded from memory
    fmt = _format_of(data)
    if fmt is None:
        damaged = _damaged_zip_kind(data)
        if damaged is not None:
            raise BridgeError(
                f"{path} is a truncated or corrupt {damaged} (its zip directory cannot be read); "
                "copy or save it again"
            )
        is_nir = data.startswith(HDF5_MAGIC)
        kind = "an HDF5 file (a NIR graph?)" if is_nir else "not a model file"
        raise BridgeError(
            f"{path} is {kind}: bridge reads torch.export programs (.pt2), state_dicts "
            "(with --arch), TorchScript archives and, with --trust-pickle, pickled modules"
        )
    if fmt == "export":
        program = _load_export(data, path, trust_pickle)
        shape = None
        inputs = [n for n in program.graph_signature.input_specs if n.kind.name == "USER_INPUT"]
        if len(inputs) != 1:
            raise BridgeError(
                f"{path} is a program with {len(inputs)} inputs; bridge converts networks with "
                "exactly one input tensor (an image or a feature vector)"
            )
        if program.example_inputs is not None:
            args, _ = program.example_inputs
            if len(args) == 1 and isinstance(args[0], torch.Tensor):
                shape = tuple(int(s) for s in args[0].shape[1:])
        return LoadedModel("export", path, program=program, input_shape=shape)
    if fmt == "torchscript":
        if not trust_pickle:
            check_torchscript_archive(data, path)
        try:
            script = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except Exception as exc:
            raise BridgeError(
                f"cannot read the TorchScript archive {path} ({first_line(exc)}); {_RESAVE_HINT}"
            ) from None
        script.eval()
        return LoadedModel("torchscript", path, script=script)
    obj = _torch_load(data, path, trust_pickle)
    if isinstance(obj, nn.Module):
        obj.eval()
        return LoadedModel("pickle", path, module=obj)
    state = _as_state_dict(obj)
    if state is None:
        raise BridgeError(
            f"{path} holds a {type(obj).__name__}, not a model or a state_dict; save "
            "model.state_dict() or a torch.export program"
        )
    if arch is None:
        raise BridgeError(
            f"{path} holds a state_dict (weights only, {len(state)} tensors) and no architecture; "
            "pass --arch package.module:factory naming the code that builds the model"
        )
    module, shape = _build(arch)
    _load_state_dict(module, state, path, arch)
    module.eval()
    return LoadedModel("state_dict", path, module=module, input_shape=shape)


def read_bytes_head(path: Path, n: int = 8) -> bytes:
    """The first ``n`` bytes of a file (format sniffing by callers)."""
    with open(path, "rb") as f:
        return f.read(n)


def is_nir_file(path: str | Path) -> bool:
    """True when ``path`` is an HDF5 file (the container of NIR files)."""
    path = Path(path)
    try:
        return path.is_file() and read_bytes_head(path) == HDF5_MAGIC
    except OSError:
        return False


__all__ = ["LoadedModel", "ModelFormat", "check_finite", "detect_format", "import_factory",
           "is_nir_file", "load_model"]


def program_batch(program: torch.export.ExportedProgram) -> int | None:
    """The batch size a ``torch.export`` program was specialised to (None: a dynamic batch)."""
    user = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user:
            val = node.meta.get("val")
            dim = val.shape[0] if isinstance(val, torch.Tensor) and val.dim() else None
            return int(dim) if isinstance(dim, int) else None
    return None


class AnyBatch(nn.Module):
    r"""A program exported for a fixed batch ``b``, run at any batch size: the input is cut into
    chunks of ``b`` (the last one padded with zeros) and the outputs of the real samples are
    concatenated. Exact for a program in eval mode, where samples do not interact."""

    def __init__(self, module: nn.Module, batch: int) -> None:
        super().__init__()
        self.inner, self.batch = module, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n = self.batch, len(x)
        if n == b:
            return self.inner(x)
        outs = []
        for i in range(0, n, b):
            chunk = x[i:i + b]
            real = len(chunk)
            if real < b:
                chunk = torch.cat([chunk, chunk.new_zeros((b - real, *chunk.shape[1:]))])
            outs.append(self.inner(chunk)[:real])
        return torch.cat(outs)


def any_batch_module(program: torch.export.ExportedProgram) -> nn.Module:
    """``program.module()``, wrapped in :class:`AnyBatch` when the program has a fixed batch > 1
    (a fixed batch of 1 runs one sample at a time the same way)."""
    module = program.module()
    batch = program_batch(program)
    return module if batch is None else AnyBatch(module, batch)
