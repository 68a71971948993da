"""Keep docs/cli.md's ``--help`` blocks equal to the CLI's own help text.

Every fenced block of docs/cli.md whose first line is ``$ python -m bridge [COMMAND] --help``
is the output of that command, regenerated here from the click commands themselves (on a
wide terminal, so that only each command's own ``max_content_width`` sets the wrapping)::

    python -m app.cli.helpdoc            # rewrite docs/cli.md in place
    python -m app.cli.helpdoc --check    # exit 1 and name the stale blocks if any differ

``tests/test_cli_helpdoc.py`` runs the check, so a changed option fails the suite until the
docs are regenerated.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from click.testing import CliRunner

from app.cli import cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
WIDE_TERMINAL = "200"  # wider than max_content_width: click then wraps at 100 - 2 columns
BLOCK = re.compile(r"^```\n\$ python -m bridge((?: [a-z-]+)*) --help\n(.*?)^```$", re.S | re.M)


def help_text(command: list[str]) -> str:
    """What ``bridge COMMAND --help`` prints on a wide terminal."""
    result = CliRunner(env={"COLUMNS": WIDE_TERMINAL}).invoke(cli, [*command, "--help"], prog_name="bridge")
    if result.exit_code != 0:
        raise RuntimeError(f"bridge {' '.join(command)} --help failed: {result.output}")
    return result.output


def regenerate(text: str) -> tuple[str, list[str]]:
    """``text`` with every help block replaced by the real help; and the blocks that changed."""
    changed: list[str] = []

    def replace(match: re.Match[str]) -> str:
        command = match.group(1).split()
        new = help_text(command)
        if new != match.group(2):
            changed.append(" ".join(["bridge", *command, "--help"]))
        return f"```\n$ python -m bridge{match.group(1)} --help\n{new}```"

    return BLOCK.sub(replace, text), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.cli.helpdoc", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale blocks (exit 1 if any)")
    parser.add_argument("--doc", type=Path, default=DOC, help="the Markdown file (default: docs/cli.md)")
    args = parser.parse_args(argv)
    text = args.doc.read_text()
    new, changed = regenerate(text)
    if args.check:
        for name in changed:
            print(f"{args.doc}: the block of `{name}` differs from the CLI; run python -m app.cli.helpdoc")
        return 1 if changed else 0
    if new != text:
        args.doc.write_text(new)
    print(f"{args.doc}: {len(changed)} help block(s) regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
