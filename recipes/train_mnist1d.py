"""Train a 1D CNN or residual 1D net on MNIST-1D for a target latency, ready for bridge.

Which activation for which target T (measured on MNIST-1D, docs/calibration.md):

* ``--activation qcfs --levels L`` with L near the target T (QCFS, Bu et al. ICLR 2022): the
  ANN already quantises to L levels, so the SNN at T = L with theta/2 is close to it; L = 4 is a
  good default for T = 2..8. A smaller L (2) costs ANN accuracy on MNIST-1D (94.7% vs 97.4% for
  the CNN) for little gain at T = 2.
* ``--activation clip``: the trainable clipped ReLU (Bu et al. AAAI 2022), for T >= 8.
* ``--activation relu``: what ordinary code trains; only post-hoc calibration helps it, and it
  needs more steps for the same accuracy (see the demo's table).

Writes ``weights.pt`` (state_dict), ``model.pt2`` (torch.export program) and ``calib.npy``
(1024 training signals, the calibration data) into ``--out``; then

    bridge export OUT/model.pt2 --calibration OUT/calib.npy --timesteps 4 --to nir -o m.nir

    python -m recipes.train_mnist1d --arch cnn --activation qcfs --levels 4 --out runs/m1d-cnn
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bridge.data.mnist1d import INPUT_SHAPE, mnist1d_split
from bridge.model.train import SignalCNN, SignalResNet, train_model

ARCHS = {"cnn": SignalCNN, "resnet": SignalResNet}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=sorted(ARCHS), default="cnn")
    p.add_argument("--activation", choices=["qcfs", "clip", "relu"], default="qcfs")
    p.add_argument("--levels", type=int, default=4, help="QCFS quantisation steps L (near the target T)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibration-samples", type=int, default=1024)
    p.add_argument("--out", required=True, help="output folder (weights.pt, model.pt2, calib.npy)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = mnist1d_split()
    model = ARCHS[args.arch](args.activation, levels=args.levels)
    trained = train_model(model, split, epochs=args.epochs, seed=args.seed)
    torch.save(trained.model.state_dict(), out / "weights.pt")
    program = torch.export.export(trained.model, (torch.zeros(1, *INPUT_SHAPE),))
    torch.export.save(program, out / "model.pt2")
    np.save(out / "calib.npy", split.train_x[:args.calibration_samples].numpy())
    print(f"wrote {out / 'weights.pt'}, {out / 'model.pt2'} and {out / 'calib.npy'}; "
          f"test accuracy {100 * trained.ann_accuracy:.2f}% ({trained.seconds:.0f} s)")


if __name__ == "__main__":
    main()
