"""Uplinks: HTTPS POST (stdlib ``http.client`` + ``ssl``) and MQTT 5 (paho-mqtt, QoS 1).

An uplink's only entry point is :meth:`Uplink.send`, which takes a
``DPRelease`` and serialises it through :func:`encode_envelope` (refusing any
other object). Errors are split by whether a retry can help:

* :class:`UplinkUnavailable` (transient): unreachable, timeout, TLS failure,
  5xx, 429, 3xx, a receipt naming another release, a broker that drops the connection;
* :class:`UplinkRejected` (permanent until a person acts): the collector
  answered 4xx (malformed, unknown device, bad signature, clock off).
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import threading
import time
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any

from edgetwin import __version__
from edgetwin.config import SyncConfig
from edgetwin.errors import UplinkError
from edgetwin.privacy.release import DPRelease, require_genuine
from edgetwin.sync.payload import encode_envelope
from edgetwin.sync.signing import DeviceKey
from edgetwin.sync.target import SyncTarget

_LOGGER = logging.getLogger(__name__)
_MAX_ANSWER = 64 * 1024


class UplinkUnavailable(UplinkError):
    """The upload did not go through; retrying later may help."""


class UplinkRejected(UplinkError):
    """The collector refused the upload; a retry will not help until a person acts."""


class Uplink(ABC):
    """Sends releases to one target; use as a context manager."""

    def __init__(self, target: SyncTarget, key: DeviceKey, config: SyncConfig) -> None:
        self.target = target
        self.key = key
        self.config = config

    def send(self, release: DPRelease) -> str:
        """Upload one release; returns "stored" or "duplicate", or raises UplinkError."""
        genuine = require_genuine(release)
        body = encode_envelope(genuine, self.key, sent_at_ms=int(time.time() * 1000))
        return self._transmit(genuine.id, body)

    @abstractmethod
    def _transmit(self, release_id: str, body: bytes) -> str: ...

    def open(self) -> None:  # noqa: B027 - optional hook; HTTPS needs no connection ahead
        """Connect ahead of sending (MQTT); no-op for HTTPS."""

    def close(self) -> None:  # noqa: B027 - optional hook, as open()
        """Release connections."""

    def __enter__(self) -> Uplink:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def make_uplink(target: SyncTarget, key: DeviceKey, config: SyncConfig) -> Uplink:
    """The uplink for a target."""
    if target.kind == "mqtt":
        return MqttUplink(target, key, config)
    return HttpsUplink(target, key, config)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Certificate and host name verification on; the system CAs or the given one."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class HttpsUplink(Uplink):
    """POST the envelope; any 2xx is accepted. Our collector also answers a receipt
    ``{"status": "stored"|"duplicate", "id"}``, used to count duplicates when present."""

    def _transmit(self, release_id: str, body: bytes) -> str:
        t = self.target
        conn: http.client.HTTPConnection
        if t.tls:
            conn = http.client.HTTPSConnection(
                t.host, t.port, timeout=self.config.timeout_s, context=tls_context(t.ca_file)
            )
        else:
            # parse_target allows plain HTTP only to loopback with the explicit flag.
            conn = http.client.HTTPConnection(t.host, t.port, timeout=self.config.timeout_s)
        try:
            conn.request(
                "POST",
                t.path,
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "Idempotency-Key": release_id,
                    "User-Agent": f"edgetwin/{__version__}",
                },
            )
            resp = conn.getresponse()
            answer = resp.read(_MAX_ANSWER)
            status = resp.status
        except ssl.SSLCertVerificationError as exc:
            raise UplinkUnavailable(
                f"{t.url}: TLS certificate not trusted: {exc.verify_message}",
                hint="if the collector uses a private CA, pass it with "
                "'edgetwin sync configure --ca FILE'",
            ) from exc
        except ssl.SSLError as exc:
            raise UplinkUnavailable(f"{t.url}: TLS handshake failed: {exc}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise UplinkUnavailable(
                f"{t.url}: unreachable or connection lost: {type(exc).__name__}: {exc}",
                hint="the release stays in the outbox and is retried with backoff",
            ) from exc
        finally:
            conn.close()
        return _interpret_http(t.url, release_id, status, answer)


class MqttUplink(Uplink):
    """Publish the envelope with MQTT 5 at QoS 1 and wait for the broker's PUBACK."""

    def __init__(self, target: SyncTarget, key: DeviceKey, config: SyncConfig) -> None:
        super().__init__(target, key, config)
        self._client: Any = None
        self._connected = threading.Event()
        self._connect_rc: Any = None
        self._acks: dict[int, Any] = {}
        self._acked = threading.Condition()

    def open(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        t = self.target
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"edgetwin-{self.key.key_id}",
            protocol=mqtt.MQTTv5,
        )
        if t.tls:
            client.tls_set_context(tls_context(t.ca_file))
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        try:
            client.connect(t.host, t.port, keepalive=max(5, int(self.config.timeout_s * 2)))
        except ssl.SSLCertVerificationError as exc:
            close_leaked_sockets(exc)
            raise UplinkUnavailable(
                f"{t.url}: TLS certificate of the broker not trusted: {exc.verify_message}",
                hint="pass the broker's CA with 'edgetwin sync configure --ca FILE'",
            ) from exc
        except (OSError, ValueError) as exc:
            close_leaked_sockets(exc)
            raise UplinkUnavailable(
                f"{t.url}: broker unreachable: {type(exc).__name__}: {exc}",
                hint="the release stays in the outbox and is retried with backoff",
            ) from exc
        self._client = client
        client.loop_start()
        if not self._connected.wait(self.config.timeout_s):
            self.close()
            raise UplinkUnavailable(f"{t.url}: broker did not accept the connection in time")
        if self._connect_rc is not None and self._connect_rc.is_failure:
            rc = self._connect_rc
            self.close()
            raise UplinkRejected(f"{t.url}: broker refused the connection: {rc}")

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.disconnect()
            finally:
                client.loop_stop()

    def _transmit(self, release_id: str, body: bytes) -> str:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        if self._client is None:
            self.open()
        client = self._client
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = "application/json"
        props.UserProperty = [("idempotency-key", release_id)]
        try:
            info = client.publish(self.target.topic, body, qos=1, properties=props)
        except (OSError, ValueError, RuntimeError) as exc:
            raise UplinkUnavailable(f"{self.target.url}: publish failed: {exc}") from exc
        if info.rc != 0:
            raise UplinkUnavailable(f"{self.target.url}: publish not queued (rc {info.rc})")
        deadline = time.monotonic() + self.config.timeout_s
        with self._acked:
            while info.mid not in self._acks:
                left = deadline - time.monotonic()
                if left <= 0 or not self._connected.is_set():
                    self._acks.pop(info.mid, None)
                    raise UplinkUnavailable(
                        f"{self.target.url}: no PUBACK for release {release_id} "
                        "(broker gone or connection dropped mid-publish)",
                        hint="it stays in the outbox; the collector ignores a duplicate",
                    )
                self._acked.wait(min(left, 0.2))
            reason = self._acks.pop(info.mid)
        if reason is not None and reason.is_failure:
            raise UplinkRejected(f"{self.target.url}: broker refused the publish: {reason}")
        return "stored"

    # paho callbacks run on its network thread.
    def _on_connect(self, _c: Any, _u: Any, _flags: Any, rc: Any, _props: Any) -> None:
        self._connect_rc = rc
        self._connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, rc: Any, _props: Any) -> None:
        if self._connected.is_set():
            _LOGGER.debug("mqtt disconnected: %s", rc)
        self._connected.clear()
        with self._acked:
            self._acked.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _props: Any) -> None:
        with self._acked:
            self._acks[mid] = rc
            self._acked.notify_all()


