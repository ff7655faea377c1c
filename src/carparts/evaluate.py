"""Evaluate a model on a COCO data set at each image's native resolution, from one confusion matrix."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from carparts.data import CocoDataset, listed_split, load_coco
from carparts.errors import CarpartsError, print_line
from carparts.images import check_output_folder, write_atomic
from carparts.loading import load_predictor
from carparts.metrics import (
    HEADLINE,
    BoundaryErrors,
    ConfusionMatrix,
    LabelChecks,
    ReliabilityBins,
    bootstrap_interval,
    dense_matrix,
    format_table,
    nanmean,
    paired_difference,
    sparse_matrix,
)
from carparts.models import SPLIT_FILE, ModelInfo
from carparts.predict import Predictor, top_probability, upsample_argmax


def select_split(coco: CocoDataset, split: str, info: ModelInfo) -> list[int]:
    """Indices of ``all`` images, or of the ``train``/``val`` split the model was trained with: the one its run's
    ``split.json`` lists when it has one, else the split rule applied to its recipe, per folder when ``coco`` joins
    several (:meth:`CocoDataset.recipe_split`)."""
    if split == "all":
        return list(range(len(coco)))
    if split not in ("train", "val"):
        raise CarpartsError(f"unknown split '{split}'; choose all, train or val")
    if info.split is not None:
        train_idx, val_idx = listed_split(coco, info.split, f"{info.model_id}'s {SPLIT_FILE}")
    else:
        train_idx, val_idx = coco.recipe_split(info.recipe)
    if split == "val" and not val_idx:
        raise CarpartsError(
            f"{info.model_id} was trained on every image (val_fraction 0): it has no val split; "
            "score it on other photos (--data) instead"
        )
    return val_idx if split == "val" else train_idx


def evaluate(
    model: str | Path | None,
    data: str | Path,
    split: str = "all",
    out: Path | None = None,
    tta: bool = False,
    progress: bool = True,
    on_image: Callable[[str, np.ndarray, np.ndarray, np.ndarray, float | None], None] | None = None,
    backend: str = "torch",
    predictor: Predictor | None = None,
    on_error: Callable[[str], None] = print_line,
) -> dict[str, Any]:
    """Predict every selected image at native size and score it against its rasterised annotations.

    An image without annotations is scored as all background (``images_without_annotations`` counts them); one
    that cannot be read is reported through ``on_error``, listed in ``skipped`` and left out, and the others are
    still scored.

    ``on_image(file_name, image, truth, pred, part_miou)`` is called per image (the report draws its grids
    there, so images are predicted once). Returns the summary (per-class IoU/Dice, mIoU over parts and over
    all classes, pixel accuracy, left/right confusion, confusion matrix, the most confused pairs with the images
    they come from, the boundary/region split of the wrong pixels (``boundary``, see :class:`BoundaryErrors`),
    per-image part-mIoU, the annotations the model mostly calls another part, ``label_checks``, see
    :class:`LabelChecks`); writes ``metrics.json`` into ``out`` when given. ``backend``: ``torch`` or ``onnx``
    (see :func:`load_predictor`); a ``predictor`` already loaded replaces ``model``, ``backend`` and ``tta``.
    """
    predictor = predictor or load_predictor(model, backend, tta=tta)
    taxonomy = predictor.info.taxonomy
    if out is not None:
        check_output_folder(Path(out))
    coco = load_coco(data, taxonomy=taxonomy, check_files=False)  # a missing photo is skipped, not fatal
    indices = select_split(coco, split, predictor.info)
    members = getattr(predictor, "members", [])  # an ensemble's recipe is its first member's
    for member in members[1:]:
        if select_split(coco, split, member.info) != indices:
            raise CarpartsError(
                f"{member.info.model_id} was trained on another {split} split than {members[0].info.model_id}; "
                "an ensemble is only scored on a split all its members share (or use --split all)"
            )
    total, boundary = ConfusionMatrix(taxonomy.num_classes), BoundaryErrors(taxonomy.num_classes)
    checks = LabelChecks(taxonomy.names, taxonomy.flip_permutation)
    uncalibrated, calibrated = ReliabilityBins(), ReliabilityBins()  # pixel confidences at temperature 1 and T
    per_image, image_matrices, skipped, unannotated = [], {}, [], 0
    for index in tqdm(indices, desc=f"evaluate {split}", unit="img", disable=not progress):
        try:
            image, truth, annotations = coco.read_annotated(index)
        except CarpartsError as e:
            skipped.append({"file_name": coco.images[index]["file_name"], "error": str(e)})
            on_error(f"error: {e}")
            continue
        unannotated += not coco.annotations.get(coco.images[index]["id"])
        scores = predictor.logits(image)
        pred = upsample_argmax(scores, *truth.shape)
        raw, confidence = (top_probability(scores, t, *truth.shape) for t in (1.0, predictor.temperature))
        correct = pred == truth
        uncalibrated.update(raw, correct)
        calibrated.update(confidence, correct)
        image_cm = ConfusionMatrix(taxonomy.num_classes)
        image_cm.update(truth, pred)
        total.mat += image_cm.mat
        name = coco.images[index]["file_name"]
        image_matrices[name] = image_cm.mat.numpy()
        boundary.update(truth, pred, name)
        checks.update(name, annotations, truth, pred, confidence)
        miou = nanmean(image_cm.iou()[1:])
        per_image.append({"file_name": name, "miou_parts": miou, "confusion": sparse_matrix(image_matrices[name])})
        if on_image is not None:
            on_image(name, image, truth, pred, miou)
    if len(skipped) == len(indices):
        raise CarpartsError(f"{data}: none of the {len(indices)} images could be read (see the errors above)")
    summary = total.summary(taxonomy.names, taxonomy.left_right_pairs, per_image=image_matrices)
    summary["interval"] = bootstrap_interval(image_matrices)
    summary["boundary"] = boundary.to_dict(taxonomy.names)
    summary["label_checks"] = checks.to_list()
    summary.update(model=predictor.info.model_id, data=str(data), split=split, images=len(per_image))
    summary.update(images_without_annotations=unannotated, skipped=skipped)
    summary.update(tta=predictor.tta, resolution="native", backend=predictor.backend, per_image=per_image)
    summary["calibration"] = {
        "temperature": predictor.temperature, "stored": predictor.info.temperature is not None,
        "ece_before": uncalibrated.ece(), "ece_after": calibrated.ece(), "bins": uncalibrated.bins,
        "reliability_before": uncalibrated.to_dict(), "reliability_after": calibrated.to_dict(),
    }  # fmt: skip
    if out is not None:
        out = Path(out)
        write_atomic(out / "metrics.json", lambda p: p.write_text(json.dumps(summary, indent=2)))
    return summary


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures recorded in ``model.json``: headline metrics and IoU per class."""
    figures = {k: summary[k] for k in [*HEADLINE, "images"]}
    figures["per_class_iou"] = {name: row["iou"] for name, row in summary["per_class"].items()}
    return figures


