"""The demo: a throw-away twin on the simulator, BrainFlow's synthetic board and the serial
bridge emulator, printing real forecasts from the shipped models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_demo_prints_forecasts_with_the_design_keys(tmp_path: Path) -> None:
    home = tmp_path / "demo-home"
    env = {**os.environ, "EDGETWIN_KDF_PROFILE": "test"}
    result = subprocess.run(
        [sys.executable, "-m", "edgetwin", "--home", str(home), "--json", "demo",
         "--duration", "12", "--history-min", "6"],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    last = lines.pop()
    status = last["status"]
    preds = lines
    assert preds, "the demo printed no forecast"
    hr = [p for p in preds if p["target"] == "hr"]
    assert hr
    p = hr[-1]
    assert {"t", "target", "step_s", "horizon", "band", "attention", "imputed"} <= p.keys()
    assert len(p["band"]) == len(p["horizon"])
    assert all(lo <= h <= hi for h, (lo, hi) in zip(p["horizon"], p["band"], strict=True))
    assert 30 < p["horizon"][0] < 200
    assert abs(sum(p["attention"]) - 1.0) < 1e-3
    # Every live sensor path fed the twin: simulator, BrainFlow synthetic board, serial bridge.
    samples = {s["kind"]: s["samples"] for s in status["sources"]}
    assert set(samples) == {"simulator", "brainflow", "serial"}
    assert all(n > 0 for n in samples.values()), samples
    assert status["daemon"]["predictions"] == len(preds)
    # the dashboard ran beside it, and the demo said where (with the one-time token)
    assert last["dashboard"].startswith("http://127.0.0.1:") and "/?token=" in last["dashboard"]


def test_demo_takes_home_after_the_subcommand_as_scripts_demo_passes_it(tmp_path: Path) -> None:
    """`scripts/demo --home DIR` puts --home after `demo`: it must be the demo's option too."""
    from click.testing import CliRunner

    from edgetwin.cli.main import cli

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("x")
    result = CliRunner().invoke(cli, ["demo", "--home", str(busy), "--duration", "1"])
    assert result.exit_code == 2
    assert "is not empty" in result.output and str(busy) in result.output
    assert (busy / "something").read_text() == "x"  # nothing of the user's was touched


def test_demo_serves_its_dashboard_on_a_free_port_when_the_configured_one_is_taken(
        tmp_path: Path) -> None:
    """A person's own daemon holds 8765 (the default): the demo must still show a dashboard,
    on another port, and must not take the real one's."""
    import contextlib
    import socket

    with contextlib.ExitStack() as stack:
        holder = stack.enter_context(socket.socket())
        with contextlib.suppress(OSError):  # already held by a daemon on this machine: fine
            holder.bind(("127.0.0.1", 8765))
            holder.listen()
        env = {**os.environ, "EDGETWIN_KDF_PROFILE": "test"}
        result = subprocess.run(
            [sys.executable, "-m", "edgetwin", "--home", str(tmp_path / "h"), "--json", "demo",
             "--duration", "3", "--history-min", "0"],
            env=env, capture_output=True, text=True, timeout=240, check=False,
        )
    assert result.returncode == 0, result.stderr
    last = json.loads(result.stdout.splitlines()[-1])
    url = last["dashboard"]
    assert url and url.startswith("http://127.0.0.1:") and "/?token=" in url
    assert not url.startswith("http://127.0.0.1:8765/")
