"""The reference collector: receives signed DP releases over HTTP(S) and/or MQTT.

It verifies each envelope against enrolled device keys, rejects replays (a
release id is stored once; a send time outside ``window_s`` is refused), keeps
releases in SQLite and aggregates them per metric across devices. It is small
on purpose: a study can run it as is, or read it as the specification of what
a collector must check.

HTTP answers: 200 ``{"status": "stored"|"duplicate", "id"}``; 400 malformed;
401 bad signature; 403 device not enrolled; 409 id taken by another device;
413 too large; 422 send time outside the window.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edgetwin.errors import MalformedInput, UplinkError, UsageError
from edgetwin.sync.payload import MAX_ENVELOPE_BYTES, decode_envelope
from edgetwin.sync.signing import b64decode, key_id, public_key_from_b64

_LOGGER = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    key TEXT PRIMARY KEY, key_id TEXT NOT NULL, label TEXT, enrolled_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS releases (
    id TEXT PRIMARY KEY, device TEXT NOT NULL, metric TEXT NOT NULL, unit TEXT NOT NULL,
    period TEXT NOT NULL, period_start REAL NOT NULL, value REAL NOT NULL,
    epsilon REAL NOT NULL, scale REAL NOT NULL, lower REAL NOT NULL, upper REAL NOT NULL,
    created REAL NOT NULL, received_at REAL NOT NULL, transport TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS releases_by_metric ON releases (metric, period, period_start);
CREATE TABLE IF NOT EXISTS events (
    t REAL NOT NULL, transport TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT
);
"""


class CollectorRefusal(MalformedInput):
    """An upload the collector will not store; ``http_status`` is its answer."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status


@dataclass(frozen=True)
class Receipt:
    status: str  # "stored" | "duplicate"
    id: str

    def to_json(self) -> dict[str, str]:
        return {"status": self.status, "id": self.id}


class Collector:
    """Verification, replay protection and storage, shared by the HTTP and MQTT front ends."""

    def __init__(
        self,
        db: Path,
        *,
        window_s: float = 300.0,
        tap: Callable[[bytes, str], None] | None = None,
        clock: Callable[[], float] = time.time,
        durable: bool = True,
    ) -> None:
        self.db_path = db
        self.window_s = window_s
        self._tap = tap
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            # durable: fsync every stored release before its receipt (a device deletes nothing,
            # but it stops retrying once it holds a receipt). Off for simulations only.
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise UsageError(f"collector database {db}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def enroll(self, public_b64: str, label: str | None = None) -> str:
        """Accept uploads signed by this device key; returns its key id."""
        try:
            public_key_from_b64(public_b64)
        except ValueError as exc:
            raise UsageError(f"cannot enroll {public_b64!r}: {exc}",
                             hint="paste the output of 'edgetwin sync device-key'") from None
        kid = key_id(b64decode(public_b64))
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO devices (key, key_id, label, enrolled_at) VALUES (?,?,?,?)",
                (public_b64, kid, label, self._clock()),
            )
        return kid

    def accept(self, body: bytes, transport: str) -> Receipt:
        """Verify and store one envelope; CollectorRefusal says why not."""
        if self._tap is not None:
            self._tap(body, transport)
        try:
            receipt = self._accept(body, transport)
        except CollectorRefusal as exc:
            self._event(transport, f"refused {exc.http_status}", exc.message)
            raise
        if receipt.status == "duplicate":
            self._event(transport, "duplicate", receipt.id)
        return receipt

    def aggregates(self) -> list[dict[str, Any]]:
        """Per metric and period window: devices, mean of noisy values and its noise error.

        Each release carries Laplace(scale) noise of variance 2*scale²; the mean of
        n releases has noise standard error sqrt(sum 2*scale²)/n, reported with a
        95 % interval (the noise dominates the spread at small n).
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT metric, unit, period, period_start, COUNT(*), COUNT(DISTINCT device), "
                "AVG(value), SUM(2 * scale * scale), AVG(epsilon), MIN(lower), MAX(upper) "
                "FROM releases GROUP BY metric, period, period_start "
                "ORDER BY metric, period, period_start"
            ).fetchall()
        out = []
        for metric, unit, period, start, n, devices, mean, var_sum, eps, lo, hi in rows:
            se = math.sqrt(var_sum) / n
            out.append({
                "metric": metric, "unit": unit, "period": period, "period_start": start,
                "releases": n, "devices": devices, "mean": mean, "noise_se": se,
                "ci95": [mean - 1.96 * se, mean + 1.96 * se], "epsilon": eps,
                "bounds": [lo, hi],
            })
        return out

    def counts(self) -> dict[str, int]:
        """Stored releases, distinct devices and ids, and refused/duplicate events."""
        with self._lock:
            releases, devices = self._db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT device) FROM releases").fetchone()
            events = dict(self._db.execute(
                "SELECT outcome, COUNT(*) FROM events GROUP BY outcome").fetchall())
            enrolled = self._db.execute("SELECT COUNT(*) FROM devices").fetchone()[0]
        refused = sum(v for k, v in events.items() if k.startswith("refused"))
        return {"releases": releases, "devices": devices, "enrolled": enrolled,
                "duplicates": events.get("duplicate", 0), "refused": refused}

    def release_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM releases ORDER BY id")]

    # -- private ---------------------------------------------------------------

    def _accept(self, body: bytes, transport: str) -> Receipt:
        try:
            env = decode_envelope(body)
        except MalformedInput as exc:
            raise CollectorRefusal(413 if len(body) > MAX_ENVELOPE_BYTES else 400,
                                   exc.message) from None
        with self._lock:
            known = self._db.execute(
                "SELECT 1 FROM devices WHERE key = ?", (env.device,)).fetchone()
        if known is None:
            raise CollectorRefusal(403, f"device {env.device[:12]}.. is not enrolled")
        try:
            env.verify(env.device)
        except MalformedInput as exc:
            raise CollectorRefusal(401, exc.message) from None
        now = self._clock()
        if abs(env.sent_at_ms / 1000.0 - now) > self.window_s:
            raise CollectorRefusal(
                422, f"send time {env.sent_at_ms} ms is outside the collector's "
                f"{self.window_s:.0f} s window (replayed, or the device clock is off)")
        r = env.release
        with self._lock:
            owner = self._db.execute(
                "SELECT device FROM releases WHERE id = ?", (r["id"],)).fetchone()
            if owner is not None:
                if owner[0] != env.device:
                    raise CollectorRefusal(409, f"release id {r['id']} belongs to another device")
                return Receipt("duplicate", r["id"])
            self._db.execute(
                "INSERT INTO releases VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (r["id"], env.device, r["metric"], r["unit"], r["period"], r["period_start"],
                 r["value"], r["epsilon"], r["scale"], r["lower"], r["upper"], r["created"],
                 now, transport, env.payload.decode("ascii")),
            )
        return Receipt("stored", r["id"])

    def _event(self, transport: str, outcome: str, detail: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO events VALUES (?,?,?,?)",
                             (self._clock(), transport, outcome, detail[:500]))


