#!/usr/bin/env python3
"""Dashboard figures, printed as JSON.

- timeline: server time to read + downsample + render the Timeline page (GET /timeline over
  loopback, which is the server's time plus a loopback round trip) for a 24 h and a 30-day
  range of 1 Hz frames (hr, spo2, motion), median/p99 over --runs; plus the phases (decode,
  downsample) and the bytes of the page and of /api/timeline;
- daemon: the real daemon on the simulator at real time, three runs of --seconds each:
  [dashboard] disabled, enabled with no page open, enabled with one live page (an SSE client):
  RSS at the end and CPU (% of one core) over the run's second half; with the page open,
  SSE delivery latency (daemon publish -> client receipt, median/p99) and bytes per event.

Usage: scripts/bench_dashboard.py [--days 30] [--runs 10] [--seconds 40] [--skip-daemon]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgetwin.config import Config, DashboardConfig  # noqa: E402
from edgetwin.features.schema import INDEX, NAMES, SCHEMA_VERSION  # noqa: E402
from edgetwin.store import Secret, TwinStore  # noqa: E402
from edgetwin.types import FeatureFrame  # noqa: E402

PASS = "bench dashboard"
T0 = 1_700_000_000.0


def _q(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(np.ceil(q * len(s))) - 1))]


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(xs), 4), "p99": round(_q(xs, 0.99), 4),
            "n": len(xs)}


def build_twin(home: Path, days: int) -> float:
    t_start = time.perf_counter()
    width = len(NAMES)
    rng = np.random.default_rng(0)
    with TwinStore.create(home, Secret.passphrase(PASS)) as store:
        for day in range(days):
            n = 86400
            k = np.arange(n) + day * n
            hr = 62 + 8 * np.sin(k / 5400.0) + rng.normal(0, 1.5, n)
            frames = []
            for i in range(n):
                v = np.full(width, np.nan)
                v[INDEX["hr"]] = hr[i]
                v[INDEX["spo2"]] = 97.0 + (i % 3)
                v[INDEX["motion"]] = 0.01 * (i % 50)
                frames.append(FeatureFrame(T0 + float(k[i]), v, np.ones(width),
                                           np.zeros(width, bool), SCHEMA_VERSION))
            store.append_frames(frames)
            store.commit()
    return time.perf_counter() - t_start


async def bench_timeline(home: Path, days: int, runs: int) -> dict[str, Any]:
    import aiohttp

    from edgetwin.web import data
    from edgetwin.web.app import Dashboard, StoreBackend
    from edgetwin.web.downsample import downsample_columns

    out: dict[str, Any] = {}
    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        dash = Dashboard(home, StoreBackend(store, Config()), DashboardConfig(port=0))
        await dash.start()
        try:
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as s:
                async with s.get(dash.url, allow_redirects=False) as r:
                    assert r.status == 303
                end = T0 + days * 86400 - 1
                for label, span in (("24h", 86400.0), (f"{days}d", days * 86400.0)):
                    q = f"?from={end - span}&to={end}"
                    times = []
                    size = 0
                    for _ in range(runs):
                        t = time.perf_counter()
                        async with s.get(dash.base_url + "/timeline" + q) as r:
                            body = await r.read()
                            assert r.status == 200, body[:200]
                        times.append(time.perf_counter() - t)
                        size = len(body)
                    async with s.get(dash.base_url + "/api/timeline" + q) as r:
                        api = await r.json()
                    # phases, measured in this process: read + decrypt + inflate + per-chunk
                    # min/max reduction, then the final MinMaxLTTB over the candidates
                    idx = [INDEX[n] for n in ("hr", "spo2", "motion")]
                    t = time.perf_counter()
                    red = data._reduce_frames(store, end - span, end, idx, 1200)
                    t_decode = time.perf_counter() - t
                    t = time.perf_counter()
                    downsample_columns(red.t, {str(j): red.values[:, j] for j in range(3)},
                                       n_out=1200, gap_s=red.gap_s)
                    t_down = time.perf_counter() - t
                    out[label] = {
                        "frames": api["frames"], "points": len(api["points"]["t"]),
                        "page_s": _stats(times), "page_bytes": size,
                        "read_reduce_s": round(t_decode, 4), "downsample_s": round(t_down, 4),
                        "candidate_rows": int(red.t.size),
                    }
        finally:
            await dash.stop()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_cpu_rss(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(parts[11]) + int(parts[12])) / ticks
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return cpu, rss


async def _sse_client(url: str, stop: asyncio.Event, sink: dict[str, Any]) -> None:
    import aiohttp

    base = url.split("/?", maxsplit=1)[0]
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as s:
        async with s.get(url, allow_redirects=False) as r:
            assert r.status == 303
        async with s.get(base + "/api/events", timeout=aiohttp.ClientTimeout(total=None)) as r:
            event = None
            while not stop.is_set():
                try:
                    line = await asyncio.wait_for(r.content.readline(), 1.0)
                except TimeoutError:
                    continue
                if not line:
                    break
                text = line.decode().rstrip("\n")
                if text.startswith("event: "):
                    event = text[7:]
                elif text.startswith("data: ") and event:
                    now = time.time()
                    size = len(f"event: {event}\n".encode()) + len(line) + 1
                    sink.setdefault("bytes", {}).setdefault(event, []).append(size)
                    doc = json.loads(text[6:])
                    if isinstance(doc, dict) and "sent_at" in doc:
                        sink.setdefault("latency_s", []).append(now - float(doc["sent_at"]))


def _start_daemon(home: Path, pw: Path, mode: str, port: int,
                  seconds: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "EDGETWIN_HOME": str(home), "EDGETWIN_PASSPHRASE_FILE": str(pw)}
    exe = [sys.executable, "-m", "edgetwin"]
    subprocess.run([*exe, "init"], env=env, check=True, capture_output=True)
    subprocess.run([*exe, "pair", "add", "simulator", "--seed", "3"], env=env, check=True,
                   capture_output=True)
    enabled = "false" if mode == "disabled" else "true"
    (home / "config.toml").write_text(f"[dashboard]\nenabled = {enabled}\nport = {port}\n")
    return subprocess.Popen([*exe, "daemon", "run", "--duration", str(seconds + 5)], env=env,
                            stderr=subprocess.DEVNULL)


async def bench_daemon(seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("disabled", "enabled_idle", "enabled_page_open"):
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp) / "home"
            pw = Path(tmp) / "pw"
            pw.write_text(PASS + "\n")
            pw.chmod(0o600)
            port = _free_port()
            proc = await asyncio.to_thread(_start_daemon, home, pw, mode, port, seconds)
            sink: dict[str, Any] = {}
            stop = asyncio.Event()
            client = None
            try:
                if mode != "disabled":
                    for _ in range(300):
                        with socket.socket() as s:
                            if s.connect_ex(("127.0.0.1", port)) == 0:
                                break
                        await asyncio.sleep(0.1)
                if mode == "enabled_page_open":
                    token = (home / "dashboard.token").read_text().strip()
                    url = f"http://127.0.0.1:{port}/?token={token}"
                    client = asyncio.create_task(_sse_client(url, stop, sink))
                await asyncio.sleep(seconds / 2)
                cpu0, _ = _proc_cpu_rss(proc.pid)
                w0 = time.monotonic()
                await asyncio.sleep(seconds / 2)
                cpu1, rss = _proc_cpu_rss(proc.pid)
                w1 = time.monotonic()
            finally:
                stop.set()
                if client is not None:
                    client.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await client
                proc.terminate()
                await asyncio.to_thread(proc.wait, 60)
            doc: dict[str, Any] = {
                "rss_mib": round(rss / 2**20, 1),
                "cpu_percent_of_core": round(100 * (cpu1 - cpu0) / (w1 - w0), 2),
            }
            if sink:
                lat = sink.get("latency_s", [])
                doc["sse_latency_s"] = _stats(lat) if lat else None
                doc["bytes_per_event"] = {k: round(statistics.mean(v)) for k, v in
                                          sink.get("bytes", {}).items()}
                doc["events"] = {k: len(v) for k, v in sink.get("bytes", {}).items()}
            out[mode] = doc
    out["rss_added_mib"] = round(out["enabled_page_open"]["rss_mib"]
                                 - out["disabled"]["rss_mib"], 1)
    out["cpu_added_percent_of_core"] = round(
        out["enabled_page_open"]["cpu_percent_of_core"]
        - out["disabled"]["cpu_percent_of_core"], 2)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """``scripts/bench``'s entry: the figures (quick: 2 days, 3 runs, 10 s per daemon run)."""
    return measure(days=2 if quick else 30, runs=3 if quick else 10,
                   seconds=10.0 if quick else 60.0)


