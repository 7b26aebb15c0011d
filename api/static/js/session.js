// A session's page (/events/<stream_id>/<session_id>): the recording's player, the timeline of
// event windows, the live event list (the session's SSE feed), status, counts and End session.
"use strict";

import { api, liveFeed, sessionPath } from "/static/js/api.js";
import { TERMINAL, clock, el, labelHue, localTime, showError, statusBadge } from "/static/js/dom.js";
import { Player } from "/static/js/player.js";
import { Timeline } from "/static/js/timeline.js";

// The session feed carries events and the end, not chunks: status and chunk count are read
// this often while the session runs (the all-sessions feed's status messages come sooner).
const STATUS_POLL_MS = 2000;
const THUMBNAIL_RENEW_MS = 10_000;

export async function showSession(root, streamId, sessionId) {
  let session;
  try {
    session = await api(`${sessionPath(streamId, sessionId)}?chunks_limit=1`);
  } catch (error) {
    const missing = error.status === 404;
    root.replaceChildren(
      el("p", { class: "card", text: missing ? "No such session (or not one this key may see)." : error.message }),
      el("p", {}, el("a", { href: "/", text: "All sessions" })),
    );
    return null;
  }
  const page = new SessionPage(root, session);
  page.start();
  return page;
}

class SessionPage {
  constructor(root, session) {
    this.root = root;
    this.session = session;
    this.events = new Map(); // event_id -> {event, item}
    this.activeEventId = null;
  }

  start() {
    const s = this.session;
    document.title = `${s.name} · Livestream analytics`;
    this.badge = el("span", { id: "session-status" });
    this.chunkCount = el("span", { id: "chunk-count" });
    this.eventCount = el("span", { id: "event-count" });
    this.reason = el("p", { id: "status-reason", class: "reason", hidden: true });
    this.endButton = el("button", { id: "end-session", type: "button", class: "danger", text: "End session" });
    this.endButton.addEventListener("click", () => this.end());
    this.video = el("video", { id: "player", controls: true, muted: true, playsinline: true, preload: "auto" });
    this.video.muted = true; // the attribute alone does not mute a media element created by script
    this.playerStatus = el("p", { id: "player-status", class: "muted", "aria-live": "polite" });
    this.player = new Player(this.video, s.session_id, (text) => {
      this.playerStatus.textContent = text;
    });
    this.timeline = new Timeline((seconds, eventId) => this.seek(seconds, eventId));
    this.video.addEventListener("timeupdate", () => {
      this.timeline.position(this.video.currentTime);
      this.timeline.extend(this.player.playableEnd());
    });
    this.list = el("ol", { id: "events", class: "events" });
    this.feedState = el("span", { class: "muted", id: "events-feed" });

    this.root.replaceChildren(
      el("p", { class: "crumbs" }, el("a", { href: "/", text: "← All sessions" })),
      el(
        "section",
        { class: "card session-head", "aria-labelledby": "session-name" },
        el("h2", { id: "session-name", text: s.name || s.session_id }),
        el("div", { class: "facts" },
          this.badge,
          el("span", {}, this.chunkCount, " chunks"),
          el("span", {}, this.eventCount, " events"),
          s.created_at ? el("span", { class: "muted", text: `started ${localTime(s.created_at)}` }) : null),
        s.rapid_review_query ? el("p", { class: "query", text: `Query: ${s.rapid_review_query}` }) : null,
        el("p", { class: "source muted", text: `Source: ${s.source_url || "?"}` }),
        this.reason,
        this.endButton,
      ),
      el(
        "div",
        { class: "watch" },
        el("section", { class: "card player-box", "aria-label": "Recording" },
          this.video, this.playerStatus, this.timeline.element),
        el("section", { class: "card events-box", "aria-labelledby": "events-title" },
          el("div", { class: "section-head" }, el("h3", { id: "events-title", text: "Events" }), this.feedState),
          el("p", { class: "muted hint", text: "Select an event to play the recording from its time." }),
          this.list),
      ),
    );
    this.applyHeader(s);
    this.openFeeds();
    this.poll = setInterval(() => this.refresh(), STATUS_POLL_MS);
  }

  /** Status, counts and the recording's length from a session body (or a feed message). */
  applyHeader(header) {
    Object.assign(this.session, header);
    const s = this.session;
    this.badge.replaceChildren(statusBadge(s.status));
    this.chunkCount.textContent = String(s.chunk_count ?? 0);
    this.eventCount.textContent = String(s.event_count ?? this.events.size);
    this.reason.textContent = s.status_reason || "";
    this.reason.hidden = !s.status_reason;
    this.endButton.hidden = TERMINAL.has(s.status);
    this.endButton.disabled = s.status === "ENDING";
    const lastChunk = (header.chunks || []).at(-1);
    if (lastChunk) this.timeline.extend(lastChunk.end_time);
    // Every analysed chunk was recorded first: from the first chunk on there is something to play.
    if ((s.chunk_count ?? 0) > 0) this.player.load(TERMINAL.has(s.status));
    else this.playerStatus.textContent = TERMINAL.has(s.status) ? "Nothing was recorded." : "Waiting for the first chunk…";
    if (TERMINAL.has(s.status)) clearInterval(this.poll);
  }

  async refresh() {
    if (document.hidden) return;
    try {
      const s = this.session;
      this.applyHeader(await api(`${sessionPath(s.stream_id, s.session_id)}?events_limit=0&chunks_limit=1`));
    } catch (error) {
      showError(`Could not refresh the session: ${error.message}`);
    }
  }

