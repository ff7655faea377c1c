"""One photo's prediction as one object, :class:`Result`: the only producer of its outputs (parts, cars, JSON record,
mask PNG, overlay), whether they go to files (``predict``, the Ray engine) or over HTTP (``/v1/segment``)."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from carparts import coco_export, parts
from carparts.cars import Car, car_mask, cars_json, find_cars
from carparts.classes import Taxonomy
from carparts.errors import CarpartsError
from carparts.images import write_atomic
from carparts.models import ModelInfo

PNG_COMPRESS_LEVEL = 3
"""zlib's fast levels (1-3) write a mask PNG in a third of the default level's time, at about twice the size
(16 KB instead of 8 KB for a 1600x1200 mask); slower levels save little on files this small."""
OUTPUT_SUFFIXES = (".png", "_overlay.jpg", ".json")
UNCERTAINTY_SUFFIX = "_uncertainty.png"
CLASS_INDEX_CONVENTION = "0 = background; see model's classes"
UNCERTAINTY_FULL_SCALE = 0.5
"""The uncertainty (1 - probability of the pixel's class) drawn in the hottest colour: 0.5 is a coin toss between
two parts, so anything at or above it is equally a pixel to check by hand."""


def output_paths(out_dir: Path, stem: str, uncertainty: bool = False) -> list[Path]:
    """A photo's outputs in writing order: ``<stem>.png`` (mask), ``<stem>_overlay.jpg``, with ``uncertainty``
    ``<stem>_uncertainty.png``, and ``<stem>.json`` last."""
    suffixes = [*OUTPUT_SUFFIXES[:2], *([UNCERTAINTY_SUFFIX] if uncertainty else []), OUTPUT_SUFFIXES[2]]
    return [out_dir / f"{stem}{suffix}" for suffix in suffixes]


@dataclass
class Result:
    """A photo, its class-index mask and the model that made it. Every output of the photo is derived here, once:
    :meth:`record` (the JSON), :meth:`mask_png`, :meth:`overlay_jpeg`, and :meth:`save` writes all three."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) uint8 class indices
    info: ModelInfo
    source: str  # the photo's path, or the uploaded file's name
    confidence: np.ndarray | None = None  # (H, W) float32 calibrated probability of each pixel's class

    @property
    def taxonomy(self) -> Taxonomy:
        return self.info.taxonomy

    @cached_property
    def car_labels(self) -> np.ndarray:
        """(H, W) car ids, 0 where no car (:func:`carparts.cars.car_mask`)."""
        return car_mask(self.mask, self.taxonomy)

    @cached_property
    def cars(self) -> list[Car]:
        return find_cars(self.mask, self.taxonomy, self.car_labels, confidence=self.confidence)

    def parts(self) -> list[dict[str, Any]]:
        """Every part present (:func:`carparts.parts.part_summary`)."""
        return parts.part_summary(self.mask, self.taxonomy, self.confidence)

    def coco_annotations(self, tolerance: float = coco_export.DEFAULT_TOLERANCE) -> list[dict[str, Any]]:
        """Every connected part instance as a COCO annotation without ids (the run's COCO file numbers them;
        :func:`carparts.coco_export.instance_annotations`); made once per tolerance."""
        made = self.__dict__.setdefault("_coco_annotations", {})
        if tolerance not in made:
            made[tolerance] = coco_export.instance_annotations(self.mask, self.taxonomy, self.confidence, tolerance)
        return made[tolerance]

    def record(self, polygons: bool = False, coco_tolerance: float | None = None) -> dict[str, Any]:
        """The photo's JSON: size, model, parts (with their outlines when ``polygons``) and cars; with
        ``coco_tolerance`` also ``coco``: the tolerance and :meth:`coco_annotations`, from which a resumed run's
        COCO file is rebuilt."""
        found = self.parts()
        if polygons:
            outlines = parts.part_polygons(self.mask)
            for part in found:
                part["polygons"] = outlines[part["class_id"]]
        record = {
            "image": self.source,
            "width": int(self.image.shape[1]),
            "height": int(self.image.shape[0]),
            "model": self.info.model_id,
            "class_index_convention": CLASS_INDEX_CONVENTION,
            "confidence": parts.mean_confidence(self.mask, self.confidence),
            "parts": found,
            "cars": cars_json(self.cars),
        }
        if coco_tolerance is not None:
            record["coco"] = {"tolerance": coco_tolerance, "annotations": self.coco_annotations(coco_tolerance)}
        return record

    def mask_image(self) -> Image.Image:
        return colour_mask(self.mask, self.taxonomy)

    def overlay_image(self) -> Image.Image:
        return overlay(self.image, self.mask, self.taxonomy, cars=self.cars)

    def uncertainty_image(self) -> Image.Image:
        """The per-pixel uncertainty heat map over the photo (:func:`uncertainty_map`)."""
        if self.confidence is None:
            raise CarpartsError(f"{self.source}: this prediction carries no probabilities, so no uncertainty map")
        return uncertainty_map(self.image, self.confidence)

    def mask_png(self) -> bytes:
        return encode(self.mask_image(), "PNG")

    def overlay_jpeg(self) -> bytes:
        return encode(self.overlay_image(), "JPEG")

    def uncertainty_png(self) -> bytes:
        return encode(self.uncertainty_image(), "PNG")

    def save(
        self, out_dir: Path, stem: str, uncertainty: bool = False, coco_tolerance: float | None = None
    ) -> list[Path]:
        """Write ``<stem>.png`` (palette class-index mask), ``<stem>_overlay.jpg``, with ``uncertainty``
        ``<stem>_uncertainty.png``, and ``<stem>.json`` (with ``coco_tolerance`` holding the COCO annotations),
        each atomically, the JSON last (it names its photo, so its presence proves the set complete)."""
        paths = output_paths(out_dir, stem, uncertainty)
        images = [(self.mask_image, "PNG"), (self.overlay_image, "JPEG")]
        images += [(self.uncertainty_image, "PNG")] if uncertainty else []
        for path, (draw, fmt) in zip(paths[:-1], images, strict=True):
            write_atomic(path, lambda p, draw=draw, fmt=fmt: save_image(draw(), p, fmt))
        record = self.record(coco_tolerance=coco_tolerance)
        write_atomic(paths[-1], lambda p: p.write_text(json.dumps(record, indent=2)))
        return paths


def save_image(image: Image.Image, target: Path | io.BytesIO, fmt: str) -> None:
    """Masks as fast-compressed PNG, overlays as JPEG quality 90: the same bytes for files and HTTP answers."""
    if fmt == "PNG":
        image.save(target, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(target, format="JPEG", quality=90)


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    save_image(image, buffer, fmt)
    return buffer.getvalue()


def uncertainty_map(image: np.ndarray, confidence: np.ndarray) -> Image.Image:
    """The photo in grey under a heat map of ``1 - confidence`` (inferno: dark where certain, bright yellow at
    :data:`UNCERTAINTY_FULL_SCALE` and above), so the pixels to check by hand stand out where they are."""
    uncertainty = np.clip((1.0 - confidence) / UNCERTAINTY_FULL_SCALE, 0.0, 1.0)
    heat = cv2.applyColorMap((uncertainty * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
    grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return Image.fromarray(cv2.addWeighted(grey, 0.35, np.ascontiguousarray(heat), 0.65, 0))


def colour_mask(mask: np.ndarray, taxonomy: Taxonomy) -> Image.Image:
    """A palette PNG image: pixel values are class indices, shown in the class colours."""
    img = Image.fromarray(mask, mode="L").convert("P")
    palette = [c for colour in taxonomy.colours for c in colour]
    img.putpalette(palette + [0] * (768 - len(palette)))
    return img


def overlay(
    image: np.ndarray, mask: np.ndarray, taxonomy: Taxonomy, alpha: float = 0.5, cars: Sequence[Car] = ()
) -> Image.Image:
    """The photo with parts blended in their colours, and a legend of the parts present on the right.

    Each of ``cars`` (see :func:`carparts.cars.find_cars`) gets its box and a "car k: viewpoint" tag on the photo,
    and a line under the legend.
    """
    colours = np.zeros((256, 1, 3), dtype=np.uint8)
    colours[: taxonomy.num_classes, 0] = taxonomy.colours
    painted = cv2.LUT(cv2.merge([mask, mask, mask]), colours)  # a 3-channel table lookup: 6x numpy's indexing
    blended = cv2.addWeighted(image, 1 - alpha, painted, alpha, 0)
    cv2.copyTo(image, (mask == 0).view(np.uint8), blended)  # the background keeps the photo's own pixels
    photo = Image.fromarray(blended)
    present = [i for i in np.flatnonzero(parts.class_counts(mask)) if i > 0]
    height = image.shape[0]
    font_size = max(10, min(28, height // 30))
    font = ImageFont.load_default(size=font_size)
    row = int(font_size * 1.5)
    legend_width = int(font_size * 12)
    lines = len(present) + 1 + len(cars)
    canvas = Image.new("RGB", (photo.width + legend_width, max(height, row * lines)), (255, 255, 255))
    canvas.paste(photo, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = photo.width + font_size // 2
    for k, index in enumerate(present):
        y = font_size // 2 + k * row
        draw.rectangle([x, y, x + font_size, y + font_size], fill=tuple(taxonomy.colours[index]), outline=(0, 0, 0))
        draw.text((x + int(font_size * 1.4), y), taxonomy.names[index], fill=(0, 0, 0), font=font)
    if not present:
        draw.text((x, font_size // 2), "no parts found", fill=(0, 0, 0), font=font)
    line = max(2, height // 200)
    for k, car in enumerate(cars):
        tag = car_tag(car)
        x0, y0, w, h = car.bbox
        draw.rectangle([x0, y0, x0 + w - 1, y0 + h - 1], outline=(0, 0, 0), width=line + 2)
        draw.rectangle([x0, y0, x0 + w - 1, y0 + h - 1], outline=(255, 255, 255), width=line)
        left, top, right, bottom = draw.textbbox((x0 + line, y0 + line), tag, font=font)
        draw.rectangle([left - 2, top - 2, right + 2, bottom + 2], fill=(0, 0, 0))
        draw.text((x0 + line, y0 + line), tag, fill=(255, 255, 255), font=font)
        draw.text((x, font_size // 2 + (len(present) + 1 + k) * row), tag, fill=(0, 0, 0), font=font)
    return canvas


def car_tag(car: Car) -> str:
    """``car 2: front-left``, or ``car 2`` when the viewpoint is unknown."""
    return f"car {car.id}: {car.viewpoint}" if car.viewpoint else f"car {car.id}"
