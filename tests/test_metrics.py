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
