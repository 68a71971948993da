"""Data sources: the embedded digits set and tensor files.

All loaders return float32 images ``x`` of shape ``(N, C, H, W)`` (or ``(N, F)``) and,
where labelled, int64 labels ``y`` of shape ``(N,)``. Nothing here downloads anything.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bridge.format.errors import BridgeError
from bridge.format.input_files import check_input_file, first_line, read_input_bytes

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


def digits_indices(seed: int = 0, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) sample indices into :func:`digits_arrays` of the stratified split ``seed``."""
    from sklearn.model_selection import train_test_split

    _, y = digits_arrays(8)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y.numpy())
    return tr, te


def digits_split(seed: int = 0, test_fraction: float = 0.2, size: int = DIGITS_SIZE) -> Split:
    """A stratified, seeded train/test split of the digits (360 test images at 0.2)."""
    x, y = digits_arrays(size)
    tr, te = digits_indices(seed, test_fraction)
    tr_t, te_t = torch.from_numpy(tr), torch.from_numpy(te)
    return Split(x[tr_t], y[tr_t], x[te_t], y[te_t])


#: The fixed split behind the data name ``digits`` in every command: ``digits_split(DIGITS_SEED)``.
#: Calibration (``--calibration digits``) reads only its 1437 training images, in the split's
#: order; evaluation (``--data digits``, ``--input digits``) reads only its 360 test images.
DIGITS_SEED = 0


def digits_test(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The 360 test images of the fixed split (:data:`DIGITS_SEED`), fitted to ``shape``, and labels."""
    split = digits_split(DIGITS_SEED, size=8)
    return fit_images(split.test_x, shape), split.test_y


def digits_calibration(shape: tuple[int, ...], samples: int) -> torch.Tensor:
    """The first ``samples`` training images of the fixed split, shaped ``(N, *shape)`` float32:
    ``(N, 1, H, W)`` for a 1-channel image input, ``(N, s*s)`` for a square feature input.
    Never a test image of :func:`digits_test`."""
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side != shape[0]:
            raise BridgeError(
                f"--calibration digits needs a square image input; the model takes {shape[0]} "
                "features; pass a .npy/.npz/.pt calibration file instead")
    elif len(shape) != 3 or shape[0] != 1:
        raise BridgeError(
            f"--calibration digits gives 1-channel images; the model takes input shape {list(shape)}; "
            "pass a .npy/.npz/.pt calibration file instead")
    train_x = digits_split(DIGITS_SEED, size=8).train_x[:samples]
    return fit_images(train_x, tuple(shape)).to(torch.float32).contiguous()


_NO_UNPICKLING = "bridge never unpickles data files (it would run code stored in them)"


def _refused_pickle(path: Path, exc: BaseException) -> BridgeError | None:
    """The error for a data file that holds pickled Python objects, or None if ``exc`` is
    another failure (numpy and torch say so in their own words)."""
    text = str(exc)
    if "allow_pickle=False" in text or "Object arrays" in text:
        return BridgeError(f"{path} holds Python objects (an object array), not numbers; "
                           f"{_NO_UNPICKLING}; save a numeric array")
    if "GLOBAL" in text or "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        named = f" ({found.group(1)})" if found else ""
        return BridgeError(f"{path} holds a pickled Python object{named}, not plain tensors; "
                           f"{_NO_UNPICKLING}; save a tensor or a numeric array")
    return None


def check_finite_data(x: torch.Tensor, source: str | Path) -> torch.Tensor:
    """Refuse inputs with NaN or inf: they propagate into every potential and spike."""
    if x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise BridgeError(
            f"{source} holds {bad} NaN/inf value(s); clean the data (every value must be a "
            "finite number)"
        )
    return x


def load_tensor_file(path: str | Path) -> torch.Tensor:
    """Load an input tensor from ``.npy``, ``.npz`` (key ``x`` or the only array) or ``.pt``.

    The file is read once into memory. ``.npy``/``.npz`` are read with
    ``allow_pickle=False`` and ``.pt`` with ``torch.load(weights_only=True)``: numbers and
    plain tensors only, no pickled code is executed. NaN/inf values are refused.
    """
    (x,) = read_tensor_arrays(path, (None,))
    return check_finite_data(x.float(), Path(path))


def read_tensor_arrays(path: str | Path, keys: Sequence[str | None]) -> list[torch.Tensor]:
    """The arrays ``keys`` of one tensor file, as stored (no dtype change, no checks but
    "numbers"), from one read of the file. A key None means ``x``, or the only array of a
    ``.npz``; a ``.npy`` is the one array, a ``.pt`` a tensor or a dict of them."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", ".pt"):
        check_input_file(path, "data file")
        raise BridgeError(f"cannot read {path}: use a .npy, .npz or .pt tensor file, or 'digits'")
    data = read_input_bytes(path, "data file")
    try:
        if suffix == ".npy":
            arrays = [np.load(io.BytesIO(data), allow_pickle=False)] * len(keys)
        elif suffix == ".npz":
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                names = list(z.keys())
                arrays = []
                for key in keys:
                    chosen = key or ("x" if "x" in names else names[0] if len(names) == 1 else None)
                    if chosen is None or chosen not in names:
                        raise BridgeError(
                            f"{path} holds arrays {names}; name the input array 'x' or keep one array"
                        )
                    arrays.append(z[chosen])
        else:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            tensors = [obj.get(key or "x") if isinstance(obj, dict) else obj for key in keys]
            if not all(isinstance(t, torch.Tensor) for t in tensors):
                raise BridgeError(f"{path} holds no tensor (or dict with 'x'); save a tensor")
            return tensors
    except BridgeError:
        raise
    except Exception as exc:  # numpy/torch raise many types on corrupt files
        refused = _refused_pickle(path, exc)
        if refused is not None:
            raise refused from None
        raise BridgeError(f"cannot read {path} (truncated or corrupt?): {first_line(exc)}") from None
    for arr in arrays:
        if arr.dtype.kind not in "fiub":
            raise BridgeError(f"{path} holds {arr.dtype} data; save numbers")
    return [torch.from_numpy(np.ascontiguousarray(arr)) for arr in arrays]


