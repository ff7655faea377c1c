"""Predictions as COCO, for labelling tools to pre-label from: each connected part instance of a photo as one COCO
annotation (one polygon, holes kept), and one COCO file for a whole ``predict`` run.

Conventions, chosen for the tools' importers and the project's own loader alike:

- an instance is an 8-connected region of one class (two pixels touching at a corner are one part);
- its outline runs on pixel corners (pixel ``(x, y)`` covers ``[x, x+1) x [y, y+1)``), traced at twice the
  resolution so that every predicted pixel's centre lies inside the polygon, then simplified (Douglas-Peucker)
  to within ``tolerance`` px;
- a hole (background, or another part, inside the instance) is cut out of that same polygon through a zero-width
  slit from the outline, so every annotation is exactly one polygon: COCO polygons cannot hold holes, RLE masks
  would not import into Label Studio, and a slit traversed both ways adds nothing under either fill rule;
- ``bbox`` and ``area`` are the predicted pixels' box and count; ``score`` is their mean calibrated confidence.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from carparts import __version__
from carparts.classes import CARPARTS_NAMES, Taxonomy
from carparts.errors import CarpartsError
from carparts.images import check_output_folder, write_atomic
from carparts.parts import confidence_sums

DEFAULT_TOLERANCE = 1.0
"""Largest distance, in px, between the simplified outline and the traced one (``--coco-tolerance``)."""
CONNECTIVITY = 8
UPSAMPLE = 2  # outlines traced at twice the resolution land on pixel corners (see outline_points)
CARPARTS_BACKGROUND = {"id": 1, "name": "_background_", "supercategory": ""}
"""The car-parts training set lists this category; a taxonomy leaves background-like categories out, so it is put
back for models of that set and a round trip through a labelling tool keeps the set's categories."""


