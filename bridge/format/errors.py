"""User-facing errors.

Every error a user can cause (bad file, bad option, unsupported layer...) is raised as a
:class:`BridgeError`. The CLI prints its message as one line and exits with code 2; the
Python API lets it propagate. A message names the cause and the fix.
"""

from __future__ import annotations


class BridgeError(Exception):
    """A problem with the user's input: printed as one line, exit code 2, no traceback."""

    exit_code = 2


class ValidationFailed(BridgeError):
    """A backend disagrees with the reference in a way no numerical tie explains (exit 1)."""

    exit_code = 1
