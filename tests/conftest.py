"""Shared fixtures: a fresh twin home per test, and the CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edgetwin import clock as twin_clock
from edgetwin.cli.main import cli


@pytest.fixture(autouse=True)
def fresh_twin_clock(monkeypatch: pytest.MonkeyPatch) -> twin_clock.TwinClock:
    """Each test its own process clock: a daemon started over stored data that runs ahead
    (a 10x simulator) raises the clock's floor, which must not leak into the next test."""
    clock = twin_clock.TwinClock()
    monkeypatch.setattr(twin_clock, "CLOCK", clock)
    return clock


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
