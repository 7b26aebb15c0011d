// The sessions page: the start form and the list of sessions, newest first, paged, kept
// current by the all-sessions SSE feed.
"use strict";

import { api, liveFeed, sessionPageUrl, sessionPath } from "/static/js/api.js";
import { TERMINAL, el, localTime, showError } from "/static/js/dom.js";

const PAGE_SIZE = 20;
// Chunk counts move without any all-sessions message (a chunk without events changes no status
// and adds no event), so the rows of running sessions are also refreshed this often.
const RUNNING_REFRESH_MS = 5000;
const FEED_REFRESH_DEBOUNCE_MS = 300;

export function showSessions(root) {
  const page = new SessionsPage(root);
  page.start();
  return page;
}

class SessionsPage {
  constructor(root) {
    this.root = root;
    this.rows = new Map(); // session_id -> {session, element}
    this.nextCursor = null;
    this.feed = null;
    this.pendingRefresh = new Map(); // session_id -> timer
  }

  start() {
    this.root.replaceChildren(this.renderStartForm(), this.renderList());
    this.reload();
    this.openFeed();
    this.timer = setInterval(() => this.refreshRunning(), RUNNING_REFRESH_MS);
  }

  // ------------------------------------------------------------------ start form

  renderStartForm() {
    const form = el(
      "form",
      { id: "start-form", class: "card" },
      el("h2", { text: "Start a session" }),
      field("Source URL (live HLS .m3u8)", "source_url", { type: "url", required: true,
        placeholder: "https://cams.example.com/door/live.m3u8", inputmode: "url" }),
      field("Name", "name", { type: "text", required: true, placeholder: "front door" }),
      field("Query", "rapid_review_query", { type: "text", placeholder: "detect a person, a cat or a cup" }),
      el("button", { type: "submit", class: "primary", text: "Start session" }),
    );
    form.addEventListener("submit", async (submit) => {
      submit.preventDefault();
      const values = Object.fromEntries(new FormData(form));
      if (!values.rapid_review_query) delete values.rapid_review_query;
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        const started = await api("/api/live/start-session", { method: "POST", form: values });
        // Straight to the new session's page: its events appear there as they are found.
        location.assign(sessionPageUrl(started.stream_id, started.session_id));
      } catch (error) {
        showError(`Could not start the session: ${error.message}`);
        button.disabled = false;
      }
    });
    return form;
  }

  // ------------------------------------------------------------------ list

  renderList() {
    this.scope = el(
      "select",
      { id: "scope" },
      el("option", { value: "personal", text: "started with this key" }),
      el("option", { value: "org", text: "every session of the organisation" }),
    );
    this.scope.addEventListener("change", () => {
      this.reload();
      this.openFeed();
    });
    // No aria-live here: rows are rewritten every few seconds, which would be read out each time.
    this.list = el("ul", { id: "sessions", class: "sessions" });
    this.more = el("button", { id: "more", type: "button", hidden: true, text: "More sessions" });
    this.more.addEventListener("click", () => this.loadPage(this.nextCursor));
    this.feedState = el("span", { id: "sessions-feed", class: "muted", text: "connecting…" });
    return el(
      "section",
      { class: "card", "aria-labelledby": "sessions-title" },
      el("div", { class: "section-head" },
        el("h2", { id: "sessions-title", text: "Sessions" }),
        el("label", { class: "inline" }, "Show ", this.scope),
        this.feedState),
      this.list,
      el("p", { id: "no-sessions", class: "muted", hidden: true, text: "No sessions yet: start one above." }),
      this.more,
    );
  }

  async reload() {
    this.rows.clear();
    this.list.replaceChildren();
    this.nextCursor = null;
    await this.loadPage(null);
  }

  async loadPage(cursor) {
    const params = new URLSearchParams({ scope: this.scope.value, limit: String(PAGE_SIZE) });
    if (cursor) params.set("cursor", cursor);
    try {
      const page = await api(`/api/live/live-sessions?${params}`);
      for (const session of page.sessions) this.upsert(session, "end");
      this.nextCursor = page.next_cursor;
      this.more.hidden = !this.nextCursor;
      document.getElementById("no-sessions").hidden = this.rows.size > 0;
      showError("");
    } catch (error) {
      showError(`Could not list the sessions: ${error.message}`);
    }
  }

  /** Add or update the row of `session` (a header or a feed message with its fields). */
  upsert(session, where) {
    const known = this.rows.get(session.session_id);
    const merged = Object.assign({}, known ? known.session : {}, session);
    // A known row is updated in place: its link may have the keyboard focus.
    const element = known ? known.element : createRow(merged);
    updateRow(element, merged);
    if (!known && where === "end") this.list.append(element);
    else if (!known) this.list.prepend(element); // a session the feed announces is the newest one
    this.rows.set(session.session_id, { session: merged, element });
    document.getElementById("no-sessions").hidden = true;
  }

  async refreshRow(streamId, sessionId) {
    try {
      this.upsert(await api(`${sessionPath(streamId, sessionId)}?events_limit=0&chunks_limit=0`), "start");
    } catch (error) {
      if (error.status === 404) this.remove(sessionId); // purged by retention meanwhile
    }
  }

  /** Coalesce the feed's bursts (every event version is a message) into one refresh per row. */
  refreshSoon(streamId, sessionId) {
    if (this.pendingRefresh.has(sessionId)) return;
    this.pendingRefresh.set(sessionId, setTimeout(() => {
      this.pendingRefresh.delete(sessionId);
      this.refreshRow(streamId, sessionId);
    }, FEED_REFRESH_DEBOUNCE_MS));
  }

  refreshRunning() {
    if (document.hidden) return;
    for (const { session } of this.rows.values()) {
      if (!TERMINAL.has(session.status)) this.refreshSoon(session.stream_id, session.session_id);
    }
  }

  remove(sessionId) {
    const known = this.rows.get(sessionId);
    if (known) known.element.remove();
    this.rows.delete(sessionId);
  }

  openFeed() {
    if (this.feed) this.feed.close();
    const onEvent = (event) => this.refreshSoon(event.stream_id, event.session_id);
    this.feed = liveFeed(`/api/live/events/stream?scope=${encodeURIComponent(this.scope.value)}`, {
      status: (status) => this.upsert(status, "start"),
      end: (end) => {
        this.upsert(end, "start");
        this.refreshSoon(end.stream_id, end.session_id); // the final counts
      },
      detection: onEvent,
      update: onEvent,
      removed: (removed) => this.remove(removed.session_id),
      resync: () => this.reload(), // the feed could not resume: what we show may be stale
    }, (state) => {
      this.feedState.textContent = state === "open" ? "live" : state === "closed" ? "" : "reconnecting…";
    });
  }
}

