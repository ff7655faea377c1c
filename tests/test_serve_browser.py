"""A real browser drives the web page: upload a bundled photo, wait for the overlay, read the legend and its
confidences, switch to the uncertainty heat map and back."""

import os
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from carparts.paths import SAMPLES
from carparts.serve.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
SAMPLE = SAMPLES / "train108.jpg"
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


CANVAS_PIXELS = (
    "(() => { const c = document.getElementById('canvas'); "
    "return c.getContext('2d').getImageData(0, 0, c.width, c.height).data; })()"
)


SEGMENT_SAMPLE_AGAIN = (
    "(async () => { const file = document.getElementById('file').files[0]; const form = new FormData(); "
    "form.append('file', file); return (await fetch('v1/segment', {method: 'POST', body: form})).json(); })()"
)
HEAT_MATCHES_CANVAS = (
    "(() => { const off = document.createElement('canvas'); off.width = canvas.width; off.height = canvas.height; "
    "const o = off.getContext('2d'); o.drawImage(heat, 0, 0); const want = o.getImageData(0, 0, off.width, "
    f"off.height).data; const now = {CANVAS_PIXELS}; return now.every((v, i) => v === want[i]); }})()"
)


def test_upload_shows_overlay_and_legend(server_url):
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update"]  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        page = browser.new_page(viewport={"width": 1300, "height": 800})
        page.goto(server_url)
        page.wait_for_function("document.getElementById('model').textContent.includes('parts')")
        header = page.locator("#model")
        assert header.inner_text().startswith("FPN + EfficientNet-Lite1, 18 parts · torch · mIoU over the parts 0.")
        assert "real test photos" in header.inner_text() and "validation mIoU" not in header.inner_text()
        assert "@" not in header.inner_text() and "@" in header.get_attribute("title")  # the id, on hover
        assert page.evaluate("fetch('favicon.ico').then(r => r.status)") == 200
        page.set_input_files("#file", str(SAMPLE))
        page.wait_for_selector("#legend:not([hidden]) label.part", timeout=30000)
        names = page.locator("#parts .name").all_inner_texts()
        assert names and all(name.replace("_", "").isalpha() for name in names)
        assert "% of the car's pixels" in page.locator("#legend h3").first.inner_text()
        assert all(share.endswith("% of car") for share in page.locator("#parts .share").all_inner_texts())

        # every part, every car and the photo show the confidence the JSON carries; the low ones are flagged
        answer = page.evaluate(SEGMENT_SAMPLE_AGAIN)
        shown = page.locator("#parts .confidence").all_inner_texts()
        assert shown == [f"conf {part['confidence']:.2f}" for part in answer["parts"]]
        flagged = page.locator("#parts label.part.low .name").all_inner_texts()
        assert flagged == [part["name"] for part in answer["parts"] if part["confidence"] < 0.6]
        assert page.locator("#overall").inner_text() == f"overall confidence {answer['confidence']:.2f}"
        cars = page.locator("#cars .car").all_inner_texts()
        assert len(cars) == len(answer["cars"]) > 0
        assert all(f"conf {car['confidence']:.2f}" in text for car, text in zip(answer["cars"], cars, strict=True))
        note = page.locator("#confidence-note").inner_text()
        temperature = page.evaluate("fetch('v1/model').then(r => r.json()).then(card => card.temperature)")
        assert "below 0.60: check by hand" in note
        assert ("not calibrated" if temperature is None else f"calibrated at temperature {temperature:.2f}") in note
        assert page.locator("#canvas").is_visible()
        assert page.evaluate("document.getElementById('canvas').width") == 512

        # toggling a part off repaints its pixels, and only those, with the photo; on again restores the overlay
        page.evaluate(f"window.shown = {CANVAS_PIXELS}.slice()")
        first = page.locator("#parts input").first
        part = int(first.get_attribute("data-class"))
        first.uncheck()
        changed = page.evaluate(
            f"""(() => {{ const now = {CANVAS_PIXELS}; let changed = 0, elsewhere = 0, inPart = 0;
            for (let p = 0; p < labels.length; p++) {{
              const differs = [0, 1, 2].some(c => now[4 * p + c] !== window.shown[4 * p + c]);
              if (labels[p] === {part}) inPart++;
              if (differs) {{ changed++; if (labels[p] !== {part}) elsewhere++; }}
            }}
            return {{changed, elsewhere, inPart}}; }})()"""
        )
        assert changed["elsewhere"] == 0
        assert changed["changed"] >= 0.5 * changed["inPart"] > 0  # (the car boxes and tags are drawn on top)
        first.check()
        assert page.evaluate(f"{CANVAS_PIXELS}.every((v, i) => v === window.shown[i])")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web_page.png"), full_page=True)

        # the uncertainty view paints the heat map the service sent, without asking again; parts brings the overlay back
        requests = []
        page.on("request", lambda request: requests.append(request.url))
        assert not page.locator("#scale-box").is_visible()
        page.check("#views input[value=uncertainty]")
        assert page.locator("#scale-box").is_visible() and page.locator("#opacity").is_disabled()
        assert "0.5 or more" in page.locator("#scale-note").inner_text()
        assert page.evaluate(HEAT_MATCHES_CANVAS)
        assert page.evaluate(f"{CANVAS_PIXELS}.some((v, i) => v !== window.shown[i])")
        page.screenshot(path=str(ARTIFACTS / "web_page_uncertainty.png"), full_page=True)
        page.check("#views input[value=parts]")
        assert page.evaluate(f"{CANVAS_PIXELS}.every((v, i) => v === window.shown[i])")
        assert not page.locator("#scale-box").is_visible() and not page.locator("#opacity").is_disabled()
        assert not [url for url in requests if "v1/segment" in url]

        # a part, a car and a photo under 0.6 are flagged (the sample has none; the legend is drawn as for one)
        page.evaluate(
            "buildLegend([{class_id: 3, name: 'back_left_door', share: 0.1, confidence: 0.42}, "
            "{class_id: 14, name: 'hood', share: 0.9, confidence: 0.6}], 0.55); "
            "buildCars([{id: 1, viewpoint: 'left', parts: [], not_visible: [], confidence: 0.5}])"
        )
        assert page.locator("#parts label.part.low .name").all_inner_texts() == ["back_left_door"]
        assert "below 0.60" in page.locator("#parts label.part.low").get_attribute("title")
        red = "rgb(176, 0, 32)"
        assert page.locator("#overall .confidence").evaluate("e => getComputedStyle(e).color") == red
        assert page.locator("#cars .confidence").evaluate("e => getComputedStyle(e).color") == red
        assert page.locator("#parts label.part:not(.low) .confidence").evaluate("e => getComputedStyle(e).color") != red

        # a bad upload says so, and leaves nothing of the last photo on screen
        page.set_input_files("#file", files=[{"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"text"}])
        page.wait_for_selector("#status.error", timeout=30000)
        assert "not an image" in page.locator("#status").inner_text()
        assert not page.locator("#canvas").is_visible() and not page.locator("#legend").is_visible()
        assert page.locator("#parts label").count() == 0
        browser.close()
    assert (ARTIFACTS / "web_page.png").stat().st_size > 10_000
