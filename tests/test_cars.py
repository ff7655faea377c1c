import base64
import io
import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image
from scipy import ndimage

from carparts.cars import (
    EXPECTED_PARTS,
    VIEWPOINTS,
    GroupingParams,
    car_mask,
    cars_json,
    find_cars,
    instance_gaps,
    not_visible,
    part_instances,
    viewpoint,
    viewpoint_steps,
)
from carparts.cars_eval import evaluate_cars, match_cars, read_labels, score_image, side_by_side
from carparts.classes import CARPARTS, mirror_name
from carparts.data import load_coco
from carparts.errors import CarpartsError
from carparts.models import ModelInfo
from carparts.predict import Predictor
from carparts.results import Result
from tests.conftest import rect, write_coco

# Boxes (name, x0, y0, x1, y1) of synthetic cars, painted in order (later boxes on top, as in the data set, where
# lights lie on bumpers). Gaps are left on purpose: in the annotations fenders, pillars and roof are no class, so a
# car's parts are often apart.
FRONT_VIEW = [  # about 100 x 80 px; the car's left on the image's right
    ("front_glass", 15, 0, 85, 25), ("hood", 10, 25, 90, 40), ("front_bumper", 5, 40, 95, 70),
    ("front_right_light", 8, 42, 22, 50), ("front_left_light", 78, 42, 92, 50),
    ("right_mirror", 0, 16, 9, 25), ("left_mirror", 91, 16, 100, 25), ("wheel", 10, 72, 25, 82),
    ("wheel", 75, 72, 90, 82),
]  # fmt: skip
LEFT_VIEW = [  # about 200 x 75 px; front on the image's left
    ("front_bumper", 0, 30, 12, 55), ("front_left_light", 2, 30, 14, 38), ("front_left_door", 60, 10, 110, 60),
    ("back_left_door", 110, 10, 155, 60), ("left_mirror", 50, 22, 58, 30), ("back_bumper", 185, 38, 200, 55),
    ("back_left_light", 188, 28, 200, 38), ("wheel", 22, 50, 48, 76), ("wheel", 160, 50, 186, 76),
]  # fmt: skip
FRONT_LEFT_VIEW = [  # about 170 x 90 px: the front on the image's left, the left doors on its right
    ("front_glass", 10, 0, 70, 20), ("hood", 5, 20, 75, 38), ("front_bumper", 0, 38, 80, 68),
    ("front_right_light", 2, 40, 14, 48), ("front_left_light", 62, 40, 78, 48), ("left_mirror", 84, 12, 92, 20),
    ("front_left_door", 92, 5, 130, 62), ("back_left_door", 130, 8, 165, 60), ("wheel", 60, 66, 80, 90),
    ("wheel", 140, 58, 158, 82),
]  # fmt: skip


def index(name: str) -> int:
    return CARPARTS.names.index(name)


def paint(mask: np.ndarray, boxes, x: int, y: int, mirror: bool = False) -> np.ndarray:
    """Paint a synthetic car with its top-left corner at (x, y); ``mirror`` flips it (left <-> right parts)."""
    width = max(b[3] for b in boxes)
    for name, x0, y0, x1, y1 in boxes:
        if mirror:
            name, x0, x1 = mirror_name(name), width - x1, width - x0
        mask[y + y0 : y + y1, x + x0 : x + x1] = index(name)
    return mask


def names_of(car) -> set[str]:
    return {p["name"] for p in car.parts}


def part(name: str, pixels: int, x: int, w: int = 20) -> dict:
    """A hand-made part: ``pixels`` in a box starting at image column ``x``."""
    return {"name": name, "pixels": pixels, "bbox": [x, 0, w, 10]}


def mirrored(parts: list[dict], width: int = 400) -> list[dict]:
    return [{**p, "name": mirror_name(p["name"]), "bbox": [width - p["bbox"][0] - p["bbox"][2], *p["bbox"][1:]]}
            for p in parts]  # fmt: skip


