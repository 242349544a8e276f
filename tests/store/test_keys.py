"""Key hierarchy: secrets, KDF parameters, slots, passphrase change, rotation, key hygiene."""

from __future__ import annotations

import base64
import json
import logging
import pickle
from pathlib import Path

import pytest

from edgetwin.errors import DataCorrupt, UsageError, WrongKey
from edgetwin.store import KdfParams, Secret, TwinStore, new_keyfile
from edgetwin.store import keys as keys_module
from edgetwin.store.keys import Keystore
from tests.store.helpers import PASS, T0, all_samples, batch


def test_default_kdf_parameters_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGETWIN_KDF_PROFILE")
    params = KdfParams.from_env()
    assert params == KdfParams.default()
    assert (params.memory_kib, params.iterations, params.lanes) == (64 * 1024, 3, 4)
    doc = keys_module.__doc__ or ""
    assert "64 MiB, 3 passes, 4 lanes" in " ".join(doc.split())
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "fastest")
    with pytest.raises(UsageError, match="not a known KDF profile"):
        KdfParams.from_env()


def test_real_parameters_unlock(tmp_path: Path) -> None:
    """One twin with the production Argon2id cost, to prove the stored params are used."""
    home = tmp_path / "real"
    TwinStore.create(home, Secret.passphrase(PASS), kdf=KdfParams.default()).close()
    slot = json.loads((home / "keystore.json").read_text())["slots"][0]
    assert slot["kdf"] == {"name": "argon2id", "iterations": 3, "lanes": 4, "memory_kib": 65536}
    with TwinStore.open(home, Secret.passphrase(PASS)) as s:
        assert s.kdf_params() == KdfParams.default()


def test_secret_never_shows(tmp_path: Path) -> None:
    s = Secret.passphrase(PASS)
    assert PASS not in repr(s) and PASS not in str(s) and PASS not in f"{s}"
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(UsageError, match="empty"):
        Secret.passphrase("")
    # NFC: a decomposed "é" types the same key as the composed one
    assert Secret.passphrase("caf\u0065\u0301")._bytes() == Secret.passphrase("caf\u00e9")._bytes()


def test_keyfile_rules(tmp_path: Path) -> None:
    path = tmp_path / "twin.key"
    new_keyfile(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(path.read_bytes()) == 32
    with pytest.raises(UsageError, match="already exists"):
        new_keyfile(path)
    path.chmod(0o640)
    with pytest.raises(UsageError, match="chmod 600"):
        Secret.keyfile(path)
    path.chmod(0o600)
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 16)
    short.chmod(0o600)
    with pytest.raises(UsageError, match="at least 32"):
        Secret.keyfile(short)
    with pytest.raises(UsageError, match="does not exist"):
        Secret.keyfile(tmp_path / "none.key")


def test_keyfile_twin_and_wrong_keyfile(tmp_path: Path) -> None:
    key, other = tmp_path / "a.key", tmp_path / "b.key"
    new_keyfile(key)
    new_keyfile(other)
    home = tmp_path / "home"
    TwinStore.create(home, Secret.keyfile(key)).close()
    with TwinStore.open(home, Secret.keyfile(key)) as s:
        assert s.slots() == ["keyfile"]
    with pytest.raises(WrongKey, match=r"key file .*b\.key does not unlock"):
        TwinStore.open(home, Secret.keyfile(other))
    with pytest.raises(WrongKey, match="cannot be unlocked with a passphrase"):
        TwinStore.open(home, Secret.passphrase(PASS))


def test_change_passphrase_rewraps_without_touching_data(
    twin_home: Path, store: TwinStore, secret: Secret
) -> None:
    store.append_samples(batch("hr", T0, 50))
    store.commit()
    db_rows = store._conn.execute("SELECT sealed FROM chunk").fetchall()
    deks_before = json.loads((twin_home / "keystore.json").read_text())["deks"]
    store.change_secret(Secret.passphrase("a new passphrase"))
    store.close()
    assert json.loads((twin_home / "keystore.json").read_text())["deks"] == deks_before
    with pytest.raises(WrongKey):
        TwinStore.open(twin_home, secret)
    with TwinStore.open(twin_home, Secret.passphrase("a new passphrase")) as s:
        assert s._conn.execute("SELECT sealed FROM chunk").fetchall() == db_rows
        assert len(all_samples(s, "hr")[0]) == 50
        events = [(e["event"], e["details"].get("action")) for e in s.audit_entries()]
        assert ("key_change", "set_passphrase") in events
        assert ("unlock_failed", None) in events


