// aistudio dashboard: plain JavaScript, no build step, no framework, nothing fetched from outside.
//
// Experiments (each with a Run button), the runs table (re-fetched every 2 s) and the selected run's
// live charts, fed by the Server-Sent Events of GET /api/training/<run id>/stream: one `metrics`
// event per epoch (id = epoch), `status` events, `end` when the run is over. The charts are plain SVG
// drawn by lineChart() below. Every value from the server is put in the page as text, never as HTML.
"use strict";

const ACTIVE = ["pending", "running"];
const FINAL = ["completed", "failed", "interrupted"];
const RUNS_POLL_MS = 2000;
const LOG_POLL_MS = 3000;
const BLOCK_UNKNOWN_MS = 15000; // a 409 naming a run this server does not list: how long Run stays off
const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
const DEFAULT_METRICS = 4;

const state = {
  experiments: [],
  experimentsKey: "",
  runs: [],
  availability: null, // experiment id -> {available, active_run, reason}; null: the server has no such endpoint
  blocked: new Map(), // experiment id -> {run_id, message, until}: a start or a 409 just named this run
  pollGeneration: 0,
  selected: null, // run id shown in the detail
  detail: null, // GET /api/runs/<id>
  stream: null, // EventSource of the selected run
  streamEnded: false,
  epochs: new Map(), // epoch -> metrics entry of the selected run
  metricKeys: [],
  shownMetrics: null, // Set of val_* keys the user chose (null: the default choice)
  plotsKey: "",
  logTimer: null,
  chartFrame: 0,
};

// ---------------------------------------------------------------------------------------------------
// small helpers

const $ = (selector, root = document) => root.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function show(node, visible) {
  node.hidden = !visible;
}

function message(node, text, kind) {
  node.textContent = text || "";
  node.classList.toggle("info", kind === "info");
  show(node, Boolean(text));
}

function errorText(body, response) {
  if (body && (body.error || body.detail)) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    return [body.error, detail].filter(Boolean).join(": ");
  }
  return `${response.status} ${response.statusText}`;
}

async function api(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = { error: response.statusText, detail: text.slice(0, 500) };
  }
  if (!response.ok) {
    const err = new Error(errorText(data, response));
    err.status = response.status;
    err.body = data || {};
    throw err;
  }
  return data;
}

/** Overrides typed in a text field: split on whitespace outside quotes and brackets
 * (`data.std=[0, 0, 0] model=resnet18` is two overrides). */
function splitOverrides(text) {
  const out = [];
  let current = "";
  let depth = 0;
  let quote = null;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quote) {
      current += ch;
      if (ch === "\\" && i + 1 < text.length) current += text[++i];
      else if (ch === quote) quote = null;
      continue;
    }
    if (ch === "'" || ch === '"') quote = ch;
    else if ("[{(".includes(ch)) depth++;
    else if ("]})".includes(ch)) depth = Math.max(0, depth - 1);
    else if (/\s/.test(ch) && depth === 0) {
      if (current) out.push(current);
      current = "";
      continue;
    }
    current += ch;
  }
  if (current) out.push(current);
  return out;
}

function formatNumber(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs >= 1e5 || abs < 1e-3)) return value.toExponential(2).replace(/\.?0+e/, "e");
  return String(Number(value.toPrecision(4)));
}

function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

