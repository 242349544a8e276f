"""``edgetwin import`` of hostile bundles whose hashes are right (whoever built the archive
computed them): exit 4 with what and where, one line, nothing stored changed. And a merge
never takes consent, a sync target or queued uploads from a bundle without being told to."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyrage
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from edgetwin.bundle import export_bundle
from edgetwin.bundle.export import RECORD_KINDS
from edgetwin.cli.main import cli
from edgetwin.store import Secret, TwinStore
from tests.bundle.conftest import PASS, fill_twin

Members = dict[str, bytes]


class _World(dict[str, Any]):
    """The fixture's dict, with a short repr: Hypothesis reprs a failing call's fixtures too,
    and this one's megabytes of members would hide the failure behind a HypothesisWarning."""

    def __repr__(self) -> str:
        return f"<world at {self['root']}>"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A small source twin's bundle (and its members), an age identity, a merge target."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGETWIN_KDF_PROFILE", "test")
    root = tmp_path_factory.mktemp("hostile")
    identity = pyrage.x25519.Identity.generate()
    key = root / "identity.txt"
    key.write_text(f"{identity}\n")
    key.chmod(0o600)
    pw = root / "pass"
    pw.write_text(PASS + "\n")
    pw.chmod(0o600)
    src = fill_twin(root / "src", Secret.passphrase(PASS), seconds=20, seed=3)
    with src.open() as store:
        store.put_record("consent", "eda", {"granted": True, "period": "day"})
        store.put_record("sync", "target", {
            "kind": "https", "url": "https://collector.example/ingest",
            "host": "collector.example", "port": 443, "path": "/ingest", "tls": True,
            "topic": None, "ca_file": None, "allow_insecure_loopback": False,
        })
        store.put_record("pairing", "strap2", {"kind": "ble", "address": "C0:FF:EE:00:00:02"})
        store.audit("note", n=1)  # a few audit lines to spoil
        store.audit("note", n=2)
        bundle = root / "src.age"
        export_bundle(store, bundle, recipients=[str(identity.to_public())])
    target = fill_twin(root / "target", Secret.passphrase(PASS), seconds=20, seed=4)
    yield _World({"root": root, "identity": identity, "key": key, "pass": pw, "bundle": bundle,
                  "members": _unpack(bundle, identity), "target": target.home})
    mp.undo()


def _unpack(bundle: Path, identity: Any) -> Members:
    plain = pyrage.decrypt(bundle.read_bytes(), [identity])
    out: Members = {}
    with tarfile.open(fileobj=io.BytesIO(plain)) as tf:
        for m in tf.getmembers():
            f = tf.extractfile(m)
            assert f is not None
            out[m.name] = f.read()
    return out


def _pack(members: Members, identity: Any, out: Path, *,
          manifest_edit: Callable[[dict[str, Any]], None] | None = None,
          manifest_raw: bytes | None = None) -> Path:
    """Members into a bundle whose manifest declares each one's true size and sha256."""
    manifest = json.loads(members["manifest.json"])
    manifest["members"] = {
        n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
        for n, d in members.items() if n != "manifest.json"
    }
    if manifest_edit is not None:
        manifest_edit(manifest)
    raw = manifest_raw if manifest_raw is not None else json.dumps(manifest).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in [("manifest.json", raw),
                           *((n, d) for n, d in members.items() if n != "manifest.json")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    out.write_bytes(pyrage.encrypt(buf.getvalue(), [identity.to_public()]))
    return out


def _import(w: dict[str, Any], bundle: Path, home: Path, *extra: str) -> Result:
    return CliRunner().invoke(
        cli, ["--home", str(home), "--passphrase-file", str(w["pass"]), "import", str(bundle),
              "--identity", str(w["key"]), *extra],
        catch_exceptions=True,
    )


def _snapshot(home: Path) -> dict[str, Any]:
    with TwinStore.open(home, Secret.passphrase(PASS)) as s:
        return {
            "streams": {i.name: (i.samples, i.first_t, i.last_t) for i in s.streams()},
            "frames": [f.t for f in s.read_frames()],
            "predictions": len(list(s.iter_predictions())),
            "records": {k: s.list_records(k)
                        for k in (*RECORD_KINDS, "imported_audit", "bundle_import")},
            "audit": [e["event"] for e in s.audit_entries()],
            "ok": s.verify().ok,
        }


def _verify(w: dict[str, Any], home: Path) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), "--passphrase-file", str(w["pass"]),
                                    "verify"])


