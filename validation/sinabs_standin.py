"""Stand-in modules for the SynSense SDK (``samna``, ``samnagui``), so that sinabs's own
DynapCNN code (layer construction, core mapping, discretisation) runs without it.

``sinabs.backend.dynapcnn`` imports ``samna`` (and ``samna.speck2e.configuration``,
``samna.speck2f.configuration``, ``samnagui``, ...) at import time. PyPI's ``samna`` is a stub
that tries to pip-install itself from an index these machines cannot reach, so it must never be
imported for real. :func:`import_dynapcnn` puts a finder first on ``sys.meta_path`` that answers
every ``samna`` / ``samnagui`` module name with an inert stand-in (any attribute is another
stand-in; calling one returns one), then imports ``sinabs.backend.dynapcnn``. Only the
plain-Python parts of sinabs work against it: building a ``DynapcnnNetwork``, its layer-to-core
mapping (``get_valid_mapping``), its discretisation; anything that talks to a device or builds a
samna configuration object gets stand-ins, not a chip configuration.

This is the one place bridge places such stand-ins (tests and benchmarks import it).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

_ROOTS = ("samna", "samnagui")


class _StandIn(types.ModuleType):
    """An inert module: every attribute is a stand-in, calling one returns a stand-in."""

    __path__: list[str] = []  # a package, so that submodules can be imported

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        child = _StandIn(f"{self.__name__}.{name}")
        setattr(self, name, child)
        return child

    def __call__(self, *args: Any, **kwargs: Any) -> _StandIn:
        return _StandIn(f"{self.__name__}()")

    def __mro_entries__(self, bases: tuple) -> tuple:  # used as a base class: plain object
        return (object,)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] in _ROOTS:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _StandIn(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__path__ = []  # type: ignore[attr-defined]


_FINDER = _Finder()


def install() -> None:
    """Answer every ``samna`` / ``samnagui`` import with a stand-in from now on (idempotent).

    A real ``samna`` already imported is refused: the stand-in cannot replace it safely.
    """
    for root in _ROOTS:
        module = sys.modules.get(root)
        if module is not None and not isinstance(module, _StandIn):
            raise RuntimeError(f"the real {root!r} is already imported; bridge never imports it")
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def import_dynapcnn() -> types.ModuleType:
    """``sinabs.backend.dynapcnn``, imported against the stand-ins."""
    install()
    return importlib.import_module("sinabs.backend.dynapcnn")