function field(label, name, attributes) {
  return el("label", { class: "field" }, el("span", { text: label }), el("input", { name, id: name, ...attributes }));
}

function createRow(session) {
  return el(
    "li",
    { class: "session-row", dataset: { sessionId: session.session_id } },
    el("a", { class: "session-link", href: sessionPageUrl(session.stream_id, session.session_id) }),
    el("span", { class: "badge" }),
    el(
      "span",
      { class: "counts" },
      el("span", { class: "chunk-count" }), " chunks · ",
      el("span", { class: "event-count" }), " events",
    ),
    el("time", { class: "muted" }),
    el("span", { class: "query muted" }),
    el("span", { class: "reason" }),
  );
}

/** Write the session's current fields into its row (each part hidden while it has no value). */
function updateRow(row, session) {
  const part = (selector, text) => {
    const element = row.querySelector(selector);
    element.textContent = text || "";
    element.hidden = !text;
    return element;
  };
  row.dataset.status = session.status;
  part(".session-link", session.name || session.session_id);
  part(".badge", session.status).className = `badge status-${String(session.status).toLowerCase()}`;
  part(".chunk-count", String(session.chunk_count ?? 0));
  part(".event-count", String(session.event_count ?? 0));
  const created = part("time", session.created_at ? localTime(session.created_at) : "");
  if (session.created_at) created.setAttribute("datetime", session.created_at);
  part(".query", session.rapid_review_query);
  part(".reason", session.status_reason);
}
