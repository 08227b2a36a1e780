// The workbench: wires the token, the event stream and the views together.

import { Api, Unauthorized, takeTokenFromAddress } from "./api.js";
import { h } from "./dom.js";
import { EventStore, HISTORY_LIMIT } from "./store.js";
import { EventStream } from "./stream.js";
import { ConversationView } from "./views/conversation.js";
import { EventsView } from "./views/events.js";
import { HealthView } from "./views/health.js";
import { PermissionsView } from "./views/permissions.js";
import { SessionsView } from "./views/sessions.js";

const SELECTED_KEY = "ccd.session";

const api = new Api(takeTokenFromAddress());
const store = new EventStore();
const notices = document.getElementById("notices");
const connection = document.getElementById("connection");

function notice(kind, text, { dismissable = true } = {}) {
  const item = h("div", { className: `notice notice-${kind}`, role: "status" }, h("span", {}, text));
  if (dismissable) item.append(h("button", { type: "button", onclick: () => item.remove() }, "dismiss"));
  notices.append(item);
  return item;
}

function showError(error) {
  notice("error", error.message || String(error));
}

const permissions = new PermissionsView(document, { api, store, onError: showError });
const conversation = new ConversationView(document, { store, permissions });
const health = new HealthView(document, { api, store });
new EventsView(document, { store });
const sessions = new SessionsView(document, {
  api, store, onError: showError,
  onSelect: (session) => selectSession(session),
});

// -- the selected session: its conversation and the send box ------------------------------
const sendForm = document.getElementById("send-form");
const sendOutput = sendForm.querySelector("output");
const title = document.getElementById("conversation-title");
let selected = null;

function selectSession(session) {
  selected = session.session_id;
  sessionStorage.setItem(SELECTED_KEY, selected);
  title.textContent = session.name ? `${session.name} (${selected})` : selected;
  for (const control of sendForm.elements) control.disabled = false;
  for (const button of document.querySelectorAll("#session-actions button")) button.disabled = false;
  conversation.show(selected);
}

sendForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = sendForm.elements.text.value;
  if (!selected || !text.trim()) return;
  sendOutput.value = "sending…";
  try {
    // message_id makes a retried send (a double click, a dropped answer) one turn, not two.
    await api.call("session.send", { session_id: selected, text, message_id: crypto.randomUUID() });
    sendForm.elements.text.value = "";
    sendOutput.value = "";
  } catch (error) {
    sendOutput.value = error.message;
  }
});
sendForm.elements.text.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    sendForm.requestSubmit();
  }
});
document.getElementById("cancel-turn").addEventListener("click", () =>
  api.call("session.cancel", { session_id: selected }).catch(showError));
document.getElementById("close-session").addEventListener("click", () =>
  api.call("session.close", { session_id: selected }).catch(showError));

// -- the token ------------------------------------------------------------------------------
const tokenForm = document.getElementById("token-form");
tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  api.setToken(tokenForm.elements.token.value.trim());
  tokenForm.elements.token.value = "";
  tokenForm.hidden = true;
  start();
});
let unauthorizedNotice = null;
api.onUnauthorized = (error) => {
  setConnection("unauthorized");
  if (!unauthorizedNotice || !unauthorizedNotice.isConnected) {
    const why = error.message === "token rotated" ? "The daemon's token was rotated." :
      error.message === "rate limited" ? "Too many wrong tokens: the daemon refuses this address for a while." :
      "The daemon refused this page's token.";
    unauthorizedNotice = notice("error", `${why} Run \`cheetahclaws daemon open\` for a new address, or paste the token below.`);
  }
  tokenForm.hidden = false;
};

// -- the stream -----------------------------------------------------------------------------
function setConnection(state, detail) {
  connection.dataset.state = state;
  connection.textContent = detail ? `${state}: ${detail}` : state;
}

let stream = null;
// The newest event when the page started: once it is in, the history has been drawn.
let historyTarget = null;

function onEvents(batch) {
  store.add(batch);
  for (const event of batch) {
    if (event.type === "gap") {
      const d = event.data;
      notice("gap", `Events ${d.missed_from}–${d.missed_to} were removed (${d.reason}) before this page could read them; ` +
        "what happened in them is not shown.");
    }
  }
  if (historyTarget !== null && (store.lastId ?? 0) >= historyTarget) historyDrawn();
}

function historyDrawn() {
  historyTarget = null;
  // Views draw on the next animation frame; the one after it comes once that is painted.
  // performance.now() counts from the start of the navigation: loading the page included.
  requestAnimationFrame(() => requestAnimationFrame(() => {
    document.body.dataset.firstRenderMs = String(Math.round(performance.now()));
  }));
}

let wasLive = false;
function onStatus(state, detail) {
  setConnection(state, detail);
  if (state === "live" && wasLive) {
    // Back after a drop or a daemon restart: what the stream does not carry may have changed.
    sessions.refresh();
    health.refresh();
  }
  if (state === "live") wasLive = true;
}

// Where to start reading: at most HISTORY_LIMIT events back, and never before the oldest
// event the daemon still holds (older ones were pruned long ago; that is no news).
async function historyStart() {
  const status = await health.refresh();
  const page = await api.call("events.query", { limit: 1 });
  const last = status.last_event_id;
  const oldest = page.oldest_id || last + 1;
  historyTarget = last;
  return Math.max(0, oldest - 1, last - HISTORY_LIMIT);
}

const START_RETRY_MS = 2000;

async function start() {
  if (!api.token) {
    tokenForm.hidden = false;
    setConnection("no token");
    return;
  }
  let since;
  try {
    // A stream that was stopped (a refused token) goes on from its last event, never again
    // from the history: what the page holds must not arrive twice.
    since = stream ? stream.lastId : await historyStart();
  } catch (error) {
    if (error instanceof Unauthorized) return; // onUnauthorized asked for a token
    setConnection("unreachable", error.message);
    setTimeout(start, START_RETRY_MS);
    return;
  }
  if (stream) stream.stop();
  stream = new EventStream(api, { since, onEvents, onStatus });
  stream.start();
  if (historyTarget !== null && historyTarget <= since) historyDrawn();
  try {
    await sessions.loadRuntimes();
    await sessions.refresh();
    const remembered = sessionStorage.getItem(SELECTED_KEY);
    if (remembered && sessions.sessionById(remembered)) sessions.select(remembered);
  } catch (error) {
    if (!(error instanceof Unauthorized)) showError(error);
  }
}

for (const control of sendForm.elements) control.disabled = true;
start();
