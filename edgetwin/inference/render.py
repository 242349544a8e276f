"""Forecasts for people: a compact terminal table with sparklines, and plain-words explanations."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from edgetwin.features.schema import FEATURES
from edgetwin.types import Prediction

_BARS = "▁▂▃▄▅▆▇█"
_UNITS = {f.name: f.unit for f in FEATURES}
# A suffix of the context holding this share of attention "drives" the forecast.
_DRIVE_SHARE = 0.6
# What a forecast without occlusion drivers says: occlusion runs on live forecasts only, at
# most once per ``serving.EXPLAIN_EVERY_S``; ingested history and the rows between carry none.
UNEXPLAINED = "model forecast; drivers not measured for this one (live, at most one per 4 s)"


def sparkline(
    values: Sequence[float],
    width: int | None = None,
    *,
    lo: float | None = None,
    hi: float | None = None,
) -> str:
    """Values as block characters, averaged down (or repeated) to ``width`` cells."""
    vals = [float(v) for v in values]
    if not vals:
        return ""
    if width is not None and width > 0 and len(vals) != width:
        vals = _resample(vals, width)
    lo = min(vals) if lo is None else lo
    hi = max(vals) if hi is None else hi
    span = hi - lo
    if span <= 1e-12:
        return _BARS[len(_BARS) // 2 - 1] * len(vals)
    top = len(_BARS) - 1
    return "".join(_BARS[min(top, max(0, round((v - lo) / span * top)))] for v in vals)


def explain(pred: Prediction) -> str:
    """What drove the forecast, what was imputed, and what the twin served instead of the model.

    Drivers come from occlusion (``pred.influence``: how far masking each part of the
    context moves this forecast), which is faithful by construction and specific to the
    window; attention is used only where :data:`edgetwin.inference.explain.EXPLAIN_METHOD`
    says so (the faithfulness check and its numbers are in that module and its test).
    """
    parts: list[str] = []
    served = _served(pred)
    if served:
        parts.append(served)
    weights = _drivers(pred)
    if weights is not None:
        noun = "of the masking effect" if pred.influence else "of attention"
        parts.append(_describe(weights, pred.step_s, noun))
    imputed_s = sum(b - a + pred.step_s for a, b in pred.imputed)
    if imputed_s > 0:
        parts.append(f"{_dur(imputed_s)} of it imputed")
    if pred.anomaly:
        parts.append("the value just observed left the band forecast for it")
    return "; ".join(parts) if parts else UNEXPLAINED


def _drivers(pred: Prediction) -> list[float] | None:
    """The weights the explanation may use: occlusion influence, or attention if that passed."""
    from edgetwin.inference.explain import EXPLAIN_METHOD

    if pred.influence:
        return [float(a) for a in pred.influence]
    if EXPLAIN_METHOD == "attention" and pred.attention:
        return [float(a) for a in pred.attention]
    return None


def _served(pred: Prediction) -> str:
    """Plain words for a forecast the twin changed: personal correction, baseline fallback."""
    if not pred.sources:
        return ""
    names = {
        "persistence": "the last value carried forward",
        "context_mean": "the mean of the last few minutes",
        "blend": "a blend of the model and the last value",
    }
    h = len(pred.sources)
    parts = []
    for source, words in names.items():
        steps = [k for k, s in enumerate(pred.sources) if s == source]
        if steps:
            when = "every step" if len(steps) == h else _steps(steps, pred.step_s)
            parts.append(f"{words} at {when}")
    text = ""
    if parts:
        text = (
            "serving " + ", ".join(parts) + ": the model has not beaten persistence for you "
            "over the last day there"
        )
    if "personal" in pred.sources:
        text = ("corrected for you (personal model)" + ("; " + text if text else ""))
    return text


def _steps(steps: list[int], step_s: float) -> str:
    lo, hi = (steps[0] + 1) * step_s, (steps[-1] + 1) * step_s
    return f"+{_dur(lo)}" if lo == hi else f"+{_dur(lo)}…+{_dur(hi)}"


def _describe(weights: list[float], step_s: float, noun: str) -> str:
    """Which part of the context the weights single out, in words."""
    att = [max(0.0, a) for a in weights]
    total = sum(att)
    n = len(att)
    if n == 0 or total <= 0:
        return "no weights over the context"
    att = [a / total for a in att]
    span_s = n * step_s
    # smallest recent suffix holding most of the weight
    acc, k = 0.0, 0
    for a in reversed(att):
        acc += a
        k += 1
        if acc >= _DRIVE_SHARE:
            break
    if k <= max(1, n // 3):
        return f"driven mostly by the last {_dur(k * step_s)} ({acc:.0%} {noun})"
    # densest window a quarter of the context long
    width = max(1, n // 4)
    best, best_i = -1.0, 0
    run = sum(att[:width])
    for i in range(n - width + 1):
        if i:
            run += att[i + width - 1] - att[i - 1]
        if run > best:
            best, best_i = run, i
    if best >= 0.5:
        ago_start = (n - best_i) * step_s
        ago_end = (n - best_i - width) * step_s
        last = f"the last {_dur(ago_start)}"
        where = f"{_dur(ago_end)}–{_dur(ago_start)} ago" if ago_end > 0 else last
        return f"driven mostly by {where} ({best:.0%} {noun})"
    return f"spread over the whole {_dur(span_s)} context" + _peak(att, step_s)


def render_predictions(preds: Sequence[Prediction], width: int = 100) -> str:
    """A table: one line per forecast (time, target, +1 step, last step, band, sparklines, why).

    Only the fixed columns are ever shortened to ``width``; the explanation (with
    the anomaly warning) wraps onto lines of its own instead of being cut.
    """
    if not preds:
        return "no forecasts yet (the twin needs about a minute of data)"
    width = max(40, width)
    horizon_s = _horizon_s(preds)
    inline = _fits_inline(preds, width, horizon_s)
    return "\n".join([
        render_header(horizon_s, width, inline=inline),
        *render_rows(preds, width, inline=inline, horizon_s=horizon_s),
        render_legend(horizon_s, width),
    ])


def render_header(horizon_s: float, width: int = 100, *, inline: bool = False) -> str:
    """The column titles; ``inline`` adds the ``why`` column (explanations on the same line)."""
    cols = _columns(horizon_s, _spark_width(width))
    return _clip(cols + "why" if inline else cols.rstrip(), width)


def render_rows(
    preds: Sequence[Prediction],
    width: int = 100,
    *,
    inline: bool = False,
    horizon_s: float | None = None,
) -> list[str]:
    """The lines of ``preds`` under :func:`render_header` (for ``--follow``: one at a time)."""
    spark_w = _spark_width(width)
    lines: list[str] = []
    for p in preds:
        why = ("⚠ " if p.anomaly else "") + explain(p)
        unit = _UNITS.get(p.target, "")
        lo, hi = p.band[-1] if p.band else (float("nan"), float("nan"))
        values = [*[b[0] for b in p.band], *[b[1] for b in p.band], *p.horizon]
        spark = sparkline(p.horizon, spark_w, lo=min(values), hi=max(values))
        row = (
            f"{_clock(p.t):8}  {(p.target + ' ' + unit)[:14]:14} {_num(p.horizon[0]):>7} "
            f"{_num(p.horizon[-1]):>7} {'[' + _num(lo) + ', ' + _num(hi) + ']':>15}  "
            f"{spark:{spark_w}}  {sparkline(_drivers(p) or [], spark_w):{spark_w}}  "
        )
        if inline:
            lines.append(row + why)
        else:
            lines.append(_clip(row.rstrip(), width))
            lines.extend(_wrap(why, width, indent=10))
    return lines


def render_legend(horizon_s: float, width: int = 100) -> str:
    """What the columns mean and which zone the times are in, wrapped to ``width``."""
    text = (
        f"forecast: median over the next {_dur(horizon_s)}, band 95 %; drivers: how far masking "
        f"each part of the context moves it, oldest → now; times in {_zone()}"
    )
    return "\n".join(_wrap(text, width, indent=0))


def _peak(att: list[float], step_s: float) -> str:
    """ ", most around 3 min ago" when a smoothed maximum stands out, else ""."""
    n = len(att)
    k = max(1, n // 10)
    smooth = [
        sum(att[max(0, i - k) : i + k + 1]) / len(att[max(0, i - k) : i + k + 1]) for i in range(n)
    ]
    top = max(range(n), key=smooth.__getitem__)
    if smooth[top] < 1.5 / n:
        return ""
    ago = (n - 1 - top) * step_s
    return ", most around now" if ago < step_s * 2 else f", most around {_dur(ago)} ago"


def _resample(vals: list[float], width: int) -> list[float]:
    n = len(vals)
    out = []
    for i in range(width):
        a = i * n / width
        b = (i + 1) * n / width
        lo, hi = int(a), max(int(a) + 1, round(b))
        chunk = vals[lo : min(hi, n)] or [vals[min(lo, n - 1)]]
        out.append(sum(chunk) / len(chunk))
    return out


def _dur(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    m, rem = divmod(s, 60)
    if m < 60:
        return f"{m} min" if rem == 0 else f"{m} min {rem} s"
    h, m = divmod(m, 60)
    return f"{h} h" if m == 0 else f"{h} h {m} min"


def _num(v: float) -> str:
    if math.isnan(v):
        return "-"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _horizon_s(preds: Sequence[Prediction]) -> float:
    return max(len(p.horizon) for p in preds) * preds[0].step_s


def _spark_width(width: int) -> int:
    return 12 if width >= 120 else 8


def _columns(horizon_s: float, spark_w: int) -> str:
    return (
        f"{'time':8}  {'target':14} {'next':>7} {'+' + _dur(horizon_s):>7} {'band (end)':>15}  "
        f"{'forecast':{spark_w}}  {'drivers':{spark_w}}  "
    )


def _fits_inline(preds: Sequence[Prediction], width: int, horizon_s: float) -> bool:
    """Explanations go inline only when every one fits beside its row."""
    room = width - len(_columns(horizon_s, _spark_width(width)))
    return max(len(("⚠ " if p.anomaly else "") + explain(p)) for p in preds) <= room


def _wrap(text: str, width: int, *, indent: int) -> list[str]:
    """``text`` over as many lines as it needs; words are never cut."""
    import textwrap

    pad = " " * indent
    return textwrap.wrap(
        text, width=max(width, indent + 20), initial_indent=pad, subsequent_indent=pad,
        break_long_words=False, break_on_hyphens=False,
    ) or [pad]


def _zone() -> str:
    """The local zone the clock column is in, e.g. ``UTC+01:00``."""
    offset = time.strftime("%z", time.localtime())
    return f"UTC{offset[:3]}:{offset[3:]}" if offset else "local time"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"
