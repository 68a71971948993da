"""The backend registry: ``--backends`` names -> :class:`~validation.backends.base.Backend` classes.

Backends are imported lazily (a missing framework breaks only the backends that need it),
and adding a backend is one module plus one line in :data:`BACKENDS`. A module may hold
several backends; the registry picks the :class:`Backend` subclass whose ``name`` matches.
Code outside bridge (a third party's importer) adds its backend at run time with
:func:`register`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Mapping

import nir
import torch

from bridge.format.errors import BridgeError
from validation.backends.base import Backend, SimulationResult

# name -> (module, the pip requirement that provides its framework, or None)
BACKENDS: dict[str, tuple[str, str | None]] = {
    "reference": ("validation.backends.reference", None),
    "spikingjelly": ("validation.backends.spikingjelly", "spikingjelly"),
    "spikingjelly-s": ("validation.backends.spikingjelly", "spikingjelly"),
    "norse": ("validation.backends.norse", "norse"),
    "snntorch": ("validation.backends.snntorch", "snntorch"),
    "sinabs": ("validation.backends.sinabs", "sinabs"),
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

# backends added at run time by register(): name -> Backend subclass
REGISTERED: dict[str, type[Backend]] = {}


def register(name: str, factory: type[Backend] | Callable[..., Backend], *, faithful: bool = True,
             description: str = "", unsupported: Mapping[str, str] | None = None) -> type[Backend]:
    """Make ``factory`` the backend ``name`` for :func:`validation.validate` and the conformance runner.

    ``factory`` is a :class:`Backend` subclass, or any callable
    ``factory(graph, *, dtype, device) -> Backend`` (e.g. a function that runs your own
    importer). ``unsupported`` maps case tags to the reason the backend refuses such graphs
    (see :mod:`validation.conformance`). Returns the registered class; a name already taken is
    a BridgeError.
    """
    if name in BACKENDS or name in REGISTERED:
        raise BridgeError(f"a backend named {name!r} is already registered; choose another name")
    if isinstance(factory, type) and issubclass(factory, Backend):
        cls = type(factory.__name__, (factory,), {"name": name})
        if description:
            cls.description = description
    elif callable(factory):
        cls = _delegating_backend(factory)
        cls.name, cls.faithful, cls.description = name, faithful, description
    else:
        raise BridgeError(f"register({name!r}, ...) needs a Backend subclass or a callable, "
                          f"got {type(factory).__name__}")
    if unsupported is not None:
        cls.unsupported_tags = dict(unsupported)  # type: ignore[attr-defined]
    REGISTERED[name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a backend added by :func:`register` (a no-op for unknown names)."""
    REGISTERED.pop(name, None)


def _delegating_backend(factory: Callable[..., Backend]) -> type[Backend]:
    """A Backend class whose instances build ``factory(graph, ...)`` and run it."""

    class Registered(Backend):
        def __init__(self, graph: nir.NIRGraph, *, dtype: torch.dtype = torch.float64,
                     device: str | torch.device = "cpu", **kwargs: object) -> None:
            super().__init__(graph, dtype=dtype, device=device)
            self.inner = factory(graph, dtype=dtype, device=device, **kwargs)

        def run(self, x: torch.Tensor, steps: int, *, trace: bool = False) -> SimulationResult:
            return self.inner.run(x, steps, trace=trace)

    return Registered


def names() -> list[str]:
    """Every registered backend name."""
    return [*BACKENDS, *REGISTERED]


def missing_requirement(name: str) -> str | None:
    """The fix for a backend whose framework is not importable, or None when it is."""
    package = BACKENDS[name][1]
    if package is not None and importlib.util.find_spec(package) is None:
        return f"backend {name!r} needs {package}, which is not installed; {INSTALL_HINT[package]}"
    return None


def get_backend(name: str) -> type[Backend]:
    """The Backend class registered as ``name`` (BridgeError naming the fix if unusable)."""
    if name in REGISTERED:
        return REGISTERED[name]
    if name not in BACKENDS:
        raise BridgeError(
            f"unknown backend {name!r}; choose from {', '.join(names())}"
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
