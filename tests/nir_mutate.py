"""Edit the HDF5 datasets of a NIR file in place (malformed-input and fuzz tests).

A NIR file stores node ``N``'s field ``F`` at ``node/nodes/N/F`` (metadata under
``node/nodes/N/metadata/bridge/...``); :func:`set_field` replaces one dataset with any
value, which is how a damaged or hand-edited file looks to bridge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np


def set_field(path: Path, key: str, value: Any) -> None:
    """Replace the dataset ``key`` (relative to ``node/nodes/``, or absolute from ``/``)."""
    full = key if key.startswith("/") else f"node/nodes/{key}"
    with h5py.File(path, "r+") as f:
        if full in f:
            del f[full]
        if isinstance(value, str):
            f.create_dataset(full, data=value.encode())
        else:
            f.create_dataset(full, data=np.asarray(value))


def get_field(path: Path, key: str) -> np.ndarray:
    full = key if key.startswith("/") else f"node/nodes/{key}"
    with h5py.File(path, "r") as f:
        return np.asarray(f[full][()])


def datasets(path: Path) -> list[str]:
    """Every dataset's absolute key in the file."""
    out: list[str] = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.append("/" + name) if isinstance(obj, h5py.Dataset) else None)
    return out
