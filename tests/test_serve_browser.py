"""A real browser drives the web page: upload a bundled photo, wait for the overlay, read the legend."""

import os
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from carparts.serve.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
SAMPLE = Path(__file__).resolve().parents[1] / "src" / "carparts" / "assets" / "samples" / "train108.jpg"
ARTIFACTS = Path(__file__).resolve().parents[1] / "runs" / "test-artifacts"
REQUIRED = os.environ.get("CARPARTS_REQUIRE_BROWSER") == "1"  # set by CI, which installs Chromium

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and not REQUIRED, reason="Debian chromium not installed (apt-get install chromium)"
)


@pytest.fixture
def server_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


def test_upload_shows_overlay_and_legend(server_url):
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update"]  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        page = browser.new_page(viewport={"width": 1300, "height": 800})
        page.goto(server_url)
        page.wait_for_function("document.getElementById('model').textContent.includes('@')")
        page.set_input_files("#file", str(SAMPLE))
        page.wait_for_selector("#legend:not([hidden]) label.part", timeout=30000)
        names = page.locator("#parts .name").all_inner_texts()
        assert names and all(name.replace("_", "").isalpha() for name in names)
        assert page.locator("#canvas").is_visible()
        assert page.evaluate("document.getElementById('canvas').width") == 512
        # toggling a part off redraws without it
        page.locator("#parts input").first.uncheck()
        assert not page.locator("#parts input").first.is_checked()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.locator("#parts input").first.check()
        page.screenshot(path=str(ARTIFACTS / "web_page.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "web_page.png").stat().st_size > 10_000
