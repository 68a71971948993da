"""Peak memory of ``bridge evaluate`` does not grow with the data set: 1k vs 10k images.

Writes two synthetic labelled sets (``numpy.savez``, 3x32x32 float32: 12 MB and 123 MB) and a
small converted CNN, runs ``bridge evaluate`` on each in a fresh process (2 DataLoader
workers, spikes counted, the ANN view in the same pass) and prints the peak resident memory
(RSS high-water mark of the process and of its worker processes) for both and their ratio.
For contrast it also measures loading the same files whole (``load_labelled``, what
``bridge validate`` does), whose memory grows with the data.

    python benchmarks/eval_memory_bench.py [--small 1000] [--large 10000] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.converter import convert  # noqa: E402
from bridge.format.nirio import write_graph  # noqa: E402
from bridge.model.activations import ClippedReLU  # noqa: E402

# runs in a fresh interpreter: the command, then its own and its children's peak RSS (KiB).
# Its own peak is VmHWM (this address space only): ru_maxrss would also count the parent's
# memory at fork time, which Linux carries across exec.
CHILD = """
import json, re, resource, sys
from app.cli import main
mode, args = sys.argv[1], sys.argv[2:]
if mode == "evaluate":
    code = main(args)
else:
    from bridge.data.datasets import load_labelled
    x, y = load_labelled(args[0], input_shape=(3, 32, 32))
    code = 0
hwm = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
print(json.dumps({"code": code, "self": hwm,
                  "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def peak_rss(mode: str, args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, *args], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"},
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise SystemExit(f"bridge evaluate failed: {out.stderr[-2000:]}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10000)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ClippedReLU(), nn.AvgPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), ClippedReLU(), nn.AvgPool2d(2),
                          nn.Flatten(), nn.Linear(16 * 8 * 8, 10)).eval()
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        nir_path = write_graph(convert(model, (3, 32, 32)), Path(tmp) / "cnn.nir")
        for n in (args.small, args.large):
            data = Path(tmp) / f"data{n}.npz"
            np.savez(data, x=rng.uniform(0, 1, (n, 3, 32, 32)).astype(np.float32),
                     y=rng.integers(0, 10, n))
            ev = peak_rss("evaluate", ["evaluate", str(nir_path), "--data", str(data), "--timesteps-list",
                                       f"1,{args.steps}", "--batch-size", str(args.batch), "--workers", "2",
                                       "--device", "cpu", "--json"])
            whole = peak_rss("load", [str(data)])
            rows.append((n, data.stat().st_size, ev, whole))
    print(f"bridge evaluate, small CNN, T={args.steps}, batch {args.batch}, 2 DataLoader workers, CPU\n")
    print(f"{'images':>7} {'data MB':>8} {'evaluate peak MB':>17} {'workers peak MB':>16} {'load whole MB':>14}")
    for n, size, ev, whole in rows:
        print(f"{n:>7} {size / 2**20:>8.1f} {ev['self'] / 1024:>17.1f} {ev['children'] / 1024:>16.1f} "
              f"{whole['self'] / 1024:>14.1f}")
    (n0, _, e0, w0), (n1, _, e1, w1) = rows
    print(f"\npeak RSS ratio {n1} / {n0} images: evaluate {e1['self'] / e0['self']:.3f}, "
          f"its workers {max(e1['children'], 1) / max(e0['children'], 1):.3f}; "
          f"loading the whole set {w1['self'] / w0['self']:.3f}")


if __name__ == "__main__":
    main()
