"""The validation suite: registry, step-by-step comparison, accuracy curves, reports, CLI."""

from __future__ import annotations

import json
import sys

import nir
import numpy as np
import pytest
import torch

from app.cli import main
from bridge.format.errors import BridgeError
from bridge.format.extension import graph_metadata, make_if
from bridge.format.neurons import if_step
from bridge.reference import simulate
from bridge.reference.result import NodeTrace, SimulationResult
from validation import backends as registry
from validation.accuracy import AccuracyCurve, parse_timesteps
from validation.backends.base import Backend
from validation.compare import compare_results, if_ancestors, if_nodes_in_order
from validation.report import markdown, write_report
from validation.suite import validate


def two_layer_graph(theta2: float = 1.0, v_init: float = 0.0) -> nir.NIRGraph:
    """input(4) -> identity -> IF a (theta 1) -> 0.5 * ones -> IF b -> identity -> output.

    With currents [0.25, 0.3, 0.6, 1.0] the neuron fed 0.25 lands exactly on theta at t = 4.
    """
    nodes = {
        "input": nir.Input(input_type=np.array([4])),
        "fc1": nir.Affine(weight=np.eye(4), bias=np.zeros(4)),
        "a": make_if(np.ones(4), np.full(4, v_init)),
        "fc2": nir.Affine(weight=np.full((3, 4), 0.5), bias=np.zeros(3)),
        "b": make_if(np.full(3, theta2), np.zeros(3)),
        "fc3": nir.Affine(weight=np.eye(3), bias=np.zeros(3)),
        "output": nir.Output(output_type=np.array([3])),
    }
    edges = [("input", "fc1"), ("fc1", "a"), ("a", "fc2"), ("fc2", "b"), ("b", "fc3"), ("fc3", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=graph_metadata())


X = torch.tensor([[0.25, 0.3, 0.6, 1.0], [0.1, 0.9, 0.45, 0.2]], dtype=torch.float64)


class GreaterThanBackend(Backend):
    """A stand-in backend with one deliberate difference: it fires when m > theta.

    It is a second, independent simulator of the two-layer graph (dense layers only), so
    the test sees what a backend that got the spike condition wrong looks like.
    """

    name = "test-gt"
    faithful = True
    condition = "gt"
    use_v_init = True

    def run(self, x: torch.Tensor, steps: int, *, trace: bool = False) -> SimulationResult:
        g = self.graph
        traces, outputs = {}, []
        va = torch.zeros(x.shape[0], 4, dtype=torch.float64)
        if self.use_v_init:
            va = va + torch.as_tensor(g.nodes["a"].metadata["bridge"]["v_init"])
        vb = torch.zeros(x.shape[0], 3, dtype=torch.float64)
        w2 = torch.as_tensor(g.nodes["fc2"].weight)
        th_a = torch.as_tensor(g.nodes["a"].v_threshold)
        th_b = torch.as_tensor(g.nodes["b"].v_threshold)
        sa, sb, vas, vbs = [], [], [], []
        for _ in range(steps):
            s1, va = if_step(x.to(torch.float64), va, th_a, spike_condition=self.condition)
            s2, vb = if_step(s1 @ w2.T, vb, th_b, spike_condition="ge")
            sa.append(s1), vas.append(va), sb.append(s2), vbs.append(vb)
            outputs.append(s2)
        traces = {"a": NodeTrace(torch.stack(sa), torch.stack(vas)), "b": NodeTrace(torch.stack(sb), torch.stack(vbs))}
        return SimulationResult(torch.stack(outputs), traces if trace else {}, "mean")


class GreaterEqualBackend(GreaterThanBackend):
    """The same independent simulator with the right rule (m >= theta): must agree exactly."""

    name = "test-ge"
    condition = "ge"


class LostInitialPotentialBackend(GreaterThanBackend):
    """Right spike rule, but starts from v = 0 (a semantic bug: the initial potential is lost)."""

    name = "test-v0"
    condition = "ge"
    use_v_init = False


@pytest.fixture
def stand_ins(monkeypatch):
    for name in ("test-gt", "test-ge", "test-v0"):
        monkeypatch.setitem(registry.BACKENDS, name, (__name__, None))


# -- registry ------------------------------------------------------------------------------
def test_registry_resolves_every_installed_backend():
    for name in ("reference", "spikingjelly", "norse", "snntorch", "sinabs", "norse-nir", "spikingjelly-nir",
                 "snntorch-nir"):
        cls = registry.get_backend(name)
        assert issubclass(cls, Backend) and cls.name == name
    assert registry.get_backend("norse-nir").faithful is False
    assert registry.get_backend("spikingjelly").faithful is True


def test_registry_errors_name_the_fix(monkeypatch):
    with pytest.raises(BridgeError, match="unknown backend 'nest'; choose from reference"):
        registry.get_backend("nest")
    monkeypatch.setitem(sys.modules, "sinabs", None)  # as on a machine without sinabs
    with pytest.raises(BridgeError, match=r"sinabs.*not installed; pip install --no-deps sinabs"):
        registry.get_backend("sinabs-nir")
    with pytest.raises(BridgeError, match="empty"):
        registry.parse_backends(" , ")
    assert registry.parse_backends("reference, norse,reference") == ["reference", "norse"]


# -- comparison ----------------------------------------------------------------------------
def test_graph_order_and_ancestors():
    g = two_layer_graph()
    assert if_nodes_in_order(g) == ["a", "b"]
    assert if_ancestors(g) == {"a": set(), "b": {"a"}}


def test_identical_runs_agree_everywhere(stand_ins):
    g = two_layer_graph()
    report = validate(g, ["test-ge", "reference"], X, steps=8)
    assert report.ok
    for b in report.backends:
        for layer in b.comparison.layers.values():
            assert layer.mismatches == 0 and layer.agreement == 1.0 and layer.first_divergence is None
            assert layer.max_v_diff == 0.0
        assert b.comparison.outputs.prediction_agreement == 1.0


def test_exact_tie_is_explained_and_downstream_is_propagated(stand_ins):
    # 1.0 at t=1 and 0.25 * 4 at t=4 land exactly on theta: the reference fires (>=), '>' does not.
    g = two_layer_graph(theta2=0.9)
    ref = simulate(g, X, 8, trace=True)
    got = registry.get_backend("test-gt")(g).run(X, 8, trace=True)
    c = compare_results(g, got, ref, rel_epsilon=1e-9)
    a, b = c.layers["a"], c.layers["b"]
    assert a.first_divergence is not None and a.first_divergence.key() == (1, 0, (3,))
    assert a.ties >= 2 and a.unexplained == 0
    assert b.unexplained == 0 and b.propagated == b.mismatches and b.mismatches > 0
    assert c.first_divergence[0] == "a"
    assert a.agreement == pytest.approx(1 - a.mismatches / (8 * 2 * 4))


def test_semantic_difference_is_unexplained_and_fails(stand_ins):
    g = two_layer_graph(v_init=0.5)  # the backend starts at 0 instead: fires later, far from any tie
    ref = simulate(g, X, 8, trace=True)
    got = registry.get_backend("test-v0")(g).run(X, 8, trace=True)
    c = compare_results(g, got, ref, rel_epsilon=1e-9)
    a = c.layers["a"]
    assert a.unexplained > 0 and a.first_unexplained is not None
    assert a.first_unexplained.key() == a.first_divergence.key()
    # the first mismatch: 0.5 + 0.6 = 1.1 >= 1 fires at t=1 in the reference, 0.6 does not
    assert a.first_divergence.key() == (1, 0, (2,))
    assert a.max_v_diff == pytest.approx(0.5)  # before the divergence v differs by v_init
    report = validate(g, ["test-v0", "test-gt"], X, steps=8)
    assert not report.ok and [b.status for b in report.backends] == ["failed", "ok"]
    assert report.failures()[0].startswith("test-v0:") and "unexplained" in report.failures()[0]


def test_batches_merge_like_one_run(stand_ins):
    g = two_layer_graph(theta2=0.9)
    x = torch.rand(10, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[7, 0] = 0.25  # a tie in sample 7 only
    one = validate(g, ["test-gt"], x, steps=8, batch_size=10).backends[0].comparison
    many = validate(g, ["test-gt"], x, steps=8, batch_size=3).backends[0].comparison
    for name in ("a", "b"):
        assert one.layers[name].to_dict() == many.layers[name].to_dict()
    assert many.layers["a"].first_divergence.sample == 7
    assert one.outputs.to_dict() == many.outputs.to_dict()


def test_bad_input_is_a_bridge_error():
    g = two_layer_graph()
    with pytest.raises(BridgeError, match=r"shape \(5,\).*wants \(4,\)"):
        validate(g, ["reference"], torch.zeros(2, 5), steps=4)
    with pytest.raises(BridgeError, match="unknown backend"):
        validate(g, ["nope"], X, steps=4)
    with pytest.raises(BridgeError, match="exceeds --steps"):
        validate(g, ["reference"], X, steps=4, timesteps=[2, 8])


# -- third-party importers: measured, refusals recorded ------------------------------------
def test_importers_are_measured_not_failed():
    g = two_layer_graph(theta2=0.9)
    report = validate(g, ["norse-nir", "spikingjelly-nir", "snntorch-nir"], X, steps=8)
    assert report.ok  # not faithful: differences never fail the run
    by = {b.name: b for b in report.backends}
    assert by["norse-nir"].status == "ok" and by["norse-nir"].comparison.layers["a"].mismatches > 0
    assert by["spikingjelly-nir"].status == "ok"
    # snnTorch 1.0 hands Leaky's (spk, mem) tuple to the next layer: a recorded refusal
    assert by["snntorch-nir"].status == "refused" and "tuple" in by["snntorch-nir"].message


def test_spikingjelly_importer_refusal_is_the_result():
    g = two_layer_graph()
    g.nodes["a"] = make_if(np.array([1.0, 1.0, 2.0, 1.0]), np.zeros(4))
    report = validate(g, ["spikingjelly-nir"], X, steps=4)
    b = report.backends[0]
    assert b.status == "refused" and "uniform" in b.message and b.comparison is None and report.ok


# -- accuracy ------------------------------------------------------------------------------
def test_accuracy_curve_uses_the_running_readout():
    outputs = torch.tensor([[[1.0, 0.0]], [[0.0, 3.0]], [[0.0, 0.0]]])  # T=3, B=1
    res = SimulationResult(outputs)
    curve = AccuracyCurve([1, 2, 3])
    curve.add(res, torch.tensor([1]), torch.tensor([0]))
    assert curve.accuracy() == {1: 0.0, 2: 1.0, 3: 1.0}  # means: (1,0) (.5,1.5) (.33,1)
    assert curve.ann_agreement() == {1: 1.0, 2: 0.0, 3: 0.0}
    assert parse_timesteps("8,1,2,2") == [1, 2, 8]
    with pytest.raises(BridgeError):
        parse_timesteps("1,x")
    with pytest.raises(BridgeError):
        parse_timesteps("0,2")


def test_reference_accuracy_matches_its_predictions():
    g = two_layer_graph(theta2=0.9)
    y = torch.tensor([0, 2])
    report = validate(g, ["reference"], X, y, steps=8, timesteps=[1, 8])
    ref = simulate(g, X, 8)
    want = float((ref.predictions() == y).double().mean())
    assert report.reference.accuracy.accuracy()[8] == want
    assert report.reference.accuracy.ann_agreement() is not None


# -- reports -------------------------------------------------------------------------------
def test_json_markdown_and_report_folder(tmp_path, stand_ins):
    g = two_layer_graph(theta2=0.9)
    report = validate(g, ["reference", "test-gt", "spikingjelly-nir"], X, torch.tensor([0, 1]), steps=8,
                      timesteps=[1, 4, 8])
    data = json.loads(report.to_json())
    assert data["ok"] is True and data["backends"][1]["layers"]["a"]["ties"] >= 1
    assert data["backends"][1]["first_divergence"]["node"] == "a"
    md = markdown(report, {})
    assert "| test-gt |" in md and "T=4" in md
    out = write_report(report, tmp_path / "rep")
    for name in ("report.md", "accuracy_vs_T.png", "layer_agreement.png", "firing_rates.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 100
    assert "![Accuracy vs T](accuracy_vs_T.png)" in out.read_text()
    assert out.stat().st_mode & 0o044  # readable by others like any file the user writes
    with pytest.raises(BridgeError, match="already exists"):
        write_report(report, tmp_path / "rep")
    write_report(report, tmp_path / "rep", force=True)


def _labelled_report():
    g = two_layer_graph(theta2=0.9)
    return validate(g, ["reference", "test-ge", "test-gt"], X, torch.tensor([0, 1]), steps=8,
                    timesteps=[1, 4, 8])


def test_tables_explain_their_rows_and_show_the_ann(stand_ins):
    from rich.console import Console

    from validation.report import ANN_MEANING, render

    report = _labelled_report()
    assert report.semantics == "bridge NIR extension 1.0"  # the extension's version, named as such
    ann = report.reference.accuracy.ann_accuracy()
    assert ann is not None
    console = Console(record=True, width=220)
    render(report, console)
    lines = console.export_text().splitlines()
    ann_pct = f"{100 * ann:.2f}%"
    summary_ann = [l for l in lines if l.startswith("│ ANN") and "accuracy" not in l]
    assert len(summary_ann) == 1 and summary_ann[0].rstrip(" │").endswith(ann_pct)
    (ann_row,) = [l for l in lines if l.startswith("│ ANN") and "accuracy" in l]
    assert ann_row.count(ann_pct) == len(report.timesteps)
    header = next(l for l in lines if "measure" in l)
    assert "backend" in header and all(f"T={t}" in header for t in report.timesteps)
    for name in ("reference", "test-ge", "test-gt"):  # two labelled rows per backend
        i = next(i for i, l in enumerate(lines) if l.startswith(f"│ {name} ") and "accuracy" in l)
        assert "same class as the ANN" in lines[i + 1] and lines[i + 1].startswith("│  ")
        acc = report.backends[[b.name for b in report.backends].index(name)].accuracy.accuracy()
        assert all(f"{100 * acc[t]:.2f}%" in lines[i] for t in report.timesteps)
    text = " ".join(" ".join(lines).split())
    assert f"ANN: {ANN_MEANING} (no T)" in text  # the caption says what the ANN is
    md = markdown(report, {})
    assert f"- ANN accuracy: {ann_pct}" in md and f"| ANN | accuracy | {ann_pct} |" in md
    assert "| reference | accuracy |" in md and "|  | same class as the ANN |" in md


def test_accuracy_plot_has_an_ann_line_and_every_curve_visible(stand_ins):
    import matplotlib.pyplot as plt

    from validation.report import figure

    report = _labelled_report()
    fig = figure(report, "accuracy")
    try:
        ax = fig.axes[0]
        lines = ax.get_lines()
        (ann_line,) = [l for l in lines if l.get_label().startswith("ANN")]
        ann = report.reference.accuracy.ann_accuracy()
        assert list(ann_line.get_ydata()) == [100 * ann] * 2  # axhline: a horizontal line at the ANN
        assert ann_line.get_label() == f"ANN ({100 * ann:.2f}%, no T)"
        curves = [l for l in lines if l is not ann_line]
        assert [l.get_label().split(" (= ")[0] for l in curves] == ["reference", "test-ge", "test-gt"]
        # a different marker and line style each, each line thinner than the one below it
        assert len({(l.get_marker(), str(l.get_linestyle())) for l in curves}) == len(curves)
        widths = [l.get_linewidth() for l in curves]
        assert widths == sorted(widths, reverse=True) and len(set(widths)) == len(widths)
        # a curve identical to an earlier one says so in the legend (test-ge is the reference's rule)
        for i, later in enumerate(curves):
            same = [c.get_label() for c in curves[:i] if list(c.get_ydata()) == list(later.get_ydata())]
            if same:
                assert later.get_label().endswith(f" (= {same[0].split(' (= ')[0]})"), later.get_label()
        assert curves[1].get_label() == "test-ge (= reference)"
        legend = ax.get_legend()
        assert [t.get_text() for t in legend.get_texts()] == [l.get_label() for l in curves + [ann_line]]
        fig.canvas.draw()
        assert legend.get_window_extent().x0 >= ax.get_window_extent().x1  # beside the axes, over no curve
    finally:
        plt.close(fig)


def test_firing_rate_plot_names_each_backend_once_and_its_legend_covers_no_bar(stand_ins):
    import matplotlib.pyplot as plt

    from validation.report import figure

    report = _labelled_report()  # the reference is also listed as a backend
    fig = figure(report, "rates")
    try:
        ax = fig.axes[0]
        legend = ax.get_legend()
        assert [t.get_text() for t in legend.get_texts()] == ["reference", "test-ge", "test-gt"]
        assert len(ax.containers) == 3 and all(len(c) == len(report.layers) for c in ax.containers)
        fig.canvas.draw()
        box = legend.get_window_extent()
        for bar in ax.patches:
            assert not box.overlaps(bar.get_window_extent()), "the legend covers a bar"
    finally:
        plt.close(fig)


# -- CLI -----------------------------------------------------------------------------------
@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.nir"
    nir.write(path, two_layer_graph(theta2=0.9))
    return path


def _npz(tmp_path, x, y):
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    return str(path)


def test_cli_json_ok(model_file, tmp_path, capsys):
    data = _npz(tmp_path, X.numpy(), np.array([0, 1]))
    rc = main(["validate", str(model_file), "--backends", "reference,spikingjelly-nir", "--steps", "8",
               "--data", data, "--json", "--timesteps-list", "1,8"])
    out = capsys.readouterr().out
    assert rc == 0
    assert json.loads(out)["timesteps"] == [1, 8]


def test_cli_table_and_report(model_file, tmp_path, capsys):
    data = _npz(tmp_path, X.numpy(), np.array([0, 1]))
    rc = main(["validate", str(model_file), "--backends", "reference,norse-nir", "--steps", "4",
               "--data", data, "--report", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 0 and "norse-nir" in out and "agree" in out
    assert (tmp_path / "r" / "report.md").is_file()


def test_cli_fails_with_exit_1_on_unexplained(tmp_path, capsys, stand_ins):
    path = tmp_path / "v.nir"
    nir.write(path, two_layer_graph(v_init=0.5))
    data = _npz(tmp_path, X.numpy(), np.array([0, 1]))
    rc = main(["validate", str(path), "--backends", "test-v0", "--steps", "8", "--data", data])
    err = capsys.readouterr().err
    assert rc == 1 and "unexplained" in err and err.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["--backends", "nest"], "unknown backend"),
    (["--backends", "sinabs-nir"], "pip install --no-deps sinabs"),
    (["--data", "WRONG"], "wants (4,)"),  # an .npz with 5 features per sample
    (["--steps", "0"], "--steps must be >= 1"),
    (["--timesteps-list", "1,64"], "exceeds --steps"),
])
def test_cli_bad_input_exit_2(model_file, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setitem(sys.modules, "sinabs", None)  # as on a machine without sinabs
    if "WRONG" in args:
        args = ["--data", _npz(tmp_path, np.zeros((2, 5)), np.zeros(2, dtype=np.int64))]
    rc = main(["validate", str(model_file), "--steps", "8", *args] if "--steps" not in args
              else ["validate", str(model_file), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.startswith("bridge: error:") and err.count("\n") == 1


def test_plain_nir_graph_uses_the_nir_text_semantics():
    g = two_layer_graph(theta2=0.9)
    g.metadata = {}
    for node in g.nodes.values():
        node.metadata = {}
    report = validate(g, ["norse-nir", "spikingjelly-nir"], X, steps=8)
    assert report.semantics.startswith("NIR text")
    by = {b.name: b.comparison for b in report.backends}
    # norse's IAFCell is the NIR text rule (hard reset, v > theta, v(0) = 0): the same spikes
    assert all(layer.mismatches == 0 for layer in by["norse-nir"].layers.values())
    # SpikingJelly fires on v >= theta: it differs only where v lands exactly on theta (ties)
    sj = by["spikingjelly-nir"].layers["a"]
    assert sj.mismatches > 0 and sj.unexplained == 0 and sj.ties >= 1


def test_piped_validate_output_has_no_stray_blank_lines(tmp_path, capsys):
    from tests import zoo

    path = zoo.write_mlp_nir(tmp_path / "mlp.nir")
    # 64 samples x 32 steps: the progress bar is on; off a terminal it draws nothing
    assert main(["validate", str(path), "--backends", "reference", "--steps", "32", "--data", "digits",
                 "--limit", "64"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.splitlines()[0].strip().startswith("bridge validate: 64 samples")
