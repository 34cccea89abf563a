// The device page: a home screen that prefetches live-event payloads and artwork, follows the
// gateway's triggers with DeviceClient (client.js, a port of the Python SDK), and shows a stage
// the moment its trigger lands — from memory, with no request.
//
// URL parameters (all optional):
//   member   the member's profile id (default profile:0-0). It is also the prefetch segment: the
//            origin looks a node id up in the materialiser's member → segment map
//            (docs/console-api.md), and falls back to `all` for a member it did not place.
//   device   the device id (default web-<member>); segment  overrides the segment.
//   refresh  seconds between schedule refreshes (default 10, jittered ±20%).
//
// Requests this page makes, and when:
//   at start     POST /v1/live/tokens (a development token and the gateway's URL);
//                GET /v1/live/events (the schedule: titles, start times, prefetch windows);
//   prefetch     GET .../manifest?segment=… once per event: every stage's payload inline; then
//                artwork, drawn in memory (or downloaded to blob: URLs when it is a real URL);
//                revalidated with If-None-Match after the manifest's jittered max-age;
//   every ~10 s  GET /v1/live/events again: a delay moves the countdown (delays are not
//                broadcast: the protocol pushes only stage changes);
//   later        POST /v1/console/reports (what the device prefetched and when it updated),
//                batched and sent 2-5 s after the fact, so a trigger makes no request at all;
//   fallback     a trigger naming a payload the cache lacks → one fetch after a jittered delay.
//
// When is the prefetch? The protocol spreads a fleet's fetches over the event's prefetch window
// by a hash of the device id (spreadDelay). A member who opens the page while the window is open
// is itself a random point in it ("load spread by normal browsing"), so the page fetches at once;
// a page left open when a window opens later waits for its point.

import { ArtworkCache } from "./artwork.js";
import { DeviceClient } from "./client.js";
import { SECOND, jitteredMaxAge, payloadRef, prefetchWindow, spreadDelay } from "./protocol.js";

const params = new URLSearchParams(location.search);
const MEMBER = params.get("member") || "profile:0-0";
const DEVICE = params.get("device") || `web-${MEMBER}`;
const SEGMENT = params.get("segment") || MEMBER;
const REFRESH_S = Math.max(1, Number(params.get("refresh")) || 10);
const CHANNELS = ["global"];
// The device token's lifetime; the gateway asks for a fresh one before it ends and the client
// sends it on the same connection. `?token_ttl=2s` tries short lifetimes out.
const TOKEN_TTL = params.get("token_ttl") || "12h";
const REPORT_DELAY_S = [2, 5];
const TERMINAL = new Set(["ended", "cancelled"]);
const LIVE = new Set(["live", "interrupted"]);

const now = () => Date.now() * 1000;
const enc = encodeURIComponent;
const $ = (sel, root = document) => root.querySelector(sel);

// The children that exist: DOM append/replaceChildren turn null and undefined into text.
function present(...children) {
  return children.flat().filter((c) => c !== null && c !== undefined);
}

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

// -- state, exposed for tests and curious operators ----------------------------------------

const cache = new Map(); // payload reference `<event>/<stage>` → payload object
const art = new ArtworkCache();
const events = new Map(); // event id → schedule doc (GET /v1/live/events) merged with triggers

const state = {
  member: MEMBER,
  device: DEVICE,
  segment: SEGMENT,
  status: "starting",
  node: null,
  event: null, // the featured event's id
  stage: null, // its current stage
  stages: {}, // event → stage shown
  view: "home",
  cacheKeys: [],
  artworkKeys: [],
  prefetched: {}, // event → stages cached
  manifests: 0,
  connects: 0,
  reconnects: 0,
  welcomes: 0,
  triggers: [], // {event, stage, version, ts, appliedAt, source, fromCache}
  autoPlayed: [],
  refreshes: 0,
  lastRefreshAt: 0,
  reports: { sent: 0, failed: 0, queued: 0 },
  errors: [],
  client: null,
};
window.hopcastDevice = state;

