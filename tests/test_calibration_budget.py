"""The calibration pipeline's bounded cost and its reporting: the layer-wise walk, early stop,
time budget, the one-candidate shortcut, progress events, the report's dict and unit, and that
passes write each node back in its own dtype."""

from __future__ import annotations

import json
import math
import time

import nir
import numpy as np
import pytest
import torch

from bridge.format.errors import BridgeError
from bridge.format.progress import ProgressEvent
from bridge.passes.bias_correction import correct_biases
from bridge.passes.calibration_edits import bias_node, if_names, shift_bias
from bridge.passes.joint_fit import JointFitReport, joint_fit
from bridge.passes.layerwise import ann_activations, walk
from bridge.passes.optimize import optimize_initial_potentials
from bridge.passes.pipeline import (
    ERROR_UNIT, HELDOUT_TASK, STAGE_LABELS, STAGES, CalibrationReport, calibrate, heldout_errors, improves,
)
from bridge.reference import ann_view, simulate
# the same calibration signals and converted networks as the pipeline's tests (their fixtures)
from tests.test_calibration_pipeline import data, graph  # noqa: F401


def _dtypes(g: nir.NIRGraph) -> dict:
    out = {}
    for name, node in g.nodes.items():
        for k, v in vars(node).items():
            if isinstance(v, np.ndarray) and v.dtype.kind == "f":
                out[(name, k)] = v.dtype
        for k, v in ((node.metadata or {}).get("bridge") or {}).items():
            if isinstance(v, np.ndarray) and v.dtype.kind == "f":
                out[(name, "metadata", k)] = v.dtype
    return out


def test_the_walk_is_the_reference_simulation_and_follows_each_refit(graph, data):
    x = data[:24]
    _, out = walk(graph, x, 3, lambda g, name, current: g)
    torch.testing.assert_close(out, simulate(graph, x, 3, dtype=torch.float32).outputs)
    # shift the bias that feeds every IF layer while walking: the walk's output must be the
    # reference simulation of the graph as it ends (the already computed bias node is updated)
    def fit(g, name, current):
        node = bias_node(g, name)
        channels = np.asarray(g.nodes[name].v_threshold).shape[0]
        return g if node is None else shift_bias(g, node, np.linspace(-0.2, 0.2, channels))
    final, out = walk(graph, x, 3, fit)
    assert final is not graph
    torch.testing.assert_close(out, simulate(final, x, 3, dtype=torch.float32).outputs, rtol=1e-5, atol=1e-5)


def test_ann_activations_are_the_ann_view(graph, data):
    targets, out = ann_activations(graph, data[:16])
    assert set(targets) == set(if_names(graph))
    torch.testing.assert_close(out.double(), ann_view(graph, data[:16].double()), rtol=1e-4, atol=1e-5)


def test_passes_write_every_node_back_in_its_own_dtype(graph, data):
    # the converter writes float32 weights for a float32 model and float64 IF parameters
    want = _dtypes(graph)
    assert np.dtype("float32") in want.values() and np.dtype("float64") in want.values()
    for out in (optimize_initial_potentials(graph, data, 2), correct_biases(graph, data, 2),
                joint_fit(graph, data, 2, iterations=3, weights=True),
                calibrate(graph, data, 2, iterations=3)):
        assert _dtypes(out) == want


def test_joint_fit_stops_early_when_the_held_out_loss_stops_improving(graph, data):
    rep = JointFitReport()
    joint_fit(graph, data, 2, iterations=400, eval_every=1, patience=2, lr=0.5, report=rep)
    assert rep.steps < 400
    # it stopped after exactly `patience` evaluations without a new best
    last = [v for _, v in rep.history[-2:]]
    assert all(v >= rep.loss_best for v in last) and rep.best_step < rep.steps


def test_joint_fit_stops_at_its_deadline_with_the_best_checkpoint(graph, data):
    rep = JointFitReport()
    t0 = time.perf_counter()
    joint_fit(graph, data, 2, iterations=10 ** 6, eval_every=5, deadline=t0 + 1.0, report=rep)
    assert rep.steps < 10 ** 6 and time.perf_counter() - t0 < 10
    assert rep.history[-1][0] == rep.steps  # the last steps were evaluated before returning
    assert rep.loss_best <= rep.loss_start


def test_calibrate_honours_a_time_budget_and_refuses_a_bad_one(graph, data):
    rep = CalibrationReport(2)
    t0 = time.perf_counter()
    calibrate(graph, data, 2, report=rep, iterations=10 ** 6, time_budget=3.0)
    assert time.perf_counter() - t0 < 15 and rep.budget == 3.0
    with pytest.raises(BridgeError, match="time budget"):
        calibrate(graph, data, 2, time_budget=0)
    with pytest.raises(BridgeError, match="max_samples"):
        calibrate(graph, data, 2, max_samples=4)


