"""Soak: the real daemon at the reference load, with faults on a schedule.

Reproduce: ``scripts/bench --only soak`` (30 min), ``--quick`` (3 min), or
``python scripts/bench_soak.py --minutes N [--clock-step] [--churn]``.

A fresh twin (``EDGETWIN_KDF_PROFILE=test``) with these sources, each driven
by an existing bench/test helper:

- ``headset``: BrainFlow ``SYNTHETIC_BOARD`` (16 EEG channels at 250 Hz and
  the board's other rows);
- ``optics``: BrainFlow ``PLAYBACK_FILE_BOARD`` playing a Muse S Athena
  ancillary-preset file written by BrainFlow's ``DataFilter`` (16 optical
  channels at 64 Hz);
- ``strap0..3``: four heart-rate straps at 1 Hz with RR through the BlueZ
  emulator on a private D-Bus (``tests/sources/bluez_emulator.py``);
- ``bridge``: the firmware-bridge emulator (32 fNIRS channels at 100 Hz) on a
  pty, run in this process so it can be unplugged (its CPU is not the daemon's);
- ``simulator``: the seeded physiology simulator's vitals (``--modalities rr,vitals``:
  heart rate, SpO2, temperature, EDA at 4 Hz and RR intervals; before 2026-12-03 it also
  streamed the simulator's 4-channel 256 Hz EEG, fNIRS, accelerometer and air, beyond
  the reference load);
- a collector (``edgetwin collector`` on loopback HTTP) receiving the twin's DP
  releases: three past days of frames are seeded so releases are due at once
  (``[sync] interval_s = 20``).

Faults (times as fractions of the run): a BLE link drop (``DropLink`` of
strap0); the collector down (10 min, or a fifth of a shorter run) while a new
consent makes releases due; a serial unplug with replug 10 s later; the disk
nearly full for 60 s (a tenth of a shorter run; the home is on a loop-mounted
ext4 image, filled with ballast to 128 KiB free; needs root and a loop device,
else reported as not injected); the disk stalled (``fsfreeze`` of the same image for 60 s,
or a twentieth of a shorter run: every write and fsync of the twin blocks, as on a slow SD
card or a host busy with I/O; no stream may lose anything, the hub's queues hold ~100 s);
SIGKILL of the daemon with an immediate restart; with
``--clock-step`` (root only: it steps the whole machine's clock) the host
clock stepped 30 s forward and, 60 s later, back. ``--churn`` injects nothing but link
faults, one every 30 s: a BLE link drop of each strap in turn and a serial unplug by turns.

``EDGETWIN_SOAK_HISTORY_H=24`` seeds that many hours of what the daemon stores (a frame
of five targets and their forecasts every 5 s, ending at the start) so the refit at start
and every 30 minutes works over a full day, as on a twin that has run that long.

Every ~10 s (5 s with ``--quick``) the daemon's CPU share (utime+stime over
wall time from /proc, its ended children's included), RSS, loop lag p99, hub
drops and open descriptors, threads and asyncio tasks (``edgetwin status --json``) and the
store's file size are sampled. At the end the daemon is
stopped and the store is read back: every gap in each stream's stored sample
times (longer than 3 nominal intervals and 0.5 s) is attributed to a fault or
reported as unexplained, in seconds of data; the collector's database is
compared with the twin's outbox (every release delivered exactly once).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STRAPS = [f"C0:FF:EE:00:02:0{i}" for i in range(4)]
# a lifetime's first minutes, when its heaps and caches fill (the 2-hour soaks of
# 2026-12-05: RSS rose ~4 MiB over them, then stayed within noise)
WARM_UP_S = 600.0
AIMS = {"cpu_share_max": 0.08, "rss_mib_max": 150.0, "loop_lag_p99_ms_max": 20.0,
        "sigkill_loss_s_max": 2.0}
PASS = "soak passphrase"
CHURN_EVERY_S = 30.0  # --churn: a link fault this often
MIN_FIT_H = 0.25  # memory flat is judged on at least this much time between faults
UNIT = ROOT / "scripts" / "edgetwin.service"


def systemd_seconds(span: str) -> float:
    """A systemd time span as the unit writes them ("100ms", "5", "5s", "10min") in seconds."""
    span = span.strip()
    for suffix, scale in (("ms", 1e-3), ("min", 60.0), ("s", 1.0)):
        if span.endswith(suffix):
            return float(span[: -len(suffix)]) * scale
    return float(span)


def unit_restart_s(unit: Path = UNIT) -> float:
    """The shipped systemd unit's ``RestartSec`` in seconds (systemd's own default, 100 ms, when
    it sets none): the SIGKILL fault restarts the daemon after this delay, as systemd would."""
    for raw in unit.read_text().splitlines():
        key, _, value = raw.strip().partition("=")
        if key == "RestartSec":
            return systemd_seconds(value)
    return 0.1


SEEDED_STREAM = "wrist"  # past days written before the daemon starts, so releases are due
SOAK_SYNC = "interval_s = 20\nbackoff_initial_s = 10\nbackoff_max_s = 30\n"


def run(quick: bool, minutes: float | None = None, clock_step: bool = False,
        faults: bool = True, churn: bool = False) -> dict[str, Any]:
    minutes = minutes if minutes is not None else (3.0 if quick else 30.0)
    return _soak(minutes * 60.0, sample_s=5.0 if quick else 10.0, clock_step=clock_step,
                 faults_on=faults, churn=churn)


def churn_schedule(duration: float, every_s: float = CHURN_EVERY_S) -> list[tuple[float, str]]:
    """``--churn``: only link faults, one every ``every_s`` from the second to the last
    interval, a BLE link drop (of each strap in turn) and a serial unplug by turns: a leak
    of one descriptor or task per reconnect shows as a count that climbs fault by fault."""
    n = max(2, int(duration / every_s) - 2)
    return [((k + 1) * every_s / duration, "ble_link_drop" if k % 2 == 0 else "serial_unplug")
            for k in range(n)]


# -- pure helpers (unit-tested) ----------------------------------------------


def find_gaps(t: np.ndarray, *, min_gap_s: float = 0.5, factor: float = 3.0
              ) -> tuple[float, list[tuple[float, float, float]]]:
    """Nominal interval (median step) and every gap ``(start, end, lost_s)`` of a sorted time
    vector: a step longer than ``factor`` nominal intervals and ``min_gap_s``; ``lost_s`` is the
    step minus one nominal interval (seconds of data missing)."""
    t = np.sort(np.asarray(t, dtype=float))
    if t.size < 3:
        return float("nan"), []
    d = np.diff(t)
    nominal = float(np.median(d))
    limit = max(min_gap_s, factor * nominal)
    idx = np.nonzero(d > limit)[0]
    return nominal, [(float(t[i]), float(t[i + 1]), float(d[i] - nominal)) for i in idx]


def kill_gap(t: np.ndarray, nominal: float, kill_at: float, *, max_interval_s: float = 1.5
             ) -> dict[str, float] | None:
    """What a stream lost at a SIGKILL at ``kill_at``, measured on the step across it
    whatever its length (``find_gaps`` counts no gap under 3 intervals: at 1 Hz a strap's
    2.9 s step would not show): ``before_kill_s`` received but never committed,
    ``downtime_s`` until the restarted daemon stored again, ``lost_s`` the step minus one
    interval. None for a stream too sparse to tell (a battery level every few minutes) or
    without data on both sides."""
    t = np.sort(np.asarray(t, dtype=float))
    if not np.isfinite(nominal) or nominal > max_interval_s:
        return None
    i = int(np.searchsorted(t, kill_at, side="right"))
    if i == 0 or i == t.size:
        return None
    before, after = float(t[i - 1]), float(t[i])
    return {"before_kill_s": round(kill_at - before, 2),
            "downtime_s": round(after - kill_at, 2),
            "lost_s": round(max(after - before - nominal, 0.0), 2)}


# what the RSS is made of, per sample: heaps vs mapped files, Python's blocks, malloc's heap
# in use and kept free, SQLite's caches (fitted per hour, whole run and between faults)
MEMORY_PARTS = ("rss_anon_mib", "rss_file_mib", "py_blocks", "heap_used_mib", "heap_free_mib",
                "sqlite_mib")
# what a reconnect can leak besides memory, and how far a count may sit above the one before
# a fault once it settled (a status read's socket, a refit's pipes, a periodic job's task come
# and go at any moment)
HANDLES = ("open_fds", "threads", "asyncio_tasks")
HANDLES_SLACK = {"open_fds": 2.0, "threads": 1.0, "asyncio_tasks": 2.0}
SIMULATOR_SEED = 3  # the soak's simulator source (pair add simulator --seed 3)
SIMULATOR_DROPOUTS_PER_H = 0.12  # edgetwin.sources.simulator: its schedule with dropouts on


def simulated_dropouts(stream: str, t0: float, t1: float) -> list[dict[str, Any]]:
    """The simulated person's own sensor dropouts of a ``simulator.<modality>`` stream within
    ``[t0, t1]``, as faults: the simulator leaves those rows out by design (a 98.5 s vitals
    gap of the 2-hour soak was one), so they are not data the daemon lost."""
    prefix = "simulator."
    if not stream.startswith(prefix) or not t1 > t0:
        return []
    from edgetwin.sources.sim.schedule import Schedule
    from edgetwin.sources.simulator import SimulatedPerson

    schedule = Schedule(SimulatedPerson.from_seed(SIMULATOR_SEED),
                        dropout_per_h=SIMULATOR_DROPOUTS_PER_H)
    step = 0.25
    grid = np.arange(t0, t1 + step, step)
    off = schedule.dropout_mask(stream[len(prefix):], grid).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], off, [0]))))
    return [{"name": "simulated_dropout", "at": float(grid[a]),
             "until": float(grid[b - 1]) + step, "streams": [stream]}
            for a, b in zip(edges[::2], edges[1::2], strict=True)]


def attribute(gaps: list[tuple[float, float, float]], faults: list[dict[str, Any]],
              stream: str) -> tuple[dict[str, float], list[tuple[float, float, float]]]:
    """Seconds lost per fault name for ``stream``; gaps no fault explains are returned apart.

    A fault explains a gap of the streams it affects (``streams`` prefixes, empty = all) when
    the gap starts in ``[at - 5 s, until + 60 s]``; of several, the latest fault started. A
    fault that must lose nothing (``streams == ["-"]``: the collector down, the disk stalled)
    leaves a gap in its window unexplained even when an earlier fault's window holds it too
    (a stall a minute after the disk was full)."""
    lost: dict[str, float] = {}
    unexplained = []
    for gap in gaps:
        for f in sorted(faults, key=lambda f: -f["at"]):
            if not f["at"] - 5.0 <= gap[0] <= f.get("until", f["at"]) + 60.0:
                continue
            prefixes = f.get("streams") or [""]
            if any(stream.startswith(p) for p in prefixes):
                lost[f["name"]] = lost.get(f["name"], 0.0) + gap[2]
                break
            if prefixes == ["-"]:
                unexplained.append(gap)
                break
        else:
            unexplained.append(gap)
    return lost, unexplained


def thread_shares(lifetime: list[dict[str, Any]]) -> dict[str, Any]:
    """Each thread's share of one core over a daemon lifetime, from the CPU seconds per
    thread that ``status`` reports (first and last sample past start-up). ``(native
    threads)`` are those Python did not start: here BrainFlow's board threads, i.e. the
    emulated headset's generator and the playback reader, not the daemon's own work."""
    rows = [s for s in lifetime if s.get("threads_cpu_s")][3:]
    if len(rows) < 2 or rows[-1]["t"] <= rows[0]["t"]:
        return {}
    span = rows[-1]["t"] - rows[0]["t"]
    first, last = rows[0]["threads_cpu_s"], rows[-1]["threads_cpu_s"]
    shares = {name: round(max(0.0, cpu - first.get(name, 0.0)) / span, 4)
              for name, cpu in last.items()}
    native = shares.get("(native threads)", 0.0)
    ranked = dict(sorted(shares.items(), key=lambda kv: -kv[1]))
    return {"span_s": round(span, 1), "threads": ranked,
            "total": round(sum(shares.values()), 4),
            "without_native_threads": round(sum(shares.values()) - native, 4)}


_REFIT_LINE = re.compile(r"refitted in child (\d+): ([\d.]+) s of CPU, peak ([\d.]+) MiB")


def refit_children(log: str) -> dict[str, Any]:
    """The refits' child processes, from the daemon's log: how many, their CPU and peak RSS."""
    found = [(float(cpu), float(peak)) for _pid, cpu, peak in _REFIT_LINE.findall(log)]
    return {"count": len(found),
            "cpu_s_max": max((c for c, _ in found), default=None),
            "peak_rss_mib_max": max((p for _, p in found), default=None)}


def cpu_spikes(lifetimes: list[list[dict[str, Any]]], top: int = 8) -> list[dict[str, Any]]:
    """The samples with the highest CPU share, each with the threads that spent it (deltas of
    the per-thread CPU seconds in ``status`` since the sample before, in the same lifetime):
    what a CPU p99 is made of."""
    found = []
    for lifetime in lifetimes:
        for before, row in itertools.pairwise(lifetime):
            a, b = before.get("threads_cpu_s"), row.get("threads_cpu_s")
            # the span on the daemon's clock, read with the threads' CPU seconds
            clock = "uptime_s" if before.get("uptime_s") and row.get("uptime_s") else "t"
            if row.get("cpu_share") is None or not a or not b or row[clock] <= before[clock]:
                continue
            span = row[clock] - before[clock]
            threads = {name: round((cpu - a.get(name, 0.0)) / span, 3)
                       for name, cpu in b.items() if cpu - a.get(name, 0.0) >= 0.005 * span}
            found.append({"t_s": round(row["t"], 1), "cpu_share": round(row["cpu_share"], 3),
                          "threads": dict(sorted(threads.items(), key=lambda kv: -kv[1]))})
    return sorted(found, key=lambda x: -x["cpu_share"])[:top]


def growth_per_hour(t_s: list[float], y: list[float]) -> dict[str, Any]:
    """Least-squares line through ``y`` over time: slope per hour and the day/month projection."""
    if len(t_s) < 3:
        return {"per_hour": None, "points": len(t_s)}
    hours = (np.asarray(t_s) - t_s[0]) / 3600.0
    slope, intercept = np.polyfit(hours, np.asarray(y, dtype=float), 1)
    return {"per_hour": round(float(slope), 3), "start": round(float(intercept), 2),
            "day": round(float(intercept + 24 * slope), 1),
            "month": round(float(intercept + 720 * slope), 1), "points": len(t_s)}


def growth_between_faults(samples: list[dict[str, Any]], faults: list[dict[str, Any]],
                          key: str = "rss_mib", *, settle_s: float = 120.0,
                          skip_first: int = 3, warm_up_s: float = 0.0) -> dict[str, Any]:
    """The slope per hour of ``key`` shared by every stretch without a fault, each stretch
    with its own level, and the step each fault left behind.

    A plain line through a lifetime counts a one-off step (the buffer a full disk fills,
    whose heap pages stay resident and are reused next time) as growth per hour; this fit
    does not: a stretch ends where a fault starts and the next begins ``settle_s`` after it
    ended, or at a restart. ``samples`` carry ``t`` and ``lifetime`` (0, 1, ...); the first
    ``skip_first`` samples of each lifetime are start-up, and with ``warm_up_s`` its first
    seconds are left out too (a daemon's heaps and caches fill in its first minutes, which
    a two-hour run would otherwise fit as growth that goes on for days)."""
    windows = [(f["at"] - 5.0, f.get("until", f["at"]) + settle_s) for f in faults]
    by_stretch: dict[tuple[int, int], list[tuple[float, float]]] = {}
    seen: dict[int, int] = {}
    born: dict[int, float] = {}
    for s in samples:
        if s.get(key) is None:
            continue
        life = s.get("lifetime", 0)
        seen[life] = seen.get(life, 0) + 1
        born.setdefault(life, s["t"])
        if (seen[life] <= skip_first or s["t"] - born[life] < warm_up_s
                or any(lo <= s["t"] <= hi for lo, hi in windows)):
            continue
        # a stretch: one lifetime, between the same two faults
        after = sum(hi < s["t"] for _, hi in windows)
        by_stretch.setdefault((life, after), []).append((s["t"], float(s[key])))
    stretches = [st for st in by_stretch.values() if len(st) >= 3]
    if not stretches:
        return {"per_hour": None, "stretches": 0}
    num = den = 0.0
    for st in stretches:
        t = np.array([p[0] for p in st]) / 3600.0
        y = np.array([p[1] for p in st])
        num += float(((t - t.mean()) * (y - y.mean())).sum())
        den += float(((t - t.mean()) ** 2).sum())
    steps = {}
    for f, (lo, hi) in zip(faults, windows, strict=True):
        # the minute before the fault's window vs the minute after it settled
        before = [float(s[key]) for s in samples
                  if s.get(key) is not None and lo - 60.0 <= s["t"] < lo]
        after = [float(s[key]) for s in samples
                 if s.get(key) is not None and hi <= s["t"] < hi + 60.0]
        if before and after:
            steps[f["name"]] = round(float(np.median(after) - np.median(before)), 2)
    return {"per_hour": round(num / den, 3) if den > 0 else None, "stretches": len(stretches),
            "hours": round(sum(st[-1][0] - st[0][0] for st in stretches) / 3600.0, 2),
            "step_after_fault": steps}


def judge_flat(fit: dict[str, Any], rss_median: float | None, duration: float) -> bool | None:
    """Memory flat: the fitted slope over the run's length within 5 % of its median RSS. None
    (not judged) when the stretches between faults add up to less than :data:`MIN_FIT_H`:
    a 30-minute run with seven faults leaves ~5 minutes of them, where a slope of +13 MiB/h
    is noise, not a month's growth (a --quick or --churn run leaves none)."""
    if fit["per_hour"] is None or not rss_median or fit.get("hours", 0.0) < MIN_FIT_H:
        return None
    return bool(abs(fit["per_hour"]) * (duration / 3600) < 0.05 * rss_median)


