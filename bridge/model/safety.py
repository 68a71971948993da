"""Static checks that a model file runs no code when it is read, done before it is read.

Loading a model is a code-execution hazard in every PyTorch format:

* ``torch.export`` archives (``.pt2``) keep example inputs, pickled weights and constants
  as ``torch.save`` payloads, which ``torch.export.load`` reads with the *full* unpickler
  (``weights_only=False``; sample inputs fall back to it), "opaque" constants with
  ``pickle.loads``, TorchBind objects with ``torch._C._pickle_load_obj``, symbolic shape
  expressions from the JSON with ``sympy.sympify`` (which is ``eval``), guard strings that
  are compiled into Python, and AOTInductor members that are shared libraries.
* TorchScript archives hold pickles read by TorchScript's own unpickler and TorchScript
  code, of which ``__setstate__`` runs while the archive is loaded.

:func:`check_export_archive` and :func:`check_torchscript_archive` look at the bytes of
an archive, member by member, without running anything: every pickle must pass PyTorch's
weights-only unpickler (an allow-list of tensor types) or a static scan of its globals,
every expression must be a plain sympy expression. Anything else is refused with one line
that names the member and ``--trust-pickle``. The caller then hands the *same bytes* to
PyTorch, so the file cannot change between the check and the load.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickletools
import re
import tokenize
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from bridge.format.errors import BridgeError
from bridge.format.input_files import first_line

TRUST_HINT = (
    "unpickling it would run code stored in the file, so bridge refuses by default; if you "
    "trust its source pass --trust-pickle (Python: trust_pickle=True)"
)

# members of a torch.export archive, relative to its top folder
_EXPORT_PAYLOAD_DIRS = ("data/weights/", "data/constants/", "data/sample_inputs/")
_EXPORT_CODE_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia/")
_CUSTOM_OBJ_PREFIXES = ("custom_obj_", "opaque_obj_")

# names a sympy expression of a torch.export shape may use (sympy's srepr of symbols,
# numbers and the functions torch's deserializer knows); anything else is not a shape
_SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan",
    "GreaterThan", "Equality", "Unequality", "And", "Or", "Not", "true", "false", "True",
    "False", "oo", "zoo", "nan", "Infinity", "NegativeInfinity", "IntInfinity",
    "NegativeIntInfinity", "floor", "ceiling", "sqrt",
    "integer", "positive", "nonnegative", "negative", "nonpositive", "real", "finite",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt",
    "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "OpaqueUnaryFn_log2",
})
_SYMPY_OPS = frozenset({"(", ")", ",", "=", "+", "-", "*", "/", "**", "//", "%", "<", ">",
                        "<=", ">=", "==", "!="})
_SYMBOL_STRING = re.compile(r"^(['\"])[A-Za-z_][A-Za-z0-9_]*\1$|^(['\"])[-+0-9.e]+\2$")

# globals a TorchScript pickle may name: its own classes (``__torch__.*``, defined by the
# archive's TorchScript code), tensor rebuilding, storages and containers
_TORCHSCRIPT_GLOBAL = re.compile(
    r"^(__torch__(\.\w+)* \w+|torch\._utils _rebuild_\w+|torch \w+Storage|"
    r"torch\.jit\._pickle \w+|collections OrderedDict)$"
)


def _refuse(path: Path, member: str, what: str) -> BridgeError:
    return BridgeError(f"{path}: member {member!r} {what}; {TRUST_HINT}")


def check_torch_save_payload(data: bytes, path: Path, member: str) -> None:
    """``data`` (a ``torch.save`` zip or a raw pickle) must load with the weights-only
    unpickler, which resolves only tensor, storage and container types."""
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        detail = f"names {found.group(1)}" if found else f"is not plain tensors ({first_line(exc, 120)})"
        raise _refuse(path, member, f"is a pickle that {detail}") from None


def _check_sympy_expression(text: str, path: Path, member: str) -> None:
    """A shape expression is ``eval``-ed by sympy: only sympy names, numbers, symbol-name
    strings and arithmetic may appear (no attribute access, no subscripts, no dunders)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        raise _refuse(path, member, "holds a shape expression that does not parse") from None
    for tok in tokens:
        ok = (
            tok.type in (tokenize.NUMBER, tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)
            or (tok.type == tokenize.NAME and tok.string in _SYMPY_NAMES)
            or (tok.type == tokenize.OP and tok.string in _SYMPY_OPS)
            or (tok.type == tokenize.STRING and _SYMBOL_STRING.match(tok.string) is not None)
        )
        if not ok:
            raise _refuse(
                path, member,
                f"holds a shape expression with {tok.string!r}, which is not a sympy "
                "expression (sympy would evaluate it as Python)",
            )


