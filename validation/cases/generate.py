"""``python -m validation.cases.generate [--force]``: freeze the conformance cases.

Builds every case of :mod:`validation.cases.catalog`, runs it through the reference simulator
in float64 (step at a time, tracing every neuron node), and writes ``data/<name>.nir``,
``data/<name>.npz`` and ``data/manifest.json``. Existing files are replaced only with
``--force``: a regenerated expectation is a change of the specification, to be reviewed
(``git diff --stat validation/cases/data``) and explained in the commit message.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from bridge.format.errors import BridgeError
from bridge.format.extension import if_semantics
from bridge.format.nirio import atomic_path, write_graph
from bridge.reference import ReferenceSimulator
from validation.cases import DATA, MANIFEST
from validation.cases.catalog import CASES, CaseSpec


def freeze(spec: CaseSpec, folder: Path, *, force: bool) -> dict:
    """Write one case's graph and expectations; return its manifest entry."""
    graph, x = spec.build()
    sim = ReferenceSimulator(graph, dtype=torch.float64, dt=spec.dt)
    result = sim.run(torch.from_numpy(x), spec.steps, trace=True, mode="step")
    arrays = {"x": x.astype(np.float64), "outputs": result.outputs.numpy()}
    ties = 0
    for name, trace in result.traces.items():
        arrays[f"spikes/{name}"] = trace.spikes.numpy()
        arrays[f"v/{name}"] = trace.v.numpy()
        node = graph.nodes[name]
        if type(node).__name__ == "IF":
            sem = if_semantics(node, name)
            if sem.reset == "subtract":  # m == theta exactly: where >= and > part ways
                m = trace.v.numpy() + sem.threshold * trace.spikes.numpy()
                ties += int((m == sem.threshold).sum())
    write_graph(graph, folder / f"{spec.name}.nir", force=force)
    npz = folder / f"{spec.name}.npz"
    if npz.exists() and not force:
        raise BridgeError(f"{npz} already exists; pass --force to regenerate the expectations")
    with atomic_path(npz, ".npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return {"description": spec.description, "tags": list(spec.tags), "steps": spec.steps,
            "dt": spec.dt, "exact_ties": ties}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m validation.cases.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="replace the committed files")
    parser.add_argument("--out", type=Path, default=DATA, help="folder to write (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        entries = {}
        for spec in CASES:
            entries[spec.name] = freeze(spec, args.out, force=args.force)
            size = sum((args.out / f"{spec.name}{ext}").stat().st_size for ext in (".nir", ".npz"))
            print(f"{spec.name:28s} {size / 1024:6.1f} KiB  ties={entries[spec.name]['exact_ties']}")
        manifest = args.out / MANIFEST.name
        with atomic_path(manifest, ".json") as tmp:
            tmp.write_text(json.dumps(entries, indent=2) + "\n")
    except BridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
