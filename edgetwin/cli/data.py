"""``edgetwin ingest``, ``timeline`` and ``predictions``: what the twin knows."""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from edgetwin.cli.common import AppContext, emit_json, is_tty, json_option, pass_app
from edgetwin.errors import DaemonNotRunning, UsageError

_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
TIMELINE_DEFAULT_LAST = 30  # frames the timeline table shows unless --last / --all


def parse_time(text: str | None, *, option: str) -> float | None:
    """Epoch seconds, an ISO 8601 date/time (local time if no zone), or ``-30m``/``-2h``/``-1d``."""
    if text is None:
        return None
    text = text.strip()
    m = _RELATIVE.match(text)
    if m:
        return time.time() - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise UsageError(f"{option} {text!r} is not a time")
        return value
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{option} {text!r} is not a time",
            hint="use epoch seconds, an ISO date such as 2026-11-27T08:00, or -30m / -2h / -1d",
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()
    return parsed.timestamp()


@click.command("ingest")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--stream", default=None,
              help="Stream name (prefix) for the recording's channels [XDF: optional prefix].")
@click.option("--format", "fmt", type=click.Choice(["csv", "brainflow", "xdf"]), default=None,
              help="Recording format [default: from the file name].")
@click.option("--board", default=None, help="Board of a brainflow file, e.g. MUSE_S_BOARD.")
@click.option("--allow-future", is_flag=True,
              help="Accept timestamps more than a day ahead of this machine's clock.")
@click.option("--salvage", is_flag=True,
              help="XDF: store what is readable of a damaged or truncated file.")
@click.option("--start", "start", default=None, metavar="TIME",
              help="XDF: when the first sample was taken (for LSL-clock times without a date).")
@json_option
@pass_app
def ingest_cmd(
    app: AppContext, file: Path, stream: str | None, fmt: str | None, board: str | None,
    allow_future: bool, salvage: bool, start: str | None,
) -> None:
    """Push a recording through the daemon's pipeline into the twin, as fast as possible.

    XDF files (LabRecorder) bring every stream, and their marker streams as markers.
    """
    from edgetwin.cli.pair import check_name
    from edgetwin.cli.unlock import open_twin_from_app
    from edgetwin.daemon.app import load_engine, make_pipeline, process_offline
    from edgetwin.sources.recording import EPOCH_MAX, read_recording

    if fmt == "xdf" or (fmt is None and file.suffix.lower() in (".xdf", ".xdfz")):
        _ingest_xdf(app, file, stream, allow_future, salvage, start)
        return
    if salvage or start is not None:
        raise UsageError("--salvage and --start apply to XDF files only",
                         hint="drop them, or pass --format xdf")
    if stream is None:
        raise UsageError("ingest of a CSV or BrainFlow file needs --stream NAME",
                         hint="the name the twin keeps the recording's channels under")
    check_name(stream)
    app.require_home()
    config = app.config()
    kwargs: dict[str, Any] = {"board": board} if board else {}
    latest = EPOCH_MAX if allow_future else None
    show_progress = is_tty() and not app.as_json
    started = time.perf_counter()
    # One read of the whole file before the twin is opened: bad input anywhere in it is
    # refused (exit 4) with nothing stored, even past the batches the store commits mid-way.
    checker = _Ticker(file.name, "checking") if show_progress else None
    for batch in read_recording(file, stream, fmt, latest=latest, **kwargs):
        if checker is not None:
            checker.update(batch)
    if checker is not None:
        checker.done()
    span = _Span()
    with open_twin_from_app(app) as store:
        engine = load_engine(store, config)
        prior_last = engine.state()["last_t"] if engine is not None else None
        batches = read_recording(file, stream, fmt, latest=latest, **kwargs)
        ticker = _Ticker(file.name) if show_progress else None

        def on_batch(batch: Any) -> None:
            span.update(batch)
            if ticker is not None:
                ticker.update(batch)

        report = process_offline(store, batches, make_pipeline(config), engine,
                                 on_batch=on_batch)
        if ticker is not None:
            ticker.done()
        store.audit("ingest", stream=stream, samples=report.samples, markers=report.markers)
    elapsed = time.perf_counter() - started
    note = _forecast_note(config, engine, prior_last, span, report.frames, report.predictions)
    result = {
        "file": str(file),
        "streams": sorted(report.streams),
        "samples": report.samples,
        "markers": report.markers,
        "frames": report.frames,
        "predictions": report.predictions,
        "forecast_note": note,
        "seconds": round(elapsed, 3),
        "samples_per_s": round(report.samples / elapsed, 1) if elapsed > 0 else None,
    }
    if app.as_json:
        emit_json(result)
    else:
        click.echo(
            f"ingested {report.samples} samples into {', '.join(sorted(report.streams))}: "
            f"{report.frames} frames, {report.predictions} predictions "
            f"in {elapsed:.2f} s ({result['samples_per_s']} samples/s)"
        )
        if note:
            click.echo(note)


