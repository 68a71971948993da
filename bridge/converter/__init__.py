"""Convert a trained PyTorch ANN into a NIR graph of IF neurons (the bridge encoding).

Pipeline (each step one module, each rule stated as math in its docstring)::

    nn.Module --fx_frontend--> LayerGraph --fold--> LayerGraph (BatchNorm folded, MaxPool policy)
              --thresholds/calibration--> theta per neuron --build--> nir.NIRGraph

The torch.export front-end (``aten_frontend``) produces the same LayerGraph and calls
:func:`convert_layer_graph`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nir
from torch import nn

from bridge.converter.build import build_nir, v_init_fraction, _check_timesteps
from bridge.converter.ir_eval import shapes as op_shapes
from bridge.converter.fold import check_finite, fold_batchnorm, replace_maxpool
from bridge.converter.fx_frontend import trace_module
from bridge.converter.ir import LayerGraph
from bridge.converter.thresholds import _validate_source, compute_thresholds

__all__ = ["convert", "convert_layer_graph", "trace_module", "prepare", "LayerGraph"]


def _check_options(thresholds: str, v_init: str | float, maxpool: str, timesteps: int | None) -> None:
    """Refuse bad options before any work is done."""
    _validate_source(thresholds)
    v_init_fraction(v_init)
    if maxpool not in ("error", "avg"):
        from bridge.format.errors import BridgeError

        raise BridgeError(f"unknown maxpool policy {maxpool!r}; use 'error' or 'avg'")
    _check_timesteps(timesteps)


def prepare(layer_graph: LayerGraph, *, maxpool: str = "error") -> LayerGraph:
    """Checked, max-pool-policy-applied, BatchNorm-folded copy of ``layer_graph``."""
    check_finite(layer_graph)
    return fold_batchnorm(replace_maxpool(layer_graph, maxpool))


def convert_layer_graph(
    layer_graph: LayerGraph,
    *,
    thresholds: str = "auto",
    channel_wise: bool = False,
    calibration: Any = None,
    v_init: str | float = "half",
    maxpool: str = "error",
    timesteps: int | None = None,
) -> nir.NIRGraph:
    """A LayerGraph (from any front-end) -> NIR graph; options as in :func:`convert`."""
    _check_options(thresholds, v_init, maxpool, timesteps)
    graph = prepare(layer_graph, maxpool=maxpool)
    shapes = op_shapes(graph)
    theta = compute_thresholds(graph, thresholds, channel_wise=channel_wise, calibration=calibration,
                               shapes=shapes)
    return build_nir(graph, theta, v_init=v_init, timesteps=timesteps, shapes=shapes)


def convert(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    thresholds: str = "auto",
    channel_wise: bool = False,
    calibration: Any = None,
    v_init: str | float = "half",
    maxpool: str = "error",
    timesteps: int | None = None,
) -> nir.NIRGraph:
    """Convert ``model`` (one sample of shape ``input_shape``, no batch) to a bridge NIR graph.

    ``thresholds``: ``"auto"`` (trained bound, else ``p99.99`` on ``calibration``), ``"trained"``,
    ``"max"``, ``"p99.9"``, ``"p99.99"`` or any ``"p<float>"``; ``channel_wise`` takes calibrated
    thresholds per output channel. ``calibration``: a tensor ``(N, *input_shape)`` or an iterable of
    tensors / ``(x, y)`` batches. ``v_init``: ``"half"`` (theta/2), ``"zero"`` or a fraction of theta
    in [0, 1). ``maxpool``: ``"error"`` or ``"avg"`` (replace, with a warning). ``timesteps`` is
    recorded in the graph metadata. The model is put in eval mode. Raises BridgeError on bad input.
    """
    _check_options(thresholds, v_init, maxpool, timesteps)
    return convert_layer_graph(
        trace_module(model, input_shape), thresholds=thresholds, channel_wise=channel_wise,
        calibration=calibration, v_init=v_init, maxpool=maxpool, timesteps=timesteps)
