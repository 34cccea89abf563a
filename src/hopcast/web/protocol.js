// The device side of the live wire protocol, sans I/O: a port of hopcast/sdk/protocol.py.
//
// The wire protocol itself is documented in hopcast/live/messages.py (version 1): one JSON
// object per text frame; hello → welcome → subscribe; triggers carry (channel, epoch, seq) and
// an (event, version) that only grows; a `state` snapshot resets a channel's position; pings
// are answered with pongs; silence for 2.5 heartbeats means the connection is dead.
//
// DeviceProtocol never touches a socket, a timer or the clock: time is passed in (µs since the
// Unix epoch), frames go in through receive() and out through dataToSend(), and what happened
// comes back as plain event objects ({kind: "welcomed" | "trigger_applied" | "needs_payload" |
// "state_synced" | "resync_needed" | "server_error" | "server_bye" | "refresh_requested", ...}).
// The gateway asks for a fresh token before the current one expires (`refresh`); renew(token)
// queues the `token` answer for the same connection, which keeps streaming. The WebSocket
// adapter (client.js) moves the frames and keeps the timers.

export const PROTOCOL_VERSION = 1;
export const CLIENT_NAME = "hopcast-web/0.1.0";
export const MS = 1000; // µs per millisecond
export const SECOND = 1_000_000; // µs per second

// Limits shared with the gateway (live/messages.py).
export const MAX_FRAME_BYTES = 64 * 1024;
export const MAX_NAME_CHARS = 128;
export const MAX_CHANNELS = 64;
export const MAX_STATE_EVENTS = 64;
export const MAX_TEXT_CHARS = 512;

// Reconnection and liveness (sdk/protocol.py).
export const BACKOFF_BASE_S = 1.0;
export const BACKOFF_CAP_S = 60.0;
const MAX_EXPONENT = 16;
export const FALLBACK_WINDOW_S = 10.0;
export const HELLO_TIMEOUT_US = 10 * SECOND;
export const LIVENESS_INTERVALS = 2.5;

export const Phase = Object.freeze({ CLOSED: "closed", CONNECTING: "connecting", OPEN: "open" });

export const ErrorCode = Object.freeze({
  MALFORMED: "malformed",
  UNAUTHORIZED: "unauthorized",
  UNSUPPORTED_PROTOCOL: "unsupported_protocol",
  UNEXPECTED: "unexpected",
  FORBIDDEN: "forbidden",
});

export class ProtocolError extends Error {
  constructor(reason) {
    super(reason);
    this.name = "ProtocolError";
    this.reason = reason;
  }
}

export class InvalidInput extends Error {
  constructor(reason) {
    super(reason);
    this.name = "InvalidInput";
  }
}

// -- decoding: the checks live/messages.py makes with msgspec, for server messages ------------

const encoder = new TextEncoder();

function fail(type, field, what) {
  throw new ProtocolError(`${type}.${field}: ${what}`);
}

function name(msg, field, { optional = false } = {}) {
  const v = msg[field];
  if (optional && (v === undefined || v === null)) return null;
  if (typeof v !== "string") fail(msg.type, field, "expected a string");
  if (v.length < 1 || v.length > MAX_NAME_CHARS) fail(msg.type, field, "length out of range");
  return v;
}

function text(msg, field, fallback) {
  const v = msg[field] === undefined ? fallback : msg[field];
  if (typeof v !== "string") fail(msg.type, field, "expected a string");
  if (v.length > MAX_TEXT_CHARS) fail(msg.type, field, "too long");
  return v;
}

function integer(msg, field, { min = null, fallback } = {}) {
  const v = msg[field] === undefined ? fallback : msg[field];
  if (!Number.isSafeInteger(v)) fail(msg.type, field, "expected an integer");
  if (min !== null && v < min) fail(msg.type, field, `expected >= ${min}`);
  return v;
}

function eventStage(where, raw) {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new ProtocolError(`${where}: expected an object`);
  }
  const e = { type: where, ...raw };
  return {
    event: name(e, "event"),
    stage: name(e, "stage"),
    version: integer(e, "version", { min: 0 }),
    ts: integer(e, "ts"),
    payload: name(e, "payload", { optional: true }),
  };
}

