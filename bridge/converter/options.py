"""The conversion options, checked once (like ``nir``'s node dataclasses, in ``__post_init__``).

:class:`ConversionOptions` is what :func:`bridge.convert` and the command line (``bridge export``,
``bridge evaluate``) hand to the converter; a bad value raises a :class:`BridgeError` naming the
option both ways (``--thresholds`` / ``thresholds=``) before any work is done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from bridge.format.errors import BridgeError

THRESHOLD_SOURCES_HELP = "use auto, trained, max or a percentile like p99.9 / p99.99"
V_INIT_HELP = "use 'half' (theta/2, default), 'zero', or a fraction of theta in [0, 1)"
MAXPOOL_POLICIES = ("error", "avg")
WEIGHT_PRECISIONS = ("model", "float32", "float64")

MaxPoolPolicy = Literal["error", "avg"]
WeightPrecision = Literal["model", "float32", "float64"]


def threshold_quantile(source: str) -> float | None:
    """``"max"`` -> 1.0, ``"p99.9"`` -> 0.999; None for ``auto`` / ``trained``; else BridgeError."""
    if source in ("auto", "trained"):
        return None
    if source == "max":
        return 1.0
    try:
        q = float(source[1:]) if isinstance(source, str) and source.startswith("p") else math.nan
    except ValueError:
        q = math.nan
    if not 0 < q <= 100:
        raise BridgeError(f"unknown threshold source {source!r} (--thresholds / thresholds=); "
                          f"{THRESHOLD_SOURCES_HELP}")
    return q / 100.0


def v_init_fraction(v_init: str | float) -> float:
    """The fraction ``f`` of theta that ``v_init`` stands for (``v(0) = f * theta``)."""
    if isinstance(v_init, str):
        if v_init == "half":
            return 0.5
        if v_init == "zero":
            return 0.0
        if v_init == "optimized":
            raise BridgeError(
                "v_init='optimized' is applied after conversion by bridge.passes.optimize on the NIR graph; "
                f"convert with 'half' first. Here {V_INIT_HELP}")
        try:
            value = float(v_init)
        except ValueError:
            raise BridgeError(f"unknown v_init {v_init!r} (--v-init / v_init=); {V_INIT_HELP}") from None
    elif isinstance(v_init, (int, float)) and not isinstance(v_init, bool):
        value = float(v_init)
    else:
        raise BridgeError(f"unknown v_init {v_init!r} (--v-init / v_init=); {V_INIT_HELP}")
    if not 0.0 <= value < 1.0:
        raise BridgeError(f"v_init fraction {value} is outside [0, 1) (--v-init / v_init=); {V_INIT_HELP}")
    return value


def check_timesteps(timesteps: int | None) -> None:
    if timesteps is not None and (isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1):
        raise BridgeError(f"timesteps {timesteps!r} must be a positive integer (or None) (--timesteps / timesteps=)")


@dataclass(frozen=True)
class ConversionOptions:
    """How a model is converted (see :func:`bridge.convert` for the meaning of each option).

    ``thresholds``: ``auto`` (trained bound, else ``p99.99`` on calibration data), ``trained``,
    ``max`` or ``p<q>``; ``channel_wise``: calibrated thresholds per channel; ``v_init``:
    ``half`` (theta/2), ``zero`` or a fraction of theta in [0, 1); ``maxpool``: ``error`` or
    ``avg``; ``timesteps``: the T recorded in the graph metadata; ``weights``: the precision of
    the weights in the NIR file (``model``: the model's own, float32 for a float32 ANN).
    """

    thresholds: str = "auto"
    channel_wise: bool = False
    v_init: str | float = "half"
    maxpool: MaxPoolPolicy = "error"
    timesteps: int | None = None
    weights: WeightPrecision = "model"

    def __post_init__(self) -> None:
        if not isinstance(self.thresholds, str):
            raise BridgeError(f"threshold source {self.thresholds!r} is not a string; {THRESHOLD_SOURCES_HELP}")
        threshold_quantile(self.thresholds)
        if not isinstance(self.channel_wise, bool):
            raise BridgeError(f"channel_wise must be True or False, got {self.channel_wise!r}")
        v_init_fraction(self.v_init)
        if self.maxpool not in MAXPOOL_POLICIES:
            raise BridgeError(f"unknown maxpool policy {self.maxpool!r} (--maxpool / maxpool=); "
                              "use 'error' or 'avg'")
        check_timesteps(self.timesteps)
        if self.weights not in WEIGHT_PRECISIONS:
            raise BridgeError(f"unknown weight precision {self.weights!r} (--weights / weights=); "
                              "use model, float32 or float64")

    def weight_dtype(self, model_dtype: torch.dtype) -> type:
        """The NumPy dtype of the weights in the NIR file: ``model`` keeps a float64 model's
        precision and writes float32 for anything else (float32, float16, bfloat16)."""
        if self.weights == "float64" or (self.weights == "model" and model_dtype == torch.float64):
            return np.float64
        return np.float32
