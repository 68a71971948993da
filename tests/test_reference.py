"""The reference simulator: exactness against closed forms, the FACTS table, the ANN it
came from, its own step loop and file round trips; plain NIR semantics; errors."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch
from torch import nn

from bridge.model.activations import ClippedReLU
from bridge.format.errors import BridgeError
from bridge.format.extension import graph_metadata, make_if
from bridge.format.neurons import if_constant_input_spike_count
from bridge.format.nirio import read_graph, write_graph
from bridge.reference import ReferenceSimulator, ann_view, simulate

F64 = torch.float64


# ---------------------------------------------------------------- graph builders
def chain(nodes: dict[str, nir.NIRNode], *, bridge: bool = True, extra_edges=(),
          type_check: bool = True) -> nir.NIRGraph:
    """input -> nodes in order -> output, plus extra edges."""
    names = list(nodes)
    edges = list(zip(names, names[1:])) + list(extra_edges)
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph_metadata() if bridge else {},
                        type_check=type_check)


def if_layer_graph(theta: np.ndarray, v_init: np.ndarray) -> nir.NIRGraph:
    """Input -> IF -> Output: the input is the IF's constant current."""
    n = theta.shape
    return chain({"input": nir.Input(input_type=np.array(n)), "if1": make_if(theta, v_init),
                  "output": nir.Output(output_type=np.array(n))})


def facts_graph(bridge: bool, v_init: float = 0.0) -> nir.NIRGraph:
    """The FACTS.md graph: Input -> Affine -> IF(theta 1) -> Output, currents 0.25/0.3/0.6/1."""
    w = np.array([[0.25], [0.3], [0.6], [1.0]])
    neuron = (make_if(np.ones(4), np.full(4, v_init)) if bridge
              else nir.IF(r=np.ones(4), v_threshold=np.ones(4), v_reset=np.zeros(4)))
    return chain({"input": nir.Input(input_type=np.array([1])),
                  "fc": nir.Affine(weight=w, bias=np.zeros(4)), "if1": neuron,
                  "output": nir.Output(output_type=np.array([4]))}, bridge=bridge)


def strings(spikes: torch.Tensor) -> list[str]:
    """[T, 1, N] spikes -> one 0/1 string per neuron."""
    return ["".join(str(int(v)) for v in spikes[:, 0, i]) for i in range(spikes.shape[2])]


def clipped_mlp(seed: int = 0, sizes=(6, 24, 16, 5)) -> nn.Sequential:
    """A small clipped-ReLU MLP with random weights and bounds near its activations."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ClippedReLU(bound=0.5 + 0.25 * i))
    return nn.Sequential(*layers).double().eval()


def convert_mlp(model: nn.Sequential, in_features: int) -> nir.NIRGraph:
    """Hand conversion (the method): W' = W * theta_prev, IF(theta = lambda, v_init = theta/2)."""
    nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type=np.array([in_features]))}
    theta_prev, width = 1.0, in_features
    for i, m in enumerate(model):
        if isinstance(m, nn.Linear):
            w = m.weight.detach().numpy() * theta_prev
            nodes[f"fc{i}"] = nir.Affine(weight=w, bias=m.bias.detach().numpy())
            width = w.shape[0]
        else:
            theta = float(m.bound.detach())
            nodes[f"if{i}"] = make_if(np.full(width, theta), theta / 2)
            theta_prev = theta
    nodes["output"] = nir.Output(output_type=np.array([width]))
    return chain(nodes)


