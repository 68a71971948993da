"""Adaptive average pooling to any output size, exactly as PyTorch computes it.

The front-ends hand over only divisible adaptive pools today (as AvgPoolOp); these tests
build the layer graph with an :class:`AdaptiveAvgPoolOp` directly, the op the front-ends
will emit, and check the lowering (bridge.converter.adaptive_pool) end to end: windows,
the NIR form chosen, the ANN view against torch in float64, and the reference against
both exports per step.
"""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bridge.converter import convert_layer_graph
from bridge.converter.adaptive_pool import (
    adaptive_pool_as_avgpool,
    adaptive_pool_matrix,
    adaptive_windows,
)
from bridge.converter.ir import (
    ActivationOp,
    AdaptiveAvgPoolOp,
    ConvOp,
    FlattenOp,
    InputOp,
    LayerGraph,
    LinearOp,
    OutputOp,
)
from bridge.converter.ir_eval import evaluate
from bridge.format.errors import BridgeError
from bridge.format.nirio import read_graph, write_graph
from bridge.reference import ann_view, simulate
from tests.backend_checks import assert_exports_agree_per_step


@pytest.mark.parametrize("size", range(1, 16))
def test_windows_and_matrix_are_torchs(size: int) -> None:
    """Every output size 1..10 from every input size 1..15 (overlapping windows included)."""
    g = torch.Generator().manual_seed(size)
    for out in range(1, 11):
        x = torch.randn(2, 3, size, size + 2, dtype=torch.float64, generator=g)
        want = F.adaptive_avg_pool2d(x, (out, out + 1))
        p = torch.from_numpy(adaptive_pool_matrix((3, size, size + 2), (out, out + 1)))
        got = (x.reshape(2, -1) @ p.T).reshape(want.shape)
        assert torch.allclose(got, want, rtol=0, atol=1e-13), (size, out)
        pool = adaptive_pool_as_avgpool((size, size + 2), (out, out + 1))
        if pool is not None:  # where an AvgPool2d is claimed, it is the same map
            assert torch.allclose(F.avg_pool2d(x, pool[0], pool[1]), want, rtol=0, atol=1e-13)


def test_which_sizes_are_one_avgpool() -> None:
    assert adaptive_windows(8, 7) == [(0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7), (6, 8)]
    assert adaptive_pool_as_avgpool((8, 14), (7, 7)) == ((2, 2), (1, 2))
    assert adaptive_pool_as_avgpool((5, 5), (1, 1)) == ((5, 5), (5, 5))
    assert adaptive_pool_as_avgpool((10, 10), (7, 7)) is None  # lengths 2 and 3
    assert adaptive_pool_as_avgpool((1, 1), (6, 6)) is None  # a 1x1 map spread to 6x6


