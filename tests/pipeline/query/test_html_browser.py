"""The HTML page in a real headless browser: the thumbnails must render, checked by their colours on screen.

Needs Debian's ``chromium`` on PATH: ``make test`` installs it (``make system-deps``); without it the test fails.
"""
import dataclasses
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from pipeline.query.page import render_html
from pipeline.query.show import find_video, load_digest
from query_helpers import COLOURS

pytestmark = pytest.mark.browser
BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def _screenshot(html: str, tmp_path) -> np.ndarray:
    page, shot = tmp_path / "page.html", tmp_path / "shot.png"
    page.write_text(html, encoding="utf-8")
    assert BROWSER, "chromium is needed on PATH: run `make system-deps` (apt-get install chromium)"
    subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--force-device-scale-factor=1", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1100,900", page.as_uri()],
        check=True, capture_output=True, timeout=60,
    )
    return np.asarray(Image.open(shot).convert("RGB"), np.int16)


def _pixels_of(screen: np.ndarray, rgb) -> int:
    return int((np.abs(screen - np.asarray(rgb, np.int16)).max(axis=2) < 25).sum())


def test_thumbnails_render_on_the_timeline(con, tmp_path):
    digest = load_digest(con, find_video(con, "street.mp4"))  # red, blue and green scenes
    screen = _screenshot(render_html(digest), tmp_path)
    for colour in ("red", "blue", "green"):
        # Each scene shows twice: 112x84 on the timeline, 64x48 in the grid.
        assert _pixels_of(screen, COLOURS[colour]) > 112 * 84, colour
    assert _pixels_of(screen, COLOURS["yellow"]) == 0
    # The same page without its keyframes shows none of these colours: the pixels above are the thumbnails.
    bare = _screenshot(render_html(dataclasses.replace(digest, keyframes=[])), tmp_path)
    assert all(_pixels_of(bare, COLOURS[c]) == 0 for c in ("red", "blue", "green"))
