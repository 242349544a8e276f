"""Fixtures shared by the tests that run the real daemon as a process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PASSPHRASE = "daemon e2e passphrase"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of a fresh twin home: a passphrase file (0600), test KDF parameters."""
    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE + "\n")
    pw.chmod(0o600)
    return {
        **os.environ,
        "EDGETWIN_HOME": str(tmp_path / "home"),
        "EDGETWIN_PASSPHRASE_FILE": str(pw),
        "EDGETWIN_KDF_PROFILE": "test",
    }
