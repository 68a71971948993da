"""docs/cli.md shows each command's real ``--help``: regenerated from the CLI, checked here."""

from __future__ import annotations

import re

from app.cli import COMMANDS, helpdoc


def test_every_help_block_matches_the_cli():
    text = helpdoc.DOC.read_text()
    _, changed = helpdoc.regenerate(text)
    assert not changed, f"stale blocks {changed}: run `python -m app.cli.helpdoc` and commit docs/cli.md"


def test_every_command_has_a_help_block():
    text = helpdoc.DOC.read_text()
    documented = {m.group(1).strip() for m in helpdoc.BLOCK.finditer(text)}
    assert documented == {"", *COMMANDS}


def test_check_fails_on_a_drifted_doc_and_the_rewrite_fixes_it(tmp_path, capsys):
    doc = tmp_path / "cli.md"
    drifted = re.sub(r"  --profile .*?\n", "", helpdoc.DOC.read_text(), count=1)  # the drift of issue 10
    doc.write_text(drifted)
    assert helpdoc.main(["--check", "--doc", str(doc)]) == 1
    assert "`bridge export --help` differs" in capsys.readouterr().out
    assert helpdoc.main(["--doc", str(doc)]) == 0
    assert doc.read_text() == helpdoc.DOC.read_text()
    assert helpdoc.main(["--check", "--doc", str(doc)]) == 0
