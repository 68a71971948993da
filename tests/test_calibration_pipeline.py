"""The calibration passes (bias correction, joint fit, pipeline) on small real converted graphs.

Math on tiny graphs, exactness of what the passes write (the unrolled SNN they fit equals the
reference simulator of the written graph), and exactness of the exports after calibration
(SpikingJelly and Norse against the reference, float64, spike by spike).
"""

from __future__ import annotations

import random

import nir
import numpy as np
import pytest
import torch

from bridge.converter import convert
from bridge.data.mnist1d import INPUT_SHAPE, mnist1d_split
from bridge.format.extension import graph_semantics, if_semantics
from bridge.format.nirio import read_graph, write_graph
from bridge.model.train import SignalCNN, SignalResNet
from bridge.passes.bias_correction import BiasFit, channel_shift, correct_biases, layer_rates
from bridge.passes.calibration_edits import bias_node, if_names, output_bias_node, shift_bias
from bridge.passes.joint_fit import JointFitReport, UnrolledSNN, joint_fit
from bridge.passes.optimize import can_rescale, current_subgraph
from bridge.passes.pipeline import CalibrationReport, calibrate, default_stages, improves
from bridge.reference import ann_view, simulate


def _net(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = SignalCNN("relu", channels=4, depth=2) if kind == "cnn" else SignalResNet("clip", width=3)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding is exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return mnist1d_split().train_x[:96]


@pytest.fixture(scope="module", params=["cnn", "resnet"])
def graph(request, data) -> nir.NIRGraph:
    return convert(_net(request.param), INPUT_SHAPE, calibration=data, channel_wise=True)


def test_mnist1d_split_is_offline_cached_and_leaves_global_generators_alone():
    np.random.seed(5)
    random.seed(5)
    a = mnist1d_split()
    after_np, after_py = np.random.random(), random.random()
    np.random.seed(5)
    random.seed(5)
    assert (after_np, after_py) == (np.random.random(), random.random())
    assert a.train_x.shape == (4000, 1, 40) and a.test_x.shape == (1000, 1, 40)
    assert a.train_x.dtype == torch.float32 and a.train_y.dtype == torch.int64
    assert set(a.test_y.tolist()) == set(range(10))
    assert mnist1d_split().train_x is not None and torch.equal(mnist1d_split().train_x, a.train_x)


def test_shift_bias_adds_the_shift_to_the_current_of_the_layer(graph, data):
    name = if_names(graph)[0]
    target = bias_node(graph, name)
    assert target is not None
    channels = np.asarray(graph.nodes[name].v_threshold).shape[0]
    shift = np.linspace(-0.3, 0.3, channels)
    x = data[:8].double()
    before = ann_view(current_subgraph(graph, name), x)
    after = ann_view(current_subgraph(shift_bias(graph, target, shift), name), x)
    torch.testing.assert_close(after - before, torch.as_tensor(shift).reshape(1, -1, 1).expand_as(before))


def test_layer_rates_are_the_reference_if_rule(graph, data):
    name = if_names(graph)[1]
    x = data[:16].double()
    sem = if_semantics(graph.nodes[name], name)
    theta, v0 = torch.as_tensor(sem.threshold), torch.as_tensor(sem.v_init)
    current = simulate(current_subgraph(graph, name), x, 5).outputs
    ones = torch.ones(1, theta.shape[0], dtype=theta.dtype)
    # the layer's own spikes in the reference simulator, as rates in value units
    spikes = simulate(graph, x, 5, trace=[name]).traces[name].spikes
    torch.testing.assert_close(layer_rates(current, theta, v0, 0 * ones)[0], theta * spikes.mean(0))
    # a shift delta is the same as delta added to the bias that feeds the layer
    shifted = shift_bias(graph, bias_node(graph, name), np.full(theta.shape[0], 0.05))
    spikes2 = simulate(shifted, x, 5, trace=[name]).traces[name].spikes
    torch.testing.assert_close(layer_rates(current, theta, v0, 0.05 * ones)[0], theta * spikes2.mean(0))


def test_channel_shift_matches_the_mean_rate_per_channel():
    gen = torch.Generator().manual_seed(0)
    current = torch.rand(4, 64, 3, 5, generator=gen, dtype=torch.float64) * 0.8
    theta = torch.ones(3, 5, dtype=torch.float64)
    v0 = theta / 2
    target = torch.rand(64, 3, 5, generator=gen, dtype=torch.float64) * torch.tensor([0.2, 0.5, 0.8]).reshape(1, 3, 1)
    shift = channel_shift(current, target, theta, v0)
    got = layer_rates(current, theta, v0, shift[None])[0].mean(dim=(0, 2))
    want = target.mean(dim=(0, 2))
    # rates move in steps of theta / (T * samples * positions): the match is within one step
    assert torch.all((got - want).abs() <= 1.0 / (4 * 64 * 5) + 1e-9), (got, want)


def test_bias_correction_lowers_each_layers_mean_error_and_zeroes_the_output_bias_error(graph, data):
    fits: list[BiasFit] = []
    out = correct_biases(graph, data, 2, fits=fits)
    layers = [f for f in fits if f.layer != "(output)"]
    assert len(layers) == len(if_names(graph))
    assert all(f.error_after <= f.error_before + 1e-9 for f in layers)
    assert graph_semantics(out).timesteps == 2
    # after the output correction the mean readout over the calibration data is the ANN's mean
    # (the pass runs the reference in float32; the bisection ends at a jump of the mean rate,
    # where float64 may round a few spikes the other way)
    mean_snn = simulate(out, data, 2, dtype=torch.float32).readout.mean(0)
    torch.testing.assert_close(mean_snn.double(), ann_view(graph, data.double()).mean(0), rtol=0, atol=1e-5)
    # only biases changed: same node types and weights
    for name, node in graph.nodes.items():
        assert type(out.nodes[name]) is type(node)
        if hasattr(node, "weight"):
            np.testing.assert_array_equal(out.nodes[name].weight, node.weight)


def test_unrolled_snn_is_the_reference_before_and_after_write_back(graph, data):
    x = data[:32]
    model = UnrolledSNN(graph, weights=True)
    with torch.no_grad():
        torch.testing.assert_close(model.readouts(x, [3])[3].double(), simulate(graph, x, 3).readout,
                                   rtol=1e-4, atol=1e-4)
        gen = torch.Generator().manual_seed(1)
        for p in model.parameters():  # move every parameter: thresholds, v_init, biases, weights
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        unrolled = model.readouts(x, [1, 3])
        rate_limit = model.forward(x, None)
    written = model.write(graph)
    run = simulate(written, x, 3).running_readout
    for t in (1, 3):
        torch.testing.assert_close(unrolled[t].double(), run[t - 1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rate_limit.double(), ann_view(written, x.double()), rtol=1e-4, atol=1e-4)
    for name in if_names(written):
        sem = if_semantics(written.nodes[name], name)
        assert sem.reset == "subtract" and np.all(sem.threshold > 0)
        assert np.all(sem.v_init >= 0) and np.all(sem.v_init < sem.threshold)


def test_joint_fit_never_returns_worse_than_it_started_on_held_out_data(graph, data):
    rep = JointFitReport()
    out = joint_fit(graph, data, 2, iterations=20, eval_every=5, report=rep)
    assert rep.steps == 20 and len(rep.history) == 5
    assert rep.loss_best <= rep.loss_start
    assert graph_semantics(out).timesteps == 2
    assert [type(n) for n in out.nodes.values()] == [type(n) for n in graph.nodes.values()]


def test_a_layer_whose_consumers_cannot_absorb_a_threshold_keeps_it():
    from bridge.format.extension import graph_metadata, make_if

    # Input -> Affine -> IF -> Output: no weighted consumer to hold a new spike value
    w = np.array([[1.0, -0.5], [0.3, 0.8], [0.2, 0.2]])
    nodes = {"input": nir.Input(input_type={"input": np.array([2])}),
             "fc": nir.Affine(weight=w, bias=np.zeros(3)),
             "lif": make_if(np.ones(3), np.full(3, 0.5)),
             "output": nir.Output(output_type={"output": np.array([3])})}
    g = nir.NIRGraph(nodes=nodes, edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")],
                     metadata=graph_metadata())
    assert not can_rescale(g, "lif") and bias_node(g, "lif") == "fc" and output_bias_node(g) is None
    model = UnrolledSNN(g)
    assert not model.log_a["lif"].requires_grad and model.d["lif"].requires_grad
    assert not model.d_out.requires_grad
    out = joint_fit(g, torch.rand(64, 2), 1, iterations=5, eval_every=5)
    np.testing.assert_array_equal(if_semantics(out.nodes["lif"]).threshold, np.ones(3))


def test_pipeline_keeps_only_stages_that_lower_the_held_out_error(graph, data):
    rep = CalibrationReport(2)
    stages: dict[str, nir.NIRGraph] = {}
    out = calibrate(graph, data, 2, report=rep, graphs=stages, iterations=10)
    assert [s.name for s in rep.stages] == list(default_stages(2)) == list(stages)
    kept = [s for s in rep.stages if s.kept]
    assert kept[0].name == "half" and rep.chosen == kept[-1].name
    # each kept stage after the search (which is always kept) lowered the error
    errs = [s.heldout_error for s in kept if s.name not in ("half",)]
    assert errs == sorted(errs, reverse=True)
    assert rep.images == 96 and rep.heldout == 32 and rep.seconds > 0
    assert "calibration for T=2: chose" in rep.summary()
    assert graph_semantics(out).timesteps == 2


def test_any_t_default_needs_every_t_not_to_get_worse():
    assert improves([1.0, 1.0], None)
    assert improves([0.5, 1.01], [1.0, 1.0])
    assert not improves([0.1, 1.1], [1.0, 1.0])  # much better at one T, worse at another: refused
    assert default_stages(None) == ("half",)
    assert "joint" not in default_stages(64) and "weights" in default_stages(2)
    assert default_stages(4) == ("half", "optimized")  # joint fits by default only for T <= 2
    assert "bias" not in default_stages(4) and "bias" not in default_stages(16)  # opt-in only


def test_exports_stay_exact_after_calibration(data, tmp_path):
    """SpikingJelly, Norse, snnTorch and sinabs equal the reference (float64, every spike) on a calibrated graph."""
    from validation import validate

    g = convert(_net("resnet"), INPUT_SHAPE, calibration=data)
    g = joint_fit(correct_biases(g, data, 3), data, 3, reference=g, iterations=8, eval_every=4, weights=True)
    # the joint fit may keep its start; move a v_init and a bias so the check covers edits for sure
    model = UnrolledSNN(g, weights=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.03)
    g = model.write(g)
    back = read_graph(write_graph(g, tmp_path / "cal.nir"))
    report = validate(back, ["spikingjelly", "norse", "snntorch", "sinabs"], data[:24], steps=6, timesteps=[6])
    assert report.ok, [(b.name, b.status, b.message) for b in report.backends]
    for b in report.backends:
        assert b.comparison is not None and b.comparison.unexplained == 0


def test_weight_calibration_keeps_a_grouped_conv_in_its_dense_encoding(tmp_path):
    """The weight-calibration stage trains a depthwise conv (here an unfolded BatchNorm, written
    as a diagonal 1x1 conv with the bridge ``groups`` key) as the grouped weight the reference
    runs; the written graph must hold it back in the file's dense block-diagonal encoding."""
    from bridge.format.extension import conv_weight
    from tests import zoo

    model, shape = zoo.vgg_bn()
    graph = convert(model, shape)
    grouped = [k for k, n in graph.nodes.items() if isinstance(n, nir.Conv2d) and conv_weight(n, k)[1] > 1]
    assert grouped  # the test needs one
    x = zoo.sample_input(shape, 64).float()
    fitted = joint_fit(graph, x, 4, iterations=3, weights=True)
    for name in grouped:
        before, after = graph.nodes[name], fitted.nodes[name]
        assert np.shape(after.weight) == np.shape(before.weight)
        assert conv_weight(after, name)[1] == conv_weight(before, name)[1]  # off-diagonal blocks still zero
    write_graph(fitted, tmp_path / "w.nir")
    torch.testing.assert_close(simulate(read_graph(tmp_path / "w.nir"), x[:8].double(), 4).readout,
                               simulate(fitted, x[:8].double(), 4).readout)
