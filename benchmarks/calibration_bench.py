"""Calibration pipeline: test accuracy vs T and calibration time per stage, per model (MNIST-1D).

For each model (1D CNN and residual 1D net, QCFS and plain ReLU; trained here with a fixed seed)
and each T, the pipeline runs on training signals only, through the conversion workflow
(:func:`bridge.workflow.run.calibrate_graph`: what ``bridge export --calibration --timesteps T`` runs);
the script prints, per stage, the test accuracy of the best graph so far, the stage's own time,
and the held-out error it reached; the baseline measured in the same run is theta/2 (the
converted graph, no calibration), and the cost is also given as a ratio to one float32 sweep
of the test set at that T (the time the user pays to evaluate once).

    python benchmarks/calibration_bench.py                      # all models, T = 1, 2, 4, 8
    python benchmarks/calibration_bench.py --models cnn-relu --steps 2,4 --samples 1024
    python benchmarks/calibration_bench.py --threads 1 --json out.json

On a machine shared with other jobs the times vary; compare the ratios of the same run.
"""

from __future__ import annotations

import argparse
import json
import time

MODELS = {
    "cnn-qcfs": ("SignalCNN", "qcfs"),
    "cnn-relu": ("SignalCNN", "relu"),
    "res-qcfs": ("SignalResNet", "qcfs"),
    "res-relu": ("SignalResNet", "relu"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", default="1,2,4,8")
    parser.add_argument("--samples", type=int, default=512, help="calibration signals (training split)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=80, help="joint-fit iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from bridge.data.mnist1d import INPUT_SHAPE, mnist1d_split
    from bridge.model import train
    from bridge.passes.pipeline import STAGE_LABELS
    from bridge.workflow import ConversionPlan, WorkflowReport, run_plan
    from bridge.workflow.run import calibrate_graph
    from validation.evaluation import evaluate_graph

    split = mnist1d_split()
    x, y = split.test_x, split.test_y
    cal = split.train_x[:args.samples]
    steps = [int(s) for s in args.steps.split(",")]
    results: dict = {}
    for key in args.models.split(","):
        cls_name, act = MODELS[key]
        model = getattr(train, cls_name)(act, levels=4)
        trained = train.train_model(model, split, epochs=args.epochs, seed=args.seed)
        # theta/2, thresholds as `bridge export --calibration` converts before its pipeline
        graph = run_plan(trained.model, ConversionPlan(v_init="half", calibration=cal, calibration_samples=len(cal),
                                                       channel_wise=act == "relu"), INPUT_SHAPE).graph
        print(f"\n{key}: ANN {100 * trained.ann_accuracy:.2f}% (trained in {trained.seconds:.0f} s)")
        print(f"{'T':>3} {'stage':<28} {'test %':>7} {'gap pt':>7} {'stage s':>8} {'x sweep':>8} {'held-out err':>12}")
        results[key] = {"ann": trained.ann_accuracy, "per_T": {}}
        for t in steps:
            t0 = time.perf_counter()
            base = evaluate_graph(graph, x, y, [t], batch_size=len(x), ann=False, count_spikes=False).accuracy[t]
            sweep_s = time.perf_counter() - t0
            plan = ConversionPlan(calibration=cal, calibration_samples=len(cal), timesteps=t, iterations=args.iterations)
            report, stages = WorkflowReport(INPUT_SHAPE, plan.describe()), {}
            calibrate_graph(graph, plan, cal, report, stage_graphs=stages)
            rep = report.calibration
            rows = []
            for st in rep.stages:
                acc = base if st.name == "half" else \
                    evaluate_graph(stages[st.name], x, y, [t], batch_size=len(x), ann=False,
                                   count_spikes=False).accuracy[t]
                rows.append({"stage": st.name, "accuracy": acc, "seconds": st.seconds,
                             "heldout_error": st.heldout_error, "kept": st.kept})
                print(f"{t:>3} {STAGE_LABELS[st.name]:<28} {100 * acc:7.2f} "
                      f"{100 * (trained.ann_accuracy - acc):7.2f} {st.seconds:8.1f} "
                      f"{st.seconds / max(sweep_s, 1e-9):8.1f} {st.heldout_error:12.4g}{'' if st.kept else ' (dropped)'}")
            print(f"{t:>3} chosen: {rep.chosen}; total {rep.seconds:.1f} s = {rep.seconds / max(sweep_s, 1e-9):.1f} "
                  f"test sweeps; {rep.images} images ({rep.heldout} held out)")
            results[key]["per_T"][t] = {"stages": rows, "chosen": rep.chosen, "seconds": rep.seconds,
                                        "sweep_seconds": sweep_s, "theta_half": base}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
