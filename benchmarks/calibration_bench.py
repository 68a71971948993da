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

``--cost`` times the pipeline (default stages for T) against ONE T-step reference simulation
(float32) of the same calibration set in the same run and prints the ratio (issue #18, item 3):

    python benchmarks/calibration_bench.py --cost digits-cnn            # 256 digits, T=4
    python benchmarks/calibration_bench.py --cost resnet18 --threads 1  # CIFAR ResNet-18, 256 random images
    python benchmarks/calibration_bench.py --cost digits-cnn --cost-stages half  # one candidate

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
    parser.add_argument("--cost", default=None, metavar="MODELS",
                        help="cost mode: comma-separated digits-cnn, resnet18 (see the docstring)")
    parser.add_argument("--cost-samples", type=int, default=256)
    parser.add_argument("--cost-steps", type=int, default=4)
    parser.add_argument("--cost-stages", default=None, help="comma-separated stages (default: the default for T)")
    parser.add_argument("--cost-epochs", type=int, default=10, help="training epochs of the digits CNN")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.cost:
        cost(args)
        return
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


def _cost_model(key: str, samples: int, epochs: int):
    """(graph, calibration images): the trained digits CNN on digits training images, or a
    randomly initialised CIFAR ResNet-18 on random images (the cost does not depend on them)."""
    import torch

    from bridge.converter import convert

    if key == "digits-cnn":
        from bridge.data.datasets import digits_split
        from bridge.model import train

        split = digits_split()
        trained = train.train_model(train.DigitsCNN("clip"), split, epochs=epochs, seed=0)
        cal = split.train_x[:samples]
        print(f"digits CNN: {sum(p.numel() for p in trained.model.parameters())} parameters, "
              f"ANN {100 * trained.ann_accuracy:.2f}%")
        return convert(trained.model, tuple(cal.shape[1:]), calibration=cal), cal
    if key == "resnet18":
        from recipes.models import resnet18

        torch.manual_seed(0)
        model, shape = resnet18()
        cal = torch.rand(samples, *shape, generator=torch.Generator().manual_seed(0))
        print(f"ResNet-18: {sum(p.numel() for p in model.parameters())} parameters, random weights and images")
        return convert(model.eval(), shape), cal
    raise SystemExit(f"unknown cost model {key!r}; choose digits-cnn, resnet18")


def cost(args: argparse.Namespace) -> None:
    """Pipeline seconds vs one T-step simulation of the calibration set, same run."""
    import torch

    from bridge.passes.pipeline import CalibrationReport, calibrate
    from bridge.reference import simulate

    t = args.cost_steps
    stages = None if args.cost_stages is None else tuple(args.cost_stages.split(","))
    for key in args.cost.split(","):
        graph, cal = _cost_model(key, args.cost_samples, args.cost_epochs)
        t0 = time.perf_counter()
        simulate(graph, cal, t, dtype=torch.float32)
        sweep = time.perf_counter() - t0
        rep = CalibrationReport(t)
        t0 = time.perf_counter()
        calibrate(graph, cal, t, report=rep, stages=stages)
        total = time.perf_counter() - t0
        print(f"{key}: {len(cal)} images, T={t}, {args.threads} thread(s): one simulation {sweep:.2f} s; "
              f"pipeline {total:.1f} s = {total / sweep:.1f}x one simulation")
        for st in rep.stages:
            print(f"  {st.name:<10} {st.seconds:8.2f} s  {st.seconds / sweep:7.1f}x  images {getattr(st, 'images', 0):>4}  "
                  f"held-out error {st.heldout_error:.4g}{'' if st.kept else ' (dropped)'}")
        print("  " + rep.summary())


if __name__ == "__main__":
    main()