def _one_line(result: Result) -> str:
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _refused_everywhere(w: dict[str, Any], bundle: Path, code: int = 4) -> str:
    """Refused both into an empty home (nothing made) and as a merge (the twin unchanged)."""
    with tempfile.TemporaryDirectory(dir=w["root"]) as tmp:
        tmp_path = Path(tmp)
        home = tmp_path / "new"
        r = _import(w, bundle, home)
        assert r.exit_code == code, r.output
        line = _one_line(r)
        assert not home.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == []  # no staging left either
        target = tmp_path / "target"
        shutil.copytree(w["target"], target)
        before = _snapshot(target)
        r = _import(w, bundle, target, "--merge", "--accept-settings")
        assert r.exit_code == code, r.output
        assert _one_line(r) == line
        assert _snapshot(target) == before
        assert _verify(w, target).exit_code == 0
    return line


def _with(w: dict[str, Any], name: str, data: bytes, **kw: Any) -> Path:
    members = dict(w["members"])
    members[name] = data
    return _pack(members, w["identity"], w["root"] / "hostile.age", **kw)


# -- the four hostile members of the issue, each a traceback on the old importer -----------------


def test_manifest_nested_200k_deep_exits_4_naming_the_manifest(world: dict[str, Any]) -> None:
    manifest = json.loads(world["members"]["manifest.json"])
    manifest["members"] = {
        n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
        for n, d in world["members"].items() if n != "manifest.json"
    }
    raw = json.dumps(manifest)[:-1] + ', "notes": ' + "[" * 200_000 + "]" * 200_000 + "}"
    bundle = _pack(world["members"], world["identity"], world["root"] / "deep.age",
                   manifest_raw=raw.encode())
    line = _refused_everywhere(world, bundle)
    assert "manifest.json" in line and "nested deeper than" in line


def test_records_member_that_is_a_list_exits_4_naming_it(world: dict[str, Any]) -> None:
    def declare(m: dict[str, Any]) -> None:
        m["records"]["inference"] = {"member": "records/inference.json", "count": 0}

    bundle = _with(world, "records/inference.json", b"[]", manifest_edit=declare)
    line = _refused_everywhere(world, bundle)
    assert "records/inference.json" in line and "a list" in line


def test_audit_line_with_text_seq_exits_4_naming_member_and_line(world: dict[str, Any]) -> None:
    lines = world["members"]["audit.jsonl"].decode().splitlines()
    entry = json.loads(lines[1])
    entry["seq"] = "x"
    lines[1] = json.dumps(entry)
    bundle = _with(world, "audit.jsonl", ("\n".join(lines) + "\n").encode())
    line = _refused_everywhere(world, bundle)
    assert "audit.jsonl, line 2" in line and "'seq'" in line


@pytest.mark.parametrize("member", ["signals/polar.rr.csv", "timeline.csv", "predictions.jsonl"])
def test_non_utf8_text_member_exits_4_naming_member_and_line(world: dict[str, Any],
                                                             member: str) -> None:
    lines = world["members"][member].split(b"\n")
    lines[2] = lines[2][:5] + b"\xe9" + lines[2][5:]  # a Latin-1 'e acute' on line 3
    line = _refused_everywhere(world, _with(world, member, b"\n".join(lines)))
    assert f"'{member}', line 3: not UTF-8" in line and "0xe9" in line


# -- the same class: every untrusted field is checked before it is used ---------------------------


def _record_member(world: dict[str, Any], kind: str, records: dict[str, Any]) -> bytes:
    return json.dumps({"kind": kind, "records": records}).encode()


