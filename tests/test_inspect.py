"""`bridge inspect` and :func:`bridge.format.inspect.inspect_graph` on real NIR files."""

from __future__ import annotations

import json

import nir
import numpy as np
import pytest

from app.cli import main
from bridge.converter import convert
from bridge.format.extension import NAMESPACE, VERSION, graph_metadata, make_if
from bridge.format.inspect import inspect_graph
from bridge.format.nirio import write_graph
from tests import zoo


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    model, shape = zoo.resnet_small()
    graph = convert(model, shape, v_init=0.3, timesteps=6)
    path = tmp_path_factory.mktemp("g") / "resnet.nir"
    write_graph(graph, path)
    return path, nir.read(path)


def test_inspect_graph_matches_the_file(resnet_file):
    _, graph = resnet_file
    info = inspect_graph(graph)
    ifs = {name: n for name, n in graph.nodes.items() if isinstance(n, nir.IF)}
    by_name = {n["name"]: n for n in info["nodes"]}
    assert set(by_name) == set(graph.nodes)
    assert info["nodes"][0]["type"] == "Input" and info["nodes"][-1]["type"] == "Output"
    for name, node in ifs.items():
        entry = by_name[name]
        theta = np.asarray(node.v_threshold)
        assert entry["threshold_min"] == pytest.approx(theta.min())
        assert entry["threshold_max"] == pytest.approx(theta.max())
        assert entry["v_init_min"] == pytest.approx(0.3) and entry["v_init_max"] == pytest.approx(0.3)
        assert entry["neurons"] == theta.size
        assert entry["output_shape"] == list(theta.shape)
        assert entry["reset"] == "subtract" and entry["spike_condition"] == "ge"
    params = sum(np.asarray(getattr(n, f)).size for n in graph.nodes.values()
                 for f in ("weight", "bias", "scale") if getattr(n, f, None) is not None)
    tot = info["totals"]
    assert tot["params"] == params > 1000
    assert tot["if_nodes"] == len(ifs) == 7  # stem + 2 per block x 3 blocks
    assert tot["neurons"] == sum(np.asarray(n.v_threshold).size for n in ifs.values())
    assert tot["edges"] == len(graph.edges)
    sem = info["semantics"]
    assert sem == {"bridge_extension": True, "version": "1.0", "input_encoding": "constant",
                   "readout": "mean", "timesteps": 6, "reset": "subtract", "spike_condition": "ge"}
    json.dumps(info)  # JSON-ready: plain Python types only


def test_each_node_lists_its_inputs_so_a_residual_scale_is_readable(resnet_file, capsys):
    path, graph = resnet_file
    info = inspect_graph(graph)
    by_name = {n["name"]: n for n in info["nodes"]}
    for name in graph.nodes:
        assert sorted(by_name[name]["inputs"]) == sorted(src for src, dst in graph.edges if dst == name)
    assert by_name["input"]["inputs"] == []
    scales = [n for n in info["nodes"] if n["type"] == "Scale"]
    assert scales, "the residual graph has a Scale on its skip connection"
    for scale in scales:  # the skip connection: from an IF layer into the sum before another IF
        (src,) = scale["inputs"]
        assert by_name[src]["type"] == "IF"
        consumers = [n for n in info["nodes"] if scale["name"] in n["inputs"]]
        assert len(consumers) == 1 and len(consumers[0]["inputs"]) == 2
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "inputs" in out.splitlines()[2]  # the header row of the node table
    for n in info["nodes"]:
        if len(n["inputs"]) == 2:  # a sum of two branches is shown as one
            assert " + ".join(n["inputs"]) in out, n


def test_plain_nir_graph_uses_nir_text_semantics(tmp_path):
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([3])), "fc": nir.Affine(np.ones((2, 3)), np.zeros(2)),
               "if": nir.IF(r=np.ones(2), v_threshold=np.array([1.0, 2.0]), v_reset=np.zeros(2)),
               "output": nir.Output(np.array([2]))},
        edges=[("input", "fc"), ("fc", "if"), ("if", "output")],
    )
    path = tmp_path / "plain.nir"
    nir.write(path, graph)
    info = inspect_graph(nir.read(path))
    assert info["semantics"]["bridge_extension"] is False
    assert info["semantics"]["reset"] == "zero" and info["semantics"]["spike_condition"] == "gt"
    assert info["semantics"]["input_encoding"] == "per_step"
    entry = [n for n in info["nodes"] if n["type"] == "IF"][0]
    assert (entry["threshold_min"], entry["threshold_max"], entry["v_init_max"]) == (1.0, 2.0, 0.0)
    assert info["totals"]["params"] == 8


def test_cli_table_and_json(resnet_file, capsys):
    path, graph = resnet_file
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    for name in graph.nodes:
        assert name in out
    assert "by subtraction" in out and "m >= theta" in out and "T = 6" in out
    assert main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["file"] == str(path)
    assert data["nodes"] == json.loads(json.dumps(inspect_graph(graph)))["nodes"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "none.nir")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err
    (tmp_path / "junk.nir").write_text("junk")
    assert main(["inspect", str(tmp_path / "junk.nir")]) == 2
    assert "not a readable NIR file" in capsys.readouterr().err
    meta = graph_metadata()
    meta[NAMESPACE][VERSION] = "9.0"
    future = nir.NIRGraph(nodes={"input": nir.Input(np.array([2])), "if": make_if(np.ones(2), np.zeros(2)),
                                 "output": nir.Output(np.array([2]))},
                          edges=[("input", "if"), ("if", "output")], metadata=meta)
    nir.write(tmp_path / "future.nir", future)
    assert main(["inspect", str(tmp_path / "future.nir")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "version 9.0" in err