/** Decode one frame from the gateway into a typed message, or throw ProtocolError. */
export function decodeFromServer(data) {
  if (typeof data !== "string") throw new ProtocolError("expected a text frame");
  if (data.length > MAX_FRAME_BYTES / 4 && encoder.encode(data).length > MAX_FRAME_BYTES) {
    throw new ProtocolError(`frame larger than ${MAX_FRAME_BYTES} bytes`);
  }
  let msg;
  try {
    msg = JSON.parse(data);
  } catch (exc) {
    throw new ProtocolError(`not JSON: ${exc.message}`);
  }
  if (msg === null || typeof msg !== "object" || Array.isArray(msg)) {
    throw new ProtocolError("a frame must be a JSON object");
  }
  switch (msg.type) {
    case "welcome":
      return {
        type: "welcome",
        node: name(msg, "node"),
        heartbeat_ms: integer(msg, "heartbeat_ms", { min: 1 }),
      };
    case "trigger":
      return {
        type: "trigger",
        channel: name(msg, "channel"),
        epoch: integer(msg, "epoch", { min: 0 }),
        seq: integer(msg, "seq", { min: 0 }),
        ...eventStage("trigger", msg),
      };
    case "state": {
      const events = msg.events === undefined ? [] : msg.events;
      if (!Array.isArray(events)) fail("state", "events", "expected an array");
      if (events.length > MAX_STATE_EVENTS) fail("state", "events", "too many events");
      return {
        type: "state",
        channel: name(msg, "channel"),
        epoch: integer(msg, "epoch", { min: 0 }),
        seq: integer(msg, "seq", { min: 0 }),
        events: events.map((e) => eventStage("state.events[]", e)),
      };
    }
    case "ping":
    case "pong":
      return { type: msg.type, ts: integer(msg, "ts") };
    case "error":
      return { type: "error", code: name(msg, "code"), reason: text(msg, "reason") };
    case "bye":
      return {
        type: "bye",
        reason: text(msg, "reason"),
        retry_after_ms: integer(msg, "retry_after_ms", { min: 0, fallback: 0 }),
      };
    case "refresh":
      return {
        type: "refresh",
        expires_at: integer(msg, "expires_at"),
        within_ms: integer(msg, "within_ms", { min: 0 }),
      };
    case "hello":
    case "subscribe":
    case "unsubscribe":
    case "token":
      throw new ProtocolError(`a server may not send '${msg.type}'`);
    default:
      throw new ProtocolError(`unknown message type ${JSON.stringify(msg.type)}`);
  }
}

/** Encode a client message; keys of `hello.last` sorted, as the Python encoder does. */
export function encode(msg) {
  if (msg.type === "hello") {
    const last = {};
    for (const ch of Object.keys(msg.last).sort()) last[ch] = msg.last[ch];
    return JSON.stringify({
      type: "hello",
      token: msg.token,
      client: msg.client,
      protocol: msg.protocol,
      last,
    });
  }
  return JSON.stringify(msg);
}

/** The payload reference a trigger names: `<event>/<stage>` (live/messages.py payload_ref). */
export function payloadRef(event, stage) {
  return `${event}/${stage}`;
}

// -- the protocol state machine --------------------------------------------------------------

/**
 * One device's protocol state: connection phase, positions per channel, applied stages.
 *
 * It outlives connections: create it once, call connect() for each new connection and
 * connectionLost() when one ends; positions and applied versions carry over, which is what makes
 * resume and idempotent application work. `cache` is anything with has(ref) (a Map).
 */
export class DeviceProtocol {
  constructor(token, channels = [], { client = CLIENT_NAME, cache = new Map() } = {}) {
    this.token = token;
    this.client = client;
    this.cache = cache;
    this.duplicates = 0;
    this.stale = 0;
    this.retryAfterMs = 0;
    this.channelSet = new Set();
    this.positions = new Map(); // channel -> [epoch, seq]
    this.applied = new Map(); // event -> {event, stage, version, ts, payload}
    this.gapped = new Set();
    this.outgoing = [];
    this.phase = Phase.CLOSED;
    this.node = null;
    this.heartbeatMs = null;
    this.connectedAt = 0;
    this.lastHeard = 0;
    this.subscribe(channels);
  }

  get channels() {
    return [...this.channelSet];
  }

  /** Start a new connection: the `hello` frame to send first (with every position). */
  connect(now) {
    this.phase = Phase.CONNECTING;
    this.outgoing = [];
    this.gapped.clear();
    this.node = null;
    this.heartbeatMs = null;
    this.retryAfterMs = 0;
    this.connectedAt = this.lastHeard = now;
    const last = {};
    for (const [ch, pos] of this.positions) if (this.channelSet.has(ch)) last[ch] = pos;
    return encode({
      type: "hello",
      token: this.token,
      client: this.client,
      protocol: PROTOCOL_VERSION,
      last,
    });
  }

  /** The transport closed: back to CLOSED, keeping positions for the resume. */
  connectionLost() {
    this.phase = Phase.CLOSED;
    this.outgoing = [];
    this.node = null;
  }

