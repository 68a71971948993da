"""Labelled data loaders: digits, .npz, CIFAR python folders (restricted unpickling), ImageFolder."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from bridge.data.datasets import digits_split, fit_images, load_cifar, load_image_folder, load_labelled
from bridge.format.errors import BridgeError


def _cifar_batch(n: int, labels_key: bytes, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"fake", labels_key: list(rng.integers(0, 10, n)),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"a.png"] * n}


@pytest.fixture
def cifar10(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name, seed in (("test_batch", 0), *((f"data_batch_{i}", i) for i in range(1, 6))):
        with open(root / name, "wb") as fh:
            pickle.dump(_cifar_batch(6, b"labels", seed), fh, protocol=2)  # the official files are protocol 2
    return tmp_path


def test_digits_fit_the_graph_input():
    x, y = load_labelled("digits", input_shape=(1, 16, 16))
    split = digits_split()
    assert x.shape == (360, 1, 16, 16) and torch.equal(y, split.test_y)
    assert torch.allclose(x, split.test_x, atol=1e-6)  # same upsampling as the training split
    x64, _ = load_labelled("digits", input_shape=(64,))
    assert x64.shape == (360, 64) and torch.allclose(x64, digits_split(size=8).test_x.flatten(1))
    x3, _ = load_labelled("digits", input_shape=(3, 12, 12))
    assert x3.shape == (360, 3, 12, 12) and torch.equal(x3[:, 0], x3[:, 2])


def test_npz(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(24, dtype=np.float32).reshape(3, 8), y=np.array([0, 1, 2]))
    x, y = load_labelled(str(path), input_shape=(8,))
    assert x.shape == (3, 8) and y.tolist() == [0, 1, 2] and y.dtype == torch.int64
    np.savez(path, x=np.zeros((3, 8)), y=np.array([0, 1]))
    with pytest.raises(BridgeError, match="one label per sample"):
        load_labelled(str(path), input_shape=(8,))


def test_cifar10_folder(cifar10):
    want = _cifar_batch(6, b"labels", 0)
    for spec in (f"cifar10:{cifar10}", str(cifar10 / "cifar-10-batches-py")):
        x, y = load_labelled(spec, input_shape=(3, 32, 32))
        assert x.shape == (6, 3, 32, 32) and y.tolist() == [int(v) for v in want[b"labels"]]
        assert float(x[2, 1, 3, 4]) == pytest.approx(want[b"data"][2, 1024 + 3 * 32 + 4] / 255.0)
    x16, _ = load_labelled(f"cifar10:{cifar10}", input_shape=(3, 16, 16))
    assert x16.shape == (6, 3, 16, 16)
    xtr, ytr = load_cifar(cifar10, split="train")
    assert xtr.shape == (30, 3, 32, 32) and len(ytr) == 30


def test_cifar100_folder(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    batch = _cifar_batch(4, b"fine_labels", 3)
    batch[b"coarse_labels"] = [0] * 4
    for name in ("test", "train"):
        with open(root / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    with open(root / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [b"apple"] * 100}, fh, protocol=2)
    x, y = load_labelled(str(root), input_shape=(3, 32, 32))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [int(v) for v in batch[b"fine_labels"]]
    x, y = load_labelled(f"cifar100:{tmp_path}", input_shape=(3, 32, 32))
    assert len(y) == 4


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    with open(root / "test_batch", "wb") as fh:
        pickle.dump({b"data": evil, b"labels": [0]}, fh, protocol=2)
    with pytest.raises(BridgeError, match=r"refused.*only arrays"):
        load_labelled(f"cifar10:{tmp_path}", input_shape=(3, 32, 32))
    assert not marker.exists()


def test_missing_cifar_files(tmp_path):
    with pytest.raises(BridgeError, match="not a CIFAR-10 python folder"):
        load_cifar(tmp_path)


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    expected = {}
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            arr = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
            expected[(cls, i)] = arr
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    x, y, classes = load_image_folder(tmp_path)
    assert classes == ["cat", "dog"] and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.allclose(x[4], torch.from_numpy(expected[("dog", 1)].transpose(2, 0, 1) / 255.0).float())
    x8, y8 = load_labelled(str(tmp_path), input_shape=(1, 8, 8))
    assert x8.shape == (6, 1, 8, 8) and y8.tolist() == y.tolist()


def test_bad_specs(tmp_path):
    with pytest.raises(BridgeError, match="unknown data"):
        load_labelled("mnist", input_shape=(1, 28, 28))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BridgeError, match="no class sub-folders"):
        load_labelled(str(tmp_path / "empty"), input_shape=(1, 8, 8))
    with pytest.raises(BridgeError, match="channels"):
        fit_images(torch.zeros(1, 2, 4, 4), (3, 4, 4))
