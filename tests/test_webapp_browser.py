"""The web app in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

The four services run as processes on a real broker (``livestream.stack``) and the source is a
live scripted HLS stream on loopback. Everything the user does goes through the page: the key,
the start form, the session page's player, events, timeline and End session, the sessions list
updating live. Playwright only drives the browser binary found on this machine
(``executable_path``); it never downloads one. Screenshots are written under the test's tmp folder
(printed); with ``LIVESTREAM_UPDATE_SCREENSHOT=1`` the session page's one also replaces
``docs/webapp.png``, the README's.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from api.signing import PlaybackSigner
from livestream.kafka.admin import ensure_topics
from livestream.stack import Stack, stack_for_tests
from livestream.testsource import LiveHlsSource, Photo, Scene, Script, Solid
from livestream.testsource.script import SKIMAGE_PREFIX
from schemas.topics import Topics

pytestmark = [pytest.mark.kafka, pytest.mark.model]

ROOT = Path(__file__).resolve().parent.parent
QUERY = "detect a person, a cat or a cup"
SEGMENT_SECONDS = 2.0  # the source's segments, so the recording's (ingest stores them as they are)
CHUNK_SECONDS = 2.0
PLAYBACK_SECRET = secrets.token_hex(24)
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 360, "height": 740}
WAIT_MS = 90_000
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")


# --------------------------------------------------------------------------- the browser


def find_chromium() -> str | None:
    """The Chromium binary to drive: ``$LIVESTREAM_CHROMIUM``, else Debian's, else one on PATH."""
    configured = os.environ.get("LIVESTREAM_CHROMIUM")
    if configured:
        found = shutil.which(configured)
        if found is None:
            # Named explicitly but absent: a broken setting, never a reason to skip.
            raise FileNotFoundError(f"LIVESTREAM_CHROMIUM={configured!r} is not an executable")
        return found
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found is not None:
            return found
    return None


@pytest.fixture(scope="module")
def chromium_executable() -> str:
    found = find_chromium()
    if found is None:
        reason = (
            "no Chromium binary (install Debian's `chromium`, or set LIVESTREAM_CHROMIUM); "
            "Playwright's own browser download is not used"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}: .ci/run installs it, so under CI this is an error")
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def browser(chromium_executable: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_executable,
            # The player starts muted by itself; this only spares headless runs the gesture rule.
            args=["--autoplay-policy=no-user-gesture-required"],
        )
        try:
            yield browser
        finally:
            browser.close()


class Console:
    """Errors a page reported: console errors and uncaught exceptions."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} ({message.location.get('url', '')})")


# --------------------------------------------------------------------------- the stack


def looping_script() -> Script:
    """Distinct photo scenes separated by gray: several events, each a different picture."""
    return Script(
        (
            Scene(Photo(SKIMAGE_PREFIX + "chelsea"), 4.0, {"cat"}, name="cat"),
            Scene(Solid((128, 128, 128)), 2.0, name="gray"),
            Scene(
                Photo(SKIMAGE_PREFIX + "coffee"), 4.0, {"cup"}, {"spoon", "dining table", "bowl"}, name="cup"
            ),
            Scene(Solid((128, 128, 128)), 2.0, name="gray-2"),
            Scene(Photo(SKIMAGE_PREFIX + "astronaut"), 4.0, {"person"}, {"airplane"}, name="astronaut"),
        )
    )


def create_topics(bootstrap: str, prefix: str) -> Topics:
    """The system's topics under a fresh ``prefix``.

    Created from a worker thread: Playwright's sync API runs an event loop in this thread once
    the browser is up, and ``asyncio.run`` refuses to start a second one there.
    """
    topics = Topics(prefix=f"{prefix}{secrets.token_hex(4)}", partitions=3)
    with ThreadPoolExecutor(max_workers=1) as worker:
        worker.submit(asyncio.run, ensure_topics(bootstrap, topics.specs())).result()
    return topics


@pytest.fixture(scope="module")
def webapp_topics(kafka_bootstrap: str) -> Topics:
    return create_topics(kafka_bootstrap, "web")


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, webapp_topics: Topics, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with stack_for_tests(
        kafka_bootstrap,
        webapp_topics.prefix,
        tmp_path_factory.mktemp("webapp-stack"),
        extra_env={
            "LIVESTREAM_INGEST_CHUNK_SECONDS": str(CHUNK_SECONDS),
            # Known to the test, so it can sign a URL that has expired (the API never would).
            "LIVESTREAM_API_PLAYBACK_SECRET": PLAYBACK_SECRET,
        },
    ) as stack:
        yield stack


@pytest.fixture
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("webapp-screenshots")
    print(f"screenshots: {folder}")
    return folder


# --------------------------------------------------------------------------- page helpers


PAGE_STATE = """() => {
    const v = document.getElementById("player");
    const ranges = (r) => Array.from({ length: r.length }, (_, i) => [r.start(i), r.end(i)]);
    return {
        url: location.pathname,
        status: document.getElementById("session-status")?.textContent,
        player: v && { currentTime: v.currentTime, duration: v.duration, paused: v.paused, seeking: v.seeking,
            readyState: v.readyState, buffered: ranges(v.buffered), seekable: ranges(v.seekable),
            error: v.error && v.error.message },
        playerStatus: document.getElementById("player-status")?.textContent,
        focused: document.activeElement && document.activeElement.className,
        message: document.getElementById("message")?.textContent,
    };
}"""


def wait_until(page: Page, expression: str, arg: Any = None, timeout_ms: int = WAIT_MS) -> Any:
    """Wait for a JS expression (a function of ``arg``) to be truthy in the page; its value."""
    try:
        return page.wait_for_function(expression, arg=arg, timeout=timeout_ms).json_value()
    except PlaywrightTimeoutError:
        # What the page showed is what explains a timeout: the player's state above all.
        state = page.evaluate(PAGE_STATE)
        raise AssertionError(f"timed out on {expression} ({arg!r}); page: {state}") from None


def count_of(page: Page, selector: str) -> int:
    return int(page.locator(selector).first.inner_text())


def no_horizontal_scroll(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def seek_lands(page: Page, stream_time: float) -> None:
    """The player's position reaches ``stream_time`` (within one segment) and plays from there."""
    wait_until(
        page,
        """([t, slack]) => {
            const v = document.getElementById("player");
            return !v.seeking && v.readyState >= 2 && Math.abs(v.currentTime - t) <= slack;
        }""",
        [stream_time, SEGMENT_SECONDS],
        timeout_ms=30_000,
    )


