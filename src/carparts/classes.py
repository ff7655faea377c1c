"""Class taxonomy: names, colours, COCO ids, left/right pairs and the class index convention.

Index convention, everywhere (masks, model outputs, ONNX, JSON): 0 = background, then the data set's
COCO categories in id order, skipping background-like categories (``_background_``). For the car-parts
set this gives 1..18 = COCO ids 2..19.
"""

from __future__ import annotations

import colorsys
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

BACKGROUND = "background"
BACKGROUND_LIKE = {"_background_", "background", "__background__", "bg"}

# Category names of the car-parts data set, in COCO id order (ids 2..19).
CARPARTS_NAMES = (
    "back_bumper", "back_glass", "back_left_door", "back_left_light", "back_right_door",
    "back_right_light", "front_bumper", "front_glass", "front_left_door", "front_left_light",
    "front_right_door", "front_right_light", "hood", "left_mirror", "right_mirror", "tailgate",
    "trunk", "wheel",
)  # fmt: skip

# Hand-picked so that neighbouring parts and each left/right pair are easy to tell apart.
CARPARTS_COLOURS = (
    (0, 0, 0),  # background
    (230, 25, 75),  # back_bumper
    (70, 240, 240),  # back_glass
    (245, 130, 48),  # back_left_door
    (255, 225, 25),  # back_left_light
    (145, 30, 180),  # back_right_door
    (250, 190, 212),  # back_right_light
    (0, 130, 200),  # front_bumper
    (60, 180, 75),  # front_glass
    (170, 110, 40),  # front_left_door
    (210, 245, 60),  # front_left_light
    (0, 0, 128),  # front_right_door
    (240, 50, 230),  # front_right_light
    (128, 0, 0),  # hood
    (255, 215, 180),  # left_mirror
    (0, 128, 128),  # right_mirror
    (128, 128, 0),  # tailgate
    (220, 190, 255),  # trunk
    (170, 255, 195),  # wheel
)

_SIDE = re.compile(r"(?<![a-z])(left|right)(?![a-z])")


def mirror_name(name: str) -> str:
    """Return the name of the part seen in a mirror image: ``front_left_door`` -> ``front_right_door``."""
    return _SIDE.sub(lambda m: "right" if m.group(1) == "left" else "left", name)


def generated_palette(n: int) -> list[tuple[int, int, int]]:
    """Distinct colours for a taxonomy without a hand-picked palette (background stays black)."""
    colours = [(0, 0, 0)]
    for i in range(1, n):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95 if i % 2 else 0.7)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


@dataclass(frozen=True)
class Taxonomy:
    """The classes a model predicts, index 0 being background.

    Attributes:
        names: class names by index; ``names[0] == "background"``.
        category_ids: COCO category id of each class by index; ``category_ids[0]`` is ``None``.
        colours: RGB colour of each class by index, used by masks, overlays, charts and the web page.
    """

    names: tuple[str, ...]
    category_ids: tuple[int | None, ...]
    colours: tuple[tuple[int, int, int], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.colours:
            object.__setattr__(self, "colours", tuple(generated_palette(len(self.names))))
        if not (len(self.names) == len(self.category_ids) == len(self.colours)):
            raise ValueError("names, category_ids and colours must have one entry per class")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def parts(self) -> tuple[str, ...]:
        """Names of the foreground classes (all but background)."""
        return self.names[1:]

    @property
    def flip_permutation(self) -> tuple[int, ...]:
        """Index map applied to a mask (or to logit channels) after a horizontal flip.

        ``perm[i]`` is the class that class ``i`` becomes in the mirror image: a left part becomes its
        right twin. Classes without a twin map to themselves.
        """
        index = {name: i for i, name in enumerate(self.names)}
        return tuple(index.get(mirror_name(name), i) for i, name in enumerate(self.names))

    @property
    def left_right_pairs(self) -> list[tuple[int, int]]:
        """(left index, right index) for every part that has a mirror twin."""
        perm = self.flip_permutation
        return [(i, j) for i, j in enumerate(perm) if i != j and "left" in self.names[i]]

    def category_to_index(self) -> dict[int, int]:
        """COCO category id -> class index."""
        return {cid: i for i, cid in enumerate(self.category_ids) if cid is not None}

    def to_dict(self) -> dict:
        return {
            "names": list(self.names),
            "category_ids": list(self.category_ids),
            "colours": [list(c) for c in self.colours],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Taxonomy:
        return cls(
            names=tuple(data["names"]),
            category_ids=tuple(data["category_ids"]),
            colours=tuple(tuple(c) for c in data["colours"]),
        )

    @classmethod
    def from_coco_categories(cls, categories: Sequence[dict]) -> Taxonomy:
        """Build the taxonomy of a COCO file: background first, then categories in id order.

        Background-like categories (``_background_``) are not classes of their own. When the categories
        are exactly the car-parts set, its hand-picked colours are used.
        """
        cats = sorted((c for c in categories if c["name"].lower() not in BACKGROUND_LIKE), key=lambda c: c["id"])
        names = (BACKGROUND, *(c["name"] for c in cats))
        ids = (None, *(int(c["id"]) for c in cats))
        colours = CARPARTS_COLOURS if names[1:] == CARPARTS_NAMES else ()
        return cls(names=names, category_ids=ids, colours=colours)


CARPARTS = Taxonomy(
    names=(BACKGROUND, *CARPARTS_NAMES),
    category_ids=(None, *range(2, 2 + len(CARPARTS_NAMES))),
    colours=CARPARTS_COLOURS,
)
