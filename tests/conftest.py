"""Shared fixtures: tiny synthetic COCO data sets and tiny saved models, made fresh by each test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carparts.classes import CARPARTS

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "carparts" / "trainingset"

# the data set's COCO categories, as ../shared/data/carparts/SOURCE.md lists them (not derived from the code)
CATEGORIES = [
    {"id": 1, "name": "_background_"}, {"id": 2, "name": "back_bumper"}, {"id": 3, "name": "back_glass"},
    {"id": 4, "name": "back_left_door"}, {"id": 5, "name": "back_left_light"}, {"id": 6, "name": "back_right_door"},
    {"id": 7, "name": "back_right_light"}, {"id": 8, "name": "front_bumper"}, {"id": 9, "name": "front_glass"},
    {"id": 10, "name": "front_left_door"}, {"id": 11, "name": "front_left_light"},
    {"id": 12, "name": "front_right_door"}, {"id": 13, "name": "front_right_light"}, {"id": 14, "name": "hood"},
    {"id": 15, "name": "left_mirror"}, {"id": 16, "name": "right_mirror"}, {"id": 17, "name": "tailgate"},
    {"id": 18, "name": "trunk"}, {"id": 19, "name": "wheel"},
]  # fmt: skip


def rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    """A rectangle as a COCO polygon."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def write_coco(root: Path, images: list[dict], annotations: list[dict], categories=None) -> Path:
    """Write ``annotations.json`` plus coloured images in ``JPEGImages/``; return the folder."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for img in images:
        pixels = rng.integers(0, 255, (img["height"], img["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / img["file_name"], quality=95)
    coco = {"images": images, "annotations": annotations, "categories": categories or CATEGORIES}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def make_tiny_coco(root: Path, n: int = 6, width: int = 64, height: int = 48) -> Path:
    """``n`` images, each with a large front-left door and a small front-left light overlapping it."""
    images, annotations = [], []
    for k in range(n):
        images.append({"id": k + 1, "file_name": f"img{k}.jpg", "width": width, "height": height})
        annotations += [
            {"id": 2 * k + 1, "image_id": k + 1, "category_id": 11, "segmentation": [rect(4, 20, 20, 30)],
             "iscrowd": 0, "area": 160, "bbox": [4, 20, 16, 10]},
            {"id": 2 * k + 2, "image_id": k + 1, "category_id": 10, "segmentation": [rect(2, 10, 40, 40)],
             "iscrowd": 0, "area": 1140, "bbox": [2, 10, 38, 30]},
        ]  # fmt: skip
    return write_coco(root, images, annotations)


def tiny_train_config(data: str | Path, runs: Path, **overrides):
    """The fast preset shrunk for a test training on tiny data: 1 epoch, batch 2, 64 px, no ImageNet weights, no
    loader workers, a third of the images held out; ``overrides`` change any of it."""
    from carparts.config import load_config

    settings = dict(
        data=str(data), out=str(runs), epochs=1, batch_size=2, img_size=64, encoder_weights="none", workers=0,
        val_fraction=0.34,
    )  # fmt: skip
    return load_config(preset="fast", overrides=settings | overrides)


@pytest.fixture
def tiny_coco(tmp_path: Path) -> Path:
    return make_tiny_coco(tmp_path / "data")


def make_tiny_model(folder: Path) -> Path:
    """A seeded, randomly initialised FPN + Lite0 saved as a model folder, input size 64.

    Seeded so that every run paints the same parts: several part classes on the flat-colour photos the tests
    send (test_models checks it), never an empty parts list.
    """
    import torch

    from carparts.models import ModelInfo, build_model, save_model

    with torch.random.fork_rng():  # the seed stays local to this model
        torch.manual_seed(0)
        model = build_model("fpn", "tf_efficientnet_lite0", CARPARTS.num_classes, encoder_weights="none")
    info = ModelInfo(arch="fpn", encoder="tf_efficientnet_lite0", taxonomy=CARPARTS, input_size=64, name="tiny")
    return save_model(model, info, folder)


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    return make_tiny_model(tmp_path / "model")