def _ingest_xdf(
    app: AppContext, file: Path, prefix: str | None, allow_future: bool, salvage: bool,
    start: str | None,
) -> None:
    """``ingest FILE.xdf``: checked and read whole before the twin is opened (nothing is
    stored from a damaged file unless ``--salvage``), then its signal streams go through
    the pipeline interleaved by time and its marker streams become markers."""
    from edgetwin.cli.pair import check_name
    from edgetwin.cli.unlock import open_twin_from_app
    from edgetwin.daemon.app import load_engine, make_pipeline, process_offline
    from edgetwin.interop.xdf import read_xdf
    from edgetwin.sources.recording import EPOCH_MAX, FUTURE_SLACK_S

    if prefix is not None:
        check_name(prefix)
    if file.suffix.lower() == ".xdfz" or file.name.lower().endswith(".xdf.gz"):
        raise UsageError(f"{file.name} is compressed", hint="gunzip it first (zcat F > F.xdf)")
    app.require_home()
    config = app.config()
    start_t = parse_time(start, option="--start")
    latest = EPOCH_MAX if allow_future else time.time() + FUTURE_SLACK_S
    started = time.perf_counter()
    rec = read_xdf(file, salvage=salvage, start=start_t, latest=latest)
    markers = rec.markers()
    signal = rec.signal_streams(prefix)
    for name, _s in signal:
        check_name(name)
    show_progress = is_tty() and not app.as_json
    span = _Span()
    with open_twin_from_app(app) as store:
        engine = load_engine(store, config)
        prior_last = engine.state()["last_t"] if engine is not None else None
        store.append_markers(markers)
        ticker = _Ticker(file.name) if show_progress else None

        def on_batch(batch: Any) -> None:
            span.update(batch)
            if ticker is not None:
                ticker.update(batch)

        report = process_offline(store, rec.batches(prefix), make_pipeline(config), engine,
                                 on_batch=on_batch)
        store.commit()  # markers too when the file held no signal stream
        if ticker is not None:
            ticker.done()
        store.audit("ingest", format="xdf", streams=sorted(report.streams),
                    samples=report.samples, markers=len(markers), salvaged=len(rec.problems))
    elapsed = time.perf_counter() - started
    note = _forecast_note(config, engine, prior_last, span, report.frames, report.predictions)
    result = {
        "file": str(file),
        "streams": sorted(report.streams),
        "samples": report.samples,
        "markers": len(markers),
        "marker_sources": sorted({m.source for m in markers}),
        "frames": report.frames,
        "predictions": report.predictions,
        "clock": rec.clock,
        "salvaged": [str(p) for p in rec.problems],
        "forecast_note": note,
        "seconds": round(elapsed, 3),
        "samples_per_s": round(report.samples / elapsed, 1) if elapsed > 0 else None,
    }
    if app.as_json:
        emit_json(result)
        return
    click.echo(
        f"ingested {report.samples} samples into {', '.join(sorted(report.streams)) or 'no stream'}"
        f" and {len(markers)} markers: {report.frames} frames, {report.predictions} predictions "
        f"in {elapsed:.2f} s"
    )
    if rec.problems:
        click.echo(f"salvaged: {len(rec.problems)} problem(s); what they cut off was not stored:")
        for p in rec.problems:
            click.echo(f"  {p}")
    if note:
        click.echo(note)


