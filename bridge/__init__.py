"""bridge: trained PyTorch ANNs to low-latency spiking networks, carried through NIR.

The Python API mirrors the command line: :func:`convert` runs the same conversion plan
(:class:`bridge.workflow.ConversionPlan`) as ``bridge export``, so the same options write the
same bytes::

    import bridge
    graph = bridge.convert(model, input_shape=(1, 16, 16))          # bridge export --to nir
    graph = bridge.convert(model, (1, 16, 16), calibration=x_train, timesteps=4)
                                             # bridge export --calibration x.npy --timesteps 4
    bridge.write_graph(graph, "model.nir")
    result = bridge.simulate(graph, x, steps=8)                      # bridge simulate
    result.predictions()

Heavy modules are imported on first use, so ``import bridge`` stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from bridge.model.activations import QCFS, ClippedReLU
from bridge.format.errors import BridgeError, ValidationFailed
from bridge.format.nirio import read_graph, write_graph



def _package_version() -> str:
    """The installed distribution's version (pyproject.toml's, via its metadata): the one
    version of bridge, shown by ``bridge --version`` and everywhere else."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bridge-snn")
    except PackageNotFoundError:  # a source tree put on sys.path without installing it
        return "0+unknown"


__version__ = _package_version()

_LAZY = {
    "ConversionPlan": ("bridge.workflow", "ConversionPlan"),
    "run_plan": ("bridge.workflow", "run_plan"),
    "simulate": ("bridge.reference", "simulate"),
    "ann_view": ("bridge.reference", "ann_view"),
    "load_model": ("bridge.model.loading", "load_model"),
    "optimize_initial_potentials": ("bridge.passes.optimize", "optimize_initial_potentials"),
    "inspect_graph": ("bridge.format.inspect", "inspect_graph"),
}

__all__ = [
    "QCFS",
    "BridgeError",
    "ClippedReLU",
    "ValidationFailed",
    "read_graph",
    "write_graph",
    "convert",
    *_LAZY,
]


def convert(
    model: Any,
    input_shape: Sequence[int] | None = None,
    *,
    calibration: Any = None,
    timesteps: int | None = None,
    options: Any = None,
    **plan: Any,
) -> Any:
    """Convert ``model`` to a bridge NIR graph exactly as ``bridge export`` does for the same options.

    ``model``: an ``nn.Module`` (needs ``input_shape``, one sample without batch), a
    ``torch.export`` program, or a model file path (``.pt2``...). ``calibration``: ``"digits"``, a
    ``.npy/.npz/.pt`` path, a tensor ``(N, *input_shape)`` or an iterable of batches (its first
    ``calibration_samples=512`` samples, as float32). With calibration data and the default
    ``v_init="auto"`` the calibration pipeline fits the graph for ``timesteps`` (None: for every T);
    without data the graph is theta/2 and ``timesteps`` is refused (it would record a T nothing was
    fitted for). Other keywords are the fields of :class:`bridge.workflow.ConversionPlan`:
    ``thresholds``, ``channel_wise``, ``v_init``, ``maxpool``, ``weights``, ``profile``,
    ``calibration_samples``, ``stages``, ``iterations``; ``options`` (a
    :class:`bridge.converter.ConversionOptions`) gives defaults that keywords override. The
    low-level converter without the plan is :func:`bridge.converter.convert`. Returns a
    ``nir.NIRGraph``; bad input raises :class:`BridgeError` before any work.
    """
    from bridge.workflow import ConversionPlan, run_plan

    progress = plan.pop("progress", None)
    fields: dict[str, Any] = {}
    if options is not None:
        from bridge.converter.options import ConversionOptions

        if not isinstance(options, ConversionOptions):
            raise BridgeError(f"options must be a bridge.converter.ConversionOptions, got {type(options).__name__}")
        fields = {"thresholds": options.thresholds, "channel_wise": options.channel_wise, "v_init": options.v_init,
                  "maxpool": options.maxpool, "weights": options.weights, "timesteps": options.timesteps}
    fields.update(plan)
    if timesteps is not None or "timesteps" not in fields:
        fields["timesteps"] = timesteps
    try:
        made = ConversionPlan(calibration=calibration, **fields)
    except TypeError as exc:
        raise BridgeError(f"bridge.convert: {exc}; see help(bridge.convert) for the options") from None
    return run_plan(model, made, input_shape, progress=progress).graph


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'bridge' has no attribute {name!r}")
