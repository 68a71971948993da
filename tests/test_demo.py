"""bridge demo: the targets' logic, the SpikingJelly baseline, and one end-to-end --quick run."""

from __future__ import annotations

import json

import pytest
import torch

from app import ann2snn_baseline as sj
from bridge.data.datasets import digits_split
from app.demo import DemoConfig, Results
from app.demo_report import check_targets, table_rows
from bridge.format.errors import BridgeError
from bridge.model.train import DigitsCNN, train_model


def _results(half_t4: float, opt_t1: float) -> Results:
    res = Results((1, 2, 4, 8), [0, 1])
    for model in ("clip", "qcfs", "relu", "resnet"):
        res.ann[model] = [0.99, 0.99]
        for method, per_t in (("zero", {1: 0.1, 2: 0.5, 4: 0.9, 8: 0.97}),
                              ("half", {1: 0.8, 2: 0.95, 4: half_t4, 8: 0.988}),
                              ("optimized", {1: opt_t1, 2: 0.986, 4: 0.99, 8: 0.99}),
                              ("default", {1: opt_t1, 2: 0.986, 4: 0.99, 8: 0.99})):
            for _ in range(2):
                res.add("accuracy", model, method, per_t)
                res.add("agreement", model, method, {t: 0.996 for t in per_t})
    for _ in range(2):
        res.add("accuracy", "relu", "SJ ann2snn max layer", {1: 0.1, 2: 0.9, 4: 0.97, 8: 0.98})
    return res


def test_targets_pass_and_fail_on_the_means():
    good = {t.text: t.passed for t in check_targets(_results(half_t4=0.985, opt_t1=0.975))}
    assert all(good.values()), good
    bad = {t.text: t for t in check_targets(_results(half_t4=0.97, opt_t1=0.95))}
    assert not bad["digits theta/2, best of clipped/QCFS: T=4 within 1.0 pt of its ANN"].passed
    assert "2.00 pt below ANN" in bad["digits theta/2, best of clipped/QCFS: T=4 within 1.0 pt of its ANN"].detail
    assert not bad["relu: calibrated (default) T=1 within 2.0 pt of the ANN"].passed
    assert bad["resnet: >= 95% at T=4 (bridge's best setting)"].passed


def test_table_marks_sj_not_applicable_for_clipped_models():
    header, rows = table_rows(_results(0.985, 0.975))
    assert header[:3] == ["model", "method", "ANN"] and header[3:] == ["T=1", "T=2", "T=4", "T=8"]
    na = [r for r in rows if r[1].startswith("SJ ann2snn: not applicable")]
    assert len(na) == 3 and all(c == "n/a" for r in na for c in r[3:])
    assert any(r[1] == "SJ ann2snn max layer" for r in rows)
    assert rows[0][2] == "99.00±0.00"


def test_config_and_output_folder_errors(tmp_path):
    from app.demo import run_demo

    with pytest.raises(BridgeError, match="--seeds"):
        DemoConfig.make(tmp_path / "x", seeds=0)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(BridgeError, match="already exists"):
        run_demo(DemoConfig.make(tmp_path / "full", seeds=1, quick=True))
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_spikingjelly_baseline_converts_relu_models_only():
    split = digits_split(0)
    trained = train_model(DigitsCNN("relu", channels=(4, 8), hidden=16), split, epochs=4, seed=0)
    assert sj.applicable(trained.model)
    assert not sj.applicable(DigitsCNN("clip")) and not sj.applicable(DigitsCNN("qcfs"))
    x, y = split.test_x[:100], split.test_y[:100]
    setting = sj.SJSetting("99.9%", channel_wise=True, half_threshold=True)
    snn = sj.convert(trained.model, split.train_x[:128], setting)
    assert any(type(m).__name__ == "HalfThresholdIFNode" for m in snn.modules())
    acc = sj.accuracy_vs_steps(trained.model, split.train_x[:128], x, y, [1, 4, 32], setting)
    assert acc[32] > 0.7 and acc[32] >= acc[1]
    # the running readout is the mean of the outputs: its last step equals a manual T-step mean
    running = sj.run(snn, x[:5], 3)
    from spikingjelly.activation_based import functional

    functional.reset_net(snn)
    manual = sum(snn(x[:5]) for _ in range(3)) / 3
    torch.testing.assert_close(running[-1], manual)


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    from app.cli import main
    from app.demo_report import PLOTS

    out = tmp_path / "demo"
    # without --strict a failed target is reported on the last line, not by the exit status
    assert main(["demo", "--quick", "--seeds", "1", "--benchmark", "digits", "--out", str(out)]) == 0
    for name in ("report.md", "results.json", *PLOTS):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for model in ("clip", "qcfs", "relu", "resnet"):
        assert (out / "models" / model / "model.nir").is_file()
        assert (out / "models" / model / "spikingjelly").is_dir()
        assert (out / "models" / model / "norse").is_dir()
    data = json.loads((out / "results.json").read_text())
    for model in ("clip", "qcfs", "relu", "resnet"):
        assert data["ann"][model][0] > 0.9
        acc = data["accuracy"][model]
        assert acc["half"]["16"][0] > 0.9  # near the ANN at T = 16
        assert acc["zero"]["1"][0] <= acc["half"]["1"][0]
        assert acc["default"]["1"][0] > 0.5
        for b in data["validation"][model]["backends"].values():
            assert b["status"] == "ok" and b["unexplained"] == 0
    assert any(k.startswith("SJ ") for k in data["accuracy"]["relu"])
    assert not any(k.startswith("SJ ") for k in data["accuracy"]["clip"])
    # the reported ANN accuracy, recomputed independently: the written graph's ANN view against
    # the labels of the same held-out split (float32 weights: at most one image may flip). The
    # written graph is calibrated for T=4: the search moved the QCFS model's thresholds, so its
    # IF nodes no longer claim the staircase and its ANN view is the clipped twin (within a point)
    import nir

    from bridge import read_graph
    from bridge.data.datasets import digits_split
    from bridge.format.extension import qcfs_staircase
    from bridge.reference import ann_view

    split = digits_split(0)
    for model in ("clip", "qcfs", "relu", "resnet"):
        graph = read_graph(out / "models" / model / "model.nir")
        logits = ann_view(graph, split.test_x.to(torch.float64))
        accuracy = float((logits.argmax(1) == split.test_y).double().mean())
        marked = [n for n, node in graph.nodes.items() if isinstance(node, nir.IF) and qcfs_staircase(node)]
        if model == "qcfs":
            assert not marked and abs(accuracy - data["ann"][model][0]) <= 0.01, model
        else:
            assert abs(accuracy - data["ann"][model][0]) <= 1.0 / len(split.test_y) + 1e-12, model
    report = (out / "report.md").read_text()
    assert "## Targets" in report and "not applicable" in report
    # a second run refuses to overwrite the report folder
    assert main(["demo", "--quick", "--seeds", "1", "--benchmark", "digits", "--out", str(out)]) == 2


