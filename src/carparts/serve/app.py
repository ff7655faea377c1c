"""FastAPI app: ``POST /v1/segment``, ``GET /v1/model``, ``GET /health``, the web page at ``/`` and its icon.

The model is loaded once per worker process when the app is created. The event loop only reads uploads and
answers: decoding, inference and encoding run in a worker thread, one photo at a time (the model's own threads
use the cores), so ``/health`` answers at once while a big photo is processed. At most ``max_queue`` requests
wait behind that photo; more get 503 with ``Retry-After``. An upload that stalls for ``body_timeout_s`` gets 408.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

import anyio
import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image, ImageDraw
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Message

from carparts.errors import DamagedImageError, ImageTooLargeError, NotAnImageError
from carparts.images import MAX_PIXELS, decode_image
from carparts.loading import load_predictor
from carparts.predict import Predictor
from carparts.results import UNCERTAINTY_FULL_SCALE, encode
from carparts.serve.card import model_card
from carparts.serve.settings import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_UPLOAD_MB,
    ServeSettings,
)

STATIC = Path(__file__).parent / "static"
MODEL_CONCURRENCY = 1  # photos segmented at once per worker: one inference already uses all the worker's threads
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the photo in a multipart body
DRAIN_FACTOR = 4  # an over-limit upload up to this many times the limit is read to its end so the client sees 413

RETURN_DESCRIPTION = (
    "json: the parts and cars, each with its confidence; mask: the class-index mask as a palette PNG; overlay: the "
    "photo with the parts painted and a legend, JPEG; uncertainty: the per-pixel uncertainty heat map, PNG of the "
    f"photo's size (1 - probability of the pixel's class, inferno colours, brightest at {UNCERTAINTY_FULL_SCALE:g} "
    "and above)"
)
UNCERTAINTY_DESCRIPTION = (
    "with return=json, add the heat map that return=uncertainty answers, as base64 PNG uncertainty_png"
)

log = logging.getLogger("carparts.serve")
T = TypeVar("T")


def fail(status: int, message: str, close: bool = False, headers: dict[str, str] | None = None) -> HTTPException:
    """An error answer; ``close`` ends the connection after it (the request body was not read to its end)."""
    headers = (headers or {}) | ({"Connection": "close"} if close else {})
    return HTTPException(status_code=status, detail=message, headers=headers or None)


class RequestQueue:
    """Admission to the model: the photos being segmented plus at most ``size`` waiting; the expected wait.

    Used from the event loop only (admit/leave), except :meth:`timed`, which records a duration.
    """

    def __init__(self, size: int, concurrency: int = MODEL_CONCURRENCY):
        self.size = size
        self.concurrency = concurrency
        self.admitted = 0
        self.seconds_per_photo = 1.0  # a first guess until a photo has been timed

    def admit(self) -> bool:
        if self.admitted >= self.concurrency + self.size:
            return False
        self.admitted += 1
        return True

    def leave(self) -> None:
        self.admitted -= 1

    def retry_after(self) -> int:
        """Seconds until the queue has room, roughly: everyone admitted served at the recent pace."""
        return min(120, max(1, math.ceil(self.admitted * self.seconds_per_photo / self.concurrency)))

    def timed(self, job: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return job()
        finally:  # a moving average, so the estimate follows the photos being sent now
            self.seconds_per_photo = 0.8 * self.seconds_per_photo + 0.2 * (time.perf_counter() - start)


@dataclass
class Body:
    """What was read of a request body."""

    data: bytes  # its first bytes, as many as were asked for
    size: int  # bytes received
    complete: bool  # read to its end


async def receive_body(request: Request, keep: int, drain: int, timeout_s: float) -> Body:
    """Read the request body, keeping its first ``keep`` bytes and reading (then dropping) at most ``drain``.

    408 when the client sends nothing for ``timeout_s`` seconds; ``ClientDisconnect`` when it goes away.
    """
    chunks: list[bytes] = []
    size, more = 0, True
    while more and size <= drain:
        try:
            with anyio.fail_after(timeout_s):
                message = await request.receive()
        except TimeoutError:
            raise fail(408, f"upload stalled: nothing received for {timeout_s:g} s", close=True) from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if size < keep:
            chunks.append(chunk[: keep - size])
        size += len(chunk)
        more = message.get("more_body", False)
    return Body(b"".join(chunks), size, complete=not more)


async def file_from_multipart(request: Request, body: bytes) -> tuple[bytes, str]:
    """The photo in the one ``file`` field of a multipart body already read, and its file name."""

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_part_size=len(body) + 1)
    except StarletteHTTPException as e:  # the parser's own words, e.g. "Missing boundary in multipart."
        raise fail(400, f"malformed multipart upload: {e.detail}") from None
    try:
        files = form.getlist("file")
        if len(files) > 1:
            raise fail(400, f"one photo per request: the form has {len(files)} fields named 'file'")
        if not files or not isinstance(files[0], UploadFile):
            raise fail(422, "multipart upload needs a field named 'file' holding the image")
        return await files[0].read(), files[0].filename or "upload"
    finally:
        await form.close()


def decode_upload(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """The uploaded photo as RGB pixels, or the HTTP error its bytes deserve."""
    try:
        return decode_image(io.BytesIO(data), name, max_pixels)
    except ImageTooLargeError as e:
        raise fail(413, str(e)) from None
    except NotAnImageError as e:
        raise fail(415, str(e)) from None
    except DamagedImageError as e:
        raise fail(422, str(e)) from None


def base64_text(data: bytes) -> str:
    return base64.b64encode(data).decode()


def segment_photo(
    predictor: Predictor,
    image: np.ndarray,
    name: str,
    answer: str,
    polygons: bool,
    include_mask: bool,
    uncertainty: bool = False,
) -> Response:
    """Segment one photo and encode the answer asked for: ``json``, ``mask`` (PNG), ``overlay`` (JPEG) or
    ``uncertainty`` (the heat map, PNG); the JSON carries the heat map too with ``uncertainty``."""
    result = predictor.result(image, name)
    if answer == "mask":
        return Response(result.mask_png(), media_type="image/png")
    if answer == "overlay":
        return Response(result.overlay_jpeg(), media_type="image/jpeg")
    if answer == "uncertainty":
        return Response(result.uncertainty_png(), media_type="image/png")
    body = result.record(polygons=polygons)
    if include_mask:
        body["mask_png"] = base64_text(result.mask_png())
        car_ids = Image.fromarray(result.car_labels.clip(0, 255).astype("uint8"))  # pixel value = car id
        body["cars_mask_png"] = base64_text(encode(car_ids, "PNG"))
    if uncertainty:
        body["uncertainty_png"] = base64_text(result.uncertainty_png())
    return JSONResponse(body)


def favicon_ico() -> bytes:
    """A 32 px icon, a car's side in the page's colours, as the ICO file browsers ask ``/favicon.ico`` for."""
    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((0, 0, 31, 31), radius=6, fill=(29, 39, 51))
    draw.polygon([(4, 21), (5, 15), (10, 14), (13, 9), (21, 9), (25, 14), (28, 15), (28, 21)], fill=(43, 123, 214))
    for x in (9, 23):
        draw.ellipse((x - 3, 18, x + 3, 24), fill=(240, 240, 240), outline=(29, 39, 51))
    buffer = io.BytesIO()
    image.save(buffer, format="ICO", sizes=[(32, 32)])
    return buffer.getvalue()


def create_app(
    model: str | Path | None = None,
    backend: str = "torch",
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_pixels: int = MAX_PIXELS,
    predictor: Predictor | None = None,
    tta: bool = False,
    input_size: Sequence[int] | None = None,
    crop: str | None = None,
    threads: int | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
) -> FastAPI:
    """Build the app around one predictor, loaded here unless given: ``model`` (comma-separated: an ensemble)
    with flip ``tta``, at ``input_size`` (several sizes: multi-scale TTA) and with ``crop``, as ``carparts predict``
    takes them, on ``threads`` torch / onnxruntime threads."""
    predictor = predictor or load_predictor(model, backend, tta=tta, threads=threads, input_size=input_size, crop=crop)
    max_bytes = int(max_upload_mb * 1024 * 1024)
    drain_bytes = DRAIN_FACTOR * (max_bytes + MULTIPART_SLACK)
    service = {
        "threads": threads,
        "max_upload_mb": max_upload_mb,
        "max_queue": max_queue,
        "body_timeout_s": body_timeout_s,
    }
    card = model_card(predictor, backend, service)  # what GET /v1/model answers; fixed for the app's life
    icon = favicon_ico()
    queue = RequestQueue(max_queue)
    limiter = anyio.CapacityLimiter(MODEL_CONCURRENCY)
    app = FastAPI(title="carparts", version="1", description="Segment the parts of cars in photos.")

    async def read_upload(request: Request) -> tuple[bytes, str]:
        multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
        allowed = max_bytes + (MULTIPART_SLACK if multipart else 0)
        declared = request.headers.get("content-length", "")
        declared_size = int(declared) if declared.isdigit() else None
        if declared_size is not None and declared_size > drain_bytes:
            raise fail(413, f"upload of {declared_size} bytes is over the {max_upload_mb:g} MB limit", close=True)
        over = declared_size is not None and declared_size > allowed  # read it only to answer 413 cleanly
        body = await receive_body(request, 0 if over else allowed + 1, drain_bytes, body_timeout_s)
        if body.size > allowed:
            size = f"{body.size}" if body.complete else f"over {body.size}"
            raise fail(413, f"upload of {size} bytes is over the {max_upload_mb:g} MB limit", close=not body.complete)
        data, name = await file_from_multipart(request, body.data) if multipart else (body.data, "body")
        if len(data) > max_bytes:
            raise fail(413, f"upload is over the {max_upload_mb:g} MB limit")
        if not data:
            raise fail(400, "empty upload: send an image as multipart field 'file' or as the request body")
        return data, name

    async def refuse_busy(request: Request) -> HTTPException:
        body = await receive_body(request, 0, drain_bytes, body_timeout_s)  # read out, so the client sees 503
        waiting = queue.admitted - queue.concurrency
        return fail(
            503, f"busy: {waiting} photos are waiting; try again in a moment", close=not body.complete,
            headers={"Retry-After": str(queue.retry_after())},
        )  # fmt: skip

    @app.post("/v1/segment")
    async def segment(
        request: Request,
        return_: Literal["json", "mask", "overlay", "uncertainty"] = Query(
            "json", alias="return", description=RETURN_DESCRIPTION
        ),
        polygons: bool = Query(False, description="add each part's outline polygons to the JSON"),
        include_mask: bool = Query(
            False, description="add the class-index mask, and the car mask (pixel = car id), as base64 PNGs"
        ),
        uncertainty: bool = Query(False, description=UNCERTAINTY_DESCRIPTION),
    ) -> Response:
        """Segment one photo, sent as multipart field ``file`` or as the raw request body. Every part, every car
        and the photo carry ``confidence``: the mean calibrated probability of their pixels' class (the model's
        temperature is in ``GET /v1/model``)."""
        if not queue.admit():
            raise await refuse_busy(request)
        try:
            data, name = await read_upload(request)

            def job() -> Response:
                image = decode_upload(data, name, max_pixels)
                return segment_photo(predictor, image, name, return_, polygons, include_mask, uncertainty)

            return await anyio.to_thread.run_sync(partial(queue.timed, job), limiter=limiter)
        finally:
            queue.leave()

    @app.get("/v1/model")
    async def model_info() -> dict:
        """Classes, colours, input policy, the model's measured figure and how this service runs it."""
        return card

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": predictor.info.model_id, "backend": backend, "pid": os.getpid()}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(icon, media_type="image/x-icon", headers={"Cache-Control": "max-age=86400"})

    @app.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException and Starlette's own (404, 405...)
    async def json_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {"error": exc.detail, "status": exc.status_code}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"invalid request: {problems}", "status": 422}, status_code=422)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        log.info("%s went away before its upload to %s was complete", client, request.url.path)
        return Response(status_code=400)  # nobody reads it; the server drops it

    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` with several workers: settings come from ``CARPARTS_*`` variables."""
    return create_app(**asdict(ServeSettings.from_env()))
