"""Writing large NIR files: nir's dict layout without its copies; big weights stored uncompressed."""

from __future__ import annotations

import h5py
import nir
import numpy as np
import pytest

import bridge
from bridge.format import nirio
from bridge.format.extension import make_if
from tests import zoo


def _same(a, b) -> None:  # noqa: ANN001
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    else:
        assert a == b


def test_the_written_layout_is_nirs_own():
    for graph in zoo.zoo_graphs().values():
        _same(nirio._as_dict(graph), graph.to_dict())


def test_large_weights_are_stored_uncompressed_and_read_back(tmp_path):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((2100, 2048)).astype(np.float32)  # 17 MB, not constant
    theta = np.full(2100, 0.5)
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(input_type=np.array([2048])),
               "fc": nir.Affine(weight=weight, bias=np.zeros(2100, np.float32)),
               "act": make_if(theta, theta / 2),
               "output": nir.Output(output_type=np.array([2100]))},
        edges=[("input", "fc"), ("fc", "act"), ("act", "output")])
    path = bridge.write_graph(graph, tmp_path / "big.nir")
    with h5py.File(path) as f:
        assert f["node/nodes/fc/weight"].compression is None
        assert f["node/nodes/fc/bias"].compression == "gzip"
        assert f["node/nodes/act/v_threshold"].compression == "gzip"
    back = bridge.read_graph(path)
    assert np.array_equal(back.nodes["fc"].weight, weight) and back.nodes["fc"].weight.dtype == np.float32


def test_a_large_graph_is_written_straight_to_disk_and_refused_without_space(tmp_path, monkeypatch):
    """Graphs with large arrays skip the in-memory buffer (it would double the peak) and are
    refused in one line, before writing, when the disk cannot hold them."""
    import shutil
    from collections import namedtuple

    import bridge.format.nirio as nirio
    from bridge.format.errors import BridgeError
    from tests.zoo import mlp

    from bridge.converter import convert

    model, shape = mlp()
    graph = convert(model, shape)
    monkeypatch.setattr(nirio, "LARGE_ARRAY_BYTES", 1)  # every array counts as large
    assert nirio._has_large_array(graph)
    path = nirio.write_graph(graph, tmp_path / "big.nir")
    back = nirio.read_graph(path)
    for name, node in graph.nodes.items():
        if hasattr(node, "weight"):
            np.testing.assert_array_equal(back.nodes[name].weight, node.weight)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10, 10, 0))
    with pytest.raises(BridgeError, match="MB free"):
        nirio.write_graph(graph, tmp_path / "full.nir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.nir"]
