"""``edgetwin init``, ``keys``, ``forget``, ``audit`` and ``verify``: thin wiring over the store."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgetwin.cli.common import AppContext, emit_json, format_value, json_option, pass_app
from edgetwin.errors import DaemonNotRunning, DataCorrupt, UsageError

if TYPE_CHECKING:
    from edgetwin.store import TwinStore


@contextlib.contextmanager
def _twin(app: AppContext, *, strict: bool = True) -> Iterator[TwinStore]:
    from edgetwin.bundle.staging import remove_leftovers
    from edgetwin.cli.unlock import read_secret
    from edgetwin.store import TwinStore

    home = app.require_home()
    store = TwinStore.open(home, read_secret(app), strict=strict)
    try:
        remove_leftovers(home)  # what a killed export or import left, as at every unlock
        yield store
    finally:
        store.close()


def _when(t: float | None) -> str:
    if t is None or not math.isfinite(t):
        return "-"
    from edgetwin.cli.common import format_time

    return format_time(t)


# -- init ----------------------------------------------------------------------


@click.command("init")
@click.option(
    "--keyfile-new",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Create a random 32-byte key file (mode 0600) at PATH and lock the twin with it "
    "instead of a passphrase (unattended boot). Keep it off the twin's disk.",
)
@click.option(
    "--kdf-profile",
    type=click.Choice(["default", "test"]),
    default=None,
    hidden=True,
    help="Argon2id cost; 'test' is for throw-away twins in test suites only.",
)
@json_option
@pass_app
def init_cmd(app: AppContext, keyfile_new: Path | None, kdf_profile: str | None) -> None:
    """Create a twin: keys, config and an empty encrypted store."""
    from edgetwin.cli.unlock import read_secret
    from edgetwin.config import CONFIG_FILE, default_config_text
    from edgetwin.store import KdfParams, Secret, TwinStore, new_keyfile
    from edgetwin.store.keys import atomic_replace

    home = app.home
    made_keyfile = False
    if keyfile_new is not None:
        if app.keyfile is not None:
            raise UsageError("use either --keyfile or --keyfile-new, not both")
        new_keyfile(keyfile_new)
        made_keyfile = True
        secret = Secret.keyfile(keyfile_new)
    else:
        secret = read_secret(app, create=True)
    kdf = {"test": KdfParams.for_tests(), "default": KdfParams.default()}.get(kdf_profile or "")
    try:
        store = TwinStore.create(home, secret, kdf=kdf)
    except BaseException:
        if made_keyfile and keyfile_new is not None:
            keyfile_new.unlink(missing_ok=True)
        raise
    try:
        config = home / CONFIG_FILE
        if not config.exists():
            atomic_replace(config, default_config_text().encode("utf-8"))
        params = store.kdf_params()
        info = {
            "home": str(home),
            "twin_id": store.twin_id,
            "slots": store.slots(),
            "kdf": params.to_json() if params is not None else None,
            "keyfile": str(keyfile_new) if keyfile_new is not None else None,
        }
    finally:
        store.close()
    if app.as_json:
        emit_json(info)
        return
    click.echo(f"Created twin {store.twin_id[:12]} in {home}")
    if keyfile_new is not None:
        click.echo(
            f"Key file: {keyfile_new} — keep it on separate media (or in a systemd credential); "
            "without it the twin cannot be opened."
        )
    click.echo("Back up keystore.json: without it (and your secret) the data is unrecoverable.")


# -- keys ----------------------------------------------------------------------


@click.group("keys")
def keys_group() -> None:
    """Passphrase, key file and data-key changes."""


@keys_group.command("change-passphrase")
@click.option(
    "--new-passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the new passphrase from this file instead of prompting.",
)
@json_option
@pass_app
def change_passphrase_cmd(app: AppContext, new_passphrase_file: Path | None) -> None:
    """Re-wrap the master key under a new passphrase; no data is re-encrypted."""
    from edgetwin.store import Secret, read_passphrase_file

    with _twin(app) as store:
        if new_passphrase_file is not None:
            new = Secret.passphrase(read_passphrase_file(new_passphrase_file))
        else:
            from edgetwin.cli.unlock import ask_hidden

            new = Secret.passphrase(ask_hidden(
                "New passphrase", confirm="Repeat the new passphrase", what="a new passphrase",
                hint="use --new-passphrase-file",
            ))
        store.change_secret(new)
        slots = store.slots()
    if app.as_json:
        emit_json({"changed": "passphrase", "slots": slots})
    else:
        click.echo("Passphrase changed; the data keys were re-wrapped, no data was touched.")


@keys_group.command("add-keyfile")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--new", "create", is_flag=True, help="Create PATH with 32 random bytes first.")
@json_option
@pass_app
def add_keyfile_cmd(app: AppContext, path: Path, create: bool) -> None:
    """Let a key file unlock the twin too (e.g. for unattended boot)."""
    from edgetwin.store import Secret, new_keyfile

    with _twin(app) as store:
        if create:
            new_keyfile(path)
        store.change_secret(Secret.keyfile(path))
        slots = store.slots()
    if app.as_json:
        emit_json({"added": "keyfile", "path": str(path), "slots": slots})
    else:
        click.echo(f"Key file {path} now unlocks the twin; slots: {', '.join(slots)}")


@keys_group.command("remove")
@click.argument("kind", type=click.Choice(["passphrase", "keyfile"]))
@json_option
@pass_app
def remove_slot_cmd(app: AppContext, kind: str) -> None:
    """Stop accepting a passphrase or a key file (the last way in cannot be removed)."""
    with _twin(app) as store:
        store.remove_slot(kind)
        slots = store.slots()
    if app.as_json:
        emit_json({"removed": kind, "slots": slots})
    else:
        click.echo(f"The {kind} no longer unlocks the twin; slots: {', '.join(slots)}")


@keys_group.command("rotate")
@click.option(
    "--reencrypt",
    is_flag=True,
    help="Also re-encrypt all stored data under the new keys and destroy the old ones.",
)
@json_option
@pass_app
def rotate_cmd(app: AppContext, reencrypt: bool) -> None:
    """Start new data keys; old data stays under its keys unless --reencrypt."""
    with _twin(app) as store:
        report = store.rotate_keys(reencrypt=reencrypt)
    if app.as_json:
        emit_json({"rotated": True, "reencrypt": reencrypt, **report.to_json()})
        return
    click.echo("New data keys start now.")
    if reencrypt:
        click.echo(
            f"Re-encrypted {report.chunks_reencrypted} chunks; destroyed "
            f"{report.keys_destroyed} old keys."
        )
    else:
        click.echo("Stored data keeps its old keys until retention or a forget removes it.")


@keys_group.command("info")
@json_option
@pass_app
def keys_info_cmd(app: AppContext) -> None:
    """Which secrets unlock the twin and the passphrase's Argon2id parameters."""
    with _twin(app) as store:
        params = store.kdf_params()
        info: dict[str, Any] = {
            "twin_id": store.twin_id,
            "slots": store.slots(),
            "kdf": params.to_json() if params is not None else None,
        }
    if app.as_json:
        emit_json(info)
        return
    click.echo(f"twin {info['twin_id']}")
    click.echo(f"unlocks with: {', '.join(info['slots'])}")
    if params is not None:
        click.echo(
            f"passphrase KDF: argon2id, {params.memory_kib} KiB, "
            f"{params.iterations} passes, {params.lanes} lanes"
        )


