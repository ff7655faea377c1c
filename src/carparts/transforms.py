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
EMPTY = 255
"""Mask value the ``paste`` and ``clutter`` levels' geometric steps leave where the frame shows nothing of the
photo (a zoom-out's border, a rotation's corners, a shift's edge); :class:`BackdropFill` fills those pixels."""
BACKDROP = "backdrop"
"""The data key of :class:`BackdropFill`: a callable ``rng -> (image, mask)`` drawing another training photo."""


class HorizontalFlipSwapLR(A.HorizontalFlip):
    """Mirror image and mask, then relabel the mask: the car's left door becomes its right door.

    A plain horizontal flip would teach the model that a left door can look like a right door.
    """

    def __init__(self, flip_permutation: Sequence[int], p: float = 0.5):
        super().__init__(p=p)
        self.lut = np.asarray(flip_permutation, dtype=np.uint8)

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        return self.lut[np.ascontiguousarray(mask[:, ::-1])]


def background_clutter(
    image: np.ndarray, mask: np.ndarray, height: int, width: int, rng: np.random.Generator
) -> np.ndarray | None:
    """A ``height`` x ``width`` picture of ``image``'s surroundings with no part in it: the widest strip beside the
    box around all of ``mask``'s parts, at the scale the photo has in such a frame, mirrored out to fill it from a
    random offset. None when no strip holds an eighth of the photo."""
    rows, cols = np.nonzero(mask)
    if len(rows):
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        strips = [image[:top], image[bottom:], image[:, :left], image[:, right:]]
        image = max(strips, key=lambda strip: strip.shape[0] * strip.shape[1])
    if image.shape[0] * image.shape[1] * 8 < mask.size:
        return None
    sy, sx = height / mask.shape[0], width / mask.shape[1]
    size = (max(1, round(image.shape[1] * sx)), max(1, round(image.shape[0] * sy)))
    strip = cv2.resize(image, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], -1)
    tiled = np.pad(strip, ((0, 2 * height), (0, 2 * width), (0, 0)), mode="symmetric")
    y, x = int(rng.integers(height)), int(rng.integers(width))
    return np.ascontiguousarray(tiled[y : y + height, x : x + width])


class BackdropFill(A.DualTransform):
    """Fill the frame's empty pixels (mask == :data:`EMPTY`) with what another training photo shows.

    Real photos frame small cars among other cars, people and stands; a zoomed-out training image shows its car on
    black. With probability ``p`` (and only when the frame has empty pixels) this draws a photo from the data's
    ``backdrop`` callable (``rng -> (image, mask)``; :class:`carparts.data.SegmentationDataset` hands one in) and
    shows, where the frame was empty, either the photo itself with its labels, through ``backdrop_steps`` (resize
    to the input, L/R-aware flip, zoom in), or with ``backdrop_steps=None`` only its surroundings, no part in them
    (:func:`background_clutter`). Otherwise the empty pixels become black background as in the other levels.
    """

    def __init__(self, backdrop_steps: A.Compose | None, p: float = 0.5):
        super().__init__(p=1.0)  # always runs: EMPTY must never reach the loss
        self.backdrop_steps = backdrop_steps
        self.paste_p = p

    @property
    def targets_as_params(self) -> list[str]:
        return ["mask", BACKDROP]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        empty = data["mask"] == EMPTY
        if not empty.any() or self.py_random.random() >= self.paste_p:
            return {"empty": empty, "backdrop": None}
        image, mask = data[BACKDROP](self.random_generator)
        if self.backdrop_steps is None:
            clutter = background_clutter(image, mask, *empty.shape, self.random_generator)
            backdrop = None if clutter is None else (clutter, np.zeros(empty.shape, dtype=mask.dtype))
            return {"empty": empty, "backdrop": backdrop}
        self.backdrop_steps.set_random_state(self.random_generator, self.py_random)
        out = self.backdrop_steps(image=image, mask=mask)
        return {"empty": empty, "backdrop": (out["image"], out["mask"])}

    def apply(self, img: np.ndarray, empty: np.ndarray, backdrop: tuple | None, **params: Any) -> np.ndarray:
        return np.where(empty[..., None], 0 if backdrop is None else backdrop[0], img).astype(img.dtype)

    def apply_to_mask(self, mask: np.ndarray, empty: np.ndarray, backdrop: tuple | None, **params: Any) -> np.ndarray:
        return np.where(empty, 0 if backdrop is None else backdrop[1], mask).astype(mask.dtype)


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


