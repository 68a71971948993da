"""Speck: legalisation, the chip-limit check, the sinabs model and the export folder.

sinabs's own DynapCNN code (layer construction, core mapping, discretisation) gives an
independent opinion, run against stand-ins for the vendor SDK (validation.sinabs_standin).
"""

from __future__ import annotations

import json

import nir
import numpy as np
import pytest
import torch

from bridge.converter import convert
from bridge.format.errors import BridgeError
from bridge.format.extension import BOUNDS_VERSION, graph_semantics, if_semantics, make_if
from bridge.format.speck import event_counts, kernel_memory, neuron_memory
from bridge.passes.speck import legalise_for_speck
from bridge.reference import ReferenceSimulator
from exporters.speck import (
    build_sinabs,
    check_fits,
    check_resources,
    load_sinabs,
    run_sinabs,
    speck_layers,
    write_speck,
)
from recipes.speck_models import speck_mnist_ann
from validation.sinabs_standin import import_dynapcnn


@pytest.fixture(scope="module")
def speck_graph():
    torch.manual_seed(0)
    model = speck_mnist_ann()
    x = torch.rand(48, 1, 28, 28)
    return legalise_for_speck(convert(model, (1, 28, 28), calibration=x), x, input_levels=4), x


def test_memory_formulas():
    assert kernel_memory(20, 32, 5, 5) == 20 * 2 ** (5 + 5)
    assert kernel_memory(1, 1, 1, 1) == 1
    assert neuron_memory(20, 24, 24) == 20 * 2 ** (5 + 5)


def test_legalised_graph_is_integer_speck_form(speck_graph):
    g, _ = speck_graph
    assert graph_semantics(g).version == BOUNDS_VERSION and graph_semantics(g).readout == "sum"
    assert not any(isinstance(n, (nir.AvgPool2d, nir.Affine, nir.Linear)) for n in g.nodes.values())
    layers = speck_layers(g)
    assert [(l.c_in, l.c_out, l.kernel) for l in layers] == [
        (1, 20, (5, 5)), (20, 32, (5, 5)), (32, 128, (3, 3)), (128, 500, (1, 1)), (500, 10, (1, 1))]
    for l in layers:
        w = np.asarray(g.nodes[l.conv].weight, dtype=np.float64)
        assert np.array_equal(w, np.round(w)) and np.abs(w).max() == 127 and not l.bias
        sem = if_semantics(g.nodes[l.neuron], l.neuron)
        assert l.thresholds == 1 and sem.threshold.flat[0] >= 1 and sem.v_min.min() == -32768
        assert np.array_equal(sem.v_init, np.round(sem.v_init))
    assert layers[-1].neuron == "readout_spikes"  # a spiking readout


def test_fits_and_sinabs_mapping_agrees(speck_graph):
    g, _ = speck_graph
    layers, cores = check_fits(g)
    assert sorted(cores) == sorted(set(cores)) and len(cores) == 5
    d = import_dynapcnn()
    from sinabs.backend.dynapcnn.chip_factory import ChipFactory

    snn = build_sinabs(g)
    net = d.DynapcnnNetwork(snn, input_shape=(1, 28, 28), discretize=True)
    mapping = ChipFactory("speck2fmodule").get_config_builder().map_layers_to_cores(net.dynapcnn_layers)
    assert sorted(mapping) == list(range(5))  # sinabs found a core for every layer
    convs = [m for m in snn if isinstance(m, torch.nn.Conv2d)]
    for i, layer in net.dynapcnn_layers.items():
        summary = layer.memory_summary()  # sinabs's own memory count = ours
        assert (summary["kernel"], summary["neuron"], summary["bias"]) == (
            layers[i].kernel_memory, layers[i].neuron_memory, 0)
        # sinabs's discretisation leaves the integers as they are
        assert torch.equal(layer.conv_layer.weight.data, convs[i].weight.data)
        theta = if_semantics(g.nodes[layers[i].neuron], layers[i].neuron).threshold.flat[0]
        assert float(layer.spk_layer.spike_threshold) == theta