# -- forget --------------------------------------------------------------------


@click.command("forget")
@click.option("--stream", "stream", metavar="NAME",
              help="Forget one stream entirely, or a marker source (cli, xdf:<name>, lsl:<name>).")
@click.option(
    "--before",
    "before",
    metavar="DATE",
    help="Forget all time series before DATE (YYYY-MM-DD or ISO 8601; UTC unless it says).",
)
@click.option("--all", "everything", is_flag=True, help="Forget all data and records.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_app
def forget_cmd(
    app: AppContext, stream: str | None, before: str | None, everything: bool, yes: bool
) -> None:
    """Crypto-shred: destroy the data keys, then the rows; there is no undo."""
    if sum((stream is not None, before is not None, everything)) != 1:
        raise UsageError("give exactly one of --stream NAME, --before DATE or --all")
    cutoff = parse_date(before) if before is not None else None
    what = (
        f"stream {stream!r}"
        if stream is not None
        else f"everything before {_when(cutoff)}"
        if cutoff is not None
        else "ALL data and records"
    )
    if not yes:
        try:
            click.confirm(f"Forget {what}? This cannot be undone", abort=True, err=True)
        except click.Abort as exc:
            hint = "add --yes to skip the question"
            raise UsageError("nothing was forgotten", hint=hint) from exc
    with _twin(app) as store:  # unlocking proves the caller may forget, daemon or not
        try:
            # A running daemon forgets through its own store handle, after committing what it
            # has buffered, so nothing it held in memory outlives the forget.
            from edgetwin.daemon import control

            reply = control.request_proven(
                app.require_home(),
                {"cmd": "forget", "stream": stream, "before": cutoff, "all": everything},
                store.control_proof,
                timeout=300,
            )
            report = reply["forget"]
        except DaemonNotRunning:
            report = store.forget(stream=stream, before=cutoff, everything=everything).to_json()
    if app.as_json:
        emit_json(report)
        return
    shredded = report.get("frames_shredded", 0)
    click.echo(
        f"Forgot {what}: destroyed {report['keys_destroyed']} data keys, "
        f"{report['chunks_deleted']} chunks ({report['samples_deleted']} samples, "
        f"{report['frames_deleted']} frames, {report['predictions_deleted']} predictions), "
        f"{report['records_deleted']} records."
        # what was computed from the forgotten data: shredded, not recomputed (README)
        + (f" Feature values it fed were shredded from {shredded} frames; forecasts and "
           "summaries that read them were deleted." if shredded else "")
    )


def parse_date(text: str) -> float:
    """Epoch seconds of ``YYYY-MM-DD`` (UTC midnight), an ISO 8601 time, or a number."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(
            f"cannot read the date {text!r}", hint="use YYYY-MM-DD or e.g. 2025-01-31T12:00+01:00"
        ) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


# -- audit and verify ------------------------------------------------------------


@click.command("audit")
@click.option("--verify", "check", is_flag=True, help="Check the hash chain; exit 4 if broken.")
@json_option
@pass_app
def audit_cmd(app: AppContext, check: bool) -> None:
    """The tamper-evident log of inits, unlock failures, exports, syncs, forgets, key changes."""
    with _twin(app) as store:
        entries = store.audit_entries(on_corrupt="skip")
        problems = store.verify_audit() if check else []
    if app.as_json:
        emit_json(
            {
                "entries": entries,
                "verified": (not problems) if check else None,
                "problems": [p.to_json() for p in problems],
            }
        )
    else:
        for e in entries:
            details = " ".join(
                f"{k}={format_value(k, v)}" for k, v in (e.get("details") or {}).items()
            )
            click.echo(f"{e['seq']:>5}  {_when(e.get('t'))}  {e.get('event')!s:<14} {details}")
        if check:
            if problems:
                for p in problems:
                    click.echo(f"DAMAGE: {p}", err=True)
            else:
                click.echo(f"audit chain intact ({len(entries)} entries)")
    if problems:
        raise DataCorrupt(
            f"the audit log is damaged: {len(problems)} problem(s)",
            hint="entries were edited, deleted or reordered; see above",
        )


@click.command("verify")
@json_option
@pass_app
def verify_cmd(app: AppContext) -> None:
    """Decrypt and check the whole twin; list every damaged stream and time range."""
    with _twin(app, strict=False) as store:
        report = store.verify()
    if app.as_json:
        emit_json(report.to_json())
    else:
        checked = ", ".join(f"{v} {k}" for k, v in sorted(report.checked.items()))
        click.echo(f"checked: {checked or 'nothing'}")
        for p in report.problems:
            click.echo(f"DAMAGE: {p}")
        if report.ok:
            click.echo("twin intact")
    if not report.ok:
        raise DataCorrupt(
            f"the twin is damaged: {len(report.problems)} problem(s)",
            hint="the rest stays readable; restore damaged parts from an export bundle",
        )
