"""Two collectors split one topic through an MQTT 5 shared subscription on a real Mosquitto:
each message goes to one member, every release is stored exactly once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetwin.cli.main import cli
from edgetwin.config import SyncConfig
from edgetwin.errors import UsageError
from edgetwin.sync.collector import Collector, CollectorMqtt
from edgetwin.sync.signing import DeviceKey
from edgetwin.sync.target import parse_target
from edgetwin.sync.uplink import MqttUplink
from tests.sync.helpers import T0, Broker, Postgres, make_release

TOPIC = "study/edgetwin/releases"
CFG = SyncConfig(timeout_s=10)


def eventually(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    pg.start()
    yield pg
    pg.stop()


class Member:
    """One collector instance: its own Collector on the shared database, its own client."""

    def __init__(self, db: Path | str, broker: Broker, keys: list[DeviceKey]) -> None:
        self.got = 0
        self._lock = threading.Lock()
        self.collector = Collector(db, tap=self._count)
        for k in keys:
            self.collector.enroll(k.public_b64)
        self.sub = CollectorMqtt(self.collector, broker.url, TOPIC, share_group="collectors")
        self.sub.start()
        assert self.sub.subscribed.wait(10)

    def _count(self, _body: bytes, _transport: str) -> None:
        with self._lock:
            self.got += 1

    def stop(self) -> None:
        self.sub.stop()
        self.collector.close()


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_two_collectors_share_a_subscription_and_store_every_release_once(
    tmp_path: Path, broker: Broker, store: str, request: pytest.FixtureRequest
) -> None:
    db: Path | str = (tmp_path / "shared.db" if store == "sqlite"
                      else request.getfixturevalue("postgres").new_database())
    keys = [DeviceKey.generate() for _ in range(6)]
    a = Member(db, broker, keys)
    b = Member(db, broker, keys)
    assert a.sub.client_id != b.sub.client_id  # the broker would drop one of equal ids
    assert a.sub.subscription == f"$share/collectors/{TOPIC}"
    sent: list[str] = []
    stopped_a = False
    try:
        def publish(days: range) -> None:
            for i, k in enumerate(keys):
                target = parse_target(mqtt=broker.url, topic=TOPIC,
                                      allow_insecure_loopback=True)
                with MqttUplink(target, k, CFG) as up:
                    for d in days:
                        r = make_release(60.0 + i, start=T0 + d * 86_400.0)
                        assert up.send(r) == "stored"
                        sent.append(r.id)

        publish(range(5))  # 30 releases
        eventually(lambda: len(a.collector.release_ids()) == 30, "30 releases stored")
        # The broker split them: each member stored some, together each release once.
        assert a.got > 0 and b.got > 0, (a.got, b.got)
        assert a.got + b.got == 30
        # One member leaves; the group goes on with the other.
        a.stop()
        stopped_a = True
        publish(range(5, 8))  # 18 more
        eventually(lambda: len(b.collector.release_ids()) == 48, "48 releases stored")
        assert b.collector.release_ids() == sorted(sent)
        counts = b.collector.counts()
        assert counts["releases"] == 48 and counts["duplicates"] == 0
    finally:
        if not stopped_a:
            a.stop()
        b.stop()


def test_share_group_names_are_checked(tmp_path: Path, broker: Broker) -> None:
    c = Collector(tmp_path / "c.db")
    try:
        for bad in ("", "a/b", "a+", "#"):
            with pytest.raises(UsageError, match="share group"):
                CollectorMqtt(c, broker.url, TOPIC, share_group=bad)
        named = CollectorMqtt(c, broker.url, TOPIC, share_group="g", client_id="collector-1")
        assert named.client_id == "collector-1"  # a stable id keeps its session
    finally:
        c.close()
    result = CliRunner().invoke(cli, ["collector", "--db", str(tmp_path / "c.db"),
                                      "--share", "g"])
    assert result.exit_code == 2 and "--share and --client-id need --mqtt" in result.output


def test_two_collector_processes_share_a_subscription_on_postgresql(
    broker: Broker, postgres: Postgres
) -> None:
    import os
    import subprocess
    import sys

    import psycopg

    root = Path(__file__).resolve().parents[2]
    url = postgres.new_database()
    keys = [DeviceKey.generate() for _ in range(4)]
    enroll = [a for k in keys for a in ("--enroll", k.public_b64)]
    procs = []
    try:
        for _ in range(2):
            p = subprocess.Popen([sys.executable, "-m", "edgetwin", "collector", "--db", url,
                                  "--mqtt", broker.url, "--topic", TOPIC, "--share", "fleet",
                                  *enroll], cwd=root, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
            procs.append(p)
            assert p.stdout is not None
            while "subscribed to" not in (line := p.stdout.readline()):
                assert line, p.stderr.read()  # type: ignore[union-attr]
            assert f"$share/fleet/{TOPIC}" in line
        sent = []
        target = parse_target(mqtt=broker.url, topic=TOPIC, allow_insecure_loopback=True)
        for i, k in enumerate(keys):
            with MqttUplink(target, k, CFG) as up:
                for d in range(5):
                    r = make_release(60.0 + i, start=T0 + d * 86_400.0)
                    assert up.send(r) == "stored"
                    sent.append(r.id)

        def stored() -> list[tuple[str, str]]:
            with psycopg.connect(url) as conn:
                return [(str(a), str(b)) for a, b in conn.execute(
                    "SELECT id, transport FROM releases ORDER BY id").fetchall()]

        eventually(lambda: len(stored()) == 20, "20 releases stored")
        assert [rid for rid, _ in stored()] == sorted(sent)
    finally:
        for p in procs:
            p.terminate()
            p.communicate(timeout=30)
    assert all(p.returncode == 0 for p in procs)