def test_one_candidate_runs_no_simulation(graph, data, monkeypatch):
    import bridge.reference as reference

    def refuse(*args, **kwargs):
        raise AssertionError("simulated")

    monkeypatch.setattr(reference, "simulate", refuse)
    monkeypatch.setattr(reference, "ann_view", refuse)
    monkeypatch.setattr(reference, "ReferenceSimulator", refuse)
    events: list[ProgressEvent] = []
    rep = CalibrationReport(None)
    out = calibrate(graph, data, None, report=rep, progress=events.append)
    assert [s.name for s in rep.stages] == ["half"] and rep.chosen == "half"
    assert math.isnan(rep.stages[0].heldout_error)
    assert "only candidate (nothing simulated)" in rep.summary()
    assert rep.to_dict()["stages"][0]["heldout_error"] is None
    assert [e.task for e in events] == [STAGE_LABELS["half"]] * 2 and events[-1].done == events[-1].total
    assert set(out.nodes) == set(graph.nodes)


def test_progress_events_cover_every_stage_and_the_held_out_evaluations(graph, data):
    events: list[ProgressEvent] = []
    calibrate(graph, data, 2, iterations=4, progress=events.append, stages=STAGES)
    tasks = {e.task for e in events}
    assert {STAGE_LABELS[s] for s in ("half", "optimized", "bias", "joint", "weights")} <= tasks
    assert HELDOUT_TASK in tasks
    layers = len(if_names(graph))
    search = [e for e in events if e.task == STAGE_LABELS["optimized"] and e.unit == "layers"]
    assert [e.done for e in search] == list(range(1, layers + 1)) and search[0].images > 0
    bias = [e for e in events if e.task == STAGE_LABELS["bias"] and e.unit == "layers"]
    assert bias[-1].done == bias[-1].total == layers + 1  # + the output bias
    joint = [e for e in events if e.task == STAGE_LABELS["joint"] and e.unit == "iterations"]
    assert joint and [e.done for e in joint] == list(range(1, len(joint) + 1)) and joint[0].total == 4
    assert all(0 <= e.done <= e.total for e in events)


def test_report_dict_carries_every_stage_and_the_unit(graph, data):
    rep = CalibrationReport(2)
    calibrate(graph, data, 2, report=rep, iterations=4, stages=STAGES)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["timesteps"] == 2 and d["chosen"] == rep.chosen and d["error_unit"] == ERROR_UNIT
    assert [s["name"] for s in d["stages"]] == ["half", "optimized", "bias", "joint", "weights"]
    for s, st in zip(d["stages"], rep.stages):
        assert set(s) >= {"name", "label", "heldout_error", "unit", "kept", "seconds", "images"}
        assert s["label"] == STAGE_LABELS[st.name] and s["unit"] == ERROR_UNIT and s["kept"] == st.kept
    assert ERROR_UNIT in rep.summary()


def test_a_stage_that_agrees_less_with_the_ann_is_not_kept(graph, data):
    assert not improves([0.5], [1.0], agreement=[0.90], best_agreement=[0.91])
    assert improves([0.5], [1.0], agreement=[0.91], best_agreement=[0.91])
    rep = CalibrationReport(2)
    out = calibrate(graph, data, 2, report=rep, iterations=4)
    kept = [s for s in rep.stages if s.kept]
    assert [s.heldout_agreement for s in kept] == sorted(s.heldout_agreement for s in kept)
    # the reported error of the chosen stage is the held-out error of the returned graph
    x_val = data[-32:]
    ann = ann_view(graph, x_val.double()).flatten(1)
    assert heldout_errors(out, x_val, ann, 2)[0] == pytest.approx(kept[-1].heldout_error, rel=1e-3)


def test_the_search_is_kept_even_where_the_logit_error_rises(graph, data):
    """The search never raises a layer's rate error; it is kept whatever the network's held-out
    logit error says (ALWAYS_KEPT), and later stages must still beat what is kept."""
    from bridge.passes.pipeline import ALWAYS_KEPT

    assert ALWAYS_KEPT == {"optimized"}
    rep = CalibrationReport(4)
    cands: dict = {}
    out = calibrate(graph, data, 4, report=rep, candidates=cands)
    assert [s.name for s in rep.stages] == ["half", "optimized"] and all(s.kept for s in rep.stages)
    assert rep.chosen == "optimized" and set(cands) == {"half", "optimized"}
    assert set(out.nodes) == set(graph.nodes)