# --- labelled data sets for validation and evaluation -------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class _ArraysOnlyUnpickler:
    """A restricted unpickler for the CIFAR python format: dicts, lists, bytes, str, numbers
    and numpy arrays only. Any other global (``os.system``, ``builtins.eval``...) is refused,
    so a malicious file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("builtins", "dict"), ("builtins", "list"), ("builtins", "bytes"),
        ("_codecs", "encode"),
    }

    @classmethod
    def load(cls, path: Path) -> object:
        import pickle

        allowed = cls.ALLOWED

        class Restricted(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> object:
                if (module, name) not in allowed:
                    raise BridgeError(
                        f"{path} holds a pickled Python object ({module}.{name}): refused, "
                        f"{_NO_UNPICKLING} (only arrays, lists and dicts are read from CIFAR "
                        "batches); use the official CIFAR files"
                    )
                return super().find_class(module, name)

        data = read_input_bytes(path, "CIFAR batch")
        try:
            return Restricted(io.BytesIO(data), encoding="bytes").load()
        except BridgeError:
            raise
        except Exception as exc:
            raise BridgeError(f"cannot read {path} (truncated or corrupt?): {first_line(exc)}") from None


def _key(d: dict, name: str) -> object:
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise KeyError(name)


def load_cifar(folder: str | Path, *, classes: int = 10, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10/100 in the official python (pickle) format from a local folder.

    CIFAR-10: ``data_batch_1..5`` (train) and ``test_batch``; CIFAR-100: ``train`` and
    ``test``. Each holds ``data`` (N x 3072 uint8, channel-major 3 x 32 x 32) and ``labels``
    (CIFAR-10) or ``fine_labels`` (CIFAR-100). The folder may be the extracted
    ``cifar-10-batches-py`` / ``cifar-100-python`` or its parent. Returns x in [0, 1],
    ``(N, 3, 32, 32)``. Files are read with a restricted unpickler (no code runs).
    """
    root = Path(folder)
    sub = "cifar-10-batches-py" if classes == 10 else "cifar-100-python"
    if (root / sub).is_dir():
        root = root / sub
    if classes == 10:
        names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
        label_key = "labels"
    else:
        names, label_key = [split], "fine_labels"
    files = [root / n for n in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise BridgeError(
            f"{root} is not a CIFAR-{classes} python folder (missing {', '.join(missing)}); "
            f"extract the official cifar-{classes}-python.tar.gz there"
        )
    xs, ys = [], []
    for f in files:
        d = _ArraysOnlyUnpickler.load(f)
        try:
            data = np.asarray(_key(d, "data"), dtype=np.uint8)  # type: ignore[arg-type]
            labels = np.asarray(_key(d, label_key), dtype=np.int64)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            raise BridgeError(f"{f} has no 'data' and '{label_key}' entries; is it CIFAR-{classes}?") from None
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0)
    return x, torch.from_numpy(np.concatenate(ys))