  subscribe(channels) {
    const fresh = [...new Set(channels)].filter((ch) => !this.channelSet.has(ch));
    for (const ch of fresh) {
      if (typeof ch !== "string" || ch.length < 1 || ch.length > MAX_NAME_CHARS) {
        throw new InvalidInput(`channel names have 1 to ${MAX_NAME_CHARS} characters`);
      }
    }
    if (this.channelSet.size + fresh.length > MAX_CHANNELS) {
      throw new InvalidInput(`a device follows at most ${MAX_CHANNELS} channels`);
    }
    for (const ch of fresh) this.channelSet.add(ch);
    if (fresh.length && this.phase === Phase.OPEN) {
      this.outgoing.push(encode({ type: "subscribe", channels: fresh }));
    }
  }

  /** Replace the token: the next hello presents it, and on an open connection a `token` frame
   * carries it to the gateway now (queued for dataToSend()); the connection stays. */
  renew(token) {
    this.token = token;
    if (this.phase === Phase.OPEN) this.outgoing.push(encode({ type: "token", token }));
  }

  unsubscribe(channels) {
    const gone = [...new Set(channels)].filter((ch) => this.channelSet.has(ch));
    for (const ch of gone) {
      this.channelSet.delete(ch);
      this.positions.delete(ch);
      this.gapped.delete(ch);
    }
    if (gone.length && this.phase === Phase.OPEN) {
      this.outgoing.push(encode({ type: "unsubscribe", channels: gone }));
    }
  }

  /**
   * Take in one received frame; returns what happened (often nothing). Call dataToSend()
   * afterwards. Throws ProtocolError for an invalid or unexpected frame, leaving the state
   * unchanged: the caller closes the connection and reconnects.
   */
  receive(data, now) {
    if (this.phase === Phase.CLOSED) {
      throw new ProtocolError("a frame arrived with no connection open; call connect() first");
    }
    const msg = decodeFromServer(data);
    let events;
    switch (msg.type) {
      case "trigger":
        this.requireOpen(msg);
        events = this.onTrigger(msg);
        break;
      case "state":
        this.requireOpen(msg);
        events = this.onState(msg);
        break;
      case "ping":
        this.outgoing.push(encode({ type: "pong", ts: msg.ts }));
        events = [];
        break;
      case "pong":
        events = [];
        break;
      case "welcome":
        if (this.phase !== Phase.CONNECTING) {
          throw new ProtocolError("unexpected 'welcome': the connection is already open");
        }
        this.phase = Phase.OPEN;
        this.node = msg.node;
        this.heartbeatMs = msg.heartbeat_ms;
        if (this.channelSet.size) {
          this.outgoing.push(encode({ type: "subscribe", channels: this.channels }));
        }
        events = [{ kind: "welcomed", node: msg.node, heartbeatMs: msg.heartbeat_ms }];
        break;
      case "error":
        events = [{ kind: "server_error", code: msg.code, reason: msg.reason }];
        break;
      case "bye":
        this.retryAfterMs = msg.retry_after_ms;
        events = [{ kind: "server_bye", reason: msg.reason, retryAfterMs: msg.retry_after_ms }];
        break;
      case "refresh":
        events = [{ kind: "refresh_requested", expiresAt: msg.expires_at, withinMs: msg.within_ms }];
        break;
    }
    this.lastHeard = now;
    return events;
  }

  /** Frames to send now, in order; clears them. */
  dataToSend() {
    const out = this.outgoing;
    this.outgoing = [];
    return out;
  }

  /** When the connection counts as dead if nothing arrives before (µs), or null. */
  deadline() {
    if (this.phase === Phase.CONNECTING) return this.connectedAt + HELLO_TIMEOUT_US;
    if (this.phase === Phase.OPEN && this.heartbeatMs !== null) {
      return this.lastHeard + Math.trunc(this.heartbeatMs * MS * LIVENESS_INTERVALS);
    }
    return null;
  }

  requireOpen(msg) {
    if (this.phase !== Phase.OPEN) throw new ProtocolError(`unexpected '${msg.type}' before 'welcome'`);
  }

  onTrigger(t) {
    if (!this.channelSet.has(t.channel)) return []; // in flight when we unsubscribed
    const stage = { event: t.event, stage: t.stage, version: t.version, ts: t.ts, payload: t.payload };
    const events = this.apply(t.channel, stage, true, "trigger");
    const pos = this.positions.get(t.channel);
    if (pos === undefined || pos[0] !== t.epoch) return events; // waits for the state snapshot
    if (t.seq <= pos[1]) return events; // a replay of something already taken in
    if (t.seq === pos[1] + 1 && !this.gapped.has(t.channel)) {
      this.positions.set(t.channel, [t.epoch, t.seq]);
    } else if (!this.gapped.has(t.channel)) {
      this.gapped.add(t.channel);
      const reason = `expected seq ${pos[1] + 1} in epoch ${pos[0]}, got ${t.seq}`;
      events.push({ kind: "resync_needed", channel: t.channel, reason });
    }
    return events;
  }

