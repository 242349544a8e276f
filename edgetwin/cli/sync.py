"""``edgetwin consent``, ``sync`` and ``collector``: thin wiring over privacy and sync."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgetwin.cli.common import AppContext, SuggestingGroup, emit_json, json_option, pass_app
from edgetwin.errors import BudgetExhausted, UplinkError

if TYPE_CHECKING:
    from edgetwin.config import Config
    from edgetwin.store import TwinStore


@contextlib.contextmanager
def _twin(app: AppContext) -> Iterator[tuple[TwinStore, Config]]:
    from edgetwin.cli.unlock import open_twin_from_app

    config = app.config()
    store = open_twin_from_app(app)
    try:
        yield store, config
    finally:
        store.close()


def _when(t: float | None) -> str:
    """An instant in local time with its offset, as every command prints them."""
    from edgetwin.cli.common import format_time

    return "-" if t is None else format_time(t)


def _period(t: float, period: str) -> str:
    """A release's UTC period, e.g. ``2026-12-01`` (day) or ``2026-12-01 14:00Z`` (hour)."""
    when = datetime.fromtimestamp(t, UTC)
    return when.strftime("%Y-%m-%d") if period == "day" else when.strftime("%Y-%m-%d %H:%MZ")


# -- consent -------------------------------------------------------------------


@click.group("consent", cls=SuggestingGroup)
def consent_group() -> None:
    """Which summaries may leave this device (default: none)."""


@consent_group.command("list")
@json_option
@pass_app
def consent_list(app: AppContext) -> None:
    """Every metric and whether its DP summary may leave."""
    from edgetwin.privacy.consent import list_consents
    from edgetwin.privacy.metrics import METRICS

    with _twin(app) as (store, config):
        consents = list_consents(store, config.privacy.period)
    if app.as_json:
        emit_json([c.to_json() for c in consents])
        return
    click.echo(f"{'metric':<17} {'unit':<9} {'granted':<8} {'period':<7} since")
    for c in consents:
        since = _when(c.granted_at) if c.granted else "-"
        unit = "fraction" if METRICS[c.metric].unit == "1" else METRICS[c.metric].unit
        click.echo(f"{c.metric:<17} {unit:<9} {'yes' if c.granted else 'no':<8} "
                   f"{c.period:<7} {since}")


@consent_group.command("grant")
@click.argument("metric")
@click.option("--period", type=click.Choice(["day", "hour"]), default="day", show_default=True,
              help="One release per UTC day or hour.")
@json_option
@pass_app
def consent_grant(app: AppContext, metric: str, period: str) -> None:
    """Allow differentially private summaries of METRIC to leave (audited)."""
    from edgetwin.privacy.consent import grant

    with _twin(app) as (store, _config):
        c = grant(store, metric, period, time.time())
    if app.as_json:
        emit_json(c.to_json())
    else:
        click.echo(f"consent granted: {metric} per {period} (revoke with "
                   f"'edgetwin consent revoke {metric}')")


@consent_group.command("revoke")
@click.argument("metric")
@json_option
@pass_app
def consent_revoke(app: AppContext, metric: str) -> None:
    """Stop METRIC from leaving; its unsent releases are cancelled (audited)."""
    from edgetwin.sync.service import revoke_consent

    with _twin(app) as (store, _config):
        c, cancelled = revoke_consent(store, metric, time.time())
    if app.as_json:
        emit_json({**c.to_json(), "cancelled": cancelled})
    else:
        click.echo(f"consent revoked: {metric}; {cancelled} unsent release(s) cancelled")


# -- sync ----------------------------------------------------------------------


@click.group("sync", cls=SuggestingGroup)
def sync_group() -> None:
    """Differentially private summaries: where they go, release, upload, budget."""


@sync_group.command("configure")
@click.option("--url", help="HTTPS collector URL (http:// only to loopback, with the flag below).")
@click.option("--mqtt", "mqtt_url",
              help="MQTT broker URL: mqtts://HOST[:PORT] (or mqtt:// on loopback).")