#: files whose presence marks a folder as the official CIFAR python format: (classes, file)
CIFAR_MARKERS = ((10, "test_batch"), (100, "meta"), (10, "cifar-10-batches-py"), (100, "cifar-100-python"))


def cifar_classes(folder: Path) -> int | None:
    """10 or 100 when ``folder`` holds the official CIFAR-10/100 python files, else None."""
    return next((classes for classes, marker in CIFAR_MARKERS if (folder / marker).exists()), None)


def image_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """An ImageFolder tree ``root/<class>/<image>``: the class names (the sorted sub-folders) and
    every image file with its class index, sorted by name within each class."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not class_dirs:
        raise BridgeError(f"{root} has no class sub-folders; lay images out as {root}/<class>/<image>.png")
    files = [(f, label) for label, d in enumerate(class_dirs) for f in sorted(d.iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise BridgeError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}); add some")
    return [d.name for d in class_dirs], files


def read_image(path: Path, grey: bool) -> np.ndarray:
    """One image file as ``(C, H, W)`` float32 in [0, 1], grey (C = 1) or RGB (C = 3)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L" if grey else "RGB"), dtype=np.float32) / 255.0
    except Exception as exc:
        raise BridgeError(f"cannot read image {path}: {exc}") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_image_folder(folder: str | Path, *, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """An ImageFolder tree ``folder/<class>/<image>``: classes are the sorted sub-folder names.

    Images are read with PIL as grey (``channels == 1``) or RGB, scaled to [0, 1]; they must
    all have one size (resize with :func:`fit_images`). Returns ``(x, y, class_names)``.
    """
    names, files = image_files(Path(folder))
    xs = [read_image(f, channels == 1) for f, _ in files]
    ys = [label for _, label in files]
    sizes = {a.shape for a in xs}
    if len(sizes) > 1:
        target = max(sizes)
        xs = [fit_images(torch.from_numpy(a)[None], target)[0].numpy() for a in xs]
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64), names


