"""Running the `bridge` CLI in-process and checking its one-line user errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Run ``bridge ARGS`` in this process; return (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """A user error: exit code 2, exactly one ``bridge: error:`` line naming every needle,
    no traceback. Returns that line."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("bridge: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