def session_events(api: httpx.Client, stream_id: str, session_id: str) -> list[dict[str, Any]]:
    return api.get(f"/api/live/live-sessions/{stream_id}/{session_id}?chunks_limit=0").json()["events"]


# --------------------------------------------------------------------------- the test


def test_the_web_app_runs_a_session_in_chromium(stack: Stack, browser: Browser, screenshots: Path) -> None:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    console = Console(page)
    api = httpx.Client(base_url=stack.api_url, headers={"X-API-Key": stack.api_key}, timeout=30)
    pinned = json.loads((ROOT / "webapp" / "package-lock.json").read_text())["packages"][
        "node_modules/hls.js"
    ]

    # ---- the page asks for the key once; sessionStorage keeps it for this tab
    page.goto(f"{stack.api_url}/")
    expect(page.locator("#key-form")).to_be_visible()
    expect(page.locator(".key-note")).to_contain_text("sessionStorage")
    page.fill("#api-key", "not-the-key-0123456789")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#message")).to_have_text("That API key was refused.")
    # Chromium logs every refused request; this one was asked for. From here on: no errors.
    assert len(console.errors) == 1 and "status of 401" in console.errors[0], console.errors
    console.errors.clear()
    page.fill("#api-key", stack.api_key)
    page.keyboard.press("Enter")
    expect(page.locator("#start-form")).to_be_visible()
    expect(page.locator("#sessions-feed")).to_have_text("live", timeout=WAIT_MS)
    assert page.evaluate("sessionStorage.getItem('livestreamApiKey')") == stack.api_key
    assert page.evaluate("window.Hls.version") == pinned["version"]
    page.screenshot(path=screenshots / "01-sessions-empty.png", full_page=True)
    # A key the API refuses (revoked, mistyped in a link) is dropped and asked for again.
    refused = context.new_page()
    refused.goto(f"{stack.api_url}/#key=revoked-key-0123456789")
    expect(refused.locator("#key-form")).to_be_visible()
    expect(refused.locator("#message")).to_have_text("The API refused the key: enter it again.")
    assert refused.evaluate("sessionStorage.getItem('livestreamApiKey')") is None
    refused.close()

    with LiveHlsSource(looping_script(), segment_seconds=SEGMENT_SECONDS, loop=True) as source:
        # ---- a session started from the form opens its page
        page.fill("#source_url", source.url)
        page.fill("#name", "browser test")
        page.fill("#rapid_review_query", QUERY)
        page.click("#start-form button[type=submit]")
        page.wait_for_url(re.compile(r"/events/[^/]+/[0-9a-f]{32}$"), timeout=30_000)
        stream_id, session_id = page.url.rsplit("/", 2)[-2:]
        expect(page.locator("#session-name")).to_have_text("browser test")

        # A second tab on the sessions list, keyed by a link fragment (sessionStorage is per tab).
        list_page = context.new_page()
        list_console = Console(list_page)
        list_page.goto(f"{stack.api_url}/#key={stack.api_key}")
        assert "#key=" not in list_page.url  # taken out of the address bar and the history
        row = list_page.locator(f'.session-row[data-session-id="{session_id}"]')
        expect(row.locator(".badge")).to_have_text("ACTIVE", timeout=WAIT_MS)

        # ---- events arrive while the session runs, status and chunk count follow it live
        expect(page.locator("#session-status")).to_have_text("ACTIVE", timeout=WAIT_MS)
        expect(page.locator("#events button.event").first).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#events-feed")).to_have_text("live")
        chunks_then = count_of(page, "#chunk-count")
        wait_until(page, "n => Number(document.getElementById('chunk-count').textContent) > n", chunks_then)
        list_chunks_then = count_of(list_page, f'.session-row[data-session-id="{session_id}"] .chunk-count')
        wait_until(
            list_page,
            """([id, n]) => {
                const row = document.querySelector(`.session-row[data-session-id="${id}"]`);
                return row && Number(row.querySelector(".chunk-count").textContent) > n;
            }""",
            [session_id, list_chunks_then],
        )
        assert page.locator("#session-status").inner_text() == "ACTIVE"  # still running: live, not replayed

        # ---- the player plays the signed recording
        wait_until(page, "document.getElementById('player')?.readyState >= 3")
        position = page.evaluate("document.getElementById('player').currentTime")
        wait_until(page, "t => document.getElementById('player')?.currentTime > t + 1", position)
        assert page.evaluate("document.getElementById('player').paused") is False

        # ---- thumbnails: every event's signed JPEG, shown in the list, loads
        events = session_events(api, stream_id, session_id)
        assert events and all(e.get("thumbnail_url") for e in events), events
        image = page.locator(f'button.event[data-event-id="{events[0]["event_id"]}"] img.thumb')
        image.scroll_into_view_if_needed()
        wait_until(page, "img => img.complete && img.naturalWidth > 0", image.element_handle())
        assert "/thumbs/" in (image.get_attribute("src") or "")

        # ---- clicking an event seeks the player to its stream_time; Enter does the same
        wait_until(page, "document.querySelectorAll('#events button.event').length >= 2")
        buttons = page.locator("#events button.event")
        first_time = float(buttons.nth(0).get_attribute("data-stream-time") or "nan")
        buttons.nth(0).click()
        seek_lands(page, first_time)
        expect(buttons.nth(0)).to_have_attribute("aria-current", "true")
        second_time = float(buttons.nth(1).get_attribute("data-stream-time") or "nan")
        # The next event is one Tab away, and the keyboard focus on it is visible.
        page.keyboard.press("Tab")
        focused = page.evaluate(
            """() => {
                const active = document.activeElement;
                return [active.dataset.eventId, active.matches(":focus-visible"),
                        getComputedStyle(active).outlineStyle];
            }"""
        )
        assert focused[0] == buttons.nth(1).get_attribute("data-event-id"), focused
        assert focused[1] is True and focused[2] != "none", focused
        page.keyboard.press("Enter")
        seek_lands(page, second_time)
        wait_until(page, "t => document.getElementById('player')?.currentTime > t + 0.5", second_time)

        # ---- the timeline: a window per event; a click on one seeks to its event
        windows = page.locator("#timeline .window")
        # Counted in one evaluation: an event arriving meanwhile adds its button and window at once.
        assert page.evaluate(
            """() => document.querySelectorAll("#timeline .window").length
                === document.querySelectorAll("#events button.event").length"""
        )
        first_window = windows.first
        window_event = first_window.get_attribute("data-event-id")
        window_time = float(
            page.locator(f'button.event[data-event-id="{window_event}"]').get_attribute("data-stream-time")
            or "nan"
        )
        first_window.click()
        seek_lands(page, window_time)
        # From the keyboard the strip is a slider: Home goes to the start, arrows step 5 s.
        page.focus("#timeline .track")
        page.keyboard.press("Home")
        seek_lands(page, 0.0)
        page.keyboard.press("ArrowRight")
        seek_lands(page, 5.0)
        first_window.click()
        seek_lands(page, window_time)
        page.screenshot(path=screenshots / "02-session.png")
        if os.environ.get("LIVESTREAM_UPDATE_SCREENSHOT") == "1":
            (ROOT / "docs").mkdir(exist_ok=True)
            shutil.copyfile(screenshots / "02-session.png", ROOT / "docs" / "webapp.png")
        list_page.screenshot(path=screenshots / "03-sessions-live.png", full_page=True)

        # ---- readable at 360 px: no horizontal scroll, on both pages
        page.set_viewport_size(PHONE)
        list_page.set_viewport_size(PHONE)
        assert no_horizontal_scroll(page), page.evaluate("document.documentElement.scrollWidth")
        assert no_horizontal_scroll(list_page), list_page.evaluate("document.documentElement.scrollWidth")
        page.screenshot(path=screenshots / "04-session-360px.png", full_page=True)
        list_page.screenshot(path=screenshots / "05-sessions-360px.png", full_page=True)
        page.set_viewport_size(DESKTOP)

        # ---- End session: the page and the list follow it to FINISHED
        page.click("#end-session")
        expect(page.locator("#session-status")).to_have_text(re.compile("ENDING|FINISHED"))
        expect(page.locator("#session-status")).to_have_text("FINISHED", timeout=WAIT_MS)
        expect(page.locator("#end-session")).to_be_hidden()
        expect(row.locator(".badge")).to_have_text("FINISHED", timeout=WAIT_MS)

    final = api.get(f"/api/live/live-sessions/{stream_id}/{session_id}?chunks_limit=0").json()
    expect(page.locator("#chunk-count")).to_have_text(str(final["chunk_count"]), timeout=30_000)
    expect(page.locator("#events button.event")).to_have_count(len(final["events"]))
    assert console.errors == [] and list_console.errors == [], console.errors + list_console.errors

    # ---- an expired manifest URL is refused, to the browser as to anyone
    signer = PlaybackSigner(secret=PLAYBACK_SECRET.encode())
    expired = signer.sign(session_id, "index.m3u8", int(time.time()) - 1)
    status = page.evaluate(
        "url => fetch(url).then(r => r.status)", f"/playback/{session_id}/index.m3u8?{expired.query()}"
    )
    assert status == 403
    context.close()
    api.close()


