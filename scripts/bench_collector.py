#!/usr/bin/env python3
"""Load test of the reference collector: simulated devices over HTTPS and MQTT, 1 and 2 instances.

``run(quick)`` returns one entry per configuration, named
``<transport>_<store>_<instances>x_<devices>dev``, each with uploads/s, client latency
p50/p99 (HTTPS: POST to receipt; MQTT: publish to stored, from the collector's
``received_at``), errors, releases stored vs sent, and each collector process's peak RSS.

* The collectors are real ``edgetwin collector`` processes: HTTPS with a private CA, the store
  SQLite (one instance) or a private PostgreSQL with fsync on (one or two instances sharing
  it); devices are spread over instances round-robin, as a load balancer would.
* Every device is an independent coroutine sending its releases back to back (signed
  beforehand with its own Ed25519 key), all devices at once: the figures are capacity, not
  a realistic cadence (a real device sends a few releases a day).
* Mixed in during every HTTPS run: idle TCP clients that never start TLS, idle clients past
  the handshake, and slow clients trickling a request head; each should end in a close
  (handshake timeout) or a 408, counted under ``hostile``.
* MQTT: the devices publish (QoS 1) through a real Mosquitto; the collectors subscribe with
  the shared subscription ``$share/bench/...`` on PostgreSQL.
* ``abuse``: deep JSON, a 5,000-digit integer, an oversized body, a missing and a wrong
  bearer token, each with the status it got and the refusals the store recorded.

The load generator runs on the same 2 cores as the collectors and the database, so the
figures are a floor for a machine of its own. Run: ``.venv/bin/python
scripts/bench_collector.py [--quick]`` or ``scripts/bench --only collector``.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOPIC = "bench/edgetwin/releases"
HEADER_TIMEOUT = 2.0


def run(quick: bool) -> dict[str, Any]:
    from tests.sync.helpers import Broker, Postgres, make_tls

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgetwin-bench-collector-") as tmp:
        d = Path(tmp)
        tls = make_tls(d)
        token = d / "token"
        token.write_text("bench-token\n")
        pg = Postgres(fsync=True)
        pg.start()
        broker = Broker(d, extra=["max_queued_messages 0", "max_inflight_messages 100"])
        broker.start()
        try:
            sizes = (100,) if quick else (100, 1000)
            per_device = {100: 3 if quick else 10, 1000: 3}
            configs = [("sqlite", 1), ("postgresql", 1), ("postgresql", 2)]
            for n in sizes:
                for store, instances in configs:
                    db = str(d / f"c-{n}-{instances}.db") if store == "sqlite" \
                        else pg.new_database()
                    name = f"https_{store}_{instances}x_{n}dev"
                    print(f"bench collector: {name}", file=sys.stderr, flush=True)
                    out[name] = _https(d, tls, token, db, instances, n, per_device[n])
                for instances in (1, 2):
                    name = f"mqtt_postgresql_{instances}x_{n}dev"
                    print(f"bench collector: {name}", file=sys.stderr, flush=True)
                    out[name] = _mqtt(d, broker, pg.new_database(), instances, n,
                                      per_device[n])
            out["abuse"] = _abuse(d, tls, token, pg.new_database())
        finally:
            broker.stop()
            pg.stop()
    return out


# -- helpers --------------------------------------------------------------------------


def _stats_ms(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    s = sorted(samples)
    return {"p50_ms": round(statistics.median(s) * 1e3, 2),
            "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1e3, 2)}


class _Proc:
    """``edgetwin collector`` as a process; ``url`` once it listens (HTTP) or subscribes."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgetwin", "collector", *args], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=self.log, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        self.url = ""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"collector exited: {log.read_text()[-2000:]}")
            if "listening on" in line:
                self.url = line.split("listening on ", 1)[1].strip()
                break
            if "subscribed to" in line:
                break

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=10)
        self.log.close()


def _devices(n: int, per_device: int) -> tuple[list[Any], list[list[bytes]], list[str]]:
    """n device keys and, per device, signed envelopes of fresh releases (sent now)."""
    from edgetwin.sync.payload import encode_envelope
    from edgetwin.sync.signing import DeviceKey
    from tests.sync.helpers import T0, make_release

    keys = [DeviceKey.generate() for _ in range(n)]
    now_ms = int(time.time() * 1000)
    bodies, ids = [], []
    for i, k in enumerate(keys):
        mine = []
        for j in range(per_device):
            r = make_release(55.0 + (i * 7 + j) % 50, start=T0 + j * 86_400.0)
            mine.append(encode_envelope(r, k, now_ms))
            ids.append(r.id)
        bodies.append(mine)
    return keys, bodies, ids


