// The web app's entry: the API key (asked once, kept in this tab's sessionStorage), then the
// sessions page at / or a session's page at /events/<stream_id>/<session_id>.
"use strict";

import { ApiError, KEY_REFUSED, api, apiKey, forgetApiKey, setApiKey } from "/static/js/api.js";
import { el, showError } from "/static/js/dom.js";
import { showSession } from "/static/js/session.js";
import { showSessions } from "/static/js/sessions.js";

const NOTICE_STORAGE = "livestreamNotice"; // a message shown once after a reload

/** `linked`: {streamId, sessionId} when the page was opened at a session's link, else null. */
export function start(linked) {
  // A link may carry "#key=...": the fragment never reaches a server or its logs; it is moved
  // into sessionStorage and taken out of the address bar (and so out of the history).
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("key")) {
    setApiKey(fragment.get("key"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  // A kept key the API refuses is forgotten; the reload stops every feed and timer using it.
  window.addEventListener(KEY_REFUSED, () => {
    forgetApiKey();
    sessionStorage.setItem(NOTICE_STORAGE, "The API refused the key: enter it again.");
    location.reload();
  }, { once: true });
  const notice = sessionStorage.getItem(NOTICE_STORAGE);
  if (notice) {
    sessionStorage.removeItem(NOTICE_STORAGE);
    showError(notice);
  }
  const root = document.getElementById("view");
  const keyBox = document.getElementById("key-box");
  const render = () => {
    renderKeyBox(keyBox, () => {
      render();
    });
    if (!apiKey()) {
      root.replaceChildren();
      return;
    }
    if (linked) showSession(root, linked.streamId, linked.sessionId);
    else showSessions(root);
  };
  render();
}

function renderKeyBox(box, onChange) {
  if (apiKey()) {
    const forget = el("button", { type: "button", id: "forget-key", text: "Forget key" });
    forget.addEventListener("click", () => {
      forgetApiKey();
      // A reload closes every feed opened with the old key.
      location.reload();
    });
    box.replaceChildren(el("span", { class: "muted", text: "API key set for this tab." }), forget);
    return;
  }
  const input = el("input", { id: "api-key", name: "api_key", type: "password", autocomplete: "off", required: true });
  const form = el(
    "form",
    { id: "key-form" },
    el("label", { for: "api-key", text: "API key" }),
    input,
    el("button", { type: "submit", class: "primary", text: "Use key" }),
  );
  form.addEventListener("submit", async (submit) => {
    submit.preventDefault();
    const key = input.value.trim();
    try {
      // Checked before it is kept: a mistyped key should not open feeds that only fail.
      await api("/api/live/live-sessions?limit=1", { key });
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        showError("That API key was refused.");
        input.focus();
        return;
      }
      // Anything else (the API still starting): keep the key, the pages report their errors.
    }
    showError("");
    setApiKey(key);
    onChange();
  });
  box.replaceChildren(form);
  input.focus();
}