def cnn_graph(seed: int = 0) -> nir.NIRGraph:
    """Conv -> IF -> AvgPool -> Conv('same') -> IF -> Scale, plus a residual AvgPool path
    into a second IF, Flatten, Affine: every stateless node type and a summing node."""
    rng = np.random.default_rng(seed)
    th1, th2 = rng.uniform(0.5, 1.5, (4, 6, 6)), rng.uniform(0.5, 1.5, (4, 3, 3))
    nodes = {
        "input": nir.Input(input_type=np.array([2, 6, 6])),
        "conv1": nir.Conv2d(input_shape=(6, 6), weight=rng.normal(0, 0.6, (4, 2, 3, 3)),
                            stride=1, padding=1, dilation=1, groups=1, bias=rng.normal(0, 0.1, 4)),
        "if1": make_if(th1, th1 / 2),
        "pool1": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                               padding=np.array([0, 0])),
        "conv2": nir.Conv2d(input_shape=(3, 3), weight=rng.normal(0, 0.6, (4, 4, 3, 3)),
                            stride=1, padding="same", dilation=1, groups=1, bias=np.zeros(4)),
        "if2": make_if(th2, th2 / 2),
        "scale": nir.Scale(scale=th2),
        "if3": make_if(np.full((4, 3, 3), 0.7), 0.35),
        "flat": nir.Flatten(input_type={"input": np.array([4, 3, 3])}, start_dim=0),
        "fc": nir.Affine(weight=rng.normal(0, 0.3, (5, 36)), bias=rng.normal(0, 0.1, 5)),
        "output": nir.Output(output_type=np.array([5])),
    }
    edges = [("input", "conv1"), ("conv1", "if1"), ("if1", "pool1"), ("pool1", "conv2"),
             ("conv2", "if2"), ("if2", "scale"), ("scale", "if3"), ("pool1", "if3"),
             ("if3", "flat"), ("flat", "fc"), ("fc", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph_metadata())


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("half", [True, False], ids=["v0=theta/2", "v0=0"])
@pytest.mark.parametrize("steps", [1, 7, 32])
def test_single_if_layer_count_equals_closed_form(half: bool, steps: int) -> None:
    rng = np.random.default_rng(steps)
    theta = rng.uniform(0.2, 2.0, 500)
    z = rng.uniform(-0.5, 1.2, 500) * theta  # below 0, inside and above the clip range
    v0 = theta / 2 if half else np.zeros_like(theta)
    res = simulate(if_layer_graph(theta, v0), torch.from_numpy(z)[None], steps)
    count = res.outputs.sum(0)[0]
    expect = if_constant_input_spike_count(torch.from_numpy(z), torch.from_numpy(theta),
                                           torch.from_numpy(v0), steps)
    assert torch.equal(count, expect)
    if not half:
        assert torch.equal(count, torch.clamp(torch.floor(steps * torch.from_numpy(z)
                                                          / torch.from_numpy(theta)), 0, steps))


def test_single_if_layer_exact_ties_on_a_dyadic_grid() -> None:
    """Dyadic currents make every sum exact, so the >= tie at m == theta is really hit."""
    theta = np.full(65, 0.5)
    z = np.arange(-8, 57) / 64  # -0.125 .. 0.875 in steps of 1/64: every rounding boundary
    steps = 16
    for v0 in (theta / 2, np.zeros_like(theta)):
        res = simulate(if_layer_graph(theta, v0), torch.from_numpy(z)[None], steps)
        expect = if_constant_input_spike_count(torch.from_numpy(z), torch.from_numpy(theta),
                                               torch.from_numpy(v0), steps)
        assert torch.equal(res.outputs.sum(0)[0], expect)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["layer", "step"])
def test_plain_nir_semantics_reproduce_facts_row(dtype: torch.dtype, mode: str) -> None:
    """FACTS.md 'hard reset, v > theta (NIR text)': no metadata -> hard reset, >, v(0) = 0,
    per-step input ([B, ...] repeated)."""
    res = simulate(facts_graph(bridge=False), torch.ones(1, 1), 8, dtype=dtype, mode=mode)
    assert strings(res.outputs) == ["00001000", "00010001", "01010101", "01010101"]


def test_bridge_semantics_reproduce_facts_row_with_v_init_zero() -> None:
    """The FACTS.md 'subtract reset, v >= theta' row was measured with v_init = 0 in float32:
    0.6 + 0.6 - 1 + 0.6 + 0.6 - 1 + 0.6 reaches exactly 1.0 there. In float64 the same sum is
    0.999...9 (0.6 is not a binary fraction), so the tie at step 5 breaks the other way."""
    row = ["00010001", "00010010", "01011010", "11111111"]
    for mode in ("layer", "step"):
        res32 = simulate(facts_graph(True, 0.0), torch.ones(1, 1), 8, dtype=torch.float32, mode=mode)
        assert strings(res32.outputs) == row
    res64 = strings(simulate(facts_graph(True, 0.0), torch.ones(1, 1), 8).outputs)
    assert res64[:2] == row[:2] and res64[3] == row[3] and res64[2] != row[2]
    v = m = 0.0  # the float64 loop of the rule, written out
    expect = ""
    for _ in range(8):
        m = v + 0.6
        expect += "1" if m >= 1.0 else "0"
        v = m - (1.0 if m >= 1.0 else 0.0)
    assert res64[2] == expect
    half = strings(simulate(facts_graph(True, 0.5), torch.ones(1, 1), 8, dtype=torch.float32).outputs)
    assert half != row  # v_init = theta/2 is not what that row used