@pytest.mark.parametrize(
    ("member", "payload", "expect"),
    [
        ("records/consent.json",
         lambda w: _record_member(w, "consent", {"hr": {"granted": "yes", "period": "day"}}),
         "record 'hr': 'granted' is \"yes\", not true or false"),
        ("records/privacy_ledger.json",
         lambda w: _record_member(w, "privacy_ledger", {"lifetime": {"spent": -3}}),
         "record 'lifetime': 'spent' is -3, not a number >= 0"),
        ("records/privacy_ledger.json",
         lambda w: b'{"kind": "privacy_ledger", "records": {"lifetime": {"spent": NaN}}}',
         "'spent' is NaN, not a number >= 0"),
        ("records/pairing.json",
         lambda w: b'{"kind": "pairing", "records": {"p": {"kind": "ble", "x": '
         + b"[" * 100 + b"]" * 100 + b"}}}",
         "nested deeper than"),
        ("records/consent.json", lambda w: b'{"kind": "consent", "records": []}',
         "'records' is [], not an object"),
        ("predictions.jsonl",
         lambda w: w["members"]["predictions.jsonl"].replace(b'"horizon":[',
                                                             b'"horizon":[' + b"9" * 5000 + b",",
                                                             1),
         "predictions.jsonl, line 1: JSON number of 5000 characters"),
        ("predictions.jsonl",
         lambda w: w["members"]["predictions.jsonl"].replace(b'"target":"', b'"target":7,"x":"',
                                                             1),
         "predictions.jsonl, line 1: 'target' is 7, not text"),
        ("timeline.csv",  # a cell over the csv module's field limit
         lambda w: w["members"]["timeline.csv"].replace(b"\n", b'\n"' + b"x" * 140_000 + b'"', 1),
         "timeline.csv, line 2: not CSV (field larger than field limit"),
        ("audit.jsonl", lambda w: b"[1, 2]\n", "audit.jsonl, line 1: not an object but a list"),
    ],
)
def test_hostile_fields_exit_4_naming_member_and_what(world: dict[str, Any], member: str,
                                                      payload: Any, expect: str) -> None:
    line = _refused_everywhere(world, _with(world, member, payload(world)))
    assert member.rsplit("/", maxsplit=1)[-1] in line and expect in line, line


def _npy_with(data: bytes, index: int, value: float) -> bytes:
    import numpy as np

    arr = np.load(io.BytesIO(data), allow_pickle=False).copy()
    arr[index] = value
    out = io.BytesIO()
    np.save(out, arr, allow_pickle=False)
    return out.getvalue()


@pytest.mark.parametrize(
    ("member", "payload", "expect"),
    [
        ("signals/muse.eeg.times.npy",
         lambda w: _npy_with(w["members"]["signals/muse.eeg.times.npy"], -1, 1e300),
         "bundle stream 'muse.eeg' (signals/muse.eeg.edf"),
        ("predictions.jsonl",
         lambda w: w["members"]["predictions.jsonl"].replace(b'{"t":', b'{"t":1e300,"was":', 1),
         "predictions.jsonl: the time 1e+300"),
    ],
)
def test_times_the_store_cannot_key_exit_4_naming_where(world: dict[str, Any], member: str,
                                                         payload: Any, expect: str) -> None:
    """Found by fuzzing: a finite time past int64 buckets was a struct.error at commit."""
    line = _refused_everywhere(world, _with(world, member, payload(world)))
    assert expect in line and "not a Unix time edgetwin keeps" in line, line


def test_infinite_time_in_the_manifest_exits_4(world: dict[str, Any]) -> None:
    raw = world["members"]["manifest.json"]
    manifest = json.loads(raw)
    manifest["members"] = {
        n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
        for n, d in world["members"].items() if n != "manifest.json"
    }
    text = json.dumps(manifest).replace('"created": ', '"created": 1e999, "was": ', 1)
    bundle = _pack(world["members"], world["identity"], world["root"] / "inf.age",
                   manifest_raw=text.encode())
    line = _refused_everywhere(world, bundle)
    assert "manifest.json: number 1e999 overflows a float" in line


