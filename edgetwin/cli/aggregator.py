"""``edgetwin aggregator`` and ``edgetwin sync secagg-join``: secure-aggregation rounds on Flower.

Thin wiring over ``edgetwin.sync.flower_deploy`` (SuperLink/SuperNode processes)
and ``edgetwin.sync.collector.flower_server`` (the round and its results); see
docs/secagg.md.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from edgetwin.cli.common import AppContext, emit_json, json_option, pass_app
from edgetwin.errors import ConsentMissing, UplinkError, UsageError

_NEEDS_FLWR = "pip install 'edgetwin[secagg]'"


def _period_start(text: str, period: str) -> float:
    """A UTC date (``2026-12-01``), ``DATE HH:00`` for hours, or epoch seconds."""
    from edgetwin.privacy.metrics import window_start

    try:
        t = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError as exc:
            raise UsageError(f"--period-start {text!r} is not a date",
                             hint="use e.g. 2026-12-01 (UTC) or epoch seconds") from exc
        t = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    start = window_start(t, period)
    if start != t:
        raise UsageError(f"--period-start {text!r} is not the start of a UTC {period}")
    return start


def _flower() -> Any:
    try:
        from edgetwin.sync import flower_deploy
        flower_deploy.tool("flower-superlink")
    except (ImportError, FileNotFoundError) as exc:
        raise UsageError(f"secure aggregation needs Flower: {exc}", hint=_NEEDS_FLWR) from exc
    return flower_deploy


@click.command("aggregator")
@click.option("--listen", required=True, help="HOST:PORT of the SuperLink (TLS, one port).")
@click.option("--db", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Collector SQLite file; rounds go to its secagg_rounds table.")
@click.option("--tls-cert", required=True, type=click.Path(exists=True, dir_okay=False,
                                                           path_type=Path))
@click.option("--tls-key", required=True, type=click.Path(exists=True, dir_okay=False,
                                                          path_type=Path))
@click.option("--ca", "ca_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CA certificate of --tls-cert (devices verify the SuperLink with it).")
@click.option("--enroll-node", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A device's P-384 public key (OpenSSH), from 'sync secagg-join --new-key'.")
@click.option("--metric", default="hr_mean", show_default=True)
@click.option("--period", type=click.Choice(["day", "hour"]), default="day", show_default=True)
@click.option("--period-start", required=True, help="UTC start of the period (2026-12-01).")
@click.option("--expected", type=click.IntRange(2), required=True,
              help="Devices the round waits for before it starts.")
@click.option("--min-cohort", type=click.IntRange(2), default=20, show_default=True)
@click.option("--levels", type=click.IntRange(2), default=1024, show_default=True)
@click.option("--epsilon", type=click.FloatRange(min=0, min_open=True), default=0.5,
              show_default=True)
@click.option("--delta", type=click.FloatRange(0, 1e-3, min_open=True), default=1e-6,
              show_default=True)
@click.option("--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="Seconds each SecAgg+ stage waits for replies (then: dropouts).")
@json_option
@pass_app
def aggregator_cmd(app: AppContext, listen: str, db: Path, tls_cert: Path, tls_key: Path,
                   ca_file: Path, enroll_node: tuple[Path, ...], metric: str, period: str,
                   period_start: str, expected: int, min_cohort: int, levels: int,
                   epsilon: float, delta: float, timeout: float) -> None:
    """Run one SecAgg+ round of METRIC for one period on a Flower SuperLink; store the mean."""
    from edgetwin.privacy.metrics import METRICS, bounds_for, get_metric

    fd = _flower()
    start = _period_start(period_start, period)
    m = get_metric(metric)
    lo, hi = bounds_for(m, {}, period) if metric in METRICS else (0.0, 1.0)
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--listen {listen!r}", hint="use HOST:PORT")
    workdir = db.resolve().parent / f"{db.name}.flower"
    workdir.mkdir(parents=True, exist_ok=True)
    agg = fd.Aggregator(workdir, host=host.strip("[]"), port=int(port), cert=tls_cert,
                        key=tls_key, ca=ca_file)
    round_id = f"{metric}/{period}/{int(start)}/{int(time.time())}"
    try:
        agg.start()
        for pub in enroll_node:
            agg.register(pub)
        if not app.as_json:
            click.echo(f"SuperLink on https://{listen}; {len(enroll_node)} device key(s) "
                       f"enrolled; waiting for {expected} devices")
        agg.run_round({"metric": m.name, "period": period, "period-start": start,
                       "round-id": round_id, "db": str(db.resolve()), "expected": expected,
                       "lower": lo, "upper": hi, "levels": levels, "epsilon": epsilon,
                       "delta": delta, "min-cohort": min_cohort, "timeout": timeout})
    except (RuntimeError, TimeoutError) as exc:
        raise UplinkError(f"aggregator: {exc}",
                          hint=f"see the logs in {workdir}") from exc
    finally:
        agg.stop()
    from edgetwin.sync.collector.flower_server import rounds

    row = next((r for r in rounds(str(db)) if r["round_id"] == round_id), None)
    if app.as_json:
        emit_json({"round": row})
    elif row is None:
        click.echo("the round stored no result (see the SuperLink log)")
    else:
        click.echo(_round_line(row))


def print_rounds(db: str, as_json: bool) -> list[dict[str, Any]]:
    """``collector --aggregate``'s secure-aggregation part; returns the rows."""
    try:
        from edgetwin.sync.collector.flower_server import rounds
    except ImportError:  # pragma: no cover - numpy/opendp are runtime dependencies
        return []
    rows = rounds(db)
    if rows and not as_json:
        click.echo("secure-aggregation rounds:")
        for r in rows:
            click.echo("  " + _round_line(r))
    return rows


