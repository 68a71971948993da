"""The conversion workflow: one checked plan and one function that runs it.

Above :mod:`bridge.passes` and :mod:`exporters`' row, below :mod:`validation`: every caller that
turns a model into a graph (``bridge export``, ``bridge evaluate``, the demo, the benchmarks and
:func:`bridge.convert`) builds a :class:`ConversionPlan` and calls :func:`run_plan`, so the same
plan gives the same graph, byte for byte.
"""

from bridge.workflow.plan import DEFAULT_CALIBRATION_SAMPLES, ConversionPlan
from bridge.workflow.run import WorkflowReport, WorkflowResult, run_plan

__all__ = ["DEFAULT_CALIBRATION_SAMPLES", "ConversionPlan", "WorkflowReport", "WorkflowResult", "run_plan"]