def _walk_json(obj: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield key, value
            yield from _walk_json(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from _walk_json(item)


def _load_json(data: bytes, path: Path, member: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BridgeError(
            f"{path} is a truncated or corrupt torch.export archive ({member} is not JSON); "
            "save it again with torch.export.save"
        ) from None


def _check_program_json(data: bytes, path: Path, member: str) -> None:
    program = _load_json(data, path, member)
    for key, value in _walk_json(program):
        if key == "expr_str":
            if not isinstance(value, str):
                raise _refuse(path, member, "holds a shape expression that is not text")
            _check_sympy_expression(value, path, member)
        elif key == "guards_code" and value:
            raise _refuse(path, member, "holds guard code (Python source run by the program)")


def _pickled_payloads(config: Any, path: Path, member: str, folder: str) -> set[str]:
    """The members (``folder`` + path_name, joined as torch joins them) that a
    weights/constants config tells torch to unpickle."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise BridgeError(
            f"{path} is a truncated or corrupt torch.export archive ({member} has no 'config'); "
            "save it again with torch.export.save"
        )
    pickled: set[str] = set()
    for meta in entries.values():
        name = meta.get("path_name") if isinstance(meta, dict) else None
        if not isinstance(name, str):
            raise BridgeError(
                f"{path} is a truncated or corrupt torch.export archive ({member} has an entry "
                "without a path); save it again with torch.export.save"
            )
        if name.startswith(_CUSTOM_OBJ_PREFIXES):
            raise _refuse(path, member, f"declares {name!r}, a pickled Python object")
        if meta.get("use_pickle"):
            pickled.add(os.path.join(folder, name))
    return pickled


def _export_records(data: bytes, path: Path) -> tuple[Any, list[str]]:
    """PyTorch's own zip reader on the bytes, plus a consistency check against Python's:
    a zip crafted so that the two readers see different members is refused."""
    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        records = sorted(reader.get_all_records())
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
    except Exception:
        raise BridgeError(
            f"{path} is a truncated or corrupt torch.export archive (its zip directory cannot "
            "be read); save it again with torch.export.save"
        ) from None
    stripped = [n.split("/", 1)[1] if "/" in n else n for n in names]
    if len(set(stripped)) != len(stripped) or sorted(stripped) != records:
        raise BridgeError(
            f"{path} is a corrupt torch.export archive (duplicate or inconsistent zip members); "
            "save it again with torch.export.save"
        )
    return reader, records


def check_export_archive(data: bytes, path: Path) -> None:
    """Refuse a torch.export archive that ``torch.export.load`` would run code from."""
    reader, records = _export_records(data, path)

    def read(name: str) -> bytes:
        try:
            return reader.get_record(name)
        except Exception:
            raise BridgeError(
                f"{path} is a truncated or corrupt torch.export archive (member {name!r} "
                "cannot be read); save it again with torch.export.save"
            ) from None

    if "archive_format" not in records or not any(
        r.startswith("models/") and r.endswith(".json") for r in records
    ):
        raise BridgeError(
            f"{path} is a truncated or corrupt torch.export archive (no archive_format or "
            "models/*.json); save it again with torch.export.save"
        )
    pickled: set[str] = set()
    for name in records:
        if name.startswith(_EXPORT_CODE_DIRS):
            raise _refuse(path, name, "holds compiled code (AOTInductor/ExecuTorch)")
        if name.endswith("_config.json") and name.startswith(("data/weights/", "data/constants/")):
            folder = name.rsplit("/", 1)[0] + "/"
            pickled |= _pickled_payloads(_load_json(read(name), path, name), path, name, folder)
        elif name.startswith("models/") and name.endswith(".json"):
            _check_program_json(read(name), path, name)
    for name in records:
        if name in pickled:
            check_torch_save_payload(read(name), path, name)
            continue
        if not name.startswith(_EXPORT_PAYLOAD_DIRS) or name.endswith(".json"):
            continue
        base = name.rsplit("/", 1)[1]
        if base.startswith(_CUSTOM_OBJ_PREFIXES):
            raise _refuse(path, name, "is a pickled Python object")
        # raw tensor bytes are never unpickled; sample inputs and the legacy
        # '<model>.pt' weight/constant files are
        if name.startswith("data/sample_inputs/") or base.endswith(".pt"):
            check_torch_save_payload(read(name), path, name)


@contextlib.contextmanager
def weights_only_torch_load() -> Iterator[None]:
    """While active, every ``torch.load`` is weights-only whatever its caller asks.

    A second line of defence around ``torch.export.load`` after :func:`check_export_archive`:
    torch's loader passes ``weights_only=False`` for pickled payloads and falls back to it
    for sample inputs; here such a payload fails instead of running.
    """
    original = torch.load

    def load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = original  # type: ignore[assignment]


def check_torchscript_archive(data: bytes, path: Path) -> None:
    """Refuse a TorchScript archive whose pickles name non-TorchScript globals or whose
    code defines ``__setstate__`` (run while the archive loads)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = [(n, z.read(n)) for n in z.namelist()]
    except Exception:
        raise BridgeError(
            f"{path} is a truncated or corrupt TorchScript archive; save it again with "
            "torch.jit.save, or better as a torch.export program"
        ) from None
    for name, content in members:
        tail = name.split("/", 1)[1] if "/" in name else name
        if tail.endswith(".pkl") and not tail.endswith(".debug_pkl"):
            try:
                ops = list(pickletools.genops(content))
            except Exception:
                raise BridgeError(
                    f"{path} is a corrupt TorchScript archive ({tail} is not a pickle); save it again"
                ) from None
            for op, arg, _ in ops:
                if op.name in ("STACK_GLOBAL", "INST", "OBJ") or (
                    op.name == "GLOBAL" and not _TORCHSCRIPT_GLOBAL.match(str(arg))
                ):
                    what = f"names {arg}" if op.name == "GLOBAL" else f"uses the {op.name} opcode"
                    raise _refuse(path, tail, f"is a pickle that {what}, not a TorchScript type")
        elif tail.startswith("code/") and tail.endswith(".py") and b"__setstate__" in content:
            raise _refuse(path, tail, "defines __setstate__, TorchScript code run while loading")
