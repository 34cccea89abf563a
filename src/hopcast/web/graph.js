// Drawing for the console's graph explorer: a small force-directed layout and SVG renderers for
// a node's neighbourhood and a member's journey. Plain DOM, no library.

const SVG = "http://www.w3.org/2000/svg";

export const TYPE_COLOURS = {
  account: "#f5b041",
  profile: "#5aa9ff",
  device: "#a78bfa",
  title: "#3ddc97",
  genre: "#2ec4b6",
  game: "#ff9f43",
  live_event: "#ff2d55",
  team: "#f368e0",
};
export const VERTICAL_COLOURS = {
  streaming: "#3ddc97",
  live: "#ff2d55",
  games: "#ff9f43",
  browse: "#5aa9ff",
};

export function colourOf(type) {
  return TYPE_COLOURS[type] || "#9aa3b5";
}

export function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

function seeded(s) {
  let h = 2166136261;
  for (let i = 0; i < s.length; i += 1) h = Math.imul(h ^ s.charCodeAt(i), 16777619) >>> 0;
  return (h % 10000) / 10000;
}

/**
 * Lay out `nodes` ({id, depth}) joined by `edges` ({src, dst}) in a width x height box:
 * radial start (rings by depth, children near their parent), then force iterations — pairwise
 * repulsion, springs along edges, a pull towards the centre — with cooling. The centre node
 * stays pinned in the middle. Deterministic: the start jitter comes from the ids.
 * Returns Map id → {x, y}.
 */
export function forceLayout(nodes, edges, { width = 900, height = 560, center = null, iterations = 300 } = {}) {
  const cx = width / 2;
  const cy = height / 2;
  const pos = new Map();
  const byDepth = new Map();
  for (const n of nodes) {
    const d = n.depth ?? 1;
    if (!byDepth.has(d)) byDepth.set(d, []);
    byDepth.get(d).push(n);
  }
  const ringStep = Math.min(width, height) * 0.22;
  const parent = new Map();
  for (const e of edges) {
    for (const [a, b] of [[e.src, e.dst], [e.dst, e.src]]) if (!parent.has(b) && a !== b) parent.set(b, a);
  }
  for (const d of [...byDepth.keys()].sort()) {
    const ring = byDepth.get(d);
    ring.forEach((n, i) => {
      if (n.id === center || d === 0) {
        pos.set(n.id, { x: cx, y: cy, vx: 0, vy: 0 });
        return;
      }
      let angle = (i / ring.length) * Math.PI * 2 + seeded(n.id) * 0.3;
      const p = parent.get(n.id);
      if (d > 1 && p && pos.has(p)) {
        const pp = pos.get(p);
        angle = Math.atan2(pp.y - cy, pp.x - cx) + (seeded(n.id) - 0.5) * 1.2;
      }
      pos.set(n.id, { x: cx + Math.cos(angle) * ringStep * d, y: cy + Math.sin(angle) * ringStep * d * 0.8, vx: 0, vy: 0 });
    });
  }
  const list = [...pos.entries()];
  const k = Math.sqrt((width * height) / Math.max(1, list.length)) * 0.55;
  let temperature = Math.min(width, height) / 8;
  for (let it = 0; it < iterations; it += 1) {
    for (const [, p] of list) {
      p.vx = 0;
      p.vy = 0;
    }
    for (let i = 0; i < list.length; i += 1) {
      const a = list[i][1];
      for (let j = i + 1; j < list.length; j += 1) {
        const b = list[j][1];
        let dx = a.x - b.x;
        let dy = a.y - b.y;
        let d2 = dx * dx + dy * dy;
        if (d2 < 0.01) {
          dx = 0.1;
          dy = 0.1;
          d2 = 0.02;
        }
        const f = (k * k) / d2;
        a.vx += dx * f;
        a.vy += dy * f;
        b.vx -= dx * f;
        b.vy -= dy * f;
      }
    }
    for (const e of edges) {
      const a = pos.get(e.src);
      const b = pos.get(e.dst);
      if (!a || !b || a === b) continue;
      const dx = a.x - b.x;
      const dy = a.y - b.y;
      const d = Math.sqrt(dx * dx + dy * dy) || 0.1;
      const f = d / k;
      a.vx -= dx * f;
      a.vy -= dy * f;
      b.vx += dx * f;
      b.vy += dy * f;
    }
    for (const [id, p] of list) {
      if (id === center) continue;
      p.vx += (cx - p.x) * 0.02;
      p.vy += (cy - p.y) * 0.03;
      const v = Math.sqrt(p.vx * p.vx + p.vy * p.vy) || 1;
      const step = Math.min(v, temperature);
      p.x = Math.min(width - 40, Math.max(40, p.x + (p.vx / v) * step));
      p.y = Math.min(height - 24, Math.max(24, p.y + (p.vy / v) * step));
    }
    temperature *= 0.985;
  }
  return new Map(list.map(([id, p]) => [id, { x: p.x, y: p.y }]));
}

