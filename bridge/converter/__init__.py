"""Convert a trained PyTorch ANN into a NIR graph of IF neurons (the bridge encoding).

Pipeline (each step one module, each rule stated as math in its docstring)::

    nn.Module          --fx_frontend---+
    torch.export program --aten_frontend-+--> LayerGraph --fold--> LayerGraph (MaxPool policy,
                                                 BatchNorm folded) --thresholds/calibration-->
                                                 theta per neuron --build--> nir.NIRGraph

Both front-ends only read a layer's arguments and apply the rules of :mod:`~bridge.converter.rules`
(one rule per layer, activations recognised by the function they compute), so a module and its
``torch.export`` program convert to the same graph. :func:`convert` picks the front-end from what
it is given: an ``nn.Module``, an ``ExportedProgram``, a model file (a ``.pt2`` program, read by
:func:`bridge.model.loading.load_model`) or a :class:`~bridge.model.loading.LoadedModel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import nir
import torch
from torch import nn

from bridge.converter.build import build_nir
from bridge.converter.fold import check_finite, fold_batchnorm, replace_maxpool
from bridge.converter.fx_frontend import trace_module
from bridge.converter.ir import LayerGraph
from bridge.converter.ir_eval import shapes as op_shapes
from bridge.converter.options import ConversionOptions
from bridge.converter.thresholds import compute_thresholds
from bridge.format.errors import BridgeError

__all__ = ["convert", "convert_layer_graph", "trace_module", "read_model", "prepare", "LayerGraph",
           "ConversionOptions", "resolve_input_shape"]


_NOT_GIVEN: Any = object()  # a keyword option left out (None is a value: timesteps=None)


def _options(options: ConversionOptions | None, overrides: dict[str, Any]) -> ConversionOptions:
    """``options`` with keyword overrides, checked once (``ConversionOptions.__post_init__``)."""
    if options is not None and not isinstance(options, ConversionOptions):
        raise BridgeError(f"options must be a bridge.converter.ConversionOptions, got {type(options).__name__}")
    given = {k: v for k, v in overrides.items() if v is not _NOT_GIVEN}
    if options is None:
        return ConversionOptions(**given)
    return replace(options, **given) if given else options  # already checked when it was made


def prepare(layer_graph: LayerGraph, *, maxpool: str = "error") -> LayerGraph:
    """Checked, max-pool-policy-applied, BatchNorm-folded copy of ``layer_graph``."""
    check_finite(layer_graph)
    return fold_batchnorm(replace_maxpool(layer_graph, maxpool))


def convert_layer_graph(layer_graph: LayerGraph, *, calibration: Any = None,
                        options: ConversionOptions | None = None, **overrides: Any) -> nir.NIRGraph:
    """A LayerGraph (from any front-end) -> NIR graph; options as in :func:`convert`."""
    opts = _options(options, overrides)
    graph = prepare(layer_graph, maxpool=opts.maxpool)
    shapes = op_shapes(graph)
    theta = compute_thresholds(graph, opts.thresholds, channel_wise=opts.channel_wise, calibration=calibration,
                               shapes=shapes)
    return build_nir(graph, theta, v_init=opts.v_init, timesteps=opts.timesteps, shapes=shapes,
                     weight_dtype=opts.weight_dtype(layer_graph.model_dtype))


def read_model(model: Any, input_shape: Sequence[int] | None = None) -> LayerGraph:
    """The layer graph of ``model``, through the front-end that reads it.

    ``nn.Module`` -> torch.fx (needs ``input_shape``); ``torch.export.ExportedProgram`` -> the ATen
    front-end (``input_shape``, if given, must be the program's); a path -> the file's content
    decides (:func:`bridge.model.loading.load_model`, safe loading: a ``.pt2`` program, a
    TorchScript archive); a :class:`~bridge.model.loading.LoadedModel` -> its module or program.
    """
    from bridge.model.loading import LoadedModel, load_model

    if isinstance(model, (str, Path)):
        model = load_model(model)
    if isinstance(model, LoadedModel):
        if model.module is not None:
            model = model.module
        else:
            shape = resolve_input_shape(model.input_shape, input_shape, str(model.path))
            model = model.exported_program(shape)
    if isinstance(model, nn.Module):
        if input_shape is None:
            raise BridgeError("the input shape of the model is unknown; pass input_shape (one sample without "
                              "batch, e.g. input_shape=(1, 16, 16) / --input-shape 1,16,16)")
        return trace_module(model, input_shape)
    if isinstance(model, torch.export.ExportedProgram):
        from bridge.converter.aten_frontend import exported_to_layer_graph

        graph = exported_to_layer_graph(model)
        resolve_input_shape(graph.input.shape, input_shape, "the program")
        return graph
    raise BridgeError(f"cannot convert a {type(model).__name__}; give an nn.Module, a torch.export "
                      "ExportedProgram or the path of a model file (.pt2)")


def resolve_input_shape(own: Sequence[int] | None, given: Sequence[int] | None, what: str) -> tuple[int, ...]:
    """One sample's shape: a program's ``own`` (its example input) or the ``given`` one; both
    must agree where both are known."""
    if given is not None and own is not None and tuple(given) != tuple(own):
        raise BridgeError(f"{what} was exported for input shape {list(own)}, not {list(given)}; drop "
                          "--input-shape / input_shape or export the program again for that shape")
    shape = own if own is not None else given
    if shape is None:
        raise BridgeError(f"the input shape of {what} is unknown; pass --input-shape / input_shape "
                          "(one sample without batch, e.g. 1,16,16)")
    return tuple(int(s) for s in shape)


def convert(
    model: Any,
    input_shape: Sequence[int] | None = None,
    *,
    calibration: Any = None,
    options: ConversionOptions | None = None,
    thresholds: str = _NOT_GIVEN,
    channel_wise: bool = _NOT_GIVEN,
    v_init: str | float = _NOT_GIVEN,
    maxpool: str = _NOT_GIVEN,
    timesteps: int | None = _NOT_GIVEN,
    weights: str = _NOT_GIVEN,
) -> nir.NIRGraph:
    """Convert ``model`` (one sample of shape ``input_shape``, no batch) to a bridge NIR graph.

    ``model``: an ``nn.Module``, a ``torch.export.ExportedProgram``, the path of a model file
    (``.pt2``; the content decides, see :func:`read_model`) or a loaded model. ``input_shape`` is
    needed for modules; programs carry their own. Options (a :class:`ConversionOptions`, or the
    same fields as keywords, which override it): ``thresholds``: ``"auto"`` (trained bound, else
    ``p99.99`` on ``calibration``), ``"trained"``, ``"max"``, ``"p99.9"``, ``"p99.99"`` or any
    ``"p<float>"``; ``channel_wise`` takes calibrated thresholds per output channel; ``v_init``:
    ``"half"`` (theta/2), ``"zero"`` or a fraction of theta in [0, 1); ``maxpool``: ``"error"`` or
    ``"avg"`` (replace, with a warning); ``timesteps`` is recorded in the graph metadata;
    ``weights``: the precision of conv / affine weights in the graph, ``"model"`` (default: float32
    for a float32 model, float64 for a float64 one), ``"float32"`` or ``"float64"``.
    ``calibration``: a tensor ``(N, *input_shape)`` or an iterable of tensors / ``(x, y)`` batches.
    A module is put in eval mode. Raises BridgeError on bad input (options are checked first).
    """
    opts = _options(options, {"thresholds": thresholds, "channel_wise": channel_wise, "v_init": v_init,
                              "maxpool": maxpool, "timesteps": timesteps, "weights": weights})
    return convert_layer_graph(read_model(model, input_shape), calibration=calibration, options=opts)
