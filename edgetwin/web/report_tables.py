"""The report's tables as HTML, rendered on the server from the report document (see
:mod:`edgetwin.web.report`): they print and read without JavaScript. Every text from the
store goes through :func:`html.escape`."""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

_UNIT_DECIMALS = {"bpm": 1, "ms": 1, "%": 1, "°C": 2, "µS": 2, "g": 3, "fraction": 3, "µM": 2}


def summary_html(doc: dict[str, Any]) -> str:
    """What the report covers, in a few lines."""
    charts = ", ".join(c["title"] for c in doc["charts"]) or "none"
    empty = ", ".join(doc["labels"].get(n, n) for n in doc["empty_features"])
    lines = [
        f"<li>{doc['frames']:,} feature frames from {_e(_utc(doc['first_frame']))} to "
        f"{_e(_utc(doc['last_frame']))}, one every {doc['step_s']:g} s</li>",
        f"<li>Charts: {_e(charts)}</li>",
    ]
    if empty:
        lines.append(f"<li>No usable values in this range: {_e(empty)}</li>")
    lines.append(
        f"<li>Values below the quality threshold ({doc['quality_threshold']:g}) are hidden "
        "and their time shaded grey; values the twin imputed (filled in) are drawn and their "
        "time shaded orange; statistics count measured values only.</li>")
    lines.append(f"<li>Markers (events): {doc['markers_total']}</li>")
    return "<ul>" + "".join(lines) + "</ul>"


def days_html(doc: dict[str, Any]) -> str:
    """Per UTC day and feature: mean, min, max, measured values, coverage, imputed share."""
    if not doc["days"]:
        return "<p>No days in this range.</p>"
    rows = []
    for day in doc["days"]:
        feats = day["features"]
        if not feats:
            rows.append(f"<tr><th scope='row'>{_e(day['day'])}</th>"
                        "<td colspan='7' class='none'>no measured values</td></tr>")
            continue
        first = True
        for name, s in feats.items():
            unit = doc["units"].get(name, "")
            head = (f"<th scope='row' rowspan='{len(feats)}'>{_e(day['day'])}</th>"
                    if first else "")
            first = False
            rows.append(
                f"<tr data-day='{_e(day['day'])}' data-feature='{_e(name)}'>{head}"
                f"<td>{_e(doc['labels'].get(name, name))} <span class='unit'>{_e(unit)}</span>"
                f"</td><td class='num'>{_num(s['mean'], unit)}</td>"
                f"<td class='num'>{_num(s['min'], unit)}</td>"
                f"<td class='num'>{_num(s['max'], unit)}</td>"
                f"<td class='num'>{s['n']:,}</td><td class='num'>{s['coverage']:g} %</td>"
                f"<td class='num'>{s['imputed']:g} %</td></tr>")
    return ("<table class='days'><thead><tr><th>UTC day</th><th>feature</th><th>mean</th>"
            "<th>min</th><th>max</th><th>measured</th><th>coverage</th><th>imputed</th>"
            "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
            "<p class='note'>Coverage: measured steps over the day's steps inside the report "
            "range. Mean, min and max exclude imputed values.</p>")