def _enroll(db: str, keys: list[Any]) -> None:
    from edgetwin.sync.collector import Collector

    c = Collector(db)
    for k in keys:
        c.enroll(k.public_b64)
    c.close()


def _stored(db: str) -> tuple[int, dict[str, int]]:
    from edgetwin.sync.collector import Collector

    c = Collector(db)
    try:
        return c.counts()["releases"], c.refusals()
    finally:
        c.close()


# -- HTTPS ----------------------------------------------------------------------------


def _https(d: Path, tls: Any, token: Path, db: str, instances: int, n: int,
           per_device: int) -> dict[str, Any]:
    keys, bodies, ids = _devices(n, per_device)
    _enroll(db, keys)
    procs = [_Proc(["--listen", "127.0.0.1:0", "--db", db, "--tls-cert", str(tls.cert),
                    "--tls-key", str(tls.key), "--token-file", str(token),
                    "--max-connections", "4096", "--header-timeout", str(HEADER_TIMEOUT)],
                   d / f"collector-{i}.log") for i in range(instances)]
    try:
        result = asyncio.run(_drive_https([p.url for p in procs], bodies, tls.ca))
        time.sleep(1.0)  # let the collectors record the last handshake timeouts
        rss = [p.peak_rss_mb() for p in procs]
    finally:
        for p in procs:
            p.stop()
    stored, refusals = _stored(db)
    result.update({"devices": n, "instances": instances, "sent": len(ids),
                   "stored": stored, "collector_peak_rss_mb": rss,
                   "refusals_recorded": refusals})
    return result


async def _drive_https(urls: list[str], bodies: list[list[bytes]], ca: Path) -> dict[str, Any]:
    import aiohttp

    ctx = ssl.create_default_context(cafile=str(ca))
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    hostile: Counter[str] = Counter()
    hosts = [(u.split("//")[1].rsplit(":", 1)[0], int(u.rsplit(":", 1)[1])) for u in urls]

    async def idle_tcp(host: str, port: int) -> None:
        # Never starts TLS: the handshake timeout closes it.
        reader, writer = await asyncio.open_connection(host, port)
        got = await _read_until_close(reader)
        hostile["idle_tcp " + ("closed" if not got else got.split(b"\r\n")[0].decode())] += 1
        writer.close()

    async def idle_tls(host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx,
                                                       server_hostname="127.0.0.1")
        got = await _read_until_close(reader)
        hostile["idle_tls " + (got.split(b"\r\n")[0].decode() if got else "closed")] += 1
        writer.close()

    async def slow_head(host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx,
                                                       server_hostname="127.0.0.1")
        writer.write(b"POST /v1/releases HTTP/1.1\r\n")
        got = b""
        for i in range(60):  # one header byte every 0.25 s, never the blank line
            try:
                got = await asyncio.wait_for(reader.read(4096), 0.25)
            except TimeoutError:
                writer.write(b"X-Slow-%d: 1\r\n" % i)
                continue
            break
        hostile["slow_head " + (got.split(b"\r\n")[0].decode() if got else "closed")] += 1
        writer.close()

    hostile_tasks = []
    for host, port in hosts:
        hostile_tasks += [asyncio.create_task(idle_tcp(host, port)) for _ in range(50)]
        hostile_tasks += [asyncio.create_task(idle_tls(host, port)) for _ in range(50)]
        hostile_tasks += [asyncio.create_task(slow_head(host, port)) for _ in range(10)]

    connector = aiohttp.TCPConnector(limit=0, ssl=ctx)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def device(i: int, mine: list[bytes]) -> None:
            url = urls[i % len(urls)] + "/v1/releases"
            for body in mine:
                t = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers={
                            "Content-Type": "application/json"}) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - t)
                if status != 200:
                    errors[f"http {status}"] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(device(i, mine) for i, mine in enumerate(bodies)))
        wall = time.perf_counter() - t0
    await asyncio.wait_for(asyncio.gather(*hostile_tasks, return_exceptions=True), 60)
    total = sum(len(m) for m in bodies)
    return {"uploads_per_s": round(total / wall, 1), **_stats_ms(latencies),
            "errors": dict(errors), "wall_s": round(wall, 2), "hostile": dict(hostile)}


async def _read_until_close(reader: asyncio.StreamReader) -> bytes:
    got = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(4096), 60):
            got += chunk
    except (ConnectionError, ssl.SSLError, TimeoutError):
        pass
    return got