def close_leaked_sockets(exc: BaseException) -> None:
    """Close sockets left open in the frames of a failed paho ``connect``.

    paho-mqtt 2.2 does not close the TLS socket when the handshake fails; left to
    the garbage collector it would leak a descriptor (and warn) in a long-running daemon.
    """
    tb = exc.__traceback__
    while tb is not None:
        for value in list(tb.tb_frame.f_locals.values()):
            if isinstance(value, socket.socket):
                value.close()
        tb = tb.tb_next


# -- private helpers ---------------------------------------------------------


def _interpret_http(url: str, release_id: str, status: int, answer: bytes) -> str:
    """Any 2xx means accepted. A receipt ``{"status", "id"?}`` is optional: when present it
    tells a duplicate apart, and one naming another release is a confused collector."""
    detail = _error_detail(answer)
    if status == 429 or status >= 500:
        raise UplinkUnavailable(f"{url}: collector answered {status}{detail}")
    if 400 <= status < 500:
        raise UplinkRejected(
            f"{url}: collector refused release {release_id} with {status}{detail}",
            hint="see 'edgetwin sync status'; once fixed, 'edgetwin sync run --retry-failed'",
        )
    if not 200 <= status < 300:
        raise UplinkUnavailable(f"{url}: unexpected HTTP status {status}")
    receipt = _receipt(answer)
    if receipt is None:
        return "stored"  # a plain endpoint (200 {}, 201, 204): its 2xx is the acknowledgement
    outcome, echoed = receipt
    if echoed is not None and echoed != release_id:
        raise UplinkUnavailable(f"{url}: collector receipt does not match release {release_id}")
    return outcome


def _receipt(answer: bytes) -> tuple[str, str | None] | None:
    """``(status, id or None)`` of our collector's receipt, or None for any other body."""
    try:
        doc = json.loads(answer)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("status") not in ("stored", "duplicate"):
        return None
    echoed = doc.get("id")
    return str(doc["status"]), (echoed if isinstance(echoed, str) else None)


def _error_detail(answer: bytes) -> str:
    try:
        text = str(json.loads(answer)["error"])
    except (ValueError, TypeError, KeyError):
        return ""
    # The collector's words, shortened and printable only.
    text = "".join(c for c in text if c.isprintable())[:200]
    return f": {text}" if text else ""

