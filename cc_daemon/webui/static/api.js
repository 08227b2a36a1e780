// Calls to the daemon: the token, this page's client id, and JSON-RPC over fetch.
//
// The token arrives in the address's fragment (#token=...), which a browser never sends to
// any server nor puts in a Referer. It is moved to sessionStorage (this tab only, gone when
// the tab closes) and removed from the address bar and the history at once; from then on it
// travels only in the Authorization header of this page's own calls.

export const API_VERSION = "0";
const TOKEN_KEY = "ccd.token";
const CLIENT_KEY = "ccd.client_id";

export function takeTokenFromAddress() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (token !== null) {
    fragment.delete("token");
    const rest = fragment.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

export class RpcError extends Error {
  constructor(code, message, data, status) {
    super(message);
    this.code = code;
    this.data = data;
    this.status = status;
  }
}

// A refusal before the call was made: no token, a wrong or rotated one, a lockout.
export class Unauthorized extends Error {}

export class Api {
  constructor(token) {
    this.token = token;
    // This tab's identity. The daemon mints it at the first call; keeping it makes this
    // page the originator of the turns it sends, and so the one that may answer their
    // permission requests. Another tab (or browser) is another client.
    this.clientId = sessionStorage.getItem(CLIENT_KEY);
    // This page's public handle (system.whoami): what a terminal names to delegate its
    // permission requests here, and how the page recognises requests delegated to it.
    this.clientRef = null;
    this.nextId = 1;
    this.onUnauthorized = () => {};
  }

  setToken(token) {
    this.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
  }

  headers(extra = {}) {
    const headers = { "Cheetahclaws-Api-Version": API_VERSION, "X-Client-Kind": "web", ...extra };
    if (this.token) headers["Authorization"] = `Bearer ${this.token}`;
    if (this.clientId) headers["X-Client-Id"] = this.clientId;
    return headers;
  }

  // Every answer names the client id the daemon knows this page by: a new one when the
  // daemon had forgotten ours (it restarted before we originated anything).
  adoptClientId(response) {
    const id = response.headers.get("X-Client-Id");
    if (id && id !== this.clientId) {
      this.clientId = id;
      this.clientRef = null;
      sessionStorage.setItem(CLIENT_KEY, id);
    }
  }

  async whoami() {
    if (this.clientRef === null) this.clientRef = (await this.call("system.whoami")).client_ref;
    return this.clientRef;
  }

  async checkAuthorized(response) {
    if (response.status === 401 || response.status === 429) {
      let reason = "unauthenticated";
      try { reason = (await response.json()).error || reason; } catch { /* an empty body */ }
      const error = new Unauthorized(reason);
      this.onUnauthorized(error);
      throw error;
    }
  }

  async call(method, params = undefined) {
    const message = { jsonrpc: "2.0", method, id: this.nextId++ };
    if (params !== undefined) message.params = params;
    const response = await fetch("/rpc", {
      method: "POST", headers: this.headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(message), cache: "no-store", credentials: "omit",
    });
    this.adoptClientId(response);
    await this.checkAuthorized(response);
    let reply;
    try {
      reply = await response.json();
    } catch {
      throw new RpcError(null, `HTTP ${response.status}`, null, response.status);
    }
    const error = reply && reply.error;
    if (error && typeof error === "object") throw new RpcError(error.code, error.message, error.data, response.status);
    // An HTTP refusal ({"error": "origin not allowed"}, say) rather than a JSON-RPC error.
    if (!response.ok) throw new RpcError(null, error || `HTTP ${response.status}`, reply, response.status);
    return reply.result;
  }
}
