from __future__ import annotations

import json

import pytest

from edgetwin.store import Secret, TwinStore


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


def test_add_list_remove_and_the_record_is_encrypted(run_cli, home, passphrase_file) -> None:  # type: ignore[no-untyped-def]
    run_cli("init")
    assert run_cli("pair", "add", "simulator", "--seed", "5").exit_code == 0
    assert run_cli("pair", "add", "simulator", "--seed", "6").exit_code == 0  # gets simulator-2
    listed = json.loads(run_cli("pair", "list", "--json").output)
    assert [(r["name"], r["seed"]) for r in listed] == [("simulator", 5), ("simulator-2", 6)]

    dup = run_cli("pair", "add", "simulator", "--name", "simulator")
    assert dup.exit_code == 2
    assert "already paired" in dup.output

    with TwinStore.open(home, Secret.passphrase(passphrase_file.read_text().strip())) as store:
        events = [e["event"] for e in store.audit_entries()]
    assert events.count("pair_add") == 2

    assert run_cli("pair", "remove", "simulator").exit_code == 0
    gone = run_cli("pair", "remove", "simulator")
    assert gone.exit_code == 2
    assert [r["name"] for r in json.loads(run_cli("pair", "list", "--json").output)] == [
        "simulator-2"
    ]
    raw = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    assert b"simulator-2" not in raw


def test_bad_names_and_speeds_are_usage_errors(run_cli) -> None:  # type: ignore[no-untyped-def]
    run_cli("init")
    assert run_cli("pair", "add", "simulator", "--name", "a.b").exit_code == 2
    assert run_cli("pair", "add", "simulator", "--speed", "0").exit_code == 2


def test_the_simulator_streams_only_the_modalities_asked_for(run_cli) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from edgetwin.sources.simulator import SimulatorSource

    run_cli("init")
    ok = run_cli("pair", "add", "simulator", "--modalities", "vitals, rr,vitals")
    assert ok.exit_code == 0, ok.output
    (record,) = json.loads(run_cli("pair", "list", "--json").output)
    assert record["modalities"] == ["vitals", "rr"]
    source = SimulatorSource.from_record("simulator", {k: record[k] for k in (
        "kind", "seed", "speed", "modalities")} | {"realtime": False, "dropouts": False})
    # No dropouts: the pairing's seed is random and the start is now, so a scheduled
    # dropout could hide a modality in the first seconds (it did, once, in CI).

    async def first_streams() -> set[str]:
        await source.connect()
        names, n = set(), 0
        async for batch in source.stream():  # a few simulated seconds: every modality's turn
            names.add(batch.stream)
            n += 1
            if n >= 40:
                break
        await source.close()
        return names

    assert asyncio.run(first_streams()) == {"simulator.vitals", "simulator.rr"}
    bad = run_cli("pair", "add", "simulator", "--name", "s2", "--modalities", "vitals,ecg")
    assert bad.exit_code == 2 and "unknown ecg" in bad.output and "fnirs" in bad.output
    assert run_cli("pair", "add", "simulator", "--name", "s3", "--modalities", " , ").exit_code == 2


def test_pair_add_lists_every_transport(run_cli) -> None:  # type: ignore[no-untyped-def]
    out = run_cli("pair", "add", "--help").output
    for transport in ("ble", "brainflow", "serial", "simulator"):
        assert transport in out


def test_scan_without_ble_lists_serial_and_dongles(run_cli) -> None:  # type: ignore[no-untyped-def]
    result = run_cli("pair", "scan", "--no-ble", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert isinstance(doc["devices"], list)
    assert all(d["transport"] in ("serial", "brainflow") for d in doc["devices"])
