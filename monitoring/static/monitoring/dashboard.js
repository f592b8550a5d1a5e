// The staff operations dashboard: polls the staff-only JSON (monitoring/views.py dashboard_data,
// built from the same registry as /metrics) and draws it with uPlot. Counters arrive as totals and
// histograms as cumulative buckets; rates and percentiles are computed here from the difference
// between two polls, as Prometheus' rate() and histogram_quantile() would over that window.
(function () {
  "use strict";

  const root = document.getElementById("dashboard");
  if (!root || typeof uPlot === "undefined") return;
  const source = root.dataset.source;
  const pollMs = Math.max(500, parseInt(root.dataset.pollMs || "2000", 10));
  const KEEP_S = 15 * 60; // history kept in the page, and the charts' span
  const DURABLE = new Set([
    "message", "agent_started", "agent_thinking", "tool_executing", "tool_completed",
    "agent_delta", "agent_completed", "agent_failed", "agent_cancelled",
  ]);
  const COLORS = ["#4f46e5", "#12b76a", "#f79009", "#d92d20", "#7c3aed", "#0ba5ec", "#667085", "#ee46bc"];
  const history = []; // [{t, fam}]

  // --- reading the families --------------------------------------------------------------------
  function labels(key) {
    const out = {};
    if (!key) return out;
    for (const part of key.split(",")) {
      const i = part.indexOf("=");
      out[part.slice(0, i)] = part.slice(i + 1);
    }
    return out;
  }

  function series(fam, name) {
    return (fam[name] && fam[name].series) || {};
  }

  // Sum of a family's values, optionally only the series `keep(labels)` accepts.
  function total(fam, name, keep) {
    let sum = 0;
    for (const [key, value] of Object.entries(series(fam, name))) {
      if (!keep || keep(labels(key))) sum += value;
    }
    return sum;
  }

  // {label value: sum} of a family, grouped by one label.
  function by(fam, name, label, keep) {
    const out = {};
    for (const [key, value] of Object.entries(series(fam, name))) {
      const l = labels(key);
      if (keep && !keep(l)) continue;
      out[l[label]] = (out[l[label]] || 0) + value;
    }
    return out;
  }

  // A histogram's buckets summed over the series `keep` accepts: [[le (null: +Inf), cumulative]].
  function buckets(fam, name, keep) {
    const merged = new Map();
    for (const [key, h] of Object.entries(series(fam, name))) {
      if (keep && !keep(labels(key))) continue;
      for (const [le, count] of h.buckets) merged.set(le, (merged.get(le) || 0) + count);
    }
    return [...merged.entries()].sort((a, b) => (a[0] === null ? Infinity : a[0]) - (b[0] === null ? Infinity : b[0]));
  }

  // Prometheus' histogram_quantile over the observations between two snapshots.
  function quantile(q, now, then) {
    const before = new Map(then || []);
    const delta = now.map(([le, c]) => [le, c - (before.get(le) || 0)]);
    if (!delta.length) return null;
    const count = delta[delta.length - 1][1];
    if (count <= 0) return null;
    const rank = q * count;
    let prevLe = 0;
    let prevCount = 0;
    for (const [le, c] of delta) {
      if (c >= rank) {
        if (le === null) return prevLe;
        if (c === prevCount) return le;
        return prevLe + ((le - prevLe) * (rank - prevCount)) / (c - prevCount);
      }
      if (le !== null) prevLe = le;
      prevCount = c;
    }
    return prevLe;
  }

  // The snapshot closest to `windowS` seconds before the newest (never the newest itself).
  function past(windowS) {
    if (history.length < 2) return null;
    const newest = history[history.length - 1].t;
    let pick = history[0];
    for (let i = 0; i < history.length - 1; i++) {
      if (history[i].t <= newest - windowS) pick = history[i];
      else break;
    }
    return pick;
  }

  // --- charts ----------------------------------------------------------------------------------
  class Chart {
    constructor(el, unit, maxY) {
      this.el = el;
      this.unit = unit;
      this.maxY = maxY; // a fixed top of the y scale (breaker states), else from the data
      this.names = [];
      this.xs = [];
      this.ys = {};
      this.plot = null;
    }

    push(t, values) {
      for (const name of Object.keys(values)) {
        if (!(name in this.ys)) this.ys[name] = this.xs.map(() => null);
      }
      this.xs.push(t);
      for (const name of Object.keys(this.ys)) this.ys[name].push(name in values ? values[name] : null);
      while (this.xs.length && this.xs[0] < t - KEEP_S) {
        this.xs.shift();
        for (const name of Object.keys(this.ys)) this.ys[name].shift();
      }
      this.draw();
    }

    draw() {
      const names = Object.keys(this.ys).sort();
      const data = [this.xs, ...names.map((n) => this.ys[n])];
      const width = Math.max(300, this.el.clientWidth - 28);
      if (this.plot && names.join("|") === this.names.join("|")) {
        this.plot.setData(data);
        if (Math.abs(this.plot.width - width) > 4) this.plot.setSize({ width, height: 200 });
        return;
      }
      if (this.plot) this.plot.destroy();
      this.names = names;
      const unit = this.unit;
      const maxY = this.maxY;
      this.plot = new uPlot(
        {
          width,
          height: 200,
          scales: {
            x: { time: true },
            // Every series here is a count, a rate or a duration: the axis starts at 0.
            y: { range: (u, min, max) => [0, maxY || (max > 0 ? max * 1.15 : 1)] },
          },
          axes: [{ space: 70 }, { size: 72, values: (u, ticks) => ticks.map((v) => fmt(v) + unit) }],
          series: [
            {},
            ...names.map((n, i) => ({
              label: n,
              stroke: COLORS[i % COLORS.length],
              width: 1.5,
              spanGaps: true,
              value: (u, v) => (v === null || v === undefined ? "–" : fmt(v) + unit),
            })),
          ],
        },
        data,
        this.el,
      );
    }
  }

  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const a = Math.abs(v);
    if (Number.isInteger(v) && a < 1000) return String(v);
    if (a >= 1000) return Math.round(v).toLocaleString("en-US");
    if (a >= 100) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1);
    if (a >= 1) return v.toFixed(2);
    if (a === 0) return "0";
    return String(Number(v.toPrecision(2)));
  }

  const charts = {};
  for (const el of root.querySelectorAll("[data-chart]")) {
    const unit = { lag: " ms", agent: " s", queue: " s" }[el.dataset.chart] || "";
    charts[el.dataset.chart] = new Chart(el, unit, el.dataset.chart === "breakers" ? 2.2 : 0);
  }

  // --- one poll --------------------------------------------------------------------------------
  const isMessage = (l) => l.command === "send" && l.outcome === "ok";
  const isDelivery = (l) => DURABLE.has(l.type);

  function stat(id, value, shown) {
    const el = document.getElementById(id);
    if (!el) return;
    el.dataset.value = value === null ? "" : String(value);
    el.textContent = shown !== undefined ? shown : value === null ? "–" : fmt(value);
  }

  function perSecond(name, keep, then, now) {
    if (!then) return null;
    const dt = now.t - then.t;
    return dt > 0 ? Math.max(0, total(now.fam, name, keep) - total(then.fam, name, keep)) / dt : null;
  }

  function perMinuteBy(name, label, keep, then, now, prefix) {
    const out = {};
    if (!then) return out;
    const dt = now.t - then.t;
    const a = by(now.fam, name, label, keep);
    const b = by(then.fam, name, label, keep);
    for (const [k, v] of Object.entries(a)) out[prefix + k] = (Math.max(0, v - (b[k] || 0)) * 60) / dt;
    return out;
  }

  function render(now) {
    const fam = now.fam;
    const prev = history.length > 1 ? history[history.length - 2] : null;
    stat("stat-connections", total(fam, "chat_connections"));
    stat("stat-users", total(fam, "chat_users_online"));
    stat("stat-subscriptions", total(fam, "chat_subscriptions"));
    stat("stat-messages", total(fam, "chat_commands_total", isMessage));
    stat("stat-frames", total(fam, "chat_frames_sent_total"));
    stat("stat-runs", total(fam, "agent_runs_total"));
    const messagesRate = perSecond("chat_commands_total", isMessage, prev, now);
    const deliveriesRate = perSecond("chat_frames_sent_total", isDelivery, prev, now);
    stat("stat-messages-rate", messagesRate, messagesRate === null ? "–" : messagesRate.toFixed(1));
    stat("stat-deliveries-rate", deliveriesRate, deliveriesRate === null ? "–" : deliveriesRate.toFixed(1));

    const t = now.t;
    charts.sockets.push(t, {
      connections: total(fam, "chat_connections"),
      "users online": total(fam, "chat_users_online"),
      subscriptions: total(fam, "chat_subscriptions"),
    });
    if (prev) charts.throughput.push(t, { "messages/s": messagesRate, "deliveries/s": deliveriesRate });

    const w30 = past(30);
    if (w30) {
      const lagNow = buckets(fam, "chat_delivery_lag_seconds");
      const lagThen = buckets(w30.fam, "chat_delivery_lag_seconds");
      const ms = (q) => {
        const v = quantile(q, lagNow, lagThen);
        return v === null ? null : v * 1000;
      };
      charts.lag.push(t, { p50: ms(0.5), p95: ms(0.95), p99: ms(0.99) });
    }
    const w5m = past(300);
    if (w5m) {
      charts.agent.push(t, {
        "first event p95": quantile(0.95, buckets(fam, "agent_time_to_first_event_seconds"),
          buckets(w5m.fam, "agent_time_to_first_event_seconds")),
        "first token p95": quantile(0.95, buckets(fam, "agent_time_to_first_token_seconds"),
          buckets(w5m.fam, "agent_time_to_first_token_seconds")),
      });
      const tiers = {};
      for (const key of Object.keys(series(fam, "agent_queue_wait_seconds"))) {
        const tier = labels(key).tier;
        const keep = (l) => l.tier === tier;
        tiers[tier] = quantile(0.95, buckets(fam, "agent_queue_wait_seconds", keep),
          buckets(w5m.fam, "agent_queue_wait_seconds", keep));
      }
      charts.queue.push(t, tiers);
    }
    const w60 = past(60);
    if (w60) {
      charts.runs.push(t, perMinuteBy("agent_runs_total", "status", null, w60, now, ""));
      charts.errors.push(t, {
        ...perMinuteBy("chat_commands_total", "outcome", (l) => l.outcome !== "ok", w60, now, "error "),
        ...perMinuteBy("chat_disconnects_total", "code", null, w60, now, "close "),
      });
    }
    charts.breakers.push(t, by(fam, "chat_breaker_state", "dependency"));
  }

  // --- tables (textContent only: alert messages and usernames are data, never markup) --------------
  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      if (cell && typeof cell === "object") {
        if (cell.className) td.className = cell.className;
        if (cell.badge) {
          const span = document.createElement("span");
          span.className = cell.badge;
          span.textContent = cell.text;
          td.appendChild(span);
        } else td.textContent = cell.text;
      } else td.textContent = cell === null || cell === undefined ? "" : String(cell);
      tr.appendChild(td);
    }
    return tr;
  }

  function fill(id, rows, columns, empty) {
    const body = document.getElementById(id);
    if (!body) return;
    body.replaceChildren(
      ...(rows.length ? rows : [[{ text: empty, className: "empty" }]]).map((r) => {
        const tr = row(r);
        if (!rows.length) tr.firstChild.colSpan = columns;
        return tr;
      }),
    );
  }

  const when = (iso) => (iso ? new Date(iso).toLocaleTimeString("en-GB") : "");

  function tables(data) {
    const alerts = data.alerts || [];
    stat("stat-alerts", alerts.length);
    fill("alerts-body", alerts.map((a) => [
      { text: a.severity, badge: "sev sev-" + a.severity }, a.kind, { text: a.subject, className: "mono" },
      a.message, a.count + "×", when(a.last_seen),
    ]), 6, "No open alert");
    fill("slo-body", (data.slo || []).map((s) => {
      const windows = Object.keys(s.windows).map(Number).sort((a, b) => a - b);
      return [s.sli, s.tier, (s.target * 100).toFixed(2) + " %",
        ...windows.map((w) => {
          const rate = s.windows[w].burn_rate;
          return { text: fmt(rate) + "× (" + s.windows[w].total + ")", className: rate >= 6 ? "burn-hot" : "" };
        }),
        s.firing || ""];
    }), 8, "No objective configured");
    fill("runs-body", (data.runs_with_problems || []).map((r) => [
      { text: String(r.run_id).slice(0, 8), className: "mono" }, r.username || "?", r.tier || "?",
      r.terminal_event, (r.missing || []).join(", "), (r.problems || []).join("; "), when(r.last_event_at),
    ]), 7, "Every audited run has its events");
  }

  // --- the poll loop ---------------------------------------------------------------------------
  const status = document.getElementById("dash-status");

  async function poll() {
    try {
      const response = await fetch(source, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      history.push({ t: data.at, fam: data.families });
      while (history.length && history[0].t < data.at - KEEP_S) history.shift();
      render(history[history.length - 1]);
      tables(data);
      const pids = new Set(Object.keys(series(data.families, "process_resident_memory_bytes")).map((k) => labels(k).pid));
      status.textContent = "live · " + new Date(data.at * 1000).toLocaleTimeString("en-GB") +
        (pids.size > 1 ? " · " + pids.size + " processes" : "");
      status.className = "dash-status is-live";
      status.dataset.polls = String((parseInt(status.dataset.polls || "0", 10) || 0) + 1);
    } catch (err) {
      status.textContent = "not updating: " + err.message;
      status.className = "dash-status is-error";
    } finally {
      setTimeout(poll, pollMs);
    }
  }

  window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.draw()));
  poll();
})();
