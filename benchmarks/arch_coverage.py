"""Which architecture families convert, under which options, and why the others do not.

Each model of the repo's zoo (``tests/zoo_imagenet.py``: the published layer specifications
at tiny widths, deterministic weights, ReLU-family activations) goes through both front-ends:

* **module**: ``bridge.converter.convert(model, input_shape, ...)`` (torch.fx);
* **export**: ``torch.export.export(model, (x,))`` -> ``exported_to_layer_graph`` ->
  ``convert_layer_graph`` (the ATen front-end, the path of ``.pt2`` files).

Thresholds are the per-layer ``max`` of 8 random inputs, so on those inputs the graph's ANN
view must reproduce the ANN exactly; options are tried in order: none, then
``maxpool="avg"`` (max pools become average pools: the ANN is then the model with that
change, and the view is compared with it). Where both paths convert, their NIR graphs are
compared (node names, edges and every array to 1e-12: tests/test_frontend_parity.py). The table goes to stdout and,
with ``--write``, into docs/model-families.md between the coverage markers.

    python benchmarks/arch_coverage.py --write
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nir  # noqa: E402
import torch  # noqa: E402

from bridge.converter import convert_layer_graph, prepare, trace_module  # noqa: E402
from bridge.converter.aten_frontend import exported_to_layer_graph  # noqa: E402
from bridge.converter.ir_eval import evaluate  # noqa: E402
from bridge.format.errors import BridgeError  # noqa: E402
from bridge.reference import ann_view  # noqa: E402
from tests import zoo_imagenet as zoo  # noqa: E402
from tests.test_frontend_parity import assert_same_nir  # noqa: E402

BEGIN, END = "<!-- coverage:begin -->", "<!-- coverage:end -->"
OPTIONS = ({}, {"maxpool": "avg"})


@dataclass
class Case:
    family: str
    build: Callable[[], tuple[torch.nn.Module, tuple[int, ...]]]
    note: str = ""


CASES = [
    Case("ResNet-18", lambda: zoo.resnet18(16, 224), "ImageNet layout, 3x224x224"),
    Case("ResNet-34", lambda: zoo.resnet34(16, 224), "ImageNet layout, 3x224x224"),
    Case("ResNet-50 (bottleneck)", lambda: zoo.resnet50(16, 224), "ImageNet layout, 3x224x224"),
    Case("VGG-11-BN", lambda: zoo.vgg11_bn(16, 224), "ImageNet layout, 3x224x224 (7x7 before the pool)"),
    Case("VGG-16-BN", lambda: zoo.vgg16_bn(16, 224), "ImageNet layout, 3x224x224"),
    Case("VGG-16-BN", lambda: zoo.vgg16_bn(16, 32), "ImageNet layout on 3x32x32 (1x1 -> 7x7 pool)"),
    Case("VGG-11-BN", lambda: zoo.vgg11_bn(16, 100), "ImageNet layout on 3x100x100 (3x3 -> 7x7 pool, overlapping)"),
    Case("MobileNetV2", lambda: zoo.mobilenet_v2(8, 224), "ImageNet layout, 3x224x224"),
    Case("AlexNet", lambda: zoo.alexnet(16, 224), "ImageNet layout, 3x224x224"),
    Case("AlexNet", lambda: zoo.alexnet(16, 64), "ImageNet layout on 3x64x64 (1x1 -> 6x6 pool)"),
    Case("MobileNet (v1)", zoo.mobilenet_v1, "CIFAR layout"),
    Case("PreAct-ResNet", zoo.preact_resnet, "CIFAR layout, BN on the sum"),
    Case("RegNetX", zoo.regnetx, "CIFAR layout, grouped 3x3"),
    Case("DenseNet-BC", zoo.densenet, "CIFAR layout"),
    Case("GoogLeNet (Inception v1)", zoo.googlenet, "CIFAR layout"),
    Case("ShuffleNetV2", zoo.shufflenet_v2, "CIFAR layout"),
    Case("DLA", zoo.dla, "CIFAR layout"),
    Case("DPN", zoo.dpn, "CIFAR layout"),
]


def reason(error: Exception) -> str:
    """The error without paths and source lines: the op and why."""
    text = str(error).splitlines()[0]
    text = re.sub(r" at \S+\.py:\d+ \(.*?\)(?=: )", "", text)
    what, _, why = text.partition("): ")
    text = f"{what}): {why.split(';')[0]}" if why else what
    return text.replace("|", "\\|")


def try_paths(model: torch.nn.Module, shape: tuple[int, ...], x: torch.Tensor) -> dict:
    """Both front-ends under each option set; the first option set that converts wins."""
    out: dict = {}
    for path in ("module", "export"):
        errors = []
        for opts in OPTIONS:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if path == "module":
                        layer_graph = trace_module(model, shape)
                    else:
                        layer_graph = exported_to_layer_graph(torch.export.export(model, (x,)))
                    graph = convert_layer_graph(layer_graph, thresholds="max", calibration=x, **opts)
                    ann = model(x) if not opts else evaluate(prepare(layer_graph, **opts), x)
                out[path] = {"graph": graph, "opts": opts, "ann": ann}
                break
            except (BridgeError, torch._dynamo.exc.Unsupported, RuntimeError) as e:  # noqa: SLF001
                errors.append(reason(e))
        else:
            out[path] = {"error": errors[-1] if len(set(errors)) == 1 else " / ".join(dict.fromkeys(errors))}
    return out


def row(case: Case) -> tuple[str, ...]:
    model, shape = case.build()
    x = torch.rand((8, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = model.double()
    start = time.perf_counter()
    with torch.no_grad():
        res = try_paths(model, shape, x)
    seconds = time.perf_counter() - start
    marks, opts, errs, err_view = [], set(), [], []
    for path in ("module", "export"):
        r = res[path]
        if "graph" in r:
            marks.append(f"{path} yes")
            opts.add(", ".join(f"{k}={v!r}" for k, v in r["opts"].items()) or "none")
            with torch.no_grad():
                err_view.append((ann_view(r["graph"], x) - r["ann"]).abs().max().item())
        else:
            marks.append(f"{path} no")
            errs.append(f"{path}: {r['error']}")
    same = ""
    if "graph" in res["module"] and "graph" in res["export"]:
        g1, g2 = res["module"]["graph"], res["export"]["graph"]
        try:
            assert_same_nir(g1, g2)  # node names, edges, every array to 1e-12
            same = "yes"
        except AssertionError:
            same = "no"
    converts = "yes" if not errs else ("partly" if err_view else "no")
    return (case.family, case.note, converts, "; ".join(marks), " / ".join(sorted(opts)) or "-", same or "-",
            f"{max(err_view):.1e}" if err_view else "-", "; ".join(errs) or "-", f"{seconds:.1f}")


HEADER = ("family", "model", "converts", "paths", "options needed", "same NIR", "max \\|ANN view - ANN\\|",
          "why not", "s")


def table(rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the table in docs/model-families.md")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for case in CASES:
        rows.append(row(case))
        print(" | ".join(rows[-1]), file=sys.stderr)
    text = table(rows)
    print(text)
    if args.write:
        doc = ROOT / "docs" / "model-families.md"
        body = doc.read_text()
        if BEGIN not in body or END not in body:
            raise SystemExit(f"{doc} has no {BEGIN} ... {END} section to replace")
        head, rest = body.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        doc.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
        print(f"wrote {doc.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
