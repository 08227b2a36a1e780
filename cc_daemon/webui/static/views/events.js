// The raw event view: every event held, newest at the bottom, with the same filters as
// /events (`types`: a comma-separated list of exact types; `session`: one session id).
// Only the rows in view are in the page, so 100,000 events scroll as fast as 100.

import { clock, frameScheduler, h, replaceChildren, shortJson } from "../dom.js";

const ROW_HEIGHT = 22; // px; style.css gives .event-row this height
const OVERSCAN = 10;

export class EventsView {
  constructor(root, { store }) {
    this.store = store;
    this.viewport = root.querySelector("#event-list");
    this.spacer = this.viewport.querySelector(".spacer");
    this.rows = this.viewport.querySelector(".rows");
    this.form = root.querySelector("#event-filter");
    this.count = this.form.querySelector("output");
    this.types = null;
    this.session = null;
    this.matching = [];
    this.indexedUpTo = 0; // store position (events dropped included) scanned into `matching`
    this.follow = true;
    this.render = frameScheduler(() => this.draw());
    this.form.addEventListener("input", () => this.setFilter());
    this.form.addEventListener("submit", (event) => event.preventDefault());
    this.viewport.addEventListener("scroll", () => {
      const { scrollTop, scrollHeight, clientHeight } = this.viewport;
      this.follow = scrollHeight - scrollTop - clientHeight < ROW_HEIGHT * 2;
      this.render();
    });
    store.subscribe(() => this.render());
  }

  setFilter() {
    const data = new FormData(this.form);
    const types = data.get("types").split(",").map((t) => t.trim()).filter(Boolean);
    this.types = types.length ? new Set(types) : null;
    this.session = data.get("session").trim() || null;
    this.matching = [];
    this.indexedUpTo = this.store.dropped;
    this.follow = true;
    this.render();
  }

  matches(event) {
    if (this.types && !this.types.has(event.type)) return false;
    // A gap concerns every session: /events?session= sends it too.
    if (this.session && event.session_id !== this.session && event.type !== "gap") return false;
    return true;
  }

  // Brings `matching` (positions of matching events) up to date with the store, scanning
  // only what arrived since the last frame and forgetting what the store dropped.
  index() {
    const store = this.store;
    const total = store.dropped + store.events.length;
    for (let position = Math.max(this.indexedUpTo, store.dropped); position < total; position++) {
      if (this.matches(store.events[position - store.dropped])) this.matching.push(position);
    }
    this.indexedUpTo = total;
    let stale = 0;
    while (stale < this.matching.length && this.matching[stale] < store.dropped) stale++;
    if (stale) this.matching.splice(0, stale);
  }

  draw() {
    this.index();
    const store = this.store;
    const count = this.matching.length;
    this.count.value = this.types || this.session
      ? `${count} of ${store.events.length} events`
      : `${count} events`;
    this.spacer.style.height = `${count * ROW_HEIGHT}px`;
    if (this.follow) this.viewport.scrollTop = this.viewport.scrollHeight;
    const first = Math.max(0, Math.floor(this.viewport.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const visible = Math.ceil(this.viewport.clientHeight / ROW_HEIGHT) + 2 * OVERSCAN;
    const last = Math.min(count, first + visible);
    const rows = [];
    for (let i = first; i < last; i++) rows.push(drawRow(store.events[this.matching[i] - store.dropped]));
    this.rows.style.transform = `translateY(${first * ROW_HEIGHT}px)`;
    replaceChildren(this.rows, rows);
  }
}

function drawRow(event) {
  return h("div", { className: event.type === "gap" ? "event-row gap" : "event-row", dataset: { id: event.id ?? "" } },
    h("span", { className: "event-id" }, event.id ?? "–"),
    h("span", { className: "event-time" }, event.ts ? clock(event.ts) : ""),
    h("span", { className: "event-type" }, event.type),
    h("span", { className: "event-session" }, event.session_id || ""),
    h("span", { className: "event-data" }, shortJson(event.data ?? null, 300)));
}