# --- grouping ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gap", [8, 40])  # closer, a mirror may go to the neighbour (docs/cars.md)
def test_two_cars_side_by_side_are_split_with_their_own_parts(gap):
    mask = np.zeros((120, 260), dtype=np.uint8)
    paint(mask, FRONT_VIEW, 10, 20)
    paint(mask, FRONT_VIEW, 110 + gap, 20)
    labels = car_mask(mask, CARPARTS)
    cars = find_cars(mask, CARPARTS, labels)
    assert [c.id for c in cars] == [1, 2] and labels.max() == 2
    expected = {name for name, *_ in FRONT_VIEW}
    assert names_of(cars[0]) == names_of(cars[1]) == expected
    assert cars[0].bbox == [10, 20, 100, 82] and cars[1].bbox == [110 + gap, 20, 100, 82]  # numbered left to right
    assert (labels[:, : 110 + gap][mask[:, : 110 + gap] > 0] == 1).all() and (labels[:, 110 + gap :] != 1).all()
    assert ((labels > 0) == (mask > 0)).all() and sum(c.pixels for c in cars) == int((mask > 0).sum())
    assert [c.viewpoint for c in cars] == ["front", "front"]
    wheels = [p for p in cars[1].parts if p["name"] == "wheel"][0]
    assert wheels["pixels"] == 2 * 15 * 10 and wheels["bbox"] == [110 + gap + 10, 92, 80, 10]


def test_two_profiles_nose_to_tail_are_two_cars():
    # 20 px apart; cars closer than the gaps inside them (here 16 px from headlight to wheel) may trade end parts
    mask = np.zeros((100, 440), dtype=np.uint8)
    paint(mask, LEFT_VIEW, 5, 10)
    paint(mask, LEFT_VIEW, 225, 10)
    cars = find_cars(mask, CARPARTS)
    assert len(cars) == 2 and [c.viewpoint for c in cars] == ["left", "left"]
    assert all(names_of(c) == {name for name, *_ in LEFT_VIEW} for c in cars)


def test_a_cars_scattered_parts_stay_one_car_and_specks_far_away_are_no_car():
    mask = paint(np.zeros((200, 300), dtype=np.uint8), LEFT_VIEW, 40, 40)
    mask[190:193, 5:8] = index("hood")  # a 9-pixel speck in a corner
    cars = find_cars(mask, CARPARTS)
    assert len(cars) == 1 and cars[0].bbox == [40, 50, 200, 66] and cars[0].viewpoint == "left"
    assert "hood" not in names_of(cars[0]) and car_mask(mask, CARPARTS)[191, 6] == 0


def test_mixed_viewpoints_and_a_small_car_behind():
    mask = np.zeros((160, 420), dtype=np.uint8)
    paint(mask, FRONT_LEFT_VIEW, 10, 40)
    paint(mask, FRONT_LEFT_VIEW, 220, 40, mirror=True)
    cars = find_cars(mask, CARPARTS)
    assert [c.viewpoint for c in cars] == ["front-left", "front-right"]
    small = np.zeros((160, 420), dtype=np.uint8)
    paint(small, FRONT_LEFT_VIEW, 10, 40)
    small[2:12, 300:330] = index("hood")  # a car far behind, under a tenth of the first one's pixels
    small[2:10, 290:300] = index("front_glass")
    assert len(find_cars(small, CARPARTS)) == 1


def test_grouping_at_reduced_size_maps_back_to_every_pixel():
    mask = np.zeros((120, 260), dtype=np.uint8)
    paint(mask, FRONT_VIEW, 10, 20)
    paint(mask, FRONT_VIEW, 150, 20)
    big = np.kron(mask, np.ones((4, 4), dtype=np.uint8))  # 480 x 1040, grouped at 256 px
    labels = car_mask(big, CARPARTS, GroupingParams(work_side=256))
    assert labels.shape == big.shape and ((labels > 0) == (big > 0)).all()
    assert set(np.unique(labels[:, :560])) == {0, 1} and set(np.unique(labels[:, 560:])) == {0, 2}


def test_downscaled_grouping_finds_the_full_size_cars_with_exact_boxes_and_pixels():
    mask = np.kron(two_car_scene(), np.ones((5, 5), dtype=np.uint8))  # 640 x 1600: grouped at 512 x 205
    mask[3, 700] = mask[630:632, 1590:1593] = index("hood")  # specks: dust, no car's
    mask[80:600, 1100] = index("front_left_door")  # a 1-px line inside the second car, lost when downscaling
    cars = find_cars(mask, CARPARTS)
    whole = find_cars(mask, CARPARTS, params=GroupingParams(work_side=max(mask.shape)))
    assert [c.to_dict() for c in cars] == [c.to_dict() for c in whole] and len(cars) == 2
    labels = car_mask(mask, CARPARTS)

    def pixels_and_box(binary: np.ndarray) -> tuple[int, list[int]]:
        ys, xs = np.nonzero(binary)
        return len(xs), [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]

    for car in cars:
        assert (car.pixels, car.bbox) == pixels_and_box(labels == car.id)
        for found in car.parts:
            assert (found["pixels"], found["bbox"]) == pixels_and_box((labels == car.id) & (mask == found["class_id"]))
    assert labels[3, 700] == 0 and (labels[80:600, 1100] == 2).all()


