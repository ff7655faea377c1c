import math

import numpy as np

from carparts.metrics import ConfusionMatrix, format_table


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
