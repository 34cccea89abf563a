// The browser's device client: a thin WebSocket loop around DeviceProtocol (protocol.js), the
// counterpart of hopcast/sdk/device.py (DeviceCore) + sdk/client.py (DeviceClient).
//
// One connection, from the client's side:
//
//   open the WebSocket ─▶ send hello (with the last positions) ─▶ receive welcome ─▶ subscribe
//     ─▶ receive triggers / state / pings until one of:
//          stop()            → close, the loop ends
//          refresh           → refreshToken(), then send the fresh token on this same connection
//                              (no reconnect, nothing missed)
//          bye               → reconnect after retry_after_ms + jittered backoff (after
//                              token_expired or revoked: with a fresh token)
//          resync needed     → reconnect (resumes from the last contiguous position)
//          error             → unauthorized: fresh token, reconnect; forbidden: go on;
//                              unsupported_protocol: give up; anything else: reconnect
//          malformed frame   → close (1002), reconnect
//          deadline passed   → drop the dead connection, reconnect
//          connection closed → reconnect
//
// Every reconnection waits reconnectDelay(): full-jitter exponential backoff whose first window
// is already random; the attempt count restarts at 0 each time a connection is welcomed.
// Payloads named by a trigger and missing from the cache are fetched after a jittered delay
// (fallbackFetchDelay), so the few devices that missed the prefetch do not arrive together.

import {
  DeviceProtocol,
  ErrorCode,
  FALLBACK_WINDOW_S,
  HELLO_TIMEOUT_US,
  ProtocolError,
  fallbackFetchDelay,
  reconnectDelay,
} from "./protocol.js";

/** The wall clock in µs since the epoch, like the SDK's now_us (and the gateway's trigger ts). */
export const nowUs = () => Date.now() * 1000;

export function newStats() {
  return {
    connects: 0,
    reconnects: 0,
    connectFailures: 0,
    welcomes: 0,
    timeouts: 0,
    protocolErrors: 0,
    resyncs: 0,
    byes: 0,
    serverErrors: 0,
    tokenRefreshes: 0,
    tokenRenewals: 0,
    triggersApplied: 0,
    duplicates: 0,
    stale: 0,
    stateSyncs: 0,
    fallbackFetches: 0,
    fallbackFailures: 0,
    applied: [], // {channel, event, stage, version, ts, appliedAt}
  };
}

/**
 * One device: connects, follows channels, applies triggers, fetches what the cache lacks.
 *
 * Options:
 *   url          the gateway's ws:// URL (or a function returning it, read at each connect);
 *   token        the device token; refreshToken() → Promise<{token, url?}> answers the gateway's
 *                `refresh` in place, and replaces a refused or expired one before reconnecting;
 *   channels     the channels to follow;
 *   cache        Map payload reference → payload (shared with the caller);
 *   fetchPayload (ref) → Promise<payload | null>, for the fallback;
 *   onEvent      (event) → void, every protocol event after the client handled it;
 *   onStatus     (status) → void, when the connection status changes;
 *   random, clock, fallbackWindowS.
 */
export class DeviceClient {
  constructor(opts) {
    this.url = opts.url;
    this.cache = opts.cache ?? new Map();
    this.protocol = new DeviceProtocol(opts.token, opts.channels ?? [], { cache: this.cache });
    this.refreshToken = opts.refreshToken ?? null;
    this.fetchPayload = opts.fetchPayload ?? null;
    this.onEvent = opts.onEvent ?? (() => {});
    this.onStatus = opts.onStatus ?? (() => {});
    this.random = opts.random ?? Math.random;
    this.clock = opts.clock ?? nowUs;
    this.fallbackWindowS = opts.fallbackWindowS ?? FALLBACK_WINDOW_S;
    this.stats = newStats();
    this.status = "idle";
    this.attempt = 0;
    this.refreshNeeded = false;
    this.stopped = false;
    this.fatal = null;
    this.ws = null;
    this.fetches = new Map();
    this.wake = null; // resolves the current pause early (stop, or the network came back)
    this.renewing = false;
  }

  setStatus(status) {
    this.status = status;
    this.onStatus(status);
  }

  /** Stay connected until stop(), reconnecting whenever a connection ends. */
  async run() {
    while (!this.stopped) {
      await this.session();
      if (this.stopped || this.fatal) break;
      if (this.refreshNeeded) await this.refresh();
      const delay = reconnectDelay(this.attempt, this.random, this.protocol.retryAfterMs);
      this.attempt += 1;
      this.setStatus("waiting");
      this.nextAttemptAt = Date.now() + delay * 1000;
      await this.pause(delay);
      if (this.stopped) break;
      this.stats.reconnects += 1;
    }
    this.setStatus(this.fatal ? "failed" : "stopped");
  }

  stop() {
    this.stopped = true;
    if (this.ws) this.ws.close(1000);
    if (this.wake) this.wake();
    for (const timer of this.fetches.values()) clearTimeout(timer);
    this.fetches.clear();
  }

  /** Cut the current backoff short: the browser says the network is back. The attempt count
   * stays, so a device whose network flaps still backs off. */
  nudge() {
    if (this.wake) this.wake();
  }

