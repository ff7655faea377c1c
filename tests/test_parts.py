import numpy as np

from carparts.classes import CARPARTS
from carparts.parts import class_counts, part_summary

LEFT, RIGHT = CARPARTS.names.index("back_left_door"), CARPARTS.names.index("back_right_door")


def test_part_summary_counts_shares_and_bboxes():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[2:4, 3:8] = LEFT  # 10 px
    mask[5, 5] = RIGHT  # 1 px... plus 9 more below
    mask[6:9, 1:4] = RIGHT
    parts = {p["name"]: p for p in part_summary(mask, CARPARTS)}
    assert parts["back_left_door"] == {"class_id": LEFT, "name": "back_left_door", "pixels": 10, "share": 0.5,
                                       "bbox": [3, 2, 5, 2]}  # fmt: skip
    assert parts["back_right_door"]["bbox"] == [1, 5, 5, 4] and parts["back_right_door"]["pixels"] == 10


def test_class_counts_are_exact_past_float32_precision():
    mask = np.ones((4097, 4097), dtype=np.uint8)  # 2**24 + 8193 pixels: float32 counting stalls at 2**24
    mask[0, :5] = 7
    counts = class_counts(mask)
    assert counts.dtype == np.int64 and counts[1] == 4097**2 - 5 and counts[7] == 5 and counts.sum() == 4097**2
