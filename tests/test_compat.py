"""The compatibility matrix and the nir-compat export profile, on real importers."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from bridge.converter import convert
from bridge.format.errors import BridgeError
from bridge.format.neurons import if_step
from bridge.reference import simulate
from bridge.passes.profiles import apply_profile, unit_thresholds
from tests.zoo import grouped_strided, resnet_small, sample_input, vgg_bn
from validation import compat
from validation.backends import get_backend
from validation.suite import input_shape, validate

T = 8


def closed_form_strings(v0: Fraction) -> list[str]:
    """The method's spikes from its closed form: N_t = floor(t z + v0) (theta = 1), s_t = N_t - N_{t-1}."""
    out = []
    for z in compat.CURRENTS:
        zq = Fraction(str(z))
        counts = [int(np.floor(t * zq + v0)) for t in range(T + 1)]
        out.append("".join(str(counts[t] - counts[t - 1]) for t in range(1, T + 1)))
    return out


def rule_strings(*, reset: str, condition: str, leak: float = 1.0) -> list[str]:
    """Spike strings of an IF rule (``bridge.format.neurons.if_step``) with an optional leak, in float32."""
    z = torch.tensor(compat.CURRENTS, dtype=torch.float32)
    v = torch.zeros(4)
    theta = torch.ones(4)
    rows = []
    for _ in range(T):
        s, v = if_step(z, leak * v, theta, reset=reset, spike_condition=condition)
        rows.append(s)
    s = torch.stack(rows)
    return ["".join(str(int(b)) for b in s[:, i]) for i in range(4)]


def test_exact_strings_follow_the_closed_form():
    assert compat.exact_strings(0.0) == closed_form_strings(Fraction(0))
    assert compat.exact_strings(0.5) == closed_form_strings(Fraction(1, 2))


@pytest.mark.parametrize("v0", [0.0, 0.5])
def test_importers_on_the_single_if_graph(v0):
    g = compat.single_if_graph(v0)
    # no importer reads the initial potential: their strings do not depend on v0
    assert compat.spike_strings("norse-nir", g) == rule_strings(reset="zero", condition="gt")
    assert compat.spike_strings("spikingjelly-nir", g) == rule_strings(reset="zero", condition="ge")
    assert compat.spike_strings("snntorch-nir", g) == rule_strings(reset="subtract", condition="gt", leak=0.9)
    # sinabs: the method's rule (subtract reset, v >= theta) from v(0) = 0, whatever v_init says
    assert compat.spike_strings("sinabs-nir", g) == closed_form_strings(Fraction(0))
    ref = compat.spike_strings("reference", g)
    exact = compat.exact_strings(v0)
    # float64 differs from exact arithmetic only where exact arithmetic lands on theta
    diff = [i for i in range(4) if ref[i] != exact[i]]
    assert diff in ([], [2])


@pytest.fixture(scope="module")
def channel_wise_graph():
    model, shape = vgg_bn(act="relu")
    return convert(model, shape, thresholds="max", channel_wise=True, calibration=sample_input(shape, 32))


def test_nir_compat_profile_is_exact_and_unlocks_spikingjelly(channel_wise_graph):
    g = channel_wise_graph
    p = unit_thresholds(g)
    ifs = [n for n, node in p.nodes.items() if type(node).__name__ == "IF"]
    assert ifs and all(np.all(np.asarray(p.nodes[n].v_threshold) == 1.0) for n in ifs)
    assert any(np.unique(np.asarray(g.nodes[n].v_threshold)).size > 1 for n in ifs)
    x = sample_input(input_shape(g), 4)
    a, b = simulate(g, x, 16, trace=True), simulate(p, x, 16, trace=True)
    for n in ifs:
        assert torch.equal(a.traces[n].spikes, b.traces[n].spikes), n
    assert torch.allclose(a.outputs, b.outputs, atol=1e-12)
    before = validate(g, ["spikingjelly-nir"], x, steps=8).backends[0]
    after = validate(p, ["spikingjelly-nir"], x, steps=8).backends[0]
    assert before.status == "refused" and "uniform" in before.message
    assert after.status == "ok" and after.comparison.layers


