"""A (re)start reaches the sensors first: the sources start before the dashboard is imported
and served, and what only a periodic job or a bundle command needs is not imported on the
way (every start, and every restart after a crash, loses data until the sources run)."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from edgetwin.config import Config, DashboardConfig
from edgetwin.daemon.app import build_daemon, run_daemon
from edgetwin.daemon.lock import DaemonLock
from edgetwin.errors import DaemonAlreadyRunning
from edgetwin.store import Secret, TwinStore
from tests.daemon.fakes import ScriptedSource

CONFIG = dataclasses.replace(Config(), dashboard=DashboardConfig(port=0))  # any free port


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGETWIN_KDF_PROFILE", "test")


class _Noting(ScriptedSource):
    def __init__(self, order: list[str]) -> None:
        super().__init__("strap", batches_per_session=2, end_with=None, interval_s=0.05)
        self._order = order

    async def connect(self) -> None:
        self._order.append("source connects")
        await super().connect()


async def test_sources_start_before_the_dashboard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgetwin.web.app import Dashboard

    order: list[str] = []
    start = Dashboard.start

    async def noting_start(self: Dashboard) -> None:
        order.append("dashboard starts")
        await start(self)
        order.append("dashboard serves")

    monkeypatch.setattr(Dashboard, "start", noting_start)
    home = tmp_path / "twin"
    with TwinStore.create(home, Secret.passphrase("pw")) as store:
        daemon = build_daemon(home, CONFIG, store, sources=[_Noting(order)],
                              engine=None, lsl=False)
        await run_daemon(daemon, duration=1.0)
        stored = {s.name: s.samples for s in store.streams()}
    assert order == ["source connects", "dashboard starts", "dashboard serves"]
    assert stored.get("strap.x", 0) > 0  # the daemon ran beside its dashboard and stored


async def test_a_daemon_that_cannot_start_serves_no_dashboard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgetwin.web.app import Dashboard

    started: list[str] = []

    async def noting_start(self: Dashboard) -> None:
        started.append("dashboard")

    monkeypatch.setattr(Dashboard, "start", noting_start)
    home = tmp_path / "twin"
    with TwinStore.create(home, Secret.passphrase("pw")) as store:
        other = DaemonLock(home)
        other.acquire()  # another daemon runs this twin
        try:
            daemon = build_daemon(home, CONFIG, store, sources=[_Noting([])],
                                  engine=None, lsl=False)
            with pytest.raises(DaemonAlreadyRunning):
                await run_daemon(daemon, duration=5.0)
        finally:
            other.release()
    assert started == []


async def test_sources_start_before_the_models_load_and_then_they_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default engine (LOAD) loads once the sources run, not before: a restart after a
    crash reaches the sensors ~0.2 s sooner here (about a second on a Pi 4). Then the daemon
    serves it: the engine persists frames, its personal refit is scheduled, status scores it."""
    import edgetwin.daemon.app as app
    from edgetwin.inference.serving import ServingEngine

    order: list[str] = []
    load = app.load_models

    def noting_load(config: Config) -> object:
        order.append("models load")
        return load(config)

    monkeypatch.setattr(app, "load_models", noting_load)
    home = tmp_path / "twin"
    with TwinStore.create(home, Secret.passphrase("pw")) as store:
        daemon = build_daemon(home, CONFIG, store, sources=[_Noting(order)], lsl=False)
        assert daemon.engine is None and order == []  # nothing loaded by building it
        run = asyncio.create_task(run_daemon(daemon))
        try:
            for _ in range(3000):
                if isinstance(daemon.engine, ServingEngine) and "personal" in [
                        j.name for j in daemon._periodic]:
                    break
                await asyncio.sleep(0.01)
            status = await daemon.status_async()
            assert isinstance(daemon.engine, ServingEngine)
            daemon.engine.score = {"windows": {"day": {"hr": {
                "mae": {"served": 1.2, "persistence": 1.5}, "coverage": 0.9}}}}
            scored = await daemon.status_async()  # read from the engine the daemon serves
        finally:
            daemon.stop()
            await run
    assert order[:2] == ["source connects", "models load"]
    assert isinstance(daemon.engine, ServingEngine)
    assert [j.name for j in daemon._periodic].count("personal") == 1
    assert "score" not in status  # no refit yet: the served engine's score is empty, not stale
    assert scored["score"]["summary"] == ("score (last day, MAE): hr 1.20 vs persistence 1.50 "
                                          "(0.80x), band 90%")


def test_a_start_imports_neither_the_sync_job_nor_bundle_code() -> None:
    code = (
        "import sys\n"
        "import edgetwin.cli.unlock, edgetwin.daemon.app\n"
        "from edgetwin.daemon.app import _sync_job\n"
        "from edgetwin.config import Config\n"
        "job = _sync_job(None, Config())\n"
        "print(*[m in sys.modules for m in ('edgetwin.sync.service', 'edgetwin.privacy.secagg',"
        " 'edgetwin.bundle.export', 'edgetwin.bundle.importer')])\n"
        "from edgetwin.bundle import export_bundle, import_bundle\n"
        "print(export_bundle.__module__, import_bundle.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    assert out == ["False False False False", "edgetwin.bundle.export edgetwin.bundle.importer"]
