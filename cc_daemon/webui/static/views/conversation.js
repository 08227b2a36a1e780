// One session's conversation as it streams: each turn (the message sent, the agent's text,
// its tool calls and permission requests, how it ended) and what happened to the session
// between turns. Turns are drawn once and redrawn only when their events arrive.

import { clock, frameScheduler, h, replaceChildren, shortJson } from "../dom.js";

// How many blocks (turns and notes) stay in the page; older ones are summarised in one line.
const SHOWN_BLOCKS = 200;
// Session events worth a line between turns; busy/idle flips are what turns already show.
const NOTES = {
  session_created: (d) => `session created: ${d.runtime} in ${d.cwd}`,
  session_resumed: (d) => `the daemon restarted: session ${d.state}${d.fresh ? " (runtime starts fresh)" : ""}`,
  session_closed: (d) => `session closed: ${d.reason}`,
  runner_crashed: (d) => `runtime crashed: ${d.reason || `exit ${d.exit_code}`}`,
  runner_parked: (d) => `session parked: ${d.reason}`,
  runner_restarting: (d) => `runtime restarts in ${d.delay_s} s`,
  budget_exhausted: (d) => `budget used up: ${d.limit}`,
  session_state: (d) => (QUIET_STATES.has(d.state) ? null : `state ${d.previous} → ${d.state}${d.reason ? `: ${d.reason}` : ""}`),
};
const QUIET_STATES = new Set(["idle", "busy", "waiting_permission", "starting", "resuming"]);

export class ConversationView {
  constructor(root, { store, permissions }) {
    this.store = store;
    this.permissions = permissions;
    this.list = root.querySelector("#conversation");
    this.sessionId = null;
    this.reset();
    this.render = frameScheduler(() => this.draw());
    store.subscribe((batch) => {
      if (this.sessionId === null) return;
      let changed = false;
      for (const event of batch) {
        if (this.apply(event)) changed = true;
      }
      if (changed) this.render();
    });
    permissions.onChange = (requestId) => {
      const turn = this.turnOfRequest.get(requestId);
      if (turn) {
        this.dirty.add(turn);
        this.render();
      }
    };
  }

  reset() {
    this.blocks = [];
    this.turns = new Map();
    this.turnOfRequest = new Map();
    this.dirty = new Set();
    this.drawn = new Map();
    replaceChildren(this.list);
  }

  show(sessionId) {
    this.sessionId = sessionId;
    this.reset();
    for (const event of this.store.ofSession(sessionId)) this.apply(event);
    this.stickToBottom = true;
    this.render();
  }

  turn(turnId) {
    let turn = this.turns.get(turnId);
    if (!turn) {
      turn = { kind: "turn", turnId, text: null, originator: null, parts: [], status: null, reason: null, started: false };
      this.turns.set(turnId, turn);
      this.blocks.push(turn);
    }
    this.dirty.add(turn);
    return turn;
  }