def test_converted_mlp_approaches_ann_with_per_layer_bound() -> None:
    model = clipped_mlp()
    graph = convert_mlp(model, 6)
    x = torch.rand(64, 6, dtype=F64, generator=torch.Generator().manual_seed(1)) * 2 - 0.5
    with torch.no_grad():
        ann = model(x)
    assert torch.allclose(ann_view(graph, x), ann, rtol=0, atol=1e-12)

    sim = ReferenceSimulator(graph)
    errors = []
    for steps in (4, 32, 256):
        res = sim.run(x, steps, trace=True)
        errors.append(float((res.readout - ann).abs().mean()))
        for name, tr in res.traces.items():
            node = graph.nodes[name]
            theta = torch.from_numpy(node.v_threshold)
            v0 = torch.from_numpy(node.metadata["bridge"]["v_init"])
            # the current each step: m - v(t-1), with m = v(t) + theta s(t)
            v_prev = torch.cat([v0.expand_as(tr.v[:1]), tr.v[:-1]])
            current = tr.v + theta * tr.spikes - v_prev
            rate = theta * tr.spikes.mean(0)
            # charge conservation: theta N_T = v0 + sum I - v(T), exactly up to rounding
            assert torch.allclose(theta * tr.spikes.sum(0), v0 + current.sum(0) - tr.v[-1],
                                  atol=1e-9)
            err = (rate - torch.clamp(current.mean(0), min=0 * theta, max=theta)).abs()
            if name == "if1":  # constant input: rounding, |error| <= theta / (2T)
                assert bool((err <= theta / (2 * steps) + 1e-12).all())
            # per layer: the rate is within theta/T of the clipped mean of its actual input
            assert bool((err <= theta / steps + 1e-12).all()), (name, steps)
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05 * float(ann.abs().mean())


# ---------------------------------------------------------------- fast path == step loop
def test_layer_at_a_time_equals_step_loop_bit_for_bit() -> None:
    """float64 (exact batching): the fast path, its windows and the plain loop agree bit for
    bit, on any BLAS (weighted ops see the same [B] batches in both walkers)."""
    graph = cnn_graph()
    x = torch.rand(3, 2, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(2)) * 2
    sim = ReferenceSimulator(graph)
    assert sim.exact_batching
    layer = sim.run(x, 12, trace=True, mode="layer", time_chunk=12)
    step = sim.run(x, 12, trace=True, mode="step")
    chunked = sim.run(x, 12, trace=True, mode="layer", time_chunk=5)
    assert set(layer.traces) == {"if1", "if2", "if3"}
    assert layer.outputs.abs().sum() > 0 and layer.traces["if3"].spikes.sum() > 0
    default = sim.run(x, 12, trace=True)  # auto windows
    for other in (step, chunked, default):
        assert torch.equal(layer.outputs, other.outputs)
        for name in layer.traces:
            assert torch.equal(layer.traces[name].spikes, other.traces[name].spikes)
            assert torch.equal(layer.traces[name].v, other.traces[name].v)


def test_float32_fast_path_matches_float64_reference() -> None:
    """float32 takes one big batch per weighted op: same spikes up to float32 rounding."""
    graph = cnn_graph(seed=5)
    x = torch.rand(4, 2, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(6)) * 2
    r64 = simulate(graph, x, 16)
    r32 = simulate(graph, x, 16, dtype=torch.float32, time_chunk=16)
    assert r32.outputs.dtype == torch.float32
    assert torch.allclose(r32.readout.double(), r64.readout, atol=1e-4)


