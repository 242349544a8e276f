"""An export or import killed with SIGKILL leaves no plaintext member on disk, and the next
unlock removes what it did leave (empty staging directories, dangling links)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import edgetwin
from edgetwin.bundle.staging import Spool, anonymous_files, remove_leftovers
from edgetwin.cli.main import cli

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "staging_leftovers.py"
PACKAGE_ROOT = Path(edgetwin.__file__).resolve().parents[1]

needs_proc = pytest.mark.skipif(not anonymous_files(), reason="unnamed staging needs Linux /proc")


def _killed(work: Path) -> dict[str, dict[str, object]]:
    """Export and import of a small twin, each killed (SIGKILL) once every member is staged."""
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "40", "--channels", "4", "--workdir",
         str(work), "--json"],
        check=True, capture_output=True, text=True, timeout=300,
        # the children run the edgetwin this test imported
        env={**os.environ, "EDGETWIN_KDF_PROFILE": "test", "PYTHONPATH": str(PACKAGE_ROOT)},
    )
    result: dict[str, dict[str, object]] = json.loads(out.stdout)
    return result


@needs_proc
def test_export_and_import_killed_mid_way_leave_no_plaintext_member_on_disk(
    tmp_path: Path,
) -> None:
    r = _killed(tmp_path)
    # the kill really happened mid-way: the staging directories are still there
    assert r["export_killed"]["staging_dirs"] and r["import_killed"]["staging_dirs"]
    assert r["export_killed"]["plaintext_bytes"] == 0
    assert r["export_killed"]["plaintext_files"] == 0
    assert r["import_killed"]["plaintext_bytes"] == 0
    assert r["import_killed"]["plaintext_files"] == 0
    # nothing with a name in any staging directory but the import's new twin (encrypted)
    for k in ("export_killed", "import_killed"):
        for d in r[k]["staging_dirs"]:  # type: ignore[attr-defined]
            named = [p for p in Path(d).rglob("*")
                     if not p.is_symlink() and p.is_file() and "twin" not in p.parts]
            assert named == [], f"staged members survived the kill: {named}"


def test_the_next_unlock_or_import_removes_what_a_killed_export_and_import_left(
    tmp_path: Path,
) -> None:
    r = _killed(tmp_path)
    exported = [Path(d) for d in r["export_killed"]["staging_dirs"]]  # type: ignore[attr-defined]
    imported = [Path(d) for d in r["import_killed"]["staging_dirs"]]  # type: ignore[attr-defined]
    assert exported and imported and all(d.exists() for d in exported + imported)
    runner = CliRunner()
    base = ["--passphrase-file", str(tmp_path / "pass")]
    # any unlock of the twin (the CLI's, which the daemon's is) clears its killed exports
    result = runner.invoke(cli, ["--home", str(tmp_path / "home"), *base, "timeline"])
    assert result.exit_code == 0, result.output
    assert [d for d in exported if d.exists()] == []
    # the import into the same place again clears the killed one, then succeeds
    result = runner.invoke(cli, ["--home", str(tmp_path / "imported"), *base, "import",
                                 str(tmp_path / "twin.age"), "--identity",
                                 str(tmp_path / "identity.txt")])
    assert result.exit_code == 0, result.output
    assert [d for d in imported if d.exists()] == []


def test_leftovers_of_a_live_process_are_not_touched(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    mine = home / f".export-{os.getpid()}-x"  # this very process: still working on it
    mine.mkdir()
    parent = home / f".export-{os.getppid()}-y"  # another live process
    parent.mkdir()
    remove_leftovers(home)
    assert mine.exists() and parent.exists()


@needs_proc
def test_a_staged_member_has_no_name_and_vanishes_when_released(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = spool.path("signals/a.csv")
    path.write_text("timestamp,hr\n1,60\n")
    assert path.read_text() == "timestamp,hr\n1,60\n"  # readers open it by its usual name
    assert path.is_symlink()
    regular = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    assert regular == []
    spool.release()
    assert not path.exists()  # the link dangles: the data is gone with the descriptor


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


@pytest.mark.parametrize("command", [["verify"], ["timeline"], ["audit"], ["status"]])
def test_every_unlock_clears_a_dead_runs_staging(tmp_path: Path, command: list[str]) -> None:
    pw = tmp_path / "pass"
    pw.write_text("staging passphrase\n")
    pw.chmod(0o600)
    home = tmp_path / "home"
    base = ["--home", str(home), "--passphrase-file", str(pw)]
    runner = CliRunner()
    assert runner.invoke(cli, [*base, "init"], env={"EDGETWIN_KDF_PROFILE": "test"}).exit_code == 0
    pid = _dead_pid()
    export_left = home / f".export-{pid}-abc"
    import_left = tmp_path / f".home.import-{pid}-def"
    for d in (export_left, import_left):
        (d / "members").mkdir(parents=True)
        (d / "members" / "x.csv").symlink_to(f"/proc/{pid}/fd/7")  # what a kill leaves
    result = runner.invoke(cli, [*base, *command], env={"EDGETWIN_KDF_PROFILE": "test"})
    assert result.exit_code == 0, result.output
    assert not export_left.exists() and not import_left.exists()
