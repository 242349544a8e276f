"""The dashboard's aiohttp application and server, run inside the caller's asyncio loop.

The daemon serves it with a backend over its own state (live updates, its writer thread for
changes); ``edgetwin dashboard`` serves it over the stored twin. Either way every request
passes :class:`~edgetwin.web.security.Guard`: token or session cookie, own origin, CSRF on
POST, strict headers. Store work runs off the loop (``Backend.read`` / ``Backend.write``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlencode

from aiohttp import web

from edgetwin.errors import EdgetwinError, UsageError
from edgetwin.web import data, pages
from edgetwin.web.live import LiveHub, json_text
from edgetwin.web.security import (
    COOKIE,
    CSRF_HEADER,
    HEADERS,
    Guard,
    allowed_hosts,
    is_loopback,
    load_or_create_token,
)

if TYPE_CHECKING:
    from edgetwin.config import Config, DashboardConfig
    from edgetwin.store.twin import TwinStore

_LOGGER = logging.getLogger(__name__)
SCAN_SECONDS = 5.0  # a BLE scan, as `pair scan` does by default
T = TypeVar("T")
STATIC = Path(__file__).resolve().parent / "static"
SSE_KEEPALIVE_S = 15.0


class Backend(Protocol):
    """Where the pages' data and actions come from: the daemon, or the stored twin."""

    config: Config
    live: bool  # a running daemon behind it (live updates)

    async def status(self) -> dict[str, Any]: ...
    async def read(self, fn: Callable[[TwinStore], T]) -> T: ...
    async def write(self, fn: Callable[[TwinStore], T], what: str) -> T: ...
    async def forget(
        self, *, stream: str | None, before: float | None, everything: bool
    ) -> dict[str, Any]: ...


class StoreBackend:
    """The stored twin, no daemon: reads and changes in worker threads, one change at a time."""

    live = False

    def __init__(self, store: TwinStore, config: Config) -> None:
        self.store = store
        self.config = config
        self._lock = asyncio.Lock()

    async def status(self) -> dict[str, Any]:
        return await self.read(lambda s: data.offline_status(s, self.config))

    async def read(self, fn: Callable[[TwinStore], T]) -> T:
        return await asyncio.to_thread(fn, self.store)

    async def write(self, fn: Callable[[TwinStore], T], what: str) -> T:
        async with self._lock:
            return await asyncio.to_thread(fn, self.store)

    async def forget(
        self, *, stream: str | None, before: float | None, everything: bool
    ) -> dict[str, Any]:
        def run(s: TwinStore) -> dict[str, Any]:
            report: dict[str, Any] = s.forget(
                stream=stream, before=before, everything=everything
            ).to_json()
            return report

        return await self.write(run, "forget")


class Dashboard:
    """The web server: ``await start()``, ``url`` to open, ``await stop()``."""

    def __init__(self, home: Path, backend: Backend, settings: DashboardConfig) -> None:
        self.home = home
        self.backend = backend
        self.settings = settings
        self.hub = LiveHub()
        self.token = load_or_create_token(home)
        self.tls = bool(settings.tls_cert)
        self.guard = Guard(self.token, tls=self.tls)
        self.port = settings.port
        self._runner: web.AppRunner | None = None
        self.app = make_app(self)

    @property
    def base_url(self) -> str:
        host = self.settings.host
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{shown}:{self.port}"

    @property
    def url(self) -> str:
        """The URL that opens the dashboard (carries the access token once)."""
        return f"{self.base_url}/?{urlencode({'token': self.token})}"

    async def start(self) -> None:
        """Listen; an address in use or a refused remote host is an EdgetwinError."""
        s = self.settings
        if not is_loopback(s.host) and not (s.allow_remote and self.tls):
            raise DashboardRefused(
                f"the dashboard will not listen on {s.host}: beyond loopback it needs "
                "[dashboard] allow_remote = true and tls_cert / tls_key",
                hint="use host = \"127.0.0.1\" (the default)",
            )
        context = _tls_context(s) if self.tls else None
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, s.host, s.port, ssl_context=context, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise DashboardRefused(
                f"the dashboard cannot listen on {s.host}:{s.port}: {exc.strerror or exc}",
                hint="another program holds the port: set [dashboard] port in config.toml",
            ) from exc
        if s.port == 0:  # tests: the port the system chose
            server = getattr(site, "_server", None)
            sockets = getattr(server, "sockets", None) or []
            if sockets:
                self.port = int(sockets[0].getsockname()[1])
        self._runner = runner
        _LOGGER.info("dashboard on %s", self.base_url)

    async def stop(self) -> None:
        self.hub.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class DashboardRefused(UsageError):
    """The dashboard cannot serve as configured (address in use, unsafe host)."""


