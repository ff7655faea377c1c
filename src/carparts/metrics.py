"""One confusion matrix, accumulated over a data set, from which IoU, Dice, mIoU and pixel accuracy derive; the
split of the wrong pixels into boundary and region errors; the annotations the model disagrees with; and the
reliability bins from which the expected calibration error derives."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch

HEADLINE = {
    "miou_parts": "mIoU over the parts",
    "miou_all": "mIoU over all classes",
    "mdice_parts": "mean Dice over the parts",
    "pixel_accuracy": "pixel accuracy",
    "iou_micro_all": "IoU pooled over all classes (micro)",
    "left_right_confusion": "left/right confusion",
}
"""The headline figures of an evaluation and their labels: the terminal, ``report.html``, ``model.json`` and the
model card all show these, in this order. "Parts" are every class but background (index 0)."""


class ConfusionMatrix:
    """Dataset-level confusion matrix: ``mat[t, p]`` counts pixels of true class t predicted as p.

    Metrics come from the summed matrix, not from per-image averages, so large and small images weigh by
    their pixels. A class absent from both truth and prediction has IoU ``nan`` (reported as absent).
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.mat = torch.zeros((num_classes, num_classes), dtype=torch.int64)

    def update(self, target: torch.Tensor | np.ndarray, pred: torch.Tensor | np.ndarray) -> None:
        target = torch.as_tensor(target).reshape(-1).long().cpu()
        pred = torch.as_tensor(pred).reshape(-1).long().cpu()
        n = self.num_classes
        valid = (target >= 0) & (target < n)
        self.mat += torch.bincount(n * target[valid] + pred[valid], minlength=n * n).reshape(n, n)

    def reset(self) -> None:
        self.mat.zero_()

    def iou(self) -> np.ndarray:
        return class_iou(self.mat.double().numpy())

    def dice(self) -> np.ndarray:
        m = self.mat.double().numpy()
        tp = np.diag(m)
        total = m.sum(0) + m.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, 2 * tp / total, np.nan)

    def pixel_accuracy(self) -> float:
        total = int(self.mat.sum())
        return float(self.mat.diag().sum()) / total if total else math.nan

    def micro_iou(self) -> float:
        """IoU pooled over all classes (sum of TP over sum of TP + FP + FN): smp's ``iou_score(reduction="micro")``
        on one-hot masks. Dominated by background; reported to compare with figures published that way."""
        total = int(self.mat.sum())
        correct = int(self.mat.diag().sum())
        return correct / (2 * total - correct) if total else math.nan

    def left_right_confusion(self, pairs: Sequence[tuple[int, int]]) -> float:
        """Share of pixels of paired parts (left or right) predicted as their mirror twin."""
        m = self.mat.numpy()
        swapped = sum(int(m[a, b]) + int(m[b, a]) for a, b in pairs)
        total = sum(int(m[a].sum()) + int(m[b].sum()) for a, b in pairs)
        return swapped / total if total else math.nan

    def confused_pairs(
        self, names: Sequence[str], n: int = 10, per_image: Mapping[str, np.ndarray] | None = None
    ) -> list[dict[str, Any]]:
        """The ``n`` largest confusions between two parts (background left out on both sides): each true part's
        share of pixels predicted as another part, largest first, e.g. ``tailgate -> trunk 0.26``.

        ``per_image`` (file name -> that image's confusion matrix) adds ``images`` to each pair: the
        :data:`SOURCE_IMAGES` images that contribute most of its pixels, so one odd photo or label stands out."""
        m = self.mat.double().numpy()[1:, 1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            share = m / self.mat.double().numpy()[1:].sum(1, keepdims=True)
        np.fill_diagonal(share, 0.0)
        share = np.nan_to_num(share)
        order = np.argsort(-share, axis=None, kind="stable")[:n]
        pairs = []
        for flat in order:
            t, p = divmod(int(flat), share.shape[1])
            if share[t, p] > 0:
                pairs.append({
                    "truth": names[t + 1], "predicted": names[p + 1], "share": round(float(share[t, p]), 4),
                    "pixels": int(m[t, p]),
                })  # fmt: skip
                if per_image is not None:
                    pairs[-1]["images"] = source_images(per_image, t + 1, p + 1)
        return pairs

    def summary(
        self,
        names: Sequence[str],
        pairs: Sequence[tuple[int, int]] = (),
        per_image: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """All metrics as a JSON-ready dict (``None`` where a class is absent); ``per_image`` as in
        :meth:`confused_pairs`."""
        iou, dice = self.iou(), self.dice()
        return {
            "miou_parts": nanmean(iou[1:]),
            "miou_all": nanmean(iou),
            "mdice_parts": nanmean(dice[1:]),
            "pixel_accuracy": none_if_nan(self.pixel_accuracy()),
            "iou_micro_all": none_if_nan(self.micro_iou()),
            "left_right_confusion": none_if_nan(self.left_right_confusion(pairs)) if pairs else None,
            "per_class": {
                name: {"iou": none_if_nan(iou[i]), "dice": none_if_nan(dice[i]), "pixels": int(self.mat[i].sum())}
                for i, name in enumerate(names)
            },
            "confused_pairs": self.confused_pairs(names, per_image=per_image),
            "confusion_matrix": self.mat.tolist(),
        }


def class_iou(mats: np.ndarray) -> np.ndarray:
    """IoU per class of a confusion matrix (C, C), or of each of a stack of them (..., C, C): ``nan`` where a class
    is absent from both truth and prediction."""
    tp = np.diagonal(mats, axis1=-2, axis2=-1)
    union = mats.sum(-1) + mats.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def miou_parts_batch(mats: np.ndarray) -> np.ndarray:
    """Part-mIoU of each of a stack of confusion matrices (..., C, C), as :meth:`ConfusionMatrix.summary` scores
    one: classes absent from both truth and prediction are left out."""
    iou = class_iou(mats)[..., 1:]
    present = ~np.isnan(iou)
    return np.where(present.any(-1), np.nansum(iou, -1) / np.maximum(present.sum(-1), 1), np.nan)


INTERVAL_DRAWS = 2000
INTERVAL_LEVEL = 0.95


def bootstrap_interval(
    per_image: Mapping[str, np.ndarray], draws: int = INTERVAL_DRAWS, level: float = INTERVAL_LEVEL, seed: int = 0
) -> dict[str, Any] | None:
    """How much part-mIoU owes to which images were drawn: the images are resampled with replacement ``draws``
    times, each draw scored from its summed confusion matrix as the whole set is, and the central ``level`` of
    those scores is the interval (percentile bootstrap). None for fewer than two images. It measures the test set's
    sampling noise only, not a training seed's: two models compared on the same images differ less than this."""
    if len(per_image) < 2:
        return None
    mats = stack_matrices(per_image, list(per_image))
    scores = drawn_miou(mats, draw_counts(len(mats), draws, seed))
    return {"miou_parts": central(scores, level), "level": level, "draws": draws, "seed": seed}


def stack_matrices(per_image: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """(images, C, C) float64: the confusion matrices of ``names``, in that order."""
    return np.stack([np.asarray(per_image[name], dtype=np.float64) for name in names])


def draw_counts(images: int, draws: int, seed: int) -> np.ndarray:
    """(draws, images): how often each image is drawn in each bootstrap draw of ``images`` with replacement."""
    return np.random.default_rng(seed).multinomial(images, np.full(images, 1 / images), size=draws).astype(float)


def drawn_miou(mats: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(draws,) part-mIoU of each draw: the drawn images' confusion matrices summed, then scored."""
    return miou_parts_batch(np.einsum("bn,ncd->bcd", counts, mats))


def central(scores: np.ndarray, level: float) -> list[float]:
    """``[low, high]``: the central ``level`` of ``scores`` (percentile interval), rounded to 4 places."""
    low, high = np.nanpercentile(scores, [50 * (1 - level), 50 * (1 + level)])
    return [round(float(low), 4), round(float(high), 4)]


def paired_difference(
    a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], draws: int = INTERVAL_DRAWS,
    level: float = INTERVAL_LEVEL, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Part-mIoU of ``b`` minus ``a`` on the same images (file name -> confusion matrix), with the interval of
    that difference over paired bootstrap draws: each draw resamples the images and scores both on the same
    draw, so what the two share (hard photos, rare parts) cancels out. ``b_ahead``: the share of draws b wins."""
    names = sorted(a)
    mats_a, mats_b = stack_matrices(a, names), stack_matrices(b, names)
    counts = draw_counts(len(names), draws, seed)
    diff = drawn_miou(mats_b, counts) - drawn_miou(mats_a, counts)
    score_a, score_b = (float(miou_parts_batch(mats.sum(0))) for mats in (mats_a, mats_b))
    return {
        "a": round(score_a, 4), "b": round(score_b, 4), "difference": round(score_b - score_a, 4),
        "interval": central(diff, level), "b_ahead": round(float(np.mean(diff > 0)), 3),
        "images": len(names), "level": level, "draws": draws, "seed": seed,
    }  # fmt: skip


def sparse_matrix(mat: np.ndarray) -> list[list[int]]:
    """``[[truth, predicted, pixels], ...]`` for the non-zero cells of a confusion matrix (``metrics.json``)."""
    return [[int(t), int(p), int(mat[t, p])] for t, p in zip(*np.nonzero(mat), strict=True)]


def dense_matrix(cells: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    mat = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p, pixels in cells:
        mat[t, p] = pixels
    return mat


def interval_text(interval: dict[str, Any]) -> str:
    low, high = interval["miou_parts"]
    return (
        f"part-mIoU {interval['level']:.0%} interval over the images: {low:.4f}-{high:.4f} (bootstrap, "
        f"{interval['draws']} draws of the images with replacement; sampling noise of this image set)"
    )


SOURCE_IMAGES = 3


def source_images(per_image: Mapping[str, np.ndarray], truth: int, predicted: int) -> list[dict[str, Any]]:
    """The :data:`SOURCE_IMAGES` images with the most pixels of class ``truth`` predicted as ``predicted``,
    largest first, each with its pixel count (images without any left out)."""
    counts = [(int(mat[truth, predicted]), name) for name, mat in per_image.items()]
    top = sorted((c for c in counts if c[0] > 0), key=lambda c: -c[0])[:SOURCE_IMAGES]
    return [{"file_name": name, "pixels": pixels} for pixels, name in top]


BOUNDARY_BAND = 0.005
"""Half-width of the band around the true part boundaries, as a share of the image diagonal (7 px on a 1024 x 861
photo): a wrong pixel inside it is a boundary error (the outline drawn a few pixels off), one outside it a region
error (a wrong face, side or kind of part, or a part seen where there is none)."""


def near_boundary(truth: np.ndarray, band: float = BOUNDARY_BAND) -> np.ndarray:
    """Boolean (H, W): the pixels within ``band`` x the image diagonal (at least 1 px) of a change of class in
    ``truth``, background included; the image's own edge is not a boundary."""
    radius = max(1, round(band * math.hypot(*truth.shape[:2])))
    changes = cv2.morphologyEx(truth.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(changes.astype(np.uint8), disk) > 0


class BoundaryErrors:
    """Where the wrong pixels lie: near the true part boundaries (:func:`near_boundary`) or away from them.

    The pixels away from them get their own confusion matrix, so the part-mIoU and the confused pairs there are
    the region errors alone, without the outline errors every part has along its edge."""

    def __init__(self, num_classes: int, band: float = BOUNDARY_BAND):
        self.band = band
        self.interior = ConfusionMatrix(num_classes)
        self.per_image: dict[str, np.ndarray] = {}  # file name -> that image's interior confusion matrix
        self.pixels = self.near = self.wrong = self.wrong_near = 0

    def update(self, truth: np.ndarray, pred: np.ndarray, name: str | None = None) -> None:
        near = near_boundary(truth, self.band)
        wrong = truth != pred
        self.pixels += truth.size
        self.near += int(near.sum())
        self.wrong += int(wrong.sum())
        self.wrong_near += int((wrong & near).sum())
        image = ConfusionMatrix(self.interior.num_classes)
        image.update(truth[~near], pred[~near])
        self.interior.mat += image.mat
        if name is not None:
            self.per_image[name] = image.mat.numpy()

    def to_dict(self, names: Sequence[str]) -> dict[str, Any]:
        """Band width, the band's share of the pixels, the share of the wrong pixels inside it, and the
        part-mIoU and most confused pairs of the pixels outside it."""
        return {
            "band": self.band,
            "band_pixels": self.near / self.pixels if self.pixels else None,
            "wrong_near_boundary": self.wrong_near / self.wrong if self.wrong else None,
            "miou_parts_interior": nanmean(self.interior.iou()[1:]),
            "confused_pairs_interior": self.interior.confused_pairs(names, per_image=self.per_image or None),
        }


class LabelChecks:
    """Annotations the model mostly calls another part: candidates for a labelling slip, for a person to look at.

    Per annotation (one part's polygons), over the pixels where it is the truth once overlaps are resolved: the
    class the model predicts on most of them. One is listed when that class is another part (not background: a
    missed part is the model's error, shown by the per-class figures), on at least ``min_share`` of at least
    ``min_pixels`` pixels, ranked by that share times the model's mean confidence there (confident learning's
    idea, Northcutt et al. 2021, per polygon rather than per pixel). ``mirror`` marks the
    car's other side (``back_right_light`` called ``back_left_light``): a slip labellers make, and one a model
    trained with flips that swap the sides makes on a whole part only when the car's layout says so."""

    def __init__(self, names: Sequence[str], flip_permutation: Sequence[int], min_share: float = 0.5,
                 min_pixels: int = 100):  # fmt: skip
        self.names, self.flip = list(names), list(flip_permutation)
        self.min_share, self.min_pixels = min_share, min_pixels
        self.items: list[dict[str, Any]] = []

    def update(self, name: str, annotations: Sequence[tuple[dict, int, np.ndarray]], truth: np.ndarray,
               pred: np.ndarray, confidence: np.ndarray) -> None:  # fmt: skip
        """``annotations``: (annotation, class index, own mask) as :func:`carparts.data.annotation_masks` gives;
        ``confidence``: (H, W) probability of the predicted class."""
        for ann, index, own in annotations:
            visible = own & (truth == index)
            pixels = int(visible.sum())
            if pixels < self.min_pixels:
                continue
            counts = np.bincount(pred[visible].ravel(), minlength=len(self.names))
            called = int(counts.argmax())
            share = counts[called] / pixels
            if called in (index, 0) or share < self.min_share:  # 0: a part missed is a model error, not a slip
                continue
            sure = float(confidence[visible & (pred == called)].mean())
            self.items.append({
                "file_name": name, "annotation_id": ann.get("id"), "label": self.names[index],
                "predicted": self.names[called], "share": round(float(share), 4), "confidence": round(sure, 4),
                "pixels": pixels, "mirror": self.flip[index] == called,
            })  # fmt: skip

    def to_list(self) -> list[dict[str, Any]]:
        """Every disagreement listed, the most likely slip first (a data set has a few per hundred images)."""
        return sorted(self.items, key=lambda item: -item["share"] * item["confidence"])


def label_check_text(checks: Sequence[dict[str, Any]]) -> str:
    """``te94.jpg #812 back_right_light -> back_left_light (98% of it, confidence 0.93, the other side)``."""
    return ", ".join(
        f"{c['file_name']} #{c['annotation_id']} {c['label']} -> {c['predicted']} ({c['share']:.0%} of it, "
        f"confidence {c['confidence']:.2f}{', the other side' if c['mirror'] else ''})"
        for c in checks
    )


ECE_BINS = 15


class ReliabilityBins:
    """Per-pixel (confidence, correct) pairs accumulated into ``bins`` equal-width confidence bins, so any number
    of full-size photos is summarised in a few numbers: the ECE and the reliability diagram."""

    def __init__(self, bins: int = ECE_BINS):
        self.bins = bins
        self.count = np.zeros(bins, dtype=np.int64)
        self.confidence = np.zeros(bins, dtype=np.float64)  # sums
        self.correct = np.zeros(bins, dtype=np.float64)

    def update(self, confidence: np.ndarray, correct: np.ndarray) -> None:
        """Add pixels: ``confidence`` the probability of the predicted class, ``correct`` whether it was right."""
        conf = confidence.ravel()
        index = np.minimum((conf * self.bins).astype(np.int64), self.bins - 1)
        self.count += np.bincount(index, minlength=self.bins)
        self.confidence += np.bincount(index, weights=conf, minlength=self.bins)
        self.correct += np.bincount(index, weights=correct.ravel().astype(np.float64), minlength=self.bins)

    def ece(self) -> float | None:
        """Expected calibration error: the pixel-weighted mean gap between confidence and accuracy per bin."""
        total = self.count.sum()
        if not total:
            return None
        return float(np.abs(self.correct - self.confidence).sum() / total)

    def to_dict(self) -> dict[str, Any]:
        """ECE plus, per bin, pixel count, mean confidence and accuracy (None where the bin is empty)."""
        return {
            "ece": self.ece(),
            "count": self.count.tolist(),
            "confidence": [
                round(float(c / n), 6) if n else None for c, n in zip(self.confidence, self.count, strict=True)
            ],
            "accuracy": [round(float(c / n), 6) if n else None for c, n in zip(self.correct, self.count, strict=True)],
            "pixels": int(self.count.sum()),
        }


def nanmean(values: np.ndarray) -> float | None:
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else None


def none_if_nan(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def format_table(summary: dict[str, Any]) -> str:
    """Per-class IoU/Dice table plus the headline figures, for the terminal."""
    lines = [f"{'class':<20} {'IoU':>7} {'Dice':>7} {'pixels':>11}"]
    for name, row in summary["per_class"].items():
        if row["iou"] is None:
            lines.append(f"{name:<20} {'absent':>7} {'absent':>7} {row['pixels']:>11}")
        else:
            lines.append(f"{name:<20} {row['iou']:>7.4f} {row['dice']:>7.4f} {row['pixels']:>11}")
    lines.append(" | ".join(f"{label} {fmt_figure(summary.get(key))}" for key, label in HEADLINE.items()))
    if summary.get("interval"):
        lines.append(interval_text(summary["interval"]))
    if summary.get("confused_pairs"):
        lines.append(f"most confused (share of the true part's pixels): {pairs_text(summary['confused_pairs'][:5])}")
    if summary.get("boundary"):
        lines.append(boundary_text(summary["boundary"]))
    if summary.get("label_checks"):
        lines.append(f"labels to check (the model calls most of the part another): "
                     f"{label_check_text(summary['label_checks'][:5])}")  # fmt: skip
    return "\n".join(lines)


def boundary_text(boundary: dict[str, Any]) -> str:
    """One line: how many wrong pixels are boundary errors, and the part-mIoU and largest confusions away from the
    boundaries (the region errors)."""
    if boundary["wrong_near_boundary"] is None:
        return "boundary errors: no wrong pixels"
    pairs = pairs_text(boundary["confused_pairs_interior"][:3])
    return (
        f"boundary errors: {boundary['wrong_near_boundary']:.0%} of the wrong pixels lie within "
        f"{boundary['band']:.1%} of the image diagonal of a true part boundary ({boundary['band_pixels']:.0%} of "
        f"the pixels); away from the boundaries part-mIoU {fmt_figure(boundary['miou_parts_interior'])}"
        + (f", most confused: {pairs}" if pairs else "")
    )


def pairs_text(pairs: Sequence[dict[str, Any]]) -> str:
    """``trunk -> tailgate 26.7%, back_right_light -> back_left_light 26.9% (100% from te94.jpg)``."""
    return ", ".join(f"{c['truth']} -> {c['predicted']} {c['share']:.1%}{mostly_from(c)}" for c in pairs)


def fmt_figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def mostly_from(pair: dict[str, Any]) -> str:
    """`` (62% from te94.jpg)`` when one image holds at least half of a confused pair's pixels, else ``""``."""
    images = pair.get("images") or []
    if not images or images[0]["pixels"] * 2 < pair["pixels"]:
        return ""
    return f" ({images[0]['pixels'] / pair['pixels']:.0%} from {images[0]['file_name']})"


def source_text(pair: dict[str, Any]) -> str:
    """The images a confused pair's pixels mostly come from, each with its share: ``te94.jpg 37%, te18.jpg 29%``."""
    return ", ".join(f"{image['file_name']} {image['pixels'] / pair['pixels']:.0%}" for image in pair.get("images", []))
