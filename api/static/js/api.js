// The API client of the web app: the key (kept in this tab's sessionStorage), JSON requests
// and live SSE feeds.
"use strict";

const KEY_STORAGE = "livestreamApiKey";
/** Dispatched on window when the API refuses the key this tab keeps. */
export const KEY_REFUSED = "livestream:key-refused";

/** The API key of this tab ("" when none was entered). */
export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
}

export function forgetApiKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

/** An HTTP error answer of the API, with its status and the API's readable `detail`. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

/**
 * A JSON request with the key as X-API-Key. `form` (an object) is sent as a urlencoded form,
 * which is what the NomadicML-compatible POST routes take.
 */
export async function api(path, { method = "GET", form = null, key = apiKey() } = {}) {
  const options = { method, headers: { "X-API-Key": key } };
  if (form) options.body = new URLSearchParams(form);
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;
    // The kept key stopped working (revoked, rotated): the app asks for a key again.
    if (response.status === 401 && key && key === apiKey()) window.dispatchEvent(new Event(KEY_REFUSED));
    throw new ApiError(response.status, detail || response.statusText);
  }
  return body;
}

export function sessionPath(streamId, sessionId) {
  return `/api/live/live-sessions/${encodeURIComponent(streamId)}/${encodeURIComponent(sessionId)}`;
}

export function sessionPageUrl(streamId, sessionId) {
  return `/events/${encodeURIComponent(streamId)}/${encodeURIComponent(sessionId)}`;
}

/**
 * An EventSource on an SSE route, authenticated by a feed token instead of the key:
 * EventSource cannot send headers, and the key must never appear in a URL (logs, history).
 * Tokens live a few minutes, so when the server refuses a reconnect the feed reopens with a
 * fresh token and resumes after the last message it received (last_event_id), as the
 * browser's own reconnect would with Last-Event-ID.
 *
 * `listeners` maps SSE event names to handlers of the parsed `data`; `onState` hears
 * "open", "reconnecting" and "closed".
 */
export function liveFeed(path, listeners, onState = () => {}) {
  const state = { source: null, lastId: null, closed: false, retry: null };
  const reopen = (delay) => {
    if (!state.closed) state.retry = setTimeout(open, delay);
  };
  const open = async () => {
    let url;
    try {
      const { token } = await api("/api/live/feed-token", { method: "POST" });
      const params = new URLSearchParams({ token });
      if (state.lastId) params.set("last_event_id", state.lastId);
      url = `${path}${path.includes("?") ? "&" : "?"}${params}`;
    } catch {
      onState("reconnecting");
      reopen(5000);
      return;
    }
    if (state.closed) return;
    const source = new EventSource(url);
    state.source = source;
    source.addEventListener("open", () => onState("open"));
    for (const [kind, handler] of Object.entries(listeners)) {
      source.addEventListener(kind, (message) => {
        if (message.lastEventId) state.lastId = message.lastEventId;
        handler(JSON.parse(message.data));
      });
    }
    source.addEventListener("error", () => {
      if (state.closed) return;
      onState("reconnecting");
      // CONNECTING: the browser retries by itself; CLOSED: it gave up (e.g. the token expired).
      if (source.readyState === EventSource.CLOSED) reopen(1000);
    });
  };
  open();
  return {
    close() {
      state.closed = true;
      clearTimeout(state.retry);
      if (state.source) state.source.close();
      onState("closed");
    },
  };
}
