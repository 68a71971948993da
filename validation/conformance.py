"""``python -m validation.conformance --backend NAME``: run the frozen cases on one backend.

Every case of :mod:`validation.cases` is run through the backend in float64 from a fresh
state, and everything the reference recorded must come back *exactly* (bit for bit): the
outputs at every step, and the spikes and post-reset potentials of every neuron node at
every step. The cases are built on a dyadic grid, so no correct backend has a rounding
excuse (see :mod:`validation.cases.catalog`).

A backend declares, per case tag, what it does not run and why (:data:`UNSUPPORTED` for the
built-in backends, ``register(..., unsupported={tag: reason})`` for others). Such a case
passes only if the backend *refuses* it with a :class:`~bridge.format.errors.BridgeError` (a
clear message, no silently different numbers); a declared case that runs is a failure, so a
stale declaration is noticed.

Cases with LI/LIF nodes carry a time step: the runner passes it as ``dt=`` to the backend's
constructor (only when the backend is expected to run the case).

Exit status: 0 when every case passes, 1 when one fails, 2 on bad input (unknown backend,
a framework that is not installed).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bridge.format.errors import BridgeError
from validation import cases as case_files
from validation.backends import BACKENDS, get_backend, missing_requirement, names
from validation.backends.base import Backend, SimulationResult

# what the exporters' models cannot reproduce, and the reason (they refuse it when built)
_EXPORTER_LIMITS = {
    "nir-text": "the exporters reproduce bridge's IF (reset by subtraction, spike when m >= theta); "
                "a plain NIR IF (hard reset, m > theta) is refused",
    "leaky": "the exporters build IF networks; LI and LIF nodes are refused",
    "integrator": "the exporters build IF networks; NIR I nodes are refused",
    "threshold": "the exporters build IF networks; NIR Threshold nodes are refused",
    "bounds": "the exporters' neurons have no saturating potential; IF nodes with v_min / v_max "
              "(extension 1.1) are refused (exporters.capabilities)",
}

#: backend name -> {case tag: why the backend refuses such cases}; the reference runs all
UNSUPPORTED: dict[str, dict[str, str]] = {
    "reference": {},
    "spikingjelly": _EXPORTER_LIMITS,
    "spikingjelly-s": _EXPORTER_LIMITS,
    "norse": _EXPORTER_LIMITS,
    "snntorch": _EXPORTER_LIMITS,
    "sinabs": _EXPORTER_LIMITS,
}


def unsupported_tags(name: str, cls: type[Backend]) -> dict[str, str]:
    """The tags backend ``name`` declares it refuses (registered class first, then the table)."""
    declared = getattr(cls, "unsupported_tags", None)
    return dict(declared) if declared is not None else dict(UNSUPPORTED.get(name, {}))


@dataclass(frozen=True)
class CaseResult:
    """One case on one backend: ``status`` is pass | fail; ``refused`` when it was declined."""

    case: str
    status: str
    refused: bool
    detail: str

    @property
    def passed(self) -> bool:
        return self.status == "pass"


def _first_difference(what: str, got: np.ndarray, want: np.ndarray) -> str | None:
    """None when equal; else where ``got`` first differs (t counted from 1, then sample, index)."""
    if got.shape != want.shape:
        return f"{what} has shape {list(got.shape)}, expected {list(want.shape)}"
    diff = ~((got == want) | (np.isnan(got) & np.isnan(want)))
    if not diff.any():
        return None
    t, b, *idx = (int(i) for i in np.argwhere(diff)[0])
    return (f"{what} differs at t={t + 1} sample {b} [{','.join(map(str, idx))}]: "
            f"got {float(got[(t, b, *idx)])!r}, expected {float(want[(t, b, *idx)])!r} ({int(diff.sum())} values differ)")


def compare_with_expected(result: SimulationResult, case: case_files.Case, *,
                          outputs_only: bool = False) -> list[str]:
    """Every difference between a run and the frozen expectations (empty when exact).

    ``outputs_only``: compare the outputs and not the neuron traces (for a backend that
    cannot observe its neurons).
    """
    problems = []
    outputs = result.outputs.detach().to(torch.float64).cpu().numpy()
    if (p := _first_difference("the output", outputs, case.outputs)) is not None:
        problems.append(p)
    for node, want in ({} if outputs_only else case.traces).items():
        got = result.traces.get(node)
        if got is None:
            problems.append(f"no trace of neuron node {node!r} (run(..., trace=True) must report it)")
            continue
        for field in ("spikes", "v"):
            values = getattr(got, field).detach().to(torch.float64).cpu().numpy()
            if (p := _first_difference(f"{field} of {node!r}", values, getattr(want, field))) is not None:
                problems.append(p)
    return problems


def run_case(name: str, cls: type[Backend], case: case_files.Case, *, outputs_only: bool = False) -> CaseResult:
    """Run one frozen case on backend class ``cls`` (registered as ``name``) and judge it."""
    declared = {t: r for t, r in unsupported_tags(name, cls).items() if t in case.tags}
    kwargs = {"dt": case.dt} if case.dt is not None and not declared else {}
    try:
        backend = cls(case.graph, dtype=torch.float64, **kwargs)
        result = backend.run(case.input(), case.steps, trace=True)
    except BridgeError as exc:
        if declared:
            return CaseResult(case.name, "pass", True, f"refused as declared: {exc}")
        return CaseResult(case.name, "fail", True, f"refused a case it must run: {exc}")
    except Exception as exc:  # a crash is a failure with its message, not a traceback
        hint = (" (the case has LI/LIF nodes: accept dt= in the constructor, or declare the tag "
                "'leaky' unsupported)" if kwargs and isinstance(exc, TypeError) else "")
        return CaseResult(case.name, "fail", False, f"crashed: {exc.__class__.__name__}: {exc}{hint}")
    if declared:
        tags = ", ".join(declared)
        return CaseResult(case.name, "fail", False,
                          f"declared unsupported ({tags}) but ran without refusing; refuse such graphs "
                          "with a BridgeError, or drop the declaration if the backend now runs them")
    problems = compare_with_expected(result, case, outputs_only=outputs_only)
    if problems:
        return CaseResult(case.name, "fail", False, "; ".join(problems))
    return CaseResult(case.name, "pass", False, "exact" + (" (outputs only)" if outputs_only else ""))


def run_conformance(name: str, selected: Sequence[str] | None = None, *,
                    outputs_only: bool = False) -> list[CaseResult]:
    """Every committed case (or the ``selected`` ones) on backend ``name``."""
    cls = get_backend(name)  # BridgeError: unknown name or framework not installed
    chosen = list(selected) if selected else case_files.names()
    return [run_case(name, cls, case_files.load(c), outputs_only=outputs_only) for c in chosen]


def format_table(name: str, results: Sequence[CaseResult]) -> str:
    """The results as a plain-text table, one line per case, and a summary line."""
    width = max(len(r.case) for r in results)
    lines = [f"{'case':{width}s}  result  detail", f"{'-' * width}  ------  ------"]
    for r in results:
        label = "PASS" if r.passed else "FAIL"
        lines.append(f"{r.case:{width}s}  {label:6s}  {r.detail}")
    failed = sum(not r.passed for r in results)
    refused = sum(r.passed and r.refused for r in results)
    lines.append(f"{name}: {len(results) - failed}/{len(results)} cases pass "
                 f"({refused} refused as declared), {failed} fail")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m validation.conformance",
        description="Run the frozen conformance cases on one backend; exit 1 if any case fails.")
    parser.add_argument("--backend", required=True, help=f"backend name ({', '.join(names())}, or one "
                        "registered by a module given with --import)")
    parser.add_argument("--case", action="append", default=None,
                        help="run only this case (repeatable); default: all")
    parser.add_argument("--import", dest="modules", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (it calls validation.backends.register); repeatable")
    parser.add_argument("--outputs-only", action="store_true",
                        help="compare only the outputs, not the neuron traces")
    parser.add_argument("--list", action="store_true", help="list the cases with their tags and exit")
    args = parser.parse_args(argv)
    try:
        for module in args.modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise BridgeError(f"cannot import {module!r} ({exc}); put it on PYTHONPATH") from None
        if args.list:
            for c, entry in case_files.manifest().items():
                print(f"{c:28s} T={entry['steps']:<3d} tags={','.join(entry['tags']) or '-'}  {entry['description']}")
            return 0
        problem = missing_requirement(args.backend) if args.backend in BACKENDS else None
        if problem:
            raise BridgeError(problem)
        if args.case:
            unknown = [c for c in args.case if c not in case_files.names()]
            if unknown:
                raise BridgeError(f"unknown case(s) {', '.join(unknown)}; see --list")
        results = run_conformance(args.backend, args.case, outputs_only=args.outputs_only)
    except BridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(args.backend, results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