def _net(in_hw: tuple[int, int], out_hw: tuple[int, int], head: str, seed: int = 0) -> tuple[LayerGraph, torch.nn.Module]:
    """conv 3->4 (3x3, pad 1), ReLU, adaptive pool, then a flatten + linear head or a 1x1 conv
    + ReLU + flatten + linear head; as a LayerGraph and as the torch model it describes."""
    g = torch.Generator().manual_seed(seed)
    w1, b1 = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64) * 0.4, torch.randn(4, generator=g, dtype=torch.float64) * 0.1
    feat = 4 * out_hw[0] * out_hw[1]
    graph = LayerGraph()
    graph.add(InputOp("x", [], shape=(3, *in_hw)))
    graph.add(ConvOp("conv1", ["x"], weight=w1, bias=b1, stride=(1, 1), padding=(1, 1), dilation=(1, 1)))
    graph.add(ActivationOp("act1", ["conv1"], kind="relu"))
    graph.add(AdaptiveAvgPoolOp("pool", ["act1"], output_size=out_hw))
    last = "pool"
    w3 = None
    if head == "conv":
        w3 = torch.randn(5, 4, 1, 1, generator=g, dtype=torch.float64) * 0.5
        graph.add(ConvOp("conv2", ["pool"], weight=w3, bias=torch.zeros(5, dtype=torch.float64), stride=(1, 1),
                         padding=(0, 0), dilation=(1, 1)))
        graph.add(ActivationOp("act2", ["conv2"], kind="relu"))
        last, feat = "act2", 5 * out_hw[0] * out_hw[1]
    w2, b2 = torch.randn(6, feat, generator=g, dtype=torch.float64) * 0.3, torch.randn(6, generator=g, dtype=torch.float64)
    graph.add(FlattenOp("flat", [last]))
    graph.add(LinearOp("fc", ["flat"], weight=w2, bias=b2))
    graph.add(OutputOp("out", ["fc"]))

    class Model(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.adaptive_avg_pool2d(torch.relu(F.conv2d(x, w1, b1, 1, 1)), out_hw)
            if w3 is not None:
                y = torch.relu(F.conv2d(y, w3))
            return F.linear(torch.flatten(y, 1), w2, b2)

    return graph, Model()


CASES = [((9, 9), (7, 7), "flat"), ((10, 13), (7, 6), "flat"), ((1, 1), (6, 6), "flat"),
         ((8, 8), (7, 7), "conv"), ((12, 12), (4, 3), "conv")]


@pytest.mark.parametrize("in_hw, out_hw, head", CASES)
def test_ann_view_matches_torch(in_hw, out_hw, head, tmp_path) -> None:
    layer_graph, model = _net(in_hw, out_hw, head)
    x = torch.randn(16, 3, *in_hw, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(evaluate(layer_graph, x), model(x), rtol=0, atol=1e-12)  # the IR op itself
    graph = read_graph(write_graph(convert_layer_graph(layer_graph, thresholds="max", calibration=x, weights="float64"),
                                   tmp_path / "g.nir"))
    kinds = {type(n) for n in graph.nodes.values()}
    divisible_or_uniform = adaptive_pool_as_avgpool(in_hw, out_hw) is not None
    assert (nir.AvgPool2d in kinds) == divisible_or_uniform
    assert (nir.Affine in kinds and nir.Flatten in kinds)
    if not divisible_or_uniform:  # the pool is Flatten + Affine and the model's flatten writes nothing
        assert sum(isinstance(n, nir.Flatten) for n in graph.nodes.values()) == 1
        assert graph.nodes["pool"].weight.shape == (4 * out_hw[0] * out_hw[1], 4 * in_hw[0] * in_hw[1])
    # thresholds = the max over x: on x itself the ANN view is the ANN
    got = ann_view(graph, x)
    assert torch.allclose(got, model(x), rtol=0, atol=1e-5)
    assert (got - model(x)).abs().max().item() < 1e-12


@pytest.mark.parametrize("in_hw, out_hw, head", [CASES[0], CASES[3]])
def test_reference_and_exports_agree_per_step(in_hw, out_hw, head) -> None:
    layer_graph, _ = _net(in_hw, out_hw, head, seed=2)
    x = torch.randn(3, 3, *in_hw, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    graph = convert_layer_graph(layer_graph, thresholds="max", calibration=x)
    ref = simulate(graph, x, 16, trace=True)
    assert all(tr.spikes.any() for tr in ref.traces.values())
    assert_exports_agree_per_step(graph, x, 16, ref)


def test_uneven_windows_not_followed_by_a_flatten_are_refused() -> None:
    layer_graph, _ = _net((10, 10), (7, 7), "conv")
    x = torch.randn(4, 3, 10, 10, dtype=torch.float64)
    with pytest.raises(BridgeError, match="windows of different sizes.*flatten its output next"):
        convert_layer_graph(layer_graph, thresholds="max", calibration=x)


def test_a_huge_affine_is_refused_before_it_is_built() -> None:
    with pytest.raises(BridgeError, match="would be an Affine of"):
        adaptive_pool_matrix((512, 13, 13), (7, 7))
    assert np.count_nonzero(adaptive_pool_matrix((2, 3, 3), (2, 2))) == 2 * 4 * 4