def test_part_instances_are_the_connected_pieces_of_each_part():
    mask = np.zeros((40, 60), dtype=np.uint8)
    mask[2:6, 3:9] = mask[20:30, 40:50] = index("hood")  # two pieces of one part
    mask[6, 9] = index("hood")  # touches the first piece at a corner: 8-connected
    mask[10:15, 10:30] = index("wheel")
    mask[12, 12] = index("front_bumper")
    labels, classes, boxes = part_instances(mask, CARPARTS.num_classes)
    assert len(classes) == 4 and labels.max() == 4
    for k, (cls, (x0, y0, x1, y1)) in enumerate(zip(classes, boxes, strict=True), start=1):
        ys, xs = np.nonzero(labels == k)
        assert (mask[ys, xs] == cls).all() and [x0, y0, x1, y1] == [xs.min(), ys.min(), xs.max(), ys.max()]
    assert ndimage.label(mask == index("hood"), structure=np.ones((3, 3)))[1] == list(classes).count(index("hood"))
    assert ((labels > 0) == (mask > 0)).all()


def test_instance_gaps_match_distance_transforms_of_the_whole_image():
    labels = np.zeros((90, 120), dtype=np.int32)
    labels[30:40, 30:45], labels[30:50, 47:60], labels[60:62, 35:80], labels[42, 40] = 1, 2, 3, 4
    expected = np.zeros((4, 4))
    for i in range(4):
        distance = cv2.distanceTransform((labels != i + 1).astype(np.uint8), cv2.DIST_L2, 5)
        expected[i] = [distance[labels == j + 1].min() for j in range(4)]
    assert np.array_equal(instance_gaps(labels, 4), np.minimum(expected, expected.T))


def test_no_parts_no_cars():
    empty = np.zeros((30, 40), dtype=np.uint8)
    assert find_cars(empty, CARPARTS) == [] and not car_mask(empty, CARPARTS).any()


# --- viewpoint --------------------------------------------------------------------------------------------------

FRONT = [part("front_glass", 2000, 160, 80), part("hood", 3000, 150, 100), part("front_bumper", 3000, 140, 120),
         part("front_right_light", 300, 140), part("front_left_light", 300, 240), part("left_mirror", 100, 262),
         part("right_mirror", 100, 118), part("wheel", 400, 150, 100)]  # fmt: skip
REAR = [part("back_glass", 2000, 160, 80), part("trunk", 2500, 150, 100), part("back_bumper", 3000, 140, 120),
        part("back_left_light", 300, 140), part("back_right_light", 300, 240)]  # fmt: skip
LEFT = [part("front_left_light", 200, 10), part("front_bumper", 150, 5), part("front_left_door", 4000, 110, 80),
        part("back_left_door", 3500, 190, 80), part("left_mirror", 200, 100), part("back_left_light", 200, 370),
        part("wheel", 2000, 60, 280)]  # fmt: skip
FRONT_LEFT = [part("hood", 2500, 20, 100), part("front_bumper", 2500, 10, 120), part("front_left_light", 400, 100),
              part("front_left_door", 2000, 180, 60), part("back_left_door", 1500, 240, 60),
              part("left_mirror", 200, 150)]  # fmt: skip
REAR_LEFT = [part("back_glass", 2000, 260, 90), part("back_bumper", 2000, 250, 110), part("back_left_light", 300, 250),
             part("front_left_door", 1500, 60, 70), part("back_left_door", 1500, 130, 70)]  # fmt: skip
LAYOUTS = {"front": FRONT, "rear": REAR, "left": LEFT, "front-left": FRONT_LEFT, "rear-left": REAR_LEFT}


@pytest.mark.parametrize("view", sorted(LAYOUTS))
def test_viewpoint_of_hand_made_layouts_and_their_mirror_images(view):
    assert viewpoint(LAYOUTS[view]) == view
    assert viewpoint(mirrored(LAYOUTS[view])) == mirror_name(view)  # right, front-right, rear-right


def test_all_eight_viewpoints_are_reached():
    reached = {viewpoint(p) for p in LAYOUTS.values()} | {viewpoint(mirrored(p)) for p in LAYOUTS.values()}
    assert reached == set(VIEWPOINTS)


