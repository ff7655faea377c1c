import math

import numpy as np
import torch

from carparts.metrics import (
    BoundaryErrors,
    ConfusionMatrix,
    bootstrap_interval,
    format_table,
    miou_parts_batch,
    near_boundary,
)


def test_confusion_matrix_and_derived_metrics_by_hand():
    target = np.array([[0, 0, 1, 1], [2, 2, 2, 0]])
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])
    cm = ConfusionMatrix(4)
    cm.update(target, pred)
    assert cm.mat.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    iou = cm.iou()
    assert iou[0] == 2 / 4 and iou[1] == 2 / 3 and iou[2] == 2 / 3
    assert math.isnan(iou[3])  # absent from truth and prediction: absent, never 1.0
    dice = cm.dice()
    assert dice[1] == 4 / 5 and dice[2] == 4 / 5
    assert cm.pixel_accuracy() == 6 / 8
    assert cm.micro_iou() == 6 / (6 + 2 + 2)  # TP 6; each wrong pixel is one FP and one FN
    summary = cm.summary(["bg", "a", "b", "c"])
    assert summary["miou_parts"] == (2 / 3 + 2 / 3) / 2
    assert summary["miou_all"] == (0.5 + 2 / 3 + 2 / 3) / 3
    assert summary["per_class"]["c"]["iou"] is None
    assert "absent" in format_table(summary)


def test_matrix_accumulates_over_images():
    cm = ConfusionMatrix(2)
    cm.update(np.array([1, 1]), np.array([1, 0]))
    cm.update(np.array([0, 1]), np.array([0, 1]))
    assert cm.mat.tolist() == [[1, 0], [1, 2]]
    cm.reset()
    assert int(cm.mat.sum()) == 0


def test_out_of_range_target_is_ignored():
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 1, 255]), np.array([0, 1, 1]))
    assert int(cm.mat.sum()) == 2


def test_left_right_confusion():
    cm = ConfusionMatrix(3)  # 1 = left door, 2 = right door
    cm.update(np.array([1, 1, 1, 1, 2, 2, 2, 2, 2, 2]), np.array([1, 1, 1, 2, 2, 2, 2, 2, 1, 0]))
    assert cm.left_right_confusion([(1, 2)]) == 2 / 10


def test_confused_pairs_rank_part_to_part_shares_and_leave_background_out():
    # truth a (4 px): 1 predicted as b, 1 as background; truth b (2 px): 1 predicted as a; background -> c ignored
    target = np.array([1, 1, 1, 1, 2, 2, 0, 0])
    pred = np.array([1, 1, 2, 0, 2, 1, 3, 0])
    cm = ConfusionMatrix(4)
    cm.update(target, pred)
    pairs = cm.confused_pairs(["bg", "a", "b", "c"])
    assert pairs == [
        {"truth": "b", "predicted": "a", "share": 0.5, "pixels": 1},
        {"truth": "a", "predicted": "b", "share": 0.25, "pixels": 1},
    ]
    summary = cm.summary(["bg", "a", "b", "c"])
    assert summary["confused_pairs"] == pairs
    assert "b -> a 50.0%" in format_table(summary)
    assert cm.confused_pairs(["bg", "a", "b", "c"], n=1) == pairs[:1]


def test_confused_pairs_name_the_images_their_pixels_come_from():
    # truth a -> b: 3 px from one.jpg, 1 px from two.jpg, none from three.jpg
    images = {
        "one.jpg": (np.array([1, 1, 1, 2]), np.array([2, 2, 2, 2])),
        "two.jpg": (np.array([1, 1, 2]), np.array([2, 1, 2])),
        "three.jpg": (np.array([1, 2]), np.array([1, 2])),
    }
    total, per_image = ConfusionMatrix(3), {}
    for name, (target, pred) in images.items():
        cm = ConfusionMatrix(3)
        cm.update(target, pred)
        total.mat += cm.mat
        per_image[name] = cm.mat.numpy()
    summary = total.summary(["bg", "a", "b"], per_image=per_image)
    (pair,) = summary["confused_pairs"]
    assert pair["images"] == [{"file_name": "one.jpg", "pixels": 3}, {"file_name": "two.jpg", "pixels": 1}]
    assert "a -> b 66.7% (75% from one.jpg)" in format_table(summary)
    assert "images" not in total.confused_pairs(["bg", "a", "b"])[0]


def test_near_boundary_marks_a_band_around_class_changes_and_not_the_image_edge():
    truth = np.zeros((40, 40), np.uint8)
    truth[10:30, 10:30] = 1  # a 20 px square; diagonal 56.6 px, so a 0.05 band is 3 px
    near = near_boundary(truth, band=0.05)
    assert near[20, 10] and near[20, 7] and near[20, 12]  # on the edge, 3 px outside, 2 px inside
    assert not near[20, 20] and not near[20, 2]  # the square's centre, the background far from it
    assert not near[0].any()  # the image's own edge is no boundary
    assert not near_boundary(np.zeros((8, 8), np.uint8)).any()


