"""Train VGG-16 / ResNet-18 / ResNet-20 with ClippedReLU on CIFAR-10/100, ready for bridge.

Reproduces the setting of Bu et al. (AAAI 2022): SGD (momentum 0.9, weight decay 5e-4),
cosine learning rate, random crop + horizontal flip, clipped ReLU with a trainable bound
(initial 4.0) in place of every ReLU, average pooling. Writes ``weights.pt`` (a state_dict)
and ``model.pt2`` (a torch.export program) into ``--out``; then

    bridge export OUT/model.pt2 --to nir -o model.nir
    bridge evaluate OUT/model.pt2 --data cifar10:DATA --steps 1,2,4,8,16,32,64 --device cuda

Data: a local folder with the official python format (``cifar-10-batches-py`` or
``cifar-100-python``, or their parent); nothing is downloaded. ``--synthetic DIR`` writes a
tiny fake CIFAR-10 folder there first (random images; for tests and dry runs only).

    python -m recipes.train_cifar --arch vgg16 --data /data/cifar --epochs 300 --device cuda --out runs/vgg16
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bridge.data.datasets import load_cifar
from recipes.models import ARCHS, INPUT_SHAPE


def write_synthetic_cifar(folder: str | Path, per_batch: int = 20, seed: int = 0) -> Path:
    """A fake CIFAR-10 python folder (5 train batches + test batch of random uint8 images).

    Class c has a brighter channel c % 3 so that a network can learn something; the format is
    exactly the official one (pickled dicts with b'data' N x 3072 and b'labels').
    """
    root = Path(folder) / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(n: int) -> dict:
        labels = rng.integers(0, 10, n)
        data = rng.integers(0, 128, (n, 3, 32, 32), dtype=np.uint8)
        for i, c in enumerate(labels):
            data[i, c % 3] += np.uint8(64 + 12 * (c // 3))
        return {b"data": data.reshape(n, -1), b"labels": labels.tolist()}

    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_batch)))
    (root / "test_batch").write_bytes(pickle.dumps(batch(per_batch)))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return root


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop (padding 4) and horizontal flip, on the batch's device."""
    n = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4))
    i, j = torch.randint(0, 9, (2,), generator=gen).tolist()
    x = padded[:, :, i:i + 32, j:j + 32]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)


@torch.no_grad()
def test_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str, bs: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        correct += int((model(x[i:i + bs].to(device)).argmax(1).cpu() == y[i:i + bs]).sum())
    return correct / len(y)


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(ARCHS), default="vgg16")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="local CIFAR python folder")
    src.add_argument("--synthetic", help="write a tiny fake CIFAR-10 here and train on it (tests)")
    p.add_argument("--classes", type=int, choices=(10, 100), default=10)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (small values for tests)")
    p.add_argument("--max-batches", type=int, default=None, help="stop each epoch after N batches")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (weights.pt, model.pt2)")
    a = p.parse_args(argv)

    torch.manual_seed(a.seed)
    data = a.data
    if a.synthetic:
        data = str(write_synthetic_cifar(a.synthetic))
    classes = a.classes if a.data else 10
    x_train, y_train = load_cifar(data, classes=classes, split="train")
    x_test, y_test = load_cifar(data, classes=classes, split="test")
    model, _ = ARCHS[a.arch](classes=classes, width=a.width)
    model.to(a.device)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=a.weight_decay)
    batches = (len(x_train) + a.batch_size - 1) // a.batch_size
    if a.max_batches:
        batches = min(batches, a.max_batches)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, a.epochs * batches))
    gen = torch.Generator().manual_seed(a.seed)
    acc = 0.0
    for epoch in range(a.epochs):
        model.train()
        start = time.perf_counter()
        perm = torch.randperm(len(x_train), generator=gen)
        for b in range(batches):
            idx = perm[b * a.batch_size:(b + 1) * a.batch_size]
            xb = augment(x_train[idx], gen).to(a.device)
            loss = F.cross_entropy(model(xb), y_train[idx].to(a.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = test_accuracy(model, x_test, y_test, a.device)
        print(f"epoch {epoch + 1}/{a.epochs}  loss {loss.item():.3f}  test {100 * acc:.2f}%  "
              f"({time.perf_counter() - start:.1f} s)", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval().cpu()
    torch.save(model.state_dict(), out / "weights.pt")
    program = torch.export.export(model, (torch.zeros(1, *INPUT_SHAPE),))
    torch.export.save(program, out / "model.pt2")
    print(f"wrote {out / 'weights.pt'} and {out / 'model.pt2'}; test accuracy {100 * acc:.2f}%")
    return acc


if __name__ == "__main__":
    main()
