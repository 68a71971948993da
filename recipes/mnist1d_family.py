"""A family of MNIST-1D models that the calibration pipeline was NOT tuned on (issue #18, item 5).

Thirteen architectures x seeds: 1D CNNs of 2-6 conv layers and residual 1D nets, widths 16-64,
with and without BatchNorm, with plain ReLU, clipped ReLU with a fixed bound and with a trained
bound, and QCFS with L = 2, 4, 8. Each is trained briefly (a few epochs of Adam, seeded) and its
``state_dict`` is cached under ``--cache`` (default ``/tmp/bridge-family``; never in git), so the
benchmark (``benchmarks/family_bench.py``) trains each model once.

    python -m recipes.mnist1d_family --seeds 3            # train what is not cached yet
    python -m recipes.mnist1d_family --list
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bridge.model.activations import QCFS, ClippedReLU

CACHE = Path("/tmp/bridge-family")


@dataclass(frozen=True)
class FamilySpec:
    """One architecture: ``kind`` cnn|res, width, conv layers (cnn) or blocks (res), BatchNorm, activation."""

    name: str
    kind: str
    width: int
    depth: int
    batchnorm: bool
    activation: str  # relu | clip-fixed | clip | qcfs
    levels: int = 4

    @property
    def group(self) -> str:
        """relu, clipped (fixed or trained bound) or qcfs: the issue's target groups."""
        return "relu" if self.activation == "relu" else ("qcfs" if self.activation == "qcfs" else "clipped")


FAMILY: tuple[FamilySpec, ...] = (
    FamilySpec("relu-cnn2-w16-bn", "cnn", 16, 2, True, "relu"),
    FamilySpec("relu-cnn4-w32-bn", "cnn", 32, 4, True, "relu"),
    FamilySpec("relu-cnn3-w64", "cnn", 64, 3, False, "relu"),
    FamilySpec("relu-res2-w16-bn", "res", 16, 2, True, "relu"),
    FamilySpec("relu-res2-w24", "res", 24, 2, False, "relu"),
    FamilySpec("clipfix-cnn3-w32-bn", "cnn", 32, 3, True, "clip-fixed"),
    FamilySpec("clipfix-res2-w16-bn", "res", 16, 2, True, "clip-fixed"),
    FamilySpec("clip-cnn5-w48-bn", "cnn", 48, 5, True, "clip"),
    FamilySpec("clip-cnn6-w16", "cnn", 16, 6, False, "clip"),
    FamilySpec("qcfs2-cnn3-w32-bn", "cnn", 32, 3, True, "qcfs", 2),
    FamilySpec("qcfs4-res2-w16-bn", "res", 16, 2, True, "qcfs", 4),
    FamilySpec("qcfs8-cnn4-w24-bn", "cnn", 24, 4, True, "qcfs", 8),
    FamilySpec("qcfs4-cnn2-w32", "cnn", 32, 2, False, "qcfs", 4),
)


def activation(spec: FamilySpec) -> nn.Module:
    """ReLU, clipped ReLU (bound 2, fixed or trained) or QCFS with L = ``spec.levels``."""
    if spec.activation == "relu":
        return nn.ReLU()
    if spec.activation == "qcfs":
        return QCFS(2.0, levels=spec.levels)
    act = ClippedReLU(2.0)
    act.raw_bound.requires_grad_(spec.activation == "clip")
    return act


class _Block(nn.Module):
    """act(x + [bn](conv(act([bn](conv(x)))))) with a 1x1 strided shortcut conv."""

    def __init__(self, spec: FamilySpec, cin: int, cout: int) -> None:
        super().__init__()
        norm = (lambda c: nn.BatchNorm1d(c)) if spec.batchnorm else (lambda c: nn.Identity())
        self.conv1, self.bn1, self.act1 = nn.Conv1d(cin, cout, 3, 2, 1), norm(cout), activation(spec)
        self.conv2, self.bn2 = nn.Conv1d(cout, cout, 3, 1, 1), norm(cout)
        self.shortcut = nn.Conv1d(cin, cout, 1, 2)
        self.act2 = activation(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


def build(spec: FamilySpec, length: int = 40, classes: int = 10) -> nn.Module:
    """The model of ``spec`` for ``(B, 1, 40)`` signals (strided convolutions halve the length)."""
    norm = (lambda c: nn.BatchNorm1d(c)) if spec.batchnorm else (lambda c: nn.Identity())
    w = spec.width
    layers: list[nn.Module] = [nn.Conv1d(1, w, 5, padding=2), norm(w), activation(spec)]
    if spec.kind == "cnn":
        for _ in range(spec.depth - 1):
            layers += [nn.Conv1d(w, w, 3, stride=2, padding=1), norm(w), activation(spec)]
            length = (length + 1) // 2
        cout = w
    else:
        cin = w
        for i in range(spec.depth):
            cout = w * (2 if i else 1)
            layers.append(_Block(spec, cin, cout))
            cin, length = cout, (length + 1) // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(cout * length, classes)).eval()


def cache_path(spec: FamilySpec, seed: int, cache: Path = CACHE) -> Path:
    return cache / f"{spec.name}-s{seed}.pt"


def load_or_train(spec: FamilySpec, seed: int, *, epochs: int = 8, cache: Path = CACHE) -> tuple[nn.Module, float]:
    """The trained model (eval mode) and its test accuracy; trained once, then read from the cache."""
    from bridge.data.mnist1d import mnist1d_split
    from bridge.model.train import accuracy, train_model

    split = mnist1d_split()
    model = build(spec)
    path = cache_path(spec, seed, cache)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))  # tensors only: no code runs
        model.eval()
        return model, accuracy(model, split.test_x, split.test_y)
    trained = train_model(model, split, epochs=epochs, lr=5e-3, seed=1000 + seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(trained.model.state_dict(), path)
    return trained.model, trained.ann_accuracy


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--models", default=None, help="comma-separated names (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--list", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    specs = [s for s in FAMILY if args.models is None or s.name in args.models.split(",")]
    for spec in specs:
        if args.list:
            params = sum(q.numel() for q in build(spec).parameters())
            print(f"{spec.name:<22} {spec.group:<8} {params:>7} parameters")
            continue
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            _, acc = load_or_train(spec, seed, epochs=args.epochs, cache=args.cache)
            print(f"{spec.name:<22} seed {seed}: ANN {100 * acc:.2f}% ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