function formatDuration(seconds) {
  if (typeof seconds !== "number") return "";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

function formatBest(best) {
  if (!best || best.value === undefined || best.value === null) return "";
  const epoch = best.epoch !== undefined && best.epoch !== null ? ` (ep ${best.epoch})` : "";
  return `${best.metric || "best"}=${formatNumber(best.value)}${epoch}`;
}

function statusBadge(status) {
  return el("span", { class: `status status-${status}`, "data-status": status, text: status });
}

// ---------------------------------------------------------------------------------------------------
// experiments and the Run buttons

async function loadExperiments() {
  try {
    const experiments = await api("GET", "/api/experiments");
    const key = JSON.stringify(experiments);
    if (key === state.experimentsKey) return;
    state.experiments = experiments;
    state.experimentsKey = key;
    renderExperiments();
  } catch (err) {
    message($("#run-message"), `Could not load the experiments: ${err.message}`);
  }
}

function renderExperiments() {
  const list = $("#experiments-list");
  const typed = {}; // keep what the user typed in the override fields
  for (const input of list.querySelectorAll("input[data-overrides-for]")) typed[input.dataset.overridesFor] = input.value;
  list.replaceChildren();
  for (const exp of state.experiments) {
    const overrides = (exp.overrides || []).join(" ");
    const input = el("input", {
      type: "text", "data-overrides-for": exp.id, placeholder: "extra overrides for this run",
      "aria-label": `extra overrides for ${exp.id}`,
    });
    input.value = typed[exp.id] || "";
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") startRun(exp.id);
    });
    const run = el("button", { type: "button", "data-run-experiment": exp.id, onclick: () => startRun(exp.id) }, "Run");
    const actions = el("div", { class: "actions" }, input, run);
    if (exp.kind === "saved") {
      actions.append(el("button", {
        type: "button", class: "secondary", "data-delete-experiment": exp.id, title: "delete this saved experiment",
        onclick: () => deleteExperiment(exp.id),
      }, "Delete"));
    }
    list.append(el("li", { class: "experiment", "data-experiment": exp.id },
      el("div", { class: "name" }, exp.id, el("span", { class: "kind", text: exp.kind || "" })),
      exp.description ? el("div", { class: "desc", text: exp.description, title: exp.description }) : null,
      (exp.kind === "saved" && (exp.recipe || overrides))
        ? el("div", { class: "overrides", text: [exp.recipe ? `recipe ${exp.recipe}` : "", overrides].filter(Boolean).join(" · ") })
        : null,
      actions));
  }
  const select = $("#experiment-recipe");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "(none: conf/train.yaml)"));
  for (const exp of state.experiments.filter((e) => e.kind === "recipe")) select.append(el("option", { value: exp.id }, exp.id));
  select.value = chosen;
  updateRunButtons();
}

/** Why Run is off for an experiment ({run_id, message}), or null. The server tells per experiment whether
 * its project's devices are taken (GET /api/dashboard/availability); without that endpoint, any active run
 * of this runs root keeps every Run off. A 409 (e.g. extra overrides that moved the run onto a busy
 * project) keeps that experiment's Run off while the run it named is active. */
function blockingFor(experimentId) {
  if (state.availability) {
    const entry = state.availability.get(experimentId);
    if (entry && entry.available === false) {
      return { run_id: entry.active_run || "", message: entry.reason || `run ${entry.active_run} is active` };
    }
  } else {
    const active = state.runs.filter((r) => ACTIVE.includes(r.status));
    if (active.length) {
      const run = active[active.length - 1];
      return { run_id: run.run_id, message: `run ${run.run_id} is ${run.status}` };
    }
  }
  const blocked = state.blocked.get(experimentId);
  if (blocked) {
    const known = state.runs.find((r) => r.run_id === blocked.run_id);
    if (known ? ACTIVE.includes(known.status) : Date.now() < blocked.until) return blocked;
    state.blocked.delete(experimentId);
  }
  return null;
}

function updateRunButtons() {
  const blockers = new Map(); // run id -> message
  for (const button of document.querySelectorAll("button[data-run-experiment]")) {
    if (button.dataset.starting) continue;
    const blocking = blockingFor(button.dataset.runExperiment);
    button.disabled = Boolean(blocking);
    if (blocking) {
      blockers.set(blocking.run_id, blocking.message);
      button.textContent = blocking.run_id ? `Run (${blocking.run_id} active)` : "Run (busy)";
      button.dataset.activeRun = blocking.run_id || "";
      button.title = `${blocking.message}\n(one run at a time on a project's devices: Run comes back when it ends)`;
    } else {
      button.textContent = "Run";
      delete button.dataset.activeRun;
      button.title = "start a run of this experiment";
    }
  }
  const banner = $("#active-banner");
  banner.replaceChildren();
  for (const runId of blockers.keys()) {
    const line = el("span", { class: "blocker", "data-active-run": runId },
      `Run is off for the experiments on the project and devices of run ${runId || "(unknown)"}, until it ends. `);
    if (state.runs.some((r) => r.run_id === runId)) {
      line.append(el("a", { href: "#", "data-show-run": runId, onclick: (e) => { e.preventDefault(); selectRun(runId); } }, "Show it"));
    }
    banner.append(line);
  }
  banner.dataset.activeRun = [...blockers.keys()].join(",");
  show(banner, blockers.size > 0);
}