def sources_html(doc: dict[str, Any]) -> str:
    """Each stored stream with its channels and when it recorded."""
    if not doc["sources"]:
        return "<p>No source streams are stored.</p>"
    rows = []
    for s in doc["sources"]:
        span = (f"{_utc(s['in_range'][0])} – {_utc(s['in_range'][1])}"
                if s["in_range"] else "none")
        chans = ", ".join(s["channels"][:12]) + (" …" if len(s["channels"]) > 12 else "")
        rows.append(
            f"<tr><td>{_e(s['name'])}</td><td>{_e(chans)}</td>"
            f"<td>{_e(_utc(s['first_t']) if s['first_t'] is not None else '-')}</td>"
            f"<td>{_e(_utc(s['last_t']) if s['last_t'] is not None else '-')}</td>"
            f"<td class='num'>{s['samples']:,}</td><td>{_e(span)}</td>"
            f"<td class='num'>{s['range_share']:g} %</td></tr>")
    return ("<table><thead><tr><th>source</th><th>channels</th><th>first sample</th>"
            "<th>last sample</th><th>samples (all)</th><th>within this range</th>"
            "<th>of the range</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def forecasts_html(doc: dict[str, Any]) -> str:
    """The newest forecasts per target with their band and what drove them."""
    if not doc["forecasts"]:
        return "<p>No forecasts were stored in the last hour of this range.</p>"
    rows = []
    for f in doc["forecasts"]:
        unit = doc["units"].get(f["target"], "")
        h, band = f["horizon"], f["band"]
        last = len(h) - 1
        rows.append(
            f"<tr><td>{_e(_utc(f['t']))}</td><td>{_e(doc['labels'].get(f['target'], f['target']))}"
            f"</td><td class='num'>{_num(h[0], unit)} → {_num(h[last], unit)} "
            f"<span class='unit'>{_e(unit)}</span></td>"
            f"<td class='num'>{_num(band[last][0], unit)} – {_num(band[last][1], unit)}</td>"
            f"<td class='num'>+{(last + 1) * f['step_s']:g} s</td>"
            f"<td>{'yes' if f['anomaly'] else ''}</td><td>{_e(f['explanation'])}</td></tr>")
    return ("<table><thead><tr><th>made at</th><th>target</th><th>forecast (first → last "
            "step)</th><th>band at the last step</th><th>horizon</th><th>anomaly</th>"
            "<th>explanation</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def score_html(doc: dict[str, Any]) -> str:
    """The twin's own score against its baselines (as ``predictions --score``)."""
    sc = doc["score"]
    if not sc.get("available"):
        return f"<p>Not available: {_e(sc.get('reason', ''))}.</p>"
    rows = []
    for wname, per in sc.get("windows", {}).items():
        if not per:
            rows.append(f"<tr><td>{_e(wname)}</td><td colspan='7' class='none'>no scored "
                        "forecasts</td></tr>")
        for target, e in per.items():
            m = e["mae"]
            cov = f"{e['coverage'] * 100:.0f} %" if e.get("coverage") is not None else "-"
            cells = "".join(f"<td class='num'>{_plain(m.get(k))}</td>"
                            for k in ("served", "global", "persistence", "context_mean"))
            rows.append(f"<tr><td>last {_e(wname)}</td><td>{_e(target)}</td>"
                        f"<td class='num'>{e['cells']:,}</td>{cells}<td class='num'>{cov}</td>"
                        "</tr>")
    return (f"<p>As of {_e(_utc(sc['now']))}: forecasts made in the last hour and day scored "
            "against what was then measured (mean absolute error in the target's unit; lower "
            "is better).</p><table><thead><tr><th>window</th><th>target</th><th>scored</th>"
            "<th>twin (served)</th><th>global model</th><th>last value carried</th>"
            "<th>recent mean</th><th>inside band</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def privacy_html(doc: dict[str, Any]) -> str:
    """Which summaries may leave the device, and the privacy budget spent."""
    p = doc["privacy"]
    granted = [c for c in p["consents"] if c["granted"]]
    if granted:
        items = "".join(
            f"<li>{_e(c['metric'])}: one differentially private summary per {_e(c['period'])}"
            f" (since {_e(_utc(c['granted_at'])) if c.get('granted_at') else '-'})</li>"
            for c in granted)
        consent = f"<p>Shared (with consent):</p><ul>{items}</ul>"
    else:
        consent = "<p>No summary may leave this device: no consent is granted.</p>"
    not_granted = len(p["consents"]) - len(granted)
    b = p["budget"]
    budget = (
        f"<p>Privacy budget (ε) this {_e(b['period'])} (from {_e(b['period_start_iso'])}): "
        f"spent {b['epsilon_spent']:g}, remaining {b['epsilon_remaining']:g} of "
        f"{b['epsilon_per_period']:g}; lifetime: spent {b['lifetime_spent']:g}, remaining "
        f"{b['lifetime_remaining']:g} of {b['epsilon_lifetime']:g}.</p>")
    charged = "".join(
        f"<tr><td>{_e(c['period'])} from {_e(_utc(c['start']))}</td>"
        f"<td class='num'>{c['spent']:g}</td></tr>" for c in p["charged_in_range"])
    ledger = (("<table><thead><tr><th>period charged (within this range)</th><th>ε spent</th>"
               "</tr></thead><tbody>" + charged + "</tbody></table>") if charged
              else "<p>No release was charged to a period in this range.</p>")
    return (consent + f"<p class='note'>{not_granted} other metrics stay on the device.</p>"
            + budget + ledger)


def markers_html(doc: dict[str, Any]) -> str:
    """The markers (events) in the range, by time."""
    if not doc["markers"]:
        return "<p>No markers in this range.</p>"
    rows = "".join(
        f"<tr><td>{_e(_utc(m['t']))}</td><td>{_e(m['text'])}</td><td>{_e(m['source'])}</td></tr>"
        for m in doc["markers"])
    more = doc["markers_total"] - len(doc["markers"])
    note = f"<p class='note'>{more} more markers are not listed.</p>" if more > 0 else ""
    return ("<table><thead><tr><th>time</th><th>marker</th><th>source</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>{note}")


def _num(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    return f"{v:.{_UNIT_DECIMALS.get(unit, 2)}f}"


def _plain(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    return f"{v:.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}"


def _utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