def print_summary(summary: dict[str, Any]) -> None:
    print(f"{summary['model']} on {summary['data']} ({summary['split']}, {summary['images']} images, native size)")
    print(format_table(summary))
    calibration = summary.get("calibration")
    if calibration and calibration["ece_before"] is not None:
        stored = "stored" if calibration["stored"] else "none stored"
        print(
            f"calibration: ECE {calibration['ece_before']:.4f} at temperature 1, {calibration['ece_after']:.4f} at "
            f"temperature {calibration['temperature']:.3f} ({stored}); {calibration['bins']} bins over pixels"
        )
    if summary.get("images_without_annotations"):
        print(f"{summary['images_without_annotations']} image(s) have no annotations: scored as all background")
    if summary.get("skipped"):
        print(f"{len(summary['skipped'])} image(s) could not be read and were not scored (see the errors above)")


def read_per_image(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An evaluation's ``metrics.json`` (the file or the ``--out`` folder holding it) and its per-image confusion
    matrices by file name."""
    path = Path(path)
    path = path / "metrics.json" if path.is_dir() else path
    if not path.is_file():
        raise CarpartsError(f"{path}: no metrics.json (write one with `carparts evaluate --out DIR`)")
    try:
        summary = json.loads(path.read_text())
        n = len(summary["per_class"])
        rows = summary["per_image"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CarpartsError(f"{path}: not a metrics.json of `carparts evaluate` ({e.__class__.__name__})") from None
    if any("confusion" not in row for row in rows):
        raise CarpartsError(f"{path}: no per-image confusion matrices (an older carparts wrote it); evaluate again")
    return summary, {row["file_name"]: dense_matrix(row["confusion"], n) for row in rows}


def compare(a: str | Path, b: str | Path) -> dict[str, Any]:
    """Part-mIoU of evaluation ``b`` minus evaluation ``a`` on the same images, with its paired bootstrap interval
    (:func:`carparts.metrics.paired_difference`) and the per-class IoU changes, largest first."""
    (sa, ma), (sb, mb) = read_per_image(a), read_per_image(b)
    if set(ma) != set(mb) or list(sa["per_class"]) != list(sb["per_class"]):
        only = len(set(ma) ^ set(mb))
        raise CarpartsError(
            f"{a} and {b} did not score the same images and classes ({only} image(s) in one only): compare two "
            "evaluations of one data set and split"
        )
    result = paired_difference(ma, mb)
    changes = {
        name: round(sb["per_class"][name]["iou"] - sa["per_class"][name]["iou"], 4)
        for name in sa["per_class"]
        if sa["per_class"][name]["iou"] is not None and sb["per_class"][name]["iou"] is not None
    }
    result["per_class"] = dict(sorted(changes.items(), key=lambda item: -abs(item[1])))
    return result | {"models": [sa.get("model"), sb.get("model")], "data": sa.get("data")}


def print_comparison(result: dict[str, Any]) -> None:
    (a, b), (low, high) = result["models"], result["interval"]
    moved = ", ".join(f"{name} {change:+.3f}" for name, change in list(result["per_class"].items())[:5])
    print(f"B - A on {result['data']} ({result['images']} images), A = {a}, B = {b}")
    print(
        f"part-mIoU {result['b']:.4f} - {result['a']:.4f} = {result['difference']:+.4f}; "
        f"{result['level']:.0%} interval {low:+.4f} to {high:+.4f} over {result['draws']} paired bootstrap draws of "
        f"the images; B ahead in {result['b_ahead']:.0%} of them"
    )
    print(f"largest per-class IoU changes: {moved}")