async function startRun(experimentId) {
  const button = document.querySelector(`button[data-run-experiment="${CSS.escape(experimentId)}"]`);
  const input = document.querySelector(`input[data-overrides-for="${CSS.escape(experimentId)}"]`);
  if (!button || button.disabled) return;
  const overrides = splitOverrides(input ? input.value : "");
  const notice = $("#run-message");
  message(notice, "");
  button.disabled = true;
  button.dataset.starting = "1";
  state.pollGeneration++; // an availability answer asked for before this start is out of date
  try {
    const started = await api("POST", `/api/training/${encodeURIComponent(experimentId)}/run`, { overrides });
    message(notice, `Started run ${started.run_id} of ${experimentId}.`, "info");
    if (!state.runs.some((r) => r.run_id === started.run_id)) {
      state.runs.push({ run_id: started.run_id, status: started.status || "pending", experiment: experimentId,
        epochs_completed: 0, best: null, created_at: new Date().toISOString() });
    }
    state.blocked.set(experimentId, { run_id: started.run_id, message: `run ${started.run_id} is starting`, until: 0 });
    delete button.dataset.starting;
    renderRuns();
    selectRun(started.run_id);
  } catch (err) {
    delete button.dataset.starting;
    message(notice, `Run ${experimentId}: ${err.message}`);
    if (err.status === 409) {
      const runId = err.body.active_run || "";
      state.blocked.set(experimentId, { run_id: runId, message: err.body.detail || `run ${runId} is active`,
        until: Date.now() + BLOCK_UNKNOWN_MS });
    }
  } finally {
    updateRunButtons();
    refreshRuns();
  }
}

async function deleteExperiment(experimentId) {
  if (!window.confirm(`Delete the saved experiment ${experimentId}? Its runs stay.`)) return;
  try {
    await api("DELETE", `/api/experiments/${encodeURIComponent(experimentId)}`);
    await loadExperiments();
  } catch (err) {
    message($("#run-message"), `Delete ${experimentId}: ${err.message}`);
  }
}

