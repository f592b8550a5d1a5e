// Workspace analytics page (/w/{id}/analytics/): reads GET /api/workspaces/{id}/analytics/ for the range in
// the form (and the month's SLA report for enterprise workspaces) and draws the series with uPlot (vendored
// in monitoring/static, loaded before this module as the global `uPlot`). Colours come from chat.css's
// variables, so light and dark follow the system; charts take their figure's width, phones included.

const root = document.getElementById("analytics");
const form = document.getElementById("an-range");
const status = document.getElementById("an-status");
const charts = new Map();

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

function palette() {
  return [css("--accent"), css("--ok"), css("--danger"), css("--warn"), css("--agent"), css("--muted")];
}

function fmt(v, digits = 0) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return Number(v).toLocaleString("en-US", { maximumFractionDigits: digits });
}

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

function setStatus(text, isError = false) {
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function stat(id, value, shown) {
  const el = document.getElementById(id);
  if (!el) return;
  el.dataset.value = value === null || value === undefined ? "" : String(value);
  el.textContent = shown;
}

// One chart per figure: series named by `names`, values by bucket; redrawn whole on every load.
function draw(key, buckets, names, columns, unit = "") {
  const el = root.querySelector(`[data-chart="${key}"]`);
  if (!el) return;
  charts.get(key)?.destroy();
  const colors = palette();
  const axis = { stroke: css("--muted"), grid: { stroke: css("--border") }, ticks: { stroke: css("--border") } };
  const width = Math.max(240, el.clientWidth - 24);
  const plot = new uPlot(
    {
      width,
      height: 200,
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] } },
      axes: [
        { ...axis, space: 60 },
        // The unit is in the caption and the legend: ticks stay short enough for a phone's width.
        { ...axis, size: 52, values: (u, ticks) => ticks.map((v) => fmt(v, 1)) },
      ],
      series: [
        { value: (u, v) => (v == null ? "–" : new Date(v * 1000).toISOString().slice(0, 10)) },
        ...names.map((name, i) => ({
          label: name,
          stroke: colors[i % colors.length],
          fill: colors[i % colors.length] + "22",
          width: 1.5,
          spanGaps: true,
          points: { show: buckets.length < 40 },
          value: (u, v) => (v == null ? "–" : fmt(v, 1) + unit),
        })),
      ],
    },
    [buckets, ...columns],
    el,
  );
  charts.set(key, plot);
}

function render(report) {
  const t = report.totals;
  const xs = report.series.map((cell) => Date.parse(cell.bucket + "T00:00:00Z") / 1000);
  const col = (pick) => report.series.map(pick);
  stat("t-messages", t.messages, fmt(t.messages));
  stat("t-active", t.active_users, fmt(t.active_users));
  stat("t-completed", t.runs.completed, fmt(t.runs.completed));
  stat("t-failed", t.runs.failed, fmt(t.runs.failed));
  draw("messages", xs, ["messages", "active users"], [col((c) => c.messages), col((c) => c.active_users)]);
  const statuses = ["completed", "failed", "cancelled"];
  draw("runs", xs, statuses, statuses.map((s) => col((c) => c.runs[s])));
  if (t.tokens) {
    stat("t-tokens", t.tokens.prompt + t.tokens.completion, fmt(t.tokens.prompt + t.tokens.completion));
    stat("t-cost", t.cost, "$" + fmt(t.cost, 4));
    draw("tokens", xs, ["prompt", "completion"], [col((c) => c.tokens.prompt), col((c) => c.tokens.completion)]);
    renderModels(t.by_model, t.unpriced_models);
  }
  if (t.time_to_first_token_ms) {
    const l = t.time_to_first_token_ms;
    stat("t-ttft", l.p50, `${fmt(l.p50)} / ${fmt(l.p95)} ms`);
    const p = (k) => col((c) => c.time_to_first_token_ms[k]);
    draw("ttft", xs, ["p50", "p95"], [p("p50"), p("p95")], " ms");
  }
  if (t.tool_errors) {
    const tools = Object.keys(t.tool_errors);
    const count = Object.values(t.tool_errors).reduce((a, b) => a + b, 0);
    stat("t-tool-errors", count, fmt(count));
    const names = tools.length ? tools : ["none"];
    draw("tools", xs, names, names.map((tool) => col((c) => c.tool_errors[tool] || 0)));
  }
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function renderModels(byModel, unpriced) {
  const body = document.getElementById("an-models");
  if (!body) return;
  body.replaceChildren();
  for (const [model, m] of Object.entries(byModel)) {
    const tr = document.createElement("tr");
    const cost = unpriced.includes(model) ? "no price" : "$" + fmt(m.cost, 6);
    tr.append(cell(model), cell(fmt(m.runs)), cell(fmt(m.prompt_tokens)), cell(fmt(m.completion_tokens)), cell(cost));
    body.append(tr);
  }
  if (!body.children.length) {
    const tr = document.createElement("tr");
    const td = cell("No completed runs in this range.");
    td.colSpan = 5;
    tr.append(td);
    body.append(tr);
  }
}

async function loadSla() {
  const source = root.dataset.slaSource;
  const body = document.getElementById("an-sla");
  if (!source || !body) return;
  const response = await fetch(source, { credentials: "same-origin" });
  if (!response.ok) return;
  const report = await response.json();
  body.replaceChildren();
  for (const o of report.objectives) {
    const tr = document.createElement("tr");
    const name = o.within_s ? `${o.objective} (≤ ${o.within_s} s)` : o.objective;
    const measured = o.measured === null ? "–" : (o.measured * 100).toFixed(3) + " %";
    tr.append(
      cell(name),
      cell((o.target * 100).toFixed(2) + " %"),
      cell(measured),
      cell(`${fmt(o.sample_size)} ${o.unit}`),
      cell(o.met ? "met" : "missed", o.met ? "an-met" : "an-missed"),
    );
    body.append(tr);
  }
}

function query() {
  const params = new URLSearchParams(new FormData(form));
  return params;
}

async function load() {
  const params = query();
  const csv = document.getElementById("an-csv");
  if (csv) csv.href = `${root.dataset.source}?${params}&format=csv`;
  history.replaceState(null, "", `?${params}`);
  root.dataset.loaded = "false";
  setStatus("Loading…");
  try {
    const response = await fetch(`${root.dataset.source}?${params}`, { credentials: "same-origin" });
    const body = await response.json();
    if (!response.ok) {
      setStatus(body.error ? body.error.message : `Error ${response.status}`, true);
      return;
    }
    render(body);
    setStatus(`${body.from} to ${body.to}, by ${body.granularity}`);
    root.dataset.loaded = "true";
  } catch (err) {
    setStatus("Could not load the analytics; try again.", true);
  }
}

function start() {
  if (!root || typeof uPlot === "undefined") return;
  const given = new URLSearchParams(location.search);
  const today = new Date();
  const monthAgo = new Date(today.getTime() - 29 * 86400 * 1000);
  document.getElementById("an-from").value = given.get("from") || isoDay(monthAgo);
  document.getElementById("an-to").value = given.get("to") || isoDay(today);
  document.getElementById("an-granularity").value = given.get("granularity") === "week" ? "week" : "day";
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      for (const [key, plot] of charts) {
        const el = root.querySelector(`[data-chart="${key}"]`);
        plot.setSize({ width: Math.max(240, el.clientWidth - 24), height: 200 });
      }
    }, 150);
  });
  // Colours are read when drawn: a switch of the system's scheme redraws with the other palette.
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", load);
  load();
  loadSla();
}

start();
