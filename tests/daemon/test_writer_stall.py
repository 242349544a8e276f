"""A writer that stalls for seconds (a slow fsync on a busy host) loses no sample: the hub's
queues hold what the sources send meanwhile, bounded by bytes rather than by a count of
batches that fast sources fill in seconds; the stall is named in the log and in ``status``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgetwin.config import Config, DaemonConfig
from edgetwin.daemon import control, supervisor, worker
from edgetwin.daemon.hub import batch_bytes
from edgetwin.daemon.supervisor import Daemon
from edgetwin.store import Secret, TwinStore
from edgetwin.types import SampleBatch

from .fakes import ScriptedSource, started
from .test_loop_lag import SlowFsyncStore

STALLED_BATCHES = 400  # published while the commit stalls: more than the old bound of 256
# the defaults under test; only the cadence of commits and reconnects is quickened
CFG = Config(daemon=DaemonConfig(flush_interval_s=0.1, backoff_initial_s=0.01, backoff_max_s=0.02))


class OneStalledCommit(SlowFsyncStore):
    """The real store; one commit, once armed, stalls until the test lets it go (by the
    batches published meanwhile, not by a time: a slow machine stalls it longer)."""

    def __init__(self, inner: TwinStore) -> None:
        super().__init__(inner)
        self.armed = threading.Event()
        self.stalled = threading.Event()
        self.go_on = threading.Event()
        self.stalled_s = 0.0
        self.held_at_catch_up: list[int] = []  # sample bytes each commit after the stall took

    def commit(self) -> None:
        if self.stalled.is_set():
            self.held_at_catch_up.append(self.inner.pending_sample_bytes())
        self.inner.commit()
        if self.armed.is_set() and not self.stalled.is_set():
            self.stalled.set()
            t0 = time.monotonic()
            self.go_on.wait(60.0)
            self.stalled_s = time.monotonic() - t0


async def test_a_writer_stalled_for_seconds_loses_nothing_and_is_named(
    home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")
    monkeypatch.setattr(worker, "SLOW_JOB_S", 1.0)
    # the catch-up is taken in slices of 50 of the source's batches (batch_bytes 672 each)
    slice_bytes = 50 * batch_bytes(SampleBatch.build("live.x", ("hr",), np.arange(10.0),
                                                     np.zeros(10)))
    monkeypatch.setattr(supervisor, "CATCH_UP_SLICE_BYTES", slice_bytes)
    caplog.set_level(logging.WARNING, logger="edgetwin.daemon.worker")
    twin = home / "twin"
    inner = TwinStore.create(twin, Secret.passphrase("pw"))
    try:
        store = OneStalledCommit(inner)
        # ~200 small batches a second, as the serial bridge and BrainFlow boards send them
        live = ScriptedSource("live", batches_per_session=10**6, interval_s=0.005)
        daemon = Daemon(twin, CFG, store, [live], seed=1)
        run = await started(daemon, twin)
        await asyncio.sleep(0.5)
        store.armed.set()
        while not store.stalled.is_set():
            await asyncio.sleep(0.01)
        published = daemon.hub.published_batches
        deadline = time.monotonic() + 30.0
        while (daemon.hub.published_batches - published < STALLED_BATCHES
               and time.monotonic() < deadline):
            await asyncio.sleep(0.05)
        during = daemon.hub.published_batches - published
        backlog = daemon.hub.stats()["consumers"]["store"]["queued_bytes"]
        store.go_on.set()
        await asyncio.sleep(0.5)  # the writer catches up
        status = await asyncio.to_thread(control.request, twin, {"cmd": "status"})
        daemon.stop()
        await run

        # the stall was long enough to overflow the old queue of 256 batches
        assert during >= STALLED_BATCHES, during
        assert store.stalled_s >= 1.0, store.stalled_s
        hub = status["hub"]["consumers"]["store"]
        assert hub["dropped_samples"] == 0, hub
        assert hub["capacity_bytes"] == CFG.daemon.hub_queue_mib * 2**20
        # every sample the source read is committed
        streams = {s.name: s.samples for s in inner.streams()}
        assert streams["live.x"] == daemon.runners[0].samples
        # and the stall is named: in status, and in one log line
        writer = status["daemon"]["writer"]
        assert writer["longest"] == "commit" and writer["longest_s"] >= store.stalled_s - 0.01
        said = [r.getMessage() for r in caplog.records if "spent" in r.getMessage()]
        assert len(said) == 1 and "on commit" in said[0], said
        # the backlog was committed a slice at a time, not held whole with its copies: each
        # commit after the stall took at most a slice's samples (160 of 672 bytes a batch)
        # and what arrived meanwhile
        assert backlog >= 6 * slice_bytes, backlog
        assert len(store.held_at_catch_up) >= 6, store.held_at_catch_up
        assert max(store.held_at_catch_up) <= 2 * 50 * 160, store.held_at_catch_up
    finally:
        inner.close()