class _Span:
    """The time span of the samples an ingest stored."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None

    def update(self, batch: Any) -> None:
        if len(batch):
            self.first = batch.first_t if self.first is None else min(self.first, batch.first_t)
            self.last = batch.last_t if self.last is None else max(self.last, batch.last_t)


def _forecast_note(
    config: Any, engine: Any, prior_last: float | None, span: _Span, frames: int,
    predictions: int,
) -> str | None:
    """Why an ingest made no (or only some) forecasts; None when nothing needs saying."""
    if frames == 0:
        return None
    if engine is None:
        if not config.inference.enabled:
            return "no forecasts: inference is off (inference.enabled = false in config.toml)"
        return "no forecasts: the models could not be loaded (see the warning above; run -v)"
    if prior_last is not None and span.first is not None and span.first <= prior_last:
        whole = span.last is not None and span.last <= prior_last
        return (
            "no forecasts for "
            f"{'this recording' if whole else 'its part up to ' + _utc(prior_last)}: "
            f"it {'lies' if whole else 'starts'} before the twin's latest frame "
            f"({_utc(prior_last)}), and forecasts only run forward from there; "
            "its samples and feature frames were stored"
        )
    if predictions:
        return None
    need = int(engine.manifest.min_context)
    have = sum(engine.state()["context"]["present"])
    if have < need:
        return (
            f"no forecasts: the forecaster needs {need} feature frames of context "
            f"({need * engine.step_s / 60:g} min) and has {have}; a longer recording gives some"
        )
    return (
        f"no forecasts: none of the forecast targets ({', '.join(engine.targets)}) "
        "was observed with enough quality in the last frames"
    )


def _utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@click.command("timeline")
@click.option("--from", "t_from", default=None, help="Start (epoch s, ISO time, or -2h).")
@click.option("--to", "t_to", default=None, help="End (epoch s, ISO time, or -5m).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with one column per feature.")
@click.option("--last", type=click.IntRange(min=0), default=None,
              help=f"Only the last N frames [table default: {TIMELINE_DEFAULT_LAST}].")
@click.option("--all", "show_all", is_flag=True, help="Every frame in the range.")
@json_option
@pass_app
def timeline_cmd(
    app: AppContext, t_from: str | None, t_to: str | None, as_csv: bool, last: int | None,
    show_all: bool,
) -> None:
    """The feature frames with their masks and quality (the table shows the last few)."""
    from edgetwin.cli.unlock import open_twin_from_app
    from edgetwin.features.schema import FEATURES, NAMES, QUALITY_THRESHOLD

    t0 = parse_time(t_from, option="--from")
    t1 = parse_time(t_to, option="--to")
    from edgetwin.cli.markers import markers_by_frame

    app.require_home()
    with open_twin_from_app(app) as store:
        frames = list(store.read_frames(t0, t1))
        marks = store.read_markers(t0, t1, on_corrupt="skip")
    total = len(frames)
    limited = last is None and not show_all and not (app.as_json or as_csv)
    if limited:
        last = TIMELINE_DEFAULT_LAST  # a table of a week of 5 s steps helps nobody
    if last is not None and not show_all:
        frames = frames[-last:] if last > 0 else []
    # each frame carries the markers of its step
    per_frame = markers_by_frame([f.t for f in frames], marks)
    if app.as_json:
        emit_json([
            {**_frame_json(f, NAMES, QUALITY_THRESHOLD), "markers": [m.to_json() for m in ms]}
            for f, ms in zip(frames, per_frame, strict=True)
        ])
        return
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["timestamp", *NAMES, *(f"{n}_quality" for n in NAMES), "imputed",
                         "markers"])
        for f, ms in zip(frames, per_frame, strict=True):
            values = ["" if not _usable(f, i, QUALITY_THRESHOLD) else f"{f.values[i]:.6g}"
                      for i in range(len(NAMES))]
            quality = [f"{q:.3g}" for q in f.quality]
            imputed = ";".join(n for i, n in enumerate(NAMES) if f.imputed[i])
            writer.writerow([f"{f.t:.3f}", *values, *quality, imputed,
                             "; ".join(m.text for m in ms)])
        return
    if not frames:
        click.echo("no feature frames in that range")
        return
    for line in _timeline_table(frames, FEATURES, QUALITY_THRESHOLD, per_frame):
        click.echo(line)
    if limited and len(frames) < total:
        click.echo(f"the last {len(frames)} of {total} frames; --last N or --all for more")


@click.command("predictions")
@click.option("--last", type=int, default=10, show_default=True, help="How many forecasts.")
@click.option("--follow", is_flag=True, help="Keep printing new forecasts from the daemon.")
@click.option("--target", default=None, help="Only this target feature (e.g. hr).")
@click.option("--score", is_flag=True,
              help="The twin's own rolling score of its stored forecasts instead.")
@json_option
@pass_app
def predictions_cmd(
    app: AppContext, last: int, follow: bool, target: str | None, score: bool
) -> None:
    """Forecasts with their band and explanation (what drove them, imputed spans)."""
    from edgetwin.types import Prediction

    home = app.require_home()
    if score:
        _print_score(app, follow)
        return
    if follow:
        from edgetwin.daemon import control

        follower = _Follower(app.as_json)
        try:
            for item in control.follow(home):
                if item.get("end"):
                    break
                pred = Prediction.from_json(item)
                if target and pred.target != target:
                    continue
                follower(pred)
        except DaemonNotRunning as exc:
            raise DaemonNotRunning(str(exc), hint="--follow needs a running daemon") from None
        return
    from edgetwin.cli.markers import MARKER_CONTEXT_S
    from edgetwin.cli.unlock import open_twin_from_app

    with open_twin_from_app(app) as store:
        fetch = last * 8 if target else last  # forecasts of all targets are interleaved
        preds = store.read_predictions(last=fetch)
        if target:
            preds = [p for p in preds if p.target == target][-last:]
        marks = (store.read_markers(preds[0].t - MARKER_CONTEXT_S, preds[-1].t,
                                    on_corrupt="skip") if preds else [])
    _print_predictions(preds, app.as_json, marks)


def _print_score(app: AppContext, follow: bool) -> None:
    """``predictions --score``: served model, global model, persistence, context mean, coverage."""
    if follow:
        raise UsageError("--score and --follow do not go together", hint="drop one of them")
    from edgetwin.cli.unlock import open_twin_from_app
    from edgetwin.inference.registry import load_manifest
    from edgetwin.inference.scoring import render_score
    from edgetwin.inference.serving import score_twin

    manifest = load_manifest()
    with open_twin_from_app(app) as store:
        doc = score_twin(store, manifest)
    if app.as_json:
        emit_json(doc)
    else:
        click.echo(render_score(doc))


class _Follower:
    """``predictions --follow``: the header and legend once, then each forecast as it comes."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.started = False

    def __call__(self, pred: Any) -> None:
        if self.as_json:
            emit_json(pred.to_json())
            return
        try:
            from edgetwin.inference.render import render_header, render_legend, render_rows
        except ImportError:
            click.echo(f"{pred.t:.0f} {pred.target}: "
                       f"{', '.join(f'{v:.1f}' for v in pred.horizon)}")
            return
        width = _output_width()
        if not self.started:
            self.started = True
            horizon_s = len(pred.horizon) * pred.step_s
            click.echo(render_legend(horizon_s, width))
            click.echo(render_header(horizon_s, width))
        # explanations on their own lines: a later one may not fit beside its row
        for line in render_rows([pred], width):
            click.echo(line)
        sys.stdout.flush()