def test_add_and_remove_slots(tmp_path: Path, twin_home: Path, store: TwinStore,
                              secret: Secret) -> None:
    key = tmp_path / "boot.key"
    new_keyfile(key)
    store.change_secret(Secret.keyfile(key))
    assert sorted(store.slots()) == ["keyfile", "passphrase"]
    store.remove_slot("passphrase")
    with pytest.raises(UsageError, match="only way"):
        store.remove_slot("keyfile")
    store.close()
    with pytest.raises(WrongKey):
        TwinStore.open(twin_home, secret)
    TwinStore.open(twin_home, Secret.keyfile(key)).close()


def test_rotate_without_and_with_reencryption(twin_home: Path, store: TwinStore) -> None:
    store.append_samples(batch("hr", T0, 10))
    store.put_record("pairing", "strap", {"address": "AA"})
    store.commit()
    old_ids = {int(r[0]) for r in store._conn.execute("SELECT id FROM dek WHERE period >= 0")}
    store.rotate_keys()
    store.append_samples(batch("hr", T0 + 10, 10))  # same day: a new key all the same
    store.commit()
    used = {int(r[0]) for r in store._conn.execute("SELECT key_id FROM chunk")}
    assert len(used) == 2 and old_ids < used | old_ids
    assert len(all_samples(store, "hr")[0]) == 20
    report = store.rotate_keys(reencrypt=True)
    assert report.chunks_reencrypted == 2
    assert not old_ids & set(Keystore.load(twin_home / "keystore.json").deks)
    assert len({int(r[0]) for r in store._conn.execute("SELECT key_id FROM chunk")}) == 1
    assert len(all_samples(store, "hr")[0]) == 20
    assert store.get_record("pairing", "strap") == {"address": "AA"}
    assert store.verify().ok


def test_keystore_changes_by_another_process_are_not_overwritten(
    twin_home: Path, store: TwinStore, secret: Secret
) -> None:
    other = TwinStore.open(twin_home, secret)
    other.change_secret(Secret.passphrase("new one"))
    other.close()
    store.append_samples(batch("brand_new_stream", T0, 3))  # makes keys: a keystore save
    store.commit()
    store.close()
    TwinStore.open(twin_home, Secret.passphrase("new one")).close()


def test_no_key_material_in_logs_errors_or_reprs(
    tmp_path: Path, twin_home: Path, store: TwinStore, secret: Secret,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    store.append_samples(batch("hr", T0, 10))
    store.put_record("pairing", "strap", {"address": "AA"})
    store.commit()
    secrets_seen = [store._keys._master, store._keys.sid_key, store._keys.audit_mac]
    for key_id in list(store._ks.deks):
        got = store._ks.unwrap_dek(store._keys, key_id)
        assert got is not None
        secrets_seen.append(got[0])
    assert len(secrets_seen) >= 6
    messages: list[str] = [repr(store), repr(store._keys), repr(secret)]
    try:
        TwinStore.open(twin_home, Secret.passphrase("wrong"))
    except WrongKey as exc:
        messages.append(str(exc))
    store._conn.execute("UPDATE chunk SET sealed = zeroblob(40)")
    try:
        list(store.read_samples("hr"))
    except DataCorrupt as exc:
        messages.append(str(exc))
        messages.append(repr(exc.__cause__))
    messages.extend(str(p) for p in store.verify().problems)
    store.forget(everything=True)
    messages.append(caplog.text)
    text = "\n".join(messages)
    assert "does not unlock" in text and "failed authentication" in text
    for key in secrets_seen:
        for form in (key.hex(), base64.b64encode(key).decode(), repr(key)[2:-1]):
            assert form not in text
    assert PASS not in text