def test_layout_beats_swapped_left_right_classes():
    # a model that calls the left doors "right" still gets the side from where the front lies
    swapped = [{**p, "name": mirror_name(p["name"])} if "door" in p["name"] else p for p in FRONT_LEFT]
    assert viewpoint(swapped) == "front-left"


def test_classes_decide_when_the_layout_cannot():
    doors_only = [part("front_right_door", 3000, 100), part("back_right_door", 3000, 200)]
    assert viewpoint(doors_only) == "right"
    assert viewpoint([part("wheel", 500, 10), part("wheel", 500, 300)]) is None and viewpoint([]) is None


def test_a_side_sliver_is_still_a_front_view_and_a_face_sliver_still_a_profile():
    assert viewpoint(FRONT + [part("front_left_door", 300, 270)]) == "front"  # 300 / 9000 side pixels
    assert viewpoint(FRONT + [part("front_left_door", 3000, 270)]) == "front-left"
    assert viewpoint(LEFT + [part("hood", 800, 10)]) == "left"


def test_expected_parts_that_are_not_visible():
    assert not_visible("front", FRONT) == []
    assert not_visible("front", [p for p in FRONT if p["name"] != "left_mirror"]) == ["left_mirror"]
    assert "right_mirror" in EXPECTED_PARTS["front-right"] and "left_mirror" not in EXPECTED_PARTS["front-right"]
    assert not_visible("rear-right", []) == list(EXPECTED_PARTS["rear-right"]) and not_visible(None, []) == []


def test_viewpoint_steps_go_round_the_car():
    assert viewpoint_steps("front", "front-left") == 1 and viewpoint_steps("front-right", "front-left") == 2
    assert viewpoint_steps("rear", "front") == 4 and viewpoint_steps("right", "front-right") == 1


# --- JSON -------------------------------------------------------------------------------------------------------


def check_cars_schema(cars: list[dict], width: int, height: int, confidence: bool = True) -> None:
    """``confidence``: the cars come from a prediction with probabilities, so they and their parts carry one."""
    extra = {"confidence"} if confidence else set()
    for k, car in enumerate(cars, start=1):
        assert set(car) == {"id", "bbox", "pixels", "viewpoint", "parts", "not_visible", *extra} and car["id"] == k
        assert not confidence or 0 < car["confidence"] <= 1
        x, y, w, h = car["bbox"]
        assert all(isinstance(v, int) for v in car["bbox"]) and 0 <= x < x + w <= width and 0 <= y < y + h <= height
        assert car["viewpoint"] is None or car["viewpoint"] in VIEWPOINTS
        assert car["pixels"] == sum(p["pixels"] for p in car["parts"]) > 0
        for p in car["parts"]:
            assert set(p) == {"class_id", "name", "pixels", "bbox", *extra}
            assert not confidence or 0 < p["confidence"] <= 1
            assert CARPARTS.names[p["class_id"]] == p["name"]
        assert all(name in CARPARTS.names for name in car["not_visible"])


def test_cars_json_schema_round_trips():
    mask = paint(np.zeros((120, 360), dtype=np.uint8), FRONT_VIEW, 10, 20)
    paint(mask, [b for b in LEFT_VIEW if b[0] != "back_left_light"], 150, 30)  # a profile 35 px to the right
    cars = json.loads(json.dumps(cars_json(find_cars(mask, CARPARTS))))
    check_cars_schema(cars, 360, 120, confidence=False)  # a mask alone has no probabilities
    assert [c["viewpoint"] for c in cars] == ["front", "left"]
    assert cars[0]["not_visible"] == [] and cars[1]["not_visible"] == ["back_left_light"]


class PaintModel(torch.nn.Module):
    """Confident logits for a fixed class-index mask, resized to whatever input it gets."""

    def __init__(self, mask: np.ndarray):
        super().__init__()
        self.mask = torch.as_tensor(mask, dtype=torch.long)

    def forward(self, x):
        mask = F.interpolate(self.mask[None, None].float(), size=x.shape[-2:], mode="nearest")[0, 0].long()
        return 10.0 * F.one_hot(mask, CARPARTS.num_classes).permute(2, 0, 1)[None].float().repeat(len(x), 1, 1, 1)


SCENE = [(FRONT_VIEW, 10, 20), (FRONT_LEFT_VIEW, 125, 20)]  # 128 x 320 px


