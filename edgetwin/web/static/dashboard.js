// edgetwin dashboard: small vanilla JS, no build step. Data comes from the page's
// <script type="application/json" id="initial"> block, /api/* and /api/events (SSE).
// window.edgetwin exposes what the pages draw (tests read chart data from it).
(function () {
  "use strict";
  const body = document.body;
  const page = body.dataset.page;
  const live = body.dataset.live === "1";
  const initial = JSON.parse(document.getElementById("initial").textContent);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const state = { page: page, live: live, initial: initial, charts: {}, events: 0, lastEvent: null };
  window.edgetwin = state;

  // -- helpers ---------------------------------------------------------------------------
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function fmtTime(t) {
    if (t === null || t === undefined) return "–";
    return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }
  function fmtNum(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    return Number(v).toFixed(digits === undefined ? 1 : digits);
  }
  function ago(t) {
    if (!t) return "–";
    const s = Date.now() / 1000 - t;
    if (s < 0) return "ahead of this clock";  // a replay or a fast simulator stamps ahead
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " days ago";
  }
  function row(cells) {
    const tr = el("tr");
    for (const c of cells) {
      const td = el("td");
      if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? "–" : String(c);
      tr.appendChild(td);
    }
    return tr;
  }
  function fill(tbody, rows) {
    tbody.replaceChildren(...rows);
  }
  function toast(text) {
    let t = document.getElementById("toast");
    if (!t) { t = el("div"); t.id = "toast"; body.appendChild(t); }
    t.textContent = text;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(function () { t.remove(); }, 6000);
  }
  function subscribe(handlers) {
    if (!live || !window.EventSource) return;
    const es = new EventSource("/api/events");
    for (const name of Object.keys(handlers)) {
      es.addEventListener(name, function (e) {
        state.events += 1;
        const data = JSON.parse(e.data);
        state.lastEvent = { name: name, data: data, at: Date.now() };
        handlers[name](data);
      });
    }
    state.source = es;
  }
  function chartWidth(container) {
    return Math.max(320, (container.clientWidth || 900) - 10);
  }

  // -- actions (consent, forget, pairing): confirm in the page, then POST with the CSRF token
  function confirmThen(text, action) {
    const box = el("div"); box.id = "confirm";
    const inner = el("div");
    inner.appendChild(el("p", text));
    const yes = el("button", "Yes, do it", "danger"); yes.type = "button"; yes.id = "confirm-yes";
    const no = el("button", "Cancel"); no.type = "button"; no.id = "confirm-no";
    inner.append(yes, " ", no);
    box.appendChild(inner);
    body.appendChild(box);
    no.addEventListener("click", function () { box.remove(); });
    yes.addEventListener("click", function () { box.remove(); action(); });
  }
  async function post(path, payload) {
    const resp = await fetch("/api/" + path, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(payload),
    });
    let doc = null;
    try { doc = await resp.json(); } catch (e) { doc = null; }
    if (!resp.ok) throw new Error((doc && doc.error) || resp.status + " " + resp.statusText);
    return doc;
  }
  document.addEventListener("click", function (ev) {
    const b = ev.target.closest("button[data-action]");
    if (!b) return;
    const action = b.dataset.action;
    if (action === "scan") { scan(b); return; }  // reads only: nothing to confirm
    let payload = {};
    let text = b.dataset.confirm;
    if (action === "forget") {
      const field = b.dataset.field;
      const value = document.getElementById("forget-" + field).value.trim();
      if (!value) { toast("say which " + field + " to forget"); return; }
      payload[field] = value;
      text = field === "stream" ? "Forget the stream " + value + "? There is no undo."
        : "Forget everything recorded before " + value + " (UTC)? There is no undo.";
    } else if (action.startsWith("consent/")) {
      payload = { metric: b.dataset.metric };
      if (b.dataset.period) payload.period = b.dataset.period;
    } else if (action === "pair/remove") {
      payload = { name: b.dataset.name };
    }
    confirmThen(text, async function () {
      try {
        await post(action, payload);
        toast("done");
        setTimeout(function () { location.reload(); }, 400);
      } catch (e) {
        toast("refused: " + e.message);
      }
    });
  });

  async function scan(button) {
    const table = document.getElementById("scan-results");
    const notes = document.getElementById("scan-notes");
    button.disabled = true;
    button.textContent = "scanning...";
    try {
      const doc = await post("scan", {});
      const tbody = table.querySelector("tbody");
      tbody.replaceChildren();
      for (const d of doc.devices) {
        const cmd = el("code", d["pair with"]);
        tbody.appendChild(row([d.transport, d.address, d.name, d.what, cmd]));
      }
      if (!doc.devices.length) tbody.appendChild(row(["nothing found", "", "", "", ""]));
      table.hidden = false;
      notes.replaceChildren(...doc.notes.map(function (n) { return el("li", n); }));
      state.scan = doc;
    } catch (e) {
      toast("scan failed: " + e.message);
    } finally {
      button.disabled = false;
      button.textContent = "scan for sensors";
    }
  }

  // -- Now -------------------------------------------------------------------------------
  const since = {};
  let lastCpu = null;
  function renderNow(st) {
    const now = Date.now() / 1000;
    const rows = (st.sources || []).map(function (s) {
      if (!since[s.name] || since[s.name].state !== s.state) since[s.name] = { state: s.state, t: now };
      if (s.state_since) since[s.name].t = s.state_since;  // the daemon's own note
      const stateCell = el("span", s.state, "state-" + s.state);
      return row([s.name, s.kind, stateCell, ago(since[s.name].t), s.rate_hz === undefined ? "–" : fmtNum(s.rate_hz) + " Hz",
        s.battery === undefined || s.battery === null ? "–" : s.battery + " %", s.samples, s.drops, s.gaps,
        s.last_sample_t ? ago(s.last_sample_t) : "–", s.last_error || ""]);
    });
    fill(document.querySelector("#sources tbody"), rows.length ? rows : [row(["no sources", "", "", "", "", "", "", "", "", "", ""])]);
    const d = st.daemon || {};
    const dl = document.getElementById("daemon");
    const items = [["running", d.running ? "yes (pid " + d.pid + ")" : "no"]];
    if (d.running) {
      let cpu = "–";
      if (lastCpu && d.uptime_s > lastCpu.up) cpu = fmtNum(100 * (d.cpu_s - lastCpu.cpu) / (d.uptime_s - lastCpu.up)) + " % of a core";
      lastCpu = { cpu: d.cpu_s, up: d.uptime_s };
      const lag = d.loop_lag_ms || {};
      items.push(["uptime", fmtNum(d.uptime_s / 60) + " min"], ["CPU", cpu],
        ["memory (RSS)", fmtNum((d.rss_bytes || 0) / 1048576) + " MiB"],
        ["event-loop lag", "p50 " + fmtNum(lag.p50, 2) + " ms, p99 " + fmtNum(lag.p99, 2) + " ms"],
        ["frames / forecasts", d.frames + " / " + d.predictions],
        ["last frame", fmtTime(d.last_frame_t)]);
      if (d.commit_failing) items.push(["commits failing", d.commit_failing.error]);
    }
    dl.replaceChildren(...items.flatMap(function (kv) { return [el("dt", kv[0]), el("dd", kv[1])]; }));
    renderLastForecast(st.last_prediction);
    const streams = ((st.store || {}).streams || []).map(function (s) {
      return row([s.name, s.samples, fmtTime(s.first_t), fmtTime(s.last_t)]);
    });
    fill(document.querySelector("#streams tbody"), streams);
    state.status = st;
  }
  function renderLastForecast(p) {
    const box = document.getElementById("last-forecast");
    if (!p) { box.textContent = "no forecast yet"; return; }
    const h = p.horizon || [];
    const b = p.band || [];
    box.replaceChildren(
      el("p", p.target + " after " + fmtTime(p.t) + (p.anomaly ? " — anomaly" : "")),
      el("p", "next " + h.length + " steps of " + p.step_s + " s: " + h.map(function (v) { return fmtNum(v); }).join(", ")),
      el("p", "band: " + b.map(function (x) { return fmtNum(x[0]) + "–" + fmtNum(x[1]); }).join(", "), "note"));
    state.lastPrediction = p;
  }

  // -- Timeline ----------------------------------------------------------------------------
  const COLORS = ["#b3261e", "#1565c0", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037"];
  function shadeHook(spans, markers) {
    return function (u) {
      const ctx = u.ctx;
      const top = u.bbox.top, h = u.bbox.height;
      ctx.save();
      for (const [kind, color] of [["low_quality", "rgba(120,120,120,0.25)"], ["imputed", "rgba(255,165,0,0.35)"]]) {
        ctx.fillStyle = color;
        for (const s of spans[kind] || []) {
          const x0 = u.valToPos(s[0], "x", true), x1 = u.valToPos(s[1], "x", true);
          ctx.fillRect(x0, top, Math.max(1, x1 - x0), h);
        }
      }
      ctx.strokeStyle = "#6a1b9a";
      ctx.lineWidth = 1;
      for (const m of markers || []) {
        const x = u.valToPos(m.t, "x", true);
        ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + h); ctx.stroke();
      }
      ctx.restore();
    };
  }
  function drawTimeline(doc) {
    const box = document.getElementById("charts");
    for (const p of Object.values((state.charts.timeline || {}).plots || {})) p.destroy();
    box.replaceChildren();
    const plots = {};
    const pts = doc.points;
    doc.features.forEach(function (name, i) {
      const div = el("div", null, "chart"); div.dataset.feature = name;
      box.appendChild(div);
      const opts = {
        title: name, width: chartWidth(box), height: 150,
        scales: { x: { time: true, range: [doc.from, doc.to] } },
        series: [{}, { label: name, stroke: COLORS[i % COLORS.length], width: 1, spanGaps: false }],
        hooks: { drawClear: [shadeHook(doc.shading[name] || {}, doc.markers)], setSelect: [zoomTo] },
        cursor: { drag: { x: true, y: false, setScale: false } },  // the server re-downsamples
        legend: { live: false },
      };
      plots[name] = new uPlot(opts, [pts.t.slice(), pts.columns[name].slice()], div);
    });
    document.getElementById("range-label").textContent = fmtTime(doc.from) + " – " + fmtTime(doc.to) +
      " · " + doc.frames + " frames → " + pts.t.length + " points";
    document.getElementById("timeline-note").textContent = doc.features.length ? "" :
      "no feature frames in this range";
    state.charts.timeline = { doc: doc, plots: plots, following: !timelineRange.to };
  }
  const timelineRange = {};
  // a drag over a chart asks the server for that range at full resolution (5 min at least)
  function zoomTo(u) {
    if (u.select.width < 5) return;
    const from = u.posToVal(u.select.left, "x");
    const to = u.posToVal(u.select.left + u.select.width, "x");
    u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
    timelineRange.to = to;
    for (const x of document.querySelectorAll("#ranges button")) x.classList.remove("active");
    loadTimeline({ from: String(from), to: String(to) });
  }
  const timelineGroup = { features: "" };  // "" charts every feature; else a comma list
  function inGroup(name) {
    return !timelineGroup.features || timelineGroup.features.split(",").includes(name);
  }
  async function loadTimeline(params) {
    const q = new URLSearchParams(params);
    if (timelineGroup.features) q.set("features", timelineGroup.features);
    const resp = await fetch("/api/timeline?" + q.toString(), { credentials: "same-origin" });
    if (!resp.ok) { toast("timeline: " + (await resp.text())); return; }
    drawTimeline(await resp.json());
  }
  let reloading = null;
  function appendFrames(msg) {
    const frames = msg.frames;
    state.latencies = (state.latencies || []).concat([Date.now() / 1000 - msg.sent_at]).slice(-100);
    const tl = state.charts.timeline;
    if (!tl || !tl.following || !frames.length) return;
    const missing = frames.some(function (f) {
      return Object.keys(f.features).some(function (n) { return !(n in tl.plots) && inGroup(n); });
    });
    if (missing) {  // a feature appeared that has no chart yet: fetch the range again
      if (!reloading) reloading = setTimeout(function () {
        reloading = null;
        loadTimeline({ range: String(tl.doc.to - tl.doc.from) });
      }, 1000);
      return;
    }
    for (const [name, u] of Object.entries(tl.plots)) {
      const t = u.data[0].slice(), y = u.data[1].slice();
      for (const f of frames) {
        if (t.length && f.t <= t[t.length - 1]) continue;
        t.push(f.t);
        y.push(f.features[name] === undefined ? null : f.features[name]);
      }
      const span = tl.doc.to - tl.doc.from;
      const end = Math.max(tl.doc.to, t[t.length - 1] || tl.doc.to);
      u.setScale("x", { min: end - span, max: end });
      u.setData([t, y], false);
      u.redraw();
    }
    document.getElementById("live-label").textContent = "live: " + fmtTime(frames[frames.length - 1].t);
  }

  // -- Forecasts -------------------------------------------------------------------------
  function drawForecasts(doc) {
    const box = document.getElementById("forecast-charts");
    box.replaceChildren();
    state.charts.forecasts = {};
    if (!doc.targets.length) { box.appendChild(el("p", "no forecasts stored yet")); }
    for (const target of doc.targets) {
      const f = doc.forecasts[target];
      const p = f.prediction;
      const hT = p.horizon.map(function (_, k) { return p.t + (k + 1) * p.step_s; });
      const t = f.observed_t.concat(hT.filter(function (x) { return x > (f.observed_t[f.observed_t.length - 1] || -Infinity); }));
      const idx = new Map(t.map(function (x, i) { return [x, i]; }));
      const obs = t.map(function () { return null; });
      f.observed_t.forEach(function (x, i) { obs[idx.get(x)] = f.observed[i]; });
      const mid = t.map(function () { return null; }), lo = mid.slice(), hi = mid.slice();
      hT.forEach(function (x, k) {
        const i = idx.get(x);
        if (i === undefined) return;
        mid[i] = p.horizon[k]; lo[i] = p.band[k][0]; hi[i] = p.band[k][1];
      });
      const anomalies = doc.anomalies.filter(function (a) { return a.target === target; });
      const div = el("div", null, "chart"); div.dataset.target = target;
      box.appendChild(div);
      const opts = {
        title: target + " — forecast after " + fmtTime(p.t) + " (" + (p.model || "model") + ")",
        width: chartWidth(box), height: 200, scales: { x: { time: true } },
        series: [{}, { label: "observed", stroke: "#1d232a", width: 1 },
          { label: "forecast", stroke: "#b3261e", width: 2 },
          { label: "band low", stroke: "rgba(179,38,30,0.3)" }, { label: "band high", stroke: "rgba(179,38,30,0.3)" }],
        bands: [{ series: [4, 3], fill: "rgba(179,38,30,0.12)" }],
        hooks: { drawClear: [shadeHook({ imputed: f.observed_imputed.concat(p.imputed || []) }, anomalies)] },
      };
      const u = new uPlot(opts, [t, obs, mid, lo, hi], div);
      const canvas = el("canvas", null, "attention");
      canvas.title = "attention over the context (oldest left)";
      div.appendChild(el("div", "attention over the context, oldest first" + (p.influence ? "; influence below" : ""), "note"));
      div.appendChild(canvas);
      drawStrip(canvas, p.attention || []);
      if (p.influence && p.influence.length) {
        const c2 = el("canvas", null, "attention"); div.appendChild(c2); drawStrip(c2, p.influence);
      }
      state.charts.forecasts[target] = u;
    }
    const sc = document.getElementById("score");
    if (!doc.score || !doc.score.windows) { sc.textContent = "no score yet (needs stored forecasts and what followed them)"; return; }
    const table = el("table");
    table.appendChild(row(["window", "target", "cells", "served", "global", "persistence", "context mean", "band coverage"]));
    for (const [w, per] of Object.entries(doc.score.windows)) {
      for (const [target, e] of Object.entries(per)) {
        const m = e.mae || {};
        table.appendChild(row([w, target, e.cells, fmtNum(m.served, 2), fmtNum(m.global, 2), fmtNum(m.persistence, 2),
          fmtNum(m.context_mean, 2), e.coverage === null || e.coverage === undefined ? "–" : Math.round(100 * e.coverage) + " %"]));
      }
    }
    sc.replaceChildren(table);
  }
  function drawStrip(canvas, weights) {
    const w = canvas.clientWidth || 800, h = 18;
    canvas.width = w; canvas.height = h;
    const ctx = canvas.getContext("2d");
    const max = Math.max.apply(null, weights.concat([1e-12]));
    const cell = w / Math.max(1, weights.length);
    weights.forEach(function (v, i) {
      ctx.fillStyle = "rgba(21,101,192," + (v / max).toFixed(3) + ")";
      ctx.fillRect(i * cell, 0, Math.ceil(cell), h);
    });
  }

  // -- start -----------------------------------------------------------------------------
  function start() {
    if (page === "now") {
      renderNow(initial);
      subscribe({ status: renderNow, prediction: renderLastForecast });
    } else if (page === "timeline") {
      const sp = new URLSearchParams(location.search);
      if (sp.get("to")) timelineRange.to = sp.get("to");
      drawTimeline(initial);
      document.getElementById("ranges").addEventListener("click", function (ev) {
        const b = ev.target.closest("button[data-range]");
        if (!b) return;
        for (const x of document.querySelectorAll("#ranges button")) x.classList.toggle("active", x === b);
        loadTimeline({ range: b.dataset.range });
      });
      document.getElementById("groups").addEventListener("click", function (ev) {
        const b = ev.target.closest("button[data-features]");
        if (!b) return;
        for (const x of document.querySelectorAll("#groups button")) x.classList.toggle("active", x === b);
        timelineGroup.features = b.dataset.features;
        const tl = state.charts.timeline;
        loadTimeline(tl && !tl.following ? { from: String(tl.doc.from), to: String(tl.doc.to) }
          : { range: String(tl ? tl.doc.to - tl.doc.from : 86400) });
      });
      subscribe({ frames: appendFrames });
    } else if (page === "forecasts") {
      drawForecasts(initial);
      let pending = null;
      subscribe({
        prediction: function () {  // redraw at most once a second with the stored trace
          if (pending) return;
          pending = setTimeout(async function () {
            pending = null;
            const resp = await fetch("/api/forecasts", { credentials: "same-origin" });
            if (resp.ok) drawForecasts(await resp.json());
          }, 1000);
        },
      });
    }
    state.ready = true;
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