def handles_given_back(samples: list[dict[str, Any]],
                       faults: list[dict[str, Any]]) -> dict[str, Any]:
    """Per kind of handle (:data:`HANDLES`): its range; the step each fault left behind (the
    median of the minute after the fault settled less that of the minute before it); the count
    just before each fault and its trend per fault (a least-squares line through them: faults
    closer together than a settled minute, as ``--churn`` makes them, have no steps); and
    ``kept_by``, the faults, or the trend, that kept more than :data:`HANDLES_SLACK`. A
    descriptor or a task a reconnect leaves behind comes back at every drop of a link, for as
    long as the daemon runs."""
    out: dict[str, Any] = {}
    for key in HANDLES:
        rows = [s for s in samples if s.get(key) is not None]
        if not rows:
            continue
        values = [s[key] for s in rows]
        steps = growth_between_faults(samples, faults, key).get("step_after_fault", {})
        kept = {name: step for name, step in steps.items() if step > HANDLES_SLACK[key]}
        # the last count before each fault, within the lifetime the run ended in (a restart
        # starts from its own count)
        life = rows[-1].get("lifetime", 0)
        before = []
        for f in faults:
            prior = [s[key] for s in rows if s["t"] < f["at"] and s.get("lifetime", 0) == life]
            if prior:
                before.append(prior[-1])
        trend = None
        if len(before) >= 3:
            trend = round(float(np.polyfit(np.arange(len(before)), before, 1)[0]), 3)
            if trend * (len(before) - 1) > HANDLES_SLACK[key]:
                kept["trend"] = round(trend * (len(before) - 1), 2)
        out[key] = {"first": values[0], "last": values[-1], "min": min(values),
                    "max": max(values), "step_after_fault": steps,
                    "before_each_fault": before, "trend_per_fault": trend, "kept_by": kept}
    return out


