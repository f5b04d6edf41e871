"""The playground in a real browser: Debian's Chromium, driven by Playwright, against the whole local
stack, as the app works. A guest signs in on the Auth emulator, makes a sketch with the ID token,
watches the bar, sees the still, and the video plays, every change arriving from the sketch's
Firestore document (never from GET ?id=). A second guest sees neither that document nor, through
the API, that sketch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import record_figure
from playwright.sync_api import Browser, Page, Request, sync_playwright

from devstack.stack import LocalStack, local_stack

pytestmark = [pytest.mark.timeout(240), pytest.mark.stack]

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "out" / "playground.png"
PHONE_SCREENSHOT = ROOT / "out" / "playground-phone.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Loopback only: any name the browser might try to resolve (an update check, a safe-browsing
    # list) fails instead of leaving the machine.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
WAIT_MS = 60_000
VIDEO_STATE = """v => ({readyState: v.readyState, networkState: v.networkState, currentTime: v.currentTime,
    paused: v.paused, ended: v.ended, error: v.error && {code: v.error.code, message: v.error.message},
    src: v.currentSrc, h264: v.canPlayType('video/mp4; codecs="avc1.42E01E"')})"""


def require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium package "
            "(apt-get install chromium); the playground's browser test needs it",
            pytrace=False,
        )


def sample_progress(page: Page, seconds: float) -> list[int]:
    """The bar's value every 100 ms until the video has played, as a person watching it would see it."""
    seen: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = int(page.eval_on_selector("#progress", "p => p.value"))
        if not seen or seen[-1] != value:
            seen.append(value)
        video = page.eval_on_selector("#video", VIDEO_STATE)
        if video["error"] is not None:
            raise AssertionError(f"the video cannot play: {video}")
        if video["readyState"] >= 2 and (video["currentTime"] > 0 or video["ended"]):
            return seen
        page.wait_for_timeout(100)
    video = page.eval_on_selector("#video", VIDEO_STATE)
    raise AssertionError(
        f"the video did not play within {seconds:.0f} s: {video}; status {page.text_content('#status')!r}"
    )


