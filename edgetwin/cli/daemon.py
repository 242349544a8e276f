"""``edgetwin daemon run``, ``status`` and ``demo``."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from edgetwin.cli.common import AppContext, SuggestingGroup, emit_json, json_option, pass_app
from edgetwin.errors import DaemonNotRunning

_LOGGER = logging.getLogger(__name__)


@click.group("daemon", cls=SuggestingGroup)
def daemon_group() -> None:
    """The long-running daemon."""


@daemon_group.command("run")
@click.option("--duration", type=float, default=None, help="Stop after S seconds [default: never].")
@click.option("--lsl", is_flag=True, default=False,
              help="Publish raw streams, features, forecasts and markers as LSL outlets "
              "(as '[lsl] enabled = true').")
@pass_app
def run_cmd(app: AppContext, duration: float | None, lsl: bool) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT (systemd unit in scripts/)."""
    from edgetwin.cli.unlock import open_twin_from_app
    from edgetwin.daemon.app import build_daemon, run_daemon

    if duration is not None and duration <= 0:
        raise click.BadParameter("must be greater than 0", param_hint="--duration")
    home = app.require_home()
    config = app.config()
    if app.verbose == 0:
        logging.getLogger("edgetwin").setLevel(logging.INFO)
    with open_twin_from_app(app) as store:
        daemon = build_daemon(home, config, store, lsl=True if lsl else None)
        if not daemon.runners:
            _LOGGER.warning("no sensors are paired; see 'edgetwin pair add --help'")
        asyncio.run(run_daemon(daemon, duration))


@click.command("status")
@json_option
@pass_app
def status_cmd(app: AppContext) -> None:
    """Daemon, sensors, sample counts, last prediction and privacy budget."""
    from edgetwin.cli.unlock import check_given_secret
    from edgetwin.daemon import control

    home = app.require_home()
    app.config()  # a broken config.toml is exit 2 here as in every command, not a silent 0
    try:
        status = control.request(home, {"cmd": "status"})
        check_given_secret(app)  # the daemon answered without a key: a wrong one is still exit 3
    except DaemonNotRunning:
        status = _offline_status(app)
    if app.as_json:
        emit_json(status)
        return
    click.echo(render_status(status, home))


@click.command("demo")
@click.option("--duration", type=float, default=60.0, show_default=True,
              help="Seconds to run; 0 runs until Ctrl-C.")
@click.option("--seed", type=int, default=7, show_default=True, help="Which simulated person.")
@click.option("--history-min", type=float, default=10.0, show_default=True,
              help="Minutes of simulated past to seed the twin with, so forecasts start at once.")
