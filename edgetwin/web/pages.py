"""Server-rendered HTML of the dashboard's pages (no template engine, everything escaped).

Scripts and styles come only from ``/static`` (the CSP allows nothing inline); a page's
first data travels in a ``<script type="application/json">`` block, which is data, not
code, so the CSP lets it through and the page draws without a second request.
"""

from __future__ import annotations

import datetime as dt
from html import escape
from typing import Any

from edgetwin.features.schema import ENVIRONMENT, LAYOUTS
from edgetwin.web.live import json_text

PAGES = (("now", "/", "Now"), ("timeline", "/timeline", "Timeline"),
         ("forecasts", "/forecasts", "Forecasts"), ("privacy", "/privacy", "Privacy"),
         ("devices", "/devices", "Devices"))


def page(name: str, *, csrf: str, live: bool, body: str, data: Any, charts: bool = False) -> str:
    """A whole page: head, navigation, ``body`` (already escaped HTML), the initial data."""
    nav = "".join(
        f'<a href="{href}"{" class=active" if key == name else ""}>{escape(title)}</a>'
        for key, href, title in PAGES
    )
    title = dict((k, t) for k, _h, t in PAGES)[name]
    chart_head = (
        '<link rel="stylesheet" href="/static/vendor/uPlot.min.css">'
        '<script src="/static/vendor/uPlot.iife.min.js" defer></script>'
        if charts else ""
    )
    mode = "live from the daemon" if live else "stored twin (no daemon running)"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="csrf-token" content="{escape(csrf)}">'
        f"<title>edgetwin · {escape(title)}</title>"
        '<link rel="icon" href="data:,">'
        '<link rel="stylesheet" href="/static/dashboard.css">'
        f"{chart_head}"
        '<script src="/static/dashboard.js" defer></script>'
        f'</head><body data-page="{escape(name)}" data-live="{"1" if live else "0"}">'
        f'<header><strong>edgetwin</strong><nav>{nav}</nav>'
        f'<span id="mode" class="mode">{escape(mode)}</span></header>'
        f"<main>{body}</main>"
        f'<script type="application/json" id="initial">{_script_safe(json_text(data))}</script>'
        "</body></html>"
    )


def now_body() -> str:
    return (
        '<section><h2>Sources</h2><table id="sources"><thead><tr><th>source</th><th>kind</th>'
        "<th>state</th><th>since</th><th>rate</th><th>battery</th><th>samples</th><th>drops</th>"
        "<th>gaps</th><th>last sample</th><th>last error</th></tr></thead><tbody></tbody></table>"
        '</section><section class="row"><div><h2>Daemon</h2><dl id="daemon"></dl></div>'
        '<div><h2>Last forecast</h2><div id="last-forecast"></div></div></section>'
        '<section><h2>Stored streams</h2><table id="streams"><thead><tr><th>stream</th>'
        "<th>samples</th><th>first</th><th>last</th></tr></thead><tbody></tbody></table>"
        "</section>"
    )


def timeline_body() -> str:
    ranges = (("5 min", 300), ("1 h", 3600), ("6 h", 21600), ("24 h", 86400),
              ("7 days", 7 * 86400), ("30 days", 30 * 86400))
    buttons = "".join(f'<button type=button data-range="{s}">{escape(t)}</button>'
                      for t, s in ranges)
    # which features to chart: all, the body's (schema v1) or the surroundings (v2)
    groups = (("all features", ""), ("body", ",".join(LAYOUTS[1])),
              ("surroundings", ",".join(ENVIRONMENT)))
    group_buttons = "".join(
        f'<button type=button data-features="{escape(v)}"'
        f'{" class=active" if not v else ""}>{escape(t)}</button>' for t, v in groups)
    return (
        f'<section><div class="toolbar" id="ranges">{buttons}'
        '<span id="range-label"></span><span id="live-label"></span></div>'
        f'<div class="toolbar" id="groups">{group_buttons}</div>'
        '<p class="legend"><span class="swatch imputed"></span>imputed '
        '<span class="swatch lowq"></span>low quality <span class="swatch marker"></span>marker'
        '</p><div id="charts"></div><p id="timeline-note" class="note"></p></section>'
    )


