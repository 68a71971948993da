"""Exporters: the SpikingJelly, Norse, snnTorch and sinabs models reproduce the reference exactly.

Every spike of every IF node at every step (float64, T = 64, batch 3), compared through
per-node traces aligned by NIR node name, on hand-built bridge graphs that cover what the
converter writes: an MLP (thresholds folded into weights), a VGG-style CNN with a kept
BatchNorm (depth-wise 1x1 conv), a strided grouped conv and average pooling, and a
ResNet-style block with an identity shortcut through a Scale node (two edges into one IF
node). Thresholds are layer-uniform, per-channel or per-neuron; initial potentials are 0,
theta/2 or random per neuron (these select the different SpikingJelly neuron classes).
Each framework's own idiom is checked too (SpikingJelly's step modes and reset_net, Norse's
(x, state) cells, snnTorch's init_hidden and explicit mem, sinabs's squeezed [B*T, ...]
layout and reset_states).
"""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch
from spikingjelly.activation_based import functional, neuron
from norse.torch.functional.iaf import IAFFeedForwardState

from bridge.format.errors import BridgeError
from bridge.format.extension import graph_metadata, make_if
from bridge.reference import simulate
from exporters import norse as norse_exporter
from exporters import sinabs as sinabs_exporter
from exporters import snntorch as snntorch_exporter
from exporters import spikingjelly as sj_exporter
from exporters.runtime_spikingjelly import InitialPotentialIFNode, PerNeuronThresholdIFNode
from validation.backends.norse import NorseBackend
from validation.backends.sinabs import SinabsBackend
from validation.backends.snntorch import SnnTorchBackend
from validation.backends.spikingjelly import SpikingJellyBackend, SpikingJellySingleStepBackend

STEPS = 64
BATCH = 3
KINDS = ("mlp", "vgg", "resnet")
THETAS = ("uniform", "channel", "neuron")
V_INITS = ("zero", "half", "random")
# every exported model, in its default mode (SpikingJelly: multi-step)
EXPORTED = (SpikingJellyBackend, NorseBackend, SnnTorchBackend, SinabsBackend)