  // Folds one event into the model; true when something visible changed.
  apply(event) {
    if (event.session_id !== this.sessionId) return false;
    const d = event.data || {};
    switch (event.type) {
      case "turn_queued": {
        const turn = this.turn(d.turn_id);
        turn.text = d.text;
        turn.originator = event.originator;
        turn.ts = event.ts;
        return true;
      }
      case "turn_started":
        this.turn(d.turn_id).started = true;
        return true;
      case "text_chunk": {
        const turn = this.turn(d.turn_id);
        const last = turn.parts[turn.parts.length - 1];
        if (last && last.kind === "text") last.text += d.text;
        else turn.parts.push({ kind: "text", text: d.text });
        return true;
      }
      case "tool_start":
        this.turn(d.turn_id).parts.push({ kind: "tool", id: d.tool_use_id, tool: d.tool, input: d.input, done: null });
        return true;
      case "tool_end": {
        const tool = this.turn(d.turn_id).parts.find((p) => p.kind === "tool" && p.id === d.tool_use_id);
        if (tool) tool.done = { ok: d.ok, output: d.output };
        return true;
      }
      case "permission_request": {
        if (!d.turn_id) return false;
        const turn = this.turn(d.turn_id);
        turn.parts.push({ kind: "permission", requestId: d.request_id, tool: d.tool, input: d.input });
        this.turnOfRequest.set(d.request_id, turn);
        return true;
      }
      case "runtime_error":
        if (!d.turn_id) return false;
        this.turn(d.turn_id).parts.push({ kind: "error", text: d.message });
        return true;
      case "turn_cancel_requested":
        this.turn(d.turn_id).cancelling = d.reason || "cancel requested";
        return true;
      case "turn_done": {
        const turn = this.turn(d.turn_id);
        turn.status = d.status;
        turn.reason = d.reason || null;
        return true;
      }
      default: {
        const note = NOTES[event.type] && NOTES[event.type](d);
        if (!note) return false;
        const block = { kind: "note", text: note, ts: event.ts };
        this.blocks.push(block);
        this.dirty.add(block);
        return true;
      }
    }
  }

  draw() {
    const list = this.list;
    const atBottom = this.stickToBottom || list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    this.stickToBottom = false;
    const first = Math.max(0, this.blocks.length - SHOWN_BLOCKS);
    const shown = this.blocks.slice(first);
    const shownSet = new Set(shown);
    for (const [block, node] of this.drawn) {
      if (!shownSet.has(block)) {
        node.remove();
        this.drawn.delete(block);
      }
    }
    let summary = list.querySelector(".earlier");
    if (first > 0) {
      if (!summary) {
        summary = h("p", { className: "earlier" });
        list.prepend(summary);
      }
      summary.textContent = `${first} earlier turns and notes are not shown`;
    } else if (summary) {
      summary.remove();
    }
    for (const block of shown) {
      const old = this.drawn.get(block);
      if (old && !this.dirty.has(block)) continue;
      const node = block.kind === "turn" ? this.drawTurn(block) : drawNote(block);
      if (old) old.replaceWith(node);
      else list.append(node);
      this.drawn.set(block, node);
    }
    this.dirty.clear();
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  drawTurn(turn) {
    const who = turn.originator ? `${turn.originator.kind || "client"} ${turn.originator.client_ref}` : "";
    const status = turn.status || (turn.cancelling ? "cancelling" : turn.started ? "running" : "queued");
    return h("article", { className: `turn turn-${status}`, dataset: { turnId: turn.turnId } },
      h("header", { className: "turn-head" },
        h("span", { className: "turn-id" }, turn.turnId),
        who && h("span", { className: "who" }, `sent by ${who}${turn.originator.client_id ? " (this page)" : ""}`),
        turn.ts && h("time", {}, clock(turn.ts))),
      turn.text !== null && h("p", { className: "message" }, turn.text),
      turn.parts.map((part) => this.drawPart(part)),
      h("footer", { className: "turn-end" },
        `turn ${status}${turn.reason ? `: ${turn.reason}` : ""}`));
  }

  drawPart(part) {
    switch (part.kind) {
      case "text":
        return h("p", { className: "reply" }, part.text);
      case "tool":
        return h("div", { className: "tool" },
          h("div", { className: "tool-call" }, h("b", {}, part.tool), " ", shortJson(part.input, 400)),
          part.done && h("pre", { className: part.done.ok ? "tool-output" : "tool-output failed" },
            typeof part.done.output === "string" ? part.done.output : JSON.stringify(part.done.output, null, 2)));
      case "permission": {
        const state = this.permissions.stateOf(part.requestId);
        return h("div", { className: "permission-note" },
          `permission ${part.tool} ${shortJson(part.input, 200)}: ${state}`);
      }
      default:
        return h("p", { className: "runtime-error" }, part.text);
    }
  }
}

function drawNote(block) {
  return h("p", { className: "note" }, h("time", {}, clock(block.ts)), " ", block.text);
}