def test_nir_compat_profile_refusals():
    model, shape = resnet_small()
    g = convert(model, shape)
    with pytest.raises(BridgeError, match="Scale"):
        apply_profile(g, "nir-compat")
    assert apply_profile(g, "exact") is g
    with pytest.raises(BridgeError, match="unknown NIR profile"):
        apply_profile(g, "loihi")


def test_markdown_page(channel_wise_graph):
    g = channel_wise_graph
    x = sample_input(input_shape(g), 3)
    y = torch.tensor([0, 1, 2])
    case = compat.Case("tiny", g, x, y, 0.5, "a test network")
    m = compat.Matrix(cases=[case])
    m.strings["v_init = 0"] = {"bridge rule, exact arithmetic": compat.exact_strings(0.0),
                               "reference": compat.exact_strings(0.0),
                               "norse-nir": compat.spike_strings("norse-nir", compat.single_if_graph(0.0))}
    m.runs[("tiny", "exact")] = validate(g, ["spikingjelly-nir"], x, y, steps=4, timesteps=[1, 4])
    m.runs[("tiny", "nir-compat")] = validate(unit_thresholds(g), ["spikingjelly-nir"], x, y, steps=4,
                                              timesteps=[1, 4])
    md = compat.markdown(m, "python -m validation.compat")
    assert "| norse-nir | 00001000 00010001 01010101 01010101 | 0/4 neurons |" in md
    assert "| spikingjelly-nir | exact | refused: " in md
    assert "| spikingjelly-nir | nir-compat | runs |" in md
    assert "acc T=4 (%)" in md


def test_compat_cli_refuses_to_overwrite(tmp_path):
    out = tmp_path / "c.md"
    out.write_text("mine")
    assert compat.main(["-o", str(out)]) == 2
    assert out.read_text() == "mine"


def test_rate_headroom_profile():
    from bridge.passes.profiles import rate_headroom

    g = compat.single_if_graph(0.5)
    x = torch.tensor([[0.25, 0.3, 0.6, 0.2]], dtype=torch.float64)  # no neuron saturates
    # IF -> Output has no weighted layer to carry the factor: refused, nothing silently changed
    with pytest.raises(BridgeError, match="cannot carry the factor"):
        rate_headroom(g, 2.0)
    # with a consumer layer: the same mean output as the original for inputs below theta
    from tests.test_validation import two_layer_graph

    g2 = two_layer_graph(theta2=0.9)
    h2 = apply_profile(g2, "nir-compat-k2")
    assert np.allclose(h2.nodes["fc1"].weight, np.eye(4) / 2)
    assert np.allclose(h2.nodes["a"].metadata["bridge"]["v_init"], 0.0)
    unit = unit_thresholds(g2)
    assert np.allclose(h2.nodes["fc2"].weight, unit.nodes["fc2"].weight)  # x 2 (consumer of a), / 2 (feeds b)
    assert np.allclose(h2.nodes["fc3"].weight, 2 * unit.nodes["fc3"].weight)
    steps = 400
    a, b = simulate(g2, x, steps), simulate(h2, x, steps)
    assert torch.allclose(a.readout, b.readout, atol=4 * 2 / steps)
    assert not torch.equal(a.outputs, b.outputs)  # a different (coarser) spike code



