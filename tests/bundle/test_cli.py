"""``edgetwin export`` / ``edgetwin import`` through click: secrets kept apart, exit codes,
empty-home rule, merge with deduplication, audit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from edgetwin.cli.main import cli
from edgetwin.store import Secret, TwinStore
from tests.bundle.conftest import PASS, AgeKey, Twin, fill_twin


def _cli(home: Path, pass_file: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(
        cli, ["--home", str(home), "--passphrase-file", str(pass_file), *args],
        input=input, catch_exceptions=False,
    )


@pytest.fixture
def twin_pass(tmp_path: Path) -> Path:
    p = tmp_path / "twin-pass"
    p.write_text(PASS + "\n")
    p.chmod(0o600)
    return p


@pytest.fixture
def bundle_pass(tmp_path: Path) -> Path:
    p = tmp_path / "bundle-pass"
    p.write_text("a different bundle passphrase\n")
    p.chmod(0o600)
    return p


def test_export_then_import_with_recipient(twin: Twin, key: AgeKey, twin_pass: Path,
                                           tmp_path: Path) -> None:
    out = tmp_path / "b.age"
    r = _cli(twin.home, twin_pass, "export", "-o", str(out), "--recipient", key.public, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["mode"] == "recipients"
    assert {s["name"]: s["format"] for s in doc["streams"]} == {
        "muse.eeg": "edf", "nirs": "snirf", "polar.rr": "csv"}
    again = _cli(twin.home, twin_pass, "export", "-o", str(out), "--recipient", key.public)
    assert again.exit_code == 2
    assert "already exists" in again.output
    home = tmp_path / "new"
    home.mkdir()  # an existing empty directory is fine
    r = _cli(home, twin_pass, "import", str(out), "--identity", str(key.path), "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["samples"] == len(twin.eeg) + len(twin.rr) + len(twin.nirs)
    audit = _cli(home, twin_pass, "audit", "--json")
    assert "import" in audit.output
    audit = _cli(twin.home, twin_pass, "audit", "--json")
    assert "export" in audit.output


def test_bundle_passphrase_is_not_the_twin_passphrase(twin: Twin, twin_pass: Path,
                                                      bundle_pass: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.age"
    r = _cli(twin.home, twin_pass, "export", "-o", str(out), "--passphrase",
             "--bundle-passphrase-file", str(bundle_pass), "--streams", "polar.rr,nirs")
    assert r.exit_code == 0, r.output
    home = tmp_path / "new"
    wrong = _cli(home, twin_pass, "import", str(out), "--passphrase",
                 "--bundle-passphrase-file", str(twin_pass))
    assert wrong.exit_code == 3
    assert not home.exists()
    ok = _cli(home, twin_pass, "import", str(out), "--passphrase",
              "--bundle-passphrase-file", str(bundle_pass))
    assert ok.exit_code == 0, ok.output
    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        assert [s.name for s in store.streams()] == ["nirs", "polar.rr"]


def test_bundle_passphrase_prompt_is_hidden_and_confirmed(twin: Twin, twin_pass: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "b.age"
    r = _cli(twin.home, twin_pass, "export", "-o", str(out), "--passphrase", "--streams",
             "polar.rr", input="s3cret\nmistyped\ns3cret\ns3cret\n")
    assert r.exit_code == 0, r.output
    assert "s3cret" not in r.output
    assert "do not match" in r.output
    home = tmp_path / "new"
    r = _cli(home, twin_pass, "import", str(out), "--passphrase", input="s3cret\n")
    assert r.exit_code == 0, r.output


def test_usage_errors(twin: Twin, key: AgeKey, twin_pass: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.age"
    r = _cli(twin.home, twin_pass, "export", "-o", str(out))
    assert r.exit_code == 2
    r = _cli(twin.home, twin_pass, "export", "-o", str(out), "--recipient", "age1nope")
    assert r.exit_code == 2
    assert "not an age public key" in r.output
    r = _cli(twin.home, twin_pass, "export", "-o", str(out), "--recipient", key.public,
             "--streams", "ghost")
    assert r.exit_code == 2
    assert "'ghost'" in r.output
    big = fill_twin(tmp_path / "big", Secret.passphrase(PASS), seconds=600)  # > 1 MB of EDF
    r = _cli(big.home, twin_pass, "export", "-o", str(out), "--passphrase",
             "--passphrase-limit-mb", "1", input="pw\npw\n")
    assert r.exit_code == 2
    assert "--recipient" in r.output
    assert not out.exists()
    assert not list(tmp_path.glob("b.age.part-*"))


def test_import_refuses_a_non_empty_home_unless_merge(twin: Twin, bundle: Path, key: AgeKey,
                                                      twin_pass: Path, tmp_path: Path) -> None:
    with twin.open() as store:
        before = {s.name: s.samples for s in store.streams()}
    r = _cli(twin.home, twin_pass, "import", str(bundle), "--identity", str(key.path))
    assert r.exit_code == 2
    assert "--merge" in r.output
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    r = _cli(other, twin_pass, "import", str(bundle), "--identity", str(key.path))
    assert r.exit_code == 2
    assert (other / "notes.txt").read_text() == "mine"
    # merging a twin's own bundle back adds nothing and double-counts no budget
    r = _cli(twin.home, twin_pass, "import", str(bundle), "--identity", str(key.path),
             "--merge", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["samples"] == doc["frames"] == doc["predictions"] == 0
    assert doc["duplicates_skipped"]["samples"] == sum(before.values())
    with twin.open() as store:
        assert {s.name: s.samples for s in store.streams()} == before
        assert store.list_records("privacy_ledger")["lifetime"] == {"spent": 0.5}
        assert store.audit_entries()[-1]["event"] == "import"


def test_merge_adds_new_data_once_and_sums_the_budget(key: AgeKey, twin_pass: Path,
                                                      tmp_path: Path) -> None:
    a = fill_twin(tmp_path / "a", Secret.passphrase(PASS), seconds=60, seed=1)
    b = fill_twin(tmp_path / "b", Secret.passphrase(PASS), seconds=60, seed=2)
    with b.open() as store:
        store.put_record("consent", "hr", {"granted": False, "period": "week"})
        store.put_record("consent", "eda", {"granted": True, "period": "day"})
    out = tmp_path / "b.age"
    assert _cli(b.home, twin_pass, "export", "-o", str(out), "--recipient",
                key.public).exit_code == 0
    for attempt in range(2):
        # b's consent to share eda is a setting a must accept explicitly (test_import_hostile)
        r = _cli(a.home, twin_pass, "import", str(out), "--identity", str(key.path), "--merge",
                 "--accept-settings", "--json")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.output)
        if attempt == 0:
            # the EEG grids coincide (a keeps its own samples); RR and fNIRS times differ
            assert doc["duplicates_skipped"]["samples"] == len(a.eeg)
            assert doc["samples"] == len(b.rr) + len(b.nirs)
        else:
            assert doc["samples"] == 0
            assert doc["records"] == 0
    with a.open() as store:
        assert store.list_records("consent") == {
            "hr": {"granted": True, "period": "day"},  # a's own choice stands
            "eda": {"granted": True, "period": "day"},
        }
        assert store.list_records("privacy_ledger")["lifetime"] == {"spent": 1.0}
        events = [e["event"] for e in store.audit_entries()]
        assert events.count("import") == 2
        assert store.verify().ok


def test_merge_into_an_empty_home_is_refused(bundle: Path, key: AgeKey, twin_pass: Path,
                                             tmp_path: Path) -> None:
    r = _cli(tmp_path / "nothing", twin_pass, "import", str(bundle), "--identity",
             str(key.path), "--merge")
    assert r.exit_code == 2
    assert "needs an existing twin" in r.output
