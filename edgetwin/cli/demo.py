"""The demo: a throw-away twin fed by simulated sensors, printing live forecasts.

Three real code paths feed it: the physiology simulator, BrainFlow's own
synthetic board, and the serial-bridge emulator behind a pseudo-terminal
(the MicroPython firmware's encoder running on CPython). The twin is seeded
with a few minutes of simulated history so the forecaster has context from
the first step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgetwin.cli.common import emit_json
from edgetwin.config import Config, load_config
from edgetwin.daemon.app import (
    PAIRING,
    build_daemon,
    load_engine,
    make_pipeline,
    process_offline,
)
from edgetwin.sources.base import Source
from edgetwin.types import Prediction

if TYPE_CHECKING:
    from edgetwin.daemon.supervisor import Daemon
    from edgetwin.features.pipeline import FeaturePipeline
    from edgetwin.inference.serving import ServingEngine
    from edgetwin.store import TwinStore

_LOGGER = logging.getLogger(__name__)

_WIDTH = 100  # the demo's forecast table; explanations wrap rather than being cut
UNLOCK_FILE = "demo-passphrase"  # a kept demo twin's random passphrase, mode 0600


def run_demo(
    home: Path,
    *,
    duration: float | None,
    seed: int,
    history_s: float,
    brainflow: bool,
    serial: bool,
    as_json: bool,
    keep: bool = False,
) -> None:
    """Create the twin, seed its history, run the daemon, print forecasts as they come.

    A kept twin gets its random passphrase in ``home/demo-passphrase`` (0600), or it
    could never be opened again; a throw-away one is never named as if it stayed.
    """
    from edgetwin.store import Secret, TwinStore

    def say(msg: str) -> None:
        if not as_json:
            click.echo(msg, err=True)

    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    passphrase = secrets.token_urlsafe(18)
    if keep:
        secret_file = home / UNLOCK_FILE
        secret_file.touch(mode=0o600)
        secret_file.write_text(passphrase + "\n", encoding="utf-8")
        say(f"demo twin in {home} (kept afterwards)")
    else:
        say("a throw-away demo twin (deleted when the demo ends; --keep keeps it)")
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(TwinStore.create(home, Secret.passphrase(passphrase)))
        config = _dashboard_on_a_free_port(load_config(home), say)
        pipeline = make_pipeline(config)
        engine = load_engine(store, config)
        now = time.time()
        if history_s > 0:
            say(f"seeding {history_s / 60:.0f} min of simulated history (person #{seed})...")
            _seed_history(store, pipeline, engine, seed, now - history_s, history_s)
        sources = _demo_sources(stack, seed, now, brainflow=brainflow, serial=serial, say=say)
        for source in sources:
            store.put_record(PAIRING, source.name, {"kind": source.kind, "demo": True})
        store.commit()
        printer = _Printer(as_json)
        daemon = build_daemon(
            home, config, store, sources=sources, on_prediction=printer,
            pipeline=pipeline, engine=engine,
        )
        say(
            f"running the daemon on {len(sources)} simulated sensors "
            f"({', '.join(s.name for s in sources)})"
            + (f" for {duration:.0f} s" if duration else "; Ctrl-C to stop")
        )
        if engine is None:
            say("no models available: the timeline fills but no forecasts are printed")
        dashboard_url = asyncio.run(_run_with_dashboard(daemon, duration, say))
        if as_json:  # one forecast per line, then {"status": {...}, "dashboard": URL or null}
            emit_json({"status": daemon.status(), "dashboard": dashboard_url})
        else:
            from edgetwin.cli.daemon import render_status

            click.echo("")
            click.echo(render_status(daemon.status(), home, daemon_line=False))


def _dashboard_on_a_free_port(config: Config, say: Callable[[str], None]) -> Config:
    """The demo twin's dashboard on the configured port, or on one the system picks when that
    one is taken (the person's own daemon serves its dashboard there): a demo must not lose
    its dashboard, nor take the real one's port."""
    import dataclasses
    import socket

    dash = config.dashboard
    if not dash.enabled:
        return config
    with socket.socket() as probe:
        try:
            probe.bind((dash.host, dash.port))
            return config
        except OSError:
            pass
    say(f"port {dash.port} is in use (your own daemon's dashboard?): the demo's dashboard "
        "takes a free one")
    return dataclasses.replace(config, dashboard=dataclasses.replace(dash, port=0))


async def _run_with_dashboard(
    daemon: Daemon, duration: float | None, say: Callable[[str], None]
) -> str | None:
    """The daemon as 'daemon run' runs it: with the dashboard when ``[dashboard] enabled``
    (the default), whose URL with its access token is said once it listens; that URL."""
    from edgetwin.daemon.dashboard import dashboard_for

    async with dashboard_for(daemon) as dash:
        if dash is not None:
            say(f"dashboard (open it while the demo runs): {dash.url}")
        await daemon.run(duration)
        return dash.url if dash is not None else None


class _Printer:
    """Prints one line per heart-rate forecast (all targets under --json)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.count = 0
        self._shown = False

    def __call__(self, pred: Prediction) -> None:
        self.count += 1
        if self.as_json:
            emit_json(pred.to_json())
            return
        if pred.target != "hr":
            return
        try:
            from edgetwin.inference.render import render_header, render_legend, render_rows
        except ImportError:
            click.echo(f"{pred.t:.0f} hr -> {pred.horizon[-1]:.1f}")
            return
        if not self._shown:  # header and legend once; then each forecast with its explanation
            self._shown = True
            horizon_s = len(pred.horizon) * pred.step_s
            click.echo(render_legend(horizon_s, _WIDTH))
            click.echo(render_header(horizon_s, _WIDTH))
        for line in render_rows([pred], _WIDTH):
            click.echo(line)


def _seed_history(
    store: TwinStore,
    pipeline: FeaturePipeline,
    engine: ServingEngine | None,
    seed: int,
    start_t: float,
    duration_s: float,
) -> None:
    from edgetwin.sources.simulator import SimulatedPerson, simulate

    person = SimulatedPerson.from_seed(seed)
    # The daemon's pipeline keeps its state, so live data continues this history seamlessly.
    process_offline(
        store, simulate(person, start_t, duration_s), pipeline, engine, flush=False
    )


def _demo_sources(
    stack: contextlib.ExitStack[bool | None], seed: int, now: float, *, brainflow: bool,
    serial: bool, say: Callable[[str], None],
) -> list[Source]:
    from edgetwin.sources.simulator import SimulatorSource

    sources: list[Source] = [SimulatorSource("sim", seed=seed, realtime=True, start_t=now)]
    if brainflow:
        try:
            from edgetwin.sources.brainflow import BrainFlowSource, brainflow_available

            problem = brainflow_available()
            if problem is None:
                sources.append(BrainFlowSource.from_record(
                    "bf-synth", {"kind": "brainflow", "board": "SYNTHETIC_BOARD", "params": {}}
                ))
            else:
                say(f"BrainFlow skipped: {problem}")
        except ImportError:
            say("BrainFlow source not available in this build")
    if serial:
        try:
            from edgetwin.emulators.bridge import BridgeEmulator
            from edgetwin.sources.serial import SerialSource

            emulator = BridgeEmulator(seed=seed, kind="fnirs")
            port = emulator.start()
            stack.callback(emulator.stop)
            sources.append(SerialSource.from_record(
                "bridge", {"kind": "serial", "port": str(port), "baud": 115200}
            ))
        except ImportError:
            say("serial bridge emulator not available in this build")
    return sources


def next_steps(home: Path | None) -> str:
    """What to try after the demo: the kept twin's commands, or a twin of one's own."""
    if home is not None:
        return "\n".join([
            f"the demo twin is kept at {home} (its passphrase is in {home / UNLOCK_FILE});"
            " try next:",
            f"  export EDGETWIN_HOME={home} EDGETWIN_PASSPHRASE_FILE={home / UNLOCK_FILE}",
            "  edgetwin timeline                    the feature frames it holds",
            "  edgetwin predictions --last 5        its latest forecasts, explained",
            "  edgetwin daemon run --duration 60    feed it for another minute",
            f"  rm -r {home}" + " " * max(1, 31 - len(str(home))) + "when you are done",
        ])
    return "\n".join([
        "the demo twin is deleted now (--keep keeps the next one); try next:",
        "  edgetwin init                        a twin of your own (asks for a passphrase)",
        "  edgetwin pair add simulator          a simulated person, or: edgetwin pair scan",
        "  edgetwin daemon run                  record, compute features, forecast",
        "  edgetwin status                      then: edgetwin timeline, edgetwin predictions",
    ])