# -- sinabs-nir ------------------------------------------------------------------------------
def test_sinabs_emits_several_spikes_per_step_and_clamps_at_minus_theta():
    """sinabs' IAF: s = floor(m / theta) for m > 0 (not at most one), v' = max(m - theta s, -theta)."""
    g = compat.single_if_graph(0.5)
    z = torch.tensor([[2.5, -3.0, 0.9, 1.0]], dtype=torch.float64)
    trace = get_backend("sinabs-nir")(g).run(z, 4, trace=True).traces["neuron"]
    v, expected_s, expected_v = torch.zeros(4, dtype=torch.float64), [], []
    for _ in range(4):  # the rule above, from v(0) = 0 (the graph's v_init = theta/2 is not read)
        m = v + z[0].float().double()
        s = torch.where(m > 0, torch.floor(m), torch.zeros_like(m))
        v = torch.clamp(m - s, min=-1.0)
        expected_s.append(s)
        expected_v.append(v)
    assert torch.equal(trace.spikes[:, 0], torch.stack(expected_s))
    assert torch.allclose(trace.v[:, 0], torch.stack(expected_v), atol=1e-6)
    assert trace.spikes[:, 0, 0].tolist() == [2, 3, 2, 3]  # 2.5 per step: several spikes in one step
    assert trace.v[:, 0, 1].tolist() == [-1.0] * 4  # -3 per step: held at -theta


def test_sinabs_keeps_per_neuron_thresholds():
    """With multi-spike and v(0) = 0, sinabs' count after t steps of z >= 0 is floor(t z / theta_i)."""
    from bridge.format.extension import make_if

    theta = np.array([1.0, 2.0, 0.5, 0.25])
    g = compat.single_if_graph(0.0)
    nodes = dict(g.nodes, neuron=make_if(theta, 0 * theta))
    g = type(g)(nodes=nodes, edges=g.edges, metadata=g.metadata)
    z = Fraction(11, 20)  # 0.55: t z / theta is never an integer for t <= T (no ties)
    spikes = get_backend("sinabs-nir")(g).run(torch.full((1, 4), 0.55, dtype=torch.float64), T,
                                              trace=True).traces["neuron"].spikes[:, 0]
    counts = spikes.cumsum(0)
    expected = [[int(np.floor(t * z / Fraction(th))) for th in theta] for t in range(1, T + 1)]
    assert counts.tolist() == expected
    assert spikes.max() >= 2  # theta = 0.25: two or three spikes a step


@pytest.mark.parametrize("v_init", [0.0, "half"])
def test_sinabs_on_a_converted_zoo_net(v_init):
    """grouped_strided (Conv2d groups/stride, per-layer thresholds) through the whole suite.

    The first IF layer sees a constant current at most theta (max-calibrated thresholds), so from
    v_init = 0 sinabs' rule coincides with the method there: the same spikes (up to float32 ties).
    With v_init = theta/2 it loses the initial potential: root differences in that layer already.
    Deeper layers see varying currents; every root difference there is one of sinabs' two rules:
    several spikes in one step, or a potential the reference lets fall below -theta.
    """
    model, shape = grouped_strided()
    g = convert(model, shape, thresholds="max", calibration=sample_input(shape, 32), v_init=v_init)
    x = sample_input(shape, 8)
    steps = 8
    rep = validate(g, ["reference", "sinabs-nir"], x, steps=steps)
    sinabs_rep = rep.backends[1]
    assert sinabs_rep.name == "sinabs-nir" and not sinabs_rep.faithful
    assert sinabs_rep.status == "ok", sinabs_rep.message
    first, *deeper = rep.layers
    layers = sinabs_rep.comparison.layers
    assert set(layers) == set(rep.layers)
    if v_init == 0.0:
        assert layers[first].mismatches == layers[first].ties
    else:
        assert layers[first].unexplained > 0
        return
    ours = get_backend("sinabs-nir")(g).run(x, steps, trace=True).traces
    ref = simulate(g, x, steps, trace=True).traces
    causes = 0
    for name in deeper:
        d = layers[name].first_unexplained
        if d is None:
            continue
        t, b, n = d.step - 1, d.sample, d.neuron
        theta = float(np.asarray(g.nodes[name].v_threshold)[n])
        several = ours[name].spikes[(t, b, *n)] >= 2
        below = bool((ref[name].v[(slice(0, t), b, *n)] < -theta).any())
        assert several or below, (name, d)
        causes += 1
    assert causes > 0  # the two rules do show up in this net