def open_page(browser: Browser, stack: LocalStack, requests: list[Request], fragment: str = "") -> Page:
    """The playground in a browser context of its own (its own storage: its own guest)."""
    context = browser.new_context(viewport={"width": 1100, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.on("request", lambda request: requests.append(request))
    page.goto(stack.playground.url + fragment)
    page.wait_for_selector("#sign-in:enabled")
    assert page.locator("#make").is_disabled()  # nobody may make a sketch before signing in
    return page


def sign_in(page: Page) -> str:
    page.click("#sign-in")
    page.wait_for_selector("#account[data-uid]")
    uid = page.get_attribute("#account", "data-uid")
    assert uid
    page.wait_for_selector("#make:enabled")
    return uid


def reads(page: Page) -> int:
    return int(page.get_attribute("#reads", "data-firestore-reads") or "0")


def test_a_guest_watches_their_sketch_live_and_another_guest_cannot_see_it(tmp_path: Path) -> None:
    require_chromium()
    prompt = f"a lighthouse keeper's cat watching a storm roll in ({time.time_ns()})"
    requests: list[Request] = []
    with (
        local_stack(
            tmp_path / "logs", personality="guide", image_delay=1.0, video_delay=2.0, ttl=3600
        ) as stack,
        sync_playwright() as playwright,
        httpx.Client(timeout=10) as http,
    ):
        assert stack.env["AUTH_MODE"] == "firebase"
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = open_page(browser, stack, requests)
            page.fill("#prompt", prompt)
            signing_in = time.monotonic()
            uid = sign_in(page)

            # A double click makes one sketch, not two.
            page.dblclick("#make")
            page.wait_for_selector("#current[data-sketch-id]")
            sketch_id = page.get_attribute("#current", "data-sketch-id")
            assert sketch_id

            page.wait_for_function(
                "() => { const i = document.getElementById('still'); "
                "return i.checkVisibility() && i.complete && i.naturalWidth > 0; }"
            )
            progress = sample_progress(page, WAIT_MS / 1000)
            playing_after = time.monotonic() - signing_in
            # The bar moved as the document changed, never went back, and ended full.
            assert progress == sorted(progress), progress
            assert any(0 < value < 100 for value in progress), progress
            assert progress[-1] == 100, progress
            assert page.text_content("#progress-text") == "100%"
            assert "Done" in (page.text_content("#status") or "")
            assert page.text_content("#error") == ""

            posts = [r for r in requests if r.method == "POST" and r.url.startswith(stack.create.url)]
            assert posts and all(r.headers.get("idempotency-key") for r in posts), posts
            assert len({r.headers["idempotency-key"] for r in posts}) == 1
            owner = {"Authorization": posts[0].headers["authorization"]}
            assert owner["Authorization"].startswith("Bearer ")

            # It is the service's own video of this guest's sketch that plays, and it keeps playing.
            sketch: dict[str, Any] = http.get(
                stack.create.url, params={"id": sketch_id}, headers=owner
            ).json()
            assert sketch["status"] == "complete" and sketch["prompt"] == prompt
            assert sketch["user_id"] == uid
            video = page.eval_on_selector("#video", VIDEO_STATE)
            assert video["src"] == sketch["video_url"], video
            page.wait_for_function(
                "t => document.getElementById('video').currentTime != t", arg=video["currentTime"]
            )

            # The gallery is the guest's own query, refreshed once the sketch finished.
            recent = page.locator(f'[data-testid="recent-item"][data-id="{sketch_id}"]')
            recent.wait_for()
            assert prompt in (recent.text_content() or "")
            assert "complete" in (recent.text_content() or "")

            # Every change came from the live document: the page never asked GET ?id=.
            asked = [r.url for r in requests if r.url.startswith(stack.create.url)]
            assert not [url for url in asked if "id" in parse_qs(urlsplit(url).query)], asked
            page_reads = reads(page)
            # One read for each snapshot delivered (each bar value seen came in one) and the gallery's.
            assert page_reads >= len(progress), (page_reads, progress)

            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            # Readable on a phone: nothing wider than the screen, the video still there.
            page.set_viewport_size({"width": 390, "height": 844})
            too_wide = page.evaluate(
                "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right"
                " > window.innerWidth + 0.5).map(e => e.id || e.className || e.tagName)"
            )
            assert too_wide == [], too_wide
            assert page.locator("#video").is_visible()
            page.screenshot(path=str(PHONE_SCREENSHOT), full_page=True)

            # A second guest, handed the link to the first one's sketch: Firestore refuses the live
            # view (firestore.rules), and nothing of that sketch shows.
            other = open_page(browser, stack, requests, f"#{sketch_id}")
            other_uid = sign_in(other)
            assert other_uid != uid
            other.wait_for_selector("#current[data-error-code]")
            assert other.get_attribute("#current", "data-error-code") == "permission-denied"
            assert "not yours" in (other.text_content("#status") or "")
            assert other.text_content("#current-prompt") == ""
            assert other.get_attribute("#still", "src") is None
            assert other.locator("#video-figure").is_hidden()

            # Its own sketch it may make and see; the first one's, through the API, is not found.
            other.fill("#prompt", "a second guest's walrus")
            other.click("#make")
            other.wait_for_function(
                f"() => document.getElementById('current').dataset.sketchId !== {sketch_id!r}"
                " && document.getElementById('current').dataset.status !== undefined"
            )
            other_posts = [
                r
                for r in requests
                if r.method == "POST" and r.url.startswith(stack.create.url) and r not in posts
            ]
            assert len(other_posts) == 1, other_posts
            stranger = {"Authorization": other_posts[0].headers["authorization"]}
            refused = http.get(stack.create.url, params={"id": sketch_id}, headers=stranger)
            assert refused.status_code == 404, refused.text
            assert refused.json()["error"]["code"] == "not_found"
            other.locator('[data-testid="recent-item"]').first.wait_for()
            listed = other.eval_on_selector_all(
                '[data-testid="recent-item"]', "items => items.map(i => i.dataset.id)"
            )
            assert sketch_id not in listed and len(listed) == 1, listed

            asked = [r.url for r in requests if r.url.startswith(stack.create.url)]
            assert not [url for url in asked if "id" in parse_qs(urlsplit(url).query)], asked
            # Everything the pages fetched stayed on this machine.
            assert all(r.url.startswith("http://127.0.0.1:") for r in requests), [r.url for r in requests]
        finally:
            browser.close()
    record_figure("playground", "seconds from guest sign-in to a playing video", f"{playing_after:.1f}")
    record_figure(
        "playground", "Firestore reads by the page to a playing video (snapshots, gallery)", page_reads
    )