def warm_up_rise(lifetimes: list[list[dict[str, Any]]], warm_up_s: float) -> list[float | None]:
    """Per lifetime, how far the RSS rose over its warm-up: the median of the minute after
    ``warm_up_s`` less that of its first minute past start-up (the 30 s of imports and
    connects)."""
    out: list[float | None] = []
    for lt in lifetimes:
        rows = [s for s in lt if s.get("rss_mib") is not None]
        if not rows:
            out.append(None)
            continue
        born = rows[0]["t"]
        first = [s["rss_mib"] for s in rows if 30.0 <= s["t"] - born < 90.0]
        later = [s["rss_mib"] for s in rows if warm_up_s <= s["t"] - born < warm_up_s + 60.0]
        out.append(round(statistics.median(later) - statistics.median(first), 2)
                   if first and later else None)
    return out


def _r(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def summary(xs: list[float]) -> dict[str, Any]:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return {"median": None, "p99": None, "max": None, "n": 0}
    return {"median": round(statistics.median(xs), 4),
            "p99": round(xs[int(0.99 * (len(xs) - 1))], 4), "max": round(xs[-1], 4), "n": len(xs)}


# -- the run -------------------------------------------------------------------


class _Daemon:
    def __init__(self, exe: str, env: dict[str, str], log: Path) -> None:
        self.exe, self.env, self.log = exe, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        # EDGETWIN_SOAK_DAEMON_ARGS: options before the command, e.g. "-v" to log at debug
        extra = os.environ.get("EDGETWIN_SOAK_DAEMON_ARGS", "").split()
        self.proc = subprocess.Popen([self.exe, *extra, "daemon", "run"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=self.log.open("ab"))
        self.started = time.time()

    def status(self) -> dict[str, Any] | None:
        try:
            out = subprocess.run([self.exe, "--json", "status"], env=self.env,
                                 capture_output=True, text=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:  # a machine too busy to start the CLI: a gap
            return None
        if out.returncode != 0:
            return None
        try:
            return json.loads(out.stdout)
        except ValueError:
            return None

    def proc_sample(self) -> tuple[float, dict[str, int]] | None:
        """(cpu seconds, children's included; {VmRSS, VmHWM, RssAnon, RssFile: bytes}) of
        the daemon process."""
        assert self.proc is not None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            # utime, stime and those of its ended children (the refit's, OpenDP's): the
            # daemon's work wherever it runs
            cpu = sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
            mem = {}
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    mem[key] = int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            return None
        return (cpu, mem) if "VmRSS" in mem else None

    def wait_ready(self, timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            st = self.status()
            if st and st.get("daemon", {}).get("running") and st.get("store", {}).get("streams"):
                return st
            time.sleep(0.5)
        raise RuntimeError(f"daemon not ready in {timeout} s: {self.log.read_text()[-2000:]}")


def _host_cpu() -> tuple[int, int] | None:
    """(all CPU time, stolen time) of the machine so far, in ticks (/proc/stat)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields[:8]), (fields[7] if len(fields) > 7 else 0)


def _store_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in home.rglob("*") if p.is_file()
               and (".db" in p.name or ".sqlite" in p.name))


class _SmallDisk:
    """The twin's home on a loop-mounted ext4 image, so the disk can be filled for real."""

    def __init__(self, tmpd: Path, size_mib: int) -> None:
        self.image, self.mnt = tmpd / "disk.img", tmpd / "disk"
        self.size_mib, self.mounted, self.why_not = size_mib, False, ""
        self.frozen = False
        self.ballast = self.mnt / "ballast"

    def mount(self) -> bool:
        if os.geteuid() != 0:
            self.why_not = "needs root to loop-mount a filesystem"
            return False
        self.mnt.mkdir()
        with self.image.open("wb") as f:
            f.truncate(self.size_mib * 2**20)
        steps = (["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image)],
                 ["mount", "-o", "loop", str(self.image), str(self.mnt)])
        for cmd in steps:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                self.why_not = f"{cmd[0]} failed: {done.stderr.strip()[:200]}"
                return False
        self.mounted = True
        return True

    def fill(self, leave_bytes: int) -> int:
        """Take all but ``leave_bytes`` of the free space; the ballast's size."""
        st = os.statvfs(self.mnt)
        size = max(0, st.f_bavail * st.f_frsize - leave_bytes)
        fd = os.open(self.ballast, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
        return size

    def free_bytes(self) -> int:
        st = os.statvfs(self.mnt)
        return st.f_bavail * st.f_frsize

    def drain(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def freeze(self) -> None:
        """Block every write to the image (fsfreeze) until :meth:`thaw`."""
        subprocess.run(["fsfreeze", "--freeze", str(self.mnt)], check=True, capture_output=True)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            subprocess.run(["fsfreeze", "--unfreeze", str(self.mnt)], check=False,
                           capture_output=True)
            self.frozen = False

    def unmount(self) -> None:
        if self.mounted:
            self.thaw()  # a frozen filesystem would hang whatever touches it next
            subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True, check=False)
            self.mounted = False


class _Collector:
    """``edgetwin collector`` on a fixed loopback port, stoppable and restartable."""

    def __init__(self, exe: str, db: Path, port: int, pubkey: str, log: Path) -> None:
        self.args = [exe, "collector", "--listen", f"127.0.0.1:{port}", "--db", str(db),
                     "--enroll", pubkey]
        self.exe, self.db, self.port, self.log = exe, db, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120  # a busy machine starts the CLI slowly
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"collector did not listen: {self.log.read_text()[-1000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def releases(self) -> dict[str, Any]:
        out = subprocess.run([self.exe, "--json", "collector", "--db", str(self.db),
                              "--aggregate"], capture_output=True, text=True, check=False)
        try:
            rows = json.loads(out.stdout)["aggregates"]
        except (ValueError, KeyError):
            return {"error": out.stderr.strip()[-300:]}
        return {"releases": sum(int(r["releases"]) for r in rows),
                "metrics": sorted({r["metric"] for r in rows})}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _step_clock(seconds: float) -> None:
    """Step CLOCK_REALTIME of the whole machine (root): what NTP or a user does to a host."""
    time.clock_settime(time.CLOCK_REALTIME, time.clock_gettime(time.CLOCK_REALTIME) + seconds)


def _seed_past_days(home: Path, days: int) -> None:
    from edgetwin.store.keys import Secret
    from edgetwin.store.twin import TwinStore
    from tests.sync.helpers import write_days

    first = (int(time.time()) // 86_400 - days) * 86_400.0
    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        write_days(store, first, days)


def _seed_history(home: Path, hours: float) -> None:
    from edgetwin.store.keys import Secret
    from edgetwin.store.twin import TwinStore
    from tests.inference.twins import store_as_daemon

    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        store_as_daemon(store, hours, t0=time.time() - hours * 3600.0 - 60.0)


def _write_optics_file(path: Path, seconds: float) -> None:
    from edgetwin.sources.brainflow import _load_native
    from tests.sources.bf_helpers import ATHENA, board_shaped

    data = board_shaped(ATHENA, 2, seconds, seed=2)
    _load_native().DataFilter.write_file(data, str(path), "w")


def _soak(duration: float, sample_s: float, clock_step: bool = False,
          faults_on: bool = True, churn: bool = False) -> dict[str, Any]:
    from edgetwin.emulators.bridge import BridgeEmulator
    from tests.sources.bluez_emulator import EmulatorProcess, PrivateBus, control

    exe = str(Path(sys.executable).with_name("edgetwin"))
    faults: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    kill_check: dict[str, Any] = {}
    not_injected: dict[str, str] = {}
    sync_check: dict[str, Any] = {}
    outage = min(600.0, 0.2 * duration)
    with tempfile.TemporaryDirectory(prefix="edgetwin-soak-") as tmp, PrivateBus() as bus:
        tmpd = Path(tmp)
        # ~1.5x what the run could write at float64 rates, at least 512 MiB
        disk = _SmallDisk(tmpd, max(512, int(600 * duration / 3600 * 1.5) + 256))
        home = (disk.mnt if disk.mount() else tmpd) / "home"
        try:
            if not disk.mounted:
                not_injected["disk_nearly_full"] = disk.why_not
            pw = tmpd / "pw"
            pw.write_text(PASS + "\n")
            pw.chmod(0o600)
            env = {**os.environ, "EDGETWIN_HOME": str(home), "EDGETWIN_PASSPHRASE_FILE": str(pw),
                   "EDGETWIN_KDF_PROFILE": "test", "DBUS_SYSTEM_BUS_ADDRESS": bus.address}

            def cli(*args: str) -> str:
                done = subprocess.run([exe, *args], env=env, capture_output=True, text=True,
                                      check=False, timeout=120)
                if done.returncode not in (0, 5):  # 5: a budget refusal, reported by sync
                    raise RuntimeError(f"edgetwin {' '.join(args)}: exit {done.returncode}: "
                                       f"{done.stderr.strip()[-800:]}")
                return done.stdout

            bridge = BridgeEmulator(7, "fnirs", 100.0, channels=32)
            port = bridge.start()
            ble = EmulatorProcess(bus.address, [f"heart_rate:{a}:Strap {i}"
                                                for i, a in enumerate(STRAPS)], rate_hz=1.0).start()
            daemon = _Daemon(exe, env, tmpd / "daemon.log")
            collector: _Collector | None = None
            clock_offset = 0.0
            try:
                cli("init")
                cfg = home / "config.toml"
                text = cfg.read_text().replace("[sync]\n", "[sync]\n" + SOAK_SYNC, 1)
                # the soak's disk is small on purpose (512 MiB for --quick): the room floor
                # (default 1 GiB) would take the seeded past days at once; this low it acts
                # only in the disk-full minute, as it would on a card that filled up
                text = text.replace("[retention]\n", "[retention]\nmin_free_mib = 16\n", 1)
                # a port of its own: another twin or soak on the machine may hold 8765
                text = text.replace("[dashboard]\n", f"[dashboard]\nport = {_free_port()}\n",
                                    1)
                # EDGETWIN_SOAK_FLUSH_S: another commit interval, to weigh what a SIGKILL
                # loses against what commits cost
                if flush := os.environ.get("EDGETWIN_SOAK_FLUSH_S"):
                    text = text.replace("[daemon]\n",
                                        f"[daemon]\nflush_interval_s = {float(flush)}\n", 1)
                cfg.write_text(text)
                optics = tmpd / "optics_anc.csv"
                _write_optics_file(optics, duration + 900.0)
                cli("pair", "add", "simulator", "--seed", str(SIMULATOR_SEED), "--modalities",
                    "rr,vitals")
                cli("pair", "add", "brainflow", "--board", "SYNTHETIC_BOARD", "--name", "headset")
                cli("pair", "add", "brainflow", "--board", "PLAYBACK_FILE_BOARD", "--master-board",
                    "MUSE_S_ATHENA_BOARD", "--file-anc", str(optics), "--name", "optics")
                cli("pair", "add", "serial", port, "--name", "bridge", "--no-probe")
                for i, a in enumerate(STRAPS):
                    cli("pair", "add", "ble", a, "--profile", "heart_rate", "--name", f"strap{i}")
                _seed_past_days(home, 3)
                # EDGETWIN_SOAK_HISTORY_H: hours of what the daemon stores, ending now, so the
                # refit (at start and every 30 min, over the last day) works on a twin that
                # has run that long, not on the soak's own minutes
                history_h = float(os.environ.get("EDGETWIN_SOAK_HISTORY_H", "0") or 0)
                if history_h > 0:
                    _seed_history(home, history_h)
                collector = _Collector(exe, tmpd / "collector.db", _free_port(),
                                       cli("sync", "device-key").strip(), tmpd / "collector.log")
                collector.start()
                cli("sync", "configure", "--url", f"http://127.0.0.1:{collector.port}/v1/releases",
                    "--allow-insecure-loopback")
                cli("consent", "grant", "hr_mean")
                daemon.start()
                daemon.wait_ready()
                t_start = time.time()
                schedule = [(0.10, "collector_down"), (0.25, "ble_link_drop"),
                            (0.40, "serial_unplug"), (0.50, "disk_nearly_full"),
                            (0.62, "disk_stall"), (0.70, "sigkill_restart")]
                if clock_step:
                    schedule.append((0.80, "host_clock_step"))
                else:
                    not_injected["host_clock_step"] = (
                        "off by default: it steps the whole machine's clock (run with --clock-step "
                        "as root)")
                if not disk.mounted:
                    schedule = [x for x in schedule
                                if x[1] not in ("disk_nearly_full", "disk_stall")]
                    not_injected["disk_stall"] = disk.why_not
                if churn:  # --churn: link faults only, again and again (leaks per reconnect)
                    not_injected.update((name, "--churn") for _, name in schedule
                                        if name not in ("ble_link_drop", "serial_unplug"))
                    schedule = churn_schedule(duration)
                if not faults_on:  # --no-faults: the steady load alone (footprint comparisons)
                    not_injected.update((name, "--no-faults") for _, name in schedule)
                    schedule = []
                open_faults: dict[str, tuple[float, dict[str, Any]]] = {}  # name -> (end, fault)
                lifetimes: list[list[dict[str, Any]]] = [[]]  # samples per daemon lifetime
                prev: tuple[float, float] | None = None
                host_prev = _host_cpu()
                next_sample = time.time()
                while time.time() - t_start - clock_offset < duration or open_faults:
                    now = time.time()
                    elapsed = now - t_start - clock_offset
                    for name, (end, fault) in list(open_faults.items()):
                        if elapsed < end:
                            continue
                        del open_faults[name]
                        if name == "collector_down":
                            assert collector is not None
                            collector.start()
                            fault["pending_when_back"] = _sync_counts(cli)
                        elif name == "disk_nearly_full":
                            disk.drain()
                        elif name == "disk_stall":
                            disk.thaw()  # the timer has done it already, unless it failed
                        elif name == "host_clock_step":
                            _step_clock(-30.0)
                            clock_offset = 0.0
                        fault["until"] = time.time()
                    if schedule and elapsed >= schedule[0][0] * duration:
                        _, name = schedule.pop(0)
                        fault = {"name": name, "at": time.time()}
                        faults.append(fault)
                        if name == "collector_down":
                            assert collector is not None
                            collector.stop()
                            fault["streams"] = ["-"]  # no stream should lose anything
                            cli("consent", "grant", "rmssd_mean")  # releases fall due while down
                            open_faults[name] = (elapsed + outage, fault)
                        elif name == "ble_link_drop":
                            k = sum(f["name"] == name for f in faults) - 1  # each in turn
                            asyncio.run(control(bus.address, "DropLink", STRAPS[k % len(STRAPS)]))
                            fault["streams"] = [f"strap{k % len(STRAPS)}"]
                        elif name == "serial_unplug":
                            bridge.unplug()
                            time.sleep(10.0)
                            bridge.replug()
                            fault.update(until=time.time(), streams=["bridge"])
                        elif name == "disk_nearly_full":
                            fault["ballast_mib"] = round(disk.fill(128 * 1024) / 2**20, 1)
                            fault["free_kib"] = disk.free_bytes() // 1024
                            fault["streams"] = []
                            # a tenth of a short run, as the docstring says: a --quick run's
                            # SIGKILL then comes after it, not while commits fail
                            open_faults[name] = (elapsed + min(60.0, duration / 10), fault)
                        elif name == "disk_stall":
                            stall = min(60.0, duration / 20)
                            fault.update(stall_s=stall, streams=["-"])  # nothing may be lost
                            disk.freeze()
                            # thawed by a timer: a status call of this loop could block on the
                            # frozen disk and must not keep it frozen
                            threading.Timer(stall, disk.thaw).start()
                            open_faults[name] = (elapsed + stall, fault)
                        elif name == "host_clock_step":
                            _step_clock(30.0)
                            clock_offset = 30.0
                            fault["streams"] = []
                            open_faults[name] = (elapsed + 60.0, fault)
                        else:
                            before = daemon.status() or {}
                            assert daemon.proc is not None
                            # the kill's own time: the status call above (a CLI process, ~0.5 s
                            # and more under load) came after "at" and before the kill, and
                            # counted as downtime what was data not yet committed
                            fault["killed_at"] = time.time()
                            daemon.proc.send_signal(signal.SIGKILL)
                            daemon.proc.wait(10)
                            time.sleep(unit_restart_s())  # what systemd waits before restarting
                            daemon.start()
                            daemon.wait_ready()
                            fault.update(until=time.time(), streams=[])
                            kill_check = {s["name"]: s for s in before.get("store", {})
                                          .get("streams", [])}
                            lifetimes.append([])
                            prev = None
                        continue
                    if now >= next_sample:
                        next_sample = now + sample_s
                        ps = daemon.proc_sample()
                        # the CPU seconds' own time: the status call below (a CLI process) takes
                        # ~0.5 s, and up to its 30 s timeout on a loaded machine; timed after
                        # it, a short call after a long one made shares of 90-160 % of a core
                        # out of a daemon that /proc showed at 3-7 %
                        sampled_at = time.monotonic()
                        st = daemon.status() or {}
                        row: dict[str, Any] = {"t": elapsed, "db_bytes": _store_bytes(home),
                                               "lifetime": len(lifetimes) - 1}
                        if ps is not None:
                            cpu, mem = ps
                            row["rss_mib"] = mem["VmRSS"] / 2**20
                            # the kernel's high-water mark of this lifetime: what the 10 s
                            # samples miss (a refit's or a catch-up's peak of a second or two)
                            if "VmHWM" in mem:
                                row["rss_hwm_mib"] = mem["VmHWM"] / 2**20
                            # heap vs mapped files: which of them grows, if RSS does
                            if "RssAnon" in mem:
                                row["rss_anon_mib"] = mem["RssAnon"] / 2**20
                                row["rss_file_mib"] = mem.get("RssFile", 0) / 2**20
                            if prev is not None and sampled_at > prev[0]:
                                row["cpu_share"] = (cpu - prev[1]) / (sampled_at - prev[0])
                            prev = (sampled_at, cpu)
                        d = st.get("daemon", {})
                        # the daemon's clock for its per-thread CPU seconds (same document)
                        row["uptime_s"] = d.get("uptime_s")
                        row["loop_lag_p99_ms"] = (d.get("loop_lag_ms") or {}).get("p99")
                        mem_parts = d.get("memory") or {}
                        row["py_blocks"] = mem_parts.get("py_blocks")
                        # C code's heap in use vs kept free (a leak vs fragmentation), and
                        # SQLite's caches: which of them an anonymous-RSS growth is
                        for key in ("heap_used_bytes", "heap_free_bytes", "sqlite_bytes"):
                            if mem_parts.get(key) is not None:
                                row[key.replace("_bytes", "_mib")] = mem_parts[key] / 2**20
                        row["threads_cpu_s"] = d.get("threads_cpu_s")
                        # descriptors, threads, the loop's tasks: does each fault give back
                        # what its reconnects took
                        for key in HANDLES:
                            row[key] = (d.get("handles") or {}).get(key)
                        row["loop_lag_max_ms"] = (d.get("loop_lag_ms") or {}).get("max")
                        row["drops"] = sum(s.get("drops", 0) for s in st.get("sources", []))
                        # what the hypervisor took from this VM meanwhile (CPU figures of a
                        # shared VM mean less while it is high)
                        host_now = _host_cpu()
                        if host_prev is not None and host_now is not None:
                            spent = host_now[0] - host_prev[0]
                            if spent > 0:
                                row["host_steal_share"] = (host_now[1] - host_prev[1]) / spent
                        host_prev = host_now
                        row["sources"] = {s["name"]: s.get("state") for s in st.get("sources", [])}
                        failing = d.get("commit_failing") or {}
                        row["store_error"] = failing.get("error")
                        # what waits for the disk meanwhile (packed), against the cap
                        row["waiting_for_disk_mib"] = failing.get("held_mib")
                        row["failed_commit_try_s"] = failing.get("last_try_s")
                        row["uncommitted_rows"] = d.get("uncommitted_rows")
                        # a writer held up (a slow fsync) and what waits for it meanwhile
                        writer = d.get("writer") or {}
                        row["writer_running_for_s"] = writer.get("running_for_s")
                        row["writer_longest"] = [writer.get("longest"), writer.get("longest_s")]
                        row["hub_queued_mib"] = max(
                            (q.get("queued_bytes", 0) / 2**20
                             for q in (st.get("hub") or {}).get("consumers", {}).values()),
                            default=None)
                        samples.append(row)
                        lifetimes[-1].append(row)
                    time.sleep(0.2)
                # let the outbox drain after the last fault (a retry waits at most 30 s)
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline and _sync_counts(cli).get("pending"):
                    time.sleep(5)
                sync_check = {"twin": _sync_counts(cli)}
                final = daemon.status() or {}
                assert daemon.proc is not None
                daemon.proc.send_signal(signal.SIGTERM)
                daemon.proc.wait(60)
                wall = time.time() - t_start
                assert collector is not None
                sync_check["collector"] = collector.releases()
            finally:
                if clock_offset:
                    _step_clock(-clock_offset)
                if daemon.proc is not None and daemon.proc.poll() is None:
                    daemon.proc.kill()
                    daemon.proc.wait(10)
                if collector is not None:
                    collector.stop()
                ble.stop()
                bridge.stop()
            streams = _analyse(home, faults, kill_check, t_start)
            log = (tmpd / "daemon.log").read_text()
            log_tail = log[-1500:]
            children = refit_children(log)
            if keep := os.environ.get("EDGETWIN_SOAK_KEEP_LOG"):  # the whole log, for a look
                shutil.copyfile(tmpd / "daemon.log", keep)
        finally:
            disk.unmount()
    report = _report(duration, wall, samples, lifetimes, faults, streams, final, log_tail,
                     t_start, not_injected)
    report["seeded_history_h"] = float(os.environ.get("EDGETWIN_SOAK_HISTORY_H", "0") or 0)
    # the refits run in child processes: their peak RSS is not the daemon's, but the unit's
    report["refit_children"] = children
    twin, coll = sync_check.get("twin", {}), sync_check.get("collector", {})
    report["sync"] = {**sync_check, "every_release_delivered_once": bool(
        twin.get("sent") and twin.get("pending") == 0 and twin.get("failed") == 0
        and coll.get("releases") == twin.get("sent"))}
    report["aims"]["sync_delivered_once"] = report["sync"]["every_release_delivered_once"]
    return report


def _sync_counts(cli: Any) -> dict[str, Any]:
    try:
        st = json.loads(cli("sync", "status", "--json"))
    except (RuntimeError, ValueError) as exc:
        return {"error": str(exc)[-300:]}
    return {k: st.get(k) for k in ("pending", "sent", "failed")}


def _analyse(home: Path, faults: list[dict[str, Any]], kill_check: dict[str, Any],
             t_start: float) -> dict[str, Any]:
    from edgetwin.store.keys import Secret
    from edgetwin.store.twin import TwinStore

    out: dict[str, Any] = {}
    kill = next((f for f in faults if f["name"] == "sigkill_restart"), None)
    with TwinStore.open(home, Secret.passphrase(PASS)) as store:
        for info in store.streams():
            if info.name == SEEDED_STREAM:
                continue
            ts = [b.t for b in store.read_samples(info.name)]
            t = np.sort(np.concatenate(ts)) if ts else np.zeros(0)
            nominal, gaps = find_gaps(t)
            explaining = faults + (simulated_dropouts(info.name, float(t[0]), float(t[-1]))
                                   if t.size else [])
            lost, unexplained = attribute(gaps, explaining, info.name)
            entry: dict[str, Any] = {
                "rows": int(t.size), "nominal_interval_s": round(nominal, 5),
                "span_s": round(float(t[-1] - t[0]), 1) if t.size else 0.0,
                # every missing sample, also in gaps too short to count above (a BLE drop)
                "missing_s_total": round(float(t[-1] - t[0]) - (t.size - 1) * nominal, 2)
                if t.size > 2 else None,
                "lost_s_by_fault": {k: round(v, 2) for k, v in lost.items()},
                "unexplained_gaps": [{"start_s": round(g[0] - t_start, 1), "lost_s": round(g[2], 2)}
                                     for g in unexplained],
                "duplicate_or_backward_steps": int(np.sum(np.diff(np.concatenate(ts)) <= 0))
                if ts else 0,
            }
            if kill is not None:
                # the step across the kill: data received before it but never committed, and
                # the downtime until the restarted daemon stored again
                across = kill_gap(t, nominal, kill.get("killed_at", kill["at"]))
                if across is not None:
                    entry["sigkill"] = across
                before = kill_check.get(info.name)
                if before and before.get("last_t") is not None:
                    kept = int(np.sum(t <= before["last_t"]))
                    entry["committed_before_kill"] = before["samples"]
                    entry["stored_up_to_that_time"] = kept
            out[info.name] = entry
    return out


def _report(duration: float, wall: float, samples: list[dict[str, Any]],
            lifetimes: list[list[dict[str, Any]]], faults: list[dict[str, Any]],
            streams: dict[str, Any], final: dict[str, Any], log_tail: str, t_start: float,
            not_injected: dict[str, str]) -> dict[str, Any]:
    steady = [s for s in samples if s["t"] > 30.0]
    cpu = summary([s.get("cpu_share") for s in steady])
    shares = [s["cpu_share"] for s in steady if s.get("cpu_share") is not None]
    cpu_mean = round(sum(shares) / len(shares), 4) if shares else None  # samples are even
    cpu["mean"] = cpu_mean
    rss = summary([s.get("rss_mib") for s in steady])
    lag = summary([s.get("loop_lag_p99_ms") for s in steady])
    lag_max = summary([s.get("loop_lag_max_ms") for s in steady])
    steal = summary([s.get("host_steal_share") for s in steady])
    longest = max(lifetimes, key=len)
    fit_rows = [s for s in longest if "rss_mib" in s][3:]  # past start-up
    # fault times as the samples' times: seconds from the start of the soak
    rel_faults = [{k: (v - t_start if k in ("at", "until") else v) for k, v in f.items()}
                  for f in faults]
    rss_fit = growth_per_hour([s["t"] for s in fit_rows], [s["rss_mib"] for s in fit_rows])
    parts_fit = {}  # which part of the RSS grows: heaps, mapped files, Python's objects
    for part in MEMORY_PARTS:
        rows = [s for s in fit_rows if s.get(part) is not None]
        parts_fit[part] = growth_per_hour([s["t"] for s in rows], [s[part] for s in rows])
    db_fit = growth_per_hour([s["t"] for s in samples],
                             [s["db_bytes"] / 2**20 for s in samples])
    drops = [s.get("drops", 0) for s in samples]
    # per stream the larger of the step across the kill and the gaps the fault explains
    # (a source that connected and then dropped again after the restart)
    kill_losses = [max(v.get("sigkill", {}).get("lost_s", 0.0),
                       v["lost_s_by_fault"].get("sigkill_restart", 0.0))
                   for v in streams.values()]
    kill_uncommitted = [v["sigkill"]["before_kill_s"] for v in streams.values() if "sigkill" in v]
    lost_committed = {k: v["committed_before_kill"] - v["stored_up_to_that_time"]
                      for k, v in streams.items() if "committed_before_kill" in v}
    unexplained = {k: v["unexplained_gaps"] for k, v in streams.items() if v["unexplained_gaps"]}
    # flat: the growth the stretches between faults share, over the whole run, stays within
    # 5 % of the median RSS (what each fault left behind is reported beside it)
    between = growth_between_faults(samples, rel_faults)
    warm_up = min(WARM_UP_S, duration / 6)  # a short run keeps five sixths to fit
    settled = growth_between_faults(samples, rel_faults, warm_up_s=warm_up)
    settled_by_part = {part: growth_between_faults(samples, rel_faults, part,
                                                   warm_up_s=warm_up)["per_hour"]
                       for part in MEMORY_PARTS}

    # the SIGKILL's aims: None (not judged) in a run without one (--churn, --no-faults)
    killed = any(f["name"] == "sigkill_restart" for f in faults)

    handles = handles_given_back(samples, rel_faults)
    # what a day and a month would cost: the settled slope from the level the run ended at
    ends = [s["rss_mib"] for s in samples[-30:] if "rss_mib" in s]
    end_level = round(statistics.median(ends), 1) if ends else None
    projection = None
    if settled["per_hour"] is not None and end_level is not None:
        projection = {"from_mib": end_level,
                      "day_mib": round(end_level + 24 * settled["per_hour"], 1),
                      "month_mib": round(end_level + 720 * settled["per_hour"], 1)}
    return {
        "duration_s": duration, "times": "seconds from the start of the soak",
        "wall_s": round(wall, 1), "samples_taken": len(samples),
        "cpu_share_of_one_core": cpu, "rss_mib": rss, "loop_lag_p99_ms": lag,
        "loop_lag_max_ms": lag_max,
        "host_steal_share_of_all_cpus": steal,
        "hub_drops_total_sum_of_sources": {"last": drops[-1] if drops else None,
                                           "max": max(drops) if drops else None},
        "rss_growth_mib": rss_fit, "rss_growth_by_part": parts_fit, "db_growth_mib": db_fit,
        "rss_growth_between_faults_mib": between,
        # the same fit without each lifetime's warm-up: the daemon's steady state
        "rss_growth_settled_mib": {**settled, "warm_up_s": warm_up,
                                   "by_part": settled_by_part,
                                   "warm_up_rise_mib": warm_up_rise(lifetimes, warm_up),
                                   "projection": projection},
        # per daemon lifetime, the most it was ever resident (VmHWM at its last sample)
        "rss_high_water_mib": [_r(max((s.get("rss_hwm_mib") or 0 for s in lt), default=None), 1)
                               for lt in lifetimes if lt],
        "growth_between_faults_by_part": {
            part: growth_between_faults(samples, rel_faults, part)["per_hour"]
            for part in MEMORY_PARTS},
        "handles": handles,
        "cpu_share_by_thread": thread_shares(longest),
        "cpu_spikes": cpu_spikes(lifetimes),
        "faults": [{k: (round(v, 1) if k in ("at", "until") else v) for k, v in f.items()}
                   for f in rel_faults],
        "streams": streams,
        "series": {"columns": ["t_s", "cpu_share", "rss_mib", "loop_lag_p99_ms",
                               "loop_lag_max_ms", "drops", "db_mib", "rss_anon_mib",
                               "rss_file_mib", "py_blocks", "heap_used_mib", "heap_free_mib",
                               "sqlite_mib", "writer_running_for_s", "hub_queued_mib",
                               *HANDLES],
                   "rows": [[round(s["t"], 1), _r(s.get("cpu_share"), 4), _r(s.get("rss_mib"), 1),
                             s.get("loop_lag_p99_ms"), s.get("loop_lag_max_ms"), s.get("drops"),
                             round(s["db_bytes"] / 2**20, 2), _r(s.get("rss_anon_mib"), 1),
                             _r(s.get("rss_file_mib"), 1), s.get("py_blocks"),
                             _r(s.get("heap_used_mib"), 2), _r(s.get("heap_free_mib"), 2),
                             _r(s.get("sqlite_mib"), 2), s.get("writer_running_for_s"),
                             _r(s.get("hub_queued_mib"), 2), *(s.get(k) for k in HANDLES)]
                            for s in samples]},
        "not_injected": not_injected,
        "store_errors_seen": sorted({str(s["store_error"])[:160] for s in samples
                                     if s.get("store_error")}),
        "uncommitted_rows_max": max((s.get("uncommitted_rows") or 0 for s in samples),
                                    default=None),
        # the writer's longest job per daemon lifetime, and the most the hub's queues held
        "writer_longest_job": [lt[-1]["writer_longest"] for lt in lifetimes
                               if lt and lt[-1].get("writer_longest")],
        "hub_queued_mib_max": _r(max((s.get("hub_queued_mib") or 0 for s in samples),
                                     default=None), 2),
        "waiting_for_disk_mib_max": _r(max((s.get("waiting_for_disk_mib") or 0
                                            for s in samples), default=None), 2),
        # how long the longest failed try to commit took (it re-encodes all that waits)
        "failed_commit_try_s_max": _r(max((s.get("failed_commit_try_s") or 0
                                           for s in samples), default=None), 3),
        "aims": {
            # the "at most 8 % of one core": the run's share, and, stricter, the
            # p99 of its 10 s samples (which the periodic jobs' bursts make: cpu_spikes)
            "cpu_share_mean_le_8pct": (cpu_mean is not None
                                       and cpu_mean <= AIMS["cpu_share_max"]),
            "cpu_share_p99_le_8pct": (cpu["p99"] is not None
                                      and cpu["p99"] <= AIMS["cpu_share_max"]),
            "rss_le_150mib": rss["max"] is not None and rss["max"] <= AIMS["rss_mib_max"],
            # stricter: the kernel's high-water mark, peaks between samples included
            "rss_high_water_le_150mib": all(
                (s.get("rss_hwm_mib") or 0) <= AIMS["rss_mib_max"] for s in samples),
            "loop_lag_p99_le_20ms": lag["p99"] is not None and
            lag["p99"] <= AIMS["loop_lag_p99_ms_max"],
            "nothing_committed_lost": (all(v == 0 for v in lost_committed.values())
                                       and bool(lost_committed)) if killed else None,
            "sigkill_loss_le_2s_incl_restart": (bool(kill_losses) and max(kill_losses) <= 2.0)
            if killed else None,
            "sigkill_uncommitted_le_2s": (bool(kill_uncommitted) and max(kill_uncommitted) <= 2.0)
            if killed else None,
            "no_unexplained_gaps": not unexplained,
            # the run's growth after each lifetime's warm-up within 5 % of its median RSS
            "memory_flat": judge_flat(settled, rss["median"], duration),
            "memory_flat_warm_up_included": judge_flat(between, rss["median"], duration),
            # every fault gave back the descriptors, threads and tasks its recovery took
            "handles_given_back": bool(handles) and not any(h["kept_by"]
                                                            for h in handles.values()),
        },
        "committed_lost_at_kill_rows": lost_committed,
        "sigkill_lost_s_max_over_streams": {
            "total": round(max(kill_losses), 2) if kill_losses else None,
            "received_before_kill_not_stored": round(max(kill_uncommitted), 2)
            if kill_uncommitted else None},
        "final_status_hub": final.get("hub"),
        "final_sources": [{k: s.get(k) for k in ("name", "state", "samples", "drops", "gaps",
                                                  "connects", "failures", "last_error")}
                          for s in final.get("sources", [])],
        "daemon_log_tail": log_tail,
    }


def unwind_on_signals() -> None:
    """SIGTERM and SIGINT unwind through the soak's finally blocks, which stop the daemon, the
    collector, the emulators and the D-Bus daemon and unmount the small disk; left to their
    default action they outlived the soak. SIGINT is set explicitly: a shell starts background
    jobs with it ignored, and Python then keeps it ignored (a Ctrl-C or ``kill -INT`` of a soak
    started with ``&`` did nothing)."""

    def _terminated(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGINT, _terminated)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--clock-step", action="store_true",
                        help="step the machine's clock 30 s forward and back (root)")
    parser.add_argument("--churn", action="store_true",
                        help=f"only link faults, a BLE drop or a serial unplug every "
                             f"{CHURN_EVERY_S:.0f} s (leaks per reconnect)")
    parser.add_argument("--no-faults", action="store_true",
                        help="inject no faults: the steady reference load (CPU/RSS comparisons)")
    args = parser.parse_args()

    unwind_on_signals()
    print(json.dumps(run(args.quick, args.minutes, args.clock_step, faults=not args.no_faults,
                         churn=args.churn),
                     indent=2, default=float))
