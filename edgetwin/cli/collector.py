"""``edgetwin collector``: the reference receiver of DP releases (HTTP(S), MQTT, aggregates)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from edgetwin.cli.common import AppContext, emit_json, json_option, pass_app
from edgetwin.errors import UplinkError, UsageError

TOKEN_ENV = "EDGETWIN_COLLECTOR_TOKEN"  # noqa: S105 - the variable's name, not a token


@click.command("collector")
@click.option("--listen", help="HOST:PORT to receive HTTP(S) uploads on (port 0: any free).")
@click.option("--db", "db", required=True, metavar="PATH|URL",
              help="SQLite file, or a postgresql://USER@HOST/DB URL shared by several "
                   "collectors.")
@click.option("--enroll", multiple=True, metavar="PUBKEY",
              help="Enroll a device public key (from 'edgetwin sync device-key'); repeatable.")
@click.option("--mqtt", "mqtt_url", help="Also subscribe to this broker (mqtt[s]://HOST[:PORT]).")
@click.option("--topic", help="MQTT topic to subscribe to.")
@click.option("--share", "share_group", metavar="GROUP",
              help="Subscribe as a member of MQTT 5 shared subscription $share/GROUP/TOPIC, so "
                   "several collectors split the topic's messages.")
@click.option("--client-id", help="MQTT client id (stable: keeps the broker session across "
                                  "restarts; each collector of a share group needs its own).")
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False, path_type=Path),
              help="CA certificate of the broker.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Serve HTTPS with this PEM certificate chain.")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Private key of --tls-cert.")
@click.option("--token-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="File holding the bearer token GET /v1/aggregates requires "
                   f"(or set {TOKEN_ENV}); without one that endpoint is off.")
@click.option("--max-connections", type=click.IntRange(1), default=1024, show_default=True,
              help="Open HTTP connections at most; past it the longest-idle one is closed.")
@click.option("--header-timeout", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True,
              help="Seconds a connection may take for each of: its TLS handshake, a request "
                   "head, a body.")
@click.option("--window", "window_s", type=float, default=300.0, show_default=True,
              help="Seconds a signed send time may differ from the collector's clock.")
@click.option("--aggregate", is_flag=True,
              help="Print per-metric aggregates across devices (and exit unless receiving).")
@click.option("--duration", type=float, help="Stop receiving after this many seconds.")
@json_option
@pass_app
def collector_cmd(app: AppContext, listen: str | None, db: str, enroll: tuple[str, ...],
                  mqtt_url: str | None, topic: str | None, share_group: str | None,
                  client_id: str | None, ca_file: Path | None, tls_cert: Path | None,
                  tls_key: Path | None, token_file: Path | None, max_connections: int,
                  header_timeout: float, window_s: float, aggregate: bool,
                  duration: float | None) -> None:
    """Reference receiver of DP releases: verify, de-duplicate, store, aggregate."""
    from edgetwin.sync.collector import Collector

    if (mqtt_url is None) != (topic is None):
        raise UsageError("--mqtt and --topic go together")
    if (share_group or client_id) and mqtt_url is None:
        raise UsageError("--share and --client-id need --mqtt and --topic")
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    token = _token(token_file)
    collector = Collector(db, window_s=window_s)
    try:
        for key in enroll:
            kid = collector.enroll(key)
            if not app.as_json:
                click.echo(f"enrolled device {kid}")
        if listen is not None or mqtt_url is not None:
            _serve(app, collector, listen=listen, mqtt_url=mqtt_url, topic=topic,
                   share_group=share_group, client_id=client_id, ca_file=ca_file,
                   tls_cert=tls_cert, tls_key=tls_key, token=token,
                   max_connections=max_connections, header_timeout=header_timeout,
                   duration=duration)
        if aggregate:
            rows = collector.aggregates()
            # rounds of 'edgetwin aggregator' (secure aggregation) in the same SQLite file
            from edgetwin.cli.aggregator import print_rounds

            if not app.as_json:
                _print_aggregates(rows)
            secagg = print_rounds(db, app.as_json) if "://" not in db else []
            if app.as_json:
                emit_json({"aggregates": rows, "counts": collector.counts(),
                           "secagg_rounds": secagg})
    finally:
        collector.close()


def _token(token_file: Path | None) -> str | None:
    """The aggregates bearer token: from a file (never the command line, which ps shows)."""
    if token_file is not None:
        token = token_file.read_text("utf-8").strip()
        if not token:
            raise UsageError(f"--token-file {token_file} is empty",
                             hint="write a long random token into it, e.g. "
                                  "'openssl rand -hex 32 > token'")
        return token
    env = os.environ.get(TOKEN_ENV, "").strip()
    return env or None


def _serve(app: AppContext, collector: Any, *, listen: str | None, mqtt_url: str | None,
           topic: str | None, share_group: str | None, client_id: str | None,
           ca_file: Path | None, tls_cert: Path | None, tls_key: Path | None,
           token: str | None, max_connections: int, header_timeout: float,
           duration: float | None) -> None:
    from edgetwin.sync.collector import CollectorMqtt

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server: Any = None
    subscriber: Any = None
    try:
        if listen is not None:
            try:
                from edgetwin.sync.collector.server import CollectorHTTPServer, HttpLimits
            except ImportError as exc:
                raise UsageError(f"the HTTP collector needs aiohttp: {exc}",
                                 hint="pip install 'edgetwin[collector]'") from exc
            host, _, port = listen.rpartition(":")
            limits = HttpLimits(max_connections=max_connections, header_timeout_s=header_timeout,
                                body_timeout_s=header_timeout,
                                handshake_timeout_s=header_timeout)
            try:
                server = CollectorHTTPServer((host.strip("[]") or "127.0.0.1", int(port)),
                                             collector, tls_cert=tls_cert, tls_key=tls_key,
                                             token=token, limits=limits)
            except (ValueError, OSError) as exc:
                raise UsageError(f"--listen {listen}: {exc}", hint="use HOST:PORT") from exc
            server.start()
            scheme = "https" if tls_cert else "http"
            where = f"{scheme}://{host or '127.0.0.1'}:{server.port}"
            if app.as_json:
                emit_json({"listening": where, "aggregates_auth": token is not None})
            else:
                click.echo(f"collector storing in {collector.where}")
                click.echo(f"collector listening on {where}")
        if mqtt_url is not None and topic is not None:
            subscriber = CollectorMqtt(collector, mqtt_url, topic,
                                       ca_file=str(ca_file) if ca_file else None,
                                       client_id=client_id, share_group=share_group)
            subscriber.start()
            # Say "subscribed" only once the broker confirmed it: a message published to a
            # shared subscription without members is lost.
            if not subscriber.subscribed.wait(15):
                raise UplinkError(f"collector: {mqtt_url} did not confirm the subscription to "
                                  f"{subscriber.subscription} within 15 s",
                                  hint="check the broker's log and access rules")
            if not app.as_json:
                click.echo(f"collector subscribed to {mqtt_url} topic {subscriber.subscription}")
        sys.stdout.flush()
        deadline = None if duration is None else time.monotonic() + duration
        try:
            while not stop.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                stop.wait(0.5 if left is None else min(0.5, left))
        except KeyboardInterrupt:
            pass
    finally:
        if server is not None:
            server.stop()
        if subscriber is not None:
            subscriber.stop()
        signal.signal(signal.SIGTERM, previous)


def _period(t: float, period: str) -> str:
    """A release's UTC period, e.g. ``2026-12-01`` (day) or ``2026-12-01 14:00Z`` (hour)."""
    when = datetime.fromtimestamp(t, UTC)
    return when.strftime("%Y-%m-%d") if period == "day" else when.strftime("%Y-%m-%d %H:%MZ")


def _print_aggregates(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("no releases yet")
        return
    click.echo(f"{'metric':<16} {'period':<6} {'start':<17} {'devices':>7} {'mean':>10} "
               f"{'95% CI (noise)':>22}")
    for r in rows:
        lo, hi = r["ci95"]
        period = _period(r["period_start"], r["period"])
        click.echo(f"{r['metric']:<16} {r['period']:<6} {period:<17} "
                   f"{r['devices']:>7} {r['mean']:>10.2f} {f'[{lo:.1f}, {hi:.1f}]':>22} "
                   f"{r['unit']}")