# -- settings travel with a merge only when the person says so ----------------------------------


def test_merge_does_not_grant_consent_or_set_a_sync_target_without_accept_settings(
    world: dict[str, Any], tmp_path: Path,
) -> None:
    target = tmp_path / "target"
    shutil.copytree(world["target"], target)
    before = _snapshot(target)
    r = _import(world, world["bundle"], target, "--merge")
    assert r.exit_code == 2, r.output
    line = _one_line(r)
    assert "grant consent to share 'eda' per day" in line
    assert "set the sync target" in line and "https://collector.example/ingest" in line
    assert "pair the device(s) 'strap2'" in line
    assert "--accept-settings" in line and "nothing was merged" in line
    assert _snapshot(target) == before
    r = _import(world, world["bundle"], target, "--merge", "--accept-settings")
    assert r.exit_code == 0, r.output
    assert "setting taken from the bundle: grant consent to share 'eda'" in r.output
    with TwinStore.open(target, Secret.passphrase(PASS)) as s:
        assert s.get_record("consent", "eda") == {"granted": True, "period": "day"}
        assert s.get_record("sync", "target")["url"] == "https://collector.example/ingest"  # type: ignore[index]
        assert s.get_record("pairing", "strap2") is not None


def test_merge_keeps_the_twins_own_settings_and_asks_nothing_when_it_has_them(
    world: dict[str, Any], tmp_path: Path,
) -> None:
    target = tmp_path / "target"
    shutil.copytree(world["target"], target)
    with TwinStore.open(target, Secret.passphrase(PASS)) as s:
        s.put_record("consent", "eda", {"granted": False, "period": "week"})
        s.put_record("sync", "target", {"kind": "https", "url": "https://mine.example/x"})
        s.put_record("pairing", "strap2", {"kind": "simulator"})
    r = _import(world, world["bundle"], target, "--merge")
    assert r.exit_code == 0, r.output
    with TwinStore.open(target, Secret.passphrase(PASS)) as s:
        assert s.get_record("consent", "eda") == {"granted": False, "period": "week"}
        assert s.get_record("sync", "target") == {"kind": "https", "url": "https://mine.example/x"}
        assert s.get_record("pairing", "strap2") == {"kind": "simulator"}


# -- property: whatever the bytes, a clean exit and a sound twin -----------------------------------

_SETTINGS = settings(max_examples=40, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.too_slow])


def _check_outcome(w: dict[str, Any], r: Result, allowed: set[int], target: Path | None,
                   before: dict[str, Any] | None) -> None:
    assert r.exit_code in allowed, (r.exit_code, r.output, r.exception)
    event(f"exit {r.exit_code}")
    if r.exit_code:
        _one_line(r)
    if target is not None:
        after = _snapshot(target)
        assert after["ok"]  # the twin verifies, whatever happened: by the API and the CLI
        assert _verify(w, target).exit_code == 0
        if r.exit_code:
            assert after == before  # and a refused import changed nothing stored


@_SETTINGS
@given(data=st.binary(max_size=2048), age_header=st.booleans())
def test_import_of_arbitrary_bytes_exits_cleanly(world: dict[str, Any], data: bytes,
                                                 age_header: bool) -> None:
    if age_header:  # past the first check: a real header, then anything
        data = world["bundle"].read_bytes()[:200] + data
    with tempfile.TemporaryDirectory(dir=world["root"]) as tmp:
        bundle = Path(tmp) / "any.age"
        bundle.write_bytes(data)
        r = _import(world, bundle, Path(tmp) / "new")
        _check_outcome(world, r, {2, 3, 4}, None, None)
        assert not (Path(tmp) / "new").exists()


@_SETTINGS
@given(plain=st.binary(max_size=4096))
def test_import_of_an_arbitrary_encrypted_archive_exits_cleanly(world: dict[str, Any],
                                                                plain: bytes) -> None:
    with tempfile.TemporaryDirectory(dir=world["root"]) as tmp:
        bundle = Path(tmp) / "any.age"
        bundle.write_bytes(pyrage.encrypt(plain, [world["identity"].to_public()]))
        r = _import(world, bundle, Path(tmp) / "new")
        _check_outcome(world, r, {0, 2, 4}, None, None)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)


