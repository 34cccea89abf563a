// The operator console: schedule and steer live events (the /v1/live routes), watch the fleet
// (GET /v1/console/dashboard), explore the graph (search, neighbourhood, journey) and the
// ingest pipeline (GET /v1/console/ingest). Contract: docs/console-api.md. A panel whose
// endpoint is missing or failing says so in place and keeps polling; the rest carry on.

import { drawCdf, drawJourney, drawNeighbourhood, drawSpark, VERTICAL_COLOURS } from "./graph.js";

const POLL_MS = 2000;
const enc = encodeURIComponent;
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

const state = {
  events: [],
  dashEvent: null, // the event the dashboard follows; null: the API's default (live, else next)
  dashboard: null,
  ingest: null,
  hood: null,
  journey: null,
  failures: {},
  commands: [],
};
window.hopcastConsole = state;

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// -- the API key ------------------------------------------------------------------------------
// The key arrives once in the URL fragment (console.html#key=…: a fragment never reaches a
// server or a log), leaves the address bar at once, and lives in sessionStorage (this tab only,
// gone when it closes). Every request sends it as Authorization: Bearer — never a cookie, so
// another site cannot make the browser use it. A 401 asks for a key.

const KEY_STORE = "hopcast.key";

function takeKeyFromFragment() {
  const m = /^#key=([A-Za-z0-9_-]{1,128})$/.exec(location.hash);
  if (!m) return;
  sessionStorage.setItem(KEY_STORE, m[1]);
  history.replaceState(null, "", location.pathname + location.search);
}

const apiKey = () => sessionStorage.getItem(KEY_STORE);

function askForKey(message) {
  const form = $("#key-form");
  if (!form) return;
  form.hidden = false;
  $("#key-message").textContent = message;
}

function setUpKeyForm() {
  const form = $("#key-form");
  if (!form) return;
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = form.elements.key.value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    form.reset();
    form.hidden = true;
  });
  if (!apiKey()) askForKey("This console needs an API key with the operator role.");
}

takeKeyFromFragment();

async function api(method, path, body) {
  const init = { method, cache: "no-store", headers: {} };
  const key = apiKey();
  if (key) init.headers.authorization = `Bearer ${key}`;
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (exc) {
    throw new ApiError(0, `${method} ${path}: the API did not answer (${exc.message})`);
  }
  const text = await r.text();
  let doc = null;
  try {
    doc = text ? JSON.parse(text) : null;
  } catch (_) {
    doc = null;
  }
  if (!r.ok) {
    const what = doc && doc.message ? doc.message : text.slice(0, 200) || r.statusText;
    if (r.status === 401) askForKey(`The API refused the key: ${what}`);
    if (r.status === 404 && !(doc && doc.error === "not_found" && doc.message)) {
      throw new ApiError(404, `${path.split("?")[0]} is not available on this server (404)`);
    }
    throw new ApiError(r.status, `${method} ${path.split("?")[0]}: ${r.status} ${what}`);
  }
  return doc;
}

function show(id, message, kind = "warn") {
  const box = $(id);
  if (!message) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.hidden = false;
  box.className = `message ${kind}`;
  box.textContent = message;
}

// -- time formatting -------------------------------------------------------------------------

const nowUs = () => Date.now() * 1000;

function fmtIn(us) {
  const sign = us < 0 ? "-" : "";
  let s = Math.round(Math.abs(us) / 1e6);
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  const ss = String(s % 60).padStart(2, "0");
  return `${sign}${h ? `${h}:${String(m).padStart(2, "0")}` : m}:${ss}`;
}

