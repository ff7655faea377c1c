"""FastAPI app: ``POST /v1/segment``, ``GET /v1/model``, ``GET /health`` and the web page at ``/``.

The model is loaded once per worker process when the app is created. Inference runs in FastAPI's thread pool
behind a lock, so concurrent requests are safe and do not oversubscribe the CPU cores.
"""

from __future__ import annotations

import base64
import io
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image
from starlette.datastructures import UploadFile

from carparts.cars import car_mask, cars_json, find_cars
from carparts.errors import DamagedImageError, ImageTooLargeError, NotAnImageError
from carparts.export import load_predictor, split_models
from carparts.images import MAX_PIXELS, decode_image
from carparts.predict import PNG_COMPRESS_LEVEL, Predictor, colour_mask, overlay, part_polygons, part_summary

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_MB = 20.0


def encode_png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def create_app(
    model: str | Path | None = None,
    backend: str = "torch",
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_pixels: int = MAX_PIXELS,
    predictor: Predictor | None = None,
    tta: bool = False,
    input_size: Sequence[int] | None = None,
) -> FastAPI:
    """Build the app around one predictor, loaded here unless given: ``model`` (comma-separated: an ensemble)
    with flip ``tta`` and at ``input_size`` (several sizes: multi-scale TTA), as ``carparts predict`` takes them."""
    predictor = predictor or load_predictor(model, backend, tta=tta, input_size=input_size)
    info = predictor.info
    taxonomy = info.taxonomy
    max_bytes = int(max_upload_mb * 1024 * 1024)
    members = getattr(predictor, "members", [predictor])
    card = info.to_dict() | {
        "backend": backend,
        "max_upload_mb": max_upload_mb,
        "test_time": {
            "models": len({m.info.weights_sha256 for m in members}),
            "input_sizes": sorted({m.info.input_size for m in members}),
            "flip_tta": predictor.tta,
            "network_runs_per_photo": predictor.network_runs,
        },
    }  # what GET /v1/model answers; fixed for the app's life
    lock = threading.Lock()
    app = FastAPI(title="carparts", version="1", description="Segment the parts of cars in photos.")

    def fail(status: int, message: str) -> HTTPException:
        return HTTPException(status_code=status, detail=message)

    async def read_upload(request: Request) -> tuple[bytes, str]:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes + 1024 * 64:
            raise fail(413, f"upload of {int(declared)} bytes is over the {max_upload_mb:g} MB limit")
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_part_size=max_bytes + 1)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise fail(422, "multipart upload needs a field named 'file' holding the image")
            data, name = await upload.read(max_bytes + 1), upload.filename or "upload"
        else:
            data, name = b"", "body"
            async for chunk in request.stream():
                data += chunk
                if len(data) > max_bytes:
                    break
        if len(data) > max_bytes:
            raise fail(413, f"upload is over the {max_upload_mb:g} MB limit")
        if not data:
            raise fail(400, "empty upload: send an image as multipart field 'file' or as the request body")
        return data, name

    @app.post("/v1/segment")
    async def segment(
        request: Request,
        return_: Literal["json", "mask", "overlay"] = Query("json", alias="return"),
        polygons: bool = Query(False, description="add each part's outline polygons to the JSON"),
        include_mask: bool = Query(
            False, description="add the class-index mask, and the car mask (pixel = car id), as base64 PNGs"
        ),
    ) -> Response:
        data, name = await read_upload(request)
        try:
            image = decode_image(io.BytesIO(data), name, max_pixels)
        except ImageTooLargeError as e:
            raise fail(413, str(e)) from None
        except NotAnImageError as e:
            raise fail(415, str(e)) from None
        except DamagedImageError as e:
            raise fail(422, str(e)) from None
        with lock:
            mask = predictor(image)
        if return_ == "mask":
            return Response(encode_png(colour_mask(mask, taxonomy)), media_type="image/png")
        car_labels = car_mask(mask, taxonomy)
        cars = find_cars(mask, taxonomy, car_labels)
        if return_ == "overlay":
            buffer = io.BytesIO()
            overlay(image, mask, taxonomy, cars=cars).save(buffer, format="JPEG", quality=90)
            return Response(buffer.getvalue(), media_type="image/jpeg")
        body = {
            "image": name,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "model": info.model_id,
            "parts": part_summary(mask, taxonomy),
            "cars": cars_json(cars),
        }
        if polygons:
            outlines = part_polygons(mask)
            for part in body["parts"]:
                part["polygons"] = outlines[part["class_id"]]
        if include_mask:
            body["mask_png"] = base64.b64encode(encode_png(colour_mask(mask, taxonomy))).decode()
            car_ids = Image.fromarray(car_labels.clip(0, 255).astype("uint8"))  # pixel value = car id
            body["cars_mask_png"] = base64.b64encode(encode_png(car_ids)).decode()
        return JSONResponse(body)

    @app.get("/v1/model")
    def model_card() -> dict:
        """Classes, colours, input policy and the model's validation figures."""
        return card

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": info.model_id, "backend": backend, "pid": os.getpid()}

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.exception_handler(HTTPException)
    async def json_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail, "status": exc.status_code}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"invalid request: {problems}", "status": 422}, status_code=422)

    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` with several workers: settings come from ``CARPARTS_*`` variables."""
    sizes = os.environ.get("CARPARTS_INPUT_SIZE")
    return create_app(
        model=os.environ.get("CARPARTS_MODEL") or None,
        backend=os.environ.get("CARPARTS_BACKEND", "torch"),
        max_upload_mb=float(os.environ.get("CARPARTS_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB)),
        tta=os.environ.get("CARPARTS_TTA") == "1",
        input_size=[int(size) for size in sizes.split(",")] if sizes else None,
    )


def serve(
    model: str | None, host: str, port: int, backend: str, workers: int, max_upload_mb: float, tta: bool = False,
    input_size: Sequence[int] | None = None,
) -> None:  # fmt: skip
    """Run uvicorn. One worker serves the model loaded here; with several, each worker process loads it once
    through :func:`app_from_env`, after this process has loaded it to fail fast, in one line, on a bad model."""
    import uvicorn

    predictor = load_predictor(model, backend, tta=tta, input_size=input_size)
    if workers == 1:
        app = create_app(backend=backend, max_upload_mb=max_upload_mb, predictor=predictor)
        uvicorn.run(app, host=host, port=port)
        return
    os.environ.update(CARPARTS_BACKEND=backend, CARPARTS_MAX_UPLOAD_MB=str(max_upload_mb), CARPARTS_TTA=str(int(tta)))
    if input_size:
        os.environ["CARPARTS_INPUT_SIZE"] = ",".join(str(size) for size in input_size)
    if model:  # absolute paths, each member of an ensemble
        os.environ["CARPARTS_MODEL"] = ",".join(str(Path(m).resolve()) for m in split_models(model))
    del predictor  # the workers load their own
    uvicorn.run("carparts.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers)