def test_progress_bar_does_not_change_results() -> None:
    graph, x = cnn_graph(), torch.rand(2, 2, 6, 6, dtype=F64)
    assert torch.equal(simulate(graph, x, 5, progress=True).outputs, simulate(graph, x, 5).outputs)
    assert torch.equal(simulate(graph, x, 5, progress=True, mode="step").outputs,
                       simulate(graph, x, 5).outputs)


def test_only_requested_traces_are_kept() -> None:
    sim = ReferenceSimulator(cnn_graph())
    x = torch.rand(2, 2, 6, 6, dtype=F64)
    assert sim.run(x, 4).traces == {}
    res = sim.run(x, 4, trace=["if2"])
    assert list(res.traces) == ["if2"] and res.traces["if2"].v.shape == (4, 2, 4, 3, 3)


def test_write_read_simulate_is_bit_identical(tmp_path) -> None:
    graph = cnn_graph(seed=3)
    path = write_graph(graph, tmp_path / "cnn.nir")
    x = torch.rand(4, 2, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    a = simulate(graph, x, 10, trace=True)
    b = simulate(read_graph(path), x, 10, trace=True)
    assert torch.equal(a.outputs, b.outputs)
    for name in a.traces:
        assert torch.equal(a.traces[name].spikes, b.traces[name].spikes)
        assert torch.equal(a.traces[name].v, b.traces[name].v)


def test_readout_is_the_mean_over_steps() -> None:
    res = simulate(if_layer_graph(np.ones(3), np.full(3, 0.5)), torch.tensor([[0.2, 0.5, 0.9]]), 10)
    assert res.readout_kind == "mean"
    assert torch.allclose(res.readout, res.outputs.mean(0))
    assert res.outputs.shape == (10, 1, 3)


# ---------------------------------------------------------------- node semantics
def test_stateless_nodes_match_torch_functional() -> None:
    rng = np.random.default_rng(4)
    x = torch.from_numpy(rng.normal(size=(2, 3, 7, 7)))
    w = rng.normal(size=(4, 3, 3, 3))
    for pad, tpad in ((1, 1), ((2, 0), (2, 0)), ("same", "same"), ("valid", 0)):
        g = chain({"input": nir.Input(input_type=np.array([3, 7, 7])),
                   "conv": nir.Conv2d(input_shape=(7, 7), weight=w, stride=1, padding=pad,
                                      dilation=1, groups=1, bias=np.arange(4.0)),
                   "flat": nir.Flatten(input_type={"input": None}, start_dim=1),
                   "output": nir.Output(output_type=None)}, extra_edges=())
        got = ann_view(g, x)
        ref = torch.nn.functional.conv2d(x, torch.from_numpy(w), torch.arange(4.0, dtype=F64),
                                         padding=tpad)
        assert torch.equal(got, ref.flatten(2)), pad  # NIR start_dim=1 skips the batch
    pool = {"input": nir.Input(input_type=np.array([3, 7, 7])),
            "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                                  padding=np.array([1, 1])),
            "output": nir.Output(output_type=None)}
    assert torch.allclose(ann_view(chain(pool), x),
                          torch.nn.functional.avg_pool2d(x, 2, 2, 1) * 4, atol=1e-12)
    w1 = rng.normal(size=(2, 3, 2))
    g1 = chain({"input": nir.Input(input_type=np.array([3, 9])),
                "conv": nir.Conv1d(input_shape=9, weight=w1, stride=2, padding=1, dilation=1,
                                   groups=1, bias=np.zeros(2)),
                "lin": nir.Linear(weight=np.eye(5)[:, :5] * 2),
                "output": nir.Output(output_type=np.array([2, 5]))}, type_check=False)
    x1 = torch.from_numpy(rng.normal(size=(3, 3, 9)))
    ref1 = torch.nn.functional.conv1d(x1, torch.from_numpy(w1), stride=2, padding=1) * 2
    assert torch.allclose(ann_view(g1, x1), ref1, atol=1e-12)


def test_if_gain_r_multiplies_the_current() -> None:
    """Plain NIR IF with r = 0.5: the current is r * I (half the rate of r = 1)."""
    def graph(r: float) -> nir.NIRGraph:
        return chain({"input": nir.Input(input_type=np.array([1])),
                      "if1": nir.IF(r=np.array([r]), v_threshold=np.array([1.0]),
                                    v_reset=np.array([0.0])),
                      "output": nir.Output(output_type=np.array([1]))}, bridge=False)
    half = simulate(graph(0.5), torch.tensor([[0.5]]), 16).outputs.sum()
    full = simulate(graph(1.0), torch.tensor([[0.25]]), 16).outputs.sum()
    assert half == full == 3  # v > 1 first at the 5th step, then every 5th after a hard reset


def test_per_step_input_for_plain_graphs() -> None:
    g = facts_graph(bridge=False)
    xs = torch.rand(6, 2, 1, generator=torch.Generator().manual_seed(5)) * 3
    res = simulate(g, xs, 6)
    v = torch.zeros(2, 4)  # the NIR text rule, written out
    w = torch.tensor([0.25, 0.3, 0.6, 1.0], dtype=F64)
    for t in range(6):
        m = v + xs[t].double() * w
        s = (m > 1).double()
        assert torch.equal(res.outputs[t], s)
        v = torch.where(m > 1, torch.zeros_like(m), m)
    repeated = simulate(g, xs[0].expand(6, 2, 1).clone(), 6)
    assert torch.equal(repeated.outputs, simulate(g, xs[0], 6).outputs)


def test_feedback_edge_is_delayed_one_step() -> None:
    """Subtract reset built from primitives: I -> Threshold -> Scale(-theta) -> back to I."""
    theta = 1.0
    nodes = {"input": nir.Input(input_type=np.array([3])), "integ": nir.I(r=np.ones(3)),
             "thr": nir.Threshold(threshold=np.full(3, theta)),
             "neg": nir.Scale(scale=np.full(3, -theta)), "output": nir.Output(output_type=np.array([3]))}
    g = nir.NIRGraph(nodes=nodes, edges=[("input", "integ"), ("integ", "thr"), ("thr", "neg"),
                                         ("neg", "integ"), ("thr", "output")])
    x = torch.tensor([[0.3, 0.7, 1.6]], dtype=F64)
    res = simulate(g, x, 9)
    v, prev_s = torch.zeros(3, dtype=F64), torch.zeros(3, dtype=F64)
    for t in range(9):
        v = v + x[0] - theta * prev_s  # the reset of step t-1 arrives at step t
        s = (v > theta).double()
        assert torch.equal(res.outputs[t, 0], s), t
        prev_s = s
    assert torch.equal(simulate(g, x, 9, mode="step").outputs, res.outputs)
    with pytest.raises(BridgeError, match="feedback"):
        simulate(g, x, 3, mode="layer")


def test_li_and_lif_forward_euler() -> None:
    tau, r, leak, dt = np.array([0.02, 0.05]), np.array([1.0, 2.0]), np.array([0.1, -0.2]), 1e-3
    x = torch.tensor([[1.5, 0.8]], dtype=F64)
    li = chain({"input": nir.Input(input_type=np.array([2])),
                "li": nir.LI(tau=tau, r=r, v_leak=leak), "output": nir.Output(output_type=np.array([2]))},
               bridge=False)
    out = simulate(li, x, 40, dt=dt).outputs[:, 0]
    a, v_inf = torch.from_numpy(dt / tau), torch.from_numpy(leak + r * x[0].numpy())
    t = torch.arange(1, 41, dtype=F64)[:, None]
    closed = v_inf + (torch.from_numpy(leak) - v_inf) * (1 - a) ** t  # Euler's geometric decay
    assert torch.allclose(out, closed, atol=1e-12)

    lif = chain({"input": nir.Input(input_type=np.array([2])),
                 "lif": nir.LIF(tau=tau, r=r, v_leak=leak, v_threshold=np.array([1.0, 1.2]),
                                v_reset=np.array([0.0, 0.1])),
                 "output": nir.Output(output_type=np.array([2]))}, bridge=False)
    res = simulate(lif, x, 200, dt=dt, trace=True)
    v = torch.from_numpy(leak).clone()
    for k in range(200):
        m = v + a * (torch.from_numpy(leak) - v + torch.from_numpy(r) * x[0])
        z = m > torch.tensor([1.0, 1.2], dtype=F64)
        v = torch.where(z, torch.tensor([0.0, 0.1], dtype=F64), m)
        assert torch.equal(res.outputs[k, 0], z.double())
        assert torch.equal(res.traces["lif"].v[k, 0], v)
    assert res.outputs.sum() > 2
    with pytest.raises(BridgeError, match="dt"):
        simulate(lif, x, 3)


def test_subgraph_runs_like_the_flat_graph() -> None:
    inner = facts_graph(bridge=False)
    outer = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([1])), "sub": inner,
                                "output": nir.Output(output_type=np.array([4]))},
                         edges=[("input", "sub"), ("sub", "output")])
    a = simulate(outer, torch.ones(1, 1), 8, trace=True)
    assert strings(a.outputs) == strings(simulate(inner, torch.ones(1, 1), 8).outputs)
    assert list(a.traces) == ["sub.if1"]