function sync() {
  state.cacheKeys = [...cache.keys()].sort();
  state.artworkKeys = art.keys().sort();
  if (client) {
    state.connects = client.stats.connects;
    state.reconnects = client.stats.reconnects;
    state.welcomes = client.stats.welcomes;
    state.client = { ...client.stats, applied: client.stats.applied.length, status: client.status };
  }
}

function note(message) {
  state.errors.push({ at: Date.now(), message });
  if (state.errors.length > 50) state.errors.shift();
}

// -- HTTP helpers ----------------------------------------------------------------------------

// The device token (POST /v1/live/tokens) is also the credential of the schedule, manifest,
// payload and report requests: the API lets a device token call exactly those routes. Requests
// wait for the first token; a refreshed token replaces it.
let deviceToken = null;
let tokenArrived = null;
const tokenReady = new Promise((resolve) => {
  tokenArrived = resolve;
});

async function authHeaders(extra = {}) {
  await tokenReady;
  return { ...extra, authorization: `Bearer ${deviceToken}` };
}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store", headers: await authHeaders() });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

async function postJSON(url, body, { auth = true } = {}) {
  const json = { "content-type": "application/json" };
  const r = await fetch(url, {
    method: "POST",
    headers: auth ? await authHeaders(json) : json,
    body: JSON.stringify(body),
  });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.status === 204 ? null : r.json();
}

// -- reports to the console (batched, after the fact) --------------------------------------

let reportQueue = [];
let reportTimer = null;

function report(entry) {
  reportQueue.push({ device: DEVICE, ...entry });
  state.reports.queued = reportQueue.length;
  if (reportTimer !== null) return;
  const [lo, hi] = REPORT_DELAY_S;
  reportTimer = setTimeout(flushReports, (lo + Math.random() * (hi - lo)) * 1000);
}

async function flushReports() {
  reportTimer = null;
  const batch = reportQueue.splice(0, 1000);
  state.reports.queued = reportQueue.length;
  if (!batch.length) return;
  try {
    await postJSON("/v1/console/reports", { reports: batch });
    state.reports.sent += batch.length;
  } catch (exc) {
    state.reports.failed += batch.length; // telemetry: dropped, never retried in a loop
  }
  if (reportQueue.length && reportTimer === null) reportTimer = setTimeout(flushReports, 1000);
}

// -- the schedule ------------------------------------------------------------------------------

function merge(doc) {
  const known = events.get(doc.id) || {};
  const merged = { ...known, ...doc };
  // A trigger may be newer than the schedule read (or the reverse): keep the newer stage.
  if (known.stageVersion !== undefined && known.stageVersion > (doc.stage_version ?? -1)) {
    merged.state = known.state;
    merged.stageVersion = known.stageVersion;
  } else {
    merged.stageVersion = doc.stage_version ?? known.stageVersion ?? -1;
  }
  events.set(doc.id, merged);
  return merged;
}

let refreshTimer = null;
let firstSchedule = true; // the schedule read when the page opened

async function refreshSchedule() {
  clearTimeout(refreshTimer);
  try {
    const doc = await getJSON("/v1/live/events");
    for (const ev of doc.events) {
      const merged = merge(ev);
      planPrefetch(merged);
    }
    state.refreshes += 1;
    state.lastRefreshAt = Date.now();
    firstSchedule = false;
  } catch (exc) {
    note(`schedule: ${exc.message}`);
  }
  render();
  const wait = jitteredMaxAge(REFRESH_S, 0.2) * 1000;
  state.nextRefreshAt = Date.now() + wait;
  refreshTimer = setTimeout(refreshSchedule, wait);
}

