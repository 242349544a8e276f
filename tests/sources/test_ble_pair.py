"""``pair add ble``: the record, the default name, and ``--profile auto`` over real bleak."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest
from click.testing import CliRunner

from edgetwin.cli import pair_ble
from edgetwin.cli.common import AppContext
from edgetwin.errors import DeviceNotFound, UsageError
from edgetwin.sources.ble import BleSource
from tests.sources import ble_harness
from tests.sources.bluez_emulator import EmulatorProcess, control

pytestmark = pytest.mark.timeout(120)

private_bus = ble_harness.private_bus
STRAP = "C0:FF:EE:00:00:01"


def test_record_is_what_the_source_reads() -> None:
    record = pair_ble.build_ble_record("c0:ff:ee:00:00:01", "heart_rate", "Polar H10")
    assert record == {"kind": "ble", "address": STRAP, "profile": "heart_rate",
                      "device": "Polar H10"}
    source = BleSource.from_record("chest", record)
    assert (source.address, source.profile.name, source.device_name) == (
        STRAP, "heart_rate", "Polar H10")
    acquire = pair_ble.build_ble_record(STRAP, "thermometer", notify_mode="acquire")
    assert BleSource.from_record("t", acquire).notify_mode == "acquire"


def test_bad_address_and_profile_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="not a Bluetooth address") as err:
        pair_ble.build_ble_record("C0:FF:EE:00:01", "heart_rate")
    assert err.value.exit_code == 2
    with pytest.raises(UsageError, match="unknown BLE profile") as err:
        pair_ble.build_ble_record(STRAP, "heart_rat")
    assert "did you mean heart_rate" in str(err.value)


def test_default_name_and_streams() -> None:
    assert pair_ble.default_ble_name("heart_rate") == "heart_rate"
    assert pair_ble.default_ble_name("heart_rate", {"heart_rate", "heart_rate-2"}) == (
        "heart_rate-3")
    assert pair_ble.stream_names("chest", "heart_rate") == [
        "chest.hr", "chest.rr", "chest.battery"]


class FakePairing:
    """Stands in for edgetwin.cli.pair's store-backed save_pairing (the store is not here)."""

    def __init__(self, existing: set[str] | None = None) -> None:
        self.saved: dict[str, dict[str, Any]] = {}
        self.existing = existing or set()

    def module(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(save_pairing=self.save_pairing,
                                     paired_names=lambda app: set(self.existing))

    def save_pairing(self, app: AppContext, name: str, record: dict[str, Any]) -> None:
        self.saved[name] = record


def invoke(args: list[str], pairing: FakePairing, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(pair_ble, "_pair_module", pairing.module)
    app = AppContext(home_option=None, passphrase_file=None, keyfile=None, as_json=False,
                     verbose=0)
    return CliRunner().invoke(pair_ble.ble_add, args, obj=app)


def test_explicit_profile_needs_no_radio(monkeypatch: pytest.MonkeyPatch) -> None:
    pairing = FakePairing(existing={"pulse_oximeter"})
    result = invoke([STRAP.lower(), "--profile", "pulse_oximeter"], pairing, monkeypatch)
    assert result.exit_code == 0, result.output
    assert pairing.saved == {"pulse_oximeter-2": {
        "kind": "ble", "address": STRAP, "profile": "pulse_oximeter", "device": ""}}
    assert "pulse_oximeter-2.spo2" in result.output


def test_bad_address_fails_before_any_radio(monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke(["nonsense"], FakePairing(), monkeypatch)
    assert isinstance(result.exception, UsageError)


def test_auto_profile_probes_the_device(private_bus, monkeypatch: pytest.MonkeyPatch) -> None:
    devices = [f"thermometer:{STRAP}:Ear Thermo", "tag:C0:FF:EE:00:00:09:Keys"]
    with EmulatorProcess(private_bus.address, devices) as emu:
        pairing = FakePairing()
        result = invoke([STRAP, "--name", "ear", "--timeout", "15"], pairing, monkeypatch)
        assert result.exit_code == 0, result.output
        assert pairing.saved == {"ear": {"kind": "ble", "address": STRAP,
                                         "profile": "thermometer", "device": "Ear Thermo"}}
        # the probe connected once and let go
        stats = asyncio.run(control(emu.bus_address, "Stats", STRAP))
        assert stats["connects"] == 1 and stats["disconnects"] == 1

        result = invoke(["C0:FF:EE:00:00:09", "--timeout", "15"], pairing, monkeypatch)
        assert isinstance(result.exception, UsageError)
        assert "offers no heart-rate" in str(result.exception)

        asyncio.run(control(emu.bus_address, "Hang", STRAP, True))
        result = invoke([STRAP, "--timeout", "3"], pairing, monkeypatch)
        assert isinstance(result.exception, DeviceNotFound)
        assert result.exception.exit_code == 6
    assert list(pairing.saved) == ["ear"]
