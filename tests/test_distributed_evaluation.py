"""Evaluation at scale: shards over torch.distributed processes (gloo), resume, exact counts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from app.cli import main
from bridge.converter import convert
from bridge.data.streaming import open_dataset
from bridge.format.errors import BridgeError
from bridge.format.nirio import write_graph
from bridge.model.train import DigitsCNN
from bridge.reference import ann_view, simulate
from validation.accuracy import AccuracyCurve
from validation.distributed import ProcessGroup, shard_bounds
from validation.evaluation import RunInterrupted, evaluate_dataset, evaluate_graph

REPO = Path(__file__).resolve().parents[1]
# what depends on the machine or the number of processes, not on the data
VOLATILE = {"seconds", "images_per_second", "processes", "device", "notes", "resumed_samples"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A clipped CNN with random weights and 30 synthetic labelled images (.nir, .npz)."""
    root = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    model = DigitsCNN("clip", channels=(4, 8), hidden=16).eval()
    graph = convert(model, (1, 16, 16))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (30, 1, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, 30)
    np.savez(root / "data.npz", x=x, y=y)
    return graph, write_graph(graph, root / "m.nir"), root / "data.npz", torch.from_numpy(x), torch.from_numpy(y)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node N -m bridge ARGS`` on 127.0.0.1 only, gloo on the CPU."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "bridge", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _stable(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in VOLATILE}


def test_shards_cover_every_sample_once():
    for n in (0, 1, 7, 30, 101):
        for world in (1, 2, 3, 8):
            bounds = [shard_bounds(n, r, world) for r in range(world)]
            covered = [i for a, b in bounds for i in range(a, b)]
            assert covered == list(range(n))
            assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1
    with pytest.raises(BridgeError):
        shard_bounds(10, 2, 2)


def test_counts_are_exact_and_spikes_match_the_traces(files):
    graph, _, _, x, y = files
    a = evaluate_graph(graph, x, y, [1, 3, 8], batch_size=7, dtype=torch.float64)
    b = evaluate_graph(graph, x, y, [1, 3, 8], batch_size=30, dtype=torch.float64)
    assert a.curve.to_counts().tolist() == b.curve.to_counts().tolist()
    res = simulate(graph, x, 8, trace=True)
    assert set(a.curve.spikes) == set(res.traces) and len(res.traces) == 3
    for name, trace in res.traces.items():
        for t in (1, 3, 8):
            assert a.curve.spikes[name][t] == int(trace.spikes[:t].sum())
    for t in (1, 3, 8):
        assert a.curve.correct[t] == int((res.running_readout[t - 1].argmax(1) == y).sum())
    ann = ann_view(graph, x.double()).argmax(1)
    assert a.curve.ann_correct == int((ann == y).sum())
    assert a.curve.ann_agree[8] == int((res.running_readout[7].argmax(1) == ann).sum())


def test_curves_add_up_through_count_vectors():
    ts = [1, 2]
    a, b = AccuracyCurve(ts), AccuracyCurve(ts)
    run = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]])  # [T=2, B=2, K=2]
    a.add_readout(run, torch.tensor([1, 0]), torch.tensor([0, 0]))
    a.add_spikes({"l": [3, 4]})
    b.add_readout(run[:, :1], torch.tensor([0]), torch.tensor([1]))
    b.add_spikes({"l": [1, 0]})
    m = a.merge(b)
    assert (m.samples, m.correct, m.ann_agree, m.ann_correct) == (3, {1: 2, 2: 2}, {1: 2, 2: 2}, 1)
    assert m.spikes == {"l": {1: 4, 2: 8}}
    again = AccuracyCurve(ts)
    again.add_counts(a.to_counts() + b.to_counts(), ["l"])
    assert again.to_counts().tolist() == m.to_counts().tolist()
    with pytest.raises(BridgeError):
        again.add_counts([1, 2, 3], ["l"])


def test_a_killed_run_resumes_to_the_same_counts(files, tmp_path):
    graph, _, npz, _, _ = files
    data = open_dataset(str(npz), input_shape=(1, 16, 16))
    opts = dict(batch_size=4, dtype=torch.float64, checkpoint_every=2)
    whole = evaluate_dataset(graph, data, [2, 6], **opts)
    progress = tmp_path / "progress.json"
    with pytest.raises(RunInterrupted):  # killed after 5 batches: batch 5 is lost, 4 are saved
        evaluate_dataset(graph, data, [2, 6], resume=progress, stop_after_batches=5, **opts)
    saved = json.loads(progress.read_text())
    assert saved["ranks"][0]["done"] == 16 and not saved["complete"]
    resumed = evaluate_dataset(graph, data, [2, 6], resume=progress, **opts)
    assert resumed.resumed_samples == 16
    assert resumed.curve.to_counts().tolist() == whole.curve.to_counts().tolist()
    assert json.loads(progress.read_text())["complete"]
    with pytest.raises(BridgeError, match="differs in timesteps"):
        evaluate_dataset(graph, data, [2, 8], resume=progress, **opts)