function featured() {
  const all = [...events.values()].filter((e) => e.state !== "cancelled");
  const live = all.filter((e) => LIVE.has(e.state)).sort((a, b) => b.starts_at - a.starts_at);
  if (live.length) return live[0];
  const next = all.filter((e) => !TERMINAL.has(e.state)).sort((a, b) => a.starts_at - b.starts_at);
  if (next.length) return next[0];
  const ended = all.filter((e) => e.state === "ended").sort((a, b) => (b.ended_at ?? 0) - (a.ended_at ?? 0));
  return ended[0] || null;
}

// -- prefetch ----------------------------------------------------------------------------------

const plans = new Map(); // event id → {timer, at, etag, window}

async function planPrefetch(ev) {
  if (TERMINAL.has(ev.state)) return;
  const plan = plans.get(ev.id) || {};
  plans.set(ev.id, plan);
  if (plan.done || plan.pending) return;
  const [opens, closes] = prefetchWindow(ev.starts_at, ev.prefetch_lead_us, ev.prefetch_opens_at);
  if (plan.window && plan.window[0] === opens && plan.window[1] === closes) return;
  plan.window = [opens, closes];
  clearTimeout(plan.timer);
  const t = now();
  // Known when the page opened, with the window open: the member's visit is the spread.
  const wait = firstSchedule && t >= opens ? 0 : await spreadDelay(DEVICE, opens, closes, t);
  plan.at = t + wait;
  plan.timer = setTimeout(() => fetchManifest(ev.id), wait / 1000);
}

async function fetchManifest(eventId) {
  const plan = plans.get(eventId) || {};
  plans.set(eventId, plan);
  plan.pending = true;
  const headers = await authHeaders(plan.etag ? { "if-none-match": plan.etag } : {});
  let retryS = null;
  try {
    const url = `/v1/live/events/${enc(eventId)}/manifest?segment=${enc(SEGMENT)}`;
    const r = await fetch(url, { cache: "no-store", headers });
    if (r.status === 304) {
      retryS = maxAge(r);
    } else if (r.status === 404) {
      retryS = 15 + Math.random() * 15; // nothing published yet
    } else if (!r.ok) {
      throw new Error(`manifest: HTTP ${r.status}`);
    } else {
      const manifest = await r.json();
      plan.etag = r.headers.get("etag");
      await takeManifest(manifest);
      plan.done = true;
      retryS = maxAge(r);
    }
  } catch (exc) {
    note(`prefetch ${eventId}: ${exc.message}`);
    retryS = 10 + Math.random() * 20;
  } finally {
    plan.pending = false;
  }
  const ev = events.get(eventId);
  if (retryS !== null && !(ev && TERMINAL.has(ev.state))) {
    clearTimeout(plan.timer);
    plan.timer = setTimeout(() => fetchManifest(eventId), retryS * 1000);
  }
  sync();
  render();
}

function maxAge(response) {
  const m = /max-age=(\d+)/.exec(response.headers.get("cache-control") || "");
  return m ? Number(m[1]) : 300;
}

/** Cache every stage's payload and make every artwork it names ready in memory. */
async function takeManifest(manifest) {
  const stages = [];
  for (const [stage, pid] of Object.entries(manifest.stages)) {
    const payload = manifest.payloads[pid];
    if (!payload) continue;
    cache.set(payloadRef(manifest.event, stage), payload);
    stages.push(stage);
    await prefetchArtwork(payload);
  }
  state.manifests += 1;
  state.prefetched[manifest.event] = stages.sort();
  sync();
  report({ kind: "prefetched", event: manifest.event, stages: state.prefetched[manifest.event] });
}

async function prefetchArtwork(payload) {
  const names = new Map([[payload.title.artwork, payload.title.name]]);
  for (const row of payload.rows) for (const item of row.items) names.set(item.artwork, item.name);
  for (const ref of payload.artwork) await art.prefetch(ref, names.get(ref) || ref);
}

async function fetchPayload(ref) {
  const [event, stage] = ref.split("/");
  const url = `/v1/live/events/${enc(event)}/payload?stage=${enc(stage)}&segment=${enc(SEGMENT)}`;
  const r = await fetch(url, { cache: "no-store", headers: await authHeaders() });
  if (r.status === 404) return null;
  if (!r.ok) throw new Error(`payload: HTTP ${r.status}`);
  const payload = await r.json();
  await prefetchArtwork(payload);
  return payload;
}

