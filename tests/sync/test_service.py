"""Release and upload against the real TwinStore, collector and broker."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgetwin.config import Config, PrivacyConfig, SyncConfig
from edgetwin.errors import BudgetExhausted
from edgetwin.privacy import accountant
from edgetwin.privacy.consent import grant, list_consents
from edgetwin.privacy.metrics import METRICS, summarize
from edgetwin.privacy.release import FIELDS
from edgetwin.privacy.summaries import usable_values, usable_values_of_columns
from edgetwin.sync import outbox
from edgetwin.sync.collector import Collector, CollectorMqtt, CollectorRefusal
from edgetwin.sync.service import drain_outbox, release_due, release_one, revoke_consent
from edgetwin.sync.signing import load_or_create
from edgetwin.sync.target import parse_target, save_target
from tests.sync.helpers import (
    DAY,
    T0,
    Broker,
    free_port,
    make_twin,
    open_twin,
    start_collector,
    write_days,
)

NOW = T0 + 3 * DAY + 3600  # three complete days of data behind us
CFG = Config(sync=SyncConfig(timeout_s=3, backoff_initial_s=30, backoff_max_s=600))


@pytest.fixture
def twin(tmp_path: Path) -> Iterator[Any]:
    store = make_twin(tmp_path / "home")
    yield store
    store.close()


def _grant(store: Any, *metrics: str) -> None:
    for m in metrics:
        grant(store, m, "day", T0)


def test_nothing_leaves_by_default(twin: Any) -> None:
    write_days(twin, T0, 3)
    assert not any(c.granted for c in list_consents(twin))
    report = release_due(twin, CFG, NOW)
    assert report.released == [] and outbox.entries(twin) == []


def test_raw_values_never_cross(tmp_path: Path, twin: Any, broker: Broker) -> None:
    written = write_days(twin, T0, 3)
    _grant(twin, "hr_mean", "hr_resting", "rmssd_mean", "active_minutes")
    key = load_or_create(twin)
    # Everything the collector receives over HTTP, and everything the broker delivers.
    running = start_collector(tmp_path / "c.db")
    running.collector.enroll(key.public_b64)
    from tests.sync.test_mqtt import Sniffer

    sniffer = Sniffer(broker)
    try:
        report = release_due(twin, CFG, NOW)
        assert len(report.released) == 12 and not report.refused  # 4 metrics x 3 days
        half = outbox.entries(twin)[:6]
        save_target(twin, parse_target(url=f"http://127.0.0.1:{running.port}/",
                                       allow_insecure_loopback=True))
        cfg6 = Config(sync=SyncConfig(timeout_s=3, max_per_run=6))
        assert drain_outbox(twin, cfg6, NOW).sent == 6
        assert {e.id for e in outbox.entries(twin) if e.state == "sent"} == {e.id for e in half}
        save_target(twin, parse_target(mqtt=broker.url, topic="t/releases",
                                       allow_insecure_loopback=True))
        assert drain_outbox(twin, CFG, NOW).sent == 6
        deadline = time.monotonic() + 10
        while len(sniffer.messages) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sniffer.stop()
        running.stop()
        running.collector.close()
    captured = [b for b, _ in running.received] + [p for _, p in sniffer.messages]
    assert len(captured) == 12
    # The exact clipped summaries the device computed: they must not cross either.
    summaries = []
    for day in range(3):
        s = T0 + day * DAY
        vals = usable_values(twin.read_frames(s, s + DAY), s, s + DAY)
        for name in ("hr_mean", "hr_resting", "rmssd_mean", "active_minutes"):
            m = METRICS[name]
            summaries.append(summarize(m, vals[m.feature], m.default_bounds, step_s=5.0,
                                       active_motion_g=0.1))
    secret = set(written["samples"]) | set(written["frames"]) | set(summaries)
    blob = b"\n".join(captured)
    for v in secret:
        # As a whole number token: a short value such as 34.5 may appear inside a noisy
        # 1234.56 or a base64 signature by chance, which is not a leak.
        token = re.escape(repr(v).encode())
        assert re.search(rb"(?<![0-9.eE+-])" + token + rb"(?![0-9])", blob) is None, v
    numbers: list[float] = []
    for body in captured:
        env = json.loads(body)
        payload = json.loads(env["payload"])
        assert set(payload) == set(FIELDS)  # nothing but the release's declared fields
        numbers.extend(float(x) for x in payload.values()
                       if isinstance(x, int | float) and not isinstance(x, bool))
        numbers.append(float(env["sent_at_ms"]))
    assert not secret.intersection(numbers)


def test_budget_exhaustion_per_period_and_lifetime(twin: Any) -> None:
    write_days(twin, T0, 3)
    five = ("hr_mean", "hr_resting", "rmssd_mean", "spo2_mean", "active_minutes")
    _grant(twin, *five)
    report = release_due(twin, CFG, NOW)
    # 2.0 per day at 0.5 per release: four of five metrics fit each day.
    assert len(report.released) == 12 and len(report.refused) == 3
    assert all("exhausted" in r.reason and r.metric == "active_minutes" for r in report.refused)
    for day in range(3):
        st = accountant.status(twin, CFG.privacy, T0 + day * DAY + 1)
        assert st.epsilon_spent == pytest.approx(2.0) and st.epsilon_remaining == 0.0
    assert accountant.status(twin, CFG.privacy, NOW).lifetime_spent == pytest.approx(6.0)
    assert len(outbox.entries(twin)) == 12  # nothing refused was queued
    # A refused window is not retried on every run; a new run finds nothing due.
    again = release_due(twin, CFG, NOW)
    assert again.released == [] and again.refused == []
    # The lifetime cap: a twin allowed 6.5 in total gets one more release, then refusals.
    tight = Config(privacy=PrivacyConfig(epsilon_lifetime=6.5))
    write_days(twin, T0 + 3 * DAY, 1, seed=9)
    later = release_due(twin, tight, NOW + DAY)
    assert len(later.released) == 1
    assert len(later.refused) == 4 and "lifetime" in later.refused[0].reason
    with pytest.raises(BudgetExhausted, match="lifetime privacy budget exhausted"):
        release_one(twin, tight, "hr_mean", "day", T0 - DAY, 70.0, NOW)


def test_a_release_reads_its_days_on_the_reader_it_is_given(
    twin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the daemon's sync job: a day of frames per window is decrypted on a connection of its
    # own, never through the store (and its lock) that the commits need
    write_days(twin, T0, 3)
    _grant(twin, "hr_mean")

    def not_here(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a window's frames were read through the writing store")

    with twin.reader() as reader:
        read = []
        reader_columns = reader.iter_frame_columns

        def spy(t0: float, t1: float) -> Any:
            read.append((t0, t1))
            return reader_columns(t0, t1)

        monkeypatch.setattr(reader, "iter_frame_columns", spy)
        monkeypatch.setattr(twin, "iter_frame_columns", not_here)
        report = release_due(twin, CFG, NOW, reader=reader)
    assert len(report.released) == 3
    # every window back to the backfill's first, the three days of data among them
    assert set(read) >= {(T0 + d * DAY, T0 + (d + 1) * DAY) for d in range(3)}
    assert len(outbox.entries(twin)) == 3  # written through the store


def test_budget_survives_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = make_twin(home)
    _grant(store, "hr_mean", "hr_resting", "rmssd_mean")
    assert release_one(store, CFG, "hr_mean", "day", T0, 70.0, NOW) is not None
    assert release_one(store, CFG, "hr_resting", "day", T0, 60.0, NOW) is not None
    assert release_one(store, CFG, "rmssd_mean", "day", T0, 40.0, NOW) is not None
    store.close()
    store = open_twin(home)
    try:
        st = accountant.status(store, CFG.privacy, T0 + 10)
        assert st.epsilon_spent == pytest.approx(1.5)
        assert st.lifetime_spent == pytest.approx(1.5)
        # The same window is never released twice, even after a restart.
        assert release_one(store, CFG, "hr_mean", "day", T0, 70.0, NOW) is None
        grant(store, "spo2_mean", "day", T0)
        grant(store, "active_minutes", "day", T0)
        assert release_one(store, CFG, "spo2_mean", "day", T0, 97.0, NOW) is not None
        with pytest.raises(BudgetExhausted, match="exhausted"):
            release_one(store, CFG, "active_minutes", "day", T0, 10.0, NOW)
        assert len(outbox.entries(store)) == 4
    finally:
        store.close()


_RACER = """
import json, sys
from pathlib import Path
from edgetwin.config import Config
from edgetwin.sync.service import release_due
from tests.sync.helpers import open_twin
store = open_twin(Path(sys.argv[1]))
sys.stdin.readline()  # start together
r = release_due(store, Config(), float(sys.argv[2]))
print(json.dumps([x.id for x in r.released]))
store.close()
"""


def test_concurrent_sync_runs_never_overspend(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = make_twin(home)
    write_days(store, T0, 3)
    _grant(store, "hr_mean", "hr_resting", "rmssd_mean", "spo2_mean", "active_minutes",
           "skin_temp_mean")
    store.close()
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(home), str(NOW)], cwd=root,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    ids = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        ids.extend(json.loads(out))
    assert len(ids) == len(set(ids)) == 12  # 4 per day fit, each released exactly once
    store = open_twin(home)
    try:
        for day in range(3):
            assert accountant.status(store, Config().privacy,
                                     T0 + day * DAY).epsilon_spent == pytest.approx(2.0)
        assert sorted(e.id for e in outbox.entries(store)) == sorted(ids)
    finally:
        store.close()


def test_uplink_down_then_back_nothing_lost_nothing_twice(tmp_path: Path, twin: Any) -> None:
    write_days(twin, T0, 3)
    _grant(twin, "hr_mean", "spo2_mean")
    released = release_due(twin, CFG, NOW).released
    assert len(released) == 6
    port = free_port()
    save_target(twin, parse_target(url=f"http://127.0.0.1:{port}/",
                                   allow_insecure_loopback=True))
    key = load_or_create(twin)
    # Down: every drain leaves everything pending, with growing, capped backoff.
    first = drain_outbox(twin, CFG, NOW)
    assert first.sent == 0 and first.retry_later == 6 and "unreachable" in first.errors[0]
    pending = [e for e in outbox.entries(twin) if e.state == "pending"]
    assert len(pending) == 6
    assert drain_outbox(twin, CFG, NOW + 1).errors == []  # backing off: nothing tried
    for attempt in range(2, 12):
        drain_outbox(twin, CFG, NOW + attempt * 1000, retry_now=True)
    delays = [e.next_try - (NOW + 11_000) for e in outbox.entries(twin) if e.attempts >= 11]
    assert delays and max(delays) <= CFG.sync.backoff_max_s
    # A collector that stores a release but whose receipt is lost on the way back.
    db = tmp_path / "c.db"
    collector = Collector(db)
    collector.enroll(key.public_b64)
    lose = {"n": 2}

    class Flaky(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                receipt = collector.accept(body, "http")
            except CollectorRefusal as exc:
                self.send_response(exc.http_status)
                self.end_headers()
                return
            if lose["n"] > 0:  # stored, then the connection drops before any answer
                lose["n"] -= 1
                self.close_connection = True
                return
            answer = json.dumps(receipt.to_json()).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r1 = drain_outbox(twin, CFG, NOW + 20_000, retry_now=True)
        assert r1.sent == 0 and r1.retry_later == 6 and "connection lost" in r1.errors[0]
        r2 = drain_outbox(twin, CFG, NOW + 20_001, retry_now=True)
        assert r2.retry_later == 6  # the same (oldest) release's receipt lost again
        r3 = drain_outbox(twin, CFG, NOW + 20_002, retry_now=True)
        # The collector had stored it at the first try: the third try is a duplicate.
        assert r3.errors == [] and r3.sent == 5 and r3.duplicates == 1
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(collector.release_ids()) == sorted(r.id for r in released)
    assert collector.counts()["releases"] == 6 and collector.counts()["duplicates"] == 2
    assert all(e.state == "sent" for e in outbox.entries(twin))
    assert drain_outbox(twin, CFG, NOW + 30_000, retry_now=True).sent == 0
    uploads = [a for a in twin.audit_entries() if a["event"] == "sync.upload"]
    assert len(uploads) == 6
    collector.close()


def test_refused_uploads_are_kept_and_retried_after_a_fix(tmp_path: Path, twin: Any) -> None:
    _grant(twin, "hr_mean")
    release_one(twin, CFG, "hr_mean", "day", T0, 72.0, NOW)
    running = start_collector(tmp_path / "c.db")  # this device is not enrolled yet
    try:
        save_target(twin, parse_target(url=f"http://127.0.0.1:{running.port}/",
                                       allow_insecure_loopback=True))
        r = drain_outbox(twin, CFG, NOW)
        assert r.failed == 1 and "403" in r.errors[0]
        (entry,) = outbox.entries(twin)
        assert entry.state == "failed"
        assert drain_outbox(twin, CFG, NOW + 10_000).sent == 0  # failed entries wait for a person
        running.collector.enroll(load_or_create(twin).public_b64)
        assert outbox.requeue_failed(twin, NOW) == 1
        assert drain_outbox(twin, CFG, NOW).sent == 1
        assert running.collector.release_ids() == [entry.id]
    finally:
        running.stop()
        running.collector.close()


def test_revoking_consent_cancels_unsent_releases(twin: Any) -> None:
    write_days(twin, T0, 2)
    _grant(twin, "hr_mean", "spo2_mean")
    assert len(release_due(twin, CFG, NOW).released) == 4
    _, cancelled = revoke_consent(twin, "hr_mean", NOW)
    assert cancelled == 2
    states = {e.id: (e.metric, e.state) for e in outbox.entries(twin)}
    assert sorted(states.values()) == (
        [("hr_mean", "cancelled")] * 2 + [("spo2_mean", "pending")] * 2
    )
    events = [a["event"] for a in twin.audit_entries()]
    assert events.count("consent.grant") == 2 and "consent.revoke" in events
    assert events.count("sync.release") == 4


def test_mqtt_broker_restart_mid_drain(tmp_path: Path, twin: Any, broker: Broker) -> None:
    write_days(twin, T0, 3)
    _grant(twin, "hr_mean", "rmssd_mean")
    released = release_due(twin, CFG, NOW).released
    key = load_or_create(twin)
    collector = Collector(tmp_path / "c.db")
    collector.enroll(key.public_b64)
    sub = CollectorMqtt(collector, broker.url, "study/x")
    sub.start()
    assert sub.subscribed.wait(5)
    save_target(twin, parse_target(mqtt=broker.url, topic="study/x",
                                   allow_insecure_loopback=True))
    try:
        broker.kill()
        down = drain_outbox(twin, CFG, NOW)
        assert down.sent == 0 and "unreachable" in down.errors[0]
        broker.start()
        sub.subscribed.clear()
        assert sub.subscribed.wait(15)
        up = drain_outbox(twin, CFG, NOW, retry_now=True)
        assert up.sent == 6 and up.errors == []
        deadline = time.monotonic() + 10
        while len(collector.release_ids()) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(collector.release_ids()) == sorted(r.id for r in released)
    finally:
        sub.stop()
        collector.close()


def test_hourly_releases_charge_the_day(twin: Any) -> None:
    write_days(twin, T0, 1)
    grant(twin, "hr_mean", "hour", T0)
    report = release_due(twin, CFG, T0 + DAY + 3600)
    # 2.0 per day / 0.5 per release: four hours of the day are released, the rest refused.
    assert len(report.released) == 4 and len(report.refused) == 20
    assert all(r.period == "hour" for r in report.released)
    assert np.isclose(accountant.status(twin, CFG.privacy, T0 + 5).epsilon_spent, 2.0)


def test_without_a_target_releases_wait(twin: Any) -> None:
    _grant(twin, "hr_mean")
    release_one(twin, CFG, "hr_mean", "day", T0, 72.0, NOW)
    report = drain_outbox(twin, CFG, NOW)
    assert (report.sent, report.retry_later, report.errors) == (0, 0, [])
    assert [e.state for e in outbox.entries(twin)] == ["pending"]


def test_release_values_read_as_columns_equal_a_frame_by_frame_reading(twin: Any) -> None:
    """Releases read the day's frames as stored columns (no 17,280 frame objects a day):
    the values per feature are exactly those of a frame-by-frame reading, with the window's
    bounds ``(start, end]``, poor quality and imputed cells handled the same."""
    from edgetwin.features.schema import INDEX, NAMES, SCHEMA_VERSION
    from edgetwin.types import FeatureFrame

    write_days(twin, T0, 2)
    odd = []
    for k, t in enumerate((T0 + DAY, T0 + DAY + 30.0, T0 + DAY + 90.0, T0 + 2 * DAY)):
        v = np.full(len(NAMES), 70.0 + k)
        q = np.full(len(NAMES), 0.2 if k == 1 else 1.0)  # the second: poor quality
        imputed = np.zeros(len(NAMES), dtype=bool)
        imputed[INDEX["hr"]] = k == 2  # the third: HR imputed
        odd.append(FeatureFrame(t, v, q, imputed, SCHEMA_VERSION))
    twin.append_frames(odd)
    twin.commit()
    for start in (T0, T0 + DAY):
        end = start + DAY
        by_columns = usable_values_of_columns(twin.iter_frame_columns(start, end), start, end)
        by_frames = usable_values(twin.read_frames(start, end), start, end)
        assert by_columns.keys() == by_frames.keys()
        for name in by_frames:
            assert np.array_equal(by_columns[name], by_frames[name]), name
    day2 = usable_values_of_columns(twin.iter_frame_columns(T0 + DAY, T0 + 2 * DAY),
                                    T0 + DAY, T0 + 2 * DAY)
    assert 70.0 not in day2["hr"] and 71.0 not in day2["hr"] and 72.0 not in day2["hr"]
    assert 73.0 in day2["hr"] and 72.0 in day2["rmssd"]  # end included; only HR was imputed