  pause(seconds) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, seconds * 1000);
      const self = this;
      function done() {
        clearTimeout(timer);
        self.wake = null;
        resolve();
      }
      this.wake = done;
    });
  }

  async refresh() {
    this.refreshNeeded = false;
    this.stats.tokenRefreshes += 1;
    try {
      const issued = await this.refreshToken();
      this.protocol.token = issued.token;
      if (issued.url) this.url = issued.url;
    } catch (exc) {
      this.refreshNeeded = true; // try again after the next backoff
    }
  }

  /** Answer the gateway's `refresh`: a fresh token, sent on the connection still open (if it
   * closed meanwhile, the next hello presents it). */
  async renew() {
    if (this.refreshToken === null || this.renewing) return;
    this.renewing = true;
    this.stats.tokenRefreshes += 1;
    try {
      const issued = await this.refreshToken();
      this.protocol.renew(issued.token);
      const frames = this.protocol.dataToSend();
      if (frames.length && this.ws && this.ws.readyState === WebSocket.OPEN) {
        for (const out of frames) this.ws.send(out);
        this.stats.tokenRenewals += 1;
      }
    } catch (exc) {
      console.warn(`token refresh failed; the gateway closes at expiry: ${exc}`);
    } finally {
      this.renewing = false;
    }
  }

  /** One connection, from opening the WebSocket to losing it; never throws. */
  session() {
    return new Promise((resolve) => {
      const proto = this.protocol;
      const url = typeof this.url === "function" ? this.url() : this.url;
      let ws;
      this.setStatus("connecting");
      try {
        ws = new WebSocket(url);
      } catch (exc) {
        this.stats.connectFailures += 1;
        resolve();
        return;
      }
      this.ws = ws;
      let opened = false;
      let ended = false;
      let timer = null;

      const end = (code) => {
        if (ended) return;
        ended = true;
        clearTimeout(timer);
        proto.connectionLost();
        this.ws = null;
        ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
        if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
          try {
            ws.close(code ?? 1000);
          } catch (_) {
            ws.close();
          }
        }
        this.setStatus("disconnected");
        resolve();
      };
      // A deadline comes from the protocol once hello is sent; before the WebSocket opens the
      // same budget bounds the handshake.
      const arm = () => {
        clearTimeout(timer);
        const deadline = opened ? proto.deadline() : this.clock() + HELLO_TIMEOUT_US;
        if (deadline === null) return;
        const wait = Math.max(0, (deadline - this.clock()) / 1000);
        timer = setTimeout(() => {
          this.stats.timeouts += 1;
          end(4000); // the browser cannot abort without a closing handshake; any code will do
        }, wait + 5);
      };
      arm();

      ws.onopen = () => {
        opened = true;
        this.stats.connects += 1;
        ws.send(proto.connect(this.clock()));
        this.setStatus("handshake");
        arm();
      };
      ws.onmessage = (msg) => {
        if (ended) return;
        const now = this.clock();
        let events;
        try {
          events = proto.receive(msg.data, now);
        } catch (exc) {
          if (!(exc instanceof ProtocolError)) throw exc;
          this.stats.protocolErrors += 1;
          end(1002);
          return;
        }
        for (const out of proto.dataToSend()) ws.send(out);
        arm();
        let keep;
        try {
          keep = this.handle(events, now);
        } catch (exc) {
          this.fatal = exc;
          end(1000);
          return;
        }
        if (!keep) end(1000);
      };
      ws.onerror = () => {
        if (!opened) this.stats.connectFailures += 1;
      };
      ws.onclose = () => end();
    });
  }

  /** Act on the protocol's events; false when the connection should end. */
  handle(events, now) {
    const stats = this.stats;
    let keep = true;
    stats.duplicates = this.protocol.duplicates;
    stats.stale = this.protocol.stale;
    for (const event of events) {
      switch (event.kind) {
        case "welcomed":
          stats.welcomes += 1;
          this.attempt = 0;
          this.setStatus("open");
          break;
        case "trigger_applied":
          stats.triggersApplied += 1;
          stats.applied.push({
            channel: event.channel,
            event: event.event,
            stage: event.stage,
            version: event.version,
            ts: event.ts,
            appliedAt: now,
          });
          break;
        case "needs_payload":
          this.startFallback(event.payload);
          break;
        case "state_synced":
          stats.stateSyncs += 1;
          break;
        case "resync_needed":
          stats.resyncs += 1;
          keep = false;
          break;
        case "server_error":
          stats.serverErrors += 1;
          keep = this.onServerError(event.code, event.reason) && keep;
          break;
        case "server_bye":
          stats.byes += 1;
          keep = false;
          if (event.reason === "token_expired" || event.reason === "revoked") {
            if (this.refreshToken === null) throw new Error(`the gateway closed: ${event.reason}`);
            this.refreshNeeded = true;
          }
          break;
        case "refresh_requested":
          this.renew();
          break;
      }
      this.onEvent(event);
    }
    return keep;
  }

  onServerError(code, reason) {
    if (code === ErrorCode.FORBIDDEN) {
      console.warn(`gateway refused a channel: ${reason}`);
      return true;
    }
    if (code === ErrorCode.UNAUTHORIZED) {
      if (this.refreshToken === null) throw new Error(`the gateway refused the token: ${reason}`);
      this.refreshNeeded = true;
    } else if (code === ErrorCode.UNSUPPORTED_PROTOCOL) {
      throw new Error(`the gateway does not speak this protocol: ${reason}`);
    }
    return false;
  }

  startFallback(ref) {
    if (this.fetchPayload === null || this.fetches.has(ref)) return;
    const delay = fallbackFetchDelay(this.random, this.fallbackWindowS);
    const timer = setTimeout(async () => {
      try {
        if (this.cache.has(ref)) return; // a prefetch got it meanwhile
        this.stats.fallbackFetches += 1;
        let payload = null;
        try {
          payload = await this.fetchPayload(ref);
        } catch (exc) {
          payload = null;
        }
        if (payload === null) {
          this.stats.fallbackFailures += 1;
          return;
        }
        this.cache.set(ref, payload);
        this.onEvent({ kind: "payload_fetched", payload: ref });
      } finally {
        this.fetches.delete(ref);
      }
    }, delay * 1000);
    this.fetches.set(ref, timer);
  }
}