def fit_images(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Make images ``(N, C, H, W)`` fit a graph's input shape.

    ``(C, H, W)``: resized bilinearly to H, W; one channel is repeated to C = 3 and three
    channels are averaged to C = 1. ``(F,)``: grey images are resized to a square of side
    sqrt(F) and flattened. Anything else: BridgeError.
    """
    if len(shape) == 1:
        side = int(round(float(shape[0]) ** 0.5))
        if side * side != shape[0] or x.shape[1] != 1:
            raise BridgeError(
                f"the graph takes {shape[0]} features, the data are {tuple(x.shape[1:])} images; "
                "give data shaped like the model's input (e.g. a .npz with x of shape (N, F))"
            )
        return fit_images(x, (1, side, side)).flatten(1)
    if len(shape) != 3:
        raise BridgeError(f"cannot fit images to the input shape {shape}; give a .npz with x of that shape")
    c, h, w = shape
    if x.shape[1] != c:
        if x.shape[1] == 1 and c == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and c == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise BridgeError(f"the data have {x.shape[1]} channels, the graph wants {c}; give matching data")
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x.contiguous()


def check_labels(x: torch.Tensor, y: torch.Tensor, source: str, classes: int | None = None) -> torch.Tensor:
    """Labels as int64 class indices: one per sample, integers in ``[0, classes)``; an empty
    data set is refused (an accuracy over no samples means nothing)."""
    if len(x) == 0:
        raise BridgeError(f"the data {source} hold no samples; give at least one labelled sample")
    if y.dim() != 1:
        raise BridgeError(f"the labels in {source} have shape {list(y.shape)}; save one class "
                          "index per sample, shape (N,) (not one-hot)")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise BridgeError(f"the labels in {source} are {y.dtype}; save integer class indices")
    if len(y) != len(x):
        raise BridgeError(f"{source}: x has {len(x)} samples, y {len(y)}; save one label per sample")
    y = y.long()
    if bool((y < 0).any()):
        raise BridgeError(f"the labels in {source} include {int(y.min())}; class indices start at 0")
    if classes is not None and bool((y >= classes).any()):
        raise BridgeError(f"the labels in {source} go up to {int(y.max())} but the graph has "
                          f"{classes} outputs (classes 0..{classes - 1}); give matching data")
    return y


def load_labelled(spec: str, *, input_shape: tuple[int, ...],
                  classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`read_labelled`, with the labels checked (:func:`check_labels`; ``classes``: the
    number of outputs of the graph, if known) and the images finite."""
    x, y = read_labelled(spec, input_shape=input_shape)
    y = check_labels(x, y, spec, classes)
    return check_finite_data(x, spec), y


def read_labelled(spec: str, *, input_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A labelled data set that fits ``input_shape`` (one sample, no batch): ``(x, y)``.

    ``spec``:

    - ``digits``: the 360 test images of :func:`digits_split` (scaled to [0, 1]), resized
      to the graph's H, W (or flattened for a feature input);
    - ``path.npz``: arrays ``x`` (already shaped like the input) and ``y``;
    - ``cifar10:DIR`` / ``cifar100:DIR``, or a folder holding the official python files:
      the test split;
    - a folder ``DIR/<class>/<image>``: an ImageFolder tree.

    Images are in [0, 1]: a model trained on normalised inputs must carry its normalisation.
    """
    shape = tuple(int(s) for s in input_shape)
    kind, _, rest = spec.partition(":")
    if spec == "digits":
        # the test part of the fixed split (calibration never reads it: digits_calibration)
        return digits_test(shape)
    if kind in ("cifar10", "cifar100") and rest:
        x, y = load_cifar(Path(rest).expanduser(), classes=10 if kind == "cifar10" else 100)
        return fit_images(x, shape), y
    if kind == "imagefolder" and rest:
        folder = Path(rest).expanduser()
        if not folder.is_dir():
            raise BridgeError(f"--data imagefolder:{rest}: {folder} is not a folder; give "
                              "DIR/<class>/<image> files")
        x, y, _ = load_image_folder(folder, channels=shape[0] if len(shape) == 3 else 1)
        return fit_images(x, shape), y
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".npz":
        x, y = read_tensor_arrays(path, ("x", "y"))  # one read; load_labelled checks both
        x = x.float()
        if tuple(x.shape[1:]) != shape and len(x):
            x = fit_images(x, shape) if x.dim() == 4 else x
        return x, y
    if path.is_dir():
        if (classes := cifar_classes(path)) is not None:
            x, y = load_cifar(path, classes=classes)
            return fit_images(x, shape), y
        channels = shape[0] if len(shape) == 3 else 1
        x, y, _ = load_image_folder(path, channels=channels)
        return fit_images(x, shape), y
    if path.exists() and not path.is_dir():
        check_input_file(path, "data file")  # a FIFO or device: say so
    if not path.exists() and not kind.startswith(("cifar", "imagefolder")):
        raise BridgeError(f"unknown data {spec!r} (no such file or folder): use digits, a .npz "
                          "with x and y, cifar10:DIR, cifar100:DIR or imagefolder:DIR")
    raise BridgeError(
        f"unknown data {spec!r}: use digits, a .npz with x and y, cifar10:DIR, cifar100:DIR "
        "or imagefolder:DIR (an ImageFolder directory)"
    )
