"""The built site in a real browser: key pages load, every image decodes, no console errors; screenshots saved.

The site is built with ``mkdocs build --strict`` into a temp dir (``tests/docs/conftest.py``), served by ``http.server`` on 127.0.0.1 (a free
port, a thread of this process) and opened in Debian's headless Chromium through chromedriver (Selenium). For
each key page the test reads ``naturalWidth`` of every ``<img>`` after the page's load event, and the browser's
console log (level SEVERE = console errors, failed requests, JS exceptions). Screenshots go to the folder named
by ``MLAREF_SCREENSHOTS`` (created if missing), else to the test's temp dir.

Needs: ``chromium`` and ``chromedriver`` (Debian packages ``chromium chromium-driver``) and the Python package
``selenium``; skips with a reason naming whichever is missing.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import re
import shutil
import threading
from pathlib import Path

import pytest

# page path in the site -> what its <h1> must say (proves the page rendered, not a 404)
KEY_PAGES = {
    "": "Start here",
    "formats/q8_0/": "q8_0",
    "ops/concat/": "concat",
    "graphs/": "Graphs",
    "kernels/": "Kernels",
    "memory/": "Memory",
    "performance/": "Performance",
    "conformance/": "Conformance",
}


def _binary(*names: str) -> str | None:
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    return None


CHROMIUM = _binary("chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = _binary("chromedriver")

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)"),
    pytest.mark.skipif(CHROMEDRIVER is None, reason="no chromedriver binary (apt-get install chromium-driver)"),
    pytest.mark.skipif(importlib.util.find_spec("selenium") is None, reason="selenium is not installed (pip install selenium)"),
]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def served_site(built_site):
    handler = functools.partial(_QuietHandler, directory=str(built_site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: the OS picks a free one
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1600"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium does not run selenium-manager (no network).
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    d = os.environ.get("MLAREF_SCREENSHOTS")
    path = Path(d) if d else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


_IMAGES_JS = """
const done = arguments[arguments.length - 1];
const imgs = Array.from(document.images);
Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = r; i.onerror = r; })))
  .then(() => done(imgs.map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight])));
"""


@pytest.mark.parametrize("page", list(KEY_PAGES), ids=lambda p: p.strip("/") or "home")
def test_page_renders_with_images_and_no_console_errors(served_site, browser, shots, page):
    browser.get_log("browser")  # drop what earlier pages left
    browser.get(served_site + page)
    browser.set_script_timeout(20)
    images = browser.execute_async_script(_IMAGES_JS)
    h1 = browser.execute_script("const h = document.querySelector('article h1'); return h ? h.textContent : null;")
    name = re.sub(r"[^a-z0-9]+", "_", page.strip("/").lower()) or "home"
    # Full-height screenshot: size the window to the document first.
    height = browser.execute_script("return Math.min(document.documentElement.scrollHeight, 16000);")
    browser.set_window_size(1280, max(800, int(height)))
    browser.save_screenshot(str(shots / f"{name}.png"))
    browser.set_window_size(1280, 1600)
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]

    assert h1 is not None and KEY_PAGES[page] in h1, f"{page}: heading {h1!r}, expected {KEY_PAGES[page]!r}"
    broken = [src for src, w, _h in images if not w]
    assert not broken, f"{page}: images that did not load: {broken}"
    assert not errors, f"{page}: console errors: {[e['message'] for e in errors]}"


def test_generated_figures_are_on_their_pages(served_site, browser):
    # Each generated figure must be shown (and decode) on the page that explains it.
    expected = {"": ("img/graph_direct.png", "img/seed_pr253.png"),
                "graphs/": ("img/graph_f32.png", "img/graph_direct.png", "img/graph_chunked.png"),
                "memory/": ("img/memory_vs_context.png", "img/memory_timeline.png"),
                "kernels/": ("img/lane_map_l8a2.png",)}
    for page, figures in expected.items():
        browser.get(served_site + page)
        browser.set_script_timeout(20)
        images = browser.execute_async_script(_IMAGES_JS)
        loaded = [src for src, w, _h in images if w > 0]
        for fig in figures:
            assert any(s.endswith(fig) for s in loaded), f"{page or 'home'}: {fig} not shown; loaded: {loaded}"