  onState(s) {
    if (!this.channelSet.has(s.channel)) return [];
    const events = [];
    for (const stage of s.events) events.push(...this.apply(s.channel, stage, false, "state"));
    let pos = this.positions.get(s.channel);
    if (pos === undefined || pos[0] !== s.epoch || s.seq >= pos[1]) {
      pos = [s.epoch, s.seq];
      this.positions.set(s.channel, pos);
      this.gapped.delete(s.channel);
    }
    events.push({ kind: "state_synced", channel: s.channel, position: pos });
    return events;
  }

  // `source` (trigger or state) is this port's addition: the page reports a time to update
  // only for stages that reached it as triggers.
  apply(channel, stage, countIgnored, source) {
    const current = this.applied.get(stage.event);
    if (current !== undefined && stage.version <= current.version) {
      if (countIgnored) {
        if (stage.version === current.version) this.duplicates += 1;
        else this.stale += 1;
      }
      return [];
    }
    this.applied.set(stage.event, stage);
    const events = [{ kind: "trigger_applied", channel, source, ...stage }];
    if (stage.payload !== null && !this.cache.has(stage.payload)) {
      events.push({ kind: "needs_payload", payload: stage.payload, event: stage.event, stage: stage.stage });
    }
    return events;
  }
}

// -- timing decisions -----------------------------------------------------------------------

/** Full-jitter exponential backoff, seconds: uniform in [0, min(cap, base * 2**attempt)]. */
export function backoff(attempt, random = Math.random) {
  if (attempt < 0) throw new RangeError(`attempt must be >= 0, got ${attempt}`);
  const ceiling = Math.min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** Math.min(attempt, MAX_EXPONENT));
  return random() * ceiling;
}

/** Seconds before reconnect `attempt`: a bye's minimum plus backoff on top. */
export function reconnectDelay(attempt, random = Math.random, retryAfterMs = 0) {
  return retryAfterMs / 1000 + backoff(attempt, random);
}

/** Seconds before fetching a payload missing at trigger time: uniform in the window. */
export function fallbackFetchDelay(random = Math.random, windowS = FALLBACK_WINDOW_S) {
  if (windowS < 0) throw new RangeError(`window must be >= 0 seconds, got ${windowS}`);
  return random() * windowS;
}

// Prefetch timing (live/prefetch.py): the window and a device's point in it.
export const DEFAULT_LEAD_US = 30 * 60 * SECOND;
export const DEFAULT_CLOSE_MARGIN_US = 60 * SECOND;

/** The prefetch window [opensAt, closesAt] of an event, µs (prefetch.window). */
export function prefetchWindow(startsAt, leadUs = DEFAULT_LEAD_US, availableAt = null, marginUs = DEFAULT_CLOSE_MARGIN_US) {
  let opensAt = startsAt - leadUs;
  if (availableAt !== null && availableAt !== undefined) opensAt = Math.max(opensAt, availableAt);
  if (opensAt >= startsAt) return [opensAt, opensAt];
  return [opensAt, startsAt - Math.min(marginUs, Math.floor((startsAt - opensAt) / 2))];
}

const SPREAD_DOMAIN = "hopcast-spread:";

/**
 * How long (µs) a device waits before its prefetch: the point opensAt + h * span, h from the
 * first 8 bytes of SHA-256("hopcast-spread:" + device id) over 2^64 (prefetch.spread_delay),
 * the same on every platform. 0 once the point has passed. Async: WebCrypto digests are.
 */
export async function spreadDelay(deviceId, opensAt, closesAt, now) {
  if (closesAt < opensAt) throw new InvalidInput(`window closes (${closesAt}) before it opens (${opensAt})`);
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(SPREAD_DOMAIN + deviceId)));
  let fraction = 0n;
  for (let i = 0; i < 8; i += 1) fraction = (fraction << 8n) | BigInt(digest[i]);
  const slot = BigInt(opensAt) + ((fraction * BigInt(closesAt - opensAt)) >> 64n);
  const wait = slot - BigInt(now);
  return wait > 0n ? Number(wait) : 0;
}

/** A cache lifetime drawn from base * [1 - jitter, 1 + jitter], whole seconds, at least 1. */
export function jitteredMaxAge(baseS, jitter, random = Math.random) {
  return Math.max(1, Math.round(baseS * (1 + (random() * 2 - 1) * jitter)));
}
