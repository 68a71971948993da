"""One version story: the package version from its metadata everywhere it is shown; the NIR
extension's own version always named as the extension's."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import bridge
from app.cli import main
from bridge.format.extension import FORMAT_VERSION


def test_the_package_version_is_the_distribution_metadata_and_pyproject():
    installed = importlib.metadata.version("bridge-snn")
    assert bridge.__version__ == installed
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert project["project"]["version"] == installed  # reinstall (make install) after a bump


def test_version_option_and_reports_tell_the_two_versions_apart(tmp_path, capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"bridge, version {bridge.__version__}"
    from tests import zoo

    path = zoo.write_mlp_nir(tmp_path / "mlp.nir")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"bridge NIR extension {FORMAT_VERSION}" in out and f"bridge {FORMAT_VERSION}" not in out
    assert main(["validate", str(path), "--backends", "reference", "--steps", "2", "--data", "digits",
                 "--limit", "4"]) == 0
    out = capsys.readouterr().out
    assert f"bridge NIR extension {FORMAT_VERSION}" in out and f"bridge {FORMAT_VERSION}" not in out