// A span for people: "30 min", "1 h", "1 h 30 min", "45 s".
function fmtSpan(us) {
  const s = Math.max(0, Math.round(us / 1e6));
  if (s < 60) return `${s} s`;
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min`;
  return `${Math.floor(m / 60)} h${m % 60 ? ` ${m % 60} min` : ""}`;
}

function fmtClock(us) {
  return new Date(us / 1000).toLocaleTimeString();
}

function fmtNum(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

// -- events -------------------------------------------------------------------------------------

async function loadEvents() {
  try {
    const doc = await api("GET", "/v1/live/events");
    state.events = doc.events;
    if (state.failures.events) show("#events-message", null);
    state.failures.events = null;
    renderEvents();
  } catch (exc) {
    state.failures.events = exc.message;
    show("#events-message", exc.message, "error");
  }
}

async function command(eventId, verb, body = {}) {
  const row = document.querySelector(`tr[data-event="${CSS.escape(eventId)}"]`);
  if (row) for (const b of row.querySelectorAll("button")) b.disabled = true;
  try {
    const doc = await api("POST", `/v1/live/events/${enc(eventId)}/${verb}`, body);
    state.commands.push({ event: eventId, verb, body, at: Date.now(), version: doc && doc.version });
    show("#events-message", null);
  } catch (exc) {
    show("#events-message", exc.message, "error");
  }
  await loadEvents();
  pollDashboard();
}

function renderEvents() {
  const rows = [...state.events].sort((a, b) => a.terminal - b.terminal || a.starts_at - b.starts_at);
  const body = $("#event-rows");
  const now = nowUs();
  // Keep the delay inputs the operator is typing in.
  const typed = {};
  for (const input of body.querySelectorAll("input.delay")) typed[input.dataset.event] = input.value;
  body.replaceChildren(
    ...rows.map((ev) => {
      const accepts = new Set(ev.accepts);
      const delayInput = el("input", { class: "delay", value: typed[ev.id] ?? "2m", "data-event": ev.id, title: "delay: 2m, 30s, -1m" });
      const started = ev.state === "live" || ev.state === "interrupted";
      return el("tr", { dataset: { event: ev.id, state: ev.state } },
        el("td", { class: "pick", title: "follow this event on the dashboard", onclick: () => follow(ev.id) },
          el("strong", {}, ev.title), state.dashEvent === ev.id ? " ◉" : "", el("br"), el("small", {}, ev.id)),
        el("td", {}, el("span", { class: `state ${ev.state}`, title: stateHint(ev) }, ev.state),
          ev.state === "prefetch" && ev.prefetch_lead_us
            ? [el("br"), el("small", { class: "why" }, prefetchWhy(ev))]
            : null),
        el("td", { class: "starts", dataset: { startsAt: ev.starts_at } },
          started ? `live since ${fmtClock(ev.went_live_at || ev.stage_changed_at)}` : ev.terminal ? fmtClock(ev.ended_at || ev.cancelled_at || ev.starts_at) : `in ${fmtIn(ev.starts_at - now)}`,
          el("br"), el("small", {}, fmtClock(ev.starts_at))),
        el("td", { class: "delay-cell" }, ev.delay_us > 0 ? `+${fmtIn(ev.delay_us)}` : ev.delay_us < 0 ? `${fmtIn(-ev.delay_us)} early` : "–"),
        el("td", { class: "actions" },
          delayInput,
          el("button", { class: "delay-btn", disabled: !accepts.has("reschedule"), onclick: () => command(ev.id, "reschedule", { delay: delayInput.value.trim() || "2m" }) }, "Delay"),
          el("button", { class: "go start-btn", disabled: !accepts.has("start_now"), onclick: () => command(ev.id, "start") }, "Start"),
          el("button", { class: "danger end-btn", disabled: !accepts.has("end_now"), onclick: () => command(ev.id, "end") }, "End"),
          el("button", { class: "danger cancel-btn", disabled: !accepts.has("cancel"), onclick: () => command(ev.id, "cancel") }, "Cancel"),
          el("button", { class: "recs-btn", disabled: ev.terminal, title: "recommendation rows from the graph", onclick: () => materialiseFromGraph(ev.id) }, "Recs from graph")));
    }),
  );
  if (!rows.length) body.append(el("tr", {}, el("td", { colspan: 5, class: "dim" }, "No events yet: create one above.")));
}

// What a state means for the fleet (the badge's tooltip): an event created less than its
// prefetch lead before its start begins in "prefetch", which surprised operators.
function stateHint(ev) {
  switch (ev.state) {
    case "scheduled":
      return ev.prefetch_opens_at ? `devices start fetching its payloads at ${fmtClock(ev.prefetch_opens_at)}` : "scheduled";
    case "prefetch":
      return "the prefetch window is open: devices fetch the payloads now, spread over the window, so the go-live trigger needs no request";
    default:
      return ev.state;
  }
}

// Why an event is in prefetch: its window opens prefetch_lead before the start, or at once
// for an event created later than that.
function prefetchWhy(ev) {
  const lead = fmtSpan(ev.prefetch_lead_us);
  const late = ev.created_at && ev.starts_at - ev.created_at < ev.prefetch_lead_us;
  return late ? `created less than ${lead} before the start: the window opened at once` : `window opens ${lead} before the start`;
}

function follow(eventId) {
  state.dashEvent = state.dashEvent === eventId ? null : eventId;
  renderEvents();
  pollDashboard();
  loadSegments();
}

// The recommendation rows the graph materialiser computed for the followed event (else the
// dashboard's): one box per segment, its members and rows.
async function loadSegments() {
  const eventId = state.dashEvent || (state.dashboard && state.dashboard.event && state.dashboard.event.id);
  if (!eventId) return;
  try {
    const doc = await api("GET", `/v1/console/events/${enc(eventId)}/segments`);
    state.segments = doc;
    show("#recs-message", null);
    $("#recs-caption").textContent = `${eventId}: ${doc.segments.length} segments (max ${doc.max_segments}), ${doc.members} members placed, ${doc.cardinality} payloads`;
    $("#recs").replaceChildren(...doc.segments.map((seg) =>
      el("div", { class: "segment", dataset: { segment: seg.key } },
        el("h4", {}, `${seg.label} `, el("small", {}, `${seg.key} · ${fmtNum(seg.members)} members`)),
        el("ol", {}, ...seg.rows.map((row) =>
          el("li", {}, `${row.title}: `, row.items.slice(0, 4).map((i) => i.name).join(", "), row.items.length > 4 ? " …" : ""))))));
  } catch (exc) {
    state.segments = null;
    $("#recs").replaceChildren();
    $("#recs-caption").textContent = eventId;
    const missing = exc.status === 404 && !/is not available/.test(exc.message);
    show("#recs-message", missing ? `${eventId} has no recommendations from the graph yet (Recs from graph computes them).` : exc.message, missing ? "warn" : "error");
  }
}

// A materialise route answers 202 with a job (or, finished within `wait`, its result): poll the
// job's url until it is done, showing its progress; its result or its error is the answer.
async function runJob(path, body, label) {
  let doc = await api("POST", `${path}?wait=2`, body);
  while (doc && doc.url && doc.progress && (doc.state === "queued" || doc.state === "running")) {
    show("#events-message", `${label}: ${doc.state}, ${fmtNum(doc.progress.done)} of ${fmtNum(doc.progress.total)} writes`, "ok");
    await new Promise((resolve) => setTimeout(resolve, 500));
    doc = await api("GET", doc.url);
  }
  if (doc && doc.url && doc.progress) {
    if (doc.state === "failed") throw new ApiError(doc.error.status, `${label}: ${doc.error.message}`);
    return doc.result;
  }
  return doc;
}

async function materialiseFromGraph(eventId) {
  try {
    const doc = await runJob(`/v1/console/events/${enc(eventId)}/materialise`, {}, eventId);
    show("#events-message", `${eventId}: ${doc.segments.length} segments, ${doc.members} members placed, cardinality ${doc.cardinality}${doc.changed ? "" : " (unchanged)"}`, "ok");
    state.dashEvent = eventId;
    renderEvents();
    loadSegments();
  } catch (exc) {
    show("#events-message", exc.message, "error");
  }
}

// A duration as the server reads them (a number and a unit: s, m, h, d, w), words too ("1 day",
// "2 hours", "30 min"); null when it is not one.
const DURATION_UNITS = { s: 1e6, m: 60e6, h: 3600e6, d: 86400e6, w: 604800e6 };
const DURATION_WORDS = { sec: "s", second: "s", min: "m", minute: "m", hour: "h", hr: "h", day: "d", week: "w" };
function durationUs(text) {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(text.trim());
  if (!m) return null;
  if (!m[2]) return null; // a bare number: seconds or µs? ask for a unit
  const raw = m[2].toLowerCase();
  const word = raw.replace(/s$/, "");
  const size = DURATION_UNITS[raw] || DURATION_UNITS[DURATION_WORDS[word]];
  const us = size ? Math.round(Number(m[1]) * size) : NaN;
  return Number.isFinite(us) && us > 0 ? us : null;
}
window.hopcastDuration = durationUs;

$("#create").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = new FormData(e.target);
  const id = form.get("id").trim();
  const body = { id, title: form.get("title").trim(), starts_at: form.get("starts_at").trim() || "5m" };
  const after = form.get("ends_after").trim();
  const afterUs = after ? durationUs(after) : null;
  if (after && afterUs === null) {
    // refused before anything is created: an end silently dropped is an event that never ends
    show("#events-message", `ends after: ${JSON.stringify(after)} is not a duration (e.g. 90m, 2h, 1d)`, "error");
    return;
  }
  try {
    const created = await api("POST", "/v1/live/events", body);
    if (afterUs !== null) {
      await api("POST", `/v1/live/events/${enc(id)}/reschedule`, { ends_at: created.starts_at + afterUs });
    }
    if (form.get("materialise")) {
      // rows from the graph when it has the event; otherwise the fixture rows
      try {
        await runJob(`/v1/console/events/${enc(id)}/materialise`, {}, id);
      } catch (_) {
        await runJob(`/v1/live/events/${enc(id)}/materialise`, { segments: [] }, id);
      }
    }
    show("#events-message", `created ${id}`, "ok");
    e.target.reset();
  } catch (exc) {
    show("#events-message", exc.message, "error");
  }
  await loadEvents();
});

// -- dashboard ----------------------------------------------------------------------------------

async function pollDashboard() {
  try {
    const which = state.dashEvent ? `&event=${enc(state.dashEvent)}` : "";
    const doc = await api("GET", `/v1/console/dashboard?window=10${which}`);
    state.dashboard = doc;
    show("#dashboard-message", null);
    renderDashboard(doc);
  } catch (exc) {
    state.failures.dashboard = exc.message;
    show("#dashboard-message", `Dashboard unavailable: ${exc.message}`, exc.status === 404 ? "warn" : "error");
  }
}

function renderDashboard(doc) {
  $("#dash-event").textContent = doc.event ? `${doc.event.title} · ${doc.event.state}` : "no event";
  $("#m-connected").textContent = doc.devices && doc.devices.gateway ? fmtNum(doc.devices.connected) : "no gateway";
  const pf = doc.prefetch || {};
  $("#m-coverage").textContent = pf.coverage_pct === null || pf.coverage_pct === undefined ? "–" : `${fmtNum(pf.coverage_pct, 1)}%`;
  $("#m-coverage-bar").style.width = `${Math.min(100, pf.coverage_pct || 0)}%`;
  $("#m-coverage-sub").textContent = pf.stage ? `${fmtNum(pf.devices)} of ${fmtNum(pf.connected)} hold “${pf.stage}”` : "";
  const ttu = doc.time_to_update;
  const ms = (v) => fmtNum(v, v !== null && v < 10 ? 1 : 0);
  // p50 large, p99 beside it smaller: "4,792 / 10,029 ms" at one size overflowed the card
  $("#m-ttu").replaceChildren(...(ttu
    ? [`${ms(ttu.p50_ms)}`, el("span", { class: "minor" }, ` / ${ms(ttu.p99_ms)} ms`)]
    : ["–"]));
  $("#m-ttu-sub").textContent = ttu ? `${fmtNum(ttu.devices)} of ${fmtNum(ttu.connected)} devices updated to “${ttu.stage}”` : "no trigger yet";
  $("#cdf-caption").textContent = ttu ? `${ttu.event} → ${ttu.stage} (v${ttu.version}) at ${fmtClock(ttu.trigger_ts)}` : "";
  drawCdf($("#cdf"), ttu);
  const origin = doc.origin || {};
  $("#m-rps").textContent = fmtNum(origin.rps, 1);
  drawSpark($("#m-rps-spark"), origin.series);
}

// -- ingest -------------------------------------------------------------------------------------

async function pollIngest() {
  try {
    const doc = await api("GET", "/v1/console/ingest");
    state.ingest = doc;
    show("#ingest-message", doc.engine ? null : "No pipeline runs in this server process: rates, lag and freshness are empty; dead letters are counted from the store.");
    $("#i-eps").textContent = fmtNum(doc.events_per_s, 0);
    $("#i-events").textContent = `${fmtNum(doc.events)} events`;
    $("#i-mps").textContent = fmtNum(doc.mutations_per_s, 0);
    $("#i-mutations").textContent = `${fmtNum(doc.mutations)} mutations`;
    $("#i-lag").textContent = fmtBytes(doc.lag_total_bytes);
    $("#i-lag-sub").textContent = Object.entries(doc.lag_bytes || {}).map(([k, v]) => `${k} ${fmtBytes(v)}`).join(" · ");
    const fresh = doc.freshness_ms;
    $("#i-fresh").textContent = fresh && fresh.p50 !== null && fresh.p50 !== undefined ? `${fmtNum(fresh.p50, 0)} / ${fmtNum(fresh.p99, 0)} ms` : "–";
    $("#i-dead").textContent = fmtNum(doc.dead_letters);
    $("#i-dead-sub").textContent = Object.entries(doc.dead_by_reason || {}).map(([k, v]) => `${k} ${v}`).join(" · ");
  } catch (exc) {
    state.failures.ingest = exc.message;
    show("#ingest-message", `Ingest status unavailable: ${exc.message}`, exc.status === 404 ? "warn" : "error");
  }
}

// -- graph explorer -----------------------------------------------------------------------------

async function search(q, depth) {
  const results = $("#results");
  results.replaceChildren();
  show("#graph-message", null);
  if (!q) return;
  try {
    const doc = await api("GET", `/v1/console/graph/search?q=${enc(q)}&limit=20`);
    if (!doc.nodes.length) {
      show("#graph-message", `No node starts with “${q}”.`);
      return;
    }
    results.append(...doc.nodes.map((n) =>
      el("li", {}, el("button", { onclick: () => explore(n.id, depth()), title: JSON.stringify(n.props) }, n.props && n.props.name ? `${n.id} · ${n.props.name}` : n.id))));
    if (doc.nodes.length === 1 || doc.nodes[0].id === q) explore(doc.nodes[0].id, depth());
  } catch (exc) {
    if (exc.status === 404 && /is not available/.test(exc.message)) {
      show("#graph-message", `Search unavailable (${exc.message}); drawing ${q} as an exact id.`);
      explore(q, depth());
    } else {
      show("#graph-message", exc.message, "error");
    }
  }
}

async function explore(nodeId, depth = 1) {
  try {
    const hood = await api("GET", `/v1/console/graph/neighbourhood/${enc(nodeId)}?depth=${depth}&limit=40`);
    state.hood = hood;
    show("#graph-message", hood.truncated ? "Neighbourhood truncated at the limit." : null);
    drawNeighbourhood($("#graph-svg"), hood, (id) => explore(id, depth));
    showNode(hood.nodes.find((n) => n.id === hood.center) || { id: nodeId }, hood);
  } catch (exc) {
    show("#graph-message", exc.message, exc.status === 404 ? "warn" : "error");
  }
  const type = nodeId.split(":")[0];
  if (type === "account" || type === "profile" || type === "device") loadJourney(nodeId);
  else clearJourney(`${nodeId} has no journey: a journey belongs to an account (find an account, a profile or a device).`);
}

// "1 device", "2 devices"
function plural(n, one, many = `${one}s`) {
  return `${fmtNum(n)} ${n === 1 ? one : many}`;
}

// The journey panel shows no timeline but the hint (so it never keeps another member's).
function clearJourney(hint) {
  state.journey = null;
  $("#journey-svg").replaceChildren();
  $("#journey-caption").textContent = "";
  $("#journey-legend").replaceChildren();
  show("#journey-message", hint, "warn");
}

function showNode(node, hood) {
  const degree = hood.edges.filter((e) => e.src === node.id || e.dst === node.id).length;
  const props = Object.entries(node.props || {});
  $("#node-info").replaceChildren(
    el("h3", {}, node.id),
    el("div", { class: "dim" }, `${node.type || node.id.split(":")[0]} · ${degree} edges shown · ${hood.nodes.length} nodes`),
    el("dl", {}, ...props.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))])),
    el("h3", {}, "Edges"),
    el("ul", {}, ...hood.edges.slice(0, 30).map((e) => el("li", {}, `${e.src} —${e.type}→ ${e.dst}`))),
  );
}

async function loadJourney(nodeId) {
  clearJourney(`loading the journey of ${nodeId} …`);
  try {
    const doc = await api("GET", `/v1/console/graph/journey/${enc(nodeId)}?since=100d&limit=200`);
    state.journey = doc;
    show("#journey-message", null);
    $("#journey-caption").textContent = `${doc.account}: ${plural(doc.entries.length, "interaction")} on ${plural(doc.devices.length, "device")}` + (doc.verticals.length ? ` · ${doc.verticals.join(", ")}` : "");
    drawJourney($("#journey-svg"), doc);
    $("#journey-legend").replaceChildren(
      ...Object.entries(VERTICAL_COLOURS).map(([v, c]) => el("span", { style: `--c:${c}` }, v)));
  } catch (exc) {
    show("#journey-message", exc.message, exc.status === 404 ? "warn" : "error");
  }
}

$("#search").addEventListener("submit", (e) => {
  e.preventDefault();
  const form = new FormData(e.target);
  search(form.get("q").trim(), () => Number(form.get("depth")) || 1);
});

// -- start ----------------------------------------------------------------------------------------

function tick() {
  $("#clock").textContent = new Date().toLocaleTimeString();
  const now = nowUs();
  for (const cell of document.querySelectorAll("td.starts")) {
    const ev = state.events.find((x) => x.id === cell.parentElement.dataset.event);
    if (ev && !ev.terminal && ev.state !== "live" && ev.state !== "interrupted") cell.firstChild.textContent = `in ${fmtIn(ev.starts_at - now)}`;
  }
}

setUpKeyForm();
setInterval(tick, 500);
loadEvents();
pollDashboard();
pollIngest();
setInterval(loadEvents, POLL_MS);
setInterval(pollDashboard, POLL_MS);
setInterval(pollIngest, POLL_MS * 2);
setTimeout(loadSegments, 1000); // once the dashboard has named its event
setInterval(loadSegments, POLL_MS * 5);
const first = new URLSearchParams(location.search).get("node");
if (first) {
  $("#search input[name=q]").value = first;
  search(first, () => 1);
}