def test_ann_view_of_a_cnn_equals_the_rate_formula() -> None:
    graph = cnn_graph()
    x = torch.rand(2, 2, 6, 6, dtype=F64)
    long = simulate(graph, x, 2000).readout
    assert torch.allclose(long, ann_view(graph, x), atol=0.05)


# ---------------------------------------------------------------- errors
def test_errors_name_cause_and_fix() -> None:
    g = facts_graph(True)
    with pytest.raises(BridgeError, match=r"expects \[B, 1\]"):
        simulate(g, torch.ones(2, 3), 4)
    with pytest.raises(BridgeError, match=">= 1"):
        simulate(g, torch.ones(2, 1), 0)
    with pytest.raises(BridgeError, match="mode"):
        simulate(g, torch.ones(2, 1), 2, mode="fast")
    with pytest.raises(BridgeError, match="cannot trace"):
        simulate(g, torch.ones(2, 1), 2, trace=["fc"])
    with pytest.raises(BridgeError, match=r"expects \[B, 1\]"):  # bridge graphs: no [T, B, ...]
        simulate(g, torch.ones(2, 2, 1), 2)
    with pytest.raises(BridgeError, match="3 steps"):
        simulate(facts_graph(False), torch.ones(3, 2, 1), 4)
    delay = chain({"input": nir.Input(input_type=np.array([2])),
                   "late": nir.Delay(delay=np.ones(2)), "output": nir.Output(output_type=np.array([2]))})
    with pytest.raises(BridgeError, match="'late' has type Delay"):
        ReferenceSimulator(delay)
    lif = chain({"input": nir.Input(input_type=np.array([1])),
                 "lif": nir.LIF(tau=np.ones(1), r=np.ones(1), v_leak=np.zeros(1),
                                v_threshold=np.ones(1)), "output": nir.Output(output_type=np.array([1]))})
    with pytest.raises(BridgeError, match="rate function"):
        ann_view(lif, torch.ones(1, 1))
    two_out = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([1])),
                                  "o1": nir.Output(output_type=np.array([1])),
                                  "o2": nir.Output(output_type=np.array([1]))},
                           edges=[("input", "o1"), ("input", "o2")])
    with pytest.raises(BridgeError, match="exactly one"):
        ReferenceSimulator(two_out)


