"""The collector's MQTT front end: MQTT 5, QoS 1, optionally a shared subscription."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from typing import TYPE_CHECKING, Any

from edgetwin.errors import UplinkError, UsageError
from edgetwin.sync.signing import key_id

if TYPE_CHECKING:
    from edgetwin.sync.collector import Collector

_LOGGER = logging.getLogger(__name__)


class CollectorMqtt:
    """Subscribe to a topic with MQTT 5, QoS 1 and a persistent session; store what arrives.

    The session survives the collector's restarts (clean_start off, session
    expiry one day), so the broker keeps QoS 1 messages for it meanwhile; paho
    acknowledges a message only after ``on_message`` stored it.

    With ``share_group`` the collector subscribes to ``$share/<group>/<topic>``:
    the broker hands each message to one member of the group, so N collectors
    (sharing one PostgreSQL) split one broker's traffic. A redelivery to another
    member after a lost acknowledgement is a duplicate the store counts once.
    Members need distinct client ids: without ``client_id`` a shared member is
    named after the host, process and a random tag, and its session ends with it (a stable
    ``client_id`` keeps a persistent session across restarts).
    """

    def __init__(self, collector: Collector, url: str, topic: str, *,
                 ca_file: str | None = None, client_id: str | None = None,
                 share_group: str | None = None) -> None:
        from edgetwin.sync.target import parse_target

        self.collector = collector
        self.target = parse_target(mqtt=url, topic=topic, ca_file=ca_file,
                                   allow_insecure_loopback=True)
        if share_group is not None and (not share_group or any(c in share_group
                                                               for c in "/+#")):
            raise UsageError(f"MQTT share group {share_group!r} must be a non-empty name "
                             "without '/', '+' or '#'")
        self.share_group = share_group
        self.subscription = (self.target.topic if share_group is None
                             else f"$share/{share_group}/{self.target.topic}")
        if client_id is not None:
            self.client_id, self._session_s = client_id, 86_400
        elif share_group is not None:
            host, tag = socket.gethostname(), secrets.token_hex(3)
            self.client_id = f"edgetwin-collector-{share_group}-{host}-{os.getpid()}-{tag}"
            self._session_s = 0
        else:
            self.client_id = f"edgetwin-collector-{key_id(str(collector.db_path).encode())}"
            self._session_s = 86_400
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
        props.SessionExpiryInterval = self._session_s
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        try:
            client.connect(self.target.host, self.target.port, keepalive=30,
                           clean_start=self._session_s == 0, properties=props)
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
        client.subscribe(self.subscription, qos=1)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, rcs: Any, _p: Any) -> None:
        if any(getattr(rc, "is_failure", False) for rc in rcs):
            _LOGGER.warning("collector: broker refused subscription %s: %s",
                            self.subscription, rcs)
            return
        self.subscribed.set()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        from edgetwin.sync.collector import CollectorRefusal

        try:
            receipt = self.collector.accept(bytes(msg.payload), "mqtt")
        except CollectorRefusal as exc:
            _LOGGER.warning("collector: refused an MQTT message: %s", exc.message)
        else:
            _LOGGER.debug("collector: %s %s via MQTT", receipt.status, receipt.id)
