"""One operator per NIR node type (the registry the graph walker looks types up in).

Add a node type by writing a small :class:`~bridge.reference.ops.base.NodeOp` subclass whose
docstring states its math, and registering it in :data:`REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Callable

import nir
import torch

from bridge.format.errors import BridgeError
from bridge.reference.ops.base import Identity, NeuronOp, NodeOp, StatelessOp
from bridge.reference.ops.conv import Conv1d, Conv2d
from bridge.reference.ops.if_node import IF
from bridge.reference.ops.leaky import LI, LIF, Integrator
from bridge.reference.ops.linear import Affine, Linear, Scale
from bridge.reference.ops.pool import AvgPool2d, SumPool2d
from bridge.reference.ops.shape import Flatten, Threshold

Builder = Callable[[str, nir.NIRNode, torch.dtype, torch.device, "float | None"], NodeOp]


def _plain(cls: type[NodeOp]) -> Builder:
    return lambda name, node, dtype, device, dt: cls(name, node, dtype, device)  # type: ignore[call-arg]


def _identity(name: str, node: nir.NIRNode, dtype: torch.dtype, device: torch.device,
              dt: float | None) -> NodeOp:
    return Identity(name)


REGISTRY: dict[type, Builder] = {
    nir.Input: _identity,
    nir.Output: _identity,
    nir.Affine: _plain(Affine),
    nir.Linear: _plain(Linear),
    nir.Scale: _plain(Scale),
    nir.Conv1d: _plain(Conv1d),
    nir.Conv2d: _plain(Conv2d),
    nir.AvgPool2d: _plain(AvgPool2d),
    nir.SumPool2d: _plain(SumPool2d),
    nir.Flatten: _plain(Flatten),
    nir.Threshold: _plain(Threshold),
    nir.IF: _plain(IF),
    nir.I: _plain(Integrator),
    nir.LI: LI,
    nir.LIF: LIF,
}


def build_op(name: str, node: nir.NIRNode, dtype: torch.dtype, device: torch.device,
             dt: float | None = None) -> NodeOp:
    """Compile one NIR node; an unknown type is a BridgeError naming the node and its type."""
    builder = REGISTRY.get(type(node))
    if builder is None:
        known = ", ".join(sorted(t.__name__ for t in REGISTRY))
        raise BridgeError(
            f"node {name!r} has type {type(node).__name__}, which the reference simulator does "
            f"not run; supported: {known}"
        )
    return builder(name, node, dtype, device, dt)


__all__ = ["REGISTRY", "NeuronOp", "NodeOp", "StatelessOp", "build_op"]
