"""The real daemon as a process: real store, simulator, control socket, signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgetwin import clock as twin_clock

EXE = [sys.executable, "-m", "edgetwin"]


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*EXE, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"edgetwin {' '.join(args)} -> {result.returncode}\n{result.stderr}")
    return result


@pytest.fixture
def twin(env: dict[str, str]) -> dict[str, str]:
    cli(env, "init")
    # A fast simulated person so a few seconds hold several feature steps.
    cli(env, "pair", "add", "simulator", "--seed", "4", "--speed", "20")
    home = Path(env["EDGETWIN_HOME"])
    (home / "config.toml").write_text("[daemon]\nflush_interval_s = 0.2\n")
    return env


@pytest.fixture
def daemon(twin: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([*EXE, "daemon", "run"], env=twin, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()


def wait_status(env: dict[str, str], until: object, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    last: dict[str, object] = {}
    while time.monotonic() < deadline:
        result = cli(env, "status", "--json", check=False)
        if result.returncode == 0:
            last = json.loads(result.stdout)
            if until(last):  # type: ignore[operator]
                return last
        time.sleep(0.3)
    raise AssertionError(f"status never satisfied the condition; last: {last}")


def _running_with_samples(s: dict[str, object]) -> bool:
    d = s["daemon"]
    srcs = s["sources"]
    return bool(d["running"]) and bool(srcs) and srcs[0]["samples"] > 0  # type: ignore[index]


def test_status_of_a_live_daemon_then_orderly_sigterm(
    twin: dict[str, str], daemon: subprocess.Popen[str]
) -> None:
    status = wait_status(twin, _running_with_samples)
    d = status["daemon"]
    assert d["pid"] == daemon.pid  # type: ignore[index]
    assert d["uptime_s"] > 0  # type: ignore[index]
    (src,) = status["sources"]  # type: ignore[misc]
    assert src["name"] == "simulator"
    assert src["kind"] == "simulator"
    assert src["state"] == "streaming"
    assert {"samples", "drops", "last_sample_t"} <= src.keys()
    assert isinstance(status["store"]["streams"], list)  # type: ignore[index]
    budget = status["budget"]
    assert budget["period"] == "day"  # type: ignore[index]
    assert budget["epsilon_spent"] == 0.0  # type: ignore[index]
    assert budget["epsilon_remaining"] == 2.0  # type: ignore[index]
    assert budget["lifetime_remaining"] == 100.0  # type: ignore[index]

    # A second daemon on the same home is refused with a clear message and exit 2.
    second = cli(twin, "daemon", "run", "--duration", "5", check=False)
    assert second.returncode == 2
    assert f"pid {daemon.pid}" in second.stderr
    assert "Traceback" not in second.stderr

    samples_seen = src["samples"]
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    home = Path(twin["EDGETWIN_HOME"])
    assert not (home / "control.sock").exists()

    offline = json.loads(cli(twin, "status", "--json").stdout)
    assert offline["daemon"]["running"] is False
    stored = sum(s["samples"] for s in offline["store"]["streams"])
    # Everything in flight was flushed on SIGTERM: at least what status had seen is stored.
    assert stored >= samples_seen
    timeline = json.loads(cli(twin, "timeline", "--json").stdout)
    assert timeline, "the daemon produced feature frames"
    assert {"t", "features", "quality"} <= timeline[0].keys()
    assert any(f["features"]["hr"] is not None for f in timeline)


def test_sigkill_then_restart_recovers_lock_socket_and_data(
    twin: dict[str, str], daemon: subprocess.Popen[str]
) -> None:
    wait_status(twin, _running_with_samples)
    time.sleep(1.0)  # several flush intervals: committed data exists
    daemon.kill()
    daemon.wait(timeout=30)
    home = Path(twin["EDGETWIN_HOME"])
    assert (home / "control.sock").exists()  # left behind by the crash
    before = json.loads(cli(twin, "status", "--json").stdout)
    stored_before = {s["name"]: s["samples"] for s in before["store"]["streams"]}
    assert sum(stored_before.values()) > 0

    again = cli(twin, "daemon", "run", "--duration", "3")
    assert again.returncode == 0
    after = json.loads(cli(twin, "status", "--json").stdout)
    stored_after = {s["name"]: s["samples"] for s in after["store"]["streams"]}
    for name, n in stored_before.items():
        assert stored_after[name] >= n  # nothing committed was lost
    assert sum(stored_after.values()) > sum(stored_before.values())


def test_garbled_config_is_one_clear_line_and_exit_2(twin: dict[str, str]) -> None:
    home = Path(twin["EDGETWIN_HOME"])
    (home / "config.toml").write_text("[daemon]\nflush_intervall_s = 1\n")
    result = cli(twin, "daemon", "run", "--duration", "1", check=False)
    assert result.returncode == 2
    assert "config.toml" in result.stderr
    assert "daemon.flush_intervall_s" in result.stderr
    assert "did you mean 'daemon.flush_interval_s'" in result.stderr
    assert "Traceback" not in result.stderr
    verbose = cli(twin, "-v", "daemon", "run", "--duration", "1", check=False)
    assert verbose.returncode == 2
    assert "Traceback" in verbose.stderr


def test_status_without_a_twin_says_what_to_do(env: dict[str, str]) -> None:
    result = cli(env, "status", check=False)
    assert result.returncode == 2
    assert "edgetwin init" in result.stderr


def test_wrong_passphrase_is_exit_3(twin: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("not the passphrase\n")
    bad.chmod(0o600)
    result = cli({**twin, "EDGETWIN_PASSPHRASE_FILE": str(bad)}, "daemon", "run",
                 "--duration", "1", check=False)
    assert result.returncode == 3
    assert "Traceback" not in result.stderr


def test_status_with_a_wrong_passphrase_exits_3_even_when_the_daemon_answers(
    twin: dict[str, str], daemon: subprocess.Popen[str], tmp_path: Path
) -> None:
    wait_status(twin, _running_with_samples)
    bad = tmp_path / "bad"
    bad.write_text("not the passphrase\n")
    bad.chmod(0o600)
    result = cli({**twin, "EDGETWIN_PASSPHRASE_FILE": str(bad)}, "status", "--json", check=False)
    assert result.returncode == 3, result.stdout
    assert result.stdout == ""  # nothing the daemon knows is shown to a wrong key
    assert "does not unlock" in result.stderr and "Traceback" not in result.stderr
    assert cli(twin, "status", "--json").returncode == 0  # the right one still works


def test_predictions_follow_streams_live_forecasts_until_the_daemon_stops(
    twin: dict[str, str], daemon: subprocess.Popen[str]
) -> None:
    wait_status(twin, _running_with_samples)
    with subprocess.Popen(
        [*EXE, "predictions", "--follow", "--json", "--target", "hr"], env=twin,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as follower:
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())
        second = json.loads(follower.stdout.readline())
        assert first["target"] == second["target"] == "hr"
        assert second["t"] > first["t"]
        assert {"horizon", "band", "attention", "imputed", "step_s"} <= first.keys()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        follower.stdout.read()
        assert follower.wait(timeout=30) == 0  # the stream ends cleanly with the daemon
    stored = json.loads(cli(twin, "predictions", "--json", "--last", "3", "--target", "hr").stdout)
    assert len(stored) == 3
    assert stored[-1]["t"] >= second["t"]


def test_forget_while_the_daemon_runs_goes_through_the_daemon(
    twin: dict[str, str], daemon: subprocess.Popen[str]
) -> None:
    status = wait_status(
        twin, lambda s: _running_with_samples(s) and any(  # type: ignore[arg-type]
            st["name"] == "simulator.eeg" and st["samples"] > 5000
            for st in s["store"]["streams"]  # type: ignore[index]
        ),
    )
    streams = status["store"]["streams"]  # type: ignore[index]
    before = {st["name"]: st["samples"] for st in streams}
    eeg_last_t = next(st["last_t"] for st in streams if st["name"] == "simulator.eeg")
    result = cli(twin, "forget", "--stream", "simulator.eeg", "--yes", "--json")
    report = json.loads(result.stdout)
    assert report["keys_destroyed"] >= 1
    assert report["samples_deleted"] >= before["simulator.eeg"]
    assert json.loads(cli(twin, "status", "--json").stdout)["daemon"]["forgets"] == 1
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    after_streams = json.loads(cli(twin, "status", "--json").stdout)["store"]["streams"]
    after = {s["name"]: s["samples"] for s in after_streams}
    # Only what arrived after the forget is left of the stream (however long the machine took
    # between forget and stop: the stream keeps recording); the others are untouched.
    eeg_after = [s for s in after_streams if s["name"] == "simulator.eeg"]
    assert not eeg_after or eeg_after[0]["first_t"] > eeg_last_t
    assert after["simulator.vitals"] >= before["simulator.vitals"]
    audit = json.loads(cli(twin, "audit", "--json").stdout)
    events = [e["event"] for e in audit["entries"]]
    assert "forget" in events


def test_after_a_restart_new_samples_come_after_the_newest_stored_one(
    tmp_path: Path, fresh_twin_clock: twin_clock.TwinClock
) -> None:
    # A step of the host's clock back, then a crash: the restarted daemon's clock counts on
    # from the newest stored sample instead of stamping new samples before it
    import numpy as np

    from edgetwin.daemon.app import _clock_not_before_stored
    from edgetwin.store.keys import Secret
    from edgetwin.store.twin import TwinStore
    from edgetwin.types import SampleBatch

    now = time.time()
    with TwinStore.create(tmp_path / "twin", Secret.passphrase("correct horse battery")) as store:
        for name, t_last in (("strap.hr", now - 5.0), ("headset.eeg", now + 20.0)):
            t = np.linspace(t_last - 1.0, t_last, 5)
            store.append_samples(SampleBatch.build(name, ("v",), t, np.ones(5)))
        store.commit()
        _clock_not_before_stored(store)
    assert 19.0 < fresh_twin_clock.offset() <= 20.0
    assert fresh_twin_clock.now() > now + 20.0