def forecasts_body() -> str:
    return ('<section><div id="forecast-charts"></div></section>'
            '<section><h2>Score against baselines</h2><div id="score"></div></section>')


def privacy_body(doc: dict[str, Any]) -> str:
    rows = []
    for c in doc["consents"]:
        granted = bool(c["granted"])
        action = (
            f'<button type=button class="danger" data-action="consent/revoke" '
            f'data-metric="{escape(c["metric"])}" data-confirm="Stop sharing '
            f'{escape(c["metric"])}? Unsent releases are cancelled.">revoke</button>'
            if granted else
            f'<button type=button data-action="consent/grant" data-metric="{escape(c["metric"])}"'
            f' data-period="{escape(c["period"])}" data-confirm="Share a differentially private '
            f'{escape(c["statistic"])} of {escape(c["feature"])} once per {escape(c["period"])}?"'
            ">grant</button>"
        )
        since = _time(c.get("granted_at")) if granted else ""
        rows.append(
            f"<tr><td>{escape(c['metric'])}</td><td>{escape(c['statistic'])} of "
            f"{escape(c['feature'])} ({escape(c['unit'])})</td><td>once per "
            f"{escape(c['period'])}</td><td>{'yes' if granted else 'no'}</td>"
            f"<td>{escape(since)}</td><td>{action}</td></tr>"
        )
    b = doc["budget"]
    charged = "".join(
        f"<tr><td>{escape(c['period'])} from {escape(_time(c['period_start']))}</td>"
        f"<td>{c['spent']:.3g}</td><td>{c['remaining']:.3g}</td></tr>"
        for c in reversed(b.get("charged", []))
    ) or '<tr><td colspan=3>nothing charged yet</td></tr>'
    ob = doc["outbox"]
    unsent = "".join(
        f"<tr><td>{escape(str(e.get('state')))}</td><td>{escape(str(e.get('metric')))}</td>"
        f"<td>{escape(str(e.get('attempts')))}</td><td>{escape(str(e.get('last_error') or ''))}"
        "</td></tr>"
        for e in ob.get("unsent", [])
    ) or '<tr><td colspan=4>nothing waiting</td></tr>'
    au = doc["audit"]
    chain = (
        f'<p class="ok" id="audit-chain">audit chain verified: {au["total"]} entries, '
        "none edited, deleted or reordered</p>"
        if au["verified"] else
        '<p class="bad" id="audit-chain">audit chain DAMAGED: '
        + escape("; ".join(au["problems"])) + "</p>"
    )
    audit_rows = "".join(
        f"<tr><td>{escape(str(e.get('seq')))}</td><td>{escape(_time(e.get('t')))}</td>"
        f"<td>{escape(str(e.get('event')))}</td><td>{escape(_details(e.get('details')))}</td></tr>"
        for e in reversed(au["entries"])
    )
    return (
        '<section><h2>Consent</h2><p class="note">Nothing leaves this device unless you grant it;'
        " only differentially private summaries ever do.</p>"
        '<table id="consents"><thead><tr><th>metric</th><th>what leaves</th><th>how often</th>'
        f"<th>granted</th><th>since</th><th></th></tr></thead><tbody>{''.join(rows)}</tbody>"
        "</table></section>"
        '<section><h2>Privacy budget (epsilon)</h2><dl id="budget">'
        f"<dt>this {escape(str(b.get('period')))}</dt><dd>spent {b['epsilon_spent']:.3g}, left "
        f"{b['epsilon_remaining']:.3g} of {b.get('epsilon_per_period', 0):.3g}</dd>"
        f"<dt>lifetime</dt><dd>spent {b['lifetime_spent']:.3g}, left "
        f"{b['lifetime_remaining']:.3g} of {b.get('epsilon_lifetime', 0):.3g}</dd></dl>"
        "<table><thead><tr><th>charged to</th><th>spent</th><th>left</th></tr></thead>"
        f"<tbody>{charged}</tbody></table></section>"
        f'<section><h2>Outbox</h2><p>pending {ob.get("pending", 0)}, sent {ob.get("sent", 0)}, '
        f'failed {ob.get("failed", 0)}, cancelled {ob.get("cancelled", 0)}</p>'
        "<table><thead><tr><th>state</th><th>metric</th><th>attempts</th><th>last error</th>"
        f"</tr></thead><tbody>{unsent}</tbody></table></section>"
        f'<section><h2>Audit log</h2>{chain}<table id="audit"><thead><tr><th>#</th><th>when</th>'
        f"<th>event</th><th>details</th></tr></thead><tbody>{audit_rows}</tbody></table></section>"
        '<section><h2>Forget</h2><p class="note">Crypto-shredding destroys the keys, then the '
        "rows. There is no undo.</p><div class=toolbar>"
        '<label>stream <input id="forget-stream" placeholder="e.g. simulator.vitals"></label>'
        '<button type=button class="danger" data-action="forget" data-field="stream">forget '
        "stream</button>"
        '<label>before <input id="forget-before" type="date"></label>'
        '<button type=button class="danger" data-action="forget" data-field="before">forget '
        "before</button></div></section>"
    )