def test_sinabs_single_spike_model_equals_the_graph_and_multi_spike_is_close(speck_graph):
    g, x = speck_graph
    counts = event_counts(x[:16], 4)
    steps = 12
    ref = ReferenceSimulator(g, dtype=torch.float32).run(counts, steps)
    want = ref.outputs.sum(0)
    assert torch.equal(want, want.round())
    got = run_sinabs(build_sinabs(g, multi_spike=False), counts, steps)
    assert torch.equal(got, want.float())  # the sinabs model is the graph, exactly
    multi = run_sinabs(build_sinabs(g, multi_spike=True), counts, steps)
    assert (multi >= 0).all() and multi.shape == want.shape


def test_write_speck_folder(speck_graph, tmp_path):
    g, x = speck_graph
    out = write_speck(g, tmp_path / "speck")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.nir", "sinabs_layers.json", "sinabs_state.pt", "resources.txt", "resources.json", "README.md"])
    table = (out / "resources.txt").read_text()
    assert "kernel mem" in table and len(table.strip().splitlines()) == 2 + 5
    assert json.loads((out / "sinabs_layers.json").read_text())["input_levels"] == 4
    readme = (out / "README.md").read_text()
    assert "MultiSpike" in readme and "not verified" in readme
    counts = event_counts(x[:8], 4)
    loaded = run_sinabs(load_sinabs(out, multi_spike=False), counts, 6)
    assert torch.equal(loaded, run_sinabs(build_sinabs(g, multi_spike=False), counts, 6))
    with pytest.raises(BridgeError, match="already exists"):
        write_speck(g, out)


# -- refusals --------------------------------------------------------------------------------------

def _chain_graph(convs: list[tuple[int, int, int, int]], hw: int, thresholds: int = 1) -> nir.NIRGraph:
    """Input -> [Conv(c_in -> c_out, kh x kw) -> IF] * n -> Output, 'same' padding, integer weights."""
    nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type=np.array([convs[0][0], hw, hw]))}
    names = ["input"]
    for i, (c_in, c_out, kh, kw) in enumerate(convs):
        nodes[f"conv{i}"] = nir.Conv2d(input_shape=(hw, hw), weight=np.ones((c_out, c_in, kh, kw)), stride=1,
                                       padding=(kh // 2, kw // 2), dilation=1, groups=1, bias=np.zeros(c_out))
        theta = np.ones((c_out, hw, hw)) * (1 + (np.arange(c_out) % thresholds)).reshape(-1, 1, 1)
        nodes[f"if{i}"] = make_if(theta, np.zeros_like(theta))
        names += [f"conv{i}", f"if{i}"]
    nodes["output"] = nir.Output(output_type=np.array([convs[-1][1], hw, hw]))
    names.append("output")
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names, names[1:])), metadata={"bridge": {"version": "1.0"}},
                        type_check=False)


def test_a_model_that_does_not_fit_is_refused_naming_each_broken_limit():
    g = _chain_graph([(64, 256, 5, 5), (256, 8, 3, 5)] + [(8, 8, 3, 3)] * 8, hw=64, thresholds=2)
    with pytest.raises(BridgeError) as info:
        check_fits(g)
    lines = str(info.value).splitlines()
    assert lines[0] == "the model does not fit Speck:"
    text = "\n".join(lines)
    assert "10 layers: Speck has 9 cores" in text
    assert "layer 0 (conv0): kernel memory 512 Ki exceeds the largest core's 64 Ki" in text
    assert "layer 0 (conv0): neuron memory 1024 Ki exceeds the largest core's 64 Ki" in text
    assert "layer 1 (conv1): kernel 3x5 is not square" in text
    assert "layer 2 (conv2): 2 different thresholds" in text
    # one line per broken limit: 1 (cores) + 2 (layer 0) + 1 (layer 1) + 9 (thresholds) ...
    assert len(lines) - 1 == len(check_resources(speck_layers(g))[1])
    # and nothing is written
    with pytest.raises(BridgeError):
        write_speck(g, "/nonexistent-parent-is-not-reached/out")


def test_fan_out_and_placement_limits():
    g = _chain_graph([(2, 4, 3, 3), (4, 4, 3, 3), (4, 4, 3, 3), (4, 4, 3, 3)], hw=8)
    nodes, edges = dict(g.nodes), list(g.edges)
    edges += [("if0", "conv2"), ("if0", "conv3")]  # if0 feeds three layers
    fan = nir.NIRGraph(nodes=nodes, edges=edges, metadata=g.metadata, type_check=False)
    _, problems = check_resources(speck_layers(fan))
    assert problems == ["layer 0 (conv0): sends to 3 layers; a core has 2 destinations"]
    # six layers that each need a 64 Ki kernel memory: only cores 5 and 6 have one
    big = _chain_graph([(64, 64, 4, 4)] * 3, hw=4)
    cores, problems = check_resources(speck_layers(big))
    assert cores is None and problems == [
        "no placement of the 3 layers on the 9 cores fits every core's memories (see the table)"]