def two_car_scene() -> np.ndarray:
    mask = np.zeros((128, 320), dtype=np.uint8)
    for boxes, x, y in SCENE:
        paint(mask, boxes, x, y)
    return mask


def test_predict_json_and_overlay_show_the_cars(tmp_path):
    mask = two_car_scene()
    info = ModelInfo(arch="fpn", encoder="tf_efficientnet_lite0", taxonomy=CARPARTS, input_size=256)
    image = np.full((*mask.shape, 3), 128, dtype=np.uint8)
    Result(image, mask, info, str(tmp_path / "scene.jpg")).save(tmp_path, "scene")
    record = json.loads((tmp_path / "scene.json").read_text())
    check_cars_schema(record["cars"], 320, 128, confidence=False)  # a Result made without probabilities
    assert [c["viewpoint"] for c in record["cars"]] == ["front", "front-left"]
    drawn = np.asarray(Image.open(tmp_path / "scene_overlay.jpg"))[:128, :320].astype(int)
    x, y, w, h = record["cars"][1]["bbox"]
    assert drawn[y + h // 2, x + w - 1].min() > 200  # the box edge is white


def test_serve_returns_cars_and_a_car_mask():
    mask = two_car_scene()
    info = ModelInfo(arch="fpn", encoder="tf_efficientnet_lite0", taxonomy=CARPARTS, input_size=320)
    from carparts.serve.app import create_app

    with TestClient(create_app(predictor=Predictor(PaintModel(mask), info))) as client:
        buffer = io.BytesIO()
        Image.new("RGB", (320, 128), (90, 90, 90)).save(buffer, format="PNG")
        body = client.post("/v1/segment?include_mask=true", content=buffer.getvalue()).json()
    check_cars_schema(body["cars"], 320, 128)
    assert [c["viewpoint"] for c in body["cars"]] == ["front", "front-left"]
    ids = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["cars_mask_png"]))))
    assert ids.shape == (128, 320)
    assert [int((ids == c["id"]).sum()) for c in body["cars"]] == [c["pixels"] for c in body["cars"]]


# --- evaluation -------------------------------------------------------------------------------------------------


def test_match_cars_by_iou():
    truth = np.zeros((10, 20), dtype=np.int32)
    truth[:, :10], truth[:, 10:] = 1, 2
    pred = np.zeros_like(truth)
    pred[:, 12:], pred[:, :3] = 1, 2  # car 1 covers most of true car 2; car 2 too little of true car 1
    assert match_cars(truth, pred) == {2: (1, 0.8)}


def test_score_image_counts_and_matches():
    truth = two_car_scene()
    record = score_image(truth, truth, CARPARTS, ["front", "front-left"])
    assert (record["true_cars"], record["pred_cars"], record["truth_grouped_cars"]) == (2, 2, 2)
    assert [c["pred_viewpoint"] for c in record["cars"]] == ["front", "front-left"]
    one_car = truth.copy()
    one_car[:, 125:] = 0
    record = score_image(truth, one_car, CARPARTS, ["front", "front-right"])
    assert record["pred_cars"] == 1 and [c["pred_viewpoint"] for c in record["cars"]] == ["front", None]


def test_read_labels_rejects_unknown_viewpoints(tmp_path):
    good = tmp_path / "labels.csv"
    good.write_text("file_name,car,viewpoint\na.jpg,2,rear\na.jpg,1,front-left\nb.jpg,1,left\n")
    assert read_labels(good) == {"a.jpg": ["front-left", "rear"], "b.jpg": ["left"]}
    bad = tmp_path / "bad.csv"
    bad.write_text("file_name,car,viewpoint\na.jpg,1,sideways\n")
    with pytest.raises(CarpartsError, match="bad.csv:2: unknown viewpoint 'sideways'"):
        read_labels(bad)


def coco_annotations(scene, image_id: int, first_id: int) -> list[dict]:
    """One rectangle polygon per painted box (COCO rectangles cover the same pixels as the array slices)."""
    anns = []
    for boxes, x, y in scene:
        for name, x0, y0, x1, y1 in boxes:
            anns.append({"id": first_id + len(anns), "image_id": image_id, "category_id": index(name) + 1,
                         "segmentation": [rect(x + x0, y + y0, x + x1, y + y1)], "iscrowd": 0,
                         "area": (x1 - x0) * (y1 - y0), "bbox": [x + x0, y + y0, x1 - x0, y1 - y0]})  # fmt: skip
    return anns


