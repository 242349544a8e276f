"""MQTT 5 uplink and collector through a real Mosquitto broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgetwin.config import SyncConfig
from edgetwin.sync.collector import Collector, CollectorMqtt
from edgetwin.sync.signing import DeviceKey
from edgetwin.sync.target import parse_target
from edgetwin.sync.uplink import MqttUplink, UplinkUnavailable
from tests.sync.helpers import Broker, Tls, make_release

TOPIC = "study/edgetwin/releases"
CFG = SyncConfig(timeout_s=3)


class Sniffer:
    """A subscriber on '#' that captures everything the broker delivers."""

    def __init__(self, broker: Broker) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id="sniffer", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe("#", qos=1)
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self.ready.wait(5)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


@pytest.fixture
def mqtt_collector(tmp_path: Path, broker: Broker,
                   device_key: DeviceKey) -> Iterator[tuple[Collector, CollectorMqtt]]:
    c = Collector(tmp_path / "c.db")
    c.enroll(device_key.public_b64)
    sub = CollectorMqtt(c, broker.url, TOPIC)
    sub.start()
    assert sub.subscribed.wait(5)
    yield c, sub
    sub.stop()
    c.close()


def _uplink(broker: Broker, key: DeviceKey, ca: Path | None = None) -> MqttUplink:
    target = parse_target(mqtt=broker.url, topic=TOPIC, ca_file=ca,
                          allow_insecure_loopback=True)
    return MqttUplink(target, key, CFG)


def test_publish_qos1_reaches_the_collector(
    broker: Broker, device_key: DeviceKey, mqtt_collector: tuple[Collector, CollectorMqtt],
) -> None:
    collector, _ = mqtt_collector
    sniffer = Sniffer(broker)
    releases = [make_release(70.0 + i) for i in range(5)]
    with _uplink(broker, device_key) as up:
        for r in releases:
            assert up.send(r) == "stored"
        up.send(releases[0])  # a retry of an already delivered release
    wait_for(lambda: collector.counts()["duplicates"] == 1)
    assert collector.release_ids() == sorted(r.id for r in releases)
    sniffer.stop()
    assert {t for t, _ in sniffer.messages} == {TOPIC}
    assert len(sniffer.messages) == 6


def test_broker_down(broker: Broker, device_key: DeviceKey) -> None:
    broker.stop()
    with pytest.raises(UplinkUnavailable, match="broker unreachable"), \
            _uplink(broker, device_key):
        pass


def test_broker_dropping_the_connection_mid_publish(
    broker: Broker, device_key: DeviceKey, mqtt_collector: tuple[Collector, CollectorMqtt],
) -> None:
    collector, sub = mqtt_collector
    release = make_release(66.0)
    up = _uplink(broker, device_key)
    up.open()
    broker.kill()  # gone between CONNACK and PUBACK
    with pytest.raises(UplinkUnavailable, match=r"no PUBACK|publish failed|not queued"):
        up.send(release)
    up.close()
    assert collector.release_ids() == []
    broker.start()  # same port; the collector's paho client reconnects and resubscribes
    sub.subscribed.clear()
    assert sub.subscribed.wait(15)
    with _uplink(broker, device_key) as again:
        assert again.send(release) == "stored"
    wait_for(lambda: collector.release_ids() == [release.id])


def test_mqtt_over_tls(tmp_path: Path, tls: Tls, device_key: DeviceKey) -> None:
    broker = Broker(tmp_path, tls=(tls.cert, tls.key))
    broker.start()
    try:
        c = Collector(tmp_path / "c.db")
        c.enroll(device_key.public_b64)
        sub = CollectorMqtt(c, broker.url, TOPIC, ca_file=str(tls.ca))
        sub.start()
        assert sub.subscribed.wait(5)
        release = make_release()
        with _uplink(broker, device_key, ca=tls.ca) as up:
            assert up.send(release) == "stored"
        wait_for(lambda: c.release_ids() == [release.id])
        with pytest.raises(UplinkUnavailable, match="not trusted"), \
                _uplink(broker, device_key, ca=tls.wrong_ca):
            pass
        sub.stop()
        c.close()
    finally:
        broker.stop()