def _m1d_results(default_t2: float) -> Results:
    res = Results((1, 2, 4, 8), [0, 1])
    for model in ("m1d-cnn-qcfs", "m1d-cnn-relu"):
        res.ann[model] = [0.97, 0.97]
        res.benchmark_of[model] = "mnist1d"
        for method, per_t in (("half", {1: 0.3, 2: 0.7, 4: 0.9, 8: 0.95}),
                              ("weights", {2: default_t2, 4: 0.968, 8: 0.969}),
                              ("default", {1: 0.5, 2: default_t2, 4: 0.968, 8: 0.969})):
            for _ in range(2):
                res.add("accuracy", model, method, per_t)
    for _ in range(2):
        res.add("accuracy", "m1d-cnn-relu", "SJ ann2snn 99.9% channel, half-thr", {1: 0.4, 2: 0.75, 4: 0.9, 8: 0.96})
    return res


def test_mnist1d_targets_and_headline():
    from app.demo_report import headline

    good = {t.text: t for t in check_targets(_m1d_results(0.96))}
    assert good["m1d-cnn-qcfs: default export T=2 within 2.0 pt of the ANN"].passed
    assert good["m1d-cnn-relu: default export T=8 within 0.5 pt of the ANN"].passed
    assert good["m1d-cnn-relu: bridge's best beats SJ ann2snn's best at every T in 1..8"].passed
    assert good["m1d-cnn-qcfs: default export within 0.5 pt of bridge's best at every T"].passed
    bad = {t.text: t for t in check_targets(_m1d_results(0.90))}
    assert not bad["m1d-cnn-qcfs: default export T=2 within 2.0 pt of the ANN"].passed
    assert not bad["m1d-cnn-relu: default export T=2 within 6.0 pt of the ANN"].passed
    assert "7.00 pt below ANN" in bad["m1d-cnn-relu: default export T=2 within 6.0 pt of the ANN"].detail
    res = _m1d_results(0.96)
    assert headline(res, "m1d-cnn-qcfs") == 2 and headline(res, "m1d-cnn-qcfs", "half") is None


