"""The Devices page's scan: the same scan as `pair scan`, through bleak's real BlueZ backend on
the emulated BlueZ, each device with the command that pairs it; CSRF-protected; ports of paired
sensors are not probed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from edgetwin.config import Config, DashboardConfig
from edgetwin.store import Secret, TwinStore
from edgetwin.web.app import Dashboard, StoreBackend
from tests.sources import ble_harness
from tests.sources.bluez_emulator import BlueZEmulator, HeartRateStrap
from tests.web.test_dashboard_http import _csrf, _jar, _login
from tests.web.test_dashboard_twin import PASS, build_twin

private_bus = ble_harness.private_bus
bluez = ble_harness.bluez
STRAP = "C0:FF:EE:00:00:21"


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Dashboard]:
    home = tmp_path / "home"
    build_twin(home)
    store = TwinStore.open(home, Secret.passphrase(PASS))
    dash = Dashboard(home, StoreBackend(store, Config()), DashboardConfig(port=0))
    await dash.start()
    try:
        yield dash
    finally:
        await dash.stop()
        store.close()


async def test_scan_lists_a_nearby_strap_with_the_command_that_pairs_it(
    served: Dashboard, bluez: BlueZEmulator
) -> None:
    bluez.add(HeartRateStrap(STRAP, "Polar H10 5678"))
    async with aiohttp.ClientSession(cookie_jar=_jar()) as session:
        await _login(served, session)
        csrf = await _csrf(served, session)
        async with session.post(served.base_url + "/api/scan", json={"seconds": 1}) as r:
            assert r.status == 403  # no CSRF token: refused before any radio work
        headers = {"X-CSRF-Token": csrf}
        async with session.post(served.base_url + "/api/scan", json={"seconds": 99},
                                headers=headers) as r:
            assert r.status == 400 and "from 1 to 30" in await r.text()
        async with session.post(served.base_url + "/api/scan", json={"seconds": 1},
                                headers=headers) as r:
            assert r.status == 200, await r.text()
            doc = await r.json()
        async with session.get(served.base_url + "/devices") as r:
            page = await r.text()
    strap = [d for d in doc["devices"] if d["address"] == STRAP]
    assert strap, doc
    assert strap[0]["name"] == "Polar H10 5678" and strap[0]["what"].startswith("heart_rate")
    assert strap[0]["pair with"] == f"edgetwin pair add ble {STRAP} --profile heart_rate"
    assert isinstance(doc["notes"], list)
    assert 'id=scan data-action=scan' in page and 'id="scan-results"' in page


async def test_a_bind_key_in_a_pairing_never_reaches_the_devices_page(tmp_path: Path) -> None:
    key = "00112233445566778899aabbccddeeff"
    home = tmp_path / "home"
    build_twin(home)
    store = TwinStore.open(home, Secret.passphrase(PASS))
    store.put_record("pairing", "bedroom", {"kind": "ble", "address": "A4:C1:38:00:00:01",
                                            "profile": "bthome", "bind_key": key})
    store.commit()
    dash = Dashboard(home, StoreBackend(store, Config()), DashboardConfig(port=0))
    await dash.start()
    try:
        async with aiohttp.ClientSession(cookie_jar=_jar()) as session:
            await _login(dash, session)
            async with session.get(dash.base_url + "/devices") as r:
                page = await r.text()
    finally:
        await dash.stop()
        store.close()
    assert "bedroom" in page and "(hidden)" in page
    assert key not in page.lower() and key.upper() not in page
