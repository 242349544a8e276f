"""Pytest fixtures and helpers shared by the BLE tests (import them into a test module)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from edgetwin.sources.base import Source
from edgetwin.types import SampleBatch
from tests.sources.bluez_emulator import (  # release_bleak is re-exported for tests
    BlueZEmulator,
    PrivateBus,
    release_bleak,
)


@pytest.fixture
def private_bus(monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateBus]:
    """A private dbus-daemon that bleak sees as the system bus; killed after the test."""
    from bleak_retry_connector import bleak_manager

    # bleak-retry-connector remembers "no D-Bus here" for the whole process; forget it.
    bleak_manager._reset_dbus_socket_cache()
    with PrivateBus() as bus:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        yield bus


@pytest.fixture
async def bluez(private_bus: PrivateBus) -> AsyncIterator[BlueZEmulator]:
    """The emulated BlueZ, serving in the test's event loop."""
    emu = await BlueZEmulator(private_bus.address).start()
    try:
        yield emu
    finally:
        await release_bleak()
        await emu.stop()


async def collect(
    source: Source,
    until: Callable[[list[SampleBatch]], bool],
    *,
    within: float = 20.0,
) -> list[SampleBatch]:
    """Stream batches until ``until(batches)`` holds; fails the test after ``within`` s."""
    got: list[SampleBatch] = []
    async with asyncio.timeout(within), contextlib.aclosing(source.stream()) as stream:
        async for batch in stream:
            got.append(batch)
            if until(got):
                break
    return got


def rows(batches: list[SampleBatch], stream: str) -> list[tuple[float, tuple[float, ...]]]:
    """(t, values) rows of one stream across batches."""
    return [
        (float(b.t[i]), tuple(float(v) for v in b.values[i]))
        for b in batches
        if b.stream == stream
        for i in range(len(b))
    ]


def count(batches: list[SampleBatch], stream: str) -> int:
    return sum(len(b) for b in batches if b.stream == stream)