@click.option("--keep", is_flag=True, help="Keep the demo twin's home instead of deleting it.")
@click.option("--home", "demo_home", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the demo twin in DIR (new or empty); same as 'edgetwin --home DIR demo'.")
@click.option("--no-brainflow", is_flag=True, help="Skip BrainFlow's synthetic board.")
@click.option("--no-serial", is_flag=True, help="Skip the serial-bridge emulator.")
@pass_app
def demo_cmd(
    app: AppContext,
    duration: float,
    seed: int,
    history_min: float,
    keep: bool,
    demo_home: Path | None,
    no_brainflow: bool,
    no_serial: bool,
) -> None:
    """A throw-away twin on simulated sensors: run the daemon and print live forecasts."""
    from edgetwin.cli.demo import next_steps, run_demo

    if duration < 0:
        raise click.BadParameter("must be 0 or more", param_hint="--duration")
    home = demo_home or app.home_option
    throwaway = home is None
    if home is None:
        home = Path(tempfile.mkdtemp(prefix="edgetwin-demo-"))
    elif home.exists() and any(home.iterdir()):
        raise click.BadParameter(
            f"{home} is not empty; the demo needs a fresh home", param_hint="--home"
        )
    kept = keep or not throwaway
    try:
        run_demo(
            home,
            duration=duration or None,
            seed=seed,
            history_s=history_min * 60.0,
            brainflow=not no_brainflow,
            serial=not no_serial,
            as_json=app.as_json,
            keep=kept,
        )
    finally:
        if not kept:
            shutil.rmtree(home, ignore_errors=True)
    if not app.as_json:
        click.echo("")
        click.echo(next_steps(home if kept else None))


# -- rendering ---------------------------------------------------------------


def render_status(status: dict[str, Any], home: Path, *, daemon_line: bool = True) -> str:
    """A terminal summary of the status document (the demo leaves out the daemon line)."""
    lines: list[str] = []
    d = status["daemon"]
    if d.get("running"):
        rss = d.get("rss_bytes", 0) / 2**20
        children = d.get("children_cpu_s") or 0.0
        in_children = f" + {children:.1f} s in child processes" if children else ""
        lines.append(
            f"daemon   running (pid {d['pid']}, up {_duration(d['uptime_s'])}, "
            f"RSS {rss:.0f} MiB, CPU {d.get('cpu_s', 0):.1f} s{in_children})"
        )
        if d.get("last_frame_t"):
            lines.append(
                f"         last frame {_when(d['last_frame_t'])}, {d.get('frames', 0)} frames, "
                f"{d.get('predictions', 0)} predictions this run"
            )
        lag = d.get("loop_lag_ms") or {}
        if lag.get("max") is not None:
            lines.append(
                f"         loop lag p50 {lag['p50']:.1f} ms, p99 {lag['p99']:.1f} ms, "
                f"max {lag['max']:.1f} ms over the last minute"
            )
        lines.extend(_saving_lines(d))
    else:
        lines.append(f"daemon   not running on {home} (start it with 'edgetwin daemon run')")
    if not daemon_line:
        lines.clear()
    else:
        lines.append("")
    lines.append("sources")
    locked = not status.get("store", {}).get("unlocked", True)
    if locked:
        lines.append("  unknown while the store is locked")
    elif not status["sources"]:
        lines.append("  none paired")
    for s in status["sources"]:
        last = _when(s["last_sample_t"]) if s.get("last_sample_t") else "never"
        rate = f"{s['rate_hz']:.1f}/s" if s.get("rate_hz") else ""
        extra = f"  bad {s['bad_packets']}" if s.get("bad_packets") else ""
        extra += f"  gaps {s['gaps']}" if s.get("gaps") else ""
        err = f"  ({s['last_error']})" if s.get("last_error") and s["state"] != "streaming" else ""
        lines.append(
            f"  {s['name']:<14} {s['kind']:<10} {s['state']:<10} {s['samples']:>10} samples "
            f"{rate:>9}  drops {s['drops']}{extra}  last {last}{err}"
        )
    streams = status.get("store", {}).get("streams", [])
    lines.append("")
    lines.append("store")
    if not streams:
        lines.append("  locked: no daemon is running and no key was given (use --passphrase-file"
                     " or --keyfile to see sources and stored streams)" if locked else "  empty")
    for st in streams:
        span = (f"{_iso(st['first_t'])} .. {_iso(st['last_t'])}"
                if st.get("first_t") is not None else "")
        lines.append(f"  {st['name']:<24} {st['samples']:>12} samples  {span}")
    disk = status.get("disk") or {}
    if disk.get("total_bytes"):
        floor = disk.get("min_free_bytes", 0)
        lines.append(
            f"  disk: {_gib(disk['free_bytes'])} free of {_gib(disk['total_bytes'])}, twin.db "
            f"{_gib(disk.get('twin_db_bytes', 0))}"
            + (f" ({_gib(disk['twin_db_free_bytes'])} of it free for reuse)"
               if disk.get("twin_db_free_bytes") else "") + "; "
            + (f"below {_gib(floor)} free the oldest raw days go (retention.min_free_mib)"
               if floor else "no room floor (retention.min_free_mib = 0)")
        )
    pred = status.get("last_prediction")
    if pred:
        lines.append("")
        lines.append(
            f"last prediction  {pred['target']} at {_iso(pred['t'])}: "
            f"{pred['horizon'][0]:.1f} -> {pred['horizon'][-1]:.1f} over "
            f"{len(pred['horizon']) * pred['step_s']:.0f} s"
        )
    lsl = status.get("lsl") or {}
    if lsl.get("outlets"):
        outlets = lsl["outlets"]
        watched = sum(1 for o in outlets if o.get("consumers"))
        lines.append("")
        lines.append(
            f"lsl      {len(outlets)} outlets ({watched} with inlets), "
            f"{sum(o['samples'] for o in outlets)} samples pushed"
            + (f", {lsl['dropped_jobs']} jobs dropped" if lsl.get("dropped_jobs") else "")
            + (f", {lsl['errors']} errors" if lsl.get("errors") else "")
        )
    score = status.get("score") or {}
    if score.get("summary"):
        lines.append(score["summary"])
    budget = status.get("budget") or {}
    if budget:
        lines.append("")
        b = {k: budget.get(k, 0.0) for k in (
            "epsilon_spent", "epsilon_remaining", "lifetime_spent", "lifetime_remaining")}
        lines.append(
            f"privacy  epsilon spent {b['epsilon_spent']:.2f} this {budget.get('period', 'period')}"
            f" ({b['epsilon_remaining']:.2f} left), lifetime {b['lifetime_spent']:.2f}"
            f" ({b['lifetime_remaining']:.2f} left)"
        )
    return "\n".join(lines)


def _gib(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 10 * 2**20 else f"{n / 2**20:.1f} MiB"


def _offline_status(app: AppContext) -> dict[str, Any]:
    """Status from the store itself when no daemon runs.

    Without a key file or passphrase file the store stays locked (status never
    prompts); a given secret that is wrong is WrongKey, exit 3, as everywhere.
    """
    out: dict[str, Any] = {
        "daemon": {"running": False, "pid": None, "uptime_s": None},
        "sources": [],
        "store": {"streams": [], "unlocked": False},
        "budget": {},
    }
    from edgetwin.disk import disk_status

    out["disk"] = disk_status(app.home, app.config().retention.min_free_mib)
    if app.keyfile is None and app.passphrase_file is None:
        return out
    from edgetwin.cli.unlock import open_twin_from_app
    from edgetwin.daemon.app import PAIRING, budget_status
    from edgetwin.daemon.supervisor import stream_json

    with open_twin_from_app(app) as store:
        out["sources"] = [
            {"name": name, "kind": rec.get("kind"), "state": "stopped", "samples": 0,
             "drops": 0, "last_sample_t": None}
            for name, rec in sorted(store.list_records(PAIRING).items())
        ]
        infos = store.streams()
        out["store"] = {
            "unlocked": True,
            "streams": [stream_json(s) for s in infos],
        }
        for src in out["sources"]:
            mine = [s for s in infos if s.name.startswith(src["name"] + ".")]
            src["samples"] = sum(s.samples for s in mine)
            lasts = [s.last_t for s in mine if s.last_t is not None]
            src["last_sample_t"] = max(lasts) if lasts else None
        preds = store.read_predictions(last=1)
        out["last_prediction"] = preds[-1].to_json() if preds else None
        out.update(_stored_score(store))
        out["budget"] = budget_status(store, app.config())
    return out


def _stored_score(store: Any) -> dict[str, Any]:
    """The score the daemon's last refit stored, with its one-line summary (or nothing)."""
    try:
        from edgetwin.inference.scoring import summary_line
        from edgetwin.inference.serving import stored_score
    except ImportError:  # a build without inference
        return {}
    doc = stored_score(store)
    return {"score": {"summary": summary_line(doc), **doc}} if doc else {}


def _when(t: float) -> str:
    ago = time.time() - t
    if ago < 0:
        return _iso(t)
    if ago < 120:
        return f"{ago:.0f} s ago"
    if ago < 7200:
        return f"{ago / 60:.0f} min ago"
    return _iso(t)


def _iso(t: float) -> str:
    from edgetwin.cli.common import format_time

    return format_time(t)


def _saving_lines(d: dict[str, Any]) -> list[str]:
    """What a failing commit (a full disk) means for the data: said first, not left to the
    JSON, since the sources still look healthy meanwhile."""
    failing = d.get("commit_failing")
    shed = sum((d.get("shed_samples") or {}).values())
    if not failing:
        return [f"         {shed} samples were dropped while commits failed (since start)"
                ] if shed else []
    held = failing.get("held_mib")
    waiting = (f"{held:.1f} of {failing.get('cap_mib', 0):g} MiB of samples wait in memory"
               if held is not None else "samples wait in memory")
    line = (f"         NOT SAVING: commits have failed for "
            f"{_duration(time.time() - failing['since'])} ({failing.get('error')}); {waiting}")
    if failing.get("next_try_in_s") is not None:
        line += f", next try in {failing['next_try_in_s']:.0f} s"
    if failing.get("shed_samples"):
        line += f"; the oldest {failing['shed_samples']} were dropped to stay within it"
    return [line]


def _duration(s: float) -> str:
    s = int(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"
