// Live progress of one scan: WebSocket first, then Server-Sent Events, then polling.
//
// Every (re)connection starts with GET /scan/progress/{id}: it paints the current state at
// once, tells a server that is down (network error: wait and retry, never downgrade) from a
// transport that does not work (the server answers, but the stream cannot open), and after a
// server restart it is the authoritative state even if its seq restarted from zero.
//
// Then a stream is opened from the cursor of the last snapshot seen, EPOCH.SEQ (WebSocket
// ?since=, SSE ?last_event_id=): the epoch names the server's stream of the scan, so a
// server that restarted (a new stream, seq from 1 again) answers a cursor from before with
// its current snapshot instead of "nothing new".
// A transport that fails to open twice in a row while the server answers REST is given up
// for the next one (ws -> sse -> poll); after a minute on a lower rung the better one is
// tried again. A stream that opened and then dropped reconnects on the same transport with
// a backoff of 0.5 s doubling to 5 s. Snapshots of the same stream with a seq at or below
// the last one are dropped, so a replayed or conflated message never moves the bar
// backwards; a terminal snapshot is always taken and ends the feed.

import { ApiError, TERMINAL, api, apiUrl } from "./util.js";

const LADDER = ["ws", "sse", "poll"];
export const TRANSPORT_NAMES = { ws: "WebSocket", sse: "SSE", poll: "polling" };
const POLL_INTERVAL_MS = 1000;
const UPGRADE_AFTER_MS = 60_000;
const MAX_BACKOFF_MS = 5000;

function available(mode) {
  if (mode === "ws") return typeof WebSocket === "function";
  if (mode === "sse") return typeof EventSource === "function";
  return true;
}

export class LiveFeed {
  /**
   * @param {string} scanId
   * @param {{onSnapshot: Function, onState: Function, onGone?: Function, transport?: string}} options
   *   ``onState({state, transport, retryInMs, attempt})`` with state one of connecting, live,
   *   reconnecting, ended. ``transport`` forces the first rung (ws, sse or poll).
   */
  constructor(scanId, { onSnapshot, onState, onGone, transport } = {}) {
    this.scanId = scanId;
    this.onSnapshot = onSnapshot || (() => {});
    this.onState = onState || (() => {});
    this.onGone = onGone || (() => {});
    this.preferred = LADDER.includes(transport) ? transport : "ws";
    this.mode = this.preferred;
    while (!available(this.mode)) this.mode = LADDER[LADDER.indexOf(this.mode) + 1];
    this.lastSeq = -1;
    this.lastEpoch = null;
    this.done = false;
    this.stopped = false;
    this.failures = { ws: 0, sse: 0, poll: 0 };
    this.backoffMs = 500;
    this.downgradedAt = null;
    this.attempt = 0;
    this.closeStream = null;
    this.wakeUp = null;
    this.onOnline = () => this.wake();
  }

  start() {
    window.addEventListener("online", this.onOnline);
    this.run();
    return this;
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    this.closeStream?.();
    this.wake();
  }

  /** Retry now instead of waiting out the backoff. */
  wake() {
    const resolve = this.wakeUp;
    this.wakeUp = null;
    resolve?.();
  }

  state(state, extra = {}) {
    if (this.stopped) return;
    this.onState({ state, transport: this.mode, ...extra });
  }

  /** Take a snapshot; ``authoritative`` (REST) snapshots may reset the seq (server restart). */
  accept(snapshot, authoritative = false) {
    if (this.done || this.stopped || !snapshot || typeof snapshot !== "object") return;
    const terminal = TERMINAL.has(snapshot.status);
    const seq = typeof snapshot.seq === "number" ? snapshot.seq : null;
    const epoch = typeof snapshot.epoch === "string" ? snapshot.epoch : null;
    const newer = seq !== null && (epoch !== this.lastEpoch || seq > this.lastSeq);
    if (!authoritative && !terminal && seq !== null && !newer) return;
    if (seq !== null && (authoritative || newer)) {
      this.lastSeq = seq;
      this.lastEpoch = epoch;
    }
    this.onSnapshot(snapshot);
    if (terminal) {
      this.done = true;
      this.closeStream?.();
      this.state("ended");
    }
  }

  /** The resume cursor of the last snapshot taken (EPOCH.SEQ, or SEQ), if any. */
  cursor() {
    if (this.lastSeq < 0) return undefined;
    return this.lastEpoch === null ? String(this.lastSeq) : `${this.lastEpoch}.${this.lastSeq}`;
  }

  sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wakeUp = null;
        resolve();
      }, ms);
      this.wakeUp = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  nextBackoff() {
    const wait = this.backoffMs * (0.8 + Math.random() * 0.4);
    this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
    return Math.round(wait);
  }

  async waitToReconnect(ms) {
    this.attempt += 1;
    this.state("reconnecting", { retryInMs: ms, attempt: this.attempt });
    await this.sleep(ms);
  }

  /** GET the current snapshot: the snapshot, "gone" for an unknown scan, null when offline. */
  async resync() {
    try {
      return await api(`/scan/progress/${this.scanId}`);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) return "gone";
      if (error instanceof ApiError && error.status === 401) return "unauthorized";
      return null;
    }
  }

  async run() {
    this.state("connecting");
    while (!this.done && !this.stopped) {
      const snapshot = await this.resync();
      if (this.stopped) return;
      if (snapshot === "gone" || snapshot === "unauthorized") {
        this.done = true;
        this.state("ended");
        this.onGone(snapshot);
        return;
      }
      if (snapshot === null) {
        await this.waitToReconnect(this.nextBackoff());
        continue;
      }
      this.accept(snapshot, true);
      if (this.done || this.stopped) return;
      if (this.downgradedAt !== null && Date.now() - this.downgradedAt > UPGRADE_AFTER_MS) {
        this.mode = this.preferred;
        this.downgradedAt = null;
        this.failures = { ws: 0, sse: 0, poll: 0 };
      }
      const mode = this.mode;
      const opened = await this.stream(mode);
      if (this.done || this.stopped) return;
      if (opened === "upgrade") continue;
      if (opened) {
        this.failures[mode] = 0;
        this.backoffMs = 500;
      } else if (++this.failures[mode] >= 2 && mode !== "poll") {
        let next = LADDER[LADDER.indexOf(mode) + 1];
        while (!available(next)) next = LADDER[LADDER.indexOf(next) + 1];
        this.mode = next;
        this.downgradedAt = Date.now();
        continue; // try the next transport at once
      }
      await this.waitToReconnect(this.nextBackoff());
    }
  }

  /** Run one stream until it ends: true if it had opened, false if not, or "upgrade". */
  stream(mode) {
    if (mode === "ws") return this.websocket();
    if (mode === "sse") return this.eventSource();
    return this.poll();
  }

  websocket() {
    return new Promise((resolve) => {
      const url = apiUrl(
        `/scan/ws/${this.scanId}`,
        { since: this.cursor() },
        { withToken: true },
      );
      url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
      let opened = false;
      let socket;
      try {
        socket = new WebSocket(url);
      } catch {
        resolve(false);
        return;
      }
      this.closeStream = () => socket.close(1000);
      socket.onopen = () => {
        opened = true;
        this.state("live");
      };
      socket.onmessage = (event) => {
        try {
          this.accept(JSON.parse(event.data));
        } catch {
          /* not a snapshot: ignore */
        }
      };
      socket.onclose = () => {
        this.closeStream = null;
        resolve(opened);
      };
    });
  }

  eventSource() {
    return new Promise((resolve) => {
      const url = apiUrl(
        `/scan/stream/${this.scanId}`,
        { last_event_id: this.cursor() },
        { withToken: true },
      );
      let opened = false;
      let finished = false;
      const source = new EventSource(url);
      const finish = () => {
        if (finished) return;
        finished = true;
        source.close();
        this.closeStream = null;
        resolve(opened);
      };
      this.closeStream = finish;
      source.onopen = () => {
        opened = true;
        this.state("live");
      };
      source.onmessage = (event) => {
        try {
          this.accept(JSON.parse(event.data));
        } catch {
          /* not a snapshot: ignore */
        }
      };
      // EventSource would reconnect by itself, but without our REST resync and backoff: a
      // dropped or refused stream goes back through run() instead.
      source.onerror = finish;
    });
  }

  async poll() {
    const started = Date.now();
    this.state("live");
    let stop = false;
    let outcome = true;
    this.closeStream = () => {
      stop = true;
      this.wake();
    };
    while (!this.done && !this.stopped && !stop) {
      await this.sleep(POLL_INTERVAL_MS);
      if (this.done || this.stopped || stop) break;
      const snapshot = await this.resync();
      if (snapshot === null || snapshot === "gone" || snapshot === "unauthorized") break;
      const changed = snapshot.seq !== this.lastSeq || (snapshot.epoch ?? null) !== this.lastEpoch;
      if (changed || TERMINAL.has(snapshot.status)) this.accept(snapshot, true);
      if (this.downgradedAt !== null && Date.now() - started > UPGRADE_AFTER_MS) {
        outcome = "upgrade";
        break;
      }
    }
    this.closeStream = null;
    return outcome;
  }
}
