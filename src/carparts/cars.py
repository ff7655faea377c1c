"""Per-car understanding: split a class-index mask into cars, name the side each car shows, list hidden parts.

Grouping (:func:`car_mask`): every connected piece of every part is a *part instance*. Instances are joined
greedily, closest pair first (single linkage on the pixel gap), when the gap is small against the larger
group's size and no group would hold the same part twice: two hoods, two front glasses or two left doors mean
two cars. Groups far smaller than the largest car, and pieces far smaller than their part usually is, are
fragments: they join the nearest car or are dropped. The rules come from the training annotations, where one
car's parts are often apart (fenders, pillars and roof are not classes, so a headlight can sit a wheel's width
away from the nearest door).

Viewpoint (:func:`viewpoint`): the pixels of the face parts (bumper, glass, hood or lid, lights) against the
side parts (doors, mirror) say whether a car is seen face-on, from a diagonal or in profile; front-against-rear
pixels say which face, and the layout (which end of the car lies left in the image) or the left/right classes
say which side. Left and right are the car's own: a car seen from its front with its left side showing is
``front-left``, and its front then lies on the image's left of its doors. The figures behind the thresholds
and the expected-parts table are in ``docs/cars.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from carparts import parts as part_records
from carparts.classes import Taxonomy, mirror_name

VIEWPOINTS = ("front", "front-left", "left", "rear-left", "rear", "rear-right", "right", "front-right")
"""The eight viewpoints in order around the car, 45 degrees apart (neighbours differ by one step)."""

FACE_PARTS = {
    "front": ("front_bumper", "front_glass", "hood", "front_left_light", "front_right_light"),
    "rear": ("back_bumper", "back_glass", "trunk", "tailgate", "back_left_light", "back_right_light"),
}
SIDE_PARTS = {
    "left": ("front_left_door", "back_left_door", "left_mirror"),
    "right": ("front_right_door", "back_right_door", "right_mirror"),
}
PART_WEIGHTS = {"trunk": 0.5, "tailgate": 0.5}
"""Evidence weights (others 1): a pickup's bed wears the lid labels along its side, seen in profile too."""
REPEATED_PARTS = frozenset({"wheel"})  # a car shows up to four; every other part at most once
USUAL_SHARE = {
    "back_bumper": 0.26, "back_glass": 0.09, "back_left_door": 0.14, "back_left_light": 0.02,
    "back_right_door": 0.17, "back_right_light": 0.03, "front_bumper": 0.42, "front_glass": 0.15,
    "front_left_door": 0.19, "front_left_light": 0.02, "front_right_door": 0.19, "front_right_light": 0.02,
    "hood": 0.16, "left_mirror": 0.008, "right_mirror": 0.008, "tailgate": 0.26, "trunk": 0.24, "wheel": 0.15,
}  # fmt: skip
"""Median share of a car's part pixels that each part takes, where present (training annotations)."""

# Parts seen on at least half of the training images of each viewpoint (right-hand views mirrored onto the
# left-hand ones; docs/cars.md). Trunk and tailgate are left out: a car has one or the other.
EXPECTED_PARTS_LEFT = {
    "front": ("front_bumper", "front_glass", "hood", "front_left_light", "front_right_light", "left_mirror",
              "right_mirror"),
    "front-left": ("front_bumper", "front_glass", "hood", "front_left_light", "front_left_door", "back_left_door",
                   "left_mirror", "wheel"),
    "left": ("front_left_light", "front_left_door", "back_left_door", "back_left_light", "left_mirror", "wheel"),
    "rear-left": ("back_bumper", "back_glass", "back_left_light", "front_left_door", "back_left_door",
                  "left_mirror", "wheel"),
    "rear": ("back_bumper", "back_glass", "back_left_light", "back_right_light"),
}  # fmt: skip
EXPECTED_PARTS = {
    **EXPECTED_PARTS_LEFT,
    **{mirror_name(v): tuple(map(mirror_name, parts)) for v, parts in EXPECTED_PARTS_LEFT.items()},
}

