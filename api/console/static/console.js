// dCMMS operator console. Plain JS, no build step. Every value from the server is put
// into the page as text (textContent), never as HTML: dead letters hold untrusted bytes.
"use strict";
(function () {
  const KEY = "dcmms-console-key";
  const body = document.body;
  const page = body.dataset.page;
  const content = document.getElementById("content");
  const charts = {};

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const fmt = (n, d = 1) => (n === null || n === undefined || Number.isNaN(n)) ? "–"
    : Number(n).toLocaleString("en", {maximumFractionDigits: d});
  const when = (ms) => ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z" : "–";
  function dur(s) {
    if (s === null || s === undefined) return "–";
    s = Math.floor(s);
    if (s < 120) return s + " s";
    if (s < 7200) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  function table(headers, rows, numeric = []) {
    return h("table", {},
      h("thead", {}, h("tr", {}, headers.map((t, i) => h("th", {class: numeric.includes(i) ? "num" : null}, t)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c, i) =>
        h("td", {class: numeric.includes(i) ? "num" : null}, c))))));
  }
  const badge = (text) => h("span", {class: "badge " + text}, text);
  function show(...nodes) { content.replaceChildren(...nodes.flat()); }

  // -- auth ---------------------------------------------------------------------------------
  function key() { return sessionStorage.getItem(KEY); }
  function toLogin() {
    sessionStorage.removeItem(KEY);
    const next = location.pathname + location.search;
    location.assign("/login?next=" + encodeURIComponent(next));
  }
  async function api(path, options = {}) {
    const headers = Object.assign({"Authorization": "Bearer " + key()}, options.headers || {});
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(options.json);
    }
    const resp = await fetch(path, Object.assign({}, options, {headers}));
    if (resp.status === 401) { toLogin(); throw new Error("not signed in"); }
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error((data.message || resp.statusText) + " (HTTP " + resp.status + ")");
    return data;
  }
  function errorBox(err) { return h("p", {class: "error", role: "alert"}, String(err.message || err)); }

  // -- charts (uPlot when installed) ----------------------------------------------------------
  const COLORS = ["#0969da", "#1a7f37", "#cf222e", "#8250df", "#bc4c00", "#9a6700", "#57606a"];
  function chart(id, container, xs, series, opts = {}) {
    if (typeof uPlot === "undefined") return;
    const width = Math.max(300, container.clientWidth || 600);
    const data = [xs, ...series.map((s) => s.values)];
    const config = {
      width, height: opts.height || 220,
      scales: {x: opts.xrange ? {time: true, range: () => opts.xrange} : {time: true}},
      series: [{}, ...series.map((s, i) => ({label: s.label, stroke: s.color || COLORS[i % COLORS.length],
        width: s.width || 1.5, dash: s.dash}))],
      axes: [{}, {label: opts.ylabel || ""}],
    };
    if (charts[id]) charts[id].destroy();
    container.replaceChildren();
    charts[id] = new uPlot(config, data, container);
  }

  // -- pages --------------------------------------------------------------------------------
  const RATE_LABELS = [["read", "read"], ["valid", "valid"], ["invalid", "invalid"],
    ["duplicates", "duplicates dropped"], ["dead_lettered", "dead-lettered"],
    ["alarms_raised", "alarms raised"], ["alarms_cleared", "alarms cleared"]];

  async function overview() {
    const d = await api("/console/api/overview");
    const services = table(["service", "state", "pid", "uptime", "restarts", "last exit"],
      d.services.map((s) => [h("span", {class: s.up ? "up" : "down"}, s.up ? "up" : (s.running ? "unhealthy" : "down")),
        s.pid || "–", dur(s.uptime_s), s.restarts, [s.last_exit || "–", s.pending ? " [" + s.pending + "]" : ""]])
        .map((r, i) => [d.services[i].name, ...r]), [4]);
    const job = d.job;
    const jobCard = h("div", {class: "card", id: "job"}, h("h2", {}, "Flink job"),
      job ? table(["name", "state", "uptime", "last checkpoint", "checkpoint age", "checkpoints ok / failed"],
        [[job.name, badge(job.state), dur(job.uptime_s),
          job.last_checkpoint_id ? "#" + job.last_checkpoint_id + " at " + when(job.last_checkpoint_at) : "none yet",
          dur(job.checkpoint_age_s), job.checkpoints_completed + " / " + job.checkpoints_failed]])
        : h("p", {class: "error"}, d.job_error || "no job"));
    const rates = d.rates || {};
    const c = d.counters || {};
    const totals = {read: c.read, valid: c.valid, invalid: c.invalid, duplicates: c.duplicates_dropped,
      dead_lettered: c.dead_letters, alarms_raised: c.alarms_raised, alarms_cleared: c.alarms_cleared};
    const rateRows = RATE_LABELS.map(([k, label]) => [label, fmt(rates[k]), fmt(totals[k] || 0, 0)]);
    for (const name of Object.keys(c).sort()) {
      if (/^(invalid_|decode_failed_|enrich_failed_)/.test(name)) {
        const label = name.replace(/^invalid_/, "invalid: ").replace(/^decode_failed_/, "decode failed: ")
          .replace(/^enrich_failed_/, "enrich failed: ");
        rateRows.push(["  " + label, fmt(rates[name]), fmt(c[name], 0)]);
      }
    }
    const rateCard = h("div", {class: "card", id: "rates"}, h("h2", {}, "Rates (per minute, last minute) and totals since the job started"),
      Object.keys(rates).length ? null : h("p", {class: "muted"}, "Rates appear after two samples (every " + d.sample_interval_s + " s)."),
      table(["counter", "per minute", "total"], rateRows, [1, 2]));
    const lagCard = h("div", {class: "card", id: "lag"}, h("h2", {}, "Consumer lag (raw_telemetry, the job's group)"),
      d.lag_error ? h("p", {class: "error"}, d.lag_error) :
        table(["partition", "next offset", "committed", "lag"], d.lag.map((p) => [p.partition, p.high, p.committed === null ? "–" : p.committed, p.lag === null ? "–" : p.lag]), [1, 2, 3]));
    const chartBox = h("div", {class: "chart", id: "rates-chart"});
    show(h("div", {class: "grid"}, h("div", {class: "card"}, h("h2", {}, "Services"), services), jobCard),
      rateCard, h("div", {class: "card"}, h("h2", {}, "Last hour (events per minute)"), chartBox,
        d.history.length ? null : h("p", {class: "muted"}, "Collecting samples…")), lagCard);
    if (d.history.length) {
      chart("rates", chartBox, d.history.map((r) => r.at),
        RATE_LABELS.map(([k, label]) => ({label, values: d.history.map((r) => r[k])})));
    }
  }

  async function topics() {
    const d = await api("/console/api/topics");
    const out = h("div", {id: "messages"});
    const cards = d.data.map((t) => h("div", {class: "card topic", "data-topic": t.topic},
      h("h2", {}, t.topic), t.error ? h("p", {class: "error"}, t.error) : null,
      h("p", {}, fmt(t.messages, 0) + " messages in " + t.partitions.length + " partitions",
        t.consumer_group ? ", lag of group " + t.consumer_group + ": " + fmt(t.lag, 0) : ""),
      table(["partition", "first offset", "next offset", "messages", "committed", "lag"],
        t.partitions.map((p) => [p.partition, p.low, p.high, p.messages, p.committed ?? "–", p.lag ?? "–"]), [1, 2, 3, 4, 5]),
      h("button", {type: "button", onclick: () => messages(t.topic, out)}, "Newest messages")));
    show(cards, out);
  }

  async function messages(topic, out) {
    out.replaceChildren(h("p", {class: "muted"}, "Reading " + topic + "…"));
    try {
      const d = await api("/console/api/topics/" + encodeURIComponent(topic) + "/messages?limit=20");
      out.replaceChildren(h("div", {class: "card"}, h("h2", {}, "Newest messages of " + topic + " (decoded with the schema registry)"),
        d.data.length ? table(["id", "time", "schema", "value"], d.data.map((m) => [m.id, when(m.timestamp), m.schema_id ?? "–",
          h("pre", {}, m.error ? "undecodable: " + m.error : JSON.stringify(m.value, null, 1))])) : h("p", {}, "No messages.")));
    } catch (err) { out.replaceChildren(errorBox(err)); }
  }

  const STAGES = ["", "decode", "validate", "enrich", "sink", "bridge", "ingest", "unknown"];
  const SOURCES = ["", "kafka", "mqtt", "http", "pipeline"];
  async function deadLetters() {
    const params = new URLSearchParams(location.search);
    const form = h("form", {class: "filters", id: "dl-filters"},
      h("label", {}, "stage", h("select", {name: "stage"}, STAGES.map((s) => h("option", {value: s, selected: params.get("stage") === s}, s || "any")))),
      h("label", {}, "source", h("select", {name: "source"}, SOURCES.map((s) => h("option", {value: s, selected: params.get("source") === s}, s || "any")))),
      h("label", {}, "reason (class or text)", h("input", {name: "reason", value: params.get("reason") || "", size: 30})),
      h("label", {}, "event id", h("input", {name: "event_id", value: params.get("event_id") || ""})),
      h("button", {type: "submit"}, "Filter"));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
      history.replaceState(null, "", "?" + q.toString());
      deadLetters().catch((err) => show(errorBox(err)));
    });
    const q = new URLSearchParams();
    for (const k of ["stage", "source", "reason", "event_id"]) if (params.get(k)) q.set(k, params.get(k));
    const d = await api("/api/v1/dead-letters?" + q.toString());
    const result = h("div", {id: "replay-result"});
    const replay = async (payload) => {
      result.replaceChildren(h("p", {class: "muted"}, "Replaying…"));
      try {
        const r = await api("/api/v1/dead-letters/replay", {method: "POST", json: payload});
        result.replaceChildren(h("div", {class: "card"}, h("strong", {}, "Replay: " + r.events_published + " event(s) re-published from " +
          r.replayed.length + " of " + r.requested + " dead letter(s)"),
          r.skipped.length ? h("ul", {}, r.skipped.map((s) => h("li", {}, s.id + " skipped: " + s.reason))) : null,
          r.failed.length ? h("ul", {class: "error"}, r.failed.map((s) => h("li", {}, s.id + " failed: " + s.reason))) : null,
          r.not_found.length ? h("p", {}, "not found: " + r.not_found.join(", ")) : null));
      } catch (err) { result.replaceChildren(errorBox(err)); }
    };
    const summary = d.summary;
    const byReason = table(["stage", "reason", "count", ""], summary.by_reason.map((r) => [r.stage, r.reason, r.count,
      h("button", {type: "button", class: "replay-reason", onclick: () => replay({all: true, stage: r.stage, reason: r.reason})}, "Replay all of this reason")]), [2]);
    const chartBox = h("div", {class: "chart", id: "dl-chart"});
    const rows = d.data.map((x) => [h("input", {type: "checkbox", class: "pick", value: x.id}), x.id, when(x.failed_at), x.stage, x.source || "–",
      h("div", {}, (x.reasons || []).map((r) => h("div", {class: "reason"}, r))), x.event_id || "–",
      h("pre", {class: "payload"}, x.payload ? (x.payload.text ?? ("base64: " + x.payload.base64)) : "–")]);
    const replaySelected = h("button", {type: "button", id: "replay-selected", onclick: () => {
      const ids = [...content.querySelectorAll("input.pick:checked")].map((e) => e.value);
      if (!ids.length) { result.replaceChildren(errorBox("Select dead letters first.")); return; }
      replay({ids});
    }}, "Replay selected");
    show(form, h("div", {class: "grid"},
      h("div", {class: "card"}, h("h2", {}, "By stage"), table(["stage", "count"], Object.entries(summary.by_stage), [1]),
        h("p", {class: "muted"}, d.matched + " matching of the newest " + d.scanned + " scanned")),
      h("div", {class: "card"}, h("h2", {}, "Per minute"), chartBox)),
      h("div", {class: "card"}, h("h2", {}, "By reason"), byReason),
      result,
      h("div", {class: "card"}, h("h2", {}, "Dead letters (newest first)"), replaySelected,
        h("p", {class: "muted"}, "Replay re-publishes the original reading to raw_telemetry after it passes validation again; the pipeline stores each event id once, so replaying twice does no harm."),
        rows.length ? table(["", "id", "failed at", "stage", "source", "reasons", "event id", "payload"], rows) : h("p", {id: "no-dead-letters"}, "No dead letters match.")));
    if (summary.per_minute.length) {
      chart("dl", chartBox, summary.per_minute.map((p) => p.at / 1000), [{label: "dead letters", values: summary.per_minute.map((p) => p.count)}], {height: 160});
    }
  }

  async function alarms() {
    const [active, hist] = await Promise.all([api("/api/v1/alarms?active=true&limit=500"),
      api("/api/v1/alarms?order=desc&limit=200")]);
    const by = h("input", {id: "ack-by", value: localStorage.getItem("dcmms-ack-by") || "operator"});
    const msg = h("div", {id: "ack-result"});
    const ack = async (alarmId) => {
      localStorage.setItem("dcmms-ack-by", by.value);
      try {
        const r = await api("/api/v1/alarms/" + encodeURIComponent(alarmId) + "/acknowledge", {method: "POST", json: {by: by.value}});
        msg.replaceChildren(h("p", {}, "Acknowledged " + r.alarm_id + " by " + r.acknowledged_by + " at " + r.acknowledged_at));
        setTimeout(() => alarms().catch((err) => show(errorBox(err))), 1500);
      } catch (err) { msg.replaceChildren(errorBox(err)); }
    };
    const activeRows = active.data.map((a) => [a.alarm_id, a.asset_id, a.sensor_id, badge(a.severity), badge(a.state), fmt(a.value, 3), fmt(a.threshold, 3), a.reason, a.timestamp,
      a.acknowledged_by ? a.acknowledged_by + " at " + a.acknowledged_at :
        h("button", {type: "button", class: "ack", "data-alarm": a.alarm_id, onclick: () => ack(a.alarm_id)}, "Acknowledge")]);
    show(h("div", {class: "card"}, h("h2", {}, "Active alarms"), h("label", {}, "acknowledge as", by), msg,
      activeRows.length ? table(["alarm", "asset", "sensor", "severity", "state", "value", "threshold", "reason", "since", "acknowledged"], activeRows, [5, 6])
        : h("p", {id: "no-active"}, "No active alarm.")),
      h("div", {class: "card"}, h("h2", {}, "History (last 24 h, newest first)"),
        table(["time", "alarm", "asset", "sensor", "severity", "transition", "value", "threshold", "acknowledged"],
          hist.data.map((a) => [a.timestamp, a.alarm_id, a.asset_id, a.sensor_id, badge(a.severity), badge(a.state), fmt(a.value, 3), fmt(a.threshold, 3),
            a.acknowledged_by ? a.acknowledged_by + " at " + a.acknowledged_at : "–"]), [6, 7])));
  }

  async function assets() {
    const d = await api("/api/v1/assets?limit=1000");
    show(h("div", {class: "card"}, table(["asset", "site", "type", "sensor types with thresholds"], d.data.map((a) =>
      [h("a", {href: "/assets/" + encodeURIComponent(a.asset_id)}, a.asset_id), a.site_name || a.site_id, a.asset_type || "–", Object.keys(a.thresholds || {}).join(", ")]))));
  }

  async function asset() {
    const id = body.dataset.asset;
    const start = new Date(Date.now() - 3600 * 1000).toISOString();
    const [info, readings] = await Promise.all([
      api("/api/v1/assets/" + encodeURIComponent(id)).catch((err) => ({error: err})),
      api("/api/v1/telemetry?asset_id=" + encodeURIComponent(id) + "&start_time=" + encodeURIComponent(start) + "&limit=10000&order=asc")]);
    const bySensor = {};
    for (const r of readings.data) (bySensor[r.sensor_id] = bySensor[r.sensor_id] || []).push(r);
    const thresholds = (info && info.thresholds) || {};
    const cards = [];
    const draws = [];
    for (const [sensor, rows] of Object.entries(bySensor).sort()) {
      const type = rows[rows.length - 1].sensor_type;
      const last = rows[rows.length - 1];
      const box = h("div", {class: "chart"});
      cards.push(h("div", {class: "card sensor", "data-sensor": sensor}, h("h2", {}, sensor + " (" + type + ")"),
        h("p", {}, "latest ", h("strong", {class: "latest-value"}, fmt(last.value, 3)), " " + (last.unit || "") + " at " + last.timestamp +
          " · " + rows.length + " readings in the last hour"), box));
      const xs = rows.map((r) => Date.parse(r.timestamp) / 1000);
      const series = [{label: sensor, values: rows.map((r) => r.value), width: 2}];
      const t = thresholds[type] || {};
      for (const [k, color, dash] of [["warning_high", "#bf8700", [6, 4]], ["critical_high", "#cf222e", [2, 3]],
        ["warning_low", "#bf8700", [6, 4]], ["critical_low", "#cf222e", [2, 3]]]) {
        if (t[k] !== null && t[k] !== undefined) series.push({label: k.replace("_", " "), values: xs.map(() => t[k]), color, dash, width: 1});
      }
      const now = Date.now() / 1000;
      draws.push(() => chart("asset-" + sensor, box, xs, series, {ylabel: last.unit || "", xrange: [now - 3600, now]}));
    }
    show(info && info.error ? errorBox(info.error) : h("p", {class: "muted"}, [info.site_name, info.asset_type, info.location].filter(Boolean).join(" · ")),
      cards.length ? cards : h("p", {id: "no-readings"}, "No reading in the last hour."));
    draws.forEach((f) => f());
  }

  async function login() {
    content.replaceChildren();
    const form = document.getElementById("login-form");
    const input = document.getElementById("api-key");
    input.focus();
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const resp = await fetch("/console/api/whoami", {headers: {"Authorization": "Bearer " + input.value}});
      if (!resp.ok) {
        document.getElementById("login-error").textContent = resp.status === 401 ? "That key is not valid." : "Sign-in failed (HTTP " + resp.status + ").";
        return;
      }
      sessionStorage.setItem(KEY, input.value);
      const next = new URLSearchParams(location.search).get("next");
      location.assign(next && next.startsWith("/") && !next.startsWith("//") ? next : "/");
    });
  }

  const PAGES = {overview: [overview, 5000], topics: [topics, 0], "dead-letters": [deadLetters, 0],
    alarms: [alarms, 10000], assets: [assets, 0], asset: [asset, 10000]};

  if (page === "login") { login(); return; }
  if (!key()) { toLogin(); return; }
  document.getElementById("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); location.assign("/login"); });
  api("/console/api/whoami").then((w) => { document.getElementById("who").textContent = "key " + w.key_id + " (" + w.scopes.join("+") + ")"; }).catch(() => {});
  const [render, every] = PAGES[page];
  const run = () => render().then(() => { body.dataset.loaded = String(Date.now()); })
    .catch((err) => { if (String(err.message) !== "not signed in") show(errorBox(err)); });
  run();
  if (every) setInterval(() => { if (!document.hidden) run(); }, every);
})();
