"""The backend registry: ``--backends`` names -> :class:`~validation.backends.base.Backend` classes.

Backends are imported lazily (a missing framework breaks only the backends that need it),
and adding a backend is one module plus one line in :data:`BACKENDS`. A module may hold
several backends; the registry picks the :class:`Backend` subclass whose ``name`` matches.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect

from bridge.format.errors import BridgeError
from validation.backends.base import Backend

# name -> (module, the pip requirement that provides its framework, or None)
BACKENDS: dict[str, tuple[str, str | None]] = {
    "reference": ("validation.backends.reference", None),
    "spikingjelly": ("validation.backends.spikingjelly", "spikingjelly"),
    "spikingjelly-s": ("validation.backends.spikingjelly", "spikingjelly"),
    "norse": ("validation.backends.norse", "norse"),
    "norse-nir": ("validation.backends.importers", "norse"),
    "spikingjelly-nir": ("validation.backends.importers", "spikingjelly"),
    "snntorch-nir": ("validation.backends.importers", "snntorch"),
    "sinabs-nir": ("validation.backends.importers", "sinabs"),
}

# How to install each framework (sinabs pins an old nir and pulls samna: no deps).
INSTALL_HINT: dict[str, str] = {
    "spikingjelly": "pip install spikingjelly",
    "norse": "pip install norse",
    "snntorch": "pip install snntorch",
    "sinabs": "pip install --no-deps sinabs==3.1.3 pbr",
}

IMPORTERS = ("norse-nir", "spikingjelly-nir", "snntorch-nir", "sinabs-nir")


def names() -> list[str]:
    """Every registered backend name."""
    return list(BACKENDS)


def missing_requirement(name: str) -> str | None:
    """The fix for a backend whose framework is not importable, or None when it is."""
    package = BACKENDS[name][1]
    if package is not None and importlib.util.find_spec(package) is None:
        return f"backend {name!r} needs {package}, which is not installed; {INSTALL_HINT[package]}"
    return None


def get_backend(name: str) -> type[Backend]:
    """The Backend class registered as ``name`` (BridgeError naming the fix if unusable)."""
    if name not in BACKENDS:
        raise BridgeError(
            f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}"
        )
    problem = missing_requirement(name)
    if problem:
        raise BridgeError(problem)
    module = importlib.import_module(BACKENDS[name][0])
    for _, obj in inspect.getmembers(module, inspect.isclass):
        if issubclass(obj, Backend) and not inspect.isabstract(obj) and getattr(obj, "name", None) == name:
            return obj
    raise LookupError(f"BACKENDS is wrong: {BACKENDS[name][0]} defines no Backend named {name!r}")


def parse_backends(spec: str) -> list[str]:
    """``"reference,norse"`` -> ``["reference", "norse"]``, each checked (BridgeError if unusable)."""
    chosen = [s.strip() for s in spec.split(",") if s.strip()]
    if not chosen:
        raise BridgeError("--backends is empty; name at least one, e.g. reference,spikingjelly")
    for name in chosen:
        get_backend(name)
    return list(dict.fromkeys(chosen))