  openFeeds() {
    const s = this.session;
    const upsert = (event) => this.upsert(event);
    // Without a last id the feed replays the latest version of every event first, then goes live.
    this.feed = liveFeed(`${sessionPath(s.stream_id, s.session_id)}/events/stream`, {
      detection: upsert,
      update: upsert,
      resync: () => this.reloadEvents(),
      end: (end) => {
        this.feed.close();
        this.statusFeed.close();
        this.applyHeader(end);
        this.refresh(); // the final counts and the recording's full length
        this.feedState.textContent = "complete";
      },
    }, (state) => {
      if (state !== "closed") this.feedState.textContent = state === "open" ? "live" : "reconnecting…";
    });
    this.statusFeed = liveFeed(`/api/live/events/stream?scope=org`, {
      status: (status) => {
        if (status.session_id === s.session_id) this.applyHeader(status);
      },
    });
  }

  /**
   * A thumbnail failed to load: most likely its signed URL expired before the (lazy) image was
   * shown. Every answer signs URLs afresh, so re-read the events once (at most every 10 s);
   * fillEvent gives failed images their new URL.
   */
  thumbnailFailed() {
    const now = Date.now();
    if (now - (this.thumbnailsRenewedAt || 0) < THUMBNAIL_RENEW_MS) return;
    this.thumbnailsRenewedAt = now;
    const s = this.session;
    api(`${sessionPath(s.stream_id, s.session_id)}?chunks_limit=0`)
      .then((fresh) => fresh.events.forEach((event) => this.upsert(event)))
      .catch(() => {}); // the images stay as they are; the next failure tries again
  }

  async reloadEvents() {
    const s = this.session;
    try {
      const fresh = await api(`${sessionPath(s.stream_id, s.session_id)}?chunks_limit=1`);
      this.events.clear();
      this.list.replaceChildren();
      fresh.events.forEach((event) => this.upsert(event));
      this.applyHeader(fresh);
    } catch (error) {
      showError(`Could not reload the events: ${error.message}`);
    }
  }

  /**
   * Add or update one merged event (a replay may show its latest version first). A known
   * event's button is updated in place: it may have the keyboard focus, or be under the pointer.
   */
  upsert(event) {
    const known = this.events.get(event.event_id);
    if (known) {
      known.event = event;
      fillEvent(known.item.querySelector("button"), event, () => this.thumbnailFailed());
    } else {
      const button = el("button", { type: "button", class: "event", dataset: { eventId: event.event_id } });
      button.addEventListener("click", () => {
        const current = this.events.get(event.event_id).event;
        this.seek(current.stream_time, current.event_id);
      });
      fillEvent(button, event, () => this.thumbnailFailed());
      const item = el("li", {}, button);
      // Keep the list in stream order: events arrive in the order they were written.
      const after = [...this.events.values()].find((other) => other.event.start_time > event.start_time);
      if (after) after.item.before(item);
      else this.list.append(item);
      this.events.set(event.event_id, { event, item });
    }
    this.eventCount.textContent = String(Math.max(this.session.event_count ?? 0, this.events.size));
    this.timeline.setEvents([...this.events.values()].map((entry) => entry.event));
  }

  seek(seconds, eventId = null) {
    this.player.seek(seconds);
    this.timeline.position(seconds);
    this.activeEventId = eventId;
    for (const { event, item } of this.events.values()) {
      const button = item.querySelector("button");
      if (event.event_id === eventId) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  }

  async end() {
    const s = this.session;
    this.endButton.disabled = true;
    try {
      const result = await api("/api/live/end-session", {
        method: "POST",
        form: { stream_id: s.stream_id, session_id: s.session_id },
      });
      if (result.status === "ended") this.applyHeader({ status: "ENDING" });
      else this.refresh();
    } catch (error) {
      showError(`Could not end the session: ${error.message}`);
      this.endButton.disabled = false;
    }
  }
}

/** Write `event` into its list button: thumbnail, label, times, confidence, description. */
function fillEvent(button, event, onThumbnailError) {
  button.dataset.streamTime = String(event.stream_time);
  button.style.setProperty("--hue", labelHue(event.label));
  // Each answer signs its thumbnail URLs afresh: only another picture (or a failed image)
  // replaces the image, so a shown one does not flicker with every event update.
  const picture = event.thumbnail_url ? event.thumbnail_event_id || event.thumbnail_url : "";
  const failed = button.firstChild && button.firstChild.dataset.failed === "true";
  if (button.dataset.picture !== picture || !button.firstChild || failed) {
    button.dataset.picture = picture;
    let thumbnail;
    if (picture) {
      thumbnail = el("img", { class: "thumb", src: event.thumbnail_url, alt: `${event.label} at ${clock(event.stream_time)}`,
        loading: "lazy", width: "160", height: "90" });
      thumbnail.addEventListener("error", () => {
        thumbnail.dataset.failed = "true";
        onThumbnailError();
      }, { once: true });
    } else {
      thumbnail = el("span", { class: "thumb thumb-none", "aria-hidden": "true", text: event.label.slice(0, 1).toUpperCase() });
    }
    if (button.firstChild) button.firstChild.replaceWith(thumbnail);
    else button.append(thumbnail);
  }
  const text = el("span", { class: "event-text" },
    el("span", { class: "event-title" },
      el("span", { class: "event-label", text: event.label }),
      el("span", { class: "event-time", text: `${clock(event.start_time)}–${clock(event.end_time)}` }),
      el("span", { class: "confidence", text: `${Math.round(event.confidence * 100)}%` })),
    el("span", { class: "event-description muted", text: event.description }));
  if (button.children.length > 1) button.lastChild.replaceWith(text);
  else button.append(text);
}