// -- the live connection -------------------------------------------------------------------

let client = null;

async function issueToken() {
  const body = { device: DEVICE, channels: CHANNELS, ttl: TOKEN_TTL };
  const issued = await postJSON("/v1/live/tokens", body, { auth: false });
  if (issued.url) issued.url = reachable(issued.url);
  deviceToken = issued.token;
  tokenArrived();
  return issued;
}

const WILDCARD = new Set(["0.0.0.0", "[::]", "::"]);
const LOOPBACK = new Set(["127.0.0.1", "localhost", "[::1]"]);

/** The gateway's URL as this browser can reach it: the API names the address the gateway is
 * bound to, which is a wildcard (0.0.0.0) or loopback when the server listens everywhere or
 * locally; then the page's own host name is the one that works. */
function reachable(url) {
  const u = new URL(url);
  if (WILDCARD.has(u.hostname) || (LOOPBACK.has(u.hostname) && !LOOPBACK.has(location.hostname))) {
    u.hostname = location.hostname;
  }
  return u.toString().replace(/\/$/, "");
}

async function startLive() {
  let issued = null;
  for (let attempt = 0; issued === null; attempt += 1) {
    try {
      issued = await issueToken();
      if (!issued.url) throw new Error("the API runs no gateway");
    } catch (exc) {
      issued = null;
      note(`token: ${exc.message}`);
      setStatus("no gateway", "waiting");
      await new Promise((r) => setTimeout(r, Math.min(60, 2 ** attempt) * 1000 * Math.random() + 500));
    }
  }
  client = new DeviceClient({
    url: issued.url,
    token: issued.token,
    channels: CHANNELS,
    cache,
    fetchPayload,
    refreshToken: issueToken,
    onEvent,
    onStatus: (s) => {
      state.status = s;
      state.node = client ? client.protocol.node : null;
      setStatus(s, s);
      sync();
    },
  });
  window.addEventListener("online", () => client.nudge());
  client.run();
}

function setStatus(text, status) {
  const dot = $("#conn");
  dot.dataset.status = status;
  $("#conn-text").textContent = text;
}

function onEvent(event) {
  if (event.kind === "trigger_applied") applyStage(event);
  else if (event.kind === "payload_fetched") render();
  sync();
}

function applyStage(t) {
  const fromCache = t.payload === null || cache.has(t.payload);
  const known = events.get(t.event) || { id: t.event, title: null, starts_at: t.ts };
  events.set(t.event, { ...known, state: t.stage, stageVersion: t.version, stage_changed_at: t.ts });
  state.stages[t.event] = t.stage;
  const appliedAt = now();
  state.triggers.push({
    event: t.event,
    stage: t.stage,
    version: t.version,
    ts: t.ts,
    appliedAt,
    source: t.source,
    fromCache,
  });
  if (TERMINAL.has(t.stage)) {
    const plan = plans.get(t.event);
    if (plan) clearTimeout(plan.timer);
  }
  // A member on the event's title page goes straight into the player at go-live.
  const route = parseRoute();
  if (LIVE.has(t.stage) && route.view === "detail" && route.id === `live:${t.event}`) {
    state.autoPlayed.push({ event: t.event, at: appliedAt });
    history.replaceState(null, "", `#/play/live:${t.event}`);
  }
  render();
  if (t.source === "trigger") {
    report({ kind: "updated", event: t.event, stage: t.stage, version: t.version, at: appliedAt });
  }
}

// -- views -------------------------------------------------------------------------------------

function parseRoute() {
  const m = /^#\/(title|play)\/(.+)$/.exec(location.hash);
  if (!m) return { view: "home" };
  return { view: m[1] === "title" ? "detail" : "player", id: decodeURIComponent(m[2]) };
}

