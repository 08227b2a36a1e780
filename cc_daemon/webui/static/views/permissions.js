// Pending permission requests. Approve / Deny appear only on requests this page may answer:
// those it originated (the daemon puts our client id in the originator of our own events,
// and in nobody else's copy) and those their originator delegated to this page
// (session.delegate naming our client_ref); the others are shown read-only, with who may
// answer them.

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
          this.requests.set(d.request_id, { event, state: "pending", delegate: d.delegate || null });
        } else if (event.type === "permission_delegated" || event.type === "permission_delegation_revoked") {
          for (const requestId of this.redelegate(event)) this.onChange(requestId);
          changed = true;
          continue;
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

  // A delegation covers the delegator's requests in one session, pending ones included.
  // Returns the ids of the requests it changed.
  redelegate(event) {
    const d = event.data;
    const delegator = d.delegator && d.delegator.client_ref;
    const changed = [];
    for (const [requestId, request] of this.requests) {
      const r = request.event;
      if (request.state === "pending" && r.data.session_id === event.session_id
          && (r.originator || {}).client_ref === delegator) {
        request.delegate = d.delegate;
        changed.push(requestId);
      }
    }
    return changed;
  }

  mine(event) {
    const originator = event.originator || {};
    return Boolean(originator.client_id) && originator.client_id === this.api.clientId;
  }

  mayAnswer(request) {
    const delegate = request.delegate;
    return this.mine(request.event) || Boolean(delegate && this.api.clientRef && delegate.client_ref === this.api.clientRef);
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
    replaceChildren(this.list, pending.map((request) => this.drawRequest(request)));
    if (!pending.length) this.list.append(h("li", { className: "empty" }, "none pending"));
  }

  drawRequest(request) {
    const { event, delegate } = request;
    const d = event.data;
    const originator = event.originator || {};
    const mine = this.mayAnswer(request);
    const also = delegate ? ` or its delegate, ${delegate.kind || "the"} client ${delegate.client_ref}` : "";
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
          `read-only: only ${originator.kind || "the"} client ${originator.client_ref || "?"}${also} may answer`));
  }
}
