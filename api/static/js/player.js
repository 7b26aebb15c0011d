// The recording's player: a signed HLS playlist (POST .../signed-manifest) played by hls.js
// (vendored from npm, see webapp/), or natively where the browser has HLS but no MSE.
"use strict";

import { ApiError, api } from "/static/js/api.js";

const MANIFEST_RETRY_MS = 2000;

export class Player {
  /** `video`: the <video> element; `onStatus(text)`: what the player says to the user. */
  constructor(video, sessionId, onStatus) {
    this.video = video;
    this.sessionId = sessionId;
    this.onStatus = onStatus;
    this.hls = null;
    this.url = null;
    this.state = "idle";
    this.pendingSeek = null;
    video.addEventListener("loadedmetadata", () => this.applyPendingSeek());
  }

  /**
   * Load the recording once it has a segment (the caller knows: the session has chunks).
   * `final`: the session ended, so a missing recording will not appear any more.
   */
  async load(final = false) {
    if (this.state !== "idle") return; // loading, waiting for a retry, loaded or given up
    this.state = "loading";
    this.onStatus("Loading the recording…");
    try {
      await this.attach(null);
      this.state = "loaded";
    } catch (error) {
      if (error instanceof ApiError && error.status === 404 && !final) {
        // No recorded segment yet (the recording can trail the first chunk): ask again soon.
        this.state = "waiting";
        this.onStatus("Waiting for the recording…");
        setTimeout(() => {
          this.state = "idle";
          this.load(final);
        }, MANIFEST_RETRY_MS);
      } else {
        this.state = "failed";
        this.onStatus(
          error.status === 404 ? "This session has no recording (never recorded, or purged)."
            : `The recording cannot be played: ${error.message}`,
        );
      }
    }
  }

  async attach(resumeAt) {
    const signed = await api(`/api/live/session/${encodeURIComponent(this.sessionId)}/signed-manifest`, {
      method: "POST",
    });
    this.url = signed.url;
    if (resumeAt !== null && this.pendingSeek === null) this.pendingSeek = resumeAt;
    const Hls = window.Hls;
    // hls.js wherever Media Source Extensions exist (consistent behaviour, the version we pin);
    // the browser's own HLS (Safari on iPhone has no MSE) otherwise.
    if (Hls && Hls.isSupported()) {
      if (this.hls) this.hls.destroy();
      // A position asked for before loading is where hls.js starts (else at the live edge, or
      // at 0 for an ended recording): a seek after loadedmetadata would race its own start.
      const startPosition = this.pendingSeek ?? -1;
      this.pendingSeek = null;
      this.hls = new Hls({ backBufferLength: 120, startPosition });
      this.hls.on(Hls.Events.ERROR, (_name, data) => this.onHlsError(data));
      this.hls.on(Hls.Events.MANIFEST_PARSED, () => this.play());
      this.hls.loadSource(this.url);
      this.hls.attachMedia(this.video);
    } else if (this.video.canPlayType("application/vnd.apple.mpegurl")) {
      this.video.src = this.url;
      this.video.addEventListener("error", () => this.renew(), { once: true });
      this.play();
    } else {
      throw new Error("this browser plays no HLS (no Media Source Extensions)");
    }
    this.onStatus("");
  }

  play() {
    // Muted, so browsers let it start without a click; the controls unmute.
    this.video.play().catch(() => this.onStatus("Press play to start the recording."));
  }

  onHlsError(data) {
    if (!data.fatal) return; // hls.js retries those itself
    if (data.type === window.Hls.ErrorTypes.MEDIA_ERROR) {
      this.hls.recoverMediaError();
    } else {
      // Most likely the signed URL expired (403) while the session runs on: sign a new one.
      this.renew();
    }
  }

  async renew() {
    const position = this.video.currentTime;
    try {
      await this.attach(position);
    } catch (error) {
      this.onStatus(`The recording stopped: ${error.message}`);
    }
  }

  /** Position the player at `seconds` of stream time (= playback time of the recording). */
  seek(seconds) {
    if (this.video.readyState >= HTMLMediaElement.HAVE_METADATA) {
      this.video.currentTime = seconds;
    } else {
      this.pendingSeek = seconds; // where hls.js starts once the recording is loaded
    }
    if (this.video.paused) this.play();
  }

  applyPendingSeek() {
    if (this.pendingSeek === null) return;
    this.video.currentTime = this.pendingSeek;
    this.pendingSeek = null;
  }

  /** The end of what can be played now, in seconds (0 before anything loaded). */
  playableEnd() {
    const ranges = this.video.seekable;
    return ranges.length ? ranges.end(ranges.length - 1) : 0;
  }
}
