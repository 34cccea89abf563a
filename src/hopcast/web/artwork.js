// Artwork for the device page, prefetched into memory.
//
// Payloads list every artwork reference a stage shows (payloads.Payload.artwork). A reference
// that is a URL (http:, https:, or a path from the origin's root) is downloaded during the
// prefetch and kept as a blob: URL. The demo's references are names such as
// `art/live/final/live.jpg` with no image behind them, so the page draws those itself: an SVG
// generated from the reference and the title — colours from a hash of the reference, a motif
// per kind (live, upcoming, ended, box art) — and kept as markup. Either way, once prefetched,
// showing an artwork is a DOM operation with no network request.

const SVG_NS = "http://www.w3.org/2000/svg";

/** FNV-1a, 32 bits: a stable small hash of a string. */
export function hash32(s) {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i += 1) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

function rng(seed) {
  // mulberry32: a tiny deterministic PRNG so an artwork is the same on every draw
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const KINDS = new Set(["live", "upcoming", "ended", "crest"]);

/**
 * What an artwork reference shows, from its file name: `art/<id>/live.jpg` → `live` (also
 * `upcoming`, `ended`, `crest`), `art/clip…` → `clip`, anything else → `box`.
 */
export function artKind(ref) {
  const m = /\/([A-Za-z]+)\.[A-Za-z0-9]+$/.exec(ref);
  if (m && KINDS.has(m[1])) return m[1];
  if (ref.startsWith("art/clip")) return "clip";
  return "box";
}

export function isUrl(ref) {
  return /^(https?:)?\/\//.test(ref) || ref.startsWith("/");
}

function wrap(title, width) {
  const words = String(title).split(/\s+/);
  const lines = [];
  let line = "";
  for (const w of words) {
    if ((line + " " + w).trim().length > width && line) {
      lines.push(line);
      line = w;
    } else {
      line = (line + " " + w).trim();
    }
  }
  if (line) lines.push(line);
  return lines.slice(0, 3);
}

/**
 * The SVG markup of a generated artwork: 16:9, deterministic in (ref, title).
 * ids inside are suffixed with the hash so several artworks can share a document.
 */
export function drawArtwork(ref, title) {
  const kind = artKind(ref);
  const h = hash32(ref);
  const r = rng(h);
  const id = `a${h.toString(36)}`;
  const hue = kind === "live" ? 350 + Math.floor(r() * 20) : Math.floor(r() * 360);
  const hue2 = (hue + 40 + Math.floor(r() * 80)) % 360;
  const sat = kind === "ended" ? 25 : 65;
  const parts = [];
  parts.push(
    `<svg xmlns="${SVG_NS}" viewBox="0 0 320 180" preserveAspectRatio="xMidYMid slice" role="img" aria-label="${esc(title)}">`,
    `<defs><linearGradient id="${id}g" x1="0" y1="0" x2="1" y2="1">`,
    `<stop offset="0" stop-color="hsl(${hue} ${sat}% 32%)"/>`,
    `<stop offset="1" stop-color="hsl(${hue2} ${sat}% 14%)"/></linearGradient>`,
    `<radialGradient id="${id}r" cx="0.75" cy="0.3" r="0.6"><stop offset="0" stop-color="hsl(${hue2} 90% 70% / 0.55)"/>`,
    `<stop offset="1" stop-color="hsl(${hue2} 90% 70% / 0)"/></radialGradient></defs>`,
    `<rect width="320" height="180" fill="url(#${id}g)"/>`,
  );
  if (kind === "live") {
    // a stadium under floodlights: rings and beams
    for (let i = 0; i < 5; i += 1) {
      parts.push(
        `<ellipse cx="160" cy="150" rx="${60 + i * 32}" ry="${14 + i * 9}" fill="none" stroke="hsl(${hue2} 80% 75% / ${0.5 - i * 0.08})" stroke-width="2"/>`,
      );
    }
    for (let i = 0; i < 4; i += 1) {
      const x = 30 + i * 87;
      parts.push(`<polygon points="${x},0 ${x + 16},0 ${160 + (x - 160) * 0.2},150" fill="hsl(50 100% 85% / 0.12)"/>`);
    }
    parts.push(`<circle cx="292" cy="22" r="7" fill="#ff2d55"/>`);
  } else if (kind === "upcoming") {
    // a clock face: the event is coming
    parts.push(`<circle cx="250" cy="70" r="44" fill="none" stroke="hsl(${hue2} 70% 80% / 0.7)" stroke-width="4"/>`);
    const a = r() * Math.PI * 2;
    parts.push(
      `<line x1="250" y1="70" x2="${250 + Math.cos(a) * 30}" y2="${70 + Math.sin(a) * 30}" stroke="white" stroke-width="4" stroke-linecap="round"/>`,
      `<line x1="250" y1="70" x2="250" y2="40" stroke="white" stroke-width="3" stroke-linecap="round"/>`,
    );
  } else if (kind === "ended" || kind === "clip") {
    // film strip: highlights and clips
    parts.push(`<rect x="0" y="60" width="320" height="60" fill="hsl(0 0% 0% / 0.45)"/>`);
    for (let x = 6; x < 320; x += 22) {
      parts.push(`<rect x="${x}" y="64" width="12" height="8" rx="2" fill="hsl(0 0% 100% / 0.5)"/>`);
      parts.push(`<rect x="${x}" y="108" width="12" height="8" rx="2" fill="hsl(0 0% 100% / 0.5)"/>`);
    }
    parts.push(`<polygon points="150,76 150,104 176,90" fill="white" opacity="0.85"/>`);
  } else if (kind === "crest") {
    // a team's crest: a shield with a band
    parts.push(
      `<path d="M160 22 L214 38 L210 104 Q200 140 160 158 Q120 140 110 104 L106 38 Z" fill="hsl(${hue2} 70% 45%)" stroke="white" stroke-width="4"/>`,
      `<path d="M110 70 L210 70 L208 92 L112 92 Z" fill="hsl(${hue} 80% 85% / 0.85)"/>`,
    );
  } else {
    // box art: a few shapes
    for (let i = 0; i < 6; i += 1) {
      const cx = r() * 320;
      const cy = r() * 180;
      const s = 20 + r() * 70;
      const hh = (hue + i * 30) % 360;
      parts.push(
        r() < 0.5
          ? `<circle cx="${cx.toFixed(1)}" cy="${cy.toFixed(1)}" r="${(s / 2).toFixed(1)}" fill="hsl(${hh} 70% 60% / 0.35)"/>`
          : `<rect x="${cx.toFixed(1)}" y="${cy.toFixed(1)}" width="${s.toFixed(1)}" height="${s.toFixed(1)}" transform="rotate(${Math.floor(r() * 90)} ${cx.toFixed(1)} ${cy.toFixed(1)})" fill="hsl(${hh} 70% 60% / 0.35)"/>`,
      );
    }
  }
  parts.push(`<rect width="320" height="180" fill="url(#${id}r)"/>`);
  const lines = wrap(title, 18);
  const y0 = 168 - lines.length * 22;
  parts.push(`<g class="label">`);
  lines.forEach((line, i) => {
    parts.push(
      `<text x="14" y="${y0 + i * 22 + 18}" font-family="system-ui, sans-serif" font-size="19" font-weight="700" fill="white" style="paint-order:stroke" stroke="hsl(0 0% 0% / 0.35)" stroke-width="3">${esc(line)}</text>`,
    );
  });
  parts.push("</g></svg>");
  return parts.join("");
}

/**
 * In-memory artwork: ref → {kind: "svg", markup} or {kind: "blob", url}.
 * prefetch() fills it; render() returns a DOM node and never touches the network.
 */
export class ArtworkCache {
  constructor(fetcher = (url) => fetch(url)) {
    this.entries = new Map();
    this.fetcher = fetcher;
  }

  has(ref) {
    return this.entries.has(ref);
  }

  keys() {
    return [...this.entries.keys()];
  }

  /** Make `ref` ready to show; `title` names what the generated artwork shows. */
  async prefetch(ref, title) {
    if (this.entries.has(ref)) return;
    if (isUrl(ref)) {
      try {
        const response = await this.fetcher(ref);
        if (response.ok) {
          const blob = await response.blob();
          this.entries.set(ref, { kind: "blob", url: URL.createObjectURL(blob) });
          return;
        }
      } catch (_) {
        // fall through: draw it
      }
    }
    this.entries.set(ref, { kind: "svg", markup: drawArtwork(ref, title) });
  }

  /** A node showing `ref` (drawn on the spot if it was never prefetched: still no request). */
  render(ref, title) {
    let entry = this.entries.get(ref);
    if (entry === undefined) {
      entry = { kind: "svg", markup: drawArtwork(ref, title) };
      if (!isUrl(ref)) this.entries.set(ref, entry);
    }
    const box = document.createElement("div");
    box.className = "art";
    box.dataset.ref = ref;
    if (entry.kind === "blob") {
      const img = document.createElement("img");
      img.alt = title;
      img.src = entry.url;
      box.append(img);
    } else {
      box.innerHTML = entry.markup;
    }
    return box;
  }
}