@click.option("--topic", help="MQTT topic to publish releases on.")
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False, path_type=Path),
              help="PEM CA certificate that signed the collector's or broker's certificate.")
@click.option("--allow-insecure-loopback", is_flag=True,
              help="Allow plain http:// or mqtt:// to a loopback address (tests, local demo).")
@json_option
@pass_app
def sync_configure(app: AppContext, url: str | None, mqtt_url: str | None, topic: str | None,
                   ca_file: Path | None, allow_insecure_loopback: bool) -> None:
    """Set where releases go (an encrypted record; audited)."""
    from edgetwin.sync.target import parse_target, save_target

    target = parse_target(url=url, mqtt=mqtt_url, topic=topic, ca_file=ca_file,
                          allow_insecure_loopback=allow_insecure_loopback)
    with _twin(app) as (store, _config):
        save_target(store, target)
    if app.as_json:
        emit_json(target.to_record())
    else:
        click.echo(f"sync target: {target.describe()}")


@sync_group.command("device-key")
@json_option
@pass_app
def sync_device_key(app: AppContext) -> None:
    """Print this device's Ed25519 public key (enroll it at the collector)."""
    from edgetwin.sync.signing import load_or_create

    with _twin(app) as (store, _config):
        key = load_or_create(store)
    if app.as_json:
        emit_json({"public_key": key.public_b64, "key_id": key.key_id})
    else:
        click.echo(key.public_b64)


@sync_group.command("run")
@click.option("--retry-now", is_flag=True, help="Ignore the backoff schedule of pending uploads.")
@click.option("--retry-failed", is_flag=True, help="Re-queue uploads the collector refused.")
@click.option("--no-upload", is_flag=True, help="Only release into the outbox; upload later.")
@json_option
@pass_app
def sync_run(app: AppContext, retry_now: bool, retry_failed: bool, no_upload: bool) -> None:
    """Release what is due for consented metrics within budget, then drain the outbox."""
    from edgetwin.privacy.secagg import prepare_due
    from edgetwin.sync import outbox
    from edgetwin.sync.service import OutboxReport, drain_outbox, release_due
    from edgetwin.sync.target import load_target

    now = time.time()
    with _twin(app) as (store, config):
        released = release_due(store, config, now)
        # metrics in secagg mode: a sealed share per period, charged now, sent in a Flower round
        shares = prepare_due(store, config, now)
        requeued = outbox.requeue_failed(store, now) if retry_failed else 0
        drained = OutboxReport()
        target = load_target(store)
        if not no_upload and target is not None:
            drained = drain_outbox(store, config, now, retry_now=retry_now or retry_failed)
        pending = outbox.status(store).counts["pending"]
    if app.as_json:
        emit_json({**released.to_json(), "requeued": requeued, "upload": drained.to_json(),
                   "pending": pending, "target": target.describe() if target else None,
                   "secagg": shares.to_json()})
    else:
        if shares.prepared or shares.refused:
            click.echo(f"secure-aggregation shares prepared {len(shares.prepared)}, "
                       f"refused {len(shares.refused)}")
        click.echo(f"released {len(released.released)}, refused {len(released.refused)}, "
                   f"periods without enough data {released.no_data}")
        for line in _why_lines(released):
            click.echo(line)
        click.echo(f"uploaded {drained.sent} (+{drained.duplicates} already there), "
                   f"failed {drained.failed}, waiting {pending}")
        if target is None:
            click.echo("no sync target: releases wait in the outbox "
                       "(edgetwin sync configure --url ...)")
    if released.refused:
        first = released.refused[0]
        raise BudgetExhausted(f"{len(released.refused)} due release(s) refused: {first.reason}")
    if shares.refused:
        raise BudgetExhausted(f"{len(shares.refused)} secure-aggregation share(s) refused: "
                              f"{shares.refused[0]}")
    if drained.errors:
        raise UplinkError(f"upload incomplete: {drained.first_error}",
                          hint="releases stay in the outbox; see 'edgetwin sync status'")


