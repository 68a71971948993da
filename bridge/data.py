"""Data sources: the embedded digits set and tensor files.

All loaders return float32 images ``x`` of shape ``(N, C, H, W)`` (or ``(N, F)``) and,
where labelled, int64 labels ``y`` of shape ``(N,)``. Nothing here downloads anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bridge.errors import BridgeError

DIGITS_SIZE = 16  # 8x8 digits are upsampled so that two conv + pool stages fit


@dataclass(frozen=True)
class Split:
    """A labelled train/test split."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def digits_arrays(size: int = DIGITS_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's embedded digits (1797 images, 10 classes) as (N, 1, size, size) in [0, 1].

    The 8x8 images (values 0..16) are scaled to [0, 1] and bilinearly upsampled to
    ``size`` x ``size``; upsampling gives the convolutions room for two pooling stages.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.from_numpy(digits.target.astype(np.int64))
    return x.contiguous(), y


def digits_split(seed: int = 0, test_fraction: float = 0.2, size: int = DIGITS_SIZE) -> Split:
    """A stratified, seeded train/test split of the digits (360 test images at 0.2)."""
    from sklearn.model_selection import train_test_split

    x, y = digits_arrays(size)
    idx = np.arange(len(y))
    tr, te = train_test_split(
        idx, test_size=test_fraction, random_state=seed, stratify=y.numpy()
    )
    tr_t, te_t = torch.from_numpy(tr), torch.from_numpy(te)
    return Split(x[tr_t], y[tr_t], x[te_t], y[te_t])


def load_tensor_file(path: str | Path, key: str | None = None) -> torch.Tensor:
    """Load an input tensor from ``.npy``, ``.npz`` (key ``x`` or the only array) or ``.pt``.

    ``.pt`` files are read with ``torch.load(weights_only=True)``: plain tensors only, no
    pickled code is executed.
    """
    path = Path(path)
    if not path.is_file():
        raise BridgeError(f"no such file: {path}; check the path")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                names = list(z.keys())
                chosen = key or ("x" if "x" in names else names[0] if len(names) == 1 else None)
                if chosen is None or chosen not in names:
                    raise BridgeError(
                        f"{path} holds arrays {names}; name the input array 'x' or keep one array"
                    )
                arr = z[chosen]
        elif suffix == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                obj = obj.get(key or "x")
            if not isinstance(obj, torch.Tensor):
                raise BridgeError(f"{path} holds no tensor (or dict with 'x'); save a tensor")
            return obj.float()
        else:
            raise BridgeError(
                f"cannot read {path}: use a .npy, .npz or .pt tensor file, or 'digits'"
            )
    except BridgeError:
        raise
    except Exception as exc:  # numpy/torch raise many types on corrupt files
        raise BridgeError(f"cannot read {path}: {exc.__class__.__name__}: {exc}") from None
    if arr.dtype.kind not in "fiub":
        raise BridgeError(f"{path} holds {arr.dtype} data; save numbers")
    return torch.from_numpy(np.ascontiguousarray(arr)).float()