function label(node) {
  const p = node.props || {};
  return p.name ? `${p.name}` : node.id;
}

/** Draw a neighbourhood ({center, nodes, edges}) into `root` (an <svg>); onPick(id) on click. */
export function drawNeighbourhood(root, hood, onPick) {
  const width = 900;
  const height = 560;
  root.replaceChildren();
  const layout = forceLayout(hood.nodes, hood.edges, { width, height, center: hood.center });
  const edgeLayer = svg("g");
  const nodeLayer = svg("g");
  root.append(edgeLayer, nodeLayer);
  const seen = new Set();
  for (const e of hood.edges) {
    const a = layout.get(e.src);
    const b = layout.get(e.dst);
    if (!a || !b) continue;
    edgeLayer.append(svg("line", { class: "edge", x1: a.x, y1: a.y, x2: b.x, y2: b.y, "data-type": e.type }));
    const key = `${[e.src, e.dst].sort().join("|")}:${e.type}`;
    if (!seen.has(key) && hood.edges.length <= 40) {
      seen.add(key);
      edgeLayer.append(svg("text", { class: "edge-label", x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 - 3, "text-anchor": "middle" }, e.type));
    }
  }
  for (const n of hood.nodes) {
    const p = layout.get(n.id);
    if (!p) continue;
    const r = n.id === hood.center ? 16 : n.depth === 1 ? 10 : 7;
    const g = svg("g", { class: `node${n.id === hood.center ? " center" : ""}`, "data-id": n.id, transform: `translate(${p.x.toFixed(1)},${p.y.toFixed(1)})` });
    g.append(svg("circle", { r, fill: colourOf(n.type) }));
    const text = label(n);
    g.append(svg("text", { x: r + 4, y: 4 }, text.length > 22 ? `${text.slice(0, 21)}…` : text));
    g.append(svg("title", {}, `${n.id}\n${JSON.stringify(n.props || {})}`));
    g.addEventListener("click", () => onPick(n.id));
    nodeLayer.append(g);
  }
  return layout;
}

function fmtTime(us) {
  const d = new Date(us / 1000);
  return d.toISOString().slice(5, 16).replace("T", " ");
}

/**
 * Draw a journey ({entries, devices, verticals}) as a timeline: time runs left to right, one lane
 * per device (plus one for entries with no device), dots coloured by vertical.
 */
export function drawJourney(root, journey) {
  const width = 1200;
  root.replaceChildren();
  const entries = journey.entries || [];
  const lanes = [...(journey.devices || [])];
  if (entries.some((e) => !e.device)) lanes.push("(no device)");
  const laneOf = (e) => (e.device ? lanes.indexOf(e.device) : lanes.length - 1);
  const laneH = 34;
  const top = 16;
  const left = 150;
  const height = Math.max(120, top + lanes.length * laneH + 40);
  root.setAttribute("viewBox", `0 0 ${width} ${height}`);
  if (!entries.length) {
    root.append(svg("text", { x: 20, y: 40 }, "No interactions in this period."));
    return;
  }
  const times = entries.map((e) => e.ts);
  const t0 = Math.min(...times);
  const t1 = Math.max(...times);
  const span = Math.max(1, t1 - t0);
  const x = (t) => left + ((t - t0) / span) * (width - left - 30);
  lanes.forEach((lane, i) => {
    const y = top + i * laneH + laneH / 2;
    root.append(svg("line", { class: "axis", x1: left, x2: width - 20, y1: y, y2: y }));
    root.append(svg("text", { x: 8, y: y + 4 }, lane.length > 22 ? `${lane.slice(0, 21)}…` : lane));
  });
  const axisY = top + lanes.length * laneH + 8;
  for (let i = 0; i <= 4; i += 1) {
    const t = t0 + (span * i) / 4;
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    root.append(svg("text", { class: "tick", x: x(t), y: axisY + 14, "text-anchor": anchor }, fmtTime(t)));
  }
  for (const e of [...entries].reverse()) {
    const y = top + laneOf(e) * laneH + laneH / 2;
    const dot = svg("circle", {
      cx: x(e.ts).toFixed(1),
      cy: y,
      r: 6,
      fill: VERTICAL_COLOURS[e.vertical] || "#9aa3b5",
      class: "entry",
      "data-vertical": e.vertical,
    });
    dot.append(svg("title", {}, `${fmtTime(e.ts)} ${e.type} → ${e.dst_name || e.dst}\n${e.src}${e.device ? ` on ${e.device}` : ""}`));
    root.append(dot);
  }
}

