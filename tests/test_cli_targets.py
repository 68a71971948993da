"""``--weights intN`` and ``--to speck`` from the command line and from Python: the integer graph of
issue 21 reached through the conversion workflow (bridge.workflow.targets), with the same bytes
both ways and one-line refusals for what cannot apply."""

from __future__ import annotations

import json

import nir
import numpy as np
import pytest
import torch

import bridge
from bridge.format.extension import FIXED_POINT, NAMESPACE
from tests import zoo
from tests.cli_helpers import assert_one_line_error, run
from tests.nir_compare import assert_same_nir


def _integer_valued(graph: nir.NIRGraph) -> bool:
    weights = [np.asarray(n.weight) for n in graph.nodes.values() if isinstance(n, (nir.Conv2d, nir.Affine))]
    return bool(weights) and all(np.array_equal(w, np.round(w)) and np.abs(w).max() <= 127 for w in weights)


@pytest.fixture(scope="module")
def mlp_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlp")
    model, shape = zoo.mlp()
    pt2 = folder / "mlp.pt2"
    torch.export.save(torch.export.export(model.eval(), (torch.zeros(1, *shape),)), pt2)
    calib = folder / "calib.npy"
    np.save(calib, zoo.sample_input(shape, n=48).numpy())
    return model, shape, pt2, calib


def test_weights_int8_from_a_model_is_the_fixed_point_graph_and_the_api_writes_the_same_bytes(
        mlp_files, tmp_path, capsys):
    model, shape, pt2, calib = mlp_files
    out = tmp_path / "m.nir"
    code, _, err = run(capsys, "export", pt2, "--calibration", calib, "--weights", "int8", "--to", "nir", "-o", out)
    assert code == 0, err
    graph = nir.read(out)
    assert _integer_valued(graph)
    assert graph.metadata[NAMESPACE][FIXED_POINT]["weight_bits"] == 8
    api = bridge.convert(model, shape, calibration=np.load(calib), weights="int8")
    bridge.write_graph(api, tmp_path / "api.nir")
    assert (tmp_path / "api.nir").read_bytes() == out.read_bytes()


def test_weights_int8_from_a_nir_file_and_float_precisions_refused_there(mlp_files, tmp_path, capsys):
    _, shape, pt2, _ = mlp_files
    plain = tmp_path / "plain.nir"
    assert run(capsys, "export", pt2, "--to", "nir", "-o", plain)[0] == 0
    code, _, err = run(capsys, "export", plain, "--weights", "int6", "--to", "nir", "-o", tmp_path / "i6.nir")
    assert code == 0, err
    graph = nir.read(tmp_path / "i6.nir")
    assert graph.metadata[NAMESPACE][FIXED_POINT]["weight_bits"] == 6
    assert max(np.abs(np.asarray(n.weight)).max() for n in graph.nodes.values() if isinstance(n, nir.Affine)) <= 31
    # the integer graph runs in the exporters unchanged (no bounds): spikes equal the reference's
    code, out, err = run(capsys, "validate", tmp_path / "i6.nir", "--backends", "reference,snntorch",
                         "--steps", "4", "--json")
    assert code == 0, err
    assert run(capsys, "export", plain, "--to", "nir", "-o", tmp_path / "again.nir")[0] == 2
    code, _, err = run(capsys, "export", plain, "--weights", "float64", "--to", "nir", "-o", tmp_path / "f.nir")
    assert_one_line_error(code, err, "--weights")
    code, _, err = run(capsys, "export", pt2, "--weights", "int1", "--to", "nir", "-o", tmp_path / "x.nir")
    assert_one_line_error(code, err, "int1", "2..16")
    assert not (tmp_path / "f.nir").exists() and not (tmp_path / "x.nir").exists()


@pytest.fixture(scope="module")
def speck_files(tmp_path_factory):
    from recipes.speck_models import speck_mnist_ann

    folder = tmp_path_factory.mktemp("speck")
    torch.manual_seed(0)
    model = speck_mnist_ann().eval()
    pt2 = folder / "speck.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 28, 28),)), pt2)
    calib = folder / "calib.npy"
    np.save(calib, torch.rand(48, 1, 28, 28).numpy())
    return model, pt2, calib