def _round_line(r: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(r["period_start"], UTC).strftime(
        "%Y-%m-%d" if r["period"] == "day" else "%Y-%m-%d %H:%MZ")
    head = f"{r['metric']:<16} {r['period']:<5} {when:<17} {r['state']:<11} " \
           f"{r['devices']:>5}/{r['sampled']:<5}"
    if r["state"] != "published":
        return f"{head} {r['reason']}"
    return (f"{head} mean {r['mean']:.2f} {r['unit']} ± {1.96 * r['noise_sd']:.2f} (95 % noise)"
            f"  eps {r['epsilon']:g} delta {r['delta']:g}")


@click.command("secagg-join")
@click.option("--superlink", required=True, help="HOST:PORT of the aggregator's SuperLink.")
@click.option("--ca", "ca_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--node-key", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="This device's P-384 private key for Flower node authentication.")
@click.option("--new-key", is_flag=True, help="Create --node-key (and KEY.pub to enroll) first.")
@click.option("--duration", type=float, help="Leave after this many seconds.")
@json_option
@pass_app
def secagg_join_cmd(app: AppContext, superlink: str, ca_file: Path, node_key: Path,
                    new_key: bool, duration: float | None) -> None:
    """Run this device's Flower SuperNode: its ready shares can enter SecAgg+ rounds."""
    from edgetwin.cli.unlock import open_twin_from_app
    from edgetwin.privacy import consent

    fd = _flower()
    config = app.config()
    store = open_twin_from_app(app)
    try:
        secagg = [c.metric for c in consent.granted(store)
                  if config.secagg.mode(c.metric) == "secagg"]
    finally:
        store.close()
    if not secagg:
        raise ConsentMissing("no consented metric is in secagg mode: this device joins no round",
                             hint="edgetwin consent grant METRIC, and [secagg] modes in "
                                  "config.toml")
    if new_key:
        priv, pub = fd.generate_node_key(node_key.parent, node_key.stem)
        if priv != node_key:
            priv.rename(node_key)
        click.echo(f"enroll this device with: edgetwin aggregator ... --enroll-node {pub}")
    if app.passphrase_file is None:
        raise UsageError("secagg-join needs --passphrase-file: the ClientApp process "
                         "unlocks the twin to claim its share")
    cmd = fd.supernode_command(superlink=superlink, ca=ca_file, node_key=node_key,
                               runtime_port=_free_port(),
                               node_config={"edgetwin-home": str(app.home),
                                            "passphrase-file": str(app.passphrase_file)})
    proc = subprocess.Popen(cmd, env=fd.flower_env())  # noqa: S603 - our own argv, no shell
    if app.as_json:
        emit_json({"joined": superlink, "metrics": secagg, "pid": proc.pid})
    else:
        click.echo(f"SuperNode for {', '.join(secagg)} connected to {superlink} "
                   f"(pid {proc.pid})")
    sys.stdout.flush()
    try:
        proc.wait(timeout=duration)
    except subprocess.TimeoutExpired:
        pass
    except KeyboardInterrupt:
        pass
    finally:
        for pid in fd.descendants(proc.pid):
            _term(pid)
        proc.terminate()
        proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _term(pid: int) -> None:
    import os
    import signal

    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
