"""Labelled data sets read one sample at a time, for evaluation at any scale.

A :class:`torch.utils.data.Dataset` per source, fed through a ``DataLoader`` (workers,
pinned memory) by the evaluator: memory holds one batch per worker, never the data set.

* ``imagefolder:DIR`` or a folder ``DIR/<class>/<image>``: each image is opened with PIL
  when asked for (the ImageNet validation set laid out by class, 50k JPEGs);
* ``FILE.npz`` (arrays ``x`` and ``y``): uncompressed members (``numpy.savez``) are read
  sample by sample at their offset in the file, compressed ones are loaded once;
* ``digits``, ``cifar10:DIR``, ``cifar100:DIR``: small fixed sets, held in memory.

Every sample is a float32 tensor shaped like the model's input and an int64 label.
Images go through an :class:`ImageTransform` (the standard ImageNet evaluation transform
``resize 256 -> centre crop 224 -> normalise``, without torchvision) or, by default, are
fitted to the input shape as :func:`bridge.data.datasets.fit_images` does.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from bridge.data.datasets import cifar_classes, digits_split, fit_images, image_files, load_cifar, read_image
from bridge.format.errors import BridgeError
from bridge.format.input_files import check_input_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> float32 tensor ``(C, H, W)``, as torchvision's evaluation pipeline does it.

    1. ``resize``: the shorter side becomes ``resize`` pixels, the longer one
       ``int(resize * long / short)`` (PIL bilinear with antialiasing), or no resize if None;
    2. ``crop``: the centre ``crop`` x ``crop`` pixels, top-left at
       ``round((H - crop) / 2), round((W - crop) / 2)``, or no crop if None;
    3. ``x = (pixel / 255 - mean[c]) / std[c]`` per channel (``mean`` 0, ``std`` 1 if None).

    ``ImageTransform.imagenet()`` is resize 256, crop 224 and the ImageNet mean and std.
    """

    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise BridgeError(f"--transform {name}={v}: give a size >= 1")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise BridgeError(f"--transform std={self.std}: every std must be > 0")

    @classmethod
    def imagenet(cls) -> ImageTransform:
        return cls(256, 224, IMAGENET_MEAN, IMAGENET_STD)

    def __call__(self, image) -> torch.Tensor:  # image: PIL.Image.Image
        from PIL import Image

        if self.resize is not None:
            w, h = image.size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.resize, int(self.resize * long / short)
            size = (new_short, new_long) if w <= h else (new_long, new_short)
            if size != (w, h):
                image = image.resize(size, Image.BILINEAR)
        if self.crop is not None:
            w, h = image.size
            if w < self.crop or h < self.crop:
                raise BridgeError(f"an image of {w}x{h} is smaller than the crop {self.crop}; "
                                  "resize first (e.g. --transform imagenet)")
            top, left = int(round((h - self.crop) / 2.0)), int(round((w - self.crop) / 2.0))
            image = image.crop((left, top, left + self.crop, top + self.crop))
        arr = np.asarray(image, dtype=np.float32) / 255.0
        x = torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())
        return self.normalize(x)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean[c]) / std[c]`` on ``(C, H, W)`` (or ``(N, C, H, W)``) in [0, 1]."""
        if self.mean is None and self.std is None:
            return x
        c = x.shape[-3]
        mean = torch.tensor(self.mean or (0.0,) * c, dtype=x.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std or (1.0,) * c, dtype=x.dtype).view(-1, 1, 1)
        if mean.shape[0] not in (1, c) or std.shape[0] not in (1, c):
            raise BridgeError(self._channel_message(c))
        return (x - mean) / std

    def check_channels(self, channels: int) -> None:
        """Refuse, before any image is read, a mean/std with neither 1 nor ``channels`` values."""
        if any(v is not None and len(v) not in (1, channels) for v in (self.mean, self.std)):
            raise BridgeError(self._channel_message(channels))

    def _channel_message(self, channels: int) -> str:
        counts = "/".join(str(len(v)) if v is not None else "0" for v in (self.mean, self.std))
        what = ("the ImageNet mean/std (--transform imagenet) are for 3 channels (RGB)"
                if (self.mean, self.std) == (IMAGENET_MEAN, IMAGENET_STD)
                else f"--transform mean/std have {counts} values")
        if channels == 1:
            example = ("; for a 1-channel (grey) model give one value each, e.g. --transform "
                       "imagenet,mean=0.449,std=0.226 (the ImageNet values averaged over RGB)")
        else:
            example = (f"; give one value per channel ({channels}, separated by /) or one value "
                       "for all, e.g. mean=0.5,std=0.25")
        return f"{what}, the model takes {channels}-channel input{example}"


def parse_transform(spec: str | None) -> ImageTransform | None:
    """``--transform``: ``imagenet``, ``KEY=VALUE,...`` or both (``imagenet,resize=288``).

    Keys: ``resize``, ``crop`` (pixels, or ``none``), ``mean``, ``std`` (one value per
    channel, separated by ``/``, or ``none``). None or ``fit``: no transform.
    """
    if spec is None or spec.strip() in ("", "fit"):
        return None
    out = ImageTransform()
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part == "imagenet":
            out = ImageTransform.imagenet()
            continue
        key, sep, value = part.partition("=")
        if not sep or key not in ("resize", "crop", "mean", "std"):
            raise BridgeError(f"--transform {spec!r}: unknown part {part!r}; use imagenet, "
                              "resize=N, crop=N, mean=A/B/C, std=A/B/C")
        try:
            if value == "none":
                parsed = None
            elif key in ("resize", "crop"):
                parsed = int(value)
            else:
                parsed = tuple(float(v) for v in value.split("/"))
        except ValueError:
            raise BridgeError(f"--transform {part!r}: {value!r} is not a number (list: A/B/C)") from None
        out = replace(out, **{key: parsed})
    return out


# -- data sets --------------------------------------------------------------------------------
class TensorImages(Dataset):
    """Samples held in memory (digits, CIFAR), each fitted to ``input_shape`` when read."""

    in_memory = True

    def __init__(self, x: torch.Tensor, y: torch.Tensor, input_shape: Sequence[int],
                 transform: ImageTransform | None = None) -> None:
        self.x, self.y = x, y
        self.shape = tuple(int(s) for s in input_shape)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.x[i].float()
        if self.transform is not None:
            x = self.transform.normalize(x)
        if tuple(x.shape) != self.shape:
            x = fit_images(x[None], self.shape)[0] if x.dim() == 3 else x
        return x, int(self.y[i])


class NpyMember:
    """One array of an ``.npz`` read row by row without loading it (uncompressed members).

    ``numpy.savez`` stores each array as an ``.npy`` file inside an uncompressed zip: the
    rows lie at a fixed offset in the file, so row ``i`` is one ``pread``. The pages read go
    to the OS page cache, not to this process's memory.
    """

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(f"{name}.npy")
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError("compressed")
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)  # the zip local file header: name and extra field lengths
            name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(fh)
            if fortran or dtype.hasobject:
                raise ValueError("not a C-ordered numeric array")
            self.offset = fh.tell()
        self.shape, self.dtype = tuple(shape), dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._fd: int | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def row(self, i: int) -> np.ndarray:
        if self._fd is None or self._pid != os.getpid():  # one descriptor per worker process
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        data = os.pread(self._fd, self.row_bytes, self.offset + i * self.row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape(self.shape[1:])

    def __getstate__(self) -> dict:  # DataLoader workers open their own descriptor
        return {**self.__dict__, "_fd": None, "_pid": None}


class NpzArrays(Dataset):
    """``x`` and ``y`` of an ``.npz``; rows read from disk when the members are uncompressed."""

    def __init__(self, path: Path, input_shape: Sequence[int], transform: ImageTransform | None = None) -> None:
        self.shape = tuple(int(s) for s in input_shape)
        self.transform = transform
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise BridgeError(f"cannot read {path}: {exc}; save it with numpy.savez") from None
        if "x.npy" not in names or "y.npy" not in names:
            raise BridgeError(f"{path} holds {[n.removesuffix('.npy') for n in names]}; save arrays "
                              "named x (samples) and y (labels)")
        try:
            self.x, self.y = NpyMember(path, "x"), NpyMember(path, "y")
            self.in_memory = False
        except ValueError:  # compressed (savez_compressed) or unusual layout: load it whole
            try:
                with np.load(path, allow_pickle=False) as z:
                    self.x, self.y = np.ascontiguousarray(z["x"]), np.ascontiguousarray(z["y"])
            except ValueError:  # object arrays: numpy would have to unpickle them
                raise BridgeError(f"{path} holds Python objects (pickled arrays); bridge never unpickles "
                                  "data files: save numeric arrays with numpy.savez") from None
            except Exception as exc:
                raise BridgeError(f"cannot read {path}: {exc.__class__.__name__}: {exc}") from None
            self.in_memory = True
        except Exception as exc:
            raise BridgeError(f"cannot read {path}: {exc.__class__.__name__}: {exc}") from None
        if self.x.dtype.kind not in "fiub" or self.y.dtype.kind not in "iub":
            raise BridgeError(f"{path}: x must hold numbers and y integer labels "
                              f"(got {self.x.dtype}, {self.y.dtype})")
        if len(self.y.shape) != 1:
            raise BridgeError(f"the labels in {path} have shape {list(self.y.shape)}; save one class "
                              "index per sample, shape (N,) (not one-hot)")
        if len(self.x) != len(self.y):
            raise BridgeError(f"{path}: x has {len(self.x)} samples, y {len(self.y)}; save one label per sample")
        sample = tuple(self.x.shape[1:])
        if sample != self.shape and not (len(sample) == 3 and len(self.shape) in (1, 3)):
            raise BridgeError(f"{path}: samples of shape {list(sample)}, the model expects "
                              f"{list(self.shape)}; save x shaped like the model's input")

    def __len__(self) -> int:
        return len(self.y)

    def _row(self, arr, i: int) -> np.ndarray:
        return arr.row(i) if isinstance(arr, NpyMember) else arr[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(np.array(self._row(self.x, i), dtype=np.float32))
        if self.transform is not None:
            x = self.transform.normalize(x)
        if tuple(x.shape) != self.shape:
            x = fit_images(x[None], self.shape)[0]
        return x, int(self._row(self.y, i))


class ImageFolderImages(Dataset):
    """``root/<class>/<image>``: classes are the sorted sub-folder names, images sorted by name.

    An image is read with PIL when asked for, as RGB (or grey for one-channel models), then
    goes through ``transform`` (e.g. the ImageNet one) or is fitted to the input shape.
    """

    in_memory = False

    def __init__(self, root: Path, input_shape: Sequence[int], transform: ImageTransform | None = None) -> None:
        self.shape = tuple(int(s) for s in input_shape)
        self.transform = transform
        if not root.is_dir():
            raise BridgeError(f"{root} is not a folder; give a folder of class sub-folders of images")
        self.classes, self.files = image_files(root)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.files[i]
        grey = len(self.shape) == 3 and self.shape[0] == 1
        if self.transform is None:
            x = torch.from_numpy(read_image(path, grey).copy())
        else:
            try:
                with Image.open(path) as im:
                    x = self.transform(im.convert("L" if grey else "RGB"))
            except BridgeError:
                raise
            except Exception as exc:
                raise BridgeError(f"cannot read image {path}: {exc}") from None
        if tuple(x.shape) != self.shape:
            if self.transform is not None and (self.transform.crop or self.transform.resize):
                raise BridgeError(f"the transform gives images of shape {list(x.shape)}, the model "
                                  f"expects {list(self.shape)}; change --transform (crop=N)")
            x = fit_images(x[None], self.shape)[0]
        return x, label


def open_dataset(spec: str, *, input_shape: Sequence[int],
                 transform: ImageTransform | None = None) -> Dataset:
    """The labelled data set ``spec`` (as :func:`bridge.data.datasets.load_labelled` reads it),
    one sample at a time, each shaped like ``input_shape``."""
    shape = tuple(int(s) for s in input_shape)
    if transform is not None and len(shape) == 3:
        transform.check_channels(shape[0])  # here, not in a DataLoader worker for every image
    kind, _, rest = spec.partition(":")
    if spec == "digits":
        split = digits_split(size=8)
        return TensorImages(split.test_x, split.test_y, shape, transform)
    if kind in ("cifar10", "cifar100") and rest:
        x, y = load_cifar(Path(rest).expanduser(), classes=10 if kind == "cifar10" else 100)
        return TensorImages(x, y, shape, transform)
    if kind == "imagefolder" and rest:
        return ImageFolderImages(Path(rest).expanduser(), shape, transform)
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".npz" or (path.exists() and not path.is_dir()):
        check_input_file(path, "data file")  # a FIFO or a folder is named as such
        return NpzArrays(path, shape, transform)
    if path.is_dir():
        if (classes := cifar_classes(path)) is not None:
            x, y = load_cifar(path, classes=classes)
            return TensorImages(x, y, shape, transform)
        return ImageFolderImages(path, shape, transform)
    raise BridgeError(f"unknown data {spec!r}: use digits, a .npz with x and y, cifar10:DIR, "
                      "cifar100:DIR or imagefolder:DIR")


def first_samples(dataset: Dataset, n: int) -> torch.Tensor:
    """The first ``n`` samples stacked (calibration data for a conversion)."""
    return torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))])  # type: ignore[arg-type]


# -- errors inside DataLoader workers -----------------------------------------------------------
#: torch's ExceptionWrapper.reraise: "Caught <Type> in DataLoader worker process <n>.\nOriginal
#: Traceback (most recent call last): ...", the worker's whole traceback in one message
_WORKER_ERROR = re.compile(r"Caught (\w+) in DataLoader worker process (\d+)\.\s*Original Traceback")


def worker_error_message(exc: BaseException) -> tuple[str, str] | None:
    """``(type name, original message)`` of an error re-raised from a DataLoader worker (the
    last line of the worker's traceback, ``module.Type: message``), None for any other error."""
    text = str(exc)
    found = _WORKER_ERROR.match(text)
    if found is None:
        return None
    name = found.group(1)
    # the traceback ends with traceback.format_exception_only: "[module.]Type: message"; the
    # last such line is the error itself (earlier ones belong to chained exceptions)
    last = None
    for last in re.finditer(rf"^(?:[\w.]+\.)?{re.escape(name)}(?:: |$)", text, re.M):
        pass
    message = text[last.end():] if last is not None else ""
    return name, " ".join(message.split()) or name


def unwrap_worker_error(exc: BaseException) -> BaseException:
    """The error to show for ``exc``: a DataLoader worker's error as its original one-line
    message (a :class:`BridgeError` keeps its class, so its exit code; any other error becomes a
    BridgeError naming its type), every other error unchanged."""
    found = worker_error_message(exc)
    if found is None:
        return exc
    name, message = found
    if isinstance(exc, BridgeError):
        try:
            return type(exc)(message)
        except Exception:  # noqa: BLE001  a subclass with another constructor
            return BridgeError(message)
    return BridgeError(f"reading the data failed ({name}: {message}); check the data, or run with "
                       "--workers 0 to see where")


def worker_batches(loader: Iterable) -> Iterator:
    """The batches of a DataLoader; an error raised in one of its worker processes comes out as
    the worker's own error (:func:`unwrap_worker_error`), not as torch's wrapped traceback."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            unwrapped = unwrap_worker_error(exc)
            if unwrapped is exc:
                raise
            raise unwrapped from None
        yield batch
