"""The per-part record every output carries (files, the Ray engine, ``/v1/segment``, each car's parts): made here
only, so a new per-part field is one change in :func:`part_record`."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from carparts.classes import Taxonomy


def part_record(
    taxonomy: Taxonomy, class_id: int, pixels: int, bbox: list[int], confidence: float | None = None
) -> dict[str, Any]:
    """One part present in a mask (or in one car of it): class id, name, pixel count, bbox ``[x, y, w, h]`` and,
    when the prediction has probabilities, ``confidence``: the mean calibrated probability over its pixels."""
    record = {"class_id": int(class_id), "name": taxonomy.names[class_id], "pixels": int(pixels), "bbox": bbox}
    if confidence is not None:
        record["confidence"] = round(float(confidence), 4)
    return record


def confidence_sums(labels: np.ndarray, confidence: np.ndarray, size: int) -> np.ndarray:
    """(size,) float64 sum of ``confidence`` over the pixels of each value of the integer ``labels``."""
    return np.bincount(labels.ravel(), weights=confidence.ravel(), minlength=size)


def mean_confidence(mask: np.ndarray, confidence: np.ndarray | None) -> float | None:
    """The photo's overall confidence: mean calibrated probability over the pixels predicted as parts (background
    left out, so a photo is not called confident for its empty sky); None without probabilities or parts."""
    if confidence is None:
        return None
    car = mask > 0
    return round(float(confidence[car].mean()), 4) if car.any() else None


def class_counts(mask: np.ndarray) -> np.ndarray:
    """(256,) int64 pixel count of every value of a uint8 ``mask``."""
    # OpenCV's histogram is several times faster than np.bincount; its float32 bins are exact up to 2**24, so
    # it counts slices of at most that many pixels
    rows = max(1, 2**24 // max(1, mask.shape[1]))
    counts = np.zeros(256, dtype=np.int64)
    for top in range(0, mask.shape[0], rows):
        counts += cv2.calcHist([mask[top : top + rows]], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    return counts


def part_summary(mask: np.ndarray, taxonomy: Taxonomy, confidence: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Every part present in the photo: :func:`part_record` (with its confidence when ``confidence``, the (H, W)
    probability map, is given) plus ``share``, its share of all car pixels."""
    counts = class_counts(mask)
    sums = None if confidence is None else confidence_sums(mask, confidence, 256)
    car_pixels = int(counts[1:].sum())
    boxes = ndimage.find_objects(mask)  # one pass: boxes[k - 1] bounds class k, None when absent
    parts = []
    for index in np.flatnonzero(counts[1:]) + 1:
        rows, cols = boxes[index - 1]
        bbox = [cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start]
        mean = None if sums is None else sums[index] / counts[index]
        record = part_record(taxonomy, int(index), int(counts[index]), bbox, mean)
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
