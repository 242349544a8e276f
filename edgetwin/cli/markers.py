"""``edgetwin mark`` and ``edgetwin markers``: events on the twin's timeline; and how
``timeline`` and ``predictions`` show them.

``mark`` goes through the running daemon's control socket (so the daemon's LSL
marker outlet publishes it too, and it is committed in order with the daemon's
writes), else straight into the store. Marker text is what a person typed:
control characters (C0/C1, DEL, line breaks, bidi overrides) are refused with
their position and code point, as are empty text and text longer than
:data:`edgetwin.types.MARKER_TEXT_MAX` characters. Markers from machines (XDF,
LSL, boards) are escaped instead (``\\x1b``), so every stored marker prints safely.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import time
from collections.abc import Sequence
from typing import Any

import click

from edgetwin.cli.common import AppContext, emit_json, json_option, pass_app
from edgetwin.errors import UsageError
from edgetwin.types import Marker

# A forecast made within this long after a marker is shown as following it.
MARKER_CONTEXT_S = 600.0
_EPOCH_MIN = 1e8  # 1973: an earlier --at is a typo or milliseconds
_FUTURE_SLACK_S = 86_400.0


@click.command("mark")
@click.argument("text")
@click.option("--at", "at", default=None, metavar="TIME",
              help="When it happened (epoch s, ISO time, or -5m) [default: now].")
@json_option
@pass_app
def mark_cmd(app: AppContext, text: str, at: str | None) -> None:
    """Record a marker (an event: 'coffee', 'run start') on the twin's timeline.

    TEXT is one line of printable text, at most 512 characters: control characters
    (escape sequences, line breaks, bidi overrides) are refused, not stored.
    """
    from edgetwin.cli.data import parse_time
    from edgetwin.daemon import control

    t = parse_time(at, option="--at") if at is not None else time.time()
    assert t is not None
    if not _EPOCH_MIN <= t <= time.time() + _FUTURE_SLACK_S:
        raise UsageError(f"--at {at!r} is not a time between 1973 and tomorrow",
                         hint="use epoch seconds, an ISO time such as 2026-11-27T08:00, or -5m")
    marker = Marker(t, text, "cli")
    problem = marker.problem()
    if problem is not None:
        raise UsageError(f"cannot mark {_shown(text)}: {problem}",
                         hint="markers are one line of printable text")
    home = app.require_home()
    if control.daemon_running(home):
        from edgetwin.cli.unlock import check_given_secret

        check_given_secret(app)
        reply = control.request(home, {"cmd": "mark", **marker.to_json()}, timeout=30.0)
        stored = Marker.from_json(reply["mark"])
        via = "daemon"
    else:
        from edgetwin.cli.unlock import open_twin_from_app

        with open_twin_from_app(app) as store:
            store.append_markers([marker])
            store.commit()
        stored, via = marker, "store"
    if app.as_json:
        emit_json({**stored.to_json(), "via": via})
    else:
        click.echo(f"marked {stored.text!r} at {_local(stored.t)}")


@click.command("markers")
@click.option("--from", "t_from", default=None, help="Start (epoch s, ISO time, or -2h).")
@click.option("--to", "t_to", default=None, help="End (epoch s, ISO time, or -5m).")
@click.option("--source", default=None,
              help="Only markers from this source (cli, xdf:<stream>, lsl:<name>, ...).")
@json_option
@pass_app
def markers_cmd(app: AppContext, t_from: str | None, t_to: str | None, source: str | None) -> None:
    """List markers: when, what, and where from."""
    from edgetwin.cli.data import parse_time
    from edgetwin.cli.unlock import open_twin_from_app

    t0 = parse_time(t_from, option="--from")
    t1 = parse_time(t_to, option="--to")
    app.require_home()
    with open_twin_from_app(app) as store:
        found = store.read_markers(t0, t1, source=source)
    if app.as_json:
        emit_json([m.to_json() for m in found])
        return
    if not found:
        click.echo("no markers in that range")
        return
    from edgetwin.cli.common import local_zone

    width = max(len(m.source) for m in found)
    click.echo(f"{'time (' + local_zone() + ')':<23}  {'source':<{width}}  text")
    for m in found:
        click.echo(f"{_local(m.t, ms=True):<23}  {m.source:<{width}}  {m.text}")


# -- shown in timeline and predictions ----------------------------------------------------


def markers_by_frame(frame_times: Sequence[float], markers: Sequence[Marker]) -> list[list[Marker]]:
    """The markers of each frame's step: those after the frame before it, up to its own time
    (the first frame takes those up to one typical step before it)."""
    out: list[list[Marker]] = [[] for _ in frame_times]
    if not frame_times:
        return out
    steps = [b - a for a, b in itertools.pairwise(frame_times) if b > a]
    step = sorted(steps)[len(steps) // 2] if steps else 5.0
    for m in markers:
        i = bisect.bisect_left(frame_times, m.t)
        if i < len(frame_times) and (i > 0 or m.t > frame_times[0] - step):
            out[i].append(m)
    return out


def marker_before(t: float, times: Sequence[float], markers: Sequence[Marker]) -> Marker | None:
    """The latest marker at or before ``t`` within :data:`MARKER_CONTEXT_S` (``times`` are the
    markers' times, sorted)."""
    i = bisect.bisect_right(times, t) - 1
    if i >= 0 and t - markers[i].t <= MARKER_CONTEXT_S:
        return markers[i]
    return None


def after_marker_json(t: float, marker: Marker | None) -> dict[str, Any] | None:
    """The ``after_marker`` object of a forecast made at ``t``."""
    if marker is None:
        return None
    return {**marker.to_json(), "seconds_before": round(t - marker.t, 3)}


def marker_notes(preds: Sequence[Any], markers: Sequence[Marker]) -> list[str]:
    """One line per marker that forecasts followed within :data:`MARKER_CONTEXT_S`."""
    times = [m.t for m in markers]
    followed: dict[Marker, list[Any]] = {}
    for p in preds:
        m = marker_before(p.t, times, markers)
        if m is not None:
            followed.setdefault(m, []).append(p)
    lines = []
    for m, ps in sorted(followed.items(), key=lambda kv: kv[0].t):
        first, last = min(p.t for p in ps), max(p.t for p in ps)
        span = _local(first)[11:] + (f"..{_local(last)[11:]}" if last > first else "")
        lines.append(
            f"▸ {len(ps)} forecast(s) at {span} made within {MARKER_CONTEXT_S / 60:g} min after "
            f"the marker {m.text!r} ({m.source}, {_local(m.t)[11:]})"
        )
    return lines


def _local(t: float, *, ms: bool = False) -> str:
    stamp = dt.datetime.fromtimestamp(t)
    return stamp.strftime("%Y-%m-%d %H:%M:%S.%f")[:23] if ms else stamp.strftime(
        "%Y-%m-%d %H:%M:%S")


def _shown(text: str, limit: int = 60) -> str:
    """``text`` as a repr (control characters escaped), cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