async function saveExperiment(event) {
  event.preventDefault();
  const notice = $("#experiment-message");
  const body = {
    name: $("#experiment-name").value.trim(),
    recipe: $("#experiment-recipe").value || null,
    overrides: splitOverrides($("#experiment-overrides").value),
    description: $("#experiment-description").value.trim(),
  };
  const button = $("#experiment-save");
  button.disabled = true;
  try {
    const saved = await api("POST", "/api/experiments", body);
    message(notice, `Saved ${saved.id}.`, "info");
    $("#experiment-form").reset();
    await loadExperiments();
  } catch (err) {
    message(notice, err.message);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------------
// the runs table

async function refreshRuns() {
  const generation = state.pollGeneration;
  const availability = loadAvailability();
  try {
    state.runs = await api("GET", "/api/runs");
    $("#poll-status").textContent = "";
    renderRuns();
  } catch (err) {
    $("#poll-status").textContent = `server unreachable (${err.message}); retrying`;
  }
  const entries = await availability;
  if (entries !== undefined && generation === state.pollGeneration) {
    state.availability = entries === null ? null : new Map(entries.map((e) => [e.experiment, e]));
  }
  updateRunButtons();
}

/** The availability list; null when the server has no such endpoint, undefined when it could not be read. */
async function loadAvailability() {
  try {
    return await api("GET", "/api/dashboard/availability");
  } catch (err) {
    return err.status === 404 ? null : undefined;
  }
}

function renderRuns() {
  const body = $("#runs-table tbody");
  body.replaceChildren();
  const rows = [...state.runs].reverse(); // newest first
  for (const run of rows) {
    const row = el("tr", {
      "data-run-id": run.run_id, "data-status": run.status, class: run.run_id === state.selected ? "selected" : "",
      onclick: () => selectRun(run.run_id), title: run.error || run.dir || "",
    },
    el("td", { class: "run-id", text: run.run_id }),
    el("td", { text: run.experiment || "" }),
    el("td", {}, statusBadge(run.status)),
    el("td", { class: "epochs", text: String(run.epochs_completed ?? 0) }),
    el("td", { class: "best", text: formatBest(run.best) }),
    el("td", { text: formatTime(run.created_at) }));
    body.append(row);
  }
  show($("#runs-empty"), rows.length === 0);
  if (state.selected) {
    const run = state.runs.find((r) => r.run_id === state.selected);
    if (run) renderDetailStatus(run.status);
  }
}

function updateRun(runId, fields) {
  const run = state.runs.find((r) => r.run_id === runId);
  if (run) Object.assign(run, fields);
  renderRuns();
  updateRunButtons();
}

// ---------------------------------------------------------------------------------------------------
// the selected run: status, stream, charts, log, plots

function selectRun(runId) {
  if (state.selected === runId && state.stream) return;
  closeStream();
  state.selected = runId;
  state.detail = null;
  state.epochs = new Map();
  state.metricKeys = [];
  state.shownMetrics = null;
  state.streamEnded = false;
  state.plotsKey = "";
  $("#metric-toggles").replaceChildren();
  $("#detail-run-id").textContent = runId;
  $("#log-tail").textContent = "";
  $("#log-file").textContent = "";
  $("#plots").replaceChildren(el("p", { class: "muted", text: "No plots yet (they are written when the run ends)." }));
  message($("#detail-message"), "");
  message($("#detail-error"), "");
  show($("#run-detail"), true);
  history.replaceState(null, "", `#run=${encodeURIComponent(runId)}`); // a reload shows the same run
  renderRuns();
  drawCharts();
  openStream(runId);
  loadDetail();
  loadLog();
  loadPlots();
  clearInterval(state.logTimer);
  state.logTimer = setInterval(() => {
    const run = state.runs.find((r) => r.run_id === state.selected);
    if (!run || ACTIVE.includes(run.status)) loadLog();
  }, LOG_POLL_MS);
}

function closeStream() {
  if (state.stream) state.stream.close();
  state.stream = null;
}

function openStream(runId) {
  closeStream();
  const last = Math.max(-1, ...state.epochs.keys());
  const query = last >= 0 ? `?after=${last}` : "";
  const source = new EventSource(`/api/training/${encodeURIComponent(runId)}/stream${query}`);
  state.stream = source;
  const streamState = $("#stream-state");
  streamState.textContent = "connecting…";
  source.onopen = () => { if (state.stream === source) streamState.textContent = "live"; };
  source.addEventListener("metrics", (event) => {
    if (state.stream !== source) return;
    const entry = JSON.parse(event.data);
    const epoch = Number(entry.epoch ?? event.lastEventId);
    state.epochs.set(epoch, entry);
    scheduleCharts();
  });
  source.addEventListener("status", (event) => {
    if (state.stream !== source) return;
    const status = JSON.parse(event.data);
    updateRun(runId, { status: status.status, epochs_completed: status.epochs_completed, best: status.best,
      error: status.error, attempt: status.attempt });
    if (FINAL.includes(status.status)) loadDetail();
  });
  source.addEventListener("end", () => {
    if (state.stream !== source) return;
    closeStream();
    state.streamEnded = true;
    streamState.textContent = "run ended";
    loadDetail();
    loadLog();
    loadPlots();
    refreshRuns();
  });
  source.onerror = () => {
    if (state.stream !== source) return;
    if (source.readyState === EventSource.CLOSED) {
      // refused (404, 503...): the browser gives up; try again while the run may still be going
      state.stream = null;
      streamState.textContent = "stream closed; retrying";
      setTimeout(() => {
        const run = state.runs.find((r) => r.run_id === runId);
        if (state.selected === runId && !state.stream && !state.streamEnded && run && !FINAL.includes(run.status)) openStream(runId);
      }, 3000);
    } else {
      streamState.textContent = "reconnecting…";
    }
  };
}

async function loadDetail() {
  const runId = state.selected;
  if (!runId) return;
  try {
    const detail = await api("GET", `/api/runs/${encodeURIComponent(runId)}`);
    if (state.selected !== runId) return;
    state.detail = detail;
    const run = detail.run || {};
    const parts = [
      detail.task, detail.model, detail.experiment ? `experiment ${detail.experiment}` : "",
      `attempt ${detail.attempt || 1}`, detail.duration_s ? `duration ${formatDuration(detail.duration_s)}` : "",
      run.monitor ? `monitors ${run.monitor.metric} (${run.monitor.mode})` : "",
      detail.best ? `best ${formatBest(detail.best)}` : "", detail.dir ? `dir ${detail.dir}` : "",
    ];
    $("#detail-summary").textContent = parts.filter(Boolean).join(" · ");
    const launchError = detail.launch && detail.launch.error ? detail.launch.error.message : "";
    const stale = detail.stale ? `(${detail.stale})` : "";
    message($("#detail-error"), [detail.error, launchError, stale].filter(Boolean).join("\n"));
    updateRun(runId, { status: detail.status, epochs_completed: detail.epochs_completed, best: detail.best });
    scheduleCharts();
  } catch (err) {
    if (state.selected === runId) message($("#detail-message"), err.message);
  }
}

function renderDetailStatus(status) {
  const badge = $("#detail-status");
  badge.className = `status status-${status}`;
  badge.dataset.status = status;
  badge.textContent = status;
  show($("#stop-button"), ACTIVE.includes(status));
  show($("#resume-button"), status === "interrupted" || status === "failed");
  show($("#retry-button"), status === "interrupted" || status === "failed");
}

async function loadLog() {
  const runId = state.selected;
  if (!runId) return;
  try {
    const log = await api("GET", `/api/runs/${encodeURIComponent(runId)}/log?tail=200`);
    if (state.selected !== runId) return;
    const pre = $("#log-tail");
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = (log.lines || []).join("\n");
    $("#log-file").textContent = log.file ? `(${log.file}, last ${log.lines.length} lines)` : "(no log yet)";
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  } catch (_) {
    // the log is a convenience: the next poll tries again
  }
}

async function loadPlots() {
  const runId = state.selected;
  if (!runId) return;
  let listing;
  try {
    listing = await api("GET", `/api/runs/${encodeURIComponent(runId)}/plots`);
  } catch (err) {
    if (state.selected === runId && err.status === 404 && !(err.body && err.body.run)) {
      $("#plots").replaceChildren(el("p", { class: "muted", text: `Plots unavailable: ${err.message}` }));
    }
    return;
  }
  if (state.selected !== runId) return;
  const plots = listing.plots || [];
  const key = JSON.stringify(plots.map((p) => [p.name, p.modified_ns]));
  if (key === state.plotsKey) return;
  state.plotsKey = key;
  const box = $("#plots");
  box.replaceChildren();
  if (!plots.length) {
    box.append(el("p", { class: "muted", text: "No plots yet (they are written when the run ends)." }));
    return;
  }
  for (const plot of plots) {
    const src = `${plot.url}?v=${encodeURIComponent(plot.modified_ns ?? "")}`;
    box.append(el("figure", { "data-plot": plot.name },
      el("a", { href: src, target: "_blank", rel: "noopener" }, el("img", { src, alt: plot.name, loading: "lazy" })),
      el("figcaption", { text: plot.name })));
  }
}

async function runAction(action) {
  const runId = state.selected;
  if (!runId) return;
  const notice = $("#detail-message");
  try {
    const result = await api("POST", `/api/runs/${encodeURIComponent(runId)}/${action}`, action === "stop" ? undefined : { overrides: [] });
    if (action === "stop") {
      message(notice, `Stopping ${runId} (${result.signal || "SIGTERM"}): it saves last.ckpt at the next batch and ends interrupted.`, "info");
    } else if (action === "retry") {
      message($("#run-message"), `Started run ${result.run_id} (a retry of ${runId}).`, "info");
      await refreshRuns();
      selectRun(result.run_id);
    } else {
      updateRun(runId, { status: "pending" });
      state.selected = null; // reopen the stream: the run goes on in its own directory
      selectRun(runId);
      message($("#detail-message"), `Resuming ${runId} from its last checkpoint.`, "info");
      refreshRuns();
    }
  } catch (err) {
    message(notice, `${action}: ${err.message}`);
    if (err.status === 409) refreshRuns();
  }
}

// ---------------------------------------------------------------------------------------------------
// charts (plain SVG)

function scheduleCharts() {
  if (state.chartFrame) return;
  state.chartFrame = requestAnimationFrame(() => {
    state.chartFrame = 0;
    drawCharts();
  });
}

function monitoredMetric() {
  const run = state.detail && state.detail.run;
  return (run && run.monitor && run.monitor.metric) || (state.detail && state.detail.best && state.detail.best.metric) || null;
}

/** The task's metrics per epoch: val_* keys other than losses, the monitored one first, then the headline
 * ones (not per-class AP, recall at k, size buckets), then the rest. */
function metricKeysOf(entries) {
  const keys = new Set();
  for (const entry of entries) {
    for (const [key, value] of Object.entries(entry)) {
      if (key.startsWith("val_") && !key.startsWith("val_loss") && typeof value === "number") keys.add(key);
    }
  }
  const monitored = monitoredMetric();
  const minor = (k) => /^val_(ap_|mar_)|_(small|medium|large)$|_per_class/.test(k);
  const rank = (k) => (k === monitored ? 0 : minor(k) ? 2 : 1);
  return [...keys].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
}

function renderMetricToggles(keys) {
  const box = $("#metric-toggles");
  if (box.dataset.keys === keys.join(",")) return;
  box.dataset.keys = keys.join(",");
  box.replaceChildren();
  const shown = currentMetrics(keys);
  for (const key of keys) {
    const input = el("input", { type: "checkbox", "data-metric": key });
    input.checked = shown.includes(key);
    input.addEventListener("change", () => {
      const chosen = new Set(currentMetrics(state.metricKeys));
      if (input.checked) chosen.add(key); else chosen.delete(key);
      state.shownMetrics = chosen;
      drawCharts();
    });
    box.append(el("label", {}, input, ` ${key.replace(/^val_/, "")}`));
  }
}

function currentMetrics(keys) {
  if (state.shownMetrics) return keys.filter((k) => state.shownMetrics.has(k));
  return keys.slice(0, DEFAULT_METRICS);
}

function seriesOf(entries, keys) {
  return keys.map((key, i) => ({
    name: key,
    color: COLORS[i % COLORS.length],
    points: entries.filter((e) => typeof e[key] === "number" && Number.isFinite(e[key])).map((e) => [Number(e.epoch), e[key]]),
  })).filter((s) => s.points.length);
}

function drawCharts() {
  const entries = [...state.epochs.values()].sort((a, b) => a.epoch - b.epoch);
  const lossKeys = ["train_loss", "val_loss"].filter((k) => entries.some((e) => typeof e[k] === "number"));
  lineChart($("#chart-loss"), seriesOf(entries, lossKeys), { autoLog: true, empty: "waiting for the first epoch…" });
  const keys = metricKeysOf(entries);
  state.metricKeys = keys;
  renderMetricToggles(keys);
  lineChart($("#chart-metrics"), seriesOf(entries, currentMetrics(keys)), {
    empty: entries.length ? "no validation metrics in these epochs" : "waiting for the first epoch…",
  });
}

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const ratio = raw / magnitude;
  return (ratio >= 7.5 ? 10 : ratio >= 3.5 ? 5 : ratio >= 1.5 ? 2 : 1) * magnitude;
}

function linearTicks(lo, hi, count = 5) {
  if (lo === hi) {
    const pad = Math.abs(lo) * 0.1 || 1;
    lo -= pad;
    hi += pad;
  }
  const step = niceStep(hi - lo, count);
  const start = Math.floor(lo / step) * step;
  const end = Math.ceil(hi / step) * step;
  const ticks = [];
  for (let v = start; v <= end + step / 2; v += step) ticks.push(Number(v.toPrecision(12)));
  return { lo: start, hi: end, ticks };
}

/** Draw `series` ([{name, color, points: [[epoch, value], ...]}]) into `svg`: axes, grid, one line and one
 * circle per point (data-series, data-epoch, data-value) and a legend. `svg.dataset.points` is the number
 * of epochs drawn. A loss chart (`autoLog`) switches to a log scale when values span over two decades. */
function lineChart(svg, series, options = {}) {
  const width = Math.max(320, Math.round(svg.clientWidth || 600));
  const height = Math.max(180, Math.round(svg.clientHeight || 260));
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const epochs = new Set(series.flatMap((s) => s.points.map((p) => p[0])));
  svg.dataset.points = String(epochs.size);
  svg.dataset.series = series.map((s) => s.name).join(",");
  if (!series.length) {
    svg.append(svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, options.empty || "no data"));
    return;
  }
  const margin = { left: 58, right: 14, top: 26, bottom: 34 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const values = series.flatMap((s) => s.points.map((p) => p[1]));
  let yMin = Math.min(...values);
  let yMax = Math.max(...values);
  const log = Boolean(options.autoLog) && yMin > 0 && yMax / yMin > 100;
  svg.dataset.scale = log ? "log" : "linear";
  let yTicks;
  let toY;
  if (log) {
    const lo = Math.floor(Math.log10(yMin));
    const hi = Math.max(lo + 1, Math.ceil(Math.log10(yMax)));
    const stride = Math.ceil((hi - lo) / 6);
    yTicks = [];
    for (let e = lo; e <= hi; e += stride) yTicks.push(10 ** e);
    yMin = 10 ** lo;
    yMax = 10 ** hi;
    toY = (v) => margin.top + plotH * (1 - (Math.log10(v) - lo) / (hi - lo));
  } else {
    const ticks = linearTicks(yMin, yMax);
    yTicks = ticks.ticks;
    yMin = ticks.lo;
    yMax = ticks.hi;
    toY = (v) => margin.top + plotH * (1 - (v - yMin) / (yMax - yMin || 1));
  }
  const xs = [...epochs];
  let xMin = Math.min(...xs);
  let xMax = Math.max(...xs);
  if (xMin === xMax) {
    xMin -= 1;
    xMax += 1;
  }
  const toX = (v) => margin.left + plotW * ((v - xMin) / (xMax - xMin));
  const xStep = Math.max(1, Math.ceil((xMax - xMin) / 10));
  const grid = svgEl("g", { class: "axes" });
  for (const v of yTicks) {
    const y = toY(v);
    grid.append(svgEl("line", { class: "grid", x1: margin.left, x2: width - margin.right, y1: y, y2: y }));
    grid.append(svgEl("text", { x: margin.left - 6, y: y + 4, "text-anchor": "end" }, formatNumber(v)));
  }
  for (let v = Math.ceil(xMin); v <= xMax; v += xStep) {
    const x = toX(v);
    grid.append(svgEl("line", { class: "grid", x1: x, x2: x, y1: margin.top, y2: margin.top + plotH }));
    grid.append(svgEl("text", { x, y: margin.top + plotH + 16, "text-anchor": "middle" }, String(v)));
  }
  grid.append(svgEl("line", { class: "axis", x1: margin.left, x2: margin.left, y1: margin.top, y2: margin.top + plotH }));
  grid.append(svgEl("line", { class: "axis", x1: margin.left, x2: width - margin.right, y1: margin.top + plotH, y2: margin.top + plotH }));
  grid.append(svgEl("text", { x: margin.left + plotW / 2, y: height - 4, "text-anchor": "middle" }, "epoch"));
  if (log) grid.append(svgEl("text", { x: width - margin.right, y: margin.top - 8, "text-anchor": "end" }, "log scale"));
  svg.append(grid);

  const legend = svgEl("g", { class: "legend" });
  let legendX = margin.left;
  for (const s of series) {
    const sorted = [...s.points].sort((a, b) => a[0] - b[0]);
    const d = sorted.map((p, i) => `${i ? "L" : "M"}${toX(p[0]).toFixed(1)},${toY(p[1]).toFixed(1)}`).join(" ");
    svg.append(svgEl("path", { class: "series", d, stroke: s.color, "data-series": s.name }));
    const dots = svgEl("g", { class: "points", "data-series": s.name });
    for (const [epoch, value] of sorted) {
      const dot = svgEl("circle", { class: "point", cx: toX(epoch).toFixed(1), cy: toY(value).toFixed(1), r: 3.5,
        fill: s.color, "data-series": s.name, "data-epoch": epoch, "data-value": value });
      dot.append(svgEl("title", {}, `${s.name}, epoch ${epoch}: ${formatNumber(value)}`));
      dots.append(dot);
    }
    svg.append(dots);
    legend.append(svgEl("rect", { x: legendX, y: 8, width: 12, height: 4, fill: s.color }));
    legend.append(svgEl("text", { x: legendX + 16, y: 14 }, s.name));
    legendX += 26 + s.name.length * 6.5;
  }
  svg.append(legend);
}

// ---------------------------------------------------------------------------------------------------
// start-up

async function loadHealth() {
  try {
    const health = await api("GET", "/api/health");
    $("#service-info").textContent = `v${health.version} · runs root ${health.runs_root}`;
  } catch (_) {
    // optional
  }
}

function start() {
  $("#experiment-form").addEventListener("submit", saveExperiment);
  $("#stop-button").addEventListener("click", () => runAction("stop"));
  $("#resume-button").addEventListener("click", () => runAction("resume"));
  $("#retry-button").addEventListener("click", () => runAction("retry"));
  window.addEventListener("resize", scheduleCharts);
  loadHealth();
  loadExperiments();
  refreshRuns();
  setInterval(refreshRuns, RUNS_POLL_MS);
  setInterval(loadExperiments, 30000);
  const fromHash = decodeURIComponent(window.location.hash.replace(/^#run=/, ""));
  if (window.location.hash.startsWith("#run=") && fromHash) selectRun(fromHash);
}

document.addEventListener("DOMContentLoaded", start);
