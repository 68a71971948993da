"""``bridge simulate``: run a NIR graph with the reference simulator on a batch of inputs."""

from __future__ import annotations

from pathlib import Path

import click

from app.cli.option_types import COUNT
import numpy as np
import torch

from bridge.format.errors import BridgeError

EPILOG = """\b
Examples:
  bridge simulate model.nir --input digits --steps 8
  bridge simulate model.nir --input x.npy --steps 32 --output preds.npz
  bridge simulate model.nir --input x.npz --steps 16 --trace traces.npz --batch-size 64
  bridge simulate model.nir --input x.pt --steps 32 --dtype float32 --device cuda
  python -m bridge simulate model.nir --input digits --steps 8   # if `bridge` is iproute2's

\b
Input: .npy, .npz (array 'x' or the only array) or .pt, shaped [N, *input_shape] (the same
input at every step) or, for graphs fed per step, [T, N, *input_shape]. With labels (an
.npz holding 'x' and 'y', or `digits`: the 360 held-out digits, the split `bridge demo`
tests on, at the size of the graph's Input node) the accuracy is printed too.
--output writes readout [N, ...], predictions [N], outputs [T, N, ...] (and labels,
accuracy_per_step with labels); --trace writes '<node>.spikes' (uint8) and '<node>.v'
[T, N, ...] for every IF/LIF node. Existing files are kept unless --force."""


