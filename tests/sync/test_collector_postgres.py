"""The collector on a real PostgreSQL (Debian's server on a private port and data directory):
the same checks as on SQLite, and two collector processes sharing one database."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from edgetwin.config import SyncConfig
from edgetwin.sync.collector import Collector, CollectorRefusal
from edgetwin.sync.payload import encode_envelope
from edgetwin.sync.signing import DeviceKey
from edgetwin.sync.target import parse_target
from edgetwin.sync.uplink import HttpsUplink
from tests.sync.helpers import T0, Postgres, free_port, make_release

ROOT = Path(__file__).resolve().parents[2]
CFG = SyncConfig(timeout_s=30)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    pg.start()
    yield pg
    pg.stop()


def _now_ms() -> int:
    return int(time.time() * 1000)


def test_postgresql_store_stores_once_refuses_and_aggregates(
    postgres: Postgres, device_key: DeviceKey
) -> None:
    url = postgres.new_database()
    c = Collector(url, window_s=60)
    other = DeviceKey.generate()
    c.enroll(device_key.public_b64)
    c.enroll(device_key.public_b64)  # enrolling twice is harmless
    c.enroll(other.public_b64)
    release = make_release(70.0)
    assert c.accept(encode_envelope(release, device_key, _now_ms()), "http").status == "stored"
    assert c.accept(encode_envelope(release, device_key, _now_ms()),
                    "http").status == "duplicate"
    with pytest.raises(CollectorRefusal) as err:
        c.accept(encode_envelope(release, other, _now_ms()), "http")
    assert err.value.http_status == 409
    with pytest.raises(CollectorRefusal) as err:
        c.accept(b"[" * 9000, "mqtt")
    assert err.value.http_status == 400
    second = make_release(80.0)
    c.accept(encode_envelope(second, other, _now_ms()), "mqtt")
    assert c.counts() == {"releases": 2, "devices": 2, "enrolled": 2, "duplicates": 1,
                          "refused": 2}
    assert c.refusals() == {"refused 409": 1, "refused 400": 1}
    (row,) = c.aggregates()
    assert row["devices"] == 2 and row["releases"] == 2
    assert row["mean"] == pytest.approx((release.value + second.value) / 2)
    c.close()
    # A second collector on the same database sees everything (it keeps no state of its own).
    again = Collector(url)
    assert again.release_ids() == sorted([release.id, second.id])
    again.close()


class CollectorProcess:
    """``edgetwin collector`` as its own process; ``url`` once it listens."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgetwin", "collector", *args], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        self.url = ""
        while not self.url:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"collector exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            if "listening on" in line:
                self.url = line.split("listening on ", 1)[1].strip()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err


def test_two_collector_processes_on_one_postgresql_store_every_release_exactly_once(
    postgres: Postgres,
) -> None:
    url = postgres.new_database()
    devices = [DeviceKey.generate() for _ in range(12)]
    enroll = [a for k in devices for a in ("--enroll", k.public_b64)]
    # Both enroll the same devices at the same time: the schema and the rows are made once.
    a = CollectorProcess(["--listen", "127.0.0.1:0", "--db", url, *enroll])
    b = CollectorProcess(["--listen", "127.0.0.1:0", "--db", url, *enroll])
    try:
        releases = [(k, make_release(60.0 + i, start=T0 + d * 86_400.0))
                    for i, k in enumerate(devices) for d in range(4)]
        # Every release goes to both collectors, in random order and concurrently, as a
        # device retrying through a load balancer would: the two race on every id.
        jobs = [(k, r, c) for k, r in releases for c in (a, b)]
        random.Random(7).shuffle(jobs)

        def send(job: tuple[DeviceKey, object, CollectorProcess]) -> tuple[str, str]:
            key, release, collector = job
            target = parse_target(url=collector.url + "/v1/releases",
                                  allow_insecure_loopback=True)
            return release.id, HttpsUplink(target, key, CFG).send(release)  # type: ignore[attr-defined]

        with ThreadPoolExecutor(16) as pool:
            receipts = list(pool.map(send, jobs))
        by_id: dict[str, list[str]] = defaultdict(list)
        for rid, status in receipts:
            by_id[rid].append(status)
        assert len(by_id) == len(releases) == 48
        assert all(sorted(s) == ["duplicate", "stored"] for s in by_id.values()), by_id
    finally:
        a.stop()
        b.stop()
    with psycopg.connect(url) as conn:
        n, distinct = conn.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM releases").fetchone()
        (enrolled,) = conn.execute("SELECT COUNT(*) FROM devices").fetchone()
        (dups,) = conn.execute(
            "SELECT COUNT(*) FROM events WHERE outcome = 'duplicate'").fetchone()
    assert (n, distinct, enrolled, dups) == (48, 48, 12, 48)
    out = subprocess.run([sys.executable, "-m", "edgetwin", "--json", "collector", "--db", url,
                          "--aggregate"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert len(doc["aggregates"]) == 4 and all(r["devices"] == 12 for r in doc["aggregates"])
    assert doc["counts"]["releases"] == 48


def test_an_unreachable_postgresql_is_exit_6_without_the_password() -> None:
    url = f"postgresql://someone:hunter2@127.0.0.1:{free_port()}/nothing"
    out = subprocess.run([sys.executable, "-m", "edgetwin", "collector", "--db", url,
                          "--aggregate"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 6, out.stderr
    assert "unreachable" in out.stderr and "hunter2" not in out.stderr
    assert "someone:***@127.0.0.1" in out.stderr