@pytest.fixture(autouse=True)
def _one_thread():
    """Per-step runs call many tiny kernels; with the machine's cores busy, torch's thread
    pool turns each into milliseconds of waiting (measured: 2.4 s vs 0.03 s per run)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- hand-built bridge graphs ------------------------------------------------------------
def _theta(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    if kind == "uniform":
        return np.full(shape, rng.uniform(0.6, 1.6))
    if kind == "channel":  # one value per channel (the first dim), as the converter writes
        per = rng.uniform(0.5, 2.0, size=shape[0])
        return np.broadcast_to(per.reshape(-1, *([1] * (len(shape) - 1))), shape).copy()
    return rng.uniform(0.5, 2.0, size=shape)


def _v_init(rng: np.random.Generator, theta: np.ndarray, kind: str) -> np.ndarray:
    if kind == "zero":
        return np.zeros_like(theta)
    if kind == "half":
        return theta / 2
    return rng.uniform(0.0, 1.0, size=theta.shape) * theta


def _if(rng, shape, theta_kind, v_kind) -> tuple[nir.IF, np.ndarray]:
    theta = _theta(rng, shape, theta_kind)
    return make_if(theta, _v_init(rng, theta, v_kind)), theta


def _block_diagonal(w: np.ndarray, groups: int) -> np.ndarray:
    """A grouped conv weight as the dense groups=1 weight (how the converter writes it:
    NIR 1.0.8's type inference mis-reads groups)."""
    cout, cin_g = w.shape[:2]
    dense = np.zeros((cout, cin_g * groups, *w.shape[2:]))
    co = cout // groups
    for g in range(groups):
        dense[g * co:(g + 1) * co, g * cin_g:(g + 1) * cin_g] = w[g * co:(g + 1) * co]
    return dense


def _conv(rng, cin, cout, size, k=3, stride=1, padding=1, groups=1, scale=0.5) -> nir.Conv2d:
    w = _block_diagonal(rng.normal(size=(cout, cin // groups, k, k)) * scale, groups)
    return nir.Conv2d(input_shape=size, weight=w, stride=stride, padding=padding,
                      dilation=1, groups=1, bias=rng.normal(size=cout) * 0.1)


def mlp_graph(theta_kind: str, v_kind: str, seed: int = 0) -> nir.NIRGraph:
    """Input(16) -> Affine -> IF -> Affine (weights x theta) -> IF -> Affine -> Output."""
    rng = np.random.default_rng(seed)
    if1, th1 = _if(rng, (24,), theta_kind, v_kind)
    if2, th2 = _if(rng, (12,), theta_kind, v_kind)
    nodes = {
        "input": nir.Input(np.array([16])),
        "fc1": nir.Affine(rng.normal(size=(24, 16)) * 0.5, rng.normal(size=24) * 0.1),
        "act1": if1,
        "fc2": nir.Affine(rng.normal(size=(12, 24)) * 0.4 * th1[None, :], rng.normal(size=12) * 0.1),
        "act2": if2,
        "fc3": nir.Affine(rng.normal(size=(5, 12)) * th2[None, :], rng.normal(size=5) * 0.1),
        "output": nir.Output(np.array([5])),
    }
    names = list(nodes)
    return nir.NIRGraph(nodes, list(zip(names, names[1:])), metadata=graph_metadata())


def vgg_graph(theta_kind: str, v_kind: str, seed: int = 0) -> nir.NIRGraph:
    """Conv -> BatchNorm kept as a depth-wise 1x1 conv -> IF -> Scale -> AvgPool ->
    strided grouped conv -> IF -> Scale -> Flatten -> Affine -> Output."""
    rng = np.random.default_rng(seed)
    if1, th1 = _if(rng, (4, 8, 8), theta_kind, v_kind)
    if2, th2 = _if(rng, (6, 2, 2), theta_kind, v_kind)
    bn_scale = _block_diagonal(rng.uniform(0.5, 1.5, size=(4, 1, 1, 1)), 4)  # depth-wise 1x1
    bn = nir.Conv2d(input_shape=(8, 8), weight=bn_scale, stride=1, padding=0, dilation=1,
                    groups=1, bias=rng.normal(size=4) * 0.1)
    nodes = {
        "input": nir.Input(np.array([2, 8, 8])),
        "features_0": _conv(rng, 2, 4, (8, 8)),
        "features_1": bn,
        "features_2": if1,
        "features_2_scale": nir.Scale(th1),
        "features_3": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "features_4": _conv(rng, 4, 6, (4, 4), stride=2, groups=2, scale=0.6),
        "features_5": if2,
        "features_5_scale": nir.Scale(th2),
        "flatten": nir.Flatten(input_type={"input": np.array([6, 2, 2])}, start_dim=0, end_dim=-1),
        "classifier": nir.Affine(rng.normal(size=(5, 24)) * 0.5, rng.normal(size=5) * 0.1),
        "output": nir.Output(np.array([5])),
    }
    names = list(nodes)
    return nir.NIRGraph(nodes, list(zip(names, names[1:])), metadata=graph_metadata())


def resnet_graph(theta_kind: str, v_kind: str, seed: int = 0) -> nir.NIRGraph:
    """A residual block: IF(a) -> Scale -> conv -> IF -> Scale -> conv -> IF(b), and the
    identity shortcut Scale(theta_a) -> IF(b): two edges into IF(b) sum."""
    rng = np.random.default_rng(seed)
    if0, th0 = _if(rng, (4, 6, 6), theta_kind, v_kind)
    if1, th1 = _if(rng, (4, 6, 6), theta_kind, v_kind)
    if2, th2 = _if(rng, (4, 6, 6), theta_kind, v_kind)
    nodes = {
        "input": nir.Input(np.array([2, 6, 6])),
        "conv0": _conv(rng, 2, 4, (6, 6)),
        "relu0": if0,
        "relu0_scale": nir.Scale(th0),
        "layer1_conv1": _conv(rng, 4, 4, (6, 6), scale=0.3),
        "layer1_relu1": if1,
        "layer1_relu1_scale": nir.Scale(th1),
        "layer1_conv2": _conv(rng, 4, 4, (6, 6), scale=0.3),
        "layer1_relu2": if2,
        "layer1_relu2_scale": nir.Scale(th2),
        "pool": nir.AvgPool2d(kernel_size=np.array([3, 3]), stride=np.array([3, 3]), padding=np.array([0, 0])),
        "flatten": nir.Flatten(input_type={"input": np.array([4, 2, 2])}, start_dim=0, end_dim=-1),
        "fc": nir.Affine(rng.normal(size=(5, 16)) * 0.5, rng.normal(size=5) * 0.1),
        "output": nir.Output(np.array([5])),
    }
    names = list(nodes)
    edges = list(zip(names, names[1:])) + [("relu0_scale", "layer1_relu2")]
    return nir.NIRGraph(nodes, edges, metadata=graph_metadata())


BUILDERS = {"mlp": mlp_graph, "vgg": vgg_graph, "resnet": resnet_graph}


def make_graph(kind: str, theta_kind: str, v_kind: str, seed: int = 0) -> nir.NIRGraph:
    return BUILDERS[kind](theta_kind, v_kind, seed)


def input_shape(graph: nir.NIRGraph) -> tuple[int, ...]:
    (node,) = [n for n in graph.nodes.values() if isinstance(n, nir.Input)]
    return tuple(int(d) for d in node.input_type["input"])


def make_input(graph: nir.NIRGraph, batch: int = BATCH, seed: int = 1,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    shape = input_shape(graph)
    return torch.rand((batch, *shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def assert_same_run(got, ref) -> None:
    """Every spike and potential of every IF node at every step, and every output, equal."""
    assert set(got.traces) == set(ref.traces) and ref.traces
    for name, rt in ref.traces.items():
        gt = got.traces[name]
        assert gt.spikes.shape == rt.spikes.shape, name
        mismatch = (gt.spikes != rt.spikes).sum().item()
        assert mismatch == 0, f"{name}: {mismatch} spikes differ"
        assert torch.equal(gt.v, rt.v), f"{name}: potentials differ"
    assert torch.equal(got.outputs, ref.outputs)


# -- the proof: float64, every spike, T = 64 ---------------------------------------------
@pytest.mark.parametrize("v_kind", V_INITS)
@pytest.mark.parametrize("theta_kind", THETAS)
@pytest.mark.parametrize("kind", KINDS)
def test_float64_spikes_equal_reference(kind: str, theta_kind: str, v_kind: str) -> None:
    graph = make_graph(kind, theta_kind, v_kind)
    x = make_input(graph)
    ref = simulate(graph, x, STEPS, trace=True)
    # the case is not trivial: every IF node fires, and not at every step
    for name, tr in ref.traces.items():
        rate = tr.spikes.mean().item()
        assert 0.02 < rate < 0.98, f"{kind}/{name}: spike rate {rate} (test graph too dull)"
    backends = list(EXPORTED)
    if theta_kind == "neuron":  # single-step mode: one case per graph is enough
        backends.append(SpikingJellySingleStepBackend)
    for backend in backends:
        got = backend(graph).run(x, STEPS, trace=True)
        assert_same_run(got, ref)
        assert torch.equal(got.predictions(), ref.predictions())


@pytest.mark.parametrize("kind", KINDS)
def test_float32_predictions_equal_reference(kind: str) -> None:
    graph = make_graph(kind, "channel", "half", seed=3)
    x = make_input(graph, batch=16, seed=4, dtype=torch.float32)
    ref = simulate(graph, x, 32, dtype=torch.float32, trace=False)
    for backend in (*EXPORTED, SpikingJellySingleStepBackend):
        got = backend(graph, dtype=torch.float32).run(x, 32)
        assert got.outputs.dtype == torch.float32
        assert torch.equal(got.predictions(), ref.predictions()), backend.name


# -- SpikingJelly idiom ------------------------------------------------------------------
def test_spikingjelly_neuron_classes_follow_the_graph() -> None:
    """Uniform theta/2 -> SJ's HalfThresholdIFNode; uniform theta -> IFNode kernels with a
    per-neuron v(0); per-neuron theta -> the tensor-threshold IFNode; names = NIR names."""
    half = sj_exporter.build(mlp_graph("uniform", "half"))
    assert type(half.neuron("act1")) is neuron.HalfThresholdIFNode
    rand = sj_exporter.build(mlp_graph("uniform", "random"))
    assert type(rand.neuron("act1")) is InitialPotentialIFNode
    assert isinstance(rand.neuron("act1"), neuron.IFNode)
    assert rand.neuron("act1").v_reset is None  # subtract reset
    per = sj_exporter.build(vgg_graph("channel", "random"))
    assert type(per.neuron("features_2")) is PerNeuronThresholdIFNode
    names = dict(per.named_modules())
    assert {"layers.features_0", "layers.features_2", "layers.classifier"} <= set(names)


def test_spikingjelly_user_loop_reset_net_and_any_batch() -> None:
    """The SJ way (x_seq [T,B,...], net(x_seq), functional.reset_net) gives the reference,
    run after run, for batch sizes different from the previous run's."""
    graph = resnet_graph("neuron", "random")
    net = sj_exporter.build(graph, step_mode="m")
    for batch in (3, 5, 1):
        x = make_input(graph, batch=batch, seed=batch)
        ref = simulate(graph, x, 16, trace=False)
        with torch.no_grad():
            out = net(x.unsqueeze(0).repeat(16, *([1] * x.dim())))
        functional.reset_net(net)
        assert torch.equal(out, ref.outputs)
    functional.set_step_mode(net, "s")
    x = make_input(graph, batch=2, seed=9)
    with torch.no_grad():
        out = torch.stack([net(x) for _ in range(16)])
    functional.reset_net(net)
    assert torch.equal(out, simulate(graph, x, 16).outputs)


def test_predict_is_the_mean_readout_and_takes_float32_input() -> None:
    """The artifact README's ``net.predict(x, steps)`` with an ordinary float32 ``x`` on the
    float64 network: the input is cast (exactly) to the network's dtype."""
    graph = vgg_graph("neuron", "half")
    x = make_input(graph, dtype=torch.float32)
    ref = simulate(graph, x.double(), 24)
    for net in (sj_exporter.build(graph), norse_exporter.build(graph), snntorch_exporter.build(graph),
                sinabs_exporter.build(graph)):
        assert torch.equal(net.simulate(x, 24), ref.outputs)
        y = net.predict(x, 24)  # mean over T (rounding of the sum's order aside)
        assert y.dtype == torch.float64
        torch.testing.assert_close(y, ref.readout, rtol=0, atol=1e-13)
        assert torch.equal(y.argmax(1), ref.predictions())


# -- Norse idiom -------------------------------------------------------------------------
def test_norse_forward_state_idiom() -> None:
    """forward(x, state) -> (out, state) one step at a time, with Norse state tuples."""
    graph = mlp_graph("neuron", "random")
    net = norse_exporter.build(graph)
    x = make_input(graph, batch=4)
    ref = simulate(graph, x, 20, trace=True)
    state = None
    for t in range(20):
        out, state = net(x, state)
        assert torch.equal(out, ref.outputs[t])
        assert all(isinstance(s, IAFFeedForwardState) for s in state.neurons)
        for name, s in zip(net.neuron_names, state.neurons):
            assert torch.equal(s.v, ref.traces[name].v[t])


def test_norse_ge_and_subtract_reset_at_exact_ties() -> None:
    """m == theta exactly fires (Norse alone fires only on m > theta) and leaves v = 0."""
    theta = np.array([0.5, 0.3, 1.0, 0.7])
    nodes = {"input": nir.Input(np.array([4])), "lif": make_if(theta, np.zeros(4)),
             "output": nir.Output(np.array([4]))}
    graph = nir.NIRGraph(nodes, [("input", "lif"), ("lif", "output")], metadata=graph_metadata())
    x = torch.tensor([[0.25, 0.1, 0.5, 0.7]], dtype=torch.float64)  # 0.25 + 0.25 == 0.5 exactly
    ref = simulate(graph, x, 8, trace=True)
    for backend in EXPORTED:
        got = backend(graph).run(x, 8, trace=True)
        assert_same_run(got, ref)
    assert ref.traces["lif"].spikes[:, 0, 0].tolist() == [0, 1] * 4  # the tie fires
    assert ref.traces["lif"].spikes[:, 0, 3].tolist() == [1] * 8


# -- snnTorch idiom -----------------------------------------------------------------------
def test_snntorch_init_hidden_and_explicit_mem_idioms() -> None:
    """snnTorch's loop: ``out = net(x)`` per step with the state in the Leaky neurons
    (init_hidden), or ``out, mems = net(x, mems)``; ``mem`` is the reference's potential."""
    import snntorch

    graph = resnet_graph("neuron", "random")
    hidden = snntorch_exporter.build(graph)
    explicit = snntorch_exporter.build(graph, init_hidden=False)
    assert all(isinstance(hidden.neuron(n), snntorch.Leaky) for n in hidden.neuron_names)
    for batch, reset in ((3, False), (5, False), (5, True)):  # a new batch shape starts at v(0), as does reset()
        x = make_input(graph, batch=batch, seed=batch)
        ref = simulate(graph, x, 12, trace=True)
        if reset:
            hidden.reset()
        mems = None
        with torch.no_grad():
            for t in range(12):
                out = hidden(x)
                out_explicit, mems = explicit(x, mems)
                assert torch.equal(out, ref.outputs[t]) and torch.equal(out_explicit, ref.outputs[t])
                for name in hidden.neuron_names:
                    assert torch.equal(hidden.neuron(name).mem, ref.traces[name].v[t])
                    assert torch.equal(mems[name], ref.traces[name].v[t])
    with pytest.raises(TypeError, match="init_hidden"):
        hidden(x, mems)


# -- sinabs idiom ------------------------------------------------------------------------
def test_sinabs_squeezed_layout_and_reset_states() -> None:
    """sinabs's way: ``[B*T, ...]`` batch-major through IAFSqueeze neurons, state kept
    between calls until ``sinabs.reset_states``; batch_size or num_timesteps sets the layout."""
    import sinabs

    graph = resnet_graph("neuron", "random")
    net = sinabs_exporter.build(graph, num_timesteps=12)
    assert all(isinstance(net.neuron(n), sinabs.layers.IAFSqueeze) for n in net.neuron_names)

    def squeezed(x: torch.Tensor, steps: int) -> torch.Tensor:
        return x.unsqueeze(1).expand(x.shape[0], steps, *x.shape[1:]).reshape(-1, *x.shape[1:])

    def per_step(out: torch.Tensor, batch: int) -> torch.Tensor:
        return out.reshape(batch, -1, *out.shape[1:]).transpose(0, 1)

    with torch.no_grad():
        for batch in (3, 5):  # another batch size starts afresh at v(0)
            x = make_input(graph, batch=batch, seed=batch)
            ref = simulate(graph, x, 12)
            sinabs.reset_states(net)
            assert torch.equal(per_step(net(squeezed(x, 12)), batch), ref.outputs)
        sinabs.reset_states(net)  # two calls of 6 steps continue where the first stopped
        net.num_timesteps, net.batch_size = None, 5
        halves = [per_step(net(squeezed(x, 6)), 5) for _ in range(2)]
        assert torch.equal(torch.cat(halves), ref.outputs)
    net.batch_size = None
    with pytest.raises(ValueError, match="batch_size or net.num_timesteps"):
        net(squeezed(x, 6))


# -- unsupported content -------------------------------------------------------------------
def _chain(*nodes_: tuple[str, nir.NIRNode], meta: dict | None = None) -> nir.NIRGraph:
    nodes = dict(nodes_)
    names = list(nodes)
    return nir.NIRGraph(nodes, list(zip(names, names[1:])),
                        metadata=graph_metadata() if meta is None else meta)


@pytest.mark.parametrize("build", [sj_exporter.build, norse_exporter.build, snntorch_exporter.build,
                                   sinabs_exporter.build])
def test_unsupported_content_is_refused_with_node_and_reason(build) -> None:
    inp, out = ("input", nir.Input(np.array([3]))), ("output", nir.Output(np.array([3])))
    lif = nir.LIF(tau=np.ones(3), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3))
    with pytest.raises(BridgeError, match=r"'cell'.*LIF"):
        build(_chain(inp, ("cell", lif), out))
    plain = nir.IF(r=np.ones(3), v_threshold=np.ones(3), v_reset=np.zeros(3))
    with pytest.raises(BridgeError, match=r"'plain_if'.*'zero'.*'gt'"):
        build(_chain(inp, ("plain_if", plain), out, meta={}))
    gain = make_if(np.ones(3), np.zeros(3))
    gain.r = np.full(3, 2.0)
    with pytest.raises(BridgeError, match=r"'gained'.*r != 1"):
        build(_chain(inp, ("gained", gain), out))
    loop_nodes = {"input": inp[1], "a": nir.Affine(np.eye(3), np.zeros(3)),
                  "n": make_if(np.ones(3), np.zeros(3)), "output": out[1]}
    loop = nir.NIRGraph(loop_nodes, [("input", "a"), ("a", "n"), ("n", "a"), ("n", "output")],
                        metadata=graph_metadata())
    with pytest.raises(BridgeError, match=r"cycle"):
        build(loop)
    with pytest.raises(BridgeError, match=r"version 9\.0"):
        build(_chain(inp, ("n", make_if(np.ones(3), np.zeros(3))), out,
                     meta={"bridge": {"version": "9.0"}}))


def test_spikingjelly_step_mode_is_checked() -> None:
    with pytest.raises(BridgeError, match="step_mode"):
        sj_exporter.build(mlp_graph("uniform", "zero"), step_mode="x")


# -- the converter's zoo (real converted graphs, through a NIR file on disk) ------------------
@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, nir.NIRGraph]:
    from bridge.format.nirio import read_graph, write_graph
    from tests.zoo import zoo_graphs

    folder = tmp_path_factory.mktemp("zoo")
    graphs = {}
    for name, graph in zoo_graphs("half").items():
        graphs[name] = read_graph(write_graph(graph, folder / f"{name}.nir"))
    return graphs


def _with_v_init(graph: nir.NIRGraph, kind: str, seed: int = 0) -> nir.NIRGraph:
    """The same graph with every IF node's initial potential 0, theta/2 or random."""
    import copy

    from bridge.format.extension import NAMESPACE, V_INIT

    rng = np.random.default_rng(seed)
    graph = copy.deepcopy(graph)
    for node in graph.nodes.values():
        if isinstance(node, nir.IF):
            node.metadata[NAMESPACE][V_INIT] = _v_init(rng, np.asarray(node.v_threshold), kind)
    return graph


@pytest.mark.parametrize("v_kind", V_INITS)
def test_zoo_float64_spikes_equal_reference(zoo: dict[str, nir.NIRGraph], v_kind: str) -> None:
    from tests.zoo import sample_input

    assert {"mlp", "vgg_bn", "resnet_small", "vgg_bn_channel_wise", "resnet_small_channel_wise"} <= set(zoo)
    for name, graph in zoo.items():
        graph = _with_v_init(graph, v_kind)
        x = sample_input(input_shape(graph), 3, seed=7)
        ref = simulate(graph, x, STEPS, trace=True)
        assert all(tr.spikes.any() for tr in ref.traces.values()), name
        for backend in EXPORTED:
            assert_same_run(backend(graph).run(x, STEPS, trace=True), ref)


def test_zoo_float32_predictions_equal_reference(zoo: dict[str, nir.NIRGraph]) -> None:
    from tests.zoo import sample_input

    for name, graph in zoo.items():
        x = sample_input(input_shape(graph), 16, seed=8).float()
        ref = simulate(graph, x, 16, dtype=torch.float32)
        for backend in EXPORTED:
            got = backend(graph, dtype=torch.float32).run(x, 16)
            assert torch.equal(got.predictions(), ref.predictions()), (name, backend.name)


def test_per_step_input_encoding() -> None:
    """A graph whose input is given per step ([T, B, ...]) runs that way in every export."""
    graph = mlp_graph("neuron", "random")
    graph.metadata["bridge"]["input_encoding"] = "per_step"
    x = torch.rand((STEPS, BATCH, 16), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = simulate(graph, x, STEPS, trace=True)
    for backend in (*EXPORTED, SpikingJellySingleStepBackend):
        assert_same_run(backend(graph).run(x, STEPS, trace=True), ref)
