// Pending permission requests. Approve / Deny appear only on requests this page originated
// (the daemon puts our client id in the originator of our own events, and in nobody
// else's copy); the others are shown read-only, with who may answer them.

import { clock, frameScheduler, h, replaceChildren, shortJson } from "../dom.js";

const ENDINGS = {
  permission_answered: (d) => (d.answer && d.answer.approve ? "approved" : "denied"),
  permission_timeout: () => "timed out (denied)",
  permission_cancelled: (d) => `cancelled: ${d.reason}`,
};

export class PermissionsView {
  constructor(root, { api, store, onError }) {
    this.api = api;
    this.onError = onError;
    this.list = root.querySelector("#permissions");
    this.requests = new Map();
    this.onChange = () => {};
    this.render = frameScheduler(() => this.draw());
    store.subscribe((batch) => {
      let changed = false;
      for (const event of batch) {
        const d = event.data || {};
        if (event.type === "permission_request") {
          this.requests.set(d.request_id, { event, state: "pending" });
        } else if (ENDINGS[event.type] && this.requests.has(d.request_id)) {
          this.requests.get(d.request_id).state = ENDINGS[event.type](d);
        } else if (event.type === "permission_timeout_extended" && this.requests.has(d.request_id)) {
          this.requests.get(d.request_id).event.data.expires_at = d.expires_at;
        } else {
          continue;
        }
        changed = true;
        this.onChange(d.request_id);
      }
      if (changed) this.render();
    });
  }

  stateOf(requestId) {
    const request = this.requests.get(requestId);
    return request ? request.state : "unknown";
  }

  mine(event) {
    const originator = event.originator || {};
    return Boolean(originator.client_id) && originator.client_id === this.api.clientId;
  }

  async answer(requestId, approve) {
    const result = approve ? { approve: true } : { approve: false, reason: "denied from the web workbench" };
    try {
      await this.api.call("permission.answer", { request_id: requestId, result });
    } catch (error) {
      this.onError(error);
    }
  }

  draw() {
    const pending = [...this.requests.values()].filter((r) => r.state === "pending");
    replaceChildren(this.list, pending.map(({ event }) => this.drawRequest(event)));
    if (!pending.length) this.list.append(h("li", { className: "empty" }, "none pending"));
  }

  drawRequest(event) {
    const d = event.data;
    const originator = event.originator || {};
    const mine = this.mine(event);
    return h("li", { className: mine ? "request mine" : "request", dataset: { requestId: d.request_id } },
      h("div", { className: "request-tool" }, h("b", {}, d.tool), " ", shortJson(d.input, 300)),
      d.rationale && h("div", { className: "rationale" }, d.rationale),
      h("div", { className: "request-meta" },
        d.session_id ? `session ${d.session_id}` : "no session",
        d.expires_at ? `, expires ${clock(d.expires_at)}` : ""),
      mine
        ? h("div", { className: "answer" },
          h("button", { type: "button", className: "approve", onclick: () => this.answer(d.request_id, true) }, "Approve"),
          h("button", { type: "button", className: "deny", onclick: () => this.answer(d.request_id, false) }, "Deny"))
        : h("div", { className: "read-only" },
          `read-only: only ${originator.kind || "the"} client ${originator.client_ref || "?"} may answer`));
  }
}