def measure(*, days: int, runs: int, seconds: float, timeline: bool = True,
            daemon: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                              "command": f"scripts/bench_dashboard.py --days {days} --runs {runs}"
                                         f" --seconds {seconds:g}"}
    # cheap key derivation for the throw-away twins (restored after: scripts/bench runs other
    # areas in this process)
    saved = os.environ.get("EDGETWIN_KDF_PROFILE")
    os.environ["EDGETWIN_KDF_PROFILE"] = "test"
    try:
        _measure(result, days, runs, seconds, timeline, daemon)
    finally:
        if saved is None:
            os.environ.pop("EDGETWIN_KDF_PROFILE", None)
        else:
            os.environ["EDGETWIN_KDF_PROFILE"] = saved
    return result


def _measure(result: dict[str, Any], days: int, runs: int, seconds: float, timeline: bool,
             daemon: bool) -> None:
    if timeline:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp) / "home"
            result["twin_build_s"] = round(build_twin(home, days), 1)
            result["timeline"] = asyncio.run(bench_timeline(home, days, runs))
    if daemon:
        result["daemon"] = asyncio.run(bench_daemon(seconds))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--skip-daemon", action="store_true")
    p.add_argument("--skip-timeline", action="store_true")
    args = p.parse_args()
    result = measure(days=args.days, runs=args.runs, seconds=args.seconds,
                     timeline=not args.skip_timeline, daemon=not args.skip_daemon)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