# --------------------------------------------------------------------------- expiring URLs

SHORT_TTL_S = 8


@pytest.fixture(scope="module")
def short_ttl_stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose signed playback URLs live a few seconds: a session outlives many of them."""
    topics = create_topics(kafka_bootstrap, "webttl")
    with stack_for_tests(
        kafka_bootstrap,
        topics.prefix,
        tmp_path_factory.mktemp("webapp-ttl-stack"),
        extra_env={
            "LIVESTREAM_INGEST_CHUNK_SECONDS": str(CHUNK_SECONDS),
            "LIVESTREAM_API_PLAYBACK_URL_TTL_S": str(SHORT_TTL_S),
        },
    ) as stack:
        yield stack


def manifest_urls(page: Page) -> list[str]:
    """The playlist URLs the page has requested, oldest first."""
    return page.evaluate(
        """performance.getEntriesByType("resource").map(e => e.name)
            .filter(name => name.includes("/index.m3u8?"))"""
    )


def expires_of(url: str) -> int:
    return int(parse_qs(urlsplit(url).query)["expires"][0])


def test_the_player_outlives_its_expired_manifest_url(short_ttl_stack: Stack, browser: Browser) -> None:
    stack = short_ttl_stack
    page = browser.new_page(viewport=DESKTOP)
    console = Console(page)
    with (
        httpx.Client(base_url=stack.api_url, headers={"X-API-Key": stack.api_key}, timeout=30) as api,
        LiveHlsSource(looping_script(), segment_seconds=SEGMENT_SECONDS, loop=True) as source,
    ):
        started = api.post(
            "/api/live/start-session",
            data={"source_url": source.url, "name": "ttl", "rapid_review_query": QUERY},
        ).json()
        stream_id, session_id = started["stream_id"], started["session_id"]
        page.goto(f"{stack.api_url}/events/{stream_id}/{session_id}#key={stack.api_key}")
        wait_until(page, "document.getElementById('player')?.readyState >= 3")
        first = manifest_urls(page)[0]
        # Past the first URL's expiry (the page's clock is this machine's): it is refused...
        time.sleep(max(0.0, expires_of(first) - time.time()) + 1)
        assert page.evaluate("url => fetch(url).then(r => r.status)", first) == 403
        # ...and the player signed a new one and plays on, well past several expiries.
        position = page.evaluate("document.getElementById('player').currentTime")
        later = position + 2 * SHORT_TTL_S
        wait_until(page, "t => document.getElementById('player')?.currentTime > t", later)
        assert max(expires_of(url) for url in manifest_urls(page)) > expires_of(first)
        assert page.locator("#player-status").inner_text() == ""
        assert api.post(
            "/api/live/end-session", data={"stream_id": stream_id, "session_id": session_id}
        ).json() == {"status": "ended"}
    # Chromium logs each refused request: only expired playback URLs may have been refused.
    refused = [e for e in console.errors if not ("status of 403" in e and "/playback/" in e)]
    assert refused == [], console.errors
    page.close()