function payloadFor(ev) {
  if (!ev) return null;
  const stage = ev.state;
  const own = cache.get(payloadRef(ev.id, stage));
  if (own) return own;
  // scheduled before the window opens: the `prefetch` stage's rows are the same teaser
  if (stage === "scheduled") return cache.get(payloadRef(ev.id, "prefetch")) || null;
  return null;
}

function eventOfTitle(id) {
  if (id.startsWith("live:")) return events.get(id.slice(5)) || null;
  return null;
}

function fmtDuration(us) {
  const s = Math.max(0, Math.round(us / SECOND));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

function whenText(ev) {
  if (!ev) return "";
  switch (ev.state) {
    case "live":
      return "Live now";
    case "interrupted":
      return "Interrupted — back shortly";
    case "ended":
      return "Ended";
    case "cancelled":
      return "Cancelled";
    default: {
      const left = ev.starts_at - now();
      return left > 0 ? `Starts in ${fmtDuration(left)}` : "Starting…";
    }
  }
}

function badgeFor(stage) {
  if (LIVE.has(stage)) return el("span", { class: "badge live", id: "live-badge" }, "Live");
  if (stage === "ended") return el("span", { class: "badge ended", id: "ended-badge" }, "Ended");
  if (stage === "cancelled") return el("span", { class: "badge cancelled" }, "Cancelled");
  if (stage) return el("span", { class: "badge soon" }, "Soon");
  return null;
}

function heroArt(ev, payload) {
  if (payload) return { ref: payload.title.artwork, name: payload.title.name };
  const kind = LIVE.has(ev.state) ? "live" : ev.state === "ended" ? "ended" : "upcoming";
  return { ref: `art/live/${ev.id}/${kind}.jpg`, name: ev.title || ev.id };
}

let heroShown = null; // {event, ref}

function renderHero(ev, payload) {
  const { ref, name } = heroArt(ev, payload);
  const title = ev.title || (payload ? payload.title.name : ev.id);
  let hero = $("#hero");
  if (!hero || hero.dataset.event !== ev.id) {
    hero = el("section", { class: "hero", id: "hero", dataset: { event: ev.id } },
      el("div", { class: "layers" }),
      el("div", { class: "shade" }),
      el("div", { class: "info" }));
    heroShown = null;
  }
  hero.dataset.stage = ev.state;
  // artwork: a new layer fades in over the old when the artwork changes
  if (!heroShown || heroShown.ref !== ref) {
    const layers = $(".layers", hero);
    const layer = el("div", { class: heroShown ? "layer enter" : "layer" });
    layer.append(art.render(ref, name));
    for (const old of [...layers.children]) {
      old.classList.remove("enter");
      old.classList.add("leave");
      setTimeout(() => old.remove(), 950);
    }
    layers.append(layer);
    // settled: drop the class, so moving the hero in the document does not replay it
    setTimeout(() => layer.classList.remove("enter"), 950);
    hero.dataset.art = ref;
    if (heroShown) hero.dataset.transitions = String(Number(hero.dataset.transitions || 0) + 1);
    heroShown = { ref };
  }
  const info = $(".info", hero);
  const key = JSON.stringify([ev.state, title, ev.delay_us, ev.starts_at, payload ? payload.title.id : null]);
  if (info.dataset.key === key) return hero;
  info.dataset.key = key;
  const moved = ev.delay_us && !TERMINAL.has(ev.state) && !LIVE.has(ev.state);
  const delay = moved
    ? el("span", { class: "delay", id: "delay" },
      ev.delay_us > 0 ? `delayed ${fmtDuration(ev.delay_us)}` : `${fmtDuration(-ev.delay_us)} earlier`)
    : null;
  // el() skips absent children; replaceChildren would print them as "null".
  info.replaceChildren(...present(
    badgeFor(ev.state),
    el("h1", {}, title),
    payload && payload.title.synopsis ? el("p", { class: "synopsis" }, payload.title.synopsis) : null,
    el("div", { class: "when" }, el("span", { id: "countdown", dataset: { startsAt: ev.starts_at } }, whenText(ev)), delay),
    el("div", { class: "actions" },
      LIVE.has(ev.state)
        ? el("button", { class: "primary", id: "watch", onclick: () => go(`#/play/live:${ev.id}`) }, "▶ Watch live")
        : null,
      el("button", { class: "secondary", id: "more", onclick: () => go(`#/title/live:${ev.id}`) }, "More info")),
  ));
  return hero;
}

function renderRows(payload) {
  if (!payload) return [el("div", { class: "empty", id: "rows-empty" }, "Recommendations arrive before the event.")];
  return payload.rows.map((row) =>
    el("section", { class: "row" },
      el("h2", {}, row.title),
      el("div", { class: "tiles" },
        row.items.map((item) =>
          el("a", { class: "tile", href: `#/title/${enc(item.id)}`, dataset: { id: item.id } },
            art.render(item.artwork, item.name),
            item.badge ? badgeFor(item.badge === "Live" ? "live" : "soon") : null,
            el("div", { class: "name" }, item.name))))));
}

function findItem(id) {
  for (const payload of cache.values()) {
    if (payload.title.id === id) return { name: payload.title.name, artwork: payload.title.artwork, synopsis: payload.title.synopsis };
    for (const row of payload.rows) for (const item of row.items) if (item.id === id) return item;
  }
  return null;
}

function renderDetail(id) {
  const ev = eventOfTitle(id);
  const payload = ev ? payloadFor(ev) : null;
  const item = payload ? { name: payload.title.name, artwork: payload.title.artwork, synopsis: payload.title.synopsis } : findItem(id);
  const name = ev && ev.title ? ev.title : item ? item.name : id;
  const artwork = item ? item.artwork : ev ? heroArt(ev, null).ref : `art/${id}/box.jpg`;
  return el("section", { class: "detail", id: "detail", dataset: { id } },
    el("div", {}, art.render(artwork, name)),
    el("div", {},
      ev ? badgeFor(ev.state) : null,
      el("h1", {}, name),
      el("div", { class: "meta" }, ev ? el("span", { id: "countdown" }, whenText(ev)) : "On demand"),
      item && item.synopsis ? el("p", {}, item.synopsis) : null,
      el("div", { class: "actions" },
        !ev || LIVE.has(ev.state)
          ? el("button", { class: "primary", id: "play", onclick: () => go(`#/play/${enc(id)}`) }, "▶ Play")
          : el("button", { class: "secondary", disabled: true }, ev.state === "ended" ? "Ended" : "Starts soon — stay here"),
        el("button", { class: "secondary", onclick: () => go("#/") }, "Back"))));
}

let playerLoop = null;

function renderPlayer(id) {
  const ev = eventOfTitle(id);
  const item = findItem(id);
  const name = ev && ev.title ? ev.title : item ? item.name : id;
  const canvas = el("canvas", { width: 1280, height: 720, id: "player-canvas" });
  let notice = null;
  if (ev && TERMINAL.has(ev.state)) {
    notice = el("div", { class: "notice", id: "player-ended" }, "The event has ended", el("br"), el("small", {}, "Highlights are on the home screen"));
  } else if (ev && ev.state === "interrupted") {
    notice = el("div", { class: "notice", id: "player-interrupted" }, "Interrupted", el("br"), el("small", {}, "We'll be right back"));
  }
  const node = el("section", { class: "player", id: "player", dataset: { id } },
    canvas,
    el("button", { class: "secondary back", onclick: () => go("#/") }, "← Back"),
    el("div", { class: "hud" },
      ev && LIVE.has(ev.state) ? el("span", { class: "badge live", id: "live-badge" }, "Live") : null,
      el("span", { class: "title" }, name),
      el("span", { class: "time", id: "player-time" }, "")),
    notice);
  startPlayer(canvas, ev, name);
  return node;
}

function startPlayer(canvas, ev, name) {
  cancelAnimationFrame(playerLoop);
  const ctx = canvas.getContext("2d");
  const started = performance.now();
  const hue = [...name].reduce((h, c) => (h * 31 + c.charCodeAt(0)) % 360, 7);
  const frame = (t) => {
    if (!canvas.isConnected) return;
    const s = (t - started) / 1000;
    const g = ctx.createLinearGradient(0, 0, 1280, 720);
    g.addColorStop(0, `hsl(${hue} 50% 18%)`);
    g.addColorStop(1, `hsl(${(hue + 60) % 360} 60% 8%)`);
    ctx.fillStyle = g;
    ctx.fillRect(0, 0, 1280, 720);
    // a pitch and a ball, moving: something is happening
    ctx.strokeStyle = "hsl(0 0% 100% / 0.25)";
    ctx.lineWidth = 4;
    ctx.strokeRect(140, 110, 1000, 500);
    ctx.beginPath();
    ctx.arc(640, 360, 80, 0, Math.PI * 2);
    ctx.moveTo(640, 110);
    ctx.lineTo(640, 610);
    ctx.stroke();
    const x = 640 + Math.sin(s * 0.9) * 420;
    const y = 360 + Math.sin(s * 1.7) * 200;
    ctx.fillStyle = "white";
    ctx.beginPath();
    ctx.arc(x, y, 14, 0, Math.PI * 2);
    ctx.fill();
    const time = $("#player-time");
    const live = ev && LIVE.has(ev.state);
    if (time) time.textContent = live ? `LIVE · ${fmtDuration((now() - (ev.went_live_at || ev.stage_changed_at || now())))}` : fmtDuration(s * SECOND);
    playerLoop = requestAnimationFrame(frame);
  };
  playerLoop = requestAnimationFrame(frame);
}

function go(hash) {
  location.hash = hash;
}

let lastView = null;

function render() {
  const route = parseRoute();
  state.view = route.view;
  const ev = featured();
  state.event = ev ? ev.id : null;
  state.stage = ev ? ev.state : null;
  const view = $("#view");
  if (route.view === "player") {
    const key = `player:${route.id}:${(eventOfTitle(route.id) || {}).state}`;
    if (lastView !== key) view.replaceChildren(renderPlayer(route.id));
    lastView = key;
  } else if (route.view === "detail") {
    cancelAnimationFrame(playerLoop);
    view.replaceChildren(renderDetail(route.id));
    lastView = "detail";
  } else {
    cancelAnimationFrame(playerLoop);
    const payload = payloadFor(ev);
    // Nodes already in place stay (moving them would replay their animations).
    let top = $("#home-top", view);
    let rows = $("#rows", view);
    if (lastView !== "home" || !top || !rows) {
      top = el("div", { id: "home-top" });
      rows = el("div", { id: "rows" });
      view.replaceChildren(top, rows);
    }
    const hero = ev ? renderHero(ev, payload) : el("div", { class: "empty", id: "no-event" }, "No live events scheduled.");
    if (top.firstChild !== hero) top.replaceChildren(hero);
    if (rows.payload !== payload || rows.childElementCount === 0) {
      rows.payload = payload;
      rows.replaceChildren(...renderRows(payload));
    }
    lastView = "home";
  }
  $("#status").textContent =
    `${DEVICE} · segment ${SEGMENT} · ${state.cacheKeys.length} payloads, ${state.artworkKeys.length} artworks cached` +
    (client ? ` · ${client.stats.reconnects} reconnects` : "");
}

function tick() {
  for (const node of document.querySelectorAll("#countdown")) {
    const ev = state.view === "home" ? featured() : eventOfTitle(parseRoute().id || "");
    if (ev) node.textContent = whenText(ev);
  }
}

// -- start ------------------------------------------------------------------------------------

$("#member").textContent = MEMBER;
window.addEventListener("hashchange", render);
setInterval(tick, 250);
render();
refreshSchedule();
startLive();
