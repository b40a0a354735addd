"""The demo in a real headless Chromium (Debian's, driven by Playwright): open, generate, screenshot.

CI installs the browser (`.ci/run`: apt-get install chromium) and Playwright (the dev extra); the
test fails rather than skips when either is missing, so a green run means a browser really ran.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
# offline-friendly flags: no background calls to Google's services from a machine with no network
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_generates_in_headless_chromium_and_saves_a_screenshot(tmp_path):
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: install Debian's chromium (see .ci/run)"
    from playwright.sync_api import expect, sync_playwright

    from ponder.demos.app import launch

    app = launch(port=_free_port(), block=False)
    shots = Path(os.environ.get("PONDER_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(app.local_url)
            page.get_by_role("tab", name="Text").wait_for()
            page.get_by_label("number input for N (candidates)").fill("4")
            page.get_by_label("number input for Max new tokens").fill("40")
            page.locator("#generate-text").click()
            best = page.locator("#best-text textarea")
            expect(best).to_have_value(re.compile(r"^7\*2=14"), timeout=120_000)
            expect(page.locator("#compute-text")).to_contain_text("verifier calls 4")
            expect(page.locator("#candidates-text")).to_contain_text("7*2=14")
            shot = shots / "demo-text.png"
            page.screenshot(path=str(shot), full_page=True)
            # the image tab shows the best output as an image (not a text placeholder) and hides the
            # token-decoding controls a diffusion model ignores
            page.get_by_role("tab", name="Image").click()
            expect(page.locator("#model-info-image")).to_contain_text("diffusion model", timeout=60_000)
            expect(page.get_by_label("number input for Temperature")).to_be_hidden()
            page.get_by_label("number input for N (candidates)").nth(1).fill("3")
            page.locator("#generate-image").click()
            expect(page.locator("#compute-image")).to_contain_text("verifier calls 3", timeout=120_000)
            best_image = page.locator("#best-image-image img")
            expect(best_image).to_be_visible()
            assert best_image.evaluate("img => img.naturalWidth") == 16  # the exact 16x16 pixels, drawn large
            page.screenshot(path=str(shots / "demo-image.png"), full_page=True)
            # the music tab plays the best clip and every candidate, each with its score
            page.get_by_role("tab", name="Music").click()
            expect(page.locator("#model-info-music")).to_contain_text("diffusion model", timeout=60_000)
            verifier = page.get_by_label("Verifier (or a folder)").nth(2)
            verifier.fill("intensity=[-30,-10]")
            verifier.press("Enter")
            page.get_by_label("number input for N (candidates)").nth(2).fill("2")
            page.locator("#generate-music").click()
            expect(page.locator("#compute-music")).to_contain_text("verifier calls 2", timeout=120_000)
            expect(page.locator("#best-audio-music")).to_be_visible()
            players = page.locator("#players-music audio")
            expect(players).to_have_count(2)
            expect(page.locator("#players-music")).to_contain_text("score")
            assert players.first.evaluate("a => a.src.startsWith('data:audio/wav;base64,')")
            page.screenshot(path=str(shots / "demo-music.png"), full_page=True)
            browser.close()
    finally:
        app.close()
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