def _read_input(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The input tensor of a file, and its labels where it has them: an ``.npz`` with arrays
    ``x`` and ``y`` (the labelled format ``evaluate`` and ``validate`` read)."""
    from bridge.data.datasets import check_finite_data, load_tensor_file, read_tensor_arrays

    if Path(path).suffix.lower() == ".npz" and "y" in _npz_names(Path(path)):
        x, y = read_tensor_arrays(path, ("x", "y"))
        return check_finite_data(x.float(), Path(path)), y
    return load_tensor_file(path), None


def _npz_names(path: Path) -> list[str]:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return [n.removesuffix(".npy") for n in z.namelist()]
    except (OSError, zipfile.BadZipFile):
        return []  # not a zip: load_tensor_file says what is wrong


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@click.command(epilog=EPILOG)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--input", "input_", required=True, metavar="FILE|digits",
              help="Input tensor file (.npy/.npz/.pt) or 'digits'.")
@click.option("--steps", "-T", type=COUNT, default=32, show_default=True, help="Time steps T (>= 1).")
@click.option("--trace", "trace_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write spikes and potentials of every IF/LIF node to this .npz.")
@click.option("--output", "output_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write readout, predictions and per-step outputs to this .npz.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float64",
              show_default=True, help="float64 is bit-exact; float32 is faster.")
@click.option("--batch-size", type=COUNT, default=256, show_default=True,
              help="Samples simulated at once.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--dt", type=float, default=None,
              help="Forward-Euler step for LI/LIF nodes (plain NIR graphs that have them).")
@click.option("--limit", type=COUNT, default=None, help="Simulate only the first N samples.")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
def simulate(model: Path, input_: str, steps: int, trace_path: Path | None,
             output_path: Path | None, dtype: str, batch_size: int, device: str,
             dt: float | None, limit: int | None, force: bool) -> None:
    """Run MODEL (a NIR file) for T steps with the reference simulator and print the
    predicted classes (and the accuracy where the input has labels)."""
    from bridge.reference.probe import read_probed_graph
    from bridge.format.nirio import check_output_path, write_with
    from bridge.reference import ReferenceSimulator

    for path in (output_path, trace_path):
        if path is not None:  # refuse before any work, so nothing is half done
            check_output_path(path, force=force)
    if output_path is not None and output_path == trace_path:
        raise BridgeError("--output and --trace name the same file; give two paths")

    graph, probe = read_probed_graph(model)
    sim = ReferenceSimulator(graph, dtype=getattr(torch, dtype), device=device, dt=dt)
    shape = sim.input_shape
    labels: torch.Tensor | None = None
    if input_ == "digits":
        from bridge.data.datasets import load_labelled

        x, labels = load_labelled("digits", input_shape=shape)
    else:
        x, labels = _read_input(input_)
    batch_dim = 1 if x.dim() == len(shape) + 2 else 0  # [T, N, ...] inputs batch on dim 1
    if labels is not None and input_ != "digits":
        from bridge.data.datasets import check_labels
        from bridge.reference.probe import output_classes

        samples = x if batch_dim == 0 else x[0]
        labels = check_labels(samples, labels, input_, output_classes(graph))
    if limit is not None:
        x = x.narrow(batch_dim, 0, min(limit, x.shape[batch_dim]))
        labels = labels[: x.shape[batch_dim]] if labels is not None else None
    n = x.shape[batch_dim] if x.dim() > batch_dim else 0
    if n == 0:
        raise BridgeError(f"the input {input_} holds no samples (shape {list(x.shape)})")

    from bridge.format.output_files import require_memory

    # results [T, N, ...] (and traces) are kept whole, plus one more copy when they are
    # concatenated and saved: refuse now rather than fail after minutes of simulation
    itemsize = getattr(torch, dtype).itemsize
    require_memory(
        2.0 * steps * n * probe.step_footprint(itemsize, trace_path is not None),
        f"simulating {n} samples for T = {steps}" + (" with --trace" if trace_path else ""),
        "lower --steps, use --limit, or drop --trace",
    )
    outs: list[torch.Tensor] = []
    traces: dict[str, list[torch.Tensor]] = {}
    slices = _batches(n, batch_size)
    from rich.progress import Progress

    from app.cli.console import console

    err = console(stderr=True)  # stdout holds the results only (a pipe gets no blank line)
    with Progress(console=err, transient=True, disable=len(slices) < 2 or not err.is_terminal) as bar:
        task = bar.add_task(f"simulating {n} samples, T={steps}", total=len(slices))
        for sl in slices:
            xb = x[sl] if batch_dim == 0 else x[:, sl]
            res = sim.run(xb, steps, trace=trace_path is not None)
            outs.append(res.outputs.cpu())
            for name, tr in res.traces.items():
                traces.setdefault(f"{name}.spikes", []).append(tr.spikes.cpu().to(torch.uint8))
                traces.setdefault(f"{name}.v", []).append(tr.v.cpu())
            bar.advance(task)

    from bridge.reference import SimulationResult

    result = SimulationResult(torch.cat(outs, dim=1), readout_kind=sim.semantics.readout)
    preds = result.predictions()
    shown = " ".join(str(int(p)) for p in preds[:32]) + (" ..." if n > 32 else "")
    click.echo(f"{model}: {n} samples, T = {steps}, {dtype}; predicted classes: {shown}")
    arrays: dict[str, np.ndarray] = {
        "readout": result.readout.numpy(), "predictions": preds.numpy(),
        "outputs": result.outputs.numpy(),
    }
    if labels is not None:
        per_step = (result.running_readout.flatten(2).argmax(2) == labels).double().mean(1)
        click.echo(f"accuracy: {float(per_step[-1]):.2%} ({int((preds == labels).sum())}/{n}) "
                   f"at T = {steps}")
        arrays["labels"] = labels.numpy()
        arrays["accuracy_per_step"] = per_step.numpy()

    def saver(data: dict[str, np.ndarray]):
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: numpy adds no '.npz' suffix
                np.savez(f, **data)
        return write

    if output_path is not None:
        write_with(output_path, saver(arrays), force=force)
        click.echo(f"wrote {output_path}")
    if trace_path is not None:
        data = {k: torch.cat(v, dim=1).numpy() for k, v in traces.items()}
        write_with(trace_path, saver(data), force=force)
        click.echo(f"wrote {trace_path} ({len(data) // 2} nodes)")