def _output_width() -> int:
    """The terminal's width; in a pipe $COLUMNS or 100 (explanations wrap, never cut)."""
    import shutil

    return shutil.get_terminal_size((100, 20)).columns


def _print_predictions(preds: list[Any], as_json: bool, marks: list[Any] | None = None) -> None:
    """The forecasts; one made within ``MARKER_CONTEXT_S`` after a marker says so (JSON:
    ``after_marker``; table: a line per marker below)."""
    from edgetwin.cli.markers import after_marker_json, marker_before, marker_notes

    marks = marks or []
    if as_json:
        times = [m.t for m in marks]
        emit_json([{**p.to_json(), "after_marker": after_marker_json(
            p.t, marker_before(p.t, times, marks))} for p in preds])
        return
    if not preds:
        click.echo("no predictions yet (the forecaster needs a few minutes of context)")
        return
    try:
        from edgetwin.inference.render import render_predictions
    except ImportError:
        for p in preds:
            click.echo(f"{p.t:.0f} {p.target}: {', '.join(f'{v:.1f}' for v in p.horizon)}")
    else:
        click.echo(render_predictions(preds, width=_output_width()))
    for line in marker_notes(preds, marks):
        click.echo(line)


def _usable(frame: Any, i: int, threshold: float) -> bool:
    return bool(math.isfinite(frame.values[i]) and frame.quality[i] >= threshold)


