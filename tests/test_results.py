import json

import cv2
import numpy as np
from PIL import Image

from carparts.classes import CARPARTS
from carparts.models import ModelInfo
from carparts.results import Result, colour_mask, overlay

LEFT, RIGHT = CARPARTS.names.index("back_left_door"), CARPARTS.names.index("back_right_door")


def info(size=64):
    return ModelInfo(arch="fpn", encoder="tf_efficientnet_lite0", taxonomy=CARPARTS, input_size=size)


def test_colour_mask_keeps_indices_and_palette():
    mask = np.array([[0, LEFT], [RIGHT, 0]], dtype=np.uint8)
    img = colour_mask(mask, CARPARTS)
    assert img.mode == "P" and (np.asarray(img) == mask).all()
    assert tuple(img.getpalette()[3 * LEFT : 3 * LEFT + 3]) == CARPARTS.colours[LEFT]


def test_written_mask_png_is_a_palette_png_of_class_indices(tmp_path):
    mask = np.arange(CARPARTS.num_classes, dtype=np.uint8).repeat(3)[None].repeat(4, axis=0)
    Result(np.zeros((*mask.shape, 3), np.uint8), mask, info(), "x.jpg").save(tmp_path, "x")
    with Image.open(tmp_path / "x.png") as img:
        assert img.mode == "P" and np.array_equal(np.asarray(img), mask)
        palette = np.asarray(img.getpalette()[: 3 * CARPARTS.num_classes]).reshape(-1, 3)
    assert np.array_equal(palette, CARPARTS.colours)


def test_overlay_blends_every_class_and_keeps_the_background():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 2 * CARPARTS.num_classes, 3), dtype=np.uint8)
    mask = np.arange(CARPARTS.num_classes, dtype=np.uint8).repeat(2)[None].repeat(30, axis=0)
    photo = np.asarray(overlay(image, mask, CARPARTS, alpha=0.4))[:30, : mask.shape[1]]
    painted = np.asarray(CARPARTS.colours, dtype=np.uint8)[mask]
    expected = np.where((mask > 0)[..., None], cv2.addWeighted(image, 0.6, painted, 0.4, 0), image)
    assert np.array_equal(photo, expected)


def test_overlay_has_a_legend_strip():
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    mask = np.zeros((60, 80), dtype=np.uint8)
    mask[:10] = LEFT
    out = overlay(image, mask, CARPARTS)
    assert out.width > 80 and out.height >= 60
    legend = np.asarray(out)[:, 80:]
    assert (legend == CARPARTS.colours[LEFT]).all(-1).any()
    photo = np.asarray(out)[:60, :80].astype(int)
    assert np.abs(photo[5, 5] - np.array(CARPARTS.colours[LEFT]) / 2).max() <= 1  # half photo, half colour
    assert (photo[30:] == 0).all()  # background pixels untouched


def test_a_per_part_field_added_in_one_place_reaches_every_output(tiny_model, tmp_path, monkeypatch):
    """parts.part_record is the one producer of per-part records: files, the Ray engine's worker, /v1/segment
    and each car's parts all carry a field added there."""
    from fastapi.testclient import TestClient

    import carparts.parts
    from carparts.predict import Predictor, predict_paths
    from carparts.scale import SegmentWorker
    from carparts.serve.app import create_app

    plain = carparts.parts.part_record
    monkeypatch.setattr(carparts.parts, "part_record", lambda *args: {**plain(*args), "checked": "by hand"})
    photo = tmp_path / "photos" / "car.jpg"
    photo.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photo)
    predictor = Predictor.from_path(tiny_model)

    predict_paths([str(photo.parent)], predictor, tmp_path / "local", progress=False)
    SegmentWorker(str(tiny_model), "torch", False, str(tmp_path / "ray"), 1)({"image": str(photo), "stem": "car",
                                                                             "location": str(photo)})  # fmt: skip
    with TestClient(create_app(predictor=predictor)) as client:
        answer = client.post("/v1/segment", files={"file": ("car.jpg", photo.read_bytes(), "image/jpeg")}).json()
    records = [json.loads((tmp_path / engine / "car.json").read_text()) for engine in ("local", "ray")] + [answer]
    for record in records:
        assert record["parts"] and all(part["checked"] == "by hand" for part in record["parts"])
        car_parts = [part for car in record["cars"] for part in car["parts"]]
        assert car_parts and all(part["checked"] == "by hand" for part in car_parts)
    assert records[0] == records[1]  # the Ray engine writes what the local one does
