"""The bridge NIR extension: metadata survives files, versions are checked."""

from __future__ import annotations

import nir
import numpy as np
import pytest

from bridge.format.errors import BridgeError
from bridge.format.extension import (
    FORMAT_VERSION,
    NAMESPACE,
    graph_metadata,
    graph_semantics,
    if_semantics,
    make_if,
)
from bridge.format.nirio import read_graph, write_graph


def tiny_graph(version: str = FORMAT_VERSION) -> nir.NIRGraph:
    theta = np.array([0.5, 1.0, 2.0])
    meta = graph_metadata(timesteps=4)
    meta[NAMESPACE]["version"] = version
    return nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([3])}),
            "fc": nir.Affine(weight=np.eye(3), bias=np.zeros(3)),
            "if1": make_if(theta, theta / 2),
            "output": nir.Output(output_type={"output": np.array([3])}),
        },
        edges=[("input", "fc"), ("fc", "if1"), ("if1", "output")],
        metadata=meta,
    )


def test_semantics_round_trip_through_hdf5(tmp_path):
    path = write_graph(tiny_graph(), tmp_path / "g.nir")
    graph = read_graph(path)
    sem = graph_semantics(graph)
    assert sem.is_bridge and sem.version == "1.0"
    assert (sem.input_encoding, sem.readout, sem.timesteps) == ("constant", "mean", 4)
    node = if_semantics(graph.nodes["if1"], "if1")
    assert node.reset == "subtract" and node.spike_condition == "ge"
    np.testing.assert_array_equal(node.threshold, [0.5, 1.0, 2.0])
    np.testing.assert_array_equal(node.v_init, [0.25, 0.5, 1.0])
    np.testing.assert_array_equal(node.r, [1.0, 1.0, 1.0])


def test_plain_nir_if_gets_the_nir_text_semantics():
    node = nir.IF(r=np.full(2, 2.0), v_threshold=np.ones(2), v_reset=np.full(2, -0.5))
    sem = if_semantics(node)
    assert (sem.reset, sem.spike_condition) == ("zero", "gt")
    np.testing.assert_array_equal(sem.v_init, [0.0, 0.0])
    np.testing.assert_array_equal(sem.v_reset, [-0.5, -0.5])
    np.testing.assert_array_equal(sem.r, [2.0, 2.0])
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": np.array([2])}), "if1": node,
               "output": nir.Output(output_type={"output": np.array([2])})},
        edges=[("input", "if1"), ("if1", "output")],
    )
    assert not graph_semantics(graph).is_bridge


def test_unknown_extension_version_is_refused_on_read(tmp_path):
    path = tmp_path / "future.nir"
    nir.write(path, tiny_graph(version="2.0"))
    with pytest.raises(BridgeError, match="version 2.0"):
        read_graph(path)


def test_same_graph_gives_byte_identical_files(tmp_path):
    a = write_graph(tiny_graph(), tmp_path / "a.nir").read_bytes()
    b = write_graph(tiny_graph(), tmp_path / "b.nir").read_bytes()
    assert a == b


def test_existing_output_is_not_overwritten_without_force(tmp_path):
    target = tmp_path / "g.nir"
    target.write_bytes(b"user data")
    with pytest.raises(BridgeError, match="--force"):
        write_graph(tiny_graph(), target)
    assert target.read_bytes() == b"user data"
    write_graph(tiny_graph(), target, force=True)
    assert graph_semantics(read_graph(target)).is_bridge


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import errno
    import pathlib

    def broken_write(path, data):
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", broken_write)
    with pytest.raises(BridgeError, match="no space left on the device") as info:
        write_graph(tiny_graph(), tmp_path / "g.nir")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "bad.nir"
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(BridgeError, match="not a readable NIR file") as info:
        read_graph(path)
    assert "\n" not in str(info.value)