def _frame_json(frame: Any, names: tuple[str, ...], threshold: float) -> dict[str, Any]:
    return {
        "t": frame.t,
        "features": {
            n: (float(frame.values[i]) if _usable(frame, i, threshold) else None)
            for i, n in enumerate(names)
        },
        "quality": {n: round(float(frame.quality[i]), 4) for i, n in enumerate(names)},
        "imputed": [n for i, n in enumerate(names) if frame.imputed[i]],
    }


def _timeline_table(
    frames: list[Any], features: Any, threshold: float, markers: list[list[Any]] | None = None
) -> list[str]:
    """Aligned columns with full feature names and units, values rounded per unit; a
    marker is a row of its own (``▸ time text [source]``) before the frame of its step.

    Features with no usable value in these frames get no column, only a note.
    """
    from edgetwin.cli.common import local_zone

    shown = [i for i, _ in enumerate(features) if any(_usable(f, i, threshold) for f in frames)]
    widths = {i: max(len(features[i].name), len(_unit_label(features[i].unit)), 7) for i in shown}
    time_w = 19
    lines = [
        f"{'time (' + local_zone() + ')':<{time_w}}  "
        + "  ".join(f"{features[i].name:>{widths[i]}} " for i in shown).rstrip(),
        f"{'':<{time_w}}  "
        + "  ".join(f"{_unit_label(features[i].unit):>{widths[i]}} " for i in shown).rstrip(),
    ]
    for k, f in enumerate(frames):
        for m in (markers[k] if markers else ()):
            when = dt.datetime.fromtimestamp(m.t).strftime("%Y-%m-%d %H:%M:%S")
            lines.append(f"{when:<{time_w}}  ▸ {m.text}  [{m.source}]")
        cells = []
        for i in shown:
            if _usable(f, i, threshold):
                value = f"{f.values[i]:.{_DECIMALS.get(features[i].unit, 2)}f}"
                cells.append(f"{value:>{widths[i]}}{'*' if f.imputed[i] else ' '}")
            else:
                cells.append(f"{'·':>{widths[i]}} ")
        stamp = dt.datetime.fromtimestamp(f.t).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"{stamp:<{time_w}}  " + "  ".join(cells).rstrip())
    lines.append("· missing or poor quality   * imputed"
                 + ("   ▸ marker" if markers and any(markers) else ""))
    empty = [features[i].name for i in range(len(features)) if i not in shown]
    if empty:
        lines.append(f"no usable values here: {', '.join(empty)}")
    return lines


# Decimals shown per unit: enough to see a change, no more than the sensor resolves.
_DECIMALS = {"bpm": 1, "ms": 1, "%": 1, "degC": 2, "uS": 2, "g": 3, "1": 3, "uM": 2,
             "hPa": 1, "ppm": 0, "ug/m3": 0, "code": 0, "km": 2}


def _unit_label(unit: str) -> str:
    return "fraction" if unit == "1" else unit


class _Ticker:
    """A one-line live counter on stderr (a TTY only): samples so far and the rate."""

    def __init__(self, label: str, verb: str = "ingesting") -> None:
        self.label = label
        self.verb = verb
        self.samples = 0
        self.started = time.perf_counter()
        self.shown = 0.0

    def update(self, batch: Any) -> None:
        self.samples += len(batch)
        now = time.perf_counter()
        if now - self.shown >= 0.2:
            self.shown = now
            rate = self.samples / max(now - self.started, 1e-9)
            click.echo(f"\r{self.verb} {self.label}: {self.samples:,} samples ({rate:,.0f}/s)",
                       err=True, nl=False)

    def done(self) -> None:
        click.echo("", err=True)