FACE_ONLY = 0.05
"""Side pixels under this share of face + side pixels: a straight front or rear view."""
SIDE_ONLY = 0.66
"""Side pixels over this share: a profile. In between: a diagonal view."""
LAYOUT_MIN_OFFSET = 0.05
"""The face must lie this share of the car's width left or right of the side for the layout to decide."""
CLEAR_SIDE = 3.0
"""Side parts name a side clearly when that side has this many times the other's pixels."""


@dataclass(frozen=True)
class GroupingParams:
    """Settings of :func:`car_mask`; sizes are relative, so they hold at any image size.

    Attributes:
        work_side: masks are grouped at most this size (longest side) and the car labels mapped back.
        link_gap: two groups join when the gap between them is under this share of the larger group's size
            (the square root of its bounding-box area).
        twin_share: the same part in both groups blocks a join when the smaller piece holds at least this
            share of the larger one's pixels (a stray bit of "hood" on a door does not block) ...
        twin_touch: ... unless the two pieces nearly touch, within this share of the larger piece's size (a
            door cut in two by a mirror is one door).
        twin_alone: a single twin part blocks only when it holds this share of the smaller group's pixels
            (wheels aside); two or more always block.
        two_faces: a join is blocked when front and rear parts would each hold this share of the car's
            pixels (wheels aside; in the training annotations one car reaches 0.15, in profile) ...
        two_sides: ... or the doors of each side this share (training cars: at most 0.02).
        touch_gap: groups this close (pixels at work size) touch: only twin parts keep them apart.
        speck_share: a piece under this share of its part's usual size (:data:`USUAL_SHARE` of all part
            pixels) neither joins nor blocks; like a fragment, it goes to the nearest car afterwards.
        dust_share: pieces under this share of the (work-size) image are not grouped at all; they take the car
            they touch, if any.
        min_car_share: a group needs this share of the largest group's pixels to be a car of its own;
            smaller groups, and groups of wheels alone, are fragments.
        fragment_gap: fragments join the nearest car within this many car sizes; farther ones are dropped.
    """

    work_side: int = 512
    link_gap: float = 0.3
    twin_share: float = 0.2
    twin_touch: float = 0.3
    twin_alone: float = 0.25
    two_faces: float = 0.2
    two_sides: float = 0.05
    touch_gap: float = 2.0
    speck_share: float = 0.1
    dust_share: float = 1e-4
    min_car_share: float = 0.1
    fragment_gap: float = 0.25


@dataclass
class Car:
    """One car: its id in the car mask, where it is, its parts and the side it shows."""

    id: int
    bbox: list[int]  # [x, y, w, h]
    pixels: int
    parts: list[dict[str, Any]]  # class_id, name, pixels, bbox (and confidence, with probabilities)
    viewpoint: str | None
    not_visible: list[str] = field(default_factory=list)
    confidence: float | None = None  # mean calibrated probability over the car's part pixels

    def to_dict(self) -> dict[str, Any]:
        record = {
            "id": self.id,
            "bbox": self.bbox,
            "pixels": self.pixels,
            "viewpoint": self.viewpoint,
            "parts": self.parts,
            "not_visible": self.not_visible,
        }
        if self.confidence is not None:
            record["confidence"] = round(self.confidence, 4)
        return record


# --- grouping -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PartKinds:
    """Class indices the grouping rules need, for one taxonomy."""

    repeated: set[int]
    faces: tuple[list[int], list[int]]  # front, rear
    sides: tuple[list[int], list[int]]  # left, right
    doors: tuple[list[int], list[int]]  # left, right
    weight: np.ndarray  # evidence weight per class; 0 for background and wheels

    @classmethod
    def of(cls, taxonomy: Taxonomy) -> _PartKinds:
        names = taxonomy.names

        def indices(chosen: Sequence[str]) -> list[int]:
            return [i for i, name in enumerate(names) if name in chosen]

        repeated = set(indices(REPEATED_PARTS))
        weight = np.asarray([0.0 if i == 0 or i in repeated else PART_WEIGHTS.get(n, 1.0) for i, n in enumerate(names)])
        faces = (indices(FACE_PARTS["front"]), indices(FACE_PARTS["rear"]))
        sides = (indices(SIDE_PARTS["left"]), indices(SIDE_PARTS["right"]))
        doors = tuple(indices([p for p in SIDE_PARTS[side] if "door" in p]) for side in ("left", "right"))
        return cls(repeated, faces, sides, doors, weight)


