"""Integer networks: the bounded IF rule, the fixed-point pass, and exactness across backends."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch

from bridge.format.errors import BridgeError
from bridge.format.extension import (
    BOUNDS_VERSION,
    FIXED_POINT,
    NAMESPACE,
    OUTPUT_SCALE,
    SCALE,
    STATE_BITS,
    WEIGHT_BITS,
    graph_semantics,
    if_semantics,
    make_if,
    set_state_bounds,
)
from bridge.format.neurons import if_step, if_step_
from bridge.passes.fixed_point import QUANTISED_NODES, state_range, to_fixed_point
from bridge.reference import ReferenceSimulator
from exporters.capabilities import check_unbounded
from tests.zoo import sample_input, zoo_graphs
from validation import backends as registry


@pytest.fixture(scope="module")
def zoo():
    return zoo_graphs()


def _counts(shape: tuple[int, ...], n: int = 6, seed: int = 0) -> torch.Tensor:
    """Integer inputs (event counts per step) in 0..3."""
    return torch.randint(0, 4, (n, *shape), generator=torch.Generator().manual_seed(seed)).double()


# -- the bounded IF rule ------------------------------------------------------------------------

def test_bounded_step_clips_the_integrated_potential_before_the_spike():
    theta = torch.full((5,), 4.0, dtype=torch.float64)
    v = torch.tensor([0.0, 2.0, -4.0, 8.0, 1.0], dtype=torch.float64)
    current = torch.tensor([-9.0, 12.0, -3.0, 5.0, 3.0], dtype=torch.float64)
    s, v_new = if_step(current, v, theta, v_min=-5.0, v_max=9.0)
    # m = clip(v + I, -5, 9) = [-5, 9, -5, 9, 4]; s = [m >= 4]; v' = m - 4 s
    assert s.tolist() == [0.0, 1.0, 0.0, 1.0, 1.0]
    assert v_new.tolist() == [-5.0, 5.0, -5.0, 5.0, 0.0]
    s_free, v_free = if_step(current, v, theta)
    assert v_free.tolist() == [-9.0, 10.0, -7.0, 9.0, 0.0]  # unbounded: nothing clipped
    # the in-place form computes the same, with tensor bounds per neuron
    lo, hi = torch.full_like(theta, -5.0), torch.full_like(theta, 9.0)
    v_in, out = v.clone(), torch.empty_like(v)
    if_step_(current, v_in, theta, out, v_min=lo, v_max=hi)
    assert torch.equal(out, s) and torch.equal(v_in, v_new)
    # one bound alone
    _, v_low = if_step(current, v, theta, v_min=-5.0)
    assert v_low.tolist() == [-5.0, 10.0, -5.0, 9.0, 0.0]


def test_bounds_in_metadata_are_read_checked_and_versioned():
    node = set_state_bounds(make_if(np.full(3, 4.0), np.full(3, 2.0)), -5.0, 9.0)
    sem = if_semantics(node, "n")
    assert sem.bounded and sem.v_min.tolist() == [-5.0] * 3 and sem.v_max.tolist() == [9.0] * 3
    assert not if_semantics(make_if(np.ones(3), np.zeros(3)), "m").bounded
    bad = set_state_bounds(make_if(np.full(3, 4.0), np.zeros(3)), 9.0, -5.0)
    with pytest.raises(BridgeError, match="v_min > v_max"):
        if_semantics(bad, "bad")
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([3])), "n": node,
                            "output": nir.Output(output_type=np.array([3]))},
                     edges=[("input", "n"), ("n", "output")],
                     metadata={NAMESPACE: {"version": BOUNDS_VERSION}})
    assert graph_semantics(g).version == BOUNDS_VERSION
    g.metadata[NAMESPACE]["version"] = "1.2"
    with pytest.raises(BridgeError, match="version 1.2"):
        graph_semantics(g)


# -- the fixed-point pass ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlp", "vgg_bn", "resnet_small", "grouped_strided", "vgg_bn_channel_wise",
                                  "resnet_small_channel_wise"])
def test_fixed_point_graph_is_integer_with_its_widths_and_scales(zoo, name):
    g = to_fixed_point(zoo[name], weight_bits=8, state_bits=16)
    assert graph_semantics(g).version == "1.0"  # no bounds: a 1.0 graph every exporter runs
    fp = g.metadata[NAMESPACE][FIXED_POINT]
    assert fp[WEIGHT_BITS] == 8 and fp[STATE_BITS] == 16 and fp[OUTPUT_SCALE] > 0
    assert not any(isinstance(n, nir.AvgPool2d) for n in g.nodes.values())
    for node_name, node in g.nodes.items():
        if isinstance(node, QUANTISED_NODES):
            w = np.asarray(node.scale if isinstance(node, nir.Scale) else node.weight, dtype=np.float64)
            assert np.array_equal(w, np.round(w)) and np.abs(w).max() <= 127, node_name
            bias = getattr(node, "bias", None)
            if bias is not None and not isinstance(node, nir.Scale):
                assert np.array_equal(bias, np.round(bias))
            assert node.metadata[NAMESPACE][WEIGHT_BITS] == 8 and np.all(np.asarray(node.metadata[NAMESPACE][SCALE]) > 0)
        if isinstance(node, nir.IF):
            sem = if_semantics(node, node_name)
            assert np.array_equal(sem.threshold, np.round(sem.threshold)) and sem.threshold.min() >= 1
            assert np.array_equal(sem.v_init, np.round(sem.v_init))
            assert max(sem.threshold.max(), np.abs(sem.v_init).max()) <= 2 ** 15 - 1
            assert node.metadata[NAMESPACE][STATE_BITS] == 16 and not sem.bounded
    # at least one layer reaches the full weight range
    assert max(np.abs(np.asarray(n.weight)).max() for n in g.nodes.values() if hasattr(n, "weight")) == 127


def test_fixed_point_follows_the_float_graph(zoo):
    """The stored readout times output_scale approximates the float graph's readout."""
    g = zoo["vgg_bn"]
    gi = to_fixed_point(g)
    x = sample_input((1, 16, 16), 32)
    ref = ReferenceSimulator(g, dtype=torch.float64).run(x, 64).readout
    got = ReferenceSimulator(gi, dtype=torch.float64).run(x, 64).readout * gi.metadata[NAMESPACE][FIXED_POINT][OUTPUT_SCALE]
    rel = float((got - ref).norm() / ref.norm())
    assert rel < 0.1, rel
    assert float((got.argmax(1) == ref.argmax(1)).float().mean()) >= 0.8


