"""A passphrase file is a secret like a key file: refused when group or others may open it,
with an error naming the file and the chmod to run; and unlocking never prompts from the store."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetwin.cli.main import cli
from edgetwin.errors import UsageError
from edgetwin.store import read_passphrase_file

STORE = Path(__file__).resolve().parents[2] / "edgetwin" / "store"


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


def _secret_file(tmp_path: Path, mode: int, name: str = "pass") -> Path:
    p = tmp_path / name
    p.write_text("correct horse battery staple\n")
    p.chmod(mode)
    return p


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644, 0o666, 0o610])
def test_passphrase_file_open_to_group_or_others_is_refused_with_the_chmod_to_run(
    tmp_path: Path, mode: int,
) -> None:
    p = _secret_file(tmp_path, mode)
    with pytest.raises(UsageError) as err:
        read_passphrase_file(p)
    assert err.value.exit_code == 2
    text = f"{err.value} {err.value.hint}"
    assert str(p) in str(err.value)
    assert f"mode {mode:o}" in str(err.value)
    assert f"chmod 600 {p}" in text


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_passphrase_file_is_read_without_its_line_break(tmp_path: Path,
                                                                mode: int) -> None:
    assert read_passphrase_file(_secret_file(tmp_path, mode)) == "correct horse battery staple"


def test_unlocking_with_a_shared_passphrase_file_exits_2_naming_file_and_chmod(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    good = _secret_file(tmp_path, 0o600)
    runner = CliRunner()
    made = runner.invoke(cli, ["--home", str(home), "--passphrase-file", str(good), "init"])
    assert made.exit_code == 0, made.output
    shared = _secret_file(tmp_path, 0o644, "shared-pass")
    result = runner.invoke(cli, ["--home", str(home), "--passphrase-file", str(shared), "verify"])
    assert result.exit_code == 2, result.output
    error = [ln for ln in result.stderr.splitlines() if "error" in ln]
    assert len(error) == 1
    assert f"passphrase file {shared}" in error[0] and f"chmod 600 {shared}" in error[0]


def test_shared_bundle_passphrase_file_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    good = _secret_file(tmp_path, 0o600)
    runner = CliRunner()
    assert runner.invoke(cli, ["--home", str(home), "--passphrase-file", str(good),
                               "init"]).exit_code == 0
    shared = _secret_file(tmp_path, 0o644, "bundle-pass")
    out = tmp_path / "b.age"
    result = runner.invoke(cli, ["--home", str(home), "--passphrase-file", str(good), "export",
                                 "-o", str(out), "--passphrase",
                                 "--bundle-passphrase-file", str(shared)])
    assert result.exit_code == 2, result.output
    assert f"chmod 600 {shared}" in result.stderr
    assert not out.exists()


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_store_never_prompts_nor_imports_click_or_the_cli() -> None:
    """The prompt belongs to the CLI: the store takes a Secret, even under TYPE_CHECKING."""
    files = sorted(STORE.rglob("*.py"))
    assert len(files) > 3  # guards the guard
    bad = {
        f"{p.name}: {name}"
        for p in files
        for name in _imports(p)
        if name == "click" or name.startswith(("click.", "edgetwin.cli"))
    }
    assert bad == set()


def test_age_identity_file_open_to_others_is_read_with_a_warning_naming_the_chmod(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An age identity is the person's age key (the age CLI reads it at any mode): the import it
    was made for goes on, and the person is told the chmod to run."""
    import pyrage

    from edgetwin.bundle.age import load_identities

    p = tmp_path / "identity.txt"
    p.write_text(f"{pyrage.x25519.Identity.generate()}\n")
    p.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="edgetwin.bundle.age"):
        assert len(load_identities(p)) == 1
    assert any(f"chmod 600 {p}" in r.getMessage() and "644" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    p.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="edgetwin.bundle.age"):
        assert len(load_identities(p)) == 1
    assert not caplog.records
