"""Daemon benchmarks: hub throughput flat out, and RSS/CPU of a real daemon at real time.

Reproduce: ``scripts/bench --only daemon`` (``--quick`` shortens the real-time run to 15 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run(quick: bool) -> dict[str, Any]:
    return {
        "hub_throughput": _hub_throughput(seconds=20 if quick else 120),
        "daemon_realtime": _daemon_realtime(duration=15 if quick else 60),
        "ingest_eeg_fnirs": _ingest(seconds=60 if quick else 300),
    }


def _hub_throughput(seconds: float) -> dict[str, Any]:
    """Samples/s through the hub to two draining consumers vs generating them alone."""
    from edgetwin.daemon.hub import Hub
    from edgetwin.sources.simulator import SimulatedPerson, simulate

    person = SimulatedPerson.from_seed(1)
    t0 = 1_767_225_600.0
    batches = list(simulate(person, t0, seconds, chunk_s=1.0))
    samples = sum(len(b) * len(b.channels) for b in batches)
    rows = sum(len(b) for b in batches)

    # Baseline in the same run: generating the same batches without a hub.
    started = time.perf_counter()
    sum(len(b) for b in simulate(person, t0, seconds, chunk_s=1.0))
    gen_s = time.perf_counter() - started

    async def through_hub() -> list[float]:
        hub = Hub(queue_batches=256)
        queues = [hub.subscribe("store"), hub.subscribe("features")]
        per_batch: list[float] = []

        async def drain(q: Any) -> None:
            while await q.get() is not None:
                pass

        tasks = [asyncio.create_task(drain(q)) for q in queues]
        for b in batches:
            t = time.perf_counter()
            hub.publish(b)
            per_batch.append(time.perf_counter() - t)
            await asyncio.sleep(0)
        hub.close()
        await asyncio.gather(*tasks)
        return per_batch

    started = time.perf_counter()
    per_batch = asyncio.run(through_hub())
    hub_s = time.perf_counter() - started
    per_batch_us = sorted(x * 1e6 for x in per_batch)
    return {
        "rows": rows,
        "values": samples,
        "simulated_seconds": seconds,
        "rows_per_s": round(rows / hub_s),
        "values_per_s": round(samples / hub_s),
        "publish_us": {
            "median": round(statistics.median(per_batch_us), 2),
            "p99": round(per_batch_us[int(0.99 * (len(per_batch_us) - 1))], 2),
        },
        "x_realtime": round(seconds / hub_s, 1),
        "generator_only_rows_per_s": round(rows / gen_s),
        "hub_vs_generator_time_ratio": round(hub_s / gen_s, 3),
    }


def _daemon_realtime(duration: float) -> dict[str, Any]:
    """A real `edgetwin daemon run` on the simulator at real time: RSS and CPU share."""
    exe = str(Path(sys.executable).with_name("edgetwin"))
    with tempfile.TemporaryDirectory(prefix="edgetwin-bench-") as tmp:
        home = Path(tmp) / "home"
        pw = Path(tmp) / "pw"
        pw.write_text("bench passphrase\n")
        pw.chmod(0o600)
        env = {**os.environ, "EDGETWIN_HOME": str(home), "EDGETWIN_PASSPHRASE_FILE": str(pw)}
        subprocess.run([exe, "init"], env=env, check=True, capture_output=True)
        subprocess.run([exe, "pair", "add", "simulator", "--seed", "3"], env=env, check=True,
                       capture_output=True)
        started = time.perf_counter()
        proc = subprocess.Popen([exe, "daemon", "run", "--duration", str(duration)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        rss: list[int] = []
        cpu_marks: list[tuple[float, float]] = []
        page = os.sysconf("SC_PAGE_SIZE")
        tick = os.sysconf("SC_CLK_TCK")
        while proc.poll() is None:
            try:
                rss.append(int(Path(f"/proc/{proc.pid}/statm").read_text().split()[1]) * page)
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                cpu_marks.append((time.perf_counter(), (int(fields[11]) + int(fields[12])) / tick))
            except (OSError, IndexError, ValueError):
                pass
            time.sleep(1.0)
        wall = time.perf_counter() - started
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        if proc.returncode != 0:
            raise RuntimeError(f"daemon exited {proc.returncode}: {stderr[-2000:]}")
        # Steady-state CPU: skip the first 5 s of start-up (imports, model load, key derivation).
        steady = [m for m in cpu_marks if m[0] - started > 5.0]
        share = ((steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
                 if len(steady) > 1 else None)
        rss_mib = sorted(r / 2**20 for r in rss)
        return {
            "duration_s": duration,
            "wall_s": round(wall, 1),
            "rss_mib": {
                "median": round(statistics.median(rss_mib), 1) if rss_mib else None,
                "p99": round(rss_mib[int(0.99 * (len(rss_mib) - 1))], 1) if rss_mib else None,
                "max": round(rss_mib[-1], 1) if rss_mib else None,
            },
            "cpu_share_of_one_core_steady": round(share, 4) if share is not None else None,
            "cpu_s_total": cpu_marks[-1][1] if cpu_marks else None,
        }


def _ingest(seconds: float) -> dict[str, Any]:
    """`edgetwin ingest` end to end (encrypted store, features, inference) of a recording with
    16-channel 250 Hz EEG and 16 optical channels at 64 Hz, as a multiple of real time."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_brainflow", ROOT / "scripts" /
                                                  "bench_brainflow.py")
    assert spec is not None
    assert spec.loader is not None
    bf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bf)
    exe = str(Path(sys.executable).with_name("edgetwin"))
    runs = []
    with tempfile.TemporaryDirectory(prefix="edgetwin-bench-") as tmp:
        rec = Path(tmp) / "rec.csv"
        bf._write_csv(rec, seconds)
        pw = Path(tmp) / "pw"
        pw.write_text("bench passphrase\n")
        pw.chmod(0o600)
        for i in range(3):
            env = {**os.environ, "EDGETWIN_HOME": str(Path(tmp) / f"home{i}"),
                   "EDGETWIN_PASSPHRASE_FILE": str(pw)}
            subprocess.run([exe, "init"], env=env, check=True, capture_output=True)
            started = time.perf_counter()
            out = subprocess.run([exe, "ingest", str(rec), "--stream", "headset", "--json"],
                                 env=env, check=True, capture_output=True, text=True)
            wall = time.perf_counter() - started
            report = json.loads(out.stdout)
            runs.append((wall, report))
    walls = sorted(w for w, _ in runs)
    report = runs[0][1]
    return {
        "recording_s": seconds,
        "samples": report["samples"],
        "frames": report["frames"],
        "predictions": report["predictions"],
        "wall_s": {"median": round(statistics.median(walls), 2), "max": round(walls[-1], 2)},
        "x_realtime_median": round(seconds / statistics.median(walls), 1),
        "cpu_share_of_one_core_at_realtime": round(statistics.median(walls) / seconds, 4),
        "note": "whole command incl. start-up and unlock; samples = timestamps x streams",
    }