def make_app(dash: Dashboard) -> web.Application:
    """The aiohttp application of ``dash``'s pages, API and static files."""
    app = web.Application(middlewares=[_guard_middleware(dash)], client_max_size=64 * 1024)
    app.on_response_prepare.append(_headers)
    h = _Handlers(dash)
    app.router.add_get("/", h.now)
    app.router.add_get("/timeline", h.timeline_page)
    app.router.add_get("/forecasts", h.forecasts_page)
    app.router.add_get("/privacy", h.privacy_page)
    app.router.add_get("/devices", h.devices_page)
    app.router.add_get("/api/status", h.api_status)
    app.router.add_get("/api/timeline", h.api_timeline)
    app.router.add_get("/api/forecasts", h.api_forecasts)
    app.router.add_get("/api/events", h.events)
    app.router.add_post("/api/consent/grant", h.consent_grant)
    app.router.add_post("/api/consent/revoke", h.consent_revoke)
    app.router.add_post("/api/forget", h.forget)
    app.router.add_post("/api/pair/remove", h.pair_remove)
    app.router.add_post("/api/scan", h.scan)
    app.router.add_static("/static", STATIC, follow_symlinks=False, append_version=False)
    return app


# -- handlers ------------------------------------------------------------------


class _Handlers:
    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        self.backend = dash.backend
        self._scanning = asyncio.Lock()  # one scan at a time: the radio is shared

    def _page(self, request: web.Request, name: str, body: str, doc: Any,
              charts: bool = False) -> web.Response:
        sid = self.dash.guard.session_id(request.cookies.get(COOKIE))
        assert sid is not None  # the guard let the request through
        html = pages.page(name, csrf=self.dash.guard.csrf_token(sid), live=self.backend.live,
                          body=body, data=doc, charts=charts)
        return web.Response(text=html, content_type="text/html")

    async def now(self, request: web.Request) -> web.Response:
        return self._page(request, "now", pages.now_body(), await self.backend.status())

    async def timeline_page(self, request: web.Request) -> web.Response:
        doc = await self._timeline(request)
        return self._page(request, "timeline", pages.timeline_body(), doc, charts=True)

    async def forecasts_page(self, request: web.Request) -> web.Response:
        doc = await self._forecasts()
        return self._page(request, "forecasts", pages.forecasts_body(), doc, charts=True)

    async def privacy_page(self, request: web.Request) -> web.Response:
        config = self.backend.config
        doc = await self.backend.read(lambda s: data.privacy(s, config))
        return self._page(request, "privacy", pages.privacy_body(doc), {"privacy": True})

    async def devices_page(self, request: web.Request) -> web.Response:
        devs = await self.backend.read(data.devices)
        body = pages.devices_body(devs, self.backend.live)
        return self._page(request, "devices", body, {"devices": devs})

    async def api_status(self, request: web.Request) -> web.Response:
        return _json(await self.backend.status())

    async def api_timeline(self, request: web.Request) -> web.Response:
        return _json(await self._timeline(request))

    async def api_forecasts(self, request: web.Request) -> web.Response:
        return _json(await self._forecasts())

    async def _timeline(self, request: web.Request) -> dict[str, Any]:
        q = request.query
        try:
            t0 = float(q["from"]) if "from" in q else None
            t1 = float(q["to"]) if "to" in q else None
            points = int(q.get("points", data.DEFAULT_POINTS))
        except ValueError as exc:
            raise _bad_request(f"from, to and points must be numbers ({exc})") from exc
        if t0 is None and t1 is not None and "range" not in q:
            t0 = t1 - 86400.0
        if "range" in q:
            try:
                rng = float(q["range"])
            except ValueError as exc:
                raise _bad_request("range must be a number of seconds") from exc
            t1_: float | None = t1

            def read(s: TwinStore) -> dict[str, Any]:
                end = t1_ if t1_ is not None else _newest(s)
                return data.timeline(s, end - rng if end is not None else None, end,
                                     features=feats, points=points)
        else:
            def read(s: TwinStore) -> dict[str, Any]:
                return data.timeline(s, t0, t1, features=feats, points=points)
        feats = [f for f in q.get("features", "").split(",") if f] or None
        try:
            return await self.backend.read(read)
        except ValueError as exc:
            raise _bad_request(str(exc)) from exc

    async def _forecasts(self) -> dict[str, Any]:
        doc = await self.backend.read(data.forecasts)
        status = await self.backend.status() if self.backend.live else {}
        score = status.get("score")
        if score is None:
            score = await self.backend.read(data.score)
        doc["score"] = score
        return doc

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: ``status`` (about once a second from the daemon), ``frames``,
        ``prediction``; nothing but a keep-alive comment without a daemon."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        queue = self.dash.hub.subscribe()
        try:
            await resp.write(b"retry: 2000\n: connected\n\n")
            while True:
                try:
                    # not wait_for: on 3.11 it loses a cancel that lands as an item arrives
                    async with asyncio.timeout(SSE_KEEPALIVE_S):
                        item = await queue.get()
                except TimeoutError:
                    item = b": keep-alive\n\n"
                if not item:
                    break
                await resp.write(item)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.dash.hub.unsubscribe(queue)
        return resp

    async def consent_grant(self, request: web.Request) -> web.Response:
        body = await _body(request)
        metric = _str(body, "metric")
        period = str(body.get("period") or self.backend.config.privacy.period)

        def run(s: TwinStore) -> dict[str, Any]:
            import time

            from edgetwin.privacy.consent import grant

            return grant(s, metric, period, time.time()).to_json()

        return _json(await self._act(run, "consent grant"))

    async def consent_revoke(self, request: web.Request) -> web.Response:
        body = await _body(request)
        metric = _str(body, "metric")

        def run(s: TwinStore) -> dict[str, Any]:
            import time

            from edgetwin.sync.service import revoke_consent

            c, cancelled = revoke_consent(s, metric, time.time())
            return {**c.to_json(), "cancelled": cancelled}

        return _json(await self._act(run, "consent revoke"))

    async def scan(self, request: web.Request) -> web.Response:
        """Sensors nearby, as ``pair scan --json`` gives them, each with the command that pairs
        it; the serial ports of paired sensors (the daemon may hold them) are not probed."""
        from edgetwin.sources.scan import HEADINGS, describe, scan_all

        body = await _body(request)
        seconds = body.get("seconds", SCAN_SECONDS)
        if not isinstance(seconds, int | float) or not 1 <= seconds <= 30:
            raise _bad_request("'seconds' must be a number from 1 to 30")
        if self._scanning.locked():
            raise _bad_request("a scan is already running; wait for it")
        paired = await self.backend.read(data.devices)
        ports = {str(d["port"]) for d in paired if d.get("port")}
        async with self._scanning:
            found, notes = await asyncio.to_thread(scan_all, float(seconds), skip_ports=ports)
        rows = [dict(zip(HEADINGS, describe(dev), strict=True)) for dev in found]
        return _json({"devices": rows, "notes": notes})

    async def pair_remove(self, request: web.Request) -> web.Response:
        body = await _body(request)
        name = _str(body, "name")

        def run(s: TwinStore) -> dict[str, Any]:
            with s.transaction():
                if not s.delete_record(data.PAIRING, name):
                    raise ValueError(f"no source named {name!r} is paired")
                s.audit("pair_remove", source=name)
            return {"removed": name}

        return _json(await self._act(run, "pair remove"))

    async def forget(self, request: web.Request) -> web.Response:
        body = await _body(request)
        stream = body.get("stream")
        before = body.get("before")
        everything = body.get("all") is True
        if isinstance(before, str):
            try:
                before = dt.datetime.fromisoformat(before).replace(tzinfo=dt.UTC).timestamp()
            except ValueError as exc:
                raise _bad_request(f"before: cannot read the date {before!r}") from exc
        given = sum((isinstance(stream, str) and bool(stream),
                     isinstance(before, int | float), everything))
        if given != 1:
            raise _bad_request("give exactly one of stream, before or all")
        try:
            report = await self.backend.forget(
                stream=stream if isinstance(stream, str) else None,
                before=float(before) if isinstance(before, int | float) else None,
                everything=everything,
            )
        except EdgetwinError as exc:
            raise _bad_request(exc.message) from exc
        return _json(report)

    async def _act(self, fn: Callable[[TwinStore], dict[str, Any]], what: str) -> dict[str, Any]:
        try:
            return await self.backend.write(fn, what)
        except EdgetwinError as exc:
            raise _bad_request(exc.message + (f" ({exc.hint})" if exc.hint else "")) from exc
        except ValueError as exc:
            raise _bad_request(str(exc)) from exc