def test_residual_branches_share_one_scale(zoo):
    g = zoo["resnet_small"]
    gi = to_fixed_point(g)
    from bridge.format.graph import neighbours

    preds, _ = neighbours(gi.nodes, gi.edges)
    merged = [n for n, v in gi.nodes.items() if isinstance(v, nir.IF) and len(preds[n]) > 1]
    assert merged
    for n in merged:  # every producer of a residual sum is quantised at the neuron's (common) scale
        own = np.asarray(gi.nodes[n].metadata[NAMESPACE][SCALE])
        for p in preds[n]:
            assert np.array_equal(np.asarray(gi.nodes[p].metadata[NAMESPACE][SCALE]), own), (n, p)


@pytest.mark.parametrize("name", ["mlp", "vgg_bn", "resnet_small", "grouped_strided"])
def test_integer_graph_is_exact_in_float32_and_float64_on_integer_input(zoo, name):
    gi = to_fixed_point(zoo[name])
    x = _counts(tuple(int(s) for s in np.asarray(gi.nodes["input"].input_type["input"])))
    r64 = ReferenceSimulator(gi, dtype=torch.float64).run(x, 12, trace=True, mode="step")
    r32 = ReferenceSimulator(gi, dtype=torch.float32).run(x.float(), 12, trace=True, mode="step")
    assert torch.equal(r64.outputs, r32.outputs.double())
    for node, trace in r64.traces.items():
        assert torch.equal(trace.spikes, r32.traces[node].spikes.double()), node
        assert torch.equal(trace.v, r32.traces[node].v.double()), node
        assert torch.equal(trace.v, trace.v.round()), node  # integer potentials