@dataclass
class _Group:
    members: list[int]
    class_pixels: np.ndarray  # pixels per class index
    class_xsum: np.ndarray  # pixels x the centre column of their piece's box, per class index
    box: np.ndarray  # x0, y0, x1, y1 (inclusive)

    @property
    def pixels(self) -> int:
        return int(self.class_pixels.sum())

    @property
    def size(self) -> float:
        return math.sqrt(float((self.box[2] - self.box[0] + 1) * (self.box[3] - self.box[1] + 1)))


def _downscale(mask: np.ndarray, work_side: int) -> np.ndarray:
    height, width = mask.shape
    scale = work_side / max(height, width)
    if scale >= 1:
        return mask
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)


def _bounding_box(binary: np.ndarray, margin: int = 0) -> tuple[slice, slice]:
    """Slices of the box around the true pixels of ``binary``, grown by ``margin`` (the whole image when none)."""
    rows, cols = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
    if not len(rows):
        return slice(0, binary.shape[0]), slice(0, binary.shape[1])
    (top, bottom), (left, right) = (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))
    return slice(max(0, top - margin), bottom + 1 + margin), slice(max(0, left - margin), right + 1 + margin)


def part_instances(mask: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Connected pieces (8-connected) of every part.

    Returns ``(labels, classes, boxes)``: an int32 image with instance ids 1..n (0 = background), the class
    index of each instance (``classes[i - 1]``) and its inclusive box ``[x0, y0, x1, y1]``.
    """
    labels = np.zeros(mask.shape, dtype=np.int32)
    classes, boxes = [], []
    # each part's pieces lie inside its bounding box, so labelling that crop alone finds the same pieces
    for index, region in enumerate(ndimage.find_objects(mask, max_label=num_classes - 1), start=1):
        if region is None:
            continue
        count, pieces, stats, _ = cv2.connectedComponentsWithStats(
            (mask[region] == index).astype(np.uint8), connectivity=8
        )
        np.copyto(labels[region], pieces + len(classes), where=pieces > 0)
        top, left = region[0].start, region[1].start
        for x, y, w, h in stats[1:, :4]:
            classes.append(index)
            boxes.append([left + x, top + y, left + x + w - 1, top + y + h - 1])
    return labels, np.asarray(classes, dtype=np.int64), np.asarray(boxes, dtype=np.int64).reshape(-1, 4)


def instance_gaps(labels: np.ndarray, n: int) -> np.ndarray:
    """(n, n) pixel gap between instances: 1 for touching pieces, 0 on the diagonal."""
    # the shortest chamfer path between two pixels stays in their bounding box: the instances' box is enough
    labels = labels[_bounding_box(labels > 0)]
    flat = labels.ravel()
    order = np.flatnonzero(flat)
    order = order[np.argsort(flat[order], kind="stable")]
    starts = np.searchsorted(flat[order], np.arange(1, n + 1))
    gaps = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        distance = cv2.distanceTransform((labels != i + 1).astype(np.uint8), cv2.DIST_L2, 5)
        gaps[i] = np.minimum.reduceat(distance.ravel()[order], starts)
    return np.minimum(gaps, gaps.T)


def _conflict(a: _Group, b: _Group, gap: float, piece_gap: np.ndarray, classes: np.ndarray, kinds: _PartKinds,
              params: GroupingParams) -> bool:  # fmt: skip
    """True when ``a`` and ``b`` (``gap`` apart) cannot be one car: it would hold the same part twice, or,
    apart, show both faces broadly or the doors of both sides, or have a layout saying one side and doors the
    other (no training car does any of these). Touching groups are spared those last three: a model that
    mixes up left and right paints both sides' doors on one car."""
    if _twins(a, b, piece_gap, classes, kinds.repeated, params):
        return True
    if gap <= params.touch_gap:
        return False
    merged = a.class_pixels + b.class_pixels
    body = float((merged * kinds.weight).sum())
    front, rear = (float((merged * kinds.weight)[faces].sum()) for faces in kinds.faces)
    left, right = (float(merged[doors].sum()) for doors in kinds.doors)
    if min(front, rear) >= params.two_faces * body or min(left, right) >= params.two_sides * body:
        return True
    return _sides_disagree(_merge(a, b), kinds)


def _sides_disagree(group: _Group, kinds: _PartKinds) -> bool:
    """The layout (:func:`layout_side`) names one side and the side parts, clearly, the other."""
    weighted = group.class_pixels * kinds.weight

    def stats(indices: list[int]) -> tuple[float, float | None]:
        total = float(weighted[indices].sum())
        return total, (float((group.class_xsum * kinds.weight)[indices].sum()) / total if total else None)

    (left, _), (right, _) = stats(kinds.sides[0]), stats(kinds.sides[1])
    front, rear, side = stats(kinds.faces[0]), stats(kinds.faces[1]), stats(kinds.sides[0] + kinds.sides[1])
    face_px = max(front[0], rear[0])
    if max(left, right) < CLEAR_SIDE * min(left, right) or side[0] < FACE_ONLY * (side[0] + face_px):
        return False
    layout = _layout(front, rear, side, "front" if front[0] >= rear[0] else "rear", group.box[2] - group.box[0] + 1)
    return layout is not None and layout != ("left" if left > right else "right")


def _twins(
    a: _Group, b: _Group, piece_gap: np.ndarray, classes: np.ndarray, repeated: set[int], params: GroupingParams
) -> bool:
    """True when joining ``a`` and ``b`` would give one car the same part twice.

    One twin part alone blocks only when it is much of the smaller group: a stray piece (a mirror taken for a
    headlight) must not keep a car's doors from its front, but a headlight alone must not join the wrong car.
    """
    twins = []
    for index in np.flatnonzero((a.class_pixels > 0) & (b.class_pixels > 0)):
        small, large = sorted((a.class_pixels[index], b.class_pixels[index]))
        if index in repeated or small < params.twin_share * large:
            continue
        pieces_a = [m for m in a.members if classes[m] == index]
        pieces_b = [m for m in b.members if classes[m] == index]
        if piece_gap[np.ix_(pieces_a, pieces_b)].min() > max(2.0, params.twin_touch * math.sqrt(large)):
            twins.append(index)
    if len(twins) != 1:
        return len(twins) > 1
    smaller = a if a.pixels <= b.pixels else b
    body = np.delete(smaller.class_pixels, list(repeated)).sum()
    return smaller.class_pixels[twins[0]] >= params.twin_alone * body


def group_instances(
    classes: np.ndarray, boxes: np.ndarray, pixels: np.ndarray, gaps: np.ndarray, taxonomy: Taxonomy,
    params: GroupingParams = GroupingParams(),
) -> list[int]:  # fmt: skip
    """Car number (1..k) of every instance, 0 for dropped fragments; cars numbered left to right."""
    n = len(classes)
    kinds = _PartKinds.of(taxonomy)
    usual = np.asarray([USUAL_SHARE.get(name, 0.05) for name in taxonomy.names])
    speck = pixels < params.speck_share * usual[classes] * pixels.sum()
    groups: list[_Group] = []
    for i in range(n):
        class_pixels, class_xsum = np.zeros((2, taxonomy.num_classes))
        class_pixels[classes[i]] = pixels[i]
        class_xsum[classes[i]] = pixels[i] * (boxes[i, 0] + boxes[i, 2] + 1) / 2
        groups.append(_Group([i], class_pixels, class_xsum, boxes[i].copy()))
    group_gap = gaps.copy()
    np.fill_diagonal(group_gap, np.inf)
    blocked = np.zeros((n, n), dtype=bool)
    alive = np.flatnonzero(~speck)
    while len(alive) > 1:
        sizes = np.asarray([groups[g].size for g in alive])
        gap = group_gap[np.ix_(alive, alive)]
        allowed = (gap < params.link_gap * np.maximum.outer(sizes, sizes)) & ~blocked[np.ix_(alive, alive)]
        if not allowed.any():
            break
        # the closest pair first, so that each piece joins its nearest neighbours
        first, second = np.unravel_index(np.where(allowed, gap, np.inf).argmin(), gap.shape)
        a, b = alive[first], alive[second]
        if _conflict(groups[a], groups[b], group_gap[a, b], gaps, classes, kinds, params):
            blocked[a, b] = blocked[b, a] = True
            continue
        groups[a] = _merge(groups[a], groups[b])
        group_gap[a] = group_gap[:, a] = np.minimum(group_gap[a], group_gap[b])
        group_gap[a, a] = np.inf
        blocked[a] = blocked[:, a] = False  # a grew: its blocks are tested again
        alive = alive[alive != b]
    kept = [*alive, *np.flatnonzero(speck)]
    may_be_car = [k < len(alive) for k in range(len(kept))]
    return _number_cars([groups[g] for g in kept], group_gap[np.ix_(kept, kept)], may_be_car, n, kinds.repeated, params)


def _merge(a: _Group, b: _Group) -> _Group:
    box = np.concatenate([np.minimum(a.box[:2], b.box[:2]), np.maximum(a.box[2:], b.box[2:])])
    return _Group(a.members + b.members, a.class_pixels + b.class_pixels, a.class_xsum + b.class_xsum, box)


def _number_cars(
    groups: list[_Group], gap: np.ndarray, may_be_car: list[bool], n: int, repeated: set[int],
    params: GroupingParams,
) -> list[int]:  # fmt: skip
    """Keep groups big enough to be cars, hand fragments to the nearest car, number cars left to right."""
    largest = max((g.pixels for g in groups), default=0)

    def is_car(k: int) -> bool:
        wheels_only = all(i in repeated for i in np.flatnonzero(groups[k].class_pixels))
        return may_be_car[k] and groups[k].pixels >= params.min_car_share * largest and not wheels_only

    cars = [k for k in range(len(groups)) if is_car(k)]
    cars.sort(key=lambda k: (groups[k].box[0] + groups[k].box[2], groups[k].box[1]))
    number = {k: rank + 1 for rank, k in enumerate(cars)}
    car_of = [0] * n
    for k, g in enumerate(groups):
        if k not in number and cars:
            nearest = min(cars, key=lambda c: gap[k, c])
            if gap[k, nearest] <= params.fragment_gap * groups[nearest].size:
                number[k] = number[nearest]
        for member in g.members:
            car_of[member] = number.get(k, 0)
    return car_of


def car_mask(mask: np.ndarray, taxonomy: Taxonomy, params: GroupingParams = GroupingParams()) -> np.ndarray:
    """Split a class-index mask into cars: an int32 image, 0 = no car, k = car k (numbered left to right).

    Part pixels that belong to no car (stray pieces away from every car) are 0 too.
    """
    small = _downscale(mask, params.work_side)
    labels, classes, boxes = part_instances(small, taxonomy.num_classes)
    pixels = np.bincount(labels.ravel(), minlength=len(classes) + 1)[1:]
    kept = np.flatnonzero(pixels >= params.dust_share * small.size)
    if not len(kept):
        return np.zeros(mask.shape, dtype=np.int32)
    renumber = np.zeros(len(classes) + 1, dtype=np.int32)
    renumber[kept + 1] = np.arange(1, len(kept) + 1)
    labels, classes, boxes, pixels = renumber[labels], classes[kept], boxes[kept], pixels[kept]
    car_of = group_instances(classes, boxes, pixels, instance_gaps(labels, len(kept)), taxonomy, params)
    cars = np.asarray([0, *car_of], dtype=np.int32)[labels]
    dropped = np.asarray([False, *(c == 0 for c in car_of)])[labels]
    filled = _take_nearest_car(cars, dropped, reach=2)
    if filled.shape != mask.shape:
        filled = cv2.resize(filled, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_NEAREST)
    return filled * (mask > 0)  # part pixels only


def _take_nearest_car(cars: np.ndarray, dropped: np.ndarray, reach: float) -> np.ndarray:
    """``cars`` with the pixels within ``reach`` of a car given that car's number, except ``dropped`` ones.

    Dust, and thin pieces lost when downscaling, so take the car they touch. Only the cars' box, grown by the
    reach, can change, so the distance transform runs on that crop alone.
    """
    filled = np.zeros_like(cars)
    box = _bounding_box(cars > 0, margin=math.ceil(reach))
    distance, nearest = ndimage.distance_transform_edt(cars[box] == 0, return_indices=True)
    near = cars[box][tuple(nearest)]
    near[dropped[box] | (distance > reach)] = 0
    filled[box] = near
    return filled


# --- describing cars --------------------------------------------------------------------------------------------


def _describe_cars(
    cars: np.ndarray, mask: np.ndarray, taxonomy: Taxonomy, confidence: np.ndarray | None = None
) -> dict[int, tuple[list[int], int, list[dict[str, Any]], float | None]]:
    """``car id -> (bbox, pixels, parts, confidence)`` at the mask's native size, for the cars present in ``cars``.

    One pass over the cars' box: every (car, class) pair is one label, counted by ``np.bincount`` (and its
    probabilities summed, when ``confidence`` is given) and boxed by ``ndimage.find_objects``; a car's box and
    pixels are those of its labels together (background included), its confidence that of its part pixels.
    """
    num_classes = taxonomy.num_classes
    box = _bounding_box(cars > 0)
    origin = box[1].start, box[0].start
    pair_labels = cars[box].astype(np.int32, copy=False) * num_classes + mask[box]  # car k, class c -> k * C + c
    size = (int(cars.max(initial=0)) + 1) * num_classes
    counts = np.bincount(pair_labels.ravel(), minlength=size).reshape(-1, num_classes)  # [car, class]
    sums = None
    if confidence is not None:
        sums = part_records.confidence_sums(pair_labels, confidence[box], size).reshape(-1, num_classes)
    regions = [None, *ndimage.find_objects(pair_labels)]  # regions[k * C + c]
    described = {}
    for car_id in np.flatnonzero(counts[1:].sum(axis=1)) + 1:
        found = {c: regions[car_id * num_classes + c] for c in np.flatnonzero(counts[car_id])}
        means = np.zeros(num_classes) if sums is None else sums[car_id] / np.maximum(counts[car_id], 1)
        parts = [
            part_records.part_record(
                taxonomy, int(c), int(counts[car_id, c]), _xywh([region], origin), None if sums is None else means[c]
            )
            for c, region in found.items()
            if c > 0
        ]
        car_confidence = None
        if sums is not None and counts[car_id, 1:].sum():
            car_confidence = float(sums[car_id, 1:].sum() / counts[car_id, 1:].sum())
        bbox = _xywh(list(found.values()), origin)
        described[int(car_id)] = (bbox, int(counts[car_id].sum()), parts, car_confidence)
    return described


def _xywh(regions: Sequence[tuple[slice, slice]], origin: tuple[int, int]) -> list[int]:
    """``[x, y, w, h]`` of the box around ``find_objects`` regions of a crop whose top-left pixel is ``origin``."""
    x0, y0 = min(cols.start for _, cols in regions), min(rows.start for rows, _ in regions)
    x1, y1 = max(cols.stop for _, cols in regions), max(rows.stop for rows, _ in regions)
    return [origin[0] + x0, origin[1] + y0, x1 - x0, y1 - y0]


def find_cars(
    mask: np.ndarray, taxonomy: Taxonomy, cars: np.ndarray | None = None, params: GroupingParams = GroupingParams(),
    confidence: np.ndarray | None = None,
) -> list[Car]:  # fmt: skip
    """The cars in a class-index mask, each with its parts, bbox, viewpoint and expected-but-hidden parts.

    Boxes and pixel counts are exact at the mask's size, though cars are grouped on a smaller copy.

    Args:
        mask: (H, W) class-index mask.
        taxonomy: the classes of the mask.
        cars: the car mask from :func:`car_mask`, when already computed.
        confidence: the (H, W) probability of each pixel's class, when known: cars and their parts then carry
            their mean ``confidence``.
    """
    cars = car_mask(mask, taxonomy, params) if cars is None else cars
    found = []
    for car_id, (bbox, pixels, parts, car_confidence) in _describe_cars(cars, mask, taxonomy, confidence).items():
        view = viewpoint(parts)
        found.append(Car(id=car_id, bbox=bbox, pixels=pixels, parts=parts, viewpoint=view,
                         not_visible=not_visible(view, parts), confidence=car_confidence))  # fmt: skip
    return found


def cars_json(cars: Sequence[Car]) -> list[dict[str, Any]]:
    """The ``cars`` list of the JSON outputs (``predict``'s ``<stem>.json`` and ``/v1/segment``)."""
    return [car.to_dict() for car in cars]


# --- viewpoint --------------------------------------------------------------------------------------------------


def _group_stats(parts: Sequence[Mapping[str, Any]], names: Sequence[str]) -> tuple[float, float | None]:
    """Weighted pixels of the parts named and their weighted mean x (of bbox centres); x is None when absent."""
    chosen = [(p["pixels"] * PART_WEIGHTS.get(p["name"], 1.0), p["bbox"]) for p in parts if p["name"] in names]
    total = float(sum(weight for weight, _ in chosen))
    if not total:
        return 0.0, None
    return total, sum(weight * (box[0] + box[2] / 2) for weight, box in chosen) / total


def layout_side(parts: Sequence[Mapping[str, Any]], face: str) -> str | None:
    """Which side of the car shows, read from where its face lies in the image, or None when unclear.

    Seen from its left, a car's front lies on the image's left and its rear on the right (and the other way
    round from its right). So in a front-left view the front lies left of the doors; in a rear-left view the
    rear lies right of them. With both faces present they are compared directly.
    """
    boxes = [p["bbox"] for p in parts if p["pixels"] > 0]
    if not boxes:
        return None
    width = max(b[0] + b[2] for b in boxes) - min(b[0] for b in boxes)
    front, rear = _group_stats(parts, FACE_PARTS["front"]), _group_stats(parts, FACE_PARTS["rear"])
    return _layout(front, rear, _group_stats(parts, SIDE_PARTS["left"] + SIDE_PARTS["right"]), face, width)


Stats = tuple[float, float | None]  # weighted pixels and mean x of a set of parts


def _layout(front: Stats, rear: Stats, side: Stats, face: str, width: float) -> str | None:
    """:func:`layout_side` from the pixels and mean x of the front, rear and side parts."""
    (front_px, front_x), (rear_px, rear_x), (_, side_x) = front, rear, side
    face_x = front_x if face == "front" else rear_x
    if front_x is not None and rear_x is not None and min(front_px, rear_px) >= 0.2 * max(front_px, rear_px):
        offset = rear_x - front_x  # > 0: front on the image's left
    elif side_x is not None and face_x is not None:
        offset = (side_x - face_x) * (1 if face == "front" else -1)
    else:
        return None
    if abs(offset) < LAYOUT_MIN_OFFSET * width:
        return None
    return "left" if offset > 0 else "right"


def viewpoint(parts: Sequence[Mapping[str, Any]]) -> str | None:
    """The side a car shows, from its parts (each with ``name``, ``pixels`` and ``bbox`` [x, y, w, h]).

    One of :data:`VIEWPOINTS`, or None when the parts say nothing (wheels only, say). Face-on, diagonal or
    profile comes from the share of side pixels; front or rear from which face has more pixels; left or right
    from the layout (:func:`layout_side`), falling back on the left/right classes when the layout is unclear.
    """
    front_px, _ = _group_stats(parts, FACE_PARTS["front"])
    rear_px, _ = _group_stats(parts, FACE_PARTS["rear"])
    left_px, _ = _group_stats(parts, SIDE_PARTS["left"])
    right_px, _ = _group_stats(parts, SIDE_PARTS["right"])
    face_px, side_px = max(front_px, rear_px), max(left_px, right_px)
    if face_px + side_px == 0:
        return None
    face = "front" if front_px >= rear_px else "rear"
    side_share = side_px / (face_px + side_px)
    if side_share < FACE_ONLY:
        return face
    side = layout_side(parts, face) or ("left" if left_px >= right_px else "right")
    if side_share >= SIDE_ONLY:
        return side
    return f"{face}-{side}"


def not_visible(view: str | None, parts: Sequence[Mapping[str, Any]]) -> list[str]:
    """Parts usually seen from this viewpoint that are missing from ``parts`` (empty when view is None)."""
    present = {p["name"] for p in parts}
    return [name for name in EXPECTED_PARTS.get(view or "", ()) if name not in present]


def viewpoint_steps(a: str, b: str) -> int:
    """How many 45-degree steps apart two viewpoints are (0..4)."""
    d = abs(VIEWPOINTS.index(a) - VIEWPOINTS.index(b)) % len(VIEWPOINTS)
    return min(d, len(VIEWPOINTS) - d)