def _why_lines(report: Any) -> list[str]:
    """Per consented metric: what was released, why nothing (more) was, when the next is due."""
    from edgetwin.cli.common import format_period, format_time

    if not report.metrics:
        return ["no release: no metric has consent to leave this device "
                "(see 'edgetwin consent list'; 'edgetwin consent grant METRIC')"]
    lines = []
    for m in report.metrics:
        head = f"  {m.metric} (per {m.period}):"
        if m.released:
            charged = ", ".join(format_period(t, m.accounting) for t in m.charged_to)
            lines.append(f"{head} released {m.released}; budget charged to {charged}")
        if m.refused:
            lines.append(f"{head} {m.refused} refused: the privacy budget is spent "
                         "(see 'edgetwin sync budget')")
        if m.too_little_data:
            t, n = m.too_little_data[-1]
            lines.append(
                f"{head} {len(m.too_little_data)} {m.period}(s) not released: not enough usable "
                f"data (latest: {format_period(t, m.period)}, {n} usable frames, "
                f"{m.min_frames} needed)")
        lines.append(
            f"{head} {format_period(m.waiting_start, m.period)} is not complete until "
            f"{format_time(m.waiting_end)}; next release due {format_time(m.next_due)}")
    return lines


@sync_group.command("status")
@json_option
@pass_app
def sync_status(app: AppContext) -> None:
    """Outbox: pending, sent and failed uploads; the target."""
    from edgetwin.sync import outbox
    from edgetwin.sync.target import load_target

    with _twin(app) as (store, _config):
        st = outbox.status(store)
        target = load_target(store)
    doc = {**st.to_json(), "target": target.describe() if target else None}
    if app.as_json:
        emit_json(doc)
        return
    click.echo(f"target: {doc['target'] or 'not configured'}")
    click.echo(f"pending {doc['pending']}, sent {doc['sent']}, failed {doc['failed']}, "
               f"cancelled {doc['cancelled']}")
    for e in st.unsent:
        extra = f"next try {_when(e.next_try)}" if e.state == "pending" else ""
        period = _period(e.release["period_start"], e.release["period"])
        click.echo(f"  {e.state:<8} {e.metric:<16} {period} "
                   f"attempts {e.attempts} {extra} {e.last_error or ''}".rstrip())


@sync_group.command("budget")
@json_option
@pass_app
def sync_budget(app: AppContext) -> None:
    """Spent and remaining epsilon: this period, every period a release was charged to, lifetime."""
    from edgetwin.cli.common import format_period
    from edgetwin.privacy.accountant import ledger, status

    with _twin(app) as (store, config):
        st = status(store, config.privacy, time.time())
        records = ledger(store)
    # A release is charged to the periods its data window covers, not to today's.
    charged: list[dict[str, Any]] = sorted(
        ({"period": str(r["period"]), "period_start": float(r["start"]),
          "spent": float(r["spent"]),
          "remaining": max(0.0, st.epsilon_per_period - float(r["spent"]))}
         for r in records.values() if "period" in r and "start" in r),
        key=lambda c: (c["period_start"], c["period"]),
    )
    if app.as_json:
        emit_json({**st.to_json(), "charged": charged})
        return
    click.echo(f"this {st.period} ({format_period(st.period_start, st.period)}): spent "
               f"{st.epsilon_spent:g}, remaining {st.epsilon_remaining:g} of "
               f"{st.epsilon_per_period:g}")
    if charged:
        click.echo("charged to:")
        for c in charged:
            click.echo(f"  {format_period(c['period_start'], c['period']):<30} spent "
                       f"{c['spent']:g}, remaining {c['remaining']:g} of "
                       f"{st.epsilon_per_period:g}")
    else:
        click.echo("nothing charged yet")
    click.echo(f"lifetime: spent {st.lifetime_spent:g}, remaining {st.lifetime_remaining:g} "
               f"of {st.epsilon_lifetime:g}")


def _register_secagg() -> None:
    # the device's Flower SuperNode for secure-aggregation rounds (edgetwin.cli.aggregator)
    from edgetwin.cli.aggregator import secagg_join_cmd

    sync_group.add_command(secagg_join_cmd)


_register_secagg()