/** Draw a CDF ([{ms, fraction}]) on a canvas, with p50/p90/p99 marks. */
export function drawCdf(canvas, ttu) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width;
  const H = canvas.height;
  const pad = { l: 48, r: 16, t: 14, b: 34 };
  ctx.clearRect(0, 0, W, H);
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = "#8a92a3";
  ctx.strokeStyle = "#262c39";
  ctx.lineWidth = 1;
  const points = (ttu && ttu.cdf) || [];
  const maxMs = Math.max(1, ...points.map((p) => p.ms), ttu && ttu.max_ms ? ttu.max_ms : 0);
  const X = (ms) => pad.l + (ms / maxMs) * (W - pad.l - pad.r);
  const Y = (f) => H - pad.b - f * (H - pad.t - pad.b);
  for (let i = 0; i <= 4; i += 1) {
    const f = i / 4;
    ctx.beginPath();
    ctx.moveTo(pad.l, Y(f));
    ctx.lineTo(W - pad.r, Y(f));
    ctx.stroke();
    ctx.fillText(`${Math.round(f * 100)}%`, 8, Y(f) + 4);
    const ms = (maxMs * i) / 4;
    // the first label starts at its tick, the last ends at it: neither is cut at the edge
    ctx.textAlign = i === 0 ? "left" : i === 4 ? "right" : "center";
    ctx.fillText(`${ms < 10 ? ms.toFixed(1) : Math.round(ms).toLocaleString("en-US")} ms`, X(ms), H - 12);
    ctx.textAlign = "left";
  }
  if (!points.length) {
    ctx.fillStyle = "#8a92a3";
    ctx.font = "14px system-ui, sans-serif";
    ctx.fillText("No trigger yet: start an event to measure the fleet's time to update.", pad.l + 12, H / 2);
    return;
  }
  ctx.strokeStyle = "#5aa9ff";
  ctx.lineWidth = 2.5;
  ctx.beginPath();
  ctx.moveTo(X(0), Y(0));
  let prev = 0;
  for (const p of points) {
    ctx.lineTo(X(p.ms), Y(prev));
    ctx.lineTo(X(p.ms), Y(p.fraction));
    prev = p.fraction;
  }
  ctx.stroke();
  const marks = [["p50", ttu.p50_ms, "#3ddc97"], ["p90", ttu.p90_ms, "#f5b041"], ["p99", ttu.p99_ms, "#ff2d55"]];
  marks.forEach(([name, value, colour], i) => {
    if (value === null || value === undefined) return;
    ctx.strokeStyle = colour;
    ctx.setLineDash([4, 4]);
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(X(value), pad.t);
    ctx.lineTo(X(value), H - pad.b);
    ctx.stroke();
    ctx.setLineDash([]);
    // the legend sits top left, clear of the curve, which rises on the right
    ctx.fillStyle = colour;
    ctx.fillText(`${name} ${value.toFixed(1)} ms`, pad.l + 10, pad.t + 14 + i * 16);
  });
}

/** A sparkline of [{t, rps}] into an <svg viewBox="0 0 200 40">. */
export function drawSpark(root, series) {
  root.replaceChildren();
  if (!series || series.length < 2) return;
  const max = Math.max(1, ...series.map((p) => p.rps));
  const pts = series.map((p, i) => `${((i / (series.length - 1)) * 200).toFixed(1)},${(38 - (p.rps / max) * 36).toFixed(1)}`);
  root.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: "#5aa9ff", "stroke-width": 1.5 }));
}
