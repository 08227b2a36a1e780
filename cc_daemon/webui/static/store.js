// The events this page holds: the newest HISTORY_LIMIT of them, in the order received.
//
// Views subscribe and get each batch as it arrives; each decides what to redraw, and draws
// at most once per frame (only what is visible), so a long history costs memory, not time.

export const HISTORY_LIMIT = 100000;

export class EventStore {
  constructor(limit = HISTORY_LIMIT) {
    this.limit = limit;
    this.events = [];
    // How many events were dropped from the front to stay within the limit: an index into
    // `events` plus this is an event's position since the page was opened.
    this.dropped = 0;
    this.received = 0;
    this.lastId = null;
    this.newestBySession = new Map();
    this.listeners = [];
  }

  subscribe(listener) {
    this.listeners.push(listener);
  }

  add(batch) {
    for (const event of batch) {
      // Stored events only: a gap stands for ids never received, `shutdown` has no id.
      if (event.type !== "gap" && event.id !== undefined && event.id !== null) this.received += 1;
      if (event.id !== undefined && event.id !== null) this.lastId = event.id;
      if (event.session_id) this.newestBySession.set(event.session_id, event.ts);
      this.events.push(event);
    }
    const excess = this.events.length - this.limit;
    if (excess > 0) {
      this.events.splice(0, excess);
      this.dropped += excess;
    }
    for (const listener of this.listeners) listener(batch);
  }

  ofSession(sessionId) {
    return this.events.filter((event) => event.session_id === sessionId);
  }
}