def devices_body(devices: list[dict[str, Any]], live: bool) -> str:
    rows = "".join(
        f"<tr><td>{escape(d['name'])}</td><td>{escape(str(d.get('kind')))}</td>"
        f"<td>{escape(str(d.get('profile') or d.get('board') or d.get('sensor') or ''))}</td>"
        f"<td>{escape(str(d.get('address') or d.get('port') or d.get('host') or ''))}</td>"
        f"<td>{escape(_details({k: v for k, v in d.items() if k not in _SHOWN}))}</td>"
        f'<td><button type=button class="danger" data-action="pair/remove" '
        f'data-name="{escape(d["name"])}" data-confirm="Unpair {escape(d["name"])}? Its recorded '
        f'data stays (see Forget).">remove</button></td></tr>'
        for d in devices
    ) or '<tr><td colspan=6>no sensors paired</td></tr>'
    restart = (" The running daemon picks up pairing changes at its next start."
               if live else "")
    return (
        '<section><h2>Paired sensors</h2><table id="devices"><thead><tr><th>name</th>'
        "<th>kind</th><th>profile</th><th>address</th><th>details</th><th></th></tr></thead>"
        f"<tbody>{rows}</tbody></table><p class=note>{escape(restart)}</p></section>"
        "<section><h2>Scan and pair</h2><p><button type=button id=scan data-action=scan>"
        "scan for sensors</button> <span class=note>about 5 s: Bluetooth LE health and "
        "room-climate devices, serial bridges and particulate sensors (not the ports of "
        "paired sensors), BrainFlow dongles</span></p>"
        '<table id="scan-results" hidden><thead><tr><th>transport</th><th>address</th>'
        "<th>name</th><th>what</th><th>pair with</th></tr></thead><tbody></tbody></table>"
        '<ul id="scan-notes" class=note></ul>'
        "<p class=note>Pairing may ask for a PIN on the device itself, and BTHome sensors need "
        "their bind key: run the <em>pair with</em> command in a terminal (it checks the "
        "device before saving it).</p></section>"
    )


_SHOWN = {"name", "kind", "profile", "board", "sensor", "address", "port", "host"}


def _time(t: Any) -> str:
    if not isinstance(t, int | float):
        return ""
    return dt.datetime.fromtimestamp(float(t), tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _details(d: Any) -> str:
    if not isinstance(d, dict):
        return ""
    return " ".join(f"{k}={v}" for k, v in d.items())


def _script_safe(text: str) -> str:
    """JSON inside ``<script>``: no ``</script>`` or ``<!--`` can end the block early."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
