"""``edgetwin export`` and ``edgetwin import``: encrypted twin bundles (age format).

Two different secrets meet here: the twin's own (global ``--passphrase-file``
/ ``--keyfile``, or a prompt) unlocks or creates the local twin; the
*bundle* passphrase (``--passphrase`` with ``--bundle-passphrase-file`` /
``EDGETWIN_BUNDLE_PASSPHRASE_FILE``, or a prompt) encrypts the bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgetwin.cli.common import AppContext, emit_json, is_tty, json_option, pass_app
from edgetwin.errors import UsageError

_BUNDLE_PASS_ENV = "EDGETWIN_BUNDLE_PASSPHRASE_FILE"  # noqa: S105 - an env var name, not a secret


def _bundle_passphrase_option(f: Any) -> Any:
    return click.option(
        "--bundle-passphrase-file",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar=_BUNDLE_PASS_ENV,
        default=None,
        help=f"Read the bundle passphrase from this file [env {_BUNDLE_PASS_ENV}] "
        "(not the twin's own: that is the global --passphrase-file).",
    )(f)


def _limit_option(f: Any) -> Any:
    return click.option(
        "--passphrase-limit-mb",
        type=click.IntRange(min=1),
        default=256,
        show_default=True,
        help="Largest passphrase bundle (encrypted in memory; recipient bundles have no limit).",
    )(f)


@click.command("export")
@click.option("-o", "--output", "output", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="The file to write: the bundle, or the JSON of --format fhir/omh.")
@click.option("--recipient", "recipients", multiple=True, metavar="AGE_PUBKEY",
              help="Encrypt to this age public key (age1...); repeat for more.")
@click.option("--passphrase", "use_passphrase", is_flag=True,
              help="Encrypt with a passphrase (age scrypt) instead of recipients.")
@_bundle_passphrase_option
@click.option("--from", "t_from", default=None, help="Only samples from (epoch s, ISO, -2h).")
@click.option("--to", "t_to", default=None, help="Only samples up to (epoch s, ISO, -5m).")
@click.option("--streams", "streams", multiple=True,
              help="Only these streams (comma-separated or repeated) [default: all].")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@_limit_option
@click.option("--format", "fmt", type=click.Choice(["bundle", "fhir", "omh"], case_sensitive=False),
              default="bundle", show_default=True,
              help="bundle: the whole twin, encrypted; fhir: a FHIR R4 Bundle of Observations; "
              "omh: Open mHealth data points (both JSON, plain unless --recipient/--passphrase).")
@click.option("--every", default=None, metavar="5m|1h|raw",
              help="fhir/omh: the mean over windows of this length, or raw (one value per "
              "feature frame) [default: 5m].")
@click.option("--with-forecasts", is_flag=True,
              help="fhir: add the forecasts as preliminary Observations marked 'forecast'.")
@click.option("--with-location", is_flag=True,
              help="bundle: include location (.location streams, place, home distance, learned "
              "places); left out by default, and the manifest says so.")
@json_option
@pass_app
def export_cmd(
    app: AppContext,
    output: Path,
    recipients: tuple[str, ...],
    use_passphrase: bool,
    bundle_passphrase_file: Path | None,
    t_from: str | None,
    t_to: str | None,
    streams: tuple[str, ...],
    force: bool,
    passphrase_limit_mb: int,
    fmt: str,
    every: str | None,
    with_forecasts: bool,
    with_location: bool,
) -> None:
    """Write the twin as one age-encrypted bundle of open formats (EDF+, SNIRF, CSV, JSON),
    or its vital signs as FHIR R4 / Open mHealth JSON (--format)."""
    from edgetwin.bundle import export_bundle
    from edgetwin.cli.data import parse_time
    from edgetwin.cli.unlock import open_twin_from_app

    fmt = fmt.lower()
    if fmt != "bundle" and with_location:
        raise UsageError("--with-location goes with the twin bundle (--format bundle)",
                         hint="FHIR and Open mHealth exports never carry location")
    if fmt != "bundle":
        _export_interop(app, output, fmt=fmt, every=every, with_forecasts=with_forecasts,
                        recipients=recipients, use_passphrase=use_passphrase,
                        bundle_passphrase_file=bundle_passphrase_file, t_from=t_from, t_to=t_to,
                        streams=streams, force=force, limit_mb=passphrase_limit_mb)
        return
    if every is not None or with_forecasts:
        raise UsageError(
            f"{'--every' if every is not None else '--with-forecasts'} goes with --format fhir "
            "or omh", hint="a twin bundle holds every frame and forecast as they are",
        )
    if bool(recipients) == use_passphrase:
        raise UsageError("give either --recipient AGE_PUBKEY (one or more) or --passphrase")
    t0 = parse_time(t_from, option="--from")
    t1 = parse_time(t_to, option="--to")
    only = [s.strip() for group in streams for s in group.split(",") if s.strip()] or None
    app.require_home()
    passphrase = (
        _bundle_passphrase(bundle_passphrase_file, confirm=True) if use_passphrase else None
    )
    with open_twin_from_app(app) as store:
        report = export_bundle(
            store,
            output,
            recipients=list(recipients) if recipients else None,
            passphrase=passphrase,
            t0=t0,
            t1=t1,
            streams=only,
            force=force,
            passphrase_limit=passphrase_limit_mb * 1024 * 1024,
            progress=_progress(app),
            with_location=with_location,
        )
    if app.as_json:
        emit_json(report.to_json())
        return
    click.echo(
        f"exported {len(report.streams)} stream(s), {report.frames} frames, "
        f"{report.predictions} predictions, {report.records} records to {report.path} "
        f"({report.bytes / 1e6:.1f} MB, {report.mode}) in {report.seconds:.1f} s"
    )
    for s in report.streams:
        click.echo(f"  {s['name']}: {s['format'].upper()}, {s['samples']} samples ({s['why']})")


def _export_interop(
    app: AppContext, output: Path, *, fmt: str, every: str | None, with_forecasts: bool,
    recipients: tuple[str, ...], use_passphrase: bool, bundle_passphrase_file: Path | None,
    t_from: str | None, t_to: str | None, streams: tuple[str, ...], force: bool, limit_mb: int,
) -> None:
    """``export --format fhir|omh``: the timeline as JSON, age-encrypted on request."""
    from edgetwin.cli.data import parse_time
    from edgetwin.cli.unlock import open_twin_from_app
    from edgetwin.interop.export import export_interop
    from edgetwin.interop.windows import DEFAULT_EVERY, parse_every

    if streams:
        raise UsageError(f"--streams goes with twin bundles, not --format {fmt}",
                         hint="FHIR and Open mHealth exports are made from the feature timeline")
    if recipients and use_passphrase:
        raise UsageError("give either --recipient AGE_PUBKEY or --passphrase, not both")
    seconds = parse_every(every)
    t0 = parse_time(t_from, option="--from")
    t1 = parse_time(t_to, option="--to")
    app.require_home()
    step_s = app.config().twin.step_s
    passphrase = (
        _bundle_passphrase(bundle_passphrase_file, confirm=True) if use_passphrase else None
    )
    with open_twin_from_app(app) as store:
        report = export_interop(
            store, output, fmt=fmt, every=seconds, every_text=(every or DEFAULT_EVERY).lower(),
            step_s=step_s, t0=t0, t1=t1, with_forecasts=with_forecasts,
            recipients=list(recipients) if recipients else None, passphrase=passphrase,
            force=force, passphrase_limit=limit_mb * 1024 * 1024, progress=_progress(app),
        )
    if app.as_json:
        emit_json(report.to_json())
        return
    what = ", ".join(f"{n} {k}" for k, n in report.resources.items()) or "nothing"
    extra = f" and {report.forecasts} forecast points" if report.forecasts else ""
    click.echo(
        f"exported {what}{extra} from {report.frames} frames (every {report.every}) to "
        f"{report.path} ({report.bytes / 1e6:.2f} MB, {fmt.upper()}, {report.mode}) "
        f"in {report.seconds:.1f} s"
    )
    if with_forecasts and not report.forecasts:
        click.echo("  no forecasts of these vital signs in that range: none added")
    if report.mode == "plain":
        click.echo("  the file is not encrypted: it holds health data (mode 0600); "
                   "--recipient AGE_PUBKEY encrypts it")


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--identity", "identity_files", multiple=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="An age identity file (age-keygen -o FILE); repeat for more.")
@click.option("--passphrase", "use_passphrase", is_flag=True,
              help="The bundle was encrypted with a passphrase.")
@_bundle_passphrase_option
@click.option("--merge", is_flag=True,
              help="Add the bundle to the existing twin in --home, skipping what it already holds.")
@click.option("--accept-settings", is_flag=True,
              help="With --merge: also take the bundle's consents, sync target, pairings and "
              "queued uploads that this twin lacks (refused without it, saying what they are).")
@_limit_option
@json_option
@pass_app
def import_cmd(
    app: AppContext,
    file: Path,
    identity_files: tuple[Path, ...],
    use_passphrase: bool,
    bundle_passphrase_file: Path | None,
    merge: bool,
    accept_settings: bool,
    passphrase_limit_mb: int,
) -> None:
    """Verify a bundle completely, then restore it as a twin (new local keys) or merge it."""
    from edgetwin.bundle import home_state, import_bundle
    from edgetwin.bundle.age import load_identities
    from edgetwin.cli.unlock import open_twin_from_app, read_secret

    if bool(identity_files) == use_passphrase:
        raise UsageError("give either --identity FILE or --passphrase")
    identities = (
        [i for path in identity_files for i in load_identities(path)] if identity_files else None
    )
    home = app.home
    state = home_state(home)
    if accept_settings and not merge:
        raise UsageError(
            "--accept-settings goes with --merge",
            hint="a bundle imported into an empty home always brings its settings",
        )
    if merge and state != "twin":
        raise UsageError(
            f"--merge needs an existing twin in {home}",
            hint="leave out --merge to import into an empty home",
        )
    if not merge and state in ("twin", "other"):
        raise UsageError(
            f"{home} is not empty" + (" (a twin lives there)" if state == "twin" else ""),
            hint="choose an empty --home, or pass --merge to add the bundle to that twin",
        )
    passphrase = (
        _bundle_passphrase(bundle_passphrase_file, confirm=False) if use_passphrase else None
    )
    kwargs: dict[str, Any] = {
        "identities": identities,
        "passphrase": passphrase,
        "passphrase_limit": passphrase_limit_mb * 1024 * 1024,
        "progress": _progress(app),
    }
    if merge:
        with open_twin_from_app(app) as target:
            report = import_bundle(file, home, target=target, accept_settings=accept_settings,
                                   **kwargs)
    else:
        secret = read_secret(app, create=True, prompt="Passphrase for the new twin")
        report = import_bundle(file, home, secret=secret, **kwargs)
    if app.as_json:
        emit_json(report.to_json())
        return
    verb = "merged into" if report.merged else "restored as"
    click.echo(
        f"{verb} twin {report.twin_id[:12]} in {report.home}: {report.samples} samples in "
        f"{len(report.streams)} stream(s), {report.frames} frames, {report.predictions} "
        f"predictions, {report.records} records in {report.seconds:.1f} s"
    )
    for change in report.settings:
        click.echo(f"  setting taken from the bundle: {change}")
    skipped = {k: v for k, v in report.skipped.items() if v}
    if skipped:
        click.echo("  already there (skipped): "
                   + ", ".join(f"{v} {k}" for k, v in skipped.items()))


def _bundle_passphrase(path: Path | None, *, confirm: bool) -> str:
    from edgetwin.store import read_passphrase_file

    if path is not None:
        return read_passphrase_file(path)
    from edgetwin.cli.unlock import ask_hidden

    text = ask_hidden(
        "Bundle passphrase", confirm="Repeat the bundle passphrase" if confirm else None,
        what="a bundle passphrase", hint=f"use --bundle-passphrase-file or {_BUNDLE_PASS_ENV}",
    )
    if not text:
        raise UsageError("the bundle passphrase is empty")
    return str(text)


def _progress(app: AppContext) -> Any:
    if app.as_json or not is_tty():
        return None

    def say(msg: str) -> None:
        click.echo(f"… {msg}", err=True)

    return say
