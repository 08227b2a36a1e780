// The sessions: a table (state, runtime, cwd, last activity) and the form that creates one.

import { duration, frameScheduler, h, replaceChildren } from "../dom.js";

// Events after which the list is asked for again (a new, closed or resumed session); a
// state change is applied from its event at once.
const LIST_CHANGES = new Set(["session_created", "session_closed", "session_resumed"]);

export class SessionsView {
  constructor(root, { api, store, onSelect, onError }) {
    this.api = api;
    this.store = store;
    this.onSelect = onSelect;
    this.onError = onError;
    this.sessions = [];
    this.selected = null;
    this.table = root.querySelector("#sessions tbody");
    this.form = root.querySelector("#create-form");
    this.runtime = this.form.querySelector("[name=runtime]");
    this.output = this.form.querySelector("output");
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.create();
    });
    this.render = frameScheduler(() => this.draw());
    this.refreshSoon = debounce(() => this.refresh(), 150);
    store.subscribe((batch) => {
      for (const event of batch) {
        if (event.type !== "session_state") continue;
        const session = this.sessionById(event.session_id);
        if (session) session.state = event.data.state;
      }
      if (batch.some((event) => LIST_CHANGES.has(event.type))) this.refreshSoon();
      if (batch.some((event) => event.session_id)) this.render();
    });
    // "last activity" is relative to now.
    setInterval(this.render, 5000);
  }

  async loadRuntimes() {
    const { runtimes } = await this.api.call("session.runtimes");
    replaceChildren(this.runtime, runtimes.filter((r) => r.available).map(
      (r) => h("option", { value: r.name, selected: r.name === "demo" }, `${r.name}: ${r.summary}`)));
  }

  async refresh() {
    try {
      this.sessions = (await this.api.call("session.list")).sessions;
      this.render();
    } catch (error) {
      this.onError(error);
    }
  }

  select(sessionId) {
    this.selected = sessionId;
    this.render();
    this.onSelect(this.sessions.find((s) => s.session_id === sessionId) || { session_id: sessionId });
  }

  sessionById(sessionId) {
    return this.sessions.find((s) => s.session_id === sessionId);
  }

  async create() {
    const data = new FormData(this.form);
    const params = { runtime: data.get("runtime"), cwd: data.get("cwd").trim() };
    const name = data.get("name").trim();
    if (name) params.name = name;
    this.output.value = "creating…";
    try {
      const session = await this.api.call("session.create", params);
      this.output.value = "";
      await this.refresh();
      this.select(session.session_id);
    } catch (error) {
      this.output.value = error.message;
    }
  }

  draw() {
    const now = Date.now() / 1000;
    const rows = this.sessions.map((session) => {
      const newest = this.store.newestBySession.get(session.session_id) || session.created_at;
      return h("tr", {
        className: session.session_id === this.selected ? "selected" : "",
        dataset: { sessionId: session.session_id },
      },
      h("td", {}, h("button", {
        type: "button", className: "link", title: session.session_id,
        onclick: () => this.select(session.session_id),
      }, session.name || session.session_id)),
      h("td", {}, h("span", { className: `state state-${session.state}` }, session.state)),
      h("td", {}, session.runtime),
      h("td", { className: "cwd", title: session.cwd }, session.cwd),
      h("td", { className: "activity" }, `${duration(now - newest)} ago`));
    });
    if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: 5, className: "empty" }, "no sessions yet")));
    replaceChildren(this.table, rows);
  }
}

function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}
