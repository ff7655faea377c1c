"""Score car counting and viewpoints on a COCO split: predicted masks against the annotations and hand labels.

Truth, per image: the hand labels (``assets/car_labels.csv``: one row per car, cars numbered left to right)
give the car count and each car's viewpoint. With one labelled car, the true car region is every annotated
pixel (the data set annotates one car per photo). Images without labels fall back on a derived truth: the
grouping and viewpoint rules of :mod:`carparts.cars` applied to the annotation mask.

Predicted cars are matched to true cars by the IoU of their car masks (greedy, best first, IoU >= 0.5); a true
car without a match counts as a wrong viewpoint.

The data set has no photo with two annotated cars, so ``pairs`` also scores collages: consecutive photos of the
split placed side by side, each photo's cars keeping their truth.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from carparts.cars import VIEWPOINTS, Car, car_mask, find_cars, viewpoint_steps
from carparts.classes import Taxonomy
from carparts.data import load_coco
from carparts.errors import CarpartsError
from carparts.evaluate import select_split
from carparts.images import write_atomic
from carparts.paths import CAR_LABELS
from carparts.predict import Predictor

DEFAULT_LABELS = CAR_LABELS
MATCH_IOU = 0.5


def read_labels(path: str | Path) -> dict[str, list[str]]:
    """``file_name -> viewpoints`` of the cars in it, left to right, from a ``file_name,car,viewpoint`` CSV."""
    path = Path(path)
    if not path.is_file():
        raise CarpartsError(f"{path}: labels file not found")
    rows: dict[str, dict[int, str]] = defaultdict(dict)
    with path.open(newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                name, car, view = row["file_name"], int(row["car"]), row["viewpoint"]
            except (KeyError, TypeError, ValueError):
                raise CarpartsError(f"{path}:{line}: expected columns file_name,car,viewpoint") from None
            if view not in VIEWPOINTS:
                raise CarpartsError(f"{path}:{line}: unknown viewpoint '{view}'; use one of {', '.join(VIEWPOINTS)}")
            rows[name][car] = view
    return {name: [cars[k] for k in sorted(cars)] for name, cars in rows.items()}


def truth_cars(
    truth: np.ndarray, taxonomy: Taxonomy, labelled: list[str] | None
) -> tuple[np.ndarray, list[str | None]]:
    """True car mask and viewpoints (left to right) of one image, from its labels or derived (see module doc)."""
    if labelled and len(labelled) == 1:
        return (truth > 0).astype(np.int32), list(labelled)
    cars_mask = car_mask(truth, taxonomy)
    cars = find_cars(truth, taxonomy, cars_mask)
    if labelled and len(labelled) == len(cars):
        return cars_mask, list(labelled)
    return cars_mask, [car.viewpoint for car in cars]


def match_cars(
    truth_mask: np.ndarray, pred_mask: np.ndarray, threshold: float = MATCH_IOU
) -> dict[int, tuple[int, float]]:
    """``true car id -> (predicted car id, IoU)``, greedy by IoU, pairs under ``threshold`` left out."""
    n_true, n_pred = int(truth_mask.max(initial=0)), int(pred_mask.max(initial=0))
    joint = np.bincount(
        (truth_mask.astype(np.int64) * (n_pred + 1) + pred_mask).ravel(), minlength=(n_true + 1) * (n_pred + 1)
    ).reshape(n_true + 1, n_pred + 1)
    inter = joint[1:, 1:].astype(np.float64)
    union = joint[1:, :].sum(1, keepdims=True) + joint[:, 1:].sum(0, keepdims=True) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    matches: dict[int, tuple[int, float]] = {}
    for flat in np.argsort(-iou, axis=None):
        t, p = np.unravel_index(flat, iou.shape)
        if iou[t, p] < threshold:
            break
        if t + 1 not in matches and all(p + 1 != q for q, _ in matches.values()):
            matches[int(t) + 1] = (int(p) + 1, float(iou[t, p]))
    return matches


def score_image(truth: np.ndarray, pred: np.ndarray, taxonomy: Taxonomy, labelled: list[str] | None) -> dict[str, Any]:
    """Counts, viewpoints and matches of one image (see :func:`score_cars`)."""
    true_mask, true_views = truth_cars(truth, taxonomy, labelled)
    return score_cars(truth, true_mask, true_views, pred, taxonomy, len(labelled) if labelled else None)


def score_cars(
    truth: np.ndarray,
    true_mask: np.ndarray,
    true_views: list[str | None],
    pred: np.ndarray,
    taxonomy: Taxonomy,
    true_count: int | None = None,
) -> dict[str, Any]:
    """Score the predicted mask's cars against the true cars (car mask and viewpoints).

    Per true car: the matched prediction's viewpoint and IoU, and ``rule_on_truth``, the viewpoint the rules
    read off the annotation mask (how well they do with perfect parts). ``truth_grouped_cars``: how many cars
    the grouping finds in the annotation mask.
    """
    pred_mask = car_mask(pred, taxonomy)
    pred_cars = find_cars(pred, taxonomy, pred_mask)
    matches = match_cars(true_mask, pred_mask)
    rule_cars = find_cars(truth, taxonomy, true_mask)
    return {
        "true_cars": len(true_views) if true_count is None else true_count,
        "pred_cars": len(pred_cars),
        "truth_grouped_cars": int(car_mask(truth, taxonomy).max(initial=0)),
        "cars": [
            _score_car(view, pred_cars, matches.get(k + 1), rule_cars[k] if k < len(rule_cars) else None)
            for k, view in enumerate(true_views)
        ],
    }


def side_by_side(arrays: list[np.ndarray]) -> np.ndarray:
    """Arrays (images or masks) placed left to right, shorter ones padded with zeros at the bottom."""
    height = max(a.shape[0] for a in arrays)
    padded = [np.pad(a, [(0, height - a.shape[0])] + [(0, 0)] * (a.ndim - 1)) for a in arrays]
    return np.concatenate(padded, axis=1)


def _score_car(view: str | None, pred_cars: list[Car], match: tuple[int, float] | None, rule: Car | None) -> dict:
    pred = next((c for c in pred_cars if match and c.id == match[0]), None)
    return {
        "true_viewpoint": view,
        "pred_viewpoint": pred.viewpoint if pred else None,
        "iou": round(match[1], 4) if match else 0.0,
        "rule_on_truth": rule.viewpoint if rule else None,
    }


def summarise(per_image: list[dict[str, Any]]) -> dict[str, Any]:
    """Car-count accuracy over images; viewpoint accuracy (exact and within one 45-degree step) over true cars."""
    cars = [car for image in per_image for car in image["cars"] if car["true_viewpoint"]]

    def share(hits: int, total: int) -> float | None:
        return round(hits / total, 4) if total else None

    def near(a: str | None, b: str | None) -> bool:
        return a is not None and b is not None and viewpoint_steps(a, b) <= 1

    confusion: dict[str, Counter] = defaultdict(Counter)
    for car in cars:
        confusion[car["true_viewpoint"]][car["pred_viewpoint"] or "none"] += 1
    return {
        "images": len(per_image),
        "true_cars": sum(image["true_cars"] for image in per_image),
        "car_count_accuracy": share(sum(i["true_cars"] == i["pred_cars"] for i in per_image), len(per_image)),
        "viewpoint_accuracy": share(sum(c["pred_viewpoint"] == c["true_viewpoint"] for c in cars), len(cars)),
        "viewpoint_within_one_step": share(
            sum(near(c["pred_viewpoint"], c["true_viewpoint"]) for c in cars), len(cars)
        ),
        "cars_matched": share(sum(c["iou"] > 0 for c in cars), len(cars)),
        "rules_on_truth": {
            "car_count_accuracy": share(
                sum(i["true_cars"] == i["truth_grouped_cars"] for i in per_image), len(per_image)
            ),
            "viewpoint_accuracy": share(sum(c["rule_on_truth"] == c["true_viewpoint"] for c in cars), len(cars)),
        },
        "viewpoint_confusion": {view: dict(confusion[view]) for view in VIEWPOINTS if view in confusion},
    }


def evaluate_cars(
    model: str | Path | None,
    data: str | Path,
    split: str = "val",
    labels: str | Path | None = DEFAULT_LABELS,
    out: str | Path | None = None,
    progress: bool = True,
    predictor: Predictor | None = None,
    pairs: bool = False,
) -> dict[str, Any]:
    """Predict every image of the split and score car counts and viewpoints; write ``cars.json`` into ``out``.

    Args:
        model: run folder or model file; None for the bundled model.
        data: COCO folder; the split is the one the model was trained with (its recipe).
        labels: hand labels (see :func:`read_labels`); None to derive every truth from the annotations.
        predictor: an already loaded predictor (anything mapping a photo to a class-index mask, with ``info``);
            replaces ``model``.
        pairs: also score two-photo collages (photos 1+2, 3+4, ... of the split), reported under ``pairs``.
    """
    predictor = predictor or Predictor.from_path(model)
    taxonomy = predictor.info.taxonomy
    coco = load_coco(data, taxonomy=taxonomy)
    hand = read_labels(labels) if labels is not None else {}
    indices = select_split(coco, split, predictor.info)
    per_image, per_pair, waiting = [], [], []
    for index in tqdm(indices, desc=f"cars {split}", unit="img", disable=not progress):
        image, truth = coco.read_pair(index)
        name = coco.images[index]["file_name"]
        record = score_image(truth, predictor(image), taxonomy, hand.get(name))
        per_image.append({"file_name": name, "labelled": name in hand, **record})
        if pairs:
            waiting.append((name, image, truth, *truth_cars(truth, taxonomy, hand.get(name))))
        if len(waiting) == 2:
            per_pair.append(_score_pair(waiting, predictor, taxonomy))
            waiting = []
    summary = summarise(per_image)
    if pairs:
        summary["pairs"] = {**summarise(per_pair), "per_image": per_pair}
    summary.update(
        model=predictor.info.model_id, data=str(data), split=split, labels=str(labels) if labels else None,
        labelled_images=sum(i["labelled"] for i in per_image), per_image=per_image,
    )  # fmt: skip
    if out is not None:
        write_atomic(Path(out) / "cars.json", lambda p: p.write_text(json.dumps(summary, indent=2)))
    return summary


def _score_pair(photos: list[tuple], predictor: Predictor, taxonomy: Taxonomy) -> dict[str, Any]:
    """Score the collage of two photos: ``(name, image, truth, true car mask, true viewpoints)`` each."""
    names, images, truths, true_masks, true_views = zip(*photos, strict=True)
    offset = true_masks[0].max(initial=0)
    true_mask = side_by_side([true_masks[0], np.where(true_masks[1] > 0, true_masks[1] + offset, 0)])
    truth = side_by_side(list(truths))
    record = score_cars(
        truth, true_mask, [*true_views[0], *true_views[1]], predictor(side_by_side(list(images))), taxonomy
    )
    return {"file_name": "+".join(names), **record}


def print_cars_summary(summary: dict[str, Any]) -> None:
    print(
        f"{summary['model']} on {summary['data']} ({summary['split']}, {summary['images']} images, "
        f"{summary['labelled_images']} hand-labelled, {summary['true_cars']} cars)"
    )
    rules = summary["rules_on_truth"]
    rows = [
        ("car count right", summary["car_count_accuracy"], rules["car_count_accuracy"]),
        ("viewpoint right", summary["viewpoint_accuracy"], rules["viewpoint_accuracy"]),
        ("viewpoint within 45 deg", summary["viewpoint_within_one_step"], None),
        ("cars matched (IoU >= 0.5)", summary["cars_matched"], None),
    ]
    print(f"{'':28}{'predicted masks':>16}{'annotation masks':>18}")
    for label, predicted, annotated in rows:
        cells = [f"{v:.1%}" if v is not None else "-" for v in (predicted, annotated)]
        print(f"{label:28}{cells[0]:>16}{cells[1]:>18}")
    if "pairs" in summary:
        pairs = summary["pairs"]
        print(
            f"two-photo collages ({pairs['images']}, {pairs['true_cars']} cars): car count right "
            f"{pairs['car_count_accuracy']:.1%}, viewpoint right {pairs['viewpoint_accuracy']:.1%}, "
            f"cars matched {pairs['cars_matched']:.1%} (annotation masks: count "
            f"{pairs['rules_on_truth']['car_count_accuracy']:.1%})"
        )
