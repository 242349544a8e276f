"""The collector's HTTP(S) front end on aiohttp: bounded in time, size and connections.

One asyncio loop accepts and parses; verification and storage run in worker
threads, so a slow fsync or PostgreSQL round trip never stalls other clients.
Limits (:class:`HttpLimits`), each answered rather than dropped where HTTP allows:

* TLS handshakes run on the loop, off the accept path; one not finished within
  ``handshake_timeout_s`` is closed (there is no TLS session to answer in) and
  counted as a refusal.
* a connection that has not sent a complete request head ``header_timeout_s``
  after connecting (or after its previous response) gets 408 and is closed: idle
  clients and slow-header clients alike;
* a body must arrive within ``body_timeout_s`` (408) and fit ``max_body_bytes`` (413);
* at ``max_connections`` a new connection closes the longest-idle one (408) so
  clients with a request keep being served; if every connection is busy the
  new one gets 503 (a device retries a 5xx later);
* JSON nested too deep or with oversized numbers gets 400 (see ``edgetwin.untrusted_json``);
* ``GET /v1/aggregates`` needs ``Authorization: Bearer <token>`` with the token
  given at start (401 otherwise; 403 when no token was configured).

Every refusal is recorded in the store's ``events`` table (``refused <status>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from edgetwin.sync.collector import Collector, CollectorRefusal
from edgetwin.sync.payload import MAX_ENVELOPE_BYTES

_LOGGER = logging.getLogger(__name__)

_MAX_PENDING_RECORDS = 10_000
_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 408: "Request Timeout",
            411: "Length Required", 413: "Content Too Large", 503: "Service Unavailable"}


@dataclass(frozen=True)
class HttpLimits:
    """Bounds on what one client can hold of the collector."""

    max_connections: int = 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    handshake_timeout_s: float = 10.0
    max_body_bytes: int = MAX_ENVELOPE_BYTES
    max_header_bytes: int = 8190  # one request line or header field
    workers: int = 8  # threads verifying and storing
    backlog: int = 1024


class CollectorHTTPServer:
    """POST an envelope to any path; GET /v1/aggregates (bearer token); GET /healthz.

    The socket is bound at construction (``port`` is known at once); ``start``
    serves on a background thread running its own asyncio loop; ``stop`` closes
    every connection and waits for the thread.
    """

    def __init__(
        self,
        address: tuple[str, int],
        collector: Collector,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        token: str | None = None,
        limits: HttpLimits | None = None,
    ) -> None:
        self.collector = collector
        self.limits = limits or HttpLimits()
        if token is not None and not token.strip():
            raise ValueError("the aggregates token is empty")
        self._token = token.strip().encode() if token is not None else None
        self._ssl: ssl.SSLContext | None = None
        if tls_cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(tls_cert, tls_key)
            self._ssl = ctx
        self.transport_name = "https" if self._ssl else "http"
        host = address[0]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server(address, family=family, backlog=self.limits.backlog)
        self._sock.setblocking(False)
        self._pool = ThreadPoolExecutor(self.limits.workers, thread_name_prefix="collector-store")
        self._conns: dict[_Conn, None] = {}  # every admitted connection, handshaking or open
        self._open: dict[Any, _Conn] = {}  # transport aiohttp talks to -> its connection
        self._handshakes: set[asyncio.Task[None]] = set()
        self._pending_records = 0  # refusal writes queued for the worker threads
        self.unrecorded = 0  # refusals only counted here: the store fell behind a flood
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def connections(self) -> int:
        """Admitted connections, TLS handshakes included (read from the serving thread)."""
        return len(self._conns)

    @property
    def busy_connections(self) -> int:
        """Connections with a request being handled (read from the serving thread)."""
        return sum(1 for c in list(self._conns) if c.busy)

    def start(self) -> threading.Thread:
        """Serve on a named background thread; returns once the server accepts."""
        self._thread = threading.Thread(target=self._run, name="collector-http", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self._thread

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(30)
        self._sock.close()
        self._pool.shutdown(wait=True)

    # -- the loop ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - handed to start(), which re-raises
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop, self._stopping = loop, asyncio.Event()
        lim = self.limits
        app = web.Application(client_max_size=lim.max_body_bytes, middlewares=[self._track])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/v1/aggregates", self._aggregates)
        app.router.add_post("/{tail:.*}", self._upload)
        # aiohttp's own keep-alive close stays as a backstop behind the answered 408.
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=lim.header_timeout_s * 2,
                               max_line_size=lim.max_header_bytes,
                               max_field_size=lim.max_header_bytes, lingering_time=1.0,
                               shutdown_timeout=5.0)
        await runner.setup()
        assert runner.server is not None
        handler_factory = runner.server
        # TLS is started per connection (start_tls) once the connection is admitted, so the
        # limit counts handshakes too and a refused connection costs no TLS state.
        server = await loop.create_server(lambda: _Conn(self, handler_factory(), loop),
                                          sock=self._sock, backlog=lim.backlog)
        sweeper = loop.create_task(self._sweep())
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            sweeper.cancel()
            server.close()
            for conn in list(self._conns):
                conn.close()
            await runner.cleanup()

    async def _sweep(self) -> None:
        """Answer 408 to connections idle past the header timeout."""
        timeout = self.limits.header_timeout_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = loop.time()
            for conn in list(self._conns):
                # A handshake has its own timeout (asyncio's), answered in _handshake.
                if conn.state == "open" and conn.busy == 0 and now - conn.last > timeout:
                    self._expire(conn, f"no complete request within {timeout:g} s")

    # -- connection accounting (called on the loop by _Conn) -----------------------

    def _admit(self, conn: _Conn) -> bool:
        """Count a new TCP connection in; False if it was refused (and closed)."""
        if len(self._conns) >= self.limits.max_connections:
            idle = [c for c in self._conns if c.busy == 0]
            if not idle:
                self._refuse_raw(conn, 503, "every connection is busy; retry later")
                return False
            self._expire(min(idle, key=lambda c: c.last),
                         "closed as the longest-idle connection at the connection limit")
        self._conns[conn] = None
        if self._ssl is not None:
            task = asyncio.get_running_loop().create_task(self._handshake(conn))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)
        else:
            conn.open(conn.transport)
        return True

    async def _handshake(self, conn: _Conn) -> None:
        assert self._ssl is not None
        assert conn.transport is not None
        limit = self.limits.handshake_timeout_s
        try:
            tls = await asyncio.get_running_loop().start_tls(
                conn.transport, conn, self._ssl, server_side=True, ssl_handshake_timeout=limit)
        except OSError as exc:  # SSLError, ConnectionAbortedError (timeout), resets
            self._conns.pop(conn, None)
            if not conn.evicted:
                if isinstance(exc, ConnectionAbortedError):  # asyncio's handshake timeout
                    self._record(408, f"TLS handshake not completed within {limit:g} s")
                else:
                    self._record(400, f"TLS handshake failed: {exc!s:.200}")
            return
        if conn.state != "handshake" or tls is None:  # evicted or gone meanwhile
            if tls is not None:
                tls.close()
            return
        conn.open(tls)

    def _opened(self, conn: _Conn) -> None:
        self._open[conn.transport] = conn

    def _closed(self, conn: _Conn) -> None:
        self._conns.pop(conn, None)
        self._open.pop(conn.transport, None)

    def _expire(self, conn: _Conn, why: str) -> None:
        self._closed(conn)
        conn.evicted = True
        if conn.state == "open":
            self._refuse_raw(conn, 408, why)
        else:  # mid-handshake: no TLS session to answer in
            conn.close()
            self._record(408, why)

    def _refuse_raw(self, conn: _Conn, status: int, why: str) -> None:
        """Answer outside aiohttp (no request was parsed) and close."""
        body = json.dumps({"error": why}).encode()
        head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n")
        if status == 503:
            head += "Retry-After: 5\r\n"
        # Before a TLS session there is nothing to answer in: the client sees a close.
        words = b"" if self._ssl is not None and conn.state != "open" else head.encode()
        conn.close(words and words + b"\r\n" + body)
        self._record(status, why)

    def _record(self, status: int, why: str) -> None:
        """Record a refusal in the store from a worker thread (never blocks the loop).

        A flood faster than the store can write would queue without bound: past
        ``_MAX_PENDING_RECORDS`` waiting writes a refusal is only counted in memory
        (``unrecorded``, in /healthz) and logged once per flood.
        """
        if self._pending_records >= _MAX_PENDING_RECORDS:
            if self.unrecorded == 0:
                _LOGGER.warning("collector: refusals arrive faster than the store records them; "
                                "counting the rest in memory (see /healthz)")
            self.unrecorded += 1
            return
        self._pending_records += 1

        def record() -> None:
            try:
                self.collector.record_refusal(self.transport_name, status, why)
            except Exception:
                _LOGGER.exception("collector: cannot record a refusal")
            finally:
                loop = self._loop
                if loop is not None and not loop.is_closed():
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(self._recorded)
        self._pool.submit(record)

    def _recorded(self) -> None:
        self._pending_records -= 1

    # -- handlers ----------------------------------------------------------------

    @web.middleware
    async def _track(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                     ) -> web.StreamResponse:
        """Mark the connection busy while a request is handled (the sweep skips it)."""
        conn = self._open.get(request.transport)
        if conn is not None:
            conn.busy += 1
        try:
            return await handler(request)
        finally:
            if conn is not None:
                conn.busy -= 1
                conn.last = asyncio.get_running_loop().time()

    async def _upload(self, request: web.Request) -> web.Response:
        lim = self.limits
        length = request.content_length
        if length is None and "chunked" not in request.headers.get("Transfer-Encoding", ""):
            return await self._refuse(411, "Content-Length required", close=True)
        if length is not None and length > lim.max_body_bytes:
            return await self._refuse(413, f"body of {length} bytes is over "
                                           f"{lim.max_body_bytes} bytes", close=True)
        try:
            async with asyncio.timeout(lim.body_timeout_s):  # keeps a cancel (3.11's wait_for not)
                body = await request.read()
        except TimeoutError:
            return await self._refuse(408, f"body not received within {lim.body_timeout_s:g} s",
                                      close=True)
        except web.HTTPRequestEntityTooLarge:
            return await self._refuse(413, f"body over {lim.max_body_bytes} bytes", close=True)
        loop = asyncio.get_running_loop()
        try:
            receipt = await loop.run_in_executor(self._pool, self.collector.accept, body,
                                                 self.transport_name)
        except CollectorRefusal as exc:
            return web.json_response({"error": exc.message}, status=exc.http_status)
        return web.json_response(receipt.to_json())

    async def _aggregates(self, request: web.Request) -> web.Response:
        if self._token is None:
            return await self._refuse(403, "aggregates are off: start the collector with "
                                           "--token-file (or EDGETWIN_COLLECTOR_TOKEN)")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 self._token):
            resp = await self._refuse(401, "GET /v1/aggregates needs "
                                           "'Authorization: Bearer <token>'")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="edgetwin-collector"'
            return resp
        rows = await asyncio.get_running_loop().run_in_executor(self._pool,
                                                                self.collector.aggregates)
        return web.json_response({"aggregates": rows})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "connections": len(self._conns),
                                  "unrecorded_refusals": self.unrecorded})

    async def _refuse(self, status: int, why: str, *, close: bool = False) -> web.Response:
        await asyncio.get_running_loop().run_in_executor(
            self._pool, self.collector.record_refusal, self.transport_name, status, why)
        resp = web.json_response({"error": why}, status=status)
        if close:
            resp.force_close()  # the rest of the body is not worth reading
        return resp


class _Conn(asyncio.Protocol):
    """One accepted connection: admitted or refused, then (TLS) handshaking, then open.

    Wraps aiohttp's protocol so the server knows each connection's age and whether a
    request is being handled on it; aiohttp only sees the connection once it is open.
    """

    def __init__(self, owner: CollectorHTTPServer, inner: asyncio.Protocol,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.owner, self.inner = owner, inner
        self.transport: asyncio.Transport | None = None
        self.state = "new"  # new -> refused | handshake -> open -> closed
        self.busy = 0
        self.last = loop.time()
        self.evicted = False
        # Bytes TLS decrypted before start_tls() returned (a client sends its request right
        # after the handshake); handed to aiohttp once the connection is open.
        self._early: list[bytes] = []
        self._early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called once, with the TCP transport; start_tls does not call it again.
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.state = "handshake"
        if not self.owner._admit(self):
            self.state = "refused"

    def open(self, transport: asyncio.Transport | None) -> None:
        assert transport is not None
        self.transport, self.state = transport, "open"
        self.last = asyncio.get_running_loop().time()
        self.owner._opened(self)
        self.inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self.inner.data_received(data)
        if self._early_eof:
            self.inner.eof_received()

    def data_received(self, data: bytes) -> None:
        if self.state == "open":
            self.inner.data_received(data)
        elif self.state == "handshake":
            self._early.append(data)

    def eof_received(self) -> bool | None:
        if self.state == "open":
            return self.inner.eof_received()
        self._early_eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        was, self.state = self.state, "closed"
        self.owner._closed(self)
        if was == "open":
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.state == "open":
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.state == "open":
            self.inner.resume_writing()

    def close(self, last_words: bytes = b"") -> None:
        if self.transport is not None and not self.transport.is_closing():
            if last_words:
                self.transport.write(last_words)
            self.transport.close()
