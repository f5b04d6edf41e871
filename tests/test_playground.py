"""The playground in a real browser: Debian's Chromium, driven by Playwright, against the whole local
stack. A person types a prompt, presses Make it, watches the bar, sees the still, and the video plays."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Request, sync_playwright

from devstack.stack import local_stack

pytestmark = pytest.mark.timeout(180)

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
    paused: v.paused, error: v.error && {code: v.error.code, message: v.error.message}, src: v.currentSrc,
    h264: v.canPlayType('video/mp4; codecs="avc1.42E01E"')})"""


def require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium package "
            "(apt-get install chromium); the playground's browser test needs it",
            pytrace=False,
        )


def sample_progress(page: Page, seconds: float) -> list[int]:
    """The bar's value every 100 ms until the video plays, as a person watching it would see it."""
    seen: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = int(page.eval_on_selector("#progress", "p => p.value"))
        if not seen or seen[-1] != value:
            seen.append(value)
        video = page.eval_on_selector("#video", VIDEO_STATE)
        if video["error"] is not None:
            raise AssertionError(f"the video cannot play: {video}")
        if video["readyState"] >= 2 and video["currentTime"] > 0 and not video["paused"]:
            return seen
        page.wait_for_timeout(100)
    video = page.eval_on_selector("#video", VIDEO_STATE)
    raise AssertionError(
        f"the video did not play within {seconds:.0f} s: {video}; status {page.text_content('#status')!r}"
    )


def test_a_person_makes_a_sketch_and_watches_it_play(tmp_path: Path) -> None:
    require_chromium()
    prompt = f"a lighthouse keeper's cat watching a storm roll in ({time.time_ns()})"
    requests: list[Request] = []
    with (
        local_stack(
            tmp_path / "logs", personality="guide", image_delay=1.0, video_delay=2.0, ttl=3600
        ) as stack,
        sync_playwright() as playwright,
    ):
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1100, "height": 1000},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            page.on("request", lambda request: requests.append(request))
            page.goto(stack.playground.url)
            assert page.locator("#make").is_enabled()

            page.fill("#prompt", prompt)
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
            # The bar moved as the page polled, never went back, and ended full.
            assert progress == sorted(progress), progress
            assert any(0 < value < 100 for value in progress), progress
            assert progress[-1] == 100, progress
            assert page.text_content("#progress-text") == "100%"
            assert "Done" in (page.text_content("#status") or "")
            assert page.text_content("#error") == ""

            # It is the service's own video of this sketch that plays, and it keeps playing.
            sketch: dict[str, Any] = httpx.get(stack.create.url, params={"id": sketch_id}, timeout=10).json()
            assert sketch["status"] == "complete" and sketch["prompt"] == prompt
            video = page.eval_on_selector("#video", VIDEO_STATE)
            assert video["src"] == sketch["video_url"], video
            first = video["currentTime"]
            page.wait_for_function("t => document.getElementById('video').currentTime != t", arg=first)

            recent = page.locator(f'[data-testid="recent-item"][data-id="{sketch_id}"]')
            recent.wait_for()
            assert prompt in (recent.text_content() or "")
            listed = httpx.get(stack.create.url, params={"limit": 10}, timeout=10).json()["sketches"]
            assert [s["id"] for s in listed if s["prompt"] == prompt] == [sketch_id]
            posts = [r for r in requests if r.method == "POST"]
            assert posts and all(r.headers.get("idempotency-key") for r in posts), posts
            assert len({r.headers["idempotency-key"] for r in posts}) == 1

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

            # Everything the page fetched stayed on this machine.
            assert all(r.url.startswith("http://127.0.0.1:") for r in requests), [r.url for r in requests]
        finally:
            context.close()
