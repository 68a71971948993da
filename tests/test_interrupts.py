"""Ctrl-C and SIGTERM at every point of a write: nothing is left behind, and the last line says
what is on disk (bridge.format.output_files, bridge.format.nirio, app.cli.main).

The deterministic tests send a real signal to this process at a chosen point of the write
(right after the temp file is created, after it is filled, after the rename, during the
cleanup); the stress test sends SIGINT/SIGTERM at random times to a process that writes a
large NIR file over and over, and checks every run's message against the disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import nir
import pytest
import torch

from app.cli import main
from tests import zoo

OLD = b"the previous output"
CODES = {signal.SIGINT: 130, signal.SIGTERM: 128 + signal.SIGTERM}


@pytest.fixture(scope="module")
def mlp_pt2(tmp_path_factory) -> Path:
    model, shape = zoo.mlp()
    path = tmp_path_factory.mktemp("model") / "mlp.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, *shape),)), path)
    return path


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".bridge-tmp-" in p.name)


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def _export(mlp_pt2: Path, out: Path) -> list[str]:
    return ["export", str(mlp_pt2), "--to", "nir", "-o", str(out), "--force"]


@pytest.fixture(autouse=True)
def _default_sigint():
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C raises here


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_right_after_the_rename_says_the_new_file_is_there(mlp_pt2, tmp_path, capsys,
                                                                      monkeypatch, signum):
    out = tmp_path / "out.nir"
    out.write_bytes(OLD)
    real_replace = os.replace

    def replace_then_signal(src, dst):
        real_replace(src, dst)
        if Path(dst) == out:
            signal.raise_signal(signum)  # lands right after the rename

    monkeypatch.setattr(os, "replace", replace_then_signal)
    code = main(_export(mlp_pt2, out))
    err = capsys.readouterr().err
    assert code == CODES[signum], err
    assert out.read_bytes() != OLD and nir.read(out).nodes  # the new file, complete
    assert f"{out} was written completely before that; nothing else was written" in last_line(err), err
    assert "nothing was written" not in err
    assert temps(tmp_path) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_right_after_the_temp_file_is_created_leaves_nothing(mlp_pt2, tmp_path, capsys,
                                                                       monkeypatch, signum):
    out = tmp_path / "out.nir"
    out.write_bytes(OLD)
    real_mkstemp = tempfile.mkstemp

    def mkstemp_then_signal(*args, **kwargs):
        made = real_mkstemp(*args, **kwargs)
        signal.raise_signal(signum)  # the temp file exists, mkstemp has not returned yet
        return made

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_then_signal)
    code = main(_export(mlp_pt2, out))
    err = capsys.readouterr().err
    assert code == CODES[signum], err
    assert last_line(err).endswith("; nothing was written"), err
    assert out.read_bytes() == OLD
    assert temps(tmp_path) == []


def test_a_second_ctrl_c_during_the_cleanup_still_leaves_no_temp_file(mlp_pt2, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.nir"
    out.write_bytes(OLD)
    real_write, real_unlink = Path.write_bytes, Path.unlink
    interrupted_cleanup: list[Path] = []

    def write_then_signal(self, data):
        n = real_write(self, data)
        if ".bridge-tmp-" in self.name:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C while the temp file is full
        return n

    def unlink_interrupted_once(self, missing_ok=False):
        if ".bridge-tmp-" in self.name and not interrupted_cleanup:
            interrupted_cleanup.append(self)
            raise KeyboardInterrupt  # a second Ctrl-C in the middle of the cleanup
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "write_bytes", write_then_signal)
    monkeypatch.setattr(Path, "unlink", unlink_interrupted_once)
    code = main(_export(mlp_pt2, out))
    err = capsys.readouterr().err
    assert interrupted_cleanup, "the cleanup was never interrupted: the test missed its point"
    assert code == 130 and last_line(err) == "bridge: interrupted; nothing was written", err
    assert out.read_bytes() == OLD
    assert temps(tmp_path) == []


def test_an_interrupt_between_two_outputs_names_the_one_written(tmp_path, capsys, monkeypatch):
    nir_path = zoo.write_mlp_nir(tmp_path / "mlp.nir")
    output, trace = tmp_path / "out.npz", tmp_path / "trace.npz"
    import numpy as np

    real_savez = np.savez

    def savez(f, **arrays):
        real_savez(f, **arrays)
        if any(k.endswith(".spikes") for k in arrays):  # the trace, written after --output
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(np, "savez", savez)
    code = main(["simulate", str(nir_path), "--input", "digits", "--steps", "2", "--limit", "4",
                 "--output", str(output), "--trace", str(trace)])
    err = capsys.readouterr().err
    assert code == 130, err
    assert last_line(err) == (f"bridge: interrupted; {output} was written completely before that; "
                              "nothing else was written")
    assert output.exists() and not trace.exists() and temps(tmp_path) == []


def test_an_error_after_an_output_was_written_says_so(tmp_path, capsys, monkeypatch):
    nir_path = zoo.write_mlp_nir(tmp_path / "mlp.nir")
    output, trace = tmp_path / "out.npz", tmp_path / "trace.npz"
    import numpy as np

    real_savez = np.savez

    def savez(f, **arrays):
        if any(k.endswith(".spikes") for k in arrays):
            raise OSError(28, "No space left on device")  # the disk fills up at the second file
        real_savez(f, **arrays)

    monkeypatch.setattr(np, "savez", savez)
    code = main(["simulate", str(nir_path), "--input", "digits", "--steps", "2", "--limit", "4",
                 "--output", str(output), "--trace", str(trace)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert last_line(err) == (f"bridge: error: cannot write {trace}: no space left on the device; free some "
                              f"space or write elsewhere; nothing was written there ({output} was written "
                              "completely before that; nothing else was written)"), err
    assert output.exists() and not trace.exists() and temps(tmp_path) == []


# --- random signals against a process that writes a large NIR file again and again ----------

_WRITER = r'''
import json, os, signal, sys, time
from pathlib import Path

import click
import numpy as np
import nir

import app.cli
from app.cli import main
from bridge.format.nirio import write_graph

out = Path(sys.argv[1])
rng = np.random.default_rng(0)
n = 2100  # 2100 x 2100 float32: 17.6 MB, the large-graph path (HDF5 straight into the temp file)
graph = nir.NIRGraph(
    nodes={"input": nir.Input(np.array([n])), "fc": nir.Affine(rng.standard_normal((n, n)).astype(np.float32),
                                                                 np.zeros(n, np.float32)),
           "output": nir.Output(np.array([n]))},
    edges=[("input", "fc"), ("fc", "output")])


@click.command()
def write_big():
    write_graph(graph, out, force=True)
    time.sleep(0.02)  # like export's summary (counting nodes, neurons): work after the rename
    click.echo(f"wrote {out}", err=True)


sys.modules["stress_writer"] = sys.modules["__main__"]
app.cli.COMMANDS["write-big"] = "stress_writer:write_big"
late = []
block = lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
unblock = lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
signal.signal(signal.SIGTERM, lambda s, f: late.append(s))
for line in sys.stdin:
    out.write_bytes(b"the previous output")
    block()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print("start", flush=True)
    unblock()
    t0 = time.perf_counter()
    try:
        code = main(["write-big"])
    except BaseException:  # the signal landed before main() began: not a case to check
        code = None
    block()
    signal.signal(signal.SIGINT, lambda s, f: late.append(s))
    unblock()
    new = out.read_bytes() != b"the previous output"
    if new:
        nir.read(out)  # a complete file
    print(json.dumps({"code": code, "new": new, "seconds": time.perf_counter() - t0,
                      "temps": [p.name for p in out.parent.iterdir() if ".bridge-tmp-" in p.name]}),
          flush=True)
'''


def test_random_signals_during_large_writes_leave_no_temp_file_and_a_true_message(tmp_path):
    import random
    import time

    out = tmp_path / "out.nir"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    rng = random.Random(0)
    runs = []
    try:
        # the first run, not interrupted: how long a write takes here
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "start\n"
        first = json.loads(proc.stdout.readline())
        assert (first["code"], first["new"], first["temps"]) == (0, True, [])
        # the delay adapts: shorter after a signal that came when the run was over, longer
        # after one that landed inside, so most land inside a run on a busy machine too
        span = 1.3 * first["seconds"]
        i = 0
        while i < 150 and sum(run["code"] not in (0, None) for _, run in runs) < 16:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "start\n"
            signum = (signal.SIGINT, signal.SIGTERM)[i % 2]
            time.sleep(rng.uniform(0.0, span))
            proc.send_signal(signum)
            run = json.loads(proc.stdout.readline())
            runs.append((signum, run))
            span *= 0.7 if run["code"] == 0 else 1.15
            i += 1
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    messages = [line for line in proc.stderr.read().splitlines() if line.startswith("bridge: ")]
    checked = [(signum, run) for signum, run in runs if run["code"] is not None]
    for (signum, run) in checked:
        assert run["temps"] == [], run
        assert run["code"] in (0, CODES[signum]), run
    interrupted = [run for _, run in checked if run["code"] != 0]
    assert len(messages) == len(interrupted), (messages, runs)
    for run, message in zip(interrupted, messages):
        if run["new"]:  # the signal landed after the rename: the message says the file is there
            assert message.endswith(f"{out} was written completely before that; nothing else was written"), (run, message)
        else:
            assert message.endswith("; nothing was written"), (run, message)
    by_signal = {s.name: sum(1 for sig, run in checked if sig == s and run["code"] not in (0, None))
                 for s in CODES}
    print("interrupted runs by signal:", by_signal, "of", len(runs))
    assert len(interrupted) >= 10, (by_signal, runs)  # the signals did land inside the runs


def test_outputs_are_noted_only_while_a_command_asks(tmp_path):
    from bridge.format.nirio import write_with
    from bridge.format.output_files import disk_state, noting_outputs, written_outputs

    write_with(tmp_path / "a.txt", lambda p: p.write_text("a"))  # the Python API: nothing kept
    assert written_outputs() == [] and disk_state() == "nothing was written"
    with noting_outputs():
        write_with(tmp_path / "b.txt", lambda p: p.write_text("b"))
        write_with(tmp_path / "c.txt", lambda p: p.write_text("c"))
        assert written_outputs() == [tmp_path / "b.txt", tmp_path / "c.txt"]
        assert disk_state() == (f"{tmp_path / 'b.txt'}, {tmp_path / 'c.txt'} were written completely "
                                "before that; nothing else was written")
    assert written_outputs() == []


@pytest.mark.parametrize("force", [False, True])
def test_a_signal_right_after_an_artifact_folder_is_renamed_says_the_folder_is_there(
        mlp_pt2, tmp_path, capsys, monkeypatch, force):
    """``--to spikingjelly`` renames a whole folder into place (exporters.artifact): a Ctrl-C
    landing right after the rename names the folder, and no temp folder stays behind."""
    out = tmp_path / "sj"
    if force:
        out.mkdir()
        (out / "old.txt").write_bytes(OLD)
    real_replace = os.replace

    def replace_then_signal(src, dst):
        real_replace(src, dst)
        if Path(dst) == out:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace_then_signal)
    args = ["export", str(mlp_pt2), "--to", "spikingjelly", "-o", str(out)] + (["--force"] if force else [])
    code = main(args)
    err = capsys.readouterr().err
    assert code == 130, err
    assert (out / "model.py").is_file() and not (out / "old.txt").exists()
    assert last_line(err) == f"bridge: interrupted; {out} was written completely before that; nothing else was written", err
    assert temps(tmp_path) == []