def test_cli_resume_and_output(files, tmp_path, capsys):
    _, nir_path, npz, _, _ = files
    base = ["evaluate", str(nir_path), "--data", str(npz), "--timesteps-list", "1,4", "--batch-size", "4",
            "--dtype", "float64", "--workers", "0", "--json"]
    assert main(base) == 0
    whole = json.loads(capsys.readouterr().out)
    progress = tmp_path / "p.json"
    resume = ["--resume", str(progress), "--checkpoint-every", "3"]
    assert main([*base, *resume, "--stop-after-batches", "4"]) == 130
    assert "--resume" in capsys.readouterr().err
    out = tmp_path / "result.json"
    assert main([*base, *resume, "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert _stable(printed) == _stable(whole) == _stable(json.loads(out.read_text()))
    assert printed["resumed_samples"] == 12
    assert main([*base, "--output", str(out)]) == 2  # an existing result is kept without --force
    assert "--force" in capsys.readouterr().err


def test_imagenet_style_folder_streams_through_workers(tmp_path, capsys):
    """An ImageFolder of differently sized JPEG-like images, the ImageNet transform, 2 workers."""
    from PIL import Image

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(64, 3))
    graph = convert(model.eval(), (3, 16, 16), calibration=torch.rand(8, 3, 16, 16))
    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "val" / f"class{c}").mkdir(parents=True)
        for i in range(3):
            size = (int(rng.integers(20, 40)), int(rng.integers(20, 40)))
            Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(
                tmp_path / "val" / f"class{c}" / f"{i}.png")
    path = write_graph(graph, tmp_path / "m.nir")
    args = ["evaluate", str(path), "--data", f"imagefolder:{tmp_path / 'val'}", "--timesteps-list", "2,4",
            "--transform", "imagenet,resize=18,crop=16", "--batch-size", "4", "--dtype", "float64", "--json"]
    assert main([*args, "--workers", "2"]) == 0
    streamed = json.loads(capsys.readouterr().out)
    assert main([*args, "--workers", "0"]) == 0
    assert _stable(json.loads(capsys.readouterr().out)) == _stable(streamed)
    assert streamed["samples"] == 9
    assert main([*args[:-1], "--transform", "imagenet", "--json"]) == 2  # 224 crops for a 16x16 model
    assert "crop" in capsys.readouterr().err


def test_two_gloo_processes_equal_one(files, tmp_path):
    _, nir_path, npz, _, _ = files
    args = ["evaluate", str(nir_path), "--data", str(npz), "--timesteps-list", "1,2,5", "--batch-size", "4",
            "--dtype", "float64", "--device", "cpu"]
    assert main([*args, "--output", str(tmp_path / "one.json")]) == 0
    run = torchrun([*args, "--output", str(tmp_path / "two.json")])
    assert run.returncode == 0, run.stderr[-3000:]
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two["processes"] == 2 and one["processes"] == 1
    assert _stable(two) == _stable(one)
    assert one["counts"]["spikes"] and sum(one["counts"]["correct"].values()) > 0


@pytest.mark.slow
def test_two_processes_resume_and_validate(files, tmp_path, capsys):
    _, nir_path, npz, _, _ = files
    args = ["evaluate", str(nir_path), "--data", str(npz), "--timesteps-list", "3,6", "--batch-size", "2",
            "--dtype", "float64", "--device", "cpu", "--resume", str(tmp_path / "p.json"),
            "--checkpoint-every", "2"]
    killed = torchrun([*args, "--stop-after-batches", "5"])
    assert killed.returncode != 0
    assert [r["done"] for r in json.loads((tmp_path / "p.json").read_text())["ranks"]] == [8, 8]
    resumed = torchrun([*args, "--output", str(tmp_path / "two.json")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert main([*args[:-4], "--output", str(tmp_path / "one.json")]) == 0
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert _stable(two) == _stable(one) and two["resumed_samples"] == 16
    # bridge validate: the merged report of 2 shards equals the 1-process report
    val = ["validate", str(nir_path), "--data", str(npz), "--backends", "reference", "--steps", "4", "--json"]
    capsys.readouterr()
    assert main(val) == 0
    single = json.loads(capsys.readouterr().out)
    run = torchrun(val)
    assert run.returncode == 0, run.stderr[-3000:]
    double = json.loads(run.stdout)

    def drop_seconds(d):
        if isinstance(d, dict):
            return {k: drop_seconds(v) for k, v in d.items() if k != "seconds"}
        return [drop_seconds(v) for v in d] if isinstance(d, list) else d

    assert drop_seconds(double) == drop_seconds(single) and single["samples"] == 30


def test_process_group_of_one_is_the_identity():
    g = ProcessGroup()
    t = torch.tensor([1, 2, 3])
    assert g.all_reduce_sum(t).tolist() == [1, 2, 3] and g.is_main and not g.distributed
    assert g.broadcast("x") == "x" and g.gather(5) == [5] and g.agree(True) and not g.agree(False)