def test_boundary_errors_split_outline_errors_from_region_errors():
    truth = np.zeros((40, 40), np.uint8)
    truth[10:30, 10:30] = 1
    truth[10:30, 30:36] = 2
    pred = np.roll(truth, 1, axis=1)  # every outline 1 px off: boundary errors only
    pred[18:22, 18:22] = 2  # a 16 px patch deep inside part 1 called part 2: a region error
    errors = BoundaryErrors(3, band=0.05)
    errors.update(truth, pred, "car.jpg")
    result = errors.to_dict(["bg", "a", "b"])
    wrong = int((truth != pred).sum())
    assert result["wrong_near_boundary"] == (wrong - 16) / wrong
    assert result["band_pixels"] == near_boundary(truth, 0.05).mean()
    (pair,) = result["confused_pairs_interior"]
    assert (pair["truth"], pair["predicted"], pair["pixels"]) == ("a", "b", 16)
    assert pair["images"] == [{"file_name": "car.jpg", "pixels": 16}]
    # away from the boundaries: part a keeps all but the patch; thin part b lies wholly in the band, so its only
    # interior pixels are the 16 wrongly called b (IoU 0)
    inside_a = int((~near_boundary(truth, 0.05) & (truth == 1)).sum())
    assert not (~near_boundary(truth, 0.05) & (truth == 2)).any()
    assert math.isclose(result["miou_parts_interior"], ((inside_a - 16) / inside_a + 0.0) / 2)
    summary = {"per_class": {}, "boundary": result}
    assert "of the wrong pixels lie within 5.0% of the image diagonal" in format_table(summary)
    assert "a -> b" in format_table(summary)


def random_matrix(rng: np.random.Generator, n: int = 5) -> np.ndarray:
    mat = rng.integers(0, 50, size=(n, n)) * (rng.random((n, n)) < 0.5)
    mat[3] = 0  # class 3 absent from the truth...
    mat[:, 3] = 0  # ...and from the predictions: left out of the mean
    return mat


def test_part_miou_of_a_stack_of_matrices_is_the_confusion_matrix_figure():
    rng = np.random.default_rng(0)
    mats = np.stack([random_matrix(rng) for _ in range(4)])
    for mat, score in zip(mats, miou_parts_batch(mats.astype(float)), strict=True):
        cm = ConfusionMatrix(5)
        cm.mat += torch.as_tensor(mat)
        assert score == cm.summary([str(i) for i in range(5)])["miou_parts"]


def test_bootstrap_interval_spans_the_images_sampling_noise():
    rng = np.random.default_rng(1)
    same = {f"{i}.jpg": random_matrix(np.random.default_rng(7)) for i in range(6)}
    cm = ConfusionMatrix(5)
    cm.mat += torch.as_tensor(same["0.jpg"])
    low, high = bootstrap_interval(same)["miou_parts"]  # identical images: any draw scores the same
    assert low == high == round(cm.summary([str(i) for i in range(5)])["miou_parts"], 4)
    varied = {f"{i}.jpg": random_matrix(rng) for i in range(20)}
    interval = bootstrap_interval(varied)
    low, high = interval["miou_parts"]
    total = miou_parts_batch(np.sum(list(varied.values()), axis=0).astype(float))
    assert low < total < high and interval["level"] == 0.95
    assert bootstrap_interval(varied) == interval  # seeded: the same images give the same interval
    wide = bootstrap_interval(dict(list(varied.items())[:5]))["miou_parts"]
    assert wide[1] - wide[0] > high - low  # fewer images, more noise
    assert bootstrap_interval({"one.jpg": same["0.jpg"]}) is None


def test_label_checks_list_the_annotations_the_model_calls_another_part():
    from carparts.classes import CARPARTS
    from carparts.metrics import LabelChecks, label_check_text

    idx = {name: i for i, name in enumerate(CARPARTS.names)}
    truth, pred = np.zeros((20, 40), np.uint8), np.zeros((20, 40), np.uint8)
    confidence = np.full((20, 40), 0.9, np.float32)

    def part(ann_id, name, rows, cols, called=None, cover=1.0):
        own = np.zeros_like(truth, dtype=bool)
        own[rows, cols] = True
        truth[own] = idx[name]
        pred[own] = idx[name]
        cells = np.flatnonzero(own.ravel())
        pred.ravel()[cells[: round(cover * len(cells))]] = idx[called or name]
        return {"id": ann_id}, idx[name], own

    annotations = [
        part(1, "back_right_light", slice(0, 10), slice(0, 10), called="back_left_light"),  # a side slip
        part(2, "front_glass", slice(0, 10), slice(10, 20), called="hood", cover=0.8),  # another part, 80 %
        part(3, "trunk", slice(0, 10), slice(20, 30), called="tailgate", cover=0.4),  # mostly right: not listed
        part(4, "front_bumper", slice(10, 20), slice(0, 10)),  # right where it is the truth...
        part(5, "front_left_light", slice(10, 16), slice(0, 10)),  # ...under a light painted over 60 % of it
        part(6, "wheel", slice(10, 12), slice(30, 32), called="trunk"),  # 4 px: too small to judge
        part(7, "left_mirror", slice(10, 20), slice(34, 40), called="background"),  # missed: the model's error
    ]
    confidence[:10, 10:20] = 0.6
    checks = LabelChecks(CARPARTS.names, CARPARTS.flip_permutation, min_pixels=10)
    checks.update("a.jpg", annotations, truth, pred, confidence)
    listed = checks.to_list()
    assert [(c["annotation_id"], c["label"], c["predicted"], c["mirror"]) for c in listed] == [
        (1, "back_right_light", "back_left_light", True),
        (2, "front_glass", "hood", False),
    ]
    assert (listed[0]["share"], listed[0]["confidence"], listed[0]["pixels"]) == (1.0, 0.9, 100)
    assert (listed[1]["share"], listed[1]["confidence"]) == (0.8, 0.6)
    assert label_check_text(listed[:1]) == (
        "a.jpg #1 back_right_light -> back_left_light (100% of it, confidence 0.90, the other side)"
    )
