"""The per-part record every output carries (files, the Ray engine, ``/v1/segment``, each car's parts): made here
only, so a new per-part field is one change in :func:`part_record`."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from carparts.classes import Taxonomy


def part_record(taxonomy: Taxonomy, class_id: int, pixels: int, bbox: list[int]) -> dict[str, Any]:
    """One part present in a mask (or in one car of it): class id, name, pixel count and bbox ``[x, y, w, h]``."""
    return {"class_id": int(class_id), "name": taxonomy.names[class_id], "pixels": int(pixels), "bbox": bbox}


def class_counts(mask: np.ndarray) -> np.ndarray:
    """(256,) int64 pixel count of every value of a uint8 ``mask``."""
    # OpenCV's histogram is several times faster than np.bincount; its float32 bins are exact up to 2**24, so
    # it counts slices of at most that many pixels
    rows = max(1, 2**24 // max(1, mask.shape[1]))
    counts = np.zeros(256, dtype=np.int64)
    for top in range(0, mask.shape[0], rows):
        counts += cv2.calcHist([mask[top : top + rows]], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    return counts


def part_summary(mask: np.ndarray, taxonomy: Taxonomy) -> list[dict[str, Any]]:
    """Every part present in the photo: :func:`part_record` plus ``share``, its share of all car pixels."""
    counts = class_counts(mask)
    car_pixels = int(counts[1:].sum())
    boxes = ndimage.find_objects(mask)  # one pass: boxes[k - 1] bounds class k, None when absent
    parts = []
    for index in np.flatnonzero(counts[1:]) + 1:
        rows, cols = boxes[index - 1]
        bbox = [cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start]
        record = part_record(taxonomy, int(index), int(counts[index]), bbox)
        record["share"] = round(int(counts[index]) / car_pixels, 6)
        parts.append(record)
    return parts


def part_polygons(mask: np.ndarray, tolerance: float = 1.0) -> dict[int, list[list[int]]]:
    """Outer outlines of each class present, as COCO-style flat ``[x0, y0, x1, y1, ...]`` polygons.

    Outlines are simplified to within ``tolerance`` px (Douglas-Peucker) to keep the JSON small.
    """
    outlines: dict[int, list[list[int]]] = {}
    for index in np.unique(mask):
        if index == 0:
            continue
        contours, _ = cv2.findContours((mask == index).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        simplified = [cv2.approxPolyDP(c, tolerance, True).reshape(-1) for c in contours]
        outlines[int(index)] = [c.astype(int).tolist() for c in simplified if len(c) >= 6]
    return outlines
