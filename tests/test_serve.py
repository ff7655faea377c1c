import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from carparts.classes import CARPARTS
from carparts.export import load_predictor
from carparts.predict import Predictor
from carparts.serve.app import app_from_env, create_app
from carparts.serve.loadtest import bad_inputs, markdown, png_header_bomb


def png_bytes(width=48, height=32, colour=(90, 90, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def client(tiny_model):
    app = create_app(predictor=Predictor.from_path(tiny_model), max_upload_mb=0.5)
    with TestClient(app) as c:
        yield c


def test_health_and_model(client):
    assert client.get("/health").json()["status"] == "ok"
    card = client.get("/v1/model").json()
    assert card["classes"]["names"] == list(CARPARTS.names)
    assert card["model_id"].startswith("tiny-fpn")


def test_model_card_states_the_test_time_configuration(client):
    assert client.get("/v1/model").json()["test_time"] == {
        "models": 1, "input_sizes": [64], "flip_tta": False, "network_runs_per_photo": 1
    }  # fmt: skip


@pytest.mark.parametrize("from_env", [False, True])
def test_serves_multi_scale_flip_tta_as_predict_does(tiny_model, monkeypatch, from_env):
    if from_env:  # how each worker process of `carparts serve --workers N` builds its app
        monkeypatch.setenv("CARPARTS_MODEL", f"{tiny_model},{tiny_model}")
        monkeypatch.setenv("CARPARTS_TTA", "1")
        monkeypatch.setenv("CARPARTS_INPUT_SIZE", "64,96")
        app = app_from_env()
    else:
        app = create_app(model=f"{tiny_model},{tiny_model}", tta=True, input_size=[64, 96])
    photo = np.full((32, 48, 3), (200, 40, 40), dtype=np.uint8)
    photo[8:24, 10:30] = (20, 160, 220)  # something for the network to tell apart
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG")
    expected = load_predictor(f"{tiny_model},{tiny_model}", tta=True, input_size=[64, 96])(photo)
    with TestClient(app) as c:
        card = c.get("/v1/model").json()["test_time"]
        mask = c.post("/v1/segment?return=mask", content=buffer.getvalue())
    assert card == {"models": 1, "input_sizes": [64, 96], "flip_tta": True, "network_runs_per_photo": 8}
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(mask.content))), expected)


def test_segment_multipart_json(client):
    response = client.post("/v1/segment", files={"file": ("car.png", png_bytes(), "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert (body["image"], body["width"], body["height"]) == ("car.png", 48, 32)
    assert all({"class_id", "name", "pixels", "share", "bbox"} <= set(p) for p in body["parts"])


def test_segment_raw_body_with_polygons_and_mask(client):
    response = client.post("/v1/segment?polygons=true&include_mask=true", content=png_bytes())
    body = response.json()
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
    assert mask.shape == (32, 48)
    for part in body["parts"]:
        assert part["pixels"] == int((mask == part["class_id"]).sum())
        assert all(len(poly) % 2 == 0 and len(poly) >= 6 for poly in part["polygons"])


def test_segment_returns_mask_and_overlay_images(client):
    mask = client.post("/v1/segment?return=mask", content=png_bytes())
    assert mask.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(mask.content)).size == (48, 32)
    over = client.post("/v1/segment?return=overlay", content=png_bytes())
    assert over.headers["content-type"] == "image/jpeg"
    width, height = Image.open(io.BytesIO(over.content)).size
    assert width > 48 and height >= 32  # the photo plus a legend strip


@pytest.mark.parametrize(
    "content, status, message",
    [
        (b"", 400, "empty upload"),
        (b"hello, I am text", 415, "not an image"),
        (png_bytes()[:60], 422, "damaged or truncated"),
        (png_header_bomb(40000, 40000), 413, "40000x40000"),
        (b"\x00" * (600 * 1024), 413, "over the 0.5 MB limit"),
    ],
)
def test_bad_uploads_get_clear_json_errors(client, content, status, message):
    response = client.post("/v1/segment", content=content)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert client.get("/health").status_code == 200  # still serving


def test_multipart_without_file_field(client):
    response = client.post("/v1/segment", files={"photo": ("car.png", png_bytes(), "image/png")})
    assert response.status_code == 422 and "field named 'file'" in response.json()["error"]


def test_bad_query_value(client):
    response = client.post("/v1/segment?return=gif", content=png_bytes())
    assert response.status_code == 422 and "return" in response.json()["error"]


def test_web_page_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and "Drop a car photo" in page.text
    assert "/v1/segment" in client.get("/openapi.json").json()["paths"]


def test_concurrent_requests(client):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda _: client.post("/v1/segment", content=png_bytes()).status_code, range(8)))
    assert codes == [200] * 8


def test_bad_input_set_of_the_load_test_matches_the_api(client):
    # the load test's bad inputs are bigger than this client's 0.5 MB limit only where they mean to be
    codes = {label: client.post("/v1/segment", content=body).status_code for label, body in bad_inputs().items()}
    assert codes == {
        "empty body": 400,
        "text, not an image": 415,
        "truncated JPEG": 422,
        "40000x40000 PNG header (bomb)": 413,
        "25 MB upload (limit 20 MB)": 413,
    }


def test_load_report_markdown():
    result = dict(requests=10, concurrency=2, backend="torch", workers=1, machine="m", photo_sizes=[(512, 512)])
    result.update(model="fast-x@1234", date="2026-11-26T07:00:00+00:00")
    result.update(p50_ms=1.0, p95_ms=2.0, throughput_rps=3.0, errors=0, rss_mb_before=100.0, rss_mb_after=101.0)
    result.update(rss_mb_after_bad_inputs=100.5, bad_inputs={"empty body": {"status": 400, "error": "empty upload"}})
    text = markdown(result)
    assert "| 10 | 2 | 1.0 ms | 2.0 ms | 3.0 req/s | 0 | 100.0 → 101.0 MB |" in text
    assert "| empty body | 400 | empty upload |" in text
    assert "with model `fast-x@1234`" in text and "(2026-11-26T07:00:00+00:00)" in text
