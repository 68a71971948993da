"""One comparison of two NIR graphs, used wherever two paths must give the same graph (the
torch.fx and torch.export front-ends, a module and its .pt2 file)."""

from __future__ import annotations

import nir
import numpy as np

from bridge.format.extension import if_semantics


def _arrays(node: nir.NIRNode) -> dict[str, np.ndarray]:
    """Every numeric field, shape, numeric bridge metadata entry and IF initial potential of ``node``."""
    out = {}
    for field in ("weight", "bias", "scale", "v_threshold", "r", "v_reset", "kernel_size", "stride", "padding",
                  "dilation", "groups", "input_type", "output_type"):
        value = getattr(node, field, None)
        if isinstance(value, dict):
            out.update({f"{field}.{k}": np.asarray(v, dtype=np.float64) for k, v in value.items()})
        elif value is not None and not isinstance(value, str):
            out[field] = np.asarray(value, dtype=np.float64)
    meta = (node.metadata or {}).get("bridge", {})
    out.update({f"meta.{k}": np.asarray(v, dtype=np.float64) for k, v in meta.items() if not isinstance(v, str)})
    if isinstance(node, nir.IF):
        out["v_init"] = np.asarray(if_semantics(node).v_init, dtype=np.float64)
    return out


def assert_same_nir(a: nir.NIRGraph, b: nir.NIRGraph, atol: float = 1e-12, ordered: bool = True) -> None:
    """Same node names (in the same order unless ``ordered=False``), types, edges, string metadata,
    and every array of every node to ``atol``."""
    if ordered:
        assert list(a.nodes) == list(b.nodes)
    else:
        assert sorted(a.nodes) == sorted(b.nodes)
    assert sorted(a.edges) == sorted(b.edges)
    for name, node in a.nodes.items():
        other = b.nodes[name]
        assert type(node) is type(other), name
        fa, fb = _arrays(node), _arrays(other)
        assert fa.keys() == fb.keys(), name
        for key in fa:
            assert fa[key].shape == fb[key].shape, (name, key)
            np.testing.assert_allclose(fa[key], fb[key], rtol=0, atol=atol, err_msg=f"{name}.{key}")
        assert {k: v for k, v in (node.metadata or {}).get("bridge", {}).items() if isinstance(v, str)} == \
            {k: v for k, v in (other.metadata or {}).get("bridge", {}).items() if isinstance(v, str)}, name