def test_to_speck_writes_the_folder_and_prints_the_resource_table(speck_files, tmp_path, capsys):
    model, pt2, calib = speck_files
    out = tmp_path / "chip"
    code, stdout, err = run(capsys, "export", pt2, "--calibration", calib, "--to", "speck", "-o", out)
    assert code == 0, err
    assert {"model.nir", "README.md", "resources.txt", "sinabs_layers.json", "sinabs_state.pt"} <= {
        p.name for p in out.iterdir()}
    assert "kernel mem" in stdout and "neuron mem" in stdout and "wrote" in stdout
    assert (out / "resources.txt").read_text().strip() in stdout
    # the same from Python, through the same plan
    from bridge.workflow import ConversionPlan
    from bridge.workflow.targets import speck_export, speck_plan

    plan = speck_plan(ConversionPlan(calibration=str(calib)))
    graph = bridge.run_plan(pt2, plan).graph
    written = speck_export(graph, plan, tmp_path / "api")
    assert (tmp_path / "api" / "model.nir").read_bytes() == (out / "model.nir").read_bytes()
    assert written.table.rstrip().splitlines() == (out / "resources.txt").read_text().rstrip().splitlines()
    # and from the NIR file of the same plan, calibration given again for the readout
    nir_file = tmp_path / "m.nir"
    bridge.write_graph(graph, nir_file)
    code, _, err = run(capsys, "export", nir_file, "--calibration", calib, "--to", "speck", "-o", tmp_path / "fromnir")
    assert code == 0, err
    # (a graph read back from a file carries its metadata as numpy values: the nodes are compared)
    assert_same_nir(nir.read(tmp_path / "fromnir" / "model.nir"), nir.read(out / "model.nir"), atol=0)


def test_to_speck_refusals_are_one_line_and_write_nothing(speck_files, tmp_path, capsys):
    _, pt2, calib = speck_files
    out = tmp_path / "chip"
    code, _, err = run(capsys, "export", pt2, "--to", "speck", "-o", out)
    assert_one_line_error(code, err, "--to speck needs --calibration")
    code, _, err = run(capsys, "export", pt2, "--calibration", calib, "--weights", "int8", "--to", "speck", "-o", out)
    assert_one_line_error(code, err, "--weights int8", "drop --weights")
    assert not out.exists()


def test_to_speck_refuses_a_model_that_does_not_fit_naming_each_limit(tmp_path, capsys):
    from torch import nn

    from bridge.model.activations import ClippedReLU

    torch.manual_seed(0)
    wide = nn.Sequential(nn.Conv2d(1, 64, 3, bias=False), ClippedReLU(1.0), nn.Conv2d(64, 1024, 3, bias=False),
                         ClippedReLU(1.0), nn.Flatten(), nn.Linear(1024 * 60 * 60, 10, bias=False)).eval()
    pt2 = tmp_path / "wide.pt2"
    torch.export.save(torch.export.export(wide, (torch.zeros(1, 1, 64, 64),)), pt2)
    calib = tmp_path / "c.npy"
    np.save(calib, torch.rand(16, 1, 64, 64).numpy())
    code, _, err = run(capsys, "export", pt2, "--calibration", calib, "--to", "speck", "-o", tmp_path / "out")
    assert code == 2, err
    line = assert_one_line_error(code, err.strip().splitlines()[-1], "does not fit Speck")
    # every broken limit named, one item each (the library's lines, folded into the CLI's one line)
    assert "layer 0 (_0): neuron memory 256 Ki exceeds the largest core's 64 Ki" in line
    assert "layer 1 (_2): kernel memory 1024 Ki exceeds" in line
    assert "layer 2 (_5): kernel memory 65536 Ki exceeds" in line
    assert line.count(" - layer ") == 4, line
    assert not (tmp_path / "out").exists()
