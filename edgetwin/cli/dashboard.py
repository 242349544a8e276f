"""``edgetwin dashboard``: the dashboard from the stored twin, or the running daemon's URL."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgetwin.cli.common import AppContext, emit_json, json_option, pass_app
from edgetwin.errors import UsageError

if TYPE_CHECKING:
    from edgetwin.config import Config, DashboardConfig
    from edgetwin.store.twin import TwinStore


@click.command("dashboard")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Listen on this port instead of [dashboard] port (0: any free port).")
@click.option("--duration", type=float, default=None,
              help="Stop after S seconds [default: until Ctrl-C].")
@json_option
@pass_app
def dashboard_cmd(app: AppContext, port: int | None, duration: float | None) -> None:
    """Serve the dashboard and print its URL with the access token (open it once; a cookie
    keeps you in). With the daemon running, print the daemon's dashboard URL instead."""
    from edgetwin.daemon import control
    from edgetwin.web.security import load_or_create_token

    home = app.require_home()
    config = app.config()
    settings = config.dashboard
    if port is not None:
        settings = dataclasses.replace(settings, port=port)
    if control.daemon_running(home):
        if not config.dashboard.enabled:
            raise UsageError(
                "the daemon runs without its dashboard ([dashboard] enabled = false)",
                hint="set enabled = true in config.toml and restart the daemon, or stop it",
            )
        from edgetwin.web.security import is_loopback

        token = load_or_create_token(home)
        host = config.dashboard.host if is_loopback(config.dashboard.host) else "127.0.0.1"
        scheme = "https" if config.dashboard.tls_cert else "http"
        url = f"{scheme}://{host}:{config.dashboard.port}/?token={token}"
        if not _listening(host, config.dashboard.port):
            raise UsageError(
                f"the daemon runs, but nothing listens on {host}:{config.dashboard.port}",
                hint="its log says why (another program on the port?); set [dashboard] port "
                     "and restart the daemon",
            )
        _say(app, url, served_by="daemon")
        return
    from edgetwin.cli.unlock import open_twin_from_app

    with open_twin_from_app(app) as store:
        asyncio.run(_serve(app, home, store, config, settings, duration))


async def _serve(app: AppContext, home: Path, store: TwinStore, config: Config,
                 settings: DashboardConfig, duration: float | None) -> None:
    from edgetwin.web.app import Dashboard, StoreBackend

    dash = Dashboard(home, StoreBackend(store, config), settings)
    await dash.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        _say(app, dash.url, served_by="store")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
    finally:
        await dash.stop()


def _say(app: AppContext, url: str, *, served_by: str) -> None:
    if app.as_json:
        emit_json({"url": url, "served_by": served_by})
    elif served_by == "daemon":
        click.echo(f"the daemon serves the dashboard: open {url}")
    else:
        click.echo(f"dashboard of the stored twin (no daemon running): open {url}")
        click.echo("Ctrl-C to stop", err=True)
    sys.stdout.flush()


def _listening(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False