@pytest.mark.parametrize("backend", ["spikingjelly", "norse"])
@pytest.mark.parametrize("name", ["vgg_bn", "resnet_small"])
def test_exporters_reproduce_the_integer_graph_in_float32_and_float64(zoo, backend, name):
    """exporters.spikingjelly.build / exporters.norse.build (through their validation backends):
    the same spike trains as the reference for integer input, in both precisions."""
    gi = to_fixed_point(zoo[name])
    x = _counts(tuple(int(s) for s in np.asarray(gi.nodes["input"].input_type["input"])), n=4, seed=3)
    want = ReferenceSimulator(gi, dtype=torch.float64).run(x, 10, trace=True, mode="step")
    cls = registry.get_backend(backend)
    for dtype in (torch.float64, torch.float32):
        got = cls(gi, dtype=dtype).run(x.to(dtype), 10, trace=True)
        for node, trace in want.traces.items():
            assert torch.equal(got.traces[node].spikes.double(), trace.spikes), (dtype, node)
        assert torch.equal(got.outputs.double(), want.outputs), dtype


def test_bounds_make_a_version_1_1_graph_that_the_exporters_refuse(zoo, tmp_path):
    gi = to_fixed_point(zoo["mlp"], bounds=state_range(16))
    assert graph_semantics(gi).version == BOUNDS_VERSION
    for name, node in gi.nodes.items():
        if isinstance(node, nir.IF):
            sem = if_semantics(node, name)
            assert sem.v_min.max() == -32768 and sem.v_max.min() == 32767
    from exporters import norse, sinabs, snntorch, spikingjelly, write_artifact

    for build in (spikingjelly.build, norse.build, snntorch.build, sinabs.build):
        with pytest.raises(BridgeError, match="bounds its potential") as info:
            build(gi)
        assert "\n" not in str(info.value)
    with pytest.raises(BridgeError, match="bounds its potential"):
        write_artifact(gi, "snntorch", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    check_unbounded(to_fixed_point(zoo["mlp"]))  # no bounds: nothing to refuse


def test_state_range_and_widths():
    assert state_range(16) == (-32768.0, 32767.0) and state_range(8) == (-128.0, 127.0)
    g = zoo_graphs()["mlp"]
    g4 = to_fixed_point(g, weight_bits=4)
    assert max(np.abs(np.asarray(n.weight)).max() for n in g4.nodes.values() if hasattr(n, "weight")) == 7
    for bad in ({"weight_bits": 1}, {"state_bits": 40}):
        with pytest.raises(BridgeError, match="bits"):
            to_fixed_point(g, **bad)


def test_plain_nir_and_unknown_nodes_are_refused():
    plain = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([2])),
                                "fc": nir.Affine(weight=np.eye(2), bias=np.zeros(2)),
                                "n": nir.IF(r=np.ones(2), v_threshold=np.ones(2), v_reset=np.zeros(2)),
                                "output": nir.Output(output_type=np.array([2]))},
                         edges=[("input", "fc"), ("fc", "n"), ("n", "output")])
    with pytest.raises(BridgeError, match="bridge graph"):
        to_fixed_point(plain)


def test_fixed_point_graph_round_trips_through_a_nir_file(zoo, tmp_path):
    from bridge.format.nirio import read_graph, write_graph

    for bounds in (None, state_range(16)):
        gi = to_fixed_point(zoo["resnet_small"], bounds=bounds)
        path = write_graph(gi, tmp_path / f"int8_{bounds is None}.nir")
        back = read_graph(path)
        assert graph_semantics(back).version == graph_semantics(gi).version
        fp = back.metadata[NAMESPACE][FIXED_POINT]
        assert int(fp[WEIGHT_BITS]) == 8 and float(fp[OUTPUT_SCALE]) == gi.metadata[NAMESPACE][FIXED_POINT][OUTPUT_SCALE]
        x = _counts(tuple(int(s) for s in np.asarray(gi.nodes["input"].input_type["input"])), n=3)
        a = ReferenceSimulator(gi, dtype=torch.float32).run(x.float(), 6).outputs
        b = ReferenceSimulator(back, dtype=torch.float32).run(x.float(), 6).outputs
        assert torch.equal(a, b)
        if bounds is not None:
            assert all(if_semantics(n, k).bounded for k, n in back.nodes.items() if isinstance(n, nir.IF))


