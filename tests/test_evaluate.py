"""bridge evaluate: the accuracy-vs-T sweep on labelled data, batched, from .nir and .pt2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app.cli import main
from bridge.converter import convert
from bridge.data.datasets import digits_split
from bridge.format.errors import BridgeError
from validation.accuracy import parse_timesteps
from validation.evaluation import evaluate_graph
from bridge.format.nirio import write_graph
from bridge.reference import ann_view, simulate
from bridge.model.train import DigitsCNN, train_model


@pytest.fixture(scope="module")
def model_and_graph():
    split = digits_split(3)
    trained = train_model(DigitsCNN("clip", channels=(4, 8), hidden=16), split, epochs=4, seed=0)
    graph = convert(trained.model, (1, 16, 16))
    return split, trained.model, graph


def test_sweep_matches_one_simulation_and_does_not_depend_on_batch_size(model_and_graph):
    split, _, graph = model_and_graph
    x, y = split.test_x[:100], split.test_y[:100]
    a = evaluate_graph(graph, x, y, [1, 2, 4, 8], batch_size=17, dtype=torch.float64)
    b = evaluate_graph(graph, x, y, [8, 4, 2, 1, 4], batch_size=100, dtype=torch.float64)
    assert a.accuracy == b.accuracy and a.timesteps == [1, 2, 4, 8]
    running = simulate(graph, x, 8).running_readout
    for t in (1, 2, 4, 8):
        assert a.accuracy[t] == pytest.approx(float((running[t - 1].argmax(1) == y).float().mean()))
    ann_pred = ann_view(graph, x.double()).argmax(1)
    assert a.ann_accuracy == pytest.approx(float((ann_pred == y).float().mean()))
    assert a.ann_agreement[8] == pytest.approx(float((running[7].argmax(1) == ann_pred).float().mean()))
    assert a.accuracy[8] > a.accuracy[1]


def test_parse_timesteps():
    assert parse_timesteps("8,1,2,2") == [1, 2, 8]
    for bad in ("", "0,1", "a,b"):
        with pytest.raises(BridgeError):
            parse_timesteps(bad)


def test_cli_on_nir_file_and_npz_json(model_and_graph, tmp_path, capsys):
    split, _, graph = model_and_graph
    path = write_graph(graph, tmp_path / "m.nir")
    x, y = split.test_x[:40], split.test_y[:40]
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    code = main(["evaluate", str(path), "--data", str(tmp_path / "d.npz"), "--timesteps-list", "1,4",
                 "--batch-size", "16", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    ref = evaluate_graph(graph, x, y, [1, 4])
    assert out["samples"] == 40 and out["timesteps"] == [1, 4]
    assert out["accuracy"] == {str(t): v for t, v in ref.accuracy.items()}


def test_cli_converts_a_torch_export_program_first(model_and_graph, tmp_path, capsys):
    split, model, graph = model_and_graph
    program = torch.export.export(model.eval(), (torch.zeros(1, 1, 16, 16),))
    torch.export.save(program, tmp_path / "m.pt2")
    code = main(["evaluate", str(tmp_path / "m.pt2"), "--data", "digits", "--steps", "2,8",  # the deprecated spelling still works
                 "--limit", "50", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["samples"] == 50
    assert 0.0 <= out["accuracy"]["2"] <= 1.0 and out["ann_accuracy"] > 0.5


def test_cli_user_errors_exit_2(model_and_graph, tmp_path, capsys):
    _, _, graph = model_and_graph
    path = write_graph(graph, tmp_path / "m.nir")
    assert main(["evaluate", str(tmp_path / "missing.nir"), "--data", "digits"]) == 2
    assert main(["evaluate", str(path), "--data", "digits", "--timesteps-list", "0"]) == 2
    assert main(["evaluate", str(path), "--data", "digits", "--v-init", "zero"]) == 2
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 1, 8, 8, 2), np.float32), y=np.zeros(3, np.int64))
    assert main(["evaluate", str(path), "--data", str(tmp_path / "bad.npz")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("bridge: error:") == 4