# ---------------------------------------------------------------- the converter's zoo
@pytest.mark.parametrize("name", ["mlp", "vgg_bn", "resnet_small"])
def test_zoo_snn_approaches_its_ann_and_fast_path_equals_step_loop(name: str) -> None:
    """Graphs from bridge.converter (tests/zoo.py): the ANN view is the ANN, the readout
    error falls as T grows, and the fast path equals the step loop bit for bit."""
    from bridge.converter import convert
    from tests import zoo

    model, shape = getattr(zoo, name)()
    graph = convert(model, shape, weights="float64")  # float64 weights: the 1e-9 comparison below
    x = zoo.sample_input(shape, 8)
    with torch.no_grad():
        ann = model.double()(x)
    assert torch.allclose(ann_view(graph, x), ann, rtol=0, atol=1e-9)
    sim = ReferenceSimulator(graph)
    errors = [float((sim.run(x, steps).readout - ann).abs().mean()) for steps in (4, 64)]
    assert errors[1] < errors[0]
    layer, step = sim.run(x, 6, trace=True), sim.run(x, 6, trace=True, mode="step")
    assert layer.traces and torch.equal(layer.outputs, step.outputs)
    assert all(torch.equal(layer.traces[n].v, step.traces[n].v) for n in layer.traces)
