import base64
import dataclasses
import io
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from carparts import cli
from carparts.classes import CARPARTS
from carparts.errors import CarpartsError
from carparts.loading import load_predictor
from carparts.models import ModelInfo
from carparts.predict import Ensemble, Predictor
from carparts.serve import launch
from carparts.serve.app import app_from_env, create_app
from carparts.serve.card import calibration, headline_figure, model_card, model_description
from carparts.serve.settings import ServeSettings
from carparts.tools.loadtest import bad_inputs, markdown, png_header_bomb

MB = 1024 * 1024


def png_bytes(width=48, height=32, colour=(90, 90, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


class SlowNetwork:
    """A network that takes ``seconds`` per batch: a big photo on a busy machine, without the big photo."""

    def __init__(self, network, seconds: float):
        self.network, self.seconds = network, seconds

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.network(batch)


def slow_predictor(model_path, seconds: float) -> Predictor:
    predictor = Predictor.from_path(model_path)
    predictor.model = SlowNetwork(predictor.model, seconds)
    return predictor


@contextmanager
def live_server(app) -> Iterator[str]:
    """The app behind a real uvicorn on a free 127.0.0.1 port (its logging left to pytest); yields the base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def post_in_background(url: str, body: bytes, results: list) -> threading.Thread:
    """POST ``body`` from another thread; append (status, headers, end time) to ``results``."""

    def send() -> None:
        response = httpx.post(url, content=body, timeout=60)
        results.append((response.status_code, response.headers, time.perf_counter()))

    thread = threading.Thread(target=send)
    thread.start()
    return thread


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
        "models": 1, "input_sizes": [64], "flip_tta": False, "crop": ["none"], "network_runs_per_photo": 1
    }  # fmt: skip


@pytest.mark.parametrize("from_env", [False, True])
def test_serves_multi_scale_flip_tta_and_crop_as_predict_does(tiny_model, monkeypatch, from_env):
    if from_env:  # how each worker process of `carparts serve --workers N` builds its app
        monkeypatch.setenv("CARPARTS_MODEL", f"{tiny_model},{tiny_model}")
        monkeypatch.setenv("CARPARTS_TTA", "1")
        monkeypatch.setenv("CARPARTS_INPUT_SIZE", "64,96")
        monkeypatch.setenv("CARPARTS_CROP", "car")
        app = app_from_env()
    else:
        app = create_app(model=f"{tiny_model},{tiny_model}", tta=True, input_size=[64, 96], crop="car")
    photo = np.full((32, 48, 3), (200, 40, 40), dtype=np.uint8)
    photo[8:24, 10:30] = (20, 160, 220)  # something for the network to tell apart
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG")
    expected = load_predictor(f"{tiny_model},{tiny_model}", tta=True, input_size=[64, 96], crop="car")(photo)
    with TestClient(app) as c:
        card = c.get("/v1/model").json()["test_time"]
        mask = c.post("/v1/segment?return=mask", content=buffer.getvalue())
    # the 4 members are one model: one shared finder pass, then each member's box and its mirror
    assert card == {
        "models": 1,
        "input_sizes": [64, 96],
        "flip_tta": True,
        "crop": ["car"],
        "network_runs_per_photo": 9,
    }
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


# --- confidence and the uncertainty heat map ---


def photo_png() -> tuple[np.ndarray, bytes]:
    """A 48x32 photo with a block of another colour, so the network paints several parts; its PNG bytes."""
    photo = np.full((32, 48, 3), (200, 40, 40), dtype=np.uint8)
    photo[8:24, 10:30] = (20, 160, 220)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG")
    return photo, buffer.getvalue()


def test_json_carries_the_confidences_that_predict_writes(tiny_model, tmp_path):
    photo, data = photo_png()
    with TestClient(create_app(predictor=Predictor.from_path(tiny_model))) as c:
        body = c.post("/v1/segment", files={"file": ("car.png", data, "image/png")}).json()
    Predictor.from_path(tiny_model).result(photo, "car.png").save(tmp_path, "car")
    written = json.loads((tmp_path / "car.json").read_text())
    assert body == written  # confidences included, to the last digit
    assert 0 < body["confidence"] <= 1 and body["parts"] and body["cars"]
    assert all(0 < part["confidence"] <= 1 for part in body["parts"])
    for car in body["cars"]:
        assert 0 < car["confidence"] <= 1 and all(0 < part["confidence"] <= 1 for part in car["parts"])
    pixels = sum(part["pixels"] for part in body["parts"])  # the photo's figure: its parts' weighted by pixels
    weighted = sum(part["confidence"] * part["pixels"] for part in body["parts"]) / pixels
    assert body["confidence"] == pytest.approx(weighted, abs=1e-3)


def test_uncertainty_true_adds_the_heat_map_that_return_uncertainty_answers(client):
    _, data = photo_png()
    assert "uncertainty_png" not in client.post("/v1/segment", content=data).json()
    body = client.post("/v1/segment?uncertainty=true&include_mask=true", content=data).json()
    heat = Image.open(io.BytesIO(base64.b64decode(body["uncertainty_png"])))
    assert (heat.format, heat.mode, heat.size) == ("PNG", "RGB", (48, 32))
    assert "mask_png" in body and body["parts"]
    alone = client.post("/v1/segment?return=uncertainty", content=data)
    assert alone.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(alone.content))), np.asarray(heat))
    assert len(set(heat.getdata())) > 2  # a heat map over the photo, not a flat colour


def test_openapi_documents_the_uncertainty_answers(client):
    segment = client.get("/openapi.json").json()["paths"]["/v1/segment"]["post"]
    query = {p["name"]: p for p in segment["parameters"]}
    assert "uncertainty" in query["return"]["schema"]["enum"]
    assert "heat map" in query["return"]["description"] and "confidence" in query["return"]["description"]
    assert "uncertainty_png" in query["uncertainty"]["description"]
    assert "confidence" in segment["description"]


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


def test_load_report_has_a_row_per_worker_count():
    def one_run(workers: int, threads: int, rps: float) -> dict:
        return dict(
            model="fast-x@1234", workers=workers, threads_per_worker=threads, p50_ms=1.0, p95_ms=2.0,
            throughput_rps=rps, errors=0, health_p95_ms=4.0, health_max_ms=9.0, pss_mb_before=100.0,
            pss_mb_after=101.0, pss_mb_after_bad_inputs=100.5, server_alive_after=True,
            bad_inputs={"empty body": {"status": 400, "error": "empty upload"}},
        )  # fmt: skip

    result = dict(requests=10, concurrency=2, backend="torch", machine="m", photo_sizes=[(512, 512)])
    result.update(model="fast-x@1234", date="2026-11-26T07:00:00+00:00", runs=[one_run(1, 2, 3.0), one_run(2, 1, 5.5)])
    text = markdown(result)
    assert "| 1 | 2 | 1.0 ms | 2.0 ms | 3.0 req/s | 0 | 4.0 ms (max 9.0) | 100.0 → 101.0 MB |" in text
    assert "| 2 | 1 | 1.0 ms | 2.0 ms | 5.5 req/s | 0 | 4.0 ms (max 9.0) | 100.0 → 101.0 MB |" in text
    assert "| empty body | 400 | 400 | empty upload |" in text
    assert "--workers 1,2`" in text and "with model `fast-x@1234`" in text and "(2026-11-26T07:00:00+00:00)" in text


# --- the service stays responsive: work off the event loop, a bounded queue, stalled and vanished uploads ---


def test_health_answers_at_once_while_a_slow_photo_is_segmented(tiny_model):
    app = create_app(predictor=slow_predictor(tiny_model, seconds=3.0))
    with live_server(app) as base, httpx.Client(base_url=base, timeout=10) as checker:
        assert checker.get("/health").status_code == 200  # connected, so only the answer is timed below
        results: list = []
        upload = post_in_background(f"{base}/v1/segment", png_bytes(), results)
        time.sleep(0.5)  # the photo is in the network by now
        seconds = []
        for _ in range(5):
            start = time.perf_counter()
            assert checker.get("/health").status_code == 200
            seconds.append(time.perf_counter() - start)
        answered = time.perf_counter()
        upload.join()
    assert sorted(seconds)[2] < 0.1  # the median: one slow answer on a busy test machine is not the loop blocked
    assert results[0][0] == 200 and results[0][2] > answered  # the photo was still being segmented


def test_a_full_queue_answers_503_with_retry_after(tiny_model):
    app = create_app(predictor=slow_predictor(tiny_model, seconds=2.5), max_queue=1)
    with live_server(app) as base:
        results: list = []
        first = post_in_background(f"{base}/v1/segment", png_bytes(), results)  # being segmented
        time.sleep(0.5)
        second = post_in_background(f"{base}/v1/segment", png_bytes(), results)  # waits: the queue is full
        time.sleep(0.5)
        third = httpx.post(f"{base}/v1/segment", content=png_bytes(), timeout=10)
        first.join()
        second.join()
    assert third.status_code == 503
    assert third.json()["status"] == 503 and "busy" in third.json()["error"]
    assert int(third.headers["retry-after"]) >= 1
    assert [status for status, _, _ in results] == [200, 200]


def test_a_stalled_upload_gets_408_and_the_connection_closes(tiny_model):
    app = create_app(predictor=Predictor.from_path(tiny_model), body_timeout_s=0.5)
    with live_server(app) as base, socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"\xff" * 10)
        sock.settimeout(10)
        start, answer = time.perf_counter(), b""
        while chunk := sock.recv(4096):  # until the server closes the connection
            answer += chunk
        waited = time.perf_counter() - start
    assert answer.startswith(b"HTTP/1.1 408")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"].startswith("upload stalled")
    assert 0.4 < waited < 5


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_client_that_goes_away_mid_upload_is_one_log_line(tiny_model):
    records = Records()
    loggers = [logging.getLogger(name) for name in ("carparts.serve", "uvicorn.error", "uvicorn")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(records)
        logger.setLevel(logging.INFO)
    try:
        with live_server(create_app(predictor=Predictor.from_path(tiny_model))) as base:
            with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as sock:
                sock.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"\xff" * 10)
                time.sleep(0.3)
            deadline = time.time() + 10
            while not any("went away" in r.getMessage() for r in records.records) and time.time() < deadline:
                time.sleep(0.05)
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(records)
            logger.setLevel(level)
    gone = [r for r in records.records if "went away" in r.getMessage()]
    assert len(gone) == 1 and "\n" not in gone[0].getMessage() and "/v1/segment" in gone[0].getMessage()
    assert not [r for r in records.records if r.levelno >= logging.ERROR or r.exc_info]  # no ASGI traceback


def test_urllib_reads_the_413_of_an_over_limit_upload(tiny_model):
    # urllib sends the whole body before it reads, and closes after: the server must read the body first
    # (more than the kernel buffers between client and server, or the early answer would slip through anyway)
    with live_server(create_app(predictor=Predictor.from_path(tiny_model))) as base:
        request = urllib.request.Request(f"{base}/v1/segment", data=b"\xff" * (25 * MB), method="POST")
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=30)
    assert answer.value.code == 413
    assert json.loads(answer.value.read()) == {
        "error": "upload of 26214400 bytes is over the 20 MB limit", "status": 413
    }  # fmt: skip


# --- error bodies, the icon, the model card ---


def test_malformed_multipart_gets_the_service_error_body(client):
    response = client.post("/v1/segment", content=b"--x\r\n", headers={"content-type": "multipart/form-data"})
    assert response.status_code == 400
    assert response.json() == {"error": "malformed multipart upload: Missing boundary in multipart.", "status": 400}


def test_two_file_fields_are_refused(client):
    files = [("file", ("a.png", png_bytes(), "image/png")), ("file", ("b.png", png_bytes(), "image/png"))]
    response = client.post("/v1/segment", files=files)
    assert response.status_code == 400
    assert response.json() == {"error": "one photo per request: the form has 2 fields named 'file'", "status": 400}


def test_unknown_paths_get_the_service_error_body(client):
    assert client.get("/nowhere").json() == {"error": "Not Found", "status": 404}


def test_favicon(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200 and response.headers["content-type"] == "image/x-icon"
    icon = Image.open(io.BytesIO(response.content))
    assert (icon.format, icon.size) == ("ICO", (32, 32))
    assert len(set(icon.convert("RGB").getdata())) > 2  # a picture, not a blank square


def test_model_card_describes_the_model_for_people(client):
    card = client.get("/v1/model").json()
    assert card["description"] == "FPN + EfficientNet-Lite0, 18 parts"
    assert card["headline"] is None  # the tiny model was never measured
    assert (card["max_upload_mb"], card["max_queue"], card["body_timeout_s"]) == (0.5, 16, 15.0)


def test_model_card_says_the_model_is_not_calibrated(client):
    card = client.get("/v1/model").json()
    assert card["temperature"] is None and card["uncertainty_full_scale"] == 0.5
    assert card["calibration"]["calibrated"] is False and card["calibration"]["applied"] == 1.0
    assert card["calibration"]["description"].startswith("not calibrated")


def test_model_card_states_the_fitted_temperature(tiny_model):
    description = json.loads((tiny_model / "model.json").read_text())
    description["temperature"] = 1.37
    description["metrics"] = {"calibration": {"temperature": 1.37, "data": "../shared/data/carparts/trainingset",
                                              "split": "val", "images": 80}}  # fmt: skip
    (tiny_model / "model.json").write_text(json.dumps(description))
    with TestClient(create_app(predictor=Predictor.from_path(tiny_model))) as c:
        card = c.get("/v1/model").json()
    assert card["temperature"] == 1.37
    assert card["calibration"] == {
        "temperature": 1.37, "applied": 1.37, "calibrated": True,
        "description": "confidences are softmax(logits / 1.37), the temperature fitted on 80 images (val of "
        "carparts/trainingset)",
    }  # fmt: skip


def test_ensemble_card_states_the_temperature_it_applies(tiny_model):
    first, second = Predictor.from_path(tiny_model), Predictor.from_path(tiny_model)
    second.info = dataclasses.replace(second.info, temperature=4.0, weights_sha256="other")
    ensemble = Ensemble([first, second])  # uncalibrated first: its missing temperature counts as 1
    assert model_card(ensemble, "torch", {})["temperature"] == 2.0  # the geometric mean, not the first model's
    assert calibration(ensemble)["calibrated"] is False
    assert calibration(ensemble)["description"].endswith("have no temperature and count as 1")


def test_headline_figure_prefers_the_real_photos():
    info = ModelInfo(arch="fpn", encoder="tf_efficientnet_lite1", taxonomy=CARPARTS)
    info.metrics = {"val_native": {"miou_parts": 0.82}, "photos_native": {"miou_parts": 0.71381, "images": 50}}
    assert headline_figure(info) == {
        "metric": "mIoU over the parts", "value": 0.714,
        "measured_on": "50 real test photos at their own sizes, never trained on",
    }  # fmt: skip


def test_headline_figure_names_the_photos_it_was_measured_on():
    info = ModelInfo(arch="fpn", encoder="tf_efficientnet_lite1", taxonomy=CARPARTS)
    info.recipe = {"data": "../shared/data/carparts/trainingset"}
    info.metrics = {"val_native": {"miou_parts": 0.80592, "images": 80}}
    assert headline_figure(info) == {
        "metric": "mIoU over the parts",
        "value": 0.806,
        "measured_on": "80 held-out photos (the validation split of carparts/trainingset, not trained on), "
        "at native resolution",
    }


def test_ensemble_description_names_each_network_once():
    def member(sha: str, arch: str, encoder: str) -> SimpleNamespace:
        return SimpleNamespace(info=ModelInfo(arch=arch, encoder=encoder, taxonomy=CARPARTS, weights_sha256=sha))

    members = [member("a", "fpn", "tf_efficientnet_lite1"), member("a", "fpn", "tf_efficientnet_lite1"),
               member("b", "unet", "resnet34")]  # fmt: skip
    ensemble = SimpleNamespace(members=members, info=members[0].info)
    assert model_description(ensemble) == "ensemble of 2 models (FPN + EfficientNet-Lite1, U-Net + ResNet-34), 18 parts"


# --- default limits, through each way the service is started ---


def test_default_upload_limit_of_create_app_is_20_mb(tiny_model):
    with TestClient(create_app(predictor=Predictor.from_path(tiny_model))) as c:
        assert c.get("/v1/model").json()["max_upload_mb"] == 20
        at_limit = c.post("/v1/segment", content=b"\xff" * (20 * MB))
        over = c.post("/v1/segment", content=b"\xff" * (20 * MB + 1))
    assert at_limit.status_code == 415  # read and judged: not an image
    assert over.status_code == 413 and "over the 20 MB limit" in over.json()["error"]


def test_default_upload_limit_of_the_cli_is_20_mb(monkeypatch):
    calls = []
    monkeypatch.setattr(launch, "serve", lambda *args, **kwargs: calls.append((args, kwargs)))
    assert cli.main(["serve"]) == 0
    args, kwargs = calls[0]
    assert args[5] == 20  # max_upload_mb
    assert (kwargs["threads"], kwargs["max_queue"], kwargs["body_timeout_s"]) == (None, 16, 15)


def test_default_upload_limit_of_the_worker_environment_is_20_mb(tiny_model, monkeypatch):
    for key in ServeSettings().to_env():
        monkeypatch.delenv(key, raising=False)
    assert ServeSettings.from_env().max_upload_mb == 20
    monkeypatch.setenv("CARPARTS_MODEL", str(tiny_model))
    with TestClient(app_from_env()) as c:
        assert c.get("/v1/model").json()["max_upload_mb"] == 20


# --- several workers: the cores split among them, no model in the supervising process ---


@pytest.mark.parametrize("workers, cores, threads", [(1, 2, 2), (2, 2, 1), (2, 16, 8), (3, 16, 5), (4, 2, 1)])
def test_threads_per_worker_split_the_cores(workers, cores, threads):
    assert launch.threads_per_worker(workers, cores) == threads


def test_zero_workers_is_an_error():
    with pytest.raises(CarpartsError, match="--workers must be at least 1"):
        launch.threads_per_worker(0, 8)


@pytest.mark.parametrize("threads, expected", [(None, "8"), (3, "3")])
def test_workers_get_their_share_of_the_cores_and_the_supervisor_no_model(monkeypatch, tmp_path, threads, expected):
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("CARPARTS_")})

    def no_model_here(*args, **kwargs):
        raise AssertionError("the supervising process loaded a model")

    monkeypatch.setattr(Predictor, "__init__", no_model_here)  # every backend's predictor starts here
    monkeypatch.setattr(launch, "cpu_cores", lambda: 16)
    monkeypatch.setattr(launch, "check_model_apart", lambda settings: "checked-elsewhere")
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.update(kwargs, app=app, env=dict(os.environ)))
    launch.serve(str(tmp_path), "127.0.0.1", 8000, "onnx", 2, 20.0, tta=True, input_size=[64, 96], threads=threads)
    env = started["env"]
    assert started["app"] == "carparts.serve.app:app_from_env" and started["workers"] == 2
    assert (env["CARPARTS_THREADS"], env["OMP_NUM_THREADS"]) == (expected, expected)
    worker = ServeSettings.from_env(env)  # what each worker builds its app from
    assert worker == ServeSettings(model=str(tmp_path.resolve()), backend="onnx", tta=True, input_size=(64, 96),
                                   threads=int(expected), max_upload_mb=20.0)  # fmt: skip


def test_model_check_runs_in_a_throw_away_process(tiny_model, tmp_path):
    assert launch.check_model_apart(ServeSettings(model=str(tiny_model))).startswith("tiny-fpn")
    with pytest.raises(CarpartsError, match="model not found"):
        launch.check_model_apart(ServeSettings(model=str(tmp_path / "missing")))


def test_a_worker_uses_the_threads_it_is_given(tiny_model, monkeypatch):
    monkeypatch.setenv("CARPARTS_MODEL", str(tiny_model))
    monkeypatch.setenv("CARPARTS_THREADS", "1")
    before = torch.get_num_threads()
    try:
        app_from_env()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