_HOW = ("bytes", "json", "record", "flip", "cut", "splice")


def _hostile_member(members: Members, pick: int, how: str, blob: bytes, doc: Any,
                    recs: dict[str, Any], at: int, xor: int) -> tuple[str, bytes]:
    """One member replaced: every choice is drawn up front, so shrinking stays deterministic."""
    names = sorted(n for n in members if n != "manifest.json")
    name = names[pick % len(names)]
    original = members[name]
    if how == "bytes":
        return name, blob
    if how == "json":
        return name, json.dumps(doc).encode()
    if how == "record" and name.startswith("records/"):
        kind = name.split("/")[1].removesuffix(".json")
        return name, json.dumps({"kind": kind, "records": recs}).encode()
    if not original:
        return name, blob
    at %= len(original)
    if how == "flip":
        return name, original[:at] + bytes([original[at] ^ xor]) + original[at + 1:]
    if how == "cut":
        return name, original[:at]
    return name, original[:at] + (blob or b"\0") + original[at:]


@_SETTINGS
@given(pick=st.integers(0, 1000), how=st.sampled_from(_HOW), blob=st.binary(max_size=256),
       doc=_JSON, recs=st.dictionaries(st.text(min_size=1, max_size=8), _JSON, max_size=3),
       at=st.integers(0, 1 << 30), xor=st.integers(1, 255))
# found by this property: bytes spliced into a .npy header (TokenError; a three-line error)
@example(pick=234, how="splice", blob=b"\x00\x03", doc=None, recs={}, at=7, xor=1)
@example(pick=234, how="splice", blob=b"", doc=None, recs={}, at=7, xor=1)
def test_merge_of_arbitrary_correctly_hashed_members_leaves_the_twin_sound(
    world: dict[str, Any], pick: int, how: str, blob: bytes, doc: Any, recs: dict[str, Any],
    at: int, xor: int,
) -> None:
    name, content = _hostile_member(world["members"], pick, how, blob, doc, recs, at, xor)
    with tempfile.TemporaryDirectory(dir=world["root"]) as tmp:
        bundle = _with(world, name, content)
        target = Path(tmp) / "target"
        shutil.copytree(world["target"], target)
        before = _snapshot(target)
        r = _import(world, bundle, target, "--merge", "--accept-settings")
        _check_outcome(world, r, {0, 2, 4}, target, before)
        fresh = Path(tmp) / "fresh"
        r = _import(world, bundle, fresh)
        _check_outcome(world, r, {0, 2, 4}, fresh if r.exit_code == 0 else None, None)
        if r.exit_code:
            assert not fresh.exists()


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


@_SETTINGS
@given(pick=st.integers(0, 10_000), value=_JSON, delete=st.booleans())
def test_import_of_a_manifest_with_an_arbitrary_field_exits_cleanly(
    world: dict[str, Any], pick: int, value: Any, delete: bool,
) -> None:
    base = json.loads(world["members"]["manifest.json"])
    base.pop("members")  # _pack declares the members; everything else is fair game
    paths = list(_paths(base))
    path = paths[pick % len(paths)]

    def edit(m: dict[str, Any]) -> None:
        node = m
        for k in path[:-1]:
            node = node[k]
        if delete and isinstance(node, dict):
            del node[path[-1]]
        else:
            node[path[-1]] = value

    with tempfile.TemporaryDirectory(dir=world["root"]) as tmp:
        bundle = _pack(world["members"], world["identity"], Path(tmp) / "m.age",
                       manifest_edit=edit)
        target = Path(tmp) / "target"
        shutil.copytree(world["target"], target)
        before = _snapshot(target)
        r = _import(world, bundle, target, "--merge", "--accept-settings")
        _check_outcome(world, r, {0, 2, 4}, target, before)
        assert "cannot be read" not in r.stderr  # a field is checked, not caught by the backstop