class Oracle:
    """A predictor that returns the annotation mask of each photo (photos told apart by their sizes)."""

    def __init__(self, masks: list[np.ndarray]):
        self.masks = {m.shape: m for m in masks}
        self.info = ModelInfo(arch="fpn", encoder="tf_efficientnet_lite0", taxonomy=CARPARTS, name="oracle")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.masks[image.shape[:2]]


def test_evaluate_cars_on_a_tiny_coco(tmp_path):
    scenes = [(SCENE, 320, 128), ([(LEFT_VIEW, 10, 8)], 220, 90)]
    images, annotations = [], []
    for k, (scene, width, height) in enumerate(scenes):
        images.append({"id": k + 1, "file_name": f"img{k}.jpg", "width": width, "height": height})
        annotations += coco_annotations(scene, k + 1, len(annotations) + 1)
    data = write_coco(tmp_path / "data", images, annotations)
    truths = [load_coco(data).read_mask(i) for i in range(2)]
    assert (truths[0] == two_car_scene()).all()
    labels = tmp_path / "labels.csv"
    labels.write_text("file_name,car,viewpoint\nimg0.jpg,1,front\nimg0.jpg,2,front-left\nimg1.jpg,1,left\n")
    oracle = Oracle([*truths, side_by_side(truths)])
    summary = evaluate_cars(None, data, "all", labels, tmp_path / "out", False, predictor=oracle, pairs=True)
    assert (summary["images"], summary["labelled_images"], summary["true_cars"]) == (2, 2, 3)
    assert summary["car_count_accuracy"] == summary["viewpoint_accuracy"] == summary["cars_matched"] == 1.0
    assert summary["rules_on_truth"] == {"car_count_accuracy": 1.0, "viewpoint_accuracy": 1.0}
    assert summary["viewpoint_confusion"] == {
        "front": {"front": 1},
        "front-left": {"front-left": 1},
        "left": {"left": 1},
    }
    written = json.loads((tmp_path / "out" / "cars.json").read_text())
    assert [i["pred_cars"] for i in written["per_image"]] == [2, 1]
    pairs = written["pairs"]  # the two photos side by side: three cars
    assert (pairs["images"], pairs["true_cars"], pairs["car_count_accuracy"], pairs["viewpoint_accuracy"]) == (
        1,
        3,
        1,
        1,
    )
    assert pairs["per_image"][0]["file_name"] == "img0.jpg+img1.jpg"
    labels.write_text("file_name,car,viewpoint\nimg0.jpg,1,front\nimg0.jpg,2,rear\nimg1.jpg,1,left\n")
    summary = evaluate_cars(None, data, "all", labels, None, False, predictor=Oracle(truths))
    assert summary["viewpoint_accuracy"] == round(2 / 3, 4) and summary["viewpoint_within_one_step"] == round(2 / 3, 4)


def test_evaluate_cars_runs_a_saved_model_without_labels(tiny_model, tiny_coco):
    summary = evaluate_cars(tiny_model, tiny_coco, "val", labels=None, progress=False)
    assert summary["images"] == 1 and summary["labelled_images"] == 0 and summary["true_cars"] == 1
    assert summary["per_image"][0]["cars"][0]["true_viewpoint"] == "left"  # a left door and light, derived


def test_cars_command(tiny_model, tiny_coco, tmp_path, capsys):
    from carparts.cli import main

    args = ["cars", "--data", str(tiny_coco), "--model", str(tiny_model), "--out", str(tmp_path / "out"), "--quiet"]
    assert main([*args, "--labels", "none"]) == 0
    assert "car count right" in capsys.readouterr().out and (tmp_path / "out" / "cars.json").is_file()
    assert main([*args, "--labels", str(tmp_path / "missing.csv")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.csv'}: labels file not found"


def test_each_car_and_its_parts_carry_their_mean_confidence():
    mask = two_car_scene()
    confidence = np.where(mask > 0, 0.9, 0.99).astype(np.float32)
    confidence[:, 160:] = np.where(mask[:, 160:] > 0, 0.5, 0.99)  # the second car is half as sure
    cars = find_cars(mask, CARPARTS, confidence=confidence)
    check_cars_schema(cars_json(cars), 320, 128)
    for car in cars:
        x, y, w, h = car.bbox
        inside = np.zeros_like(mask, dtype=bool)
        inside[y : y + h, x : x + w] = True
        parts = inside & (mask > 0)
        assert car.confidence == pytest.approx(float(confidence[parts].mean()), abs=1e-6)
