// The daemon's health: version, uptime, connections, streams, sessions, the stream's state.

import { duration, frameScheduler, h, replaceChildren } from "../dom.js";

const POLL_MS = 10000;
// After events arrive, the counts are asked for again, at most this often.
const EVENT_REFRESH_MS = 1000;

export class HealthView {
  constructor(root, { api, store }) {
    this.api = api;
    this.store = store;
    this.list = root.querySelector("#health");
    this.status = null;
    this.fetchedAt = 0;
    this.error = null;
    this.refreshTimer = null;
    setInterval(() => this.refresh(), POLL_MS);
    setInterval(() => this.draw(), 1000);
    const redraw = frameScheduler(() => this.draw());
    store.subscribe(() => {
      redraw();
      if (this.refreshTimer === null) {
        this.refreshTimer = setTimeout(() => {
          this.refreshTimer = null;
          this.refresh();
        }, EVENT_REFRESH_MS);
      }
    });
  }

  async refresh() {
    try {
      this.status = await this.api.call("system.status");
      await this.api.whoami();
      this.fetchedAt = performance.now();
      this.error = null;
    } catch (error) {
      this.error = error.message;
    }
    this.draw();
    return this.status;
  }

  draw() {
    const s = this.status;
    if (!s) {
      replaceChildren(this.list, h("dt", {}, "daemon"), h("dd", {}, this.error || "…"));
      return;
    }
    const uptime = s.uptime_s + (performance.now() - this.fetchedAt) / 1000;
    const sessions = Object.entries(s.sessions || {}).map(([state, n]) => `${n} ${state}`).join(", ") || "none";
    const rows = [
      ["version", `${s.version} (api ${s.api_version})`],
      ["uptime", duration(uptime)],
      ["connections", String(s.connections ?? "?")],
      ["event streams", String(s.subscribers)],
      ["sessions", sessions],
      ["pending requests", String(s.pending_permissions)],
      ["this page", `web client ${this.api.clientRef ?? "?"}`],
      ["last event", `${Math.max(s.last_event_id, this.store.lastId ?? 0)} (this page: ${this.store.received} received)`],
    ];
    if (this.error) rows.push(["last error", this.error]);
    replaceChildren(this.list, rows.map(([name, value]) => [h("dt", {}, name), h("dd", { dataset: { field: name } }, value)]));
  }
}
