// The timeline strip: the event windows over the recording's duration, with a playhead.
// A click on a window seeks to its event's stream_time, a click elsewhere on the strip seeks to
// that point. From the keyboard the strip is one slider (arrows: 5 s, Page Up/Down: 30 s,
// Home/End); the windows are not tab stops, the event list (buttons) seeks to each event.
"use strict";

import { clock, el, labelHue } from "/static/js/dom.js";

export class Timeline {
  constructor(onSeek) {
    this.onSeek = onSeek;
    this.duration = 0;
    this.events = [];
    this.windows = new Map(); // event_id -> its window
    this.track = el("div", {
      class: "track",
      tabindex: "0",
      role: "slider",
      "aria-label": "Position in the recording",
      "aria-valuemin": "0",
      "aria-valuemax": "0",
      "aria-valuenow": "0",
    });
    this.current = 0;
    this.playhead = el("div", { class: "playhead", "aria-hidden": "true" });
    this.endLabel = el("span", { class: "timeline-end", text: "0:00" });
    this.element = el(
      "div",
      { class: "timeline", id: "timeline" },
      this.track,
      el("div", { class: "timeline-scale muted", "aria-hidden": "true" }, el("span", { text: "0:00" }), this.endLabel),
    );
    this.track.append(this.playhead);
    this.track.addEventListener("click", (click) => {
      if (click.target.closest(".window") || this.duration <= 0) return;
      const box = this.track.getBoundingClientRect();
      this.onSeek(((click.clientX - box.left) / box.width) * this.duration);
    });
    this.track.addEventListener("keydown", (key) => {
      const steps = { ArrowLeft: -5, ArrowDown: -5, ArrowRight: 5, ArrowUp: 5, PageDown: -30, PageUp: 30 };
      let target;
      if (key.key in steps) target = this.current + steps[key.key];
      else if (key.key === "Home") target = 0;
      else if (key.key === "End") target = this.duration;
      else return;
      key.preventDefault(); // no page scrolling
      this.onSeek(Math.min(this.duration, Math.max(0, target)));
    });
  }

  /** The recording's length so far: it only grows while the session runs. */
  extend(seconds) {
    if (!(seconds > this.duration)) return;
    this.duration = seconds;
    this.endLabel.textContent = clock(seconds);
    this.track.setAttribute("aria-valuemax", String(Math.round(seconds)));
    this.render();
  }

  setEvents(events) {
    this.events = events;
    this.extend(Math.max(0, ...events.map((event) => event.end_time)));
    this.render();
  }

  position(seconds) {
    this.current = seconds;
    this.playhead.style.left = `${this.percent(seconds)}%`;
    this.track.setAttribute("aria-valuenow", String(Math.round(seconds)));
    this.track.setAttribute("aria-valuetext", `${clock(seconds)} of ${clock(this.duration)}`);
  }

  percent(seconds) {
    return this.duration > 0 ? Math.min(100, Math.max(0, (seconds / this.duration) * 100)) : 0;
  }

  /** Place every window; they are updated in place, so one under the pointer stays clickable. */
  render() {
    const seen = new Set();
    for (const event of this.events) {
      seen.add(event.event_id);
      let window = this.windows.get(event.event_id);
      if (!window) {
        window = el("button", { type: "button", class: "window", tabindex: "-1", dataset: { eventId: event.event_id } });
        window.addEventListener("click", () => this.onSeek(window.streamTime, window.dataset.eventId));
        this.windows.set(event.event_id, window);
        this.track.insertBefore(window, this.playhead);
      }
      const left = this.percent(event.start_time);
      const span = `${event.label} ${clock(event.start_time)}–${clock(event.end_time)}`;
      window.streamTime = event.stream_time;
      window.title = span;
      window.setAttribute("aria-label", `${event.label} from ${clock(event.start_time)} to ${clock(event.end_time)}`);
      window.style.left = `${left}%`;
      window.style.width = `${Math.max(0.8, this.percent(event.end_time) - left)}%`;
      window.style.setProperty("--hue", labelHue(event.label));
    }
    for (const [eventId, window] of this.windows) {
      if (!seen.has(eventId)) {
        window.remove();
        this.windows.delete(eventId);
      }
    }
  }
}
