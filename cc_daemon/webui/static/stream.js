// GET /events with fetch and a streaming reader, which (unlike EventSource) can send the
// Authorization and Cheetahclaws-Api-Version headers.
//
// The stream resumes where it left off: after a drop or a daemon restart it reconnects with
// Last-Event-ID set to the last id received, so every event arrives once, in order, or a
// `gap` event says which ids were pruned before we could read them.

import { Unauthorized } from "./api.js";

const FIRST_RETRY_MS = 250;
// The daemon's `retry:` (3000 ms) is the longest we wait between attempts.
const DEFAULT_MAX_RETRY_MS = 3000;
// A stream that says nothing for this long is dead (the daemon sends a heartbeat comment
// every 15 s of silence by default), though no error reached us: a suspended laptop, say.
const SILENCE_LIMIT_MS = 65000;

export class EventStream {
  constructor(api, { since, onEvents, onStatus }) {
    this.api = api;
    this.lastId = since;
    this.onEvents = onEvents;
    this.onStatus = onStatus;
    this.maxRetryMs = DEFAULT_MAX_RETRY_MS;
    this.stopped = false;
    this.attempt = 0;
    this.controller = null;
  }

  start() {
    this.run();
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
  }

  async run() {
    while (!this.stopped) {
      try {
        await this.readOnce();
        if (this.stopped) return;
        this.onStatus("reconnecting", "the stream ended");
      } catch (error) {
        if (this.stopped) return;
        if (error instanceof Unauthorized) {
          this.onStatus("unauthorized", error.message);
          return;
        }
        this.onStatus("reconnecting", error.message || String(error));
      }
      this.attempt += 1;
      const delay = Math.min(this.maxRetryMs, FIRST_RETRY_MS * 2 ** (this.attempt - 1));
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }

  async readOnce() {
    this.controller = new AbortController();
    const headers = this.api.headers();
    if (this.lastId !== null && this.lastId !== undefined) headers["Last-Event-ID"] = String(this.lastId);
    const response = await fetch("/events", {
      headers, signal: this.controller.signal, cache: "no-store", credentials: "omit",
    });
    this.api.adoptClientId(response);
    await this.api.checkAuthorized(response);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    this.attempt = 0;
    this.onStatus("live", null);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser();
    let watchdog = this.armWatchdog();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        clearTimeout(watchdog);
        watchdog = this.armWatchdog();
        const events = parser.push(decoder.decode(value, { stream: true }));
        if (parser.retryMs) this.maxRetryMs = parser.retryMs;
        this.deliver(events);
      }
    } finally {
      clearTimeout(watchdog);
    }
  }

  armWatchdog() {
    const controller = this.controller;
    return setTimeout(() => controller.abort(), SILENCE_LIMIT_MS);
  }

  deliver(frames) {
    const events = [];
    for (const frame of frames) {
      let event;
      try {
        event = JSON.parse(frame.data);
      } catch {
        continue; // not an event of ours; nothing to show
      }
      if (frame.id !== null) this.lastId = Number(frame.id);
      events.push(event);
    }
    if (events.length) this.onEvents(events);
  }
}

// Server-Sent Events framing (the subset the daemon sends: id, event, data, retry and
// comment lines; frames end with a blank line).
export class SseParser {
  constructor() {
    this.buffer = "";
    this.retryMs = null;
    this.frame = { id: null, event: null, data: [] };
  }

  push(text) {
    this.buffer += text;
    const frames = [];
    let start = 0;
    for (;;) {
      const end = this.buffer.indexOf("\n", start);
      if (end < 0) break;
      let line = this.buffer.slice(start, end);
      start = end + 1;
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line === "") {
        if (this.frame.data.length) {
          frames.push({ id: this.frame.id, event: this.frame.event, data: this.frame.data.join("\n") });
        }
        this.frame = { id: null, event: null, data: [] };
        continue;
      }
      if (line.startsWith(":")) continue; // a heartbeat
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") this.frame.data.push(value);
      else if (field === "id") this.frame.id = value;
      else if (field === "event") this.frame.event = value;
      else if (field === "retry" && /^\d+$/.test(value)) this.retryMs = Number(value);
    }
    this.buffer = this.buffer.slice(start);
    return frames;
  }
}