def test_legalisation_refusals():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 28, 28)
    biased = convert(speck_mnist_ann(bias=True), (1, 28, 28), calibration=x)
    with pytest.raises(BridgeError, match="has a bias"):
        legalise_for_speck(biased, x)
    dropped = legalise_for_speck(biased, x, biases="drop")
    assert not any(l.bias for l in speck_layers(dropped))
    with pytest.raises(BridgeError, match="not a Speck layer"):
        speck_layers(convert(speck_mnist_ann(), (1, 28, 28), calibration=x))


@pytest.mark.slow
def test_trained_speck_model_fits_is_mapped_and_reports_its_accuracy(tmp_path):
    """sinabs's MNIST ANN trained briefly on digits at 28x28: the export fits, sinabs maps it, and
    its accuracy at T = 4..64 stands next to the float graph's and sinabs's route."""
    from bridge.data.datasets import digits_split
    from bridge.model.train import train_model
    from validation.evaluation import evaluate_graph
    from validation.sinabs_route import sinabs_accuracy, sinabs_snn

    torch.set_num_threads(1)
    split = digits_split(0, size=28)
    trained = train_model(speck_mnist_ann(), split, epochs=4, seed=0, lr=3e-3)
    cal = split.train_x[:256]
    graph = convert(trained.model, (1, 28, 28), calibration=cal)
    chip = legalise_for_speck(graph, cal, input_levels=4)
    out = write_speck(chip, tmp_path / "speck")
    d = import_dynapcnn()
    from sinabs.backend.dynapcnn.chip_factory import ChipFactory

    net = d.DynapcnnNetwork(load_sinabs(out), input_shape=(1, 28, 28), discretize=True)
    assert len(ChipFactory("speck2fmodule").get_config_builder().map_layers_to_cores(net.dynapcnn_layers)) == 5
    x, y = split.test_x[:200], split.test_y[:200]
    steps = [4, 8, 16, 32, 64]
    speck = evaluate_graph(chip, event_counts(x, 4), y, steps, dtype=torch.float32, ann=False,
                           count_spikes=False).accuracy
    ref = evaluate_graph(graph, x, y, steps, dtype=torch.float32, ann=False, count_spikes=False).accuracy
    route = sinabs_accuracy(sinabs_snn(trained.model, batch_size=32, discretize=True, spiking_output=True), x, y, steps)
    print({t: (round(ref[t], 3), round(speck[t], 3), round(route[t], 3)) for t in steps})
    assert trained.ann_accuracy > 0.6
    assert speck[64] > trained.ann_accuracy - 0.05  # integers, events and a spiking readout cost little at T = 64
    assert min(speck.values()) > 0.5


def test_readout_threshold_for_t_is_the_best_agreement_with_the_ann_view():
    from bridge.passes.speck import READOUT_PERCENTILES
    from bridge.reference import ann_view

    torch.manual_seed(1)
    x = torch.rand(40, 1, 28, 28)
    graph = convert(speck_mnist_ann(), (1, 28, 28), calibration=x)
    target = ann_view(graph, x.double()).flatten(1).argmax(1)
    counts = event_counts(x, 4)

    def agreement(chip):
        spikes = ReferenceSimulator(chip, dtype=torch.float32).run(counts, 3).outputs.sum(0)
        return float((spikes.argmax(1) == target).float().mean())

    chosen = legalise_for_speck(graph, x, timesteps=3)
    scores = [agreement(legalise_for_speck(graph, x, readout_percentile=p)) for p in READOUT_PERCENTILES]
    assert agreement(chosen) == max(scores)
    theta = lambda g: float(if_semantics(g.nodes["readout_spikes"], "readout_spikes").threshold.flat[0])  # noqa: E731
    assert theta(chosen) in {theta(legalise_for_speck(graph, x, readout_percentile=p)) for p in READOUT_PERCENTILES}
