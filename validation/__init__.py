"""The validation suite: every backend against the reference simulator, at every time-step.

``validate(graph, backends=[...], x, y=None, steps=..., timesteps=[...]) -> ValidationReport``
(``.ok``, ``.to_json()``; ``validation.report`` renders it as a table or Markdown); ``bridge validate`` is its command line and
``python -m validation.compat`` regenerates ``docs/compatibility.md``. See docs/validation.md.
"""

from validation.suite import BackendReport, ValidationReport, validate

__all__ = ["BackendReport", "ValidationReport", "validate"]