# -- middleware and helpers -----------------------------------------------------------


def _guard_middleware(dash: Dashboard) -> Any:
    @web.middleware
    async def guard(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        g = dash.guard
        hosts = allowed_hosts(dash.settings.host, dash.port)
        if hosts is not None and request.host not in hosts:
            # a DNS-rebinding page reaches us under its own host name
            return _plain(421, f"this dashboard answers only to 127.0.0.1:{dash.port}")
        origin = request.headers.get("Origin")
        own = f"{'https' if dash.tls else 'http'}://{request.host}"
        if request.headers.get("Sec-Fetch-Site") == "cross-site" or (
            origin is not None and origin != own
        ):
            return _plain(403, "requests from other sites are refused")
        token = request.query.get("token")
        if token is not None:
            if request.method != "GET" or not g.token_ok(token):
                return _plain(401, "wrong access token: open the URL that 'edgetwin dashboard' "
                                   "prints")
            rest = {k: v for k, v in request.query.items() if k != "token"}
            target = request.path + (f"?{urlencode(rest)}" if rest else "")
            resp = web.Response(status=303, headers={"Location": target})
            resp.set_cookie(COOKIE, g.new_session_cookie(), **g.cookie_attributes())  # type: ignore[arg-type]
            return resp
        sid = g.session_id(request.cookies.get(COOKIE))
        if sid is None:
            return _plain(401, "open the dashboard with the URL that 'edgetwin dashboard' "
                               "prints (it carries the access token)")
        if request.method not in ("GET", "HEAD"):
            if not g.csrf_ok(sid, request.headers.get(CSRF_HEADER)):
                return _plain(403, "missing or wrong CSRF token: reload the page and try again")
            if origin is None and request.headers.get("Sec-Fetch-Site") not in (
                "same-origin", None
            ):
                return _plain(403, "requests from other sites are refused")
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except EdgetwinError as exc:
            return _plain(500, exc.message)

    return guard


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    for k, v in HEADERS.items():
        response.headers.setdefault(k, v)
    if request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "private, max-age=3600"


def _json(doc: Any) -> web.Response:
    return web.Response(text=json_text(doc), content_type="application/json")


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=f"{status}: {text}\n", content_type="text/plain")


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}),
                              content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise _bad_request("send a JSON object (Content-Type: application/json)")
    try:
        body = await request.json()
    except ValueError as exc:
        raise _bad_request(f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise _bad_request("the body must be a JSON object")
    return body


def _str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise _bad_request(f"{key!r} must be a non-empty string")
    return value


def _newest(store: TwinStore) -> float | None:
    streams = store.streams(on_corrupt="skip")
    newest = max((s.last_t for s in streams if s.last_t is not None), default=None)
    return float(newest) if newest is not None else None


def _tls_context(s: DashboardConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(s.tls_cert, s.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise DashboardRefused(
            f"cannot load the dashboard's TLS certificate {s.tls_cert} / key {s.tls_key}: {exc}",
            hint="check [dashboard] tls_cert and tls_key (PEM files)",
        ) from exc
    return context


@contextlib.asynccontextmanager
async def serving(dash: Dashboard) -> Any:
    """``async with serving(dash):`` the dashboard listens inside the block."""
    await dash.start()
    try:
        yield dash
    finally:
        await dash.stop()