@pytest.mark.slow
def test_demo_mnist1d_path_end_to_end_on_a_reduced_config(tmp_path):
    """Train, convert, calibrate (every stage), export + validate and report on MNIST-1D, small."""
    from app.demo import DemoConfig, run_demo
    from app.demo_report import summary_line, write_report

    cfg = DemoConfig(tmp_path / "m1d", seeds=1, quick=True, steps=(1, 2, 4), calibration_samples=96,
                     epochs_scale=0.25, sj_settings=sj.SETTINGS[-1:], benchmarks=("mnist1d",),
                     mnist1d_seeds=1, pipeline_steps={"mnist1d": (2,)}, joint_iterations=4, any_t=False)
    res = run_demo(cfg)
    write_report(res, cfg, cfg.out)
    assert set(res.ann) == {"m1d-cnn-qcfs", "m1d-cnn-relu", "m1d-res-qcfs", "m1d-res-relu"}
    for model in res.ann:
        acc = res.accuracy[model]
        # the default stages for T = 2 (bridge.passes.pipeline.default_stages): no bias correction
        assert {"half", "optimized", "joint", "weights", "default"} <= set(acc)
        assert "bias" not in acc
        # the last stage's row is the best graph so far: what the pipeline returns
        assert acc["default"][2][0] == acc["weights"][2][0]
        assert res.calibration[model]["2"][0]["chosen"] in ("half", "optimized", "bias", "joint", "weights")
        for b in res.validation[model]["backends"].values():  # calibrated graphs export exactly
            assert b["status"] == "ok" and b["unexplained"] == 0
    assert any(m.startswith("SJ ") for m in res.accuracy["m1d-cnn-relu"])
    report = (tmp_path / "m1d" / "report.md").read_text()
    assert "## Headline" in report and "## Calibration cost" in report and "targets:" in summary_line(res)


def test_float32_sweep_predicts_like_the_float64_reference():
    """The demo's accuracy sweeps run in float32 (speed); their predictions must be the float64
    reference's at every T, up to rare rounding ties (float32, windows of 4 steps per conv)."""
    from bridge.converter import convert
    from bridge.reference import simulate

    split = digits_split(1)
    trained = train_model(DigitsCNN("clip", channels=(4, 8), hidden=16), split, epochs=3, seed=1)
    graph = convert(trained.model, (1, 16, 16), calibration=split.train_x[:64])
    x = split.test_x[:120]
    fast = simulate(graph, x, 8, dtype=torch.float32, time_chunk=4).running_readout
    exact = simulate(graph, x, 8).running_readout
    assert fast.dtype == torch.float32 and fast.shape == exact.shape
    torch.testing.assert_close(fast.double(), exact, rtol=1e-4, atol=1e-4)
    assert float((fast.argmax(-1) == exact.argmax(-1)).float().mean()) >= 0.99


@pytest.mark.slow
def test_demo_jobs_in_two_processes_give_the_numbers_of_one_process(tmp_path):
    """The (model, seed) jobs run in spawned worker processes (app.demo_workers) and their
    numbers, merged in job order, equal a one-process run's with the same torch threads."""
    from app.demo import DemoConfig, run_demo

    def config(name: str, workers: int) -> DemoConfig:
        return DemoConfig(tmp_path / name, seeds=1, quick=True, steps=(1, 2), calibration_samples=64,
                          epochs_scale=0.2, sj_settings=sj.SETTINGS[-1:], export_and_validate=False,
                          benchmarks=("mnist1d",), mnist1d_seeds=2, pipeline_steps={"mnist1d": (2,)},
                          joint_iterations=3, any_t=False, workers=workers, threads=1)

    one, two = run_demo(config("one", 1)), run_demo(config("two", 2))
    assert (one.workers, two.workers) == (1, 2)
    assert two.benchmark_seeds == {"mnist1d": [0, 1]}
    for table in ("ann", "accuracy", "agreement", "layers", "labels", "benchmark_of"):
        assert getattr(two, table) == getattr(one, table), table
    for model in two.ann:  # two seeds per model, in seed order
        assert len(two.ann[model]) == 2 and len(two.accuracy[model]["half"][1]) == 2
    assert [c["chosen"] for c in two.calibration["m1d-cnn-relu"]["2"]] == \
        [c["chosen"] for c in one.calibration["m1d-cnn-relu"]["2"]]
    assert set(two.stage_seconds) == set(one.stage_seconds)


def test_demo_config_counts_workers_and_threads(tmp_path):
    cfg = DemoConfig.make(tmp_path / "d", seeds=2, mnist1d_seeds=1, workers=3, threads=2)
    assert (cfg.workers, cfg.threads_per_worker()) == (3, 2)
    jobs = cfg.jobs()
    assert len(jobs) == 4 * 2 + 4 * 1
    assert [j.first for j in jobs if j.benchmark == "digits"] == [True] * 4 + [False] * 4
    assert DemoConfig.make(tmp_path / "d", seeds=1, benchmarks=("digits",)).workers <= 4
    with pytest.raises(BridgeError, match="--workers must be >= 1"):
        DemoConfig.make(tmp_path / "d", workers=0)


def test_a_failing_job_in_a_worker_stops_the_pool_and_raises_its_error(tmp_path):
    """The first job that fails in a worker process is raised in the parent (the pool is
    terminated, nothing hangs), with its own exception type and message."""
    from app.demo import DemoJob, _Progress
    from app.demo_workers import run_jobs_in_processes

    cfg = DemoConfig(tmp_path / "x", seeds=1, workers=2, threads=1)
    bad = DemoJob("digits", -1, "clip", True)  # scikit-learn refuses the negative split seed
    with pytest.raises(ValueError, match="random_state|[Ss]eed"):
        run_jobs_in_processes([bad, bad, bad], cfg, _Progress(None))
