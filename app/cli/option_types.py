"""Option types shared by the commands.

Count options (``--steps``, ``--limit``, ``--batch-size``, ``--calibration-samples``, ...) are
checked once, the same way in every command: at parse time, as one line naming the option
(``--calibration-samples must be >= 1, got 0``), before any work is done. ``--input-shape`` is
read by :func:`parse_input_shape`.
"""

from __future__ import annotations

from typing import Any

import click

from bridge.format.errors import BridgeError


class Count(click.ParamType):
    """An integer >= ``minimum``; anything else is a :class:`BridgeError` naming the option."""

    name = "integer"

    def __init__(self, minimum: int = 1) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value).strip())
            except ValueError:
                number = None  # type: ignore[assignment]
        flag = max((o for o in (param.opts if param is not None else []) if o.startswith("--")),
                   key=len, default="the count")
        if number is None:
            raise BridgeError(f"{flag} takes a whole number >= {self.minimum}, got {value!r}")
        if number < self.minimum:
            raise BridgeError(f"{flag} must be >= {self.minimum}, got {number}")
        return number


COUNT = Count(1)
"""A count of things that must exist (time steps, samples, batches)."""

WORKERS = Count(0)
"""A count that may be zero (DataLoader workers)."""


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """``"1,16,16"`` -> ``(1, 16, 16)``: one sample, no batch dimension."""
    if text is None:
        return None
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise BridgeError(
            f"--input-shape {text!r} is not a shape; give positive integers without the batch "
            "dimension, e.g. --input-shape 3,32,32"
        )
    return shape


#: ``--time-budget SECONDS`` of every command that runs the calibration pipeline (checked by the plan)
time_budget_option = click.option(
    "--time-budget", "time_budget", type=float, metavar="SECONDS", default=None,
    help="Seconds the calibration pipeline's joint fits may use in all (default: the larger of 20 s and "
         "8 simulations of the calibration set).")