def camera_blur(p: float) -> A.OneOf:
    """The blur of a hand-held or badly focused shot, stronger than the ``strong`` level's 3-5 px kernel: a motion
    streak of 3-15 px in any direction, or an out-of-focus Gaussian with sigma 1-3 px (kernel up to 11 px), on a
    share ``p`` of the photos, after the geometric steps (the camera blurs what it frames). The masks stay sharp:
    the parts are where they are, however the photo renders them."""
    return A.OneOf(
        [
            A.MotionBlur(blur_limit=(3, 15), allow_shifted=False),
            A.GaussianBlur(blur_limit=(3, 11), sigma_limit=(1.0, 3.0)),
        ],
        p=p,
    )


def train_transform(
    img_size: int, flip_permutation: Sequence[int], level: str = "strong",
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, resize: str = "letterbox",
    blur: float = 0.0,
) -> A.Compose:  # fmt: skip
    """Training pipeline. ``level``: ``none`` (resize only), ``flip`` (+ L/R-aware flip), ``strong`` (+ scale,
    shift, small rotation, colour and blur), ``framing`` (``strong`` with width and height scaled independently,
    0.55-1.35, so cars of every aspect ratio and size appear, and JPEG compression: the framing of real photos),
    ``paste`` (``framing`` whose empty borders show, half the time, another training photo with its labels:
    :class:`BackdropFill`), ``clutter`` (the same with only another photo's surroundings, no part in them). Those
    two pipelines must be called with ``backdrop=`` (see :data:`BACKDROP`). ``blur``: the share of photos given
    a camera blur (:func:`camera_blur`) on top of any level."""
    steps: list[A.BasicTransform] = list(resize_to_input(img_size, resize))
    if level != "none":
        steps.append(HorizontalFlipSwapLR(flip_permutation, p=0.5))
    if level in ("strong", "framing", "paste", "clutter"):
        scale: Any = (0.7, 1.3) if level == "strong" else {"x": (0.55, 1.35), "y": (0.55, 1.35)}
        steps.append(
            A.Affine(
                scale=scale, translate_percent=(-0.1, 0.1), rotate=(-10, 10), p=0.8,
                border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=EMPTY if level in ("paste", "clutter") else 0,
            )
        )  # fmt: skip
        if level == "clutter":
            steps.append(BackdropFill(None, p=0.5))
        if level == "paste":
            backdrop_steps = [
                *resize_to_input(img_size, resize),
                HorizontalFlipSwapLR(flip_permutation, p=0.5),
                # constant border: a reflected edge would mirror a left door without making it a right one
                A.Affine(scale=(1.2, 1.8), translate_percent=(-0.1, 0.1), border_mode=cv2.BORDER_CONSTANT),
            ]
            steps.append(BackdropFill(A.Compose(backdrop_steps), p=0.5))
        steps += [
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=0.8),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.06))], p=0.2),
            A.ToGray(p=0.05),
        ]  # fmt: skip
    if blur:
        steps.append(camera_blur(blur))
    if level in ("framing", "paste", "clutter"):
        steps.append(A.ImageCompression(quality_range=(30, 95), p=0.5))
    steps += [A.Normalize(mean=mean, std=std), ToTensorV2()]
    return A.Compose(steps)


def eval_transform(
    img_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
    resize: str = "letterbox",
) -> A.Compose:  # fmt: skip
    """Validation pipeline: the same resize as training, no randomness."""
    return A.Compose([*resize_to_input(img_size, resize), A.Normalize(mean=mean, std=std), ToTensorV2()])
