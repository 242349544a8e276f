"""The daemon's side of the dashboard (``[dashboard] enabled``): serve it in the daemon's loop.

The web layer never imports the daemon; this module hands it a backend over the running
daemon: status from memory, store reads in worker threads, changes on the daemon's writer
thread (in order with the appends), forget through the control socket's own path. New
frames and forecasts reach open pages as server-sent events the moment the daemon publishes
them; a status event follows about once a second while a page is open. aiohttp is imported
only here, only when the dashboard is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from edgetwin.errors import EdgetwinError

if TYPE_CHECKING:
    from edgetwin.daemon.supervisor import Daemon
    from edgetwin.store.twin import TwinStore
    from edgetwin.types import FeatureFrame, Prediction
    from edgetwin.web.app import Dashboard

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")
STATUS_EVERY_S = 1.0
STORE_STATUS_EVERY_S = 10.0  # the store's part of status (stream counts, budget) is re-read


class DaemonBackend:
    """The dashboard's view of a running daemon."""

    live = True

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.config = daemon.config
        self._since: dict[str, tuple[str, float]] = {}  # source -> (state, since when)

    async def status(self) -> dict[str, Any]:
        return self._with_since(await self.daemon.status_async())

    def status_from_memory(self) -> dict[str, Any]:
        """``status`` with the store's part as last read (no store access)."""
        return self._with_since(self.daemon.status_from_memory())

    def watch_states(self) -> None:
        """Note when each source entered its state (called about once a second)."""
        now = time.time()
        for runner in self.daemon.runners:
            state = str(runner.state)
            seen = self._since.get(runner.source.name)
            if seen is None or seen[0] != state:
                self._since[runner.source.name] = (state, now)

    def _with_since(self, doc: dict[str, Any]) -> dict[str, Any]:
        self.watch_states()
        for src in doc.get("sources", []):
            seen = self._since.get(src.get("name"))
            if seen is not None:
                src["state_since"] = seen[1]
        return doc

    async def read(self, fn: Callable[[TwinStore], T]) -> T:
        # TwinStore serialises calls with its lock: a read waits at most for one writer step
        return await asyncio.to_thread(fn, cast("TwinStore", self.daemon.store))

    async def write(self, fn: Callable[[TwinStore], T], what: str) -> T:
        d = self.daemon

        def job() -> T:
            result = fn(cast("TwinStore", d.store))
            d.commit_now()  # durable before the reply, as "mark" is
            return result

        return await d.on_writer(job, what=f"dashboard {what}")

    async def forget(
        self, *, stream: str | None, before: float | None, everything: bool
    ) -> dict[str, Any]:
        # exactly the control socket's forget (writer thread, in-memory state dropped too)
        reply = await self.daemon.request(
            {"cmd": "forget", "stream": stream, "before": before, "all": everything}
        )
        if reply is None or "forget" not in reply:
            raise EdgetwinError(f"the daemon refused the forget: {reply}")
        result: dict[str, Any] = reply["forget"]
        return result


@contextlib.asynccontextmanager
async def dashboard_for(daemon: Daemon) -> AsyncIterator[Dashboard | None]:
    """Serve the dashboard while the block runs, if ``[dashboard] enabled``; a dashboard that
    cannot start (port in use, unsafe host) is logged and the daemon runs without it."""
    settings = daemon.config.dashboard
    if not settings.enabled:
        yield None
        return
    try:
        # aiohttp's import (~0.15 s, more on a Pi: it loads the CA store) in a thread, so the
        # loop goes on connecting the sources meanwhile
        await asyncio.to_thread(importlib.import_module, "edgetwin.web.app")
        from edgetwin.web.app import Dashboard

        dash = Dashboard(daemon.home, DaemonBackend(daemon), settings)
        await dash.start()
    except (EdgetwinError, ImportError, OSError) as exc:
        _LOGGER.warning("dashboard not served: %s", exc)
        yield None
        return
    _LOGGER.info("dashboard on %s ('edgetwin dashboard' prints the URL with its token)",
                 dash.base_url)
    unhook = _hook_publish(daemon, dash)
    ticker = asyncio.create_task(_status_ticker(daemon, dash), name="dashboard:status")
    try:
        yield dash
    finally:
        unhook()
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await dash.stop()


def _hook_publish(daemon: Daemon, dash: Dashboard) -> Callable[[], None]:
    """Forward what the daemon publishes on the loop (new frames, forecasts) to the pages."""
    from edgetwin.web.data import frame_json

    def publish(frames: list[FeatureFrame], preds: list[Prediction]) -> None:
        if dash.hub.clients and frames:
            sent_at = time.time()  # pages measure the delivery latency against it
            dash.hub.publish("frames", {"sent_at": sent_at,
                                        "frames": [frame_json(f) for f in frames]})
            for pred in preds:
                dash.hub.publish("prediction", {**pred.to_json(), "sent_at": sent_at})

    daemon.publish_listeners.append(publish)
    return lambda: daemon.publish_listeners.remove(publish)


async def _status_ticker(daemon: Daemon, dash: Dashboard) -> None:
    backend = cast("DaemonBackend", dash.backend)
    last_store = 0.0
    while True:
        await asyncio.sleep(STATUS_EVERY_S)
        backend.watch_states()
        if not dash.hub.clients:
            continue
        try:
            now = time.monotonic()
            if now - last_store >= STORE_STATUS_EVERY_S:
                last_store = now
                doc = await backend.status()
            else:
                doc = backend.status_from_memory()
            dash.hub.publish("status", doc)
        except Exception:  # a status add-on failing must not end the live updates
            _LOGGER.debug("dashboard status failed", exc_info=True)
