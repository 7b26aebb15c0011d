// Small DOM and formatting helpers shared by the pages. Text is always set through
// textContent: session names, queries and event descriptions come from users and sources.
"use strict";

/** `el("li", {class: "x", dataset: {id: "1"}}, child, "text")`: an element with attributes. */
export function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") Object.assign(element.dataset, value);
    else if (name === "text") element.textContent = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  element.append(...children.filter((child) => child !== null && child !== undefined));
  return element;
}

/** Seconds of stream time as m:ss (h:mm:ss from an hour on). */
export function clock(seconds) {
  const total = Math.max(0, Math.floor(seconds || 0));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

export function localTime(iso) {
  const moment = new Date(iso);
  return Number.isNaN(moment.getTime()) ? "" : moment.toLocaleString();
}

export const TERMINAL = new Set(["FINISHED", "FAILED"]);

/** A status badge; its class colours it, its text says it (colour is never the only cue). */
export function statusBadge(status) {
  return el("span", { class: `badge status-${String(status).toLowerCase()}`, text: status });
}

/** A stable colour per label, so one label looks the same in the list and on the timeline. */
export function labelHue(label) {
  let hash = 0;
  for (const char of String(label)) hash = (hash * 31 + char.codePointAt(0)) >>> 0;
  return hash % 360;
}

/** Show `message` in the page's alert region (role="alert": screen readers announce it). */
export function showError(message) {
  const region = document.getElementById("message");
  region.textContent = message;
  region.hidden = !message;
}
