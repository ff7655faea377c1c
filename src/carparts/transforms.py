"""albumentations pipelines for training and evaluation; a horizontal flip that swaps left and right parts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HorizontalFlipSwapLR(A.HorizontalFlip):
    """Mirror image and mask, then relabel the mask: the car's left door becomes its right door.

    A plain horizontal flip would teach the model that a left door can look like a right door.
    """

    def __init__(self, flip_permutation: Sequence[int], p: float = 0.5):
        super().__init__(p=p)
        self.lut = np.asarray(flip_permutation, dtype=np.uint8)

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        return self.lut[np.ascontiguousarray(mask[:, ::-1])]


def resize_pad(img_size: int) -> list[A.BasicTransform]:
    """Letterbox: longest side to ``img_size``, then pad (black, background) to a square."""
    return [
        A.LongestMaxSize(max_size=img_size, interpolation=cv2.INTER_AREA),
        A.PadIfNeeded(
            min_height=img_size, min_width=img_size, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0,
            position="top_left",
        ),
    ]  # fmt: skip


def resize_to_input(img_size: int, resize: str = "letterbox") -> list[A.BasicTransform]:
    """The input policy's resize (see :func:`carparts.predict.preprocess`): ``letterbox`` or ``stretch``."""
    if resize == "stretch":
        return [A.Resize(img_size, img_size, interpolation=cv2.INTER_AREA)]
    return resize_pad(img_size)


def train_transform(
    img_size: int, flip_permutation: Sequence[int], level: str = "strong",
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, resize: str = "letterbox",
) -> A.Compose:  # fmt: skip
    """Training pipeline. ``level``: ``none`` (resize only), ``flip`` (+ L/R-aware flip), ``strong`` (+ scale,
    shift, small rotation, colour and blur), ``framing`` (``strong`` with width and height scaled independently,
    0.55-1.35, so cars of every aspect ratio and size appear, and JPEG compression: the framing of real photos)."""
    steps: list[A.BasicTransform] = list(resize_to_input(img_size, resize))
    if level != "none":
        steps.append(HorizontalFlipSwapLR(flip_permutation, p=0.5))
    if level in ("strong", "framing"):
        scale: Any = {"x": (0.55, 1.35), "y": (0.55, 1.35)} if level == "framing" else (0.7, 1.3)
        steps += [
            A.Affine(
                scale=scale, translate_percent=(-0.1, 0.1), rotate=(-10, 10), p=0.8,
                border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0,
            ),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=0.8),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.06))], p=0.2),
            A.ToGray(p=0.05),
        ]  # fmt: skip
    if level == "framing":
        steps.append(A.ImageCompression(quality_range=(30, 95), p=0.5))
    steps += [A.Normalize(mean=mean, std=std), ToTensorV2()]
    return A.Compose(steps)


def eval_transform(
    img_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
    resize: str = "letterbox",
) -> A.Compose:  # fmt: skip
    """Validation pipeline: the same resize as training, no randomness."""
    return A.Compose([*resize_to_input(img_size, resize), A.Normalize(mean=mean, std=std), ToTensorV2()])
