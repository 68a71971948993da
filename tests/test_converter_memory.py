"""The converter holds an ImageNet model once: the layer graph refers to the model's own weights,
the builder scales and rounds them block by block, the NIR graph owns its arrays, and writing a
graph makes no copies of them (the numbers: benchmarks/convert_bench.py)."""

from __future__ import annotations

import io

import nir
import numpy as np
import torch

from bridge.converter import build, convert, prepare, trace_module
from bridge.converter.ir import ConvOp, LinearOp
from bridge.format import nirio
from tests import zoo


def test_the_layer_graph_refers_to_the_models_own_weights():
    model, shape = zoo.vgg_bn()
    layers = trace_module(model, shape)
    fc2 = layers.ops["fc2"]
    assert isinstance(fc2, LinearOp)
    assert fc2.weight.dtype == torch.float32 and fc2.weight.data_ptr() == model.fc2.weight.data_ptr()
    # folding computes new weights, in float64: W' = gamma / sqrt(var + eps) * W
    folded = prepare(layers)
    (conv,) = [op for op in folded.ops.values() if isinstance(op, ConvOp) and op.name.endswith("0")]
    bn = model.features[1]
    factor = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    assert conv.weight.dtype == torch.float64
    torch.testing.assert_close(conv.weight, model.features[0].weight.double() * factor.reshape(-1, 1, 1, 1),
                               rtol=0, atol=1e-15)


def test_converting_leaves_the_model_alone_and_the_graph_owns_its_weights():
    model, shape = zoo.vgg_bn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = convert(model, shape)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    first = graph.nodes["fc2"].weight.copy()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    assert np.array_equal(graph.nodes["fc2"].weight, first)


def test_weights_are_scaled_in_float64_and_rounded_once_in_blocks_of_rows(monkeypatch):
    """fc2 follows an IF layer with theta = its bound: its NIR weight is W * theta, computed in float64
    and rounded once to float32, the same whatever the block size (here 7 numbers: one row per block)."""
    model, shape = zoo.vgg_bn()
    act = model.act_fc  # lambda = |raw| + min_bound, in float64 (bridge.model.activations)
    theta = float(act.raw_bound.detach().double().abs() + act.min_bound)
    expected = (model.fc2.weight.detach().double().numpy() * theta).astype(np.float32)
    whole = convert(model, shape).nodes["fc2"].weight
    monkeypatch.setattr(build, "_BLOCK_NUMBERS", 7)
    blocks = convert(model, shape).nodes["fc2"].weight
    assert whole.dtype == blocks.dtype == np.float32
    assert np.array_equal(whole, expected) and np.array_equal(blocks, expected)
    # a float32 product would round twice and differ somewhere
    assert not np.array_equal(expected, model.fc2.weight.detach().numpy() * np.float32(theta))
    as64 = convert(model, shape, weights="float64").nodes["fc2"].weight
    assert as64.dtype == np.float64 and np.array_equal(as64, model.fc2.weight.detach().double().numpy() * theta)


def test_a_graph_without_large_arrays_is_written_as_nir_writes_it_byte_for_byte():
    """bridge writes nir's own file without nir.write's two deep copies of every array."""
    for name, graph in zoo.zoo_graphs().items():
        buf = io.BytesIO()
        nir.write(buf, graph)
        assert bytes(nirio.graph_bytes(graph)) == buf.getvalue(), name
