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
    """Which part of the context drove the forecast, and how much of it was imputed."""
    att = [max(0.0, a) for a in pred.attention]
    total = sum(att)
    n = len(att)
    parts: list[str] = []
    if n == 0 or total <= 0:
        parts.append("no attention weights")
    else:
        att = [a / total for a in att]
        span_s = n * pred.step_s
        # smallest recent suffix holding most of the attention
        acc, k = 0.0, 0
        for a in reversed(att):
            acc += a
            k += 1
            if acc >= _DRIVE_SHARE:
                break
        if k <= max(1, n // 3):
            parts.append(
                f"driven mostly by the last {_dur(k * pred.step_s)} ({acc:.0%} of attention)"
            )
        else:
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
                ago_start = (n - best_i) * pred.step_s
                ago_end = (n - best_i - width) * pred.step_s
                where = (
                    f"{_dur(ago_end)}–{_dur(ago_start)} ago"
                    if ago_end > 0
                    else f"the last {_dur(ago_start)}"
                )
                parts.append(f"driven mostly by {where} ({best:.0%} of attention)")
            else:
                parts.append(
                    f"spread over the whole {_dur(span_s)} context" + _peak(att, pred.step_s)
                )
    imputed_s = sum(b - a + pred.step_s for a, b in pred.imputed)
    if imputed_s > 0:
        parts.append(f"{_dur(imputed_s)} of it imputed")
    if pred.anomaly:
        parts.append("the value just observed left the band forecast for it")
    return "; ".join(parts)


def render_predictions(preds: Sequence[Prediction], width: int = 100) -> str:
    """A table: one line per forecast (time, target, +1 step, last step, band, sparklines, why)."""
    if not preds:
        return "no forecasts yet (the twin needs about a minute of data)"
    width = max(40, width)
    horizon_s = max(len(p.horizon) for p in preds) * preds[0].step_s
    spark_w = 12 if width >= 120 else 8
    cols = (
        f"{'time':8}  {'target':14} {'next':>7} {'+' + _dur(horizon_s):>7} {'band (end)':>15}  "
        f"{'forecast':{spark_w}}  {'attention':{spark_w}}  "
    )
    why_w = width - len(cols)
    whys = [("⚠ " if p.anomaly else "") + explain(p) for p in preds]
    # explanations inline only when every one fits; else each gets a line of its own
    inline = max(len(w) for w in whys) <= why_w
    lines = [cols + "why" if inline else cols.rstrip()]
    for p, why in zip(preds, whys, strict=True):
        unit = _UNITS.get(p.target, "")
        lo, hi = p.band[-1] if p.band else (float("nan"), float("nan"))
        values = [*[b[0] for b in p.band], *[b[1] for b in p.band], *p.horizon]
        spark = sparkline(p.horizon, spark_w, lo=min(values), hi=max(values))
        row = (
            f"{_clock(p.t):8}  {(p.target + ' ' + unit)[:14]:14} {_num(p.horizon[0]):>7} "
            f"{_num(p.horizon[-1]):>7} {'[' + _num(lo) + ', ' + _num(hi) + ']':>15}  "
            f"{spark:{spark_w}}  {sparkline(p.attention, spark_w):{spark_w}}  "
        )
        if inline:
            lines.append(row + why)
        else:
            lines.append(row.rstrip())
            lines.append("          " + why)
    lines.append(
        f"forecast: median over the next {_dur(horizon_s)}, band 95 %; attention: oldest → now"
    )
    return "\n".join(_clip(line, width) for line in lines)


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


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"
