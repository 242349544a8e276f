"""Fixtures of the sync tests: TLS material, a Mosquitto broker, a collector, a device key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgetwin.sync.signing import DeviceKey
from tests.sync.helpers import Broker, RunningCollector, Tls, make_tls, start_collector


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def device_key() -> DeviceKey:
    return DeviceKey.generate()


@pytest.fixture
def collector(tmp_path: Path, device_key: DeviceKey) -> Iterator[RunningCollector]:
    """A plain-HTTP collector on loopback with ``device_key`` enrolled."""
    running = start_collector(tmp_path / "collector.db")
    running.collector.enroll(device_key.public_b64)
    yield running
    running.stop()
    running.collector.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()