# -- MQTT -----------------------------------------------------------------------------


def _mqtt(d: Path, broker: Any, db: str, instances: int, n: int,
          per_device: int) -> dict[str, Any]:
    import paho.mqtt.client as mqtt
    import psycopg
    from paho.mqtt.enums import CallbackAPIVersion

    keys, bodies, ids = _devices(n, per_device)
    _enroll(db, keys)
    procs = [_Proc(["--db", db, "--mqtt", broker.url, "--topic", TOPIC, "--share", "bench"],
                   d / f"collector-mqtt-{i}.log") for i in range(instances)]
    # Each process printed "subscribed" after its SUBACK: the group is complete.
    publishers = min(n, 20)  # devices share a few publisher connections (the broker cannot tell)
    sent_at: dict[str, float] = {}
    errors: Counter[str] = Counter()
    lock = threading.Lock()

    def publish(part: int) -> None:
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=f"bench-pub-{part}", protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(100)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        infos = []
        for i in range(part, n, publishers):
            for body in bodies[i]:
                rid = json.loads(json.loads(body)["payload"])["id"]
                with lock:
                    sent_at[rid] = time.time()
                infos.append(client.publish(TOPIC, body, qos=1))
        for info in infos:
            try:
                info.wait_for_publish(60)
            except (RuntimeError, ValueError):
                errors["publish"] += 1
        client.disconnect()
        client.loop_stop()

    t0 = time.time()
    threads = [threading.Thread(target=publish, args=(p,)) for p in range(publishers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 300
    with psycopg.connect(db) as conn:
        while time.monotonic() < deadline:
            (count,) = conn.execute("SELECT COUNT(*) FROM releases").fetchone()
            if count >= len(ids):
                break
            time.sleep(0.2)
        rows = conn.execute("SELECT id, received_at FROM releases").fetchall()
    rss = [p.peak_rss_mb() for p in procs]
    for p in procs:
        p.stop()
    lat = [received - sent_at[rid] for rid, received in rows if rid in sent_at]
    last = max((r for _, r in rows), default=t0)
    stored, refusals = _stored(db)
    return {"uploads_per_s": round(len(rows) / max(last - t0, 1e-9), 1), **_stats_ms(lat),
            "errors": dict(errors), "devices": n, "instances": instances, "sent": len(ids),
            "stored": stored, "collector_peak_rss_mb": rss, "refusals_recorded": refusals}


# -- abuse ----------------------------------------------------------------------------


def _abuse(d: Path, tls: Any, token: Path, db: str) -> dict[str, Any]:
    import http.client

    keys, bodies, _ = _devices(1, 1)
    _enroll(db, keys)
    proc = _Proc(["--listen", "127.0.0.1:0", "--db", db, "--tls-cert", str(tls.cert),
                  "--tls-key", str(tls.key), "--token-file", str(token)],
                 d / "collector-abuse.log")
    port = int(proc.url.rsplit(":", 1)[1])
    ctx = ssl.create_default_context(cafile=str(tls.ca))
    env = json.loads(bodies[0][0])
    huge = dict(env)
    cases: list[tuple[str, str, str, bytes, dict[str, str]]] = [
        ("deep_json", "POST", "/v1/releases", b"[" * 8000 + b"]" * 8000, {}),
        ("huge_integer", "POST", "/v1/releases",
         json.dumps(huge).replace(str(env["sent_at_ms"]), "1" * 5000).encode(), {}),
        ("oversized_body", "POST", "/v1/releases", b"x" * 100_000, {}),
        ("aggregates_no_token", "GET", "/v1/aggregates", b"", {}),
        ("aggregates_wrong_token", "GET", "/v1/aggregates", b"",
         {"Authorization": "Bearer nope"}),
        ("honest_upload", "POST", "/v1/releases", bodies[0][0], {}),
        ("aggregates_token", "GET", "/v1/aggregates", b"",
         {"Authorization": "Bearer bench-token"}),
    ]
    out: dict[str, Any] = {}
    try:
        for name, method, path, body, headers in cases:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
            try:
                conn.request(method, path, body=body or None, headers=headers)
                resp = conn.getresponse()
                text = resp.read()
                out[name] = {"status": resp.status,
                             "answer": json.loads(text).get("error", "ok") if text else ""}
            except (OSError, http.client.HTTPException) as exc:
                out[name] = {"status": None, "answer": f"{type(exc).__name__}: {exc}"}
            finally:
                conn.close()
    finally:
        proc.stop()
    out["refusals_recorded"] = _stored(db)[1]
    return out


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
