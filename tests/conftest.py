"""Shared fixtures: a fresh twin home per test, and the CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edgetwin.cli.main import cli


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty twin home directory."""
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def passphrase_file(tmp_path: Path) -> Path:
    p = tmp_path / "passphrase"
    p.write_text("correct horse battery staple\n")
    p.chmod(0o600)
    return p


@pytest.fixture
def run_cli(home: Path, passphrase_file: Path):  # type: ignore[no-untyped-def]
    """Invoke the CLI against the test's home; returns click's Result."""

    def _run(*args: str, input: str | None = None) -> Result:
        runner = CliRunner()
        return runner.invoke(
            cli,
            ["--home", str(home), "--passphrase-file", str(passphrase_file), *args],
            input=input,
            catch_exceptions=False,
        )

    return _run