def outline_points(contour: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """(N, 2) float32 x, y of a contour traced in a crop upsampled :data:`UPSAMPLE` times and padded by one pixel.

    Upsampled pixel ``u`` covers ``[u/2, (u+1)/2)`` of the photo: mapping it to ``(u + 0.5)/2`` puts a left or top
    edge 0.25 px inside the pixel's edge and a right or bottom edge 0.25 px inside its own, so every predicted
    pixel's centre lies inside the outline and every other pixel's centre outside.
    """
    points = contour.reshape(-1, 2).astype(np.float32)
    return (points + 0.5) / UPSAMPLE + np.asarray(offset, dtype=np.float32) - 1.0


def simplify(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker to within ``tolerance`` px; the traced outline when simplifying leaves under 3 points."""
    if tolerance <= 0:
        return points
    simplified = cv2.approxPolyDP(points.reshape(-1, 1, 2), tolerance, True).reshape(-1, 2)
    return simplified if len(simplified) >= 3 else points


def splice_hole(outline: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The outline with ``hole`` cut out: from the outline's vertex nearest the hole, round the hole and back.

    The slit is traversed once each way, so it changes no pixel (even-odd or nonzero fill alike).
    """
    distances = ((outline[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(distances.argmin()), distances.shape)
    around = np.concatenate([hole[j:], hole[: j + 1]])
    return np.concatenate([outline[: i + 1], around, outline[i:]])


def instance_polygon(instance: np.ndarray, offset: tuple[int, int], tolerance: float) -> list[float]:
    """One 8-connected region, a (h, w) bool crop whose top-left pixel is ``offset`` (x, y) in the photo, as one
    flat COCO polygon ``[x0, y0, x1, y1, ...]`` with its holes spliced in (:func:`splice_hole`)."""
    padded = np.pad(instance, 1).astype(np.uint8)
    upsampled = padded.repeat(UPSAMPLE, axis=0).repeat(UPSAMPLE, axis=1)
    contours, hierarchy = cv2.findContours(upsampled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    # RETR_CCOMP: outer borders at the top level (one here: the crop holds one region), their holes as children
    outer = next(k for k in range(len(contours)) if hierarchy[0][k][3] == -1)
    polygon = simplify(outline_points(contours[outer], offset), tolerance)
    for k in range(len(contours)):
        if hierarchy[0][k][3] == outer:
            polygon = splice_hole(polygon, simplify(outline_points(contours[k], offset), tolerance))
    return [float(v) for v in polygon.reshape(-1)]


def instance_annotations(
    mask: np.ndarray, taxonomy: Taxonomy, confidence: np.ndarray | None = None, tolerance: float = DEFAULT_TOLERANCE
) -> list[dict[str, Any]]:
    """Every 8-connected part instance of a class-index ``mask`` as a COCO annotation without ``id`` and
    ``image_id`` (the file numbers them): ``category_id`` (the taxonomy's COCO id), ``segmentation`` (one polygon,
    :func:`instance_polygon`), ``area`` and ``bbox`` of the predicted pixels, ``score`` (their mean calibrated
    confidence, when ``confidence`` is given) and ``iscrowd: 0``. Classes in index order, instances top to bottom."""
    annotations = []
    boxes = ndimage.find_objects(mask)  # boxes[k - 1] bounds class k, None when absent
    for index, box in enumerate(boxes, start=1):
        category_id = taxonomy.category_ids[index] if box is not None and index < taxonomy.num_classes else None
        if category_id is None:
            continue
        rows, cols = box
        count, labels, stats, _ = cv2.connectedComponentsWithStats(
            (mask[box] == index).view(np.uint8), connectivity=CONNECTIVITY
        )
        sums = None if confidence is None else confidence_sums(labels, confidence[box], count)
        for label in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[label])
            instance = labels[y : y + h, x : x + w] == label
            left, top = cols.start + x, rows.start + y
            annotation = {
                "category_id": int(category_id),
                "segmentation": [instance_polygon(instance, (left, top), tolerance)],
                "area": area,
                "bbox": [left, top, w, h],
                "iscrowd": 0,
            }
            if sums is not None:
                annotation["score"] = round(float(sums[label]) / area, 4)
            annotations.append(annotation)
    return annotations


def coco_categories(taxonomy: Taxonomy) -> list[dict[str, Any]]:
    """The taxonomy's parts as COCO categories with their own ids, in id order; for the car-parts set also its
    ``_background_`` (id 1), so the list equals the training set's ids and names."""
    categories = [
        {"id": int(cid), "name": name, "supercategory": ""}
        for name, cid in zip(taxonomy.names, taxonomy.category_ids, strict=True)
        if cid is not None
    ]
    if taxonomy.parts == CARPARTS_NAMES and CARPARTS_BACKGROUND["id"] not in {c["id"] for c in categories}:
        categories.append(dict(CARPARTS_BACKGROUND))
    return sorted(categories, key=lambda c: c["id"])


def relative_names(locations: Sequence[str | Path], root: str | Path | None = None) -> tuple[str, list[str]]:
    """(root, file names): each photo's path relative to ``root``, with ``/`` separators, as COCO ``file_name``.

    ``root`` defaults to the photos' deepest common folder (the photo folder itself when they share one), so a
    labelling tool given that folder's images finds them by name. Local paths are compared absolute; URIs
    (``s3://...``) as text. A photo outside ``root`` is a one-line error.
    """
    keys = [str(loc) if "://" in str(loc) else os.path.abspath(loc).replace(os.sep, "/") for loc in locations]
    if root is not None:
        base = str(root) if "://" in str(root) else os.path.abspath(root).replace(os.sep, "/")
    elif keys:
        base = common_folder(keys)
    else:
        base = os.path.abspath(".").replace(os.sep, "/")
    prefix = base.rstrip("/") + "/"
    names = []
    for location, key in zip(locations, keys, strict=True):
        if not key.startswith(prefix):
            raise CarpartsError(
                f"{location}: not under the COCO root {base}; file names in the COCO file are relative to it "
                f"(set --coco-root to a folder holding every photo)"
            )
        names.append(str(PurePosixPath(key[len(prefix) :])))
    return base, names


def common_folder(keys: Sequence[str]) -> str:
    """The deepest folder holding every one of ``keys`` (absolute ``/``-separated paths or URIs)."""
    common: list[str] = []
    for column in zip(*(key.rsplit("/", 1)[0].split("/") for key in keys), strict=False):
        if len(set(column)) > 1:
            break
        common.append(column[0])
    return "/".join(common) or "/"


def check_target(path: Path, overwrite: bool = False) -> None:
    """Refuse, before any work, a COCO file that exists (unless ``overwrite``), is a folder, or cannot be written."""
    if path.is_dir():
        raise CarpartsError(f"{path}: is a folder; --coco takes the JSON file to write")
    if path.exists() and not overwrite:
        raise CarpartsError(f"{path}: exists; pass --overwrite to replace it, or choose another --coco file")
    check_output_folder(path.parent)


def coco_file(
    photos: Sequence[dict[str, Any]], file_names: Sequence[str], taxonomy: Taxonomy, info: dict[str, Any]
) -> dict[str, Any]:
    """One COCO file for a run: ``photos`` (each with ``width``, ``height``, ``annotations`` as
    :func:`instance_annotations` gives them) named ``file_names``, numbered 1, 2, ... in order, their annotations
    numbered 1, 2, ... across the file; ``categories`` from :func:`coco_categories`."""
    images, annotations = [], []
    for image_id, (photo, name) in enumerate(zip(photos, file_names, strict=True), start=1):
        images.append({"id": image_id, "file_name": name, "width": int(photo["width"]), "height": int(photo["height"])})
        for annotation in photo["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
    return {
        "info": {"description": "carparts predictions (pre-labels to correct)", "version": __version__, **info},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(taxonomy),
    }


def write_coco(path: Path, coco: dict[str, Any]) -> None:
    """Write the file atomically: a crash leaves the old file or none, never half of one."""
    write_atomic(path, lambda p: p.write_text(json.dumps(coco)))


def model_taxonomy(model: str | Path | None) -> Taxonomy:
    """The classes of the (first) model ``--model`` names, read from its ``model.json`` or ONNX metadata without
    loading the weights: what the Ray driver and an empty run need for ``categories``."""
    from carparts.loading import split_models
    from carparts.models import load_info

    first = split_models(model)[0]
    if first is not None and Path(first).suffix == ".onnx":
        from carparts.backend_onnx import info_from_metadata, onnx_session

        metadata = onnx_session(Path(first)).get_modelmeta().custom_metadata_map
        return info_from_metadata(metadata, Path(first)).taxonomy
    return load_info(first).taxonomy