class CollectorHTTPServer(ThreadingHTTPServer):
    """POST an envelope to any path; GET /v1/aggregates; GET /healthz."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        collector: Collector,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> None:
        self.collector = collector
        super().__init__(address, _Handler)
        if tls_cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(tls_cert, tls_key)
            self.socket = ctx.wrap_socket(self.socket, server_side=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> threading.Thread:
        """Serve on a named background thread."""
        thread = threading.Thread(target=self.serve_forever, name="collector-http", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class CollectorMqtt:
    """Subscribe to a topic with MQTT 5, QoS 1 and a persistent session; store what arrives.

    The session survives the collector's restarts (clean_start off, session
    expiry one day), so the broker keeps QoS 1 messages for it meanwhile; paho
    acknowledges a message only after ``on_message`` stored it.
    """

    def __init__(self, collector: Collector, url: str, topic: str, *,
                 ca_file: str | None = None, client_id: str | None = None) -> None:
        from edgetwin.sync.target import parse_target

        self.collector = collector
        self.target = parse_target(mqtt=url, topic=topic, ca_file=ca_file,
                                   allow_insecure_loopback=True)
        default_id = f"edgetwin-collector-{key_id(str(collector.db_path).encode())}"
        self.client_id = client_id or default_id
        self.subscribed = threading.Event()
        self._client: Any = None

    def start(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from edgetwin.sync.uplink import close_leaked_sockets, tls_context

        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=self.client_id, protocol=mqtt.MQTTv5)
        if self.target.tls:
            client.tls_set_context(tls_context(self.target.ca_file))
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 86_400
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        try:
            client.connect(self.target.host, self.target.port, keepalive=30,
                           clean_start=False, properties=props)
        except OSError as exc:
            close_leaked_sockets(exc)
            raise UplinkError(f"collector: broker {self.target.url} unreachable: {exc}") from exc
        self._client = client
        client.loop_start()

    def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def _on_connect(self, client: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            _LOGGER.warning("collector: broker refused the connection: %s", rc)
            return
        client.subscribe(self.target.topic, qos=1)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, _rcs: Any, _p: Any) -> None:
        self.subscribed.set()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            receipt = self.collector.accept(bytes(msg.payload), "mqtt")
        except CollectorRefusal as exc:
            _LOGGER.warning("collector: refused an MQTT message: %s", exc.message)
        else:
            _LOGGER.debug("collector: %s %s via MQTT", receipt.status, receipt.id)


class _Handler(BaseHTTPRequestHandler):
    server: CollectorHTTPServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._answer(411, {"error": "Content-Length required"})
            return
        if length < 0 or length > MAX_ENVELOPE_BYTES:
            self._answer(413, {"error": f"body over {MAX_ENVELOPE_BYTES} bytes"})
            return
        body = self.rfile.read(length)
        try:
            receipt = self.server.collector.accept(body, "https" if self._tls() else "http")
        except CollectorRefusal as exc:
            self._answer(exc.http_status, {"error": exc.message})
        else:
            self._answer(200, receipt.to_json())

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/aggregates":
            self._answer(200, {"aggregates": self.server.collector.aggregates()})
        elif self.path.rstrip("/") == "/healthz":
            self._answer(200, {"ok": True})
        else:
            self._answer(404, {"error": "not found"})

    def log_message(self, format: str, *args: Any) -> None:
        _LOGGER.debug("collector http: " + format, *args)  # noqa: G003 - stdlib's format

    def _tls(self) -> bool:
        return isinstance(self.connection, ssl.SSLSocket)

    def _answer(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