@pytest.mark.parametrize("case", ["linear_scale", "if_neuron_variants", "conv1d", "conv2d_stride_padding",
                                  "conv2d_dilation_grouped", "pooling", "avgpool_padded", "flatten_partial",
                                  "residual", "concatenation"])
def test_every_conformance_graph_becomes_an_exact_integer_graph(case):
    """Scale chains (Linear -> Scale -> IF), IF -> AvgPool -> IF (a fixed scale), sum pools, grouped,
    strided and 1-D convolutions, residual sums and split concatenations."""
    from validation import cases

    c = cases.load(case)
    gi = to_fixed_point(c.graph)
    for name, node in gi.nodes.items():
        if isinstance(node, QUANTISED_NODES):
            w = np.asarray(node.scale if isinstance(node, nir.Scale) else node.weight, dtype=np.float64)
            assert np.array_equal(w, np.round(w)) and np.abs(w).max() <= 127, name
    x = torch.from_numpy(np.round(c.x * 4))  # integer event counts
    r64 = ReferenceSimulator(gi, dtype=torch.float64).run(x, c.steps, trace=True, mode="step")
    r32 = ReferenceSimulator(gi, dtype=torch.float32).run(x.float(), c.steps, trace=True, mode="step")
    assert torch.equal(r64.outputs, r32.outputs.double())
    for node, trace in r64.traces.items():
        assert torch.equal(trace.spikes, r32.traces[node].spikes.double()), node
        assert torch.equal(trace.v, trace.v.round()), node


def test_a_scale_in_front_of_a_pool_is_quantised_at_its_own_scale():
    """IF -> Scale (thresholds varying inside a channel) -> AvgPool -> Conv: the Scale becomes
    integers at its own scale, the conv absorbs it (and the pool's 1/4)."""
    rng = np.random.default_rng(0)
    theta = rng.uniform(0.5, 2.0, size=(2, 4, 4))
    nodes = {
        "input": nir.Input(input_type=np.array([1, 4, 4])),
        "conv": nir.Conv2d(input_shape=(4, 4), weight=rng.normal(size=(2, 1, 3, 3)), stride=1, padding=1,
                           dilation=1, groups=1, bias=np.zeros(2)),
        "if1": make_if(theta, theta / 2),
        "scale": nir.Scale(scale=theta),
        "pool": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "conv2": nir.Conv2d(input_shape=(2, 2), weight=rng.normal(size=(3, 2, 2, 2)), stride=1, padding=0,
                            dilation=1, groups=1, bias=rng.normal(size=3) * 0.1),
        "if2": make_if(np.ones((3, 1, 1)), np.full((3, 1, 1), 0.5)),
        "flatten": nir.Flatten(input_type={"input": np.array([3, 1, 1])}, start_dim=0, end_dim=-1),
        "fc": nir.Affine(weight=rng.normal(size=(2, 3)), bias=np.zeros(2)),
        "output": nir.Output(output_type=np.array([2])),
    }
    names = list(nodes)
    g = nir.NIRGraph(nodes=nodes, edges=list(zip(names, names[1:])), metadata={NAMESPACE: {"version": "1.0"}})
    gi = to_fixed_point(g)
    assert isinstance(gi.nodes["pool"], nir.SumPool2d)
    scale = gi.nodes["scale"]
    assert np.abs(scale.scale).max() == 127 and np.ndim(scale.metadata[NAMESPACE][SCALE]) == 0
    x = torch.from_numpy(rng.uniform(0, 1, size=(64, 1, 4, 4)))
    ref = ReferenceSimulator(g, dtype=torch.float64).run(x, 32)
    got = ReferenceSimulator(gi, dtype=torch.float64).run(x, 32)
    # the same network up to rounding: the per-step readout picks the same class almost always
    agree = float((ref.outputs.argmax(-1) == got.outputs.argmax(-1)).double().mean())
    assert agree > 0.9, agree
