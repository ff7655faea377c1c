"""COCO data set (one folder, or several joined) -> (RGB image, class-index mask) pairs, a seeded train/val split
and a torch Dataset."""

from __future__ import annotations

import json
import os
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from carparts.classes import BACKGROUND_LIKE, Taxonomy
from carparts.errors import CarpartsError
from carparts.images import read_image

ANNOTATION_FILE = "annotations.json"


@dataclass
class CocoDataset:
    """A COCO data set on disk: image records, their annotations and the taxonomy they imply.

    Several folders joined into one (:func:`join_folders`) keep each folder in ``parts``, which reads its own
    images and masks; the joined records are numbered 0, 1, 2... in ``id`` and named ``<folder>/<file_name>``.
    """

    root: Path
    images: list[dict]
    annotations: dict[int, list[dict]]
    taxonomy: Taxonomy
    category_to_index: dict[int, int]
    categories: list[dict] = field(default_factory=list)
    """The file's own COCO categories (the first folder's when joined)."""
    parts: list[CocoDataset] = field(default_factory=list)
    """The folders joined into this one, in order; empty for one folder."""

    def __len__(self) -> int:
        return len(self.images)

    @property
    def source(self) -> str:
        """The folder it was read from, or its folders, comma-separated."""
        return ",".join(str(part.root) for part in self.parts) if self.parts else str(self.root)

    def locate(self, index: int) -> tuple[CocoDataset, int]:
        """The folder an image lies in and its index there: itself and ``index`` when it is one folder."""
        for part in self.parts:
            if index < len(part):
                return part, index
            index -= len(part)
        if self.parts:
            raise IndexError(f"image index beyond the {len(self)} images of {self.source}")
        return self, index

    def recipe_split(self, recipe: Mapping[str, Any]) -> tuple[list[int], list[int]]:
        """(train, val) indices by :func:`recipe_split`, applied to each folder on its own."""
        if not self.parts:
            return recipe_split(len(self), recipe)
        train_idx, val_idx, offset = [], [], 0
        for part in self.parts:
            part_train, part_val = recipe_split(len(part), recipe)
            train_idx += [offset + i for i in part_train]
            val_idx += [offset + i for i in part_val]
            offset += len(part)
        return train_idx, val_idx

    def image_path(self, index: int) -> Path:
        coco, i = self.locate(index)
        return resolve_image_path(coco.root, coco.images[i])

    def read_image(self, index: int) -> np.ndarray:
        coco, i = self.locate(index)
        path = coco.image_path(i)
        if not path.exists():
            raise CarpartsError(missing_image_message(coco.root, coco.images[i]))
        return read_image(path)

    def read_mask(self, index: int) -> np.ndarray:
        return paint_masks(self.read_annotation_masks(index), *self.image_size(index))

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) as the annotation file gives them."""
        coco, i = self.locate(index)
        return int(coco.images[i]["height"]), int(coco.images[i]["width"])

    def read_annotation_masks(self, index: int) -> list[tuple[dict, int, np.ndarray]]:
        """The image's annotations, each with its class index and own mask (:func:`annotation_masks`)."""
        coco, i = self.locate(index)
        annotations = coco.annotations.get(coco.images[i]["id"], [])
        return annotation_masks(annotations, *self.image_size(index), coco.category_to_index)

    def read_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image and mask, checked to be the same size (the JSON's width/height against the file's)."""
        image, mask, _ = self.read_annotated(index)
        return image, mask

    def read_annotated(self, index: int) -> tuple[np.ndarray, np.ndarray, list[tuple[dict, int, np.ndarray]]]:
        """:meth:`read_pair` plus the annotation masks the mask was painted from, each decoded once."""
        image, masks = self.read_image(index), self.read_annotation_masks(index)
        mask = paint_masks(masks, *self.image_size(index))
        if image.shape[:2] != mask.shape:
            raise CarpartsError(
                f"{self.image_path(index)}: image is {image.shape[1]}x{image.shape[0]} but the "
                f"annotation file says {mask.shape[1]}x{mask.shape[0]}"
            )
        return image, mask, masks


def image_candidates(root: Path, record: dict) -> list[Path]:
    """Where an image may live, in the order looked at: ``file_name`` relative to the root, else in ``JPEGImages/``."""
    name = record["file_name"]
    return list(dict.fromkeys([root / name, root / "JPEGImages" / name, root / "JPEGImages" / Path(name).name]))


def resolve_image_path(root: Path, record: dict) -> Path:
    """Where an image lives (see :func:`image_candidates`); the first candidate when there is none."""
    candidates = image_candidates(root, record)
    return next((p for p in candidates if p.is_file()), candidates[0])


def missing_image_message(root: Path, record: dict, listed_in: str = ANNOTATION_FILE) -> str:
    """``<root>/JPEGImages/<name>: image listed in annotations.json not found (nor at <root>/<name>)``."""
    first, *others = image_candidates(root, record)[::-1]
    return f"{first}: image listed in {listed_in} not found (nor at {', '.join(map(str, others[::-1]))})"


def sorted_ids(ids: set, limit: int = 10) -> str:
    """Ids for a message: numbers in numeric order (3, 12, 100), then anything else; the first ``limit``."""
    numbers = sorted(i for i in ids if isinstance(i, int | float) and not isinstance(i, bool))
    ordered = numbers + sorted((i for i in ids if i not in numbers), key=str)
    more = f" and {len(ordered) - limit} more" if len(ordered) > limit else ""
    return ", ".join(map(str, ordered[:limit])) + more


def segmentation_problem(segmentation: object) -> str | None:
    """What is wrong with an annotation's ``segmentation``, None if nothing: polygons are lists of x, y numbers
    (at least 3 points), an RLE is a dict with ``counts`` and ``size``."""
    if isinstance(segmentation, dict):
        return None if {"counts", "size"} <= set(segmentation) else "an RLE segmentation needs 'counts' and 'size'"
    if not isinstance(segmentation, list):
        return "segmentation is neither a list of polygons nor an RLE"
    for polygon in segmentation:
        shown = json.dumps(polygon)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        if not isinstance(polygon, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in polygon
        ):
            return f"polygon {shown} is not a list of numbers"
        if len(polygon) < 6 or len(polygon) % 2:
            return f"polygon {shown} has {len(polygon)} numbers; it needs x, y pairs, at least 3 points (6 numbers)"
    return None


def data_folders(data: str | Path | Sequence[str | Path]) -> list[Path]:
    """The COCO folders (or files) ``--data`` names: one path, several comma-separated, or a list of them."""
    if isinstance(data, str) and not Path(data).exists():  # a folder whose own name holds a comma stays whole
        data = data.split(",")
    folders = [Path(item) for item in ([data] if isinstance(data, str | Path) else data) if str(item).strip()]
    if not folders:
        raise CarpartsError("--data names no folder")
    for folder in folders:
        if not folder.exists():
            kind = "annotation file" if folder.suffix == ".json" else "data folder"
            raise CarpartsError(f"{folder}: {kind} not found")
    return folders


def load_coco(
    root: str | Path | Sequence[str | Path], taxonomy: Taxonomy | None = None, check_files: bool = True
) -> CocoDataset:
    """Load and validate ``<root>/annotations.json`` (or a COCO file given directly), or several joined as one.

    Args:
        root: a folder holding ``annotations.json`` and the images, or the JSON file itself; several, as a list or
            comma-separated, are joined by :func:`join_folders` (their categories must agree).
        taxonomy: classes to map categories onto; defaults to the (first) file's own categories.
        check_files: fail early, naming the file, when an image listed in the JSON is missing.

    Raises:
        CarpartsError: missing folder or file, malformed file, no images, no annotations, unknown category or image
            ids, folders whose categories disagree.
    """
    folders = data_folders(root)
    datasets = [load_coco_folder(folder, taxonomy, check_files) for folder in folders]
    if len(datasets) == 1:
        return datasets[0]
    return join_folders(datasets, folder_labels(folders), taxonomy)


def load_coco_folder(root: str | Path, taxonomy: Taxonomy | None = None, check_files: bool = True) -> CocoDataset:
    """One folder (or COCO file) of :func:`load_coco`."""
    root = Path(root)
    json_path = root if root.suffix == ".json" else root / ANNOTATION_FILE
    root = json_path.parent
    if not json_path.is_file():
        raise CarpartsError(f"{json_path}: annotation file not found")
    try:
        coco = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CarpartsError(f"{json_path}: not valid JSON ({e})") from None
    if not isinstance(coco, dict) or not all(
        isinstance(coco.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise CarpartsError(f"{json_path}: not a COCO file (needs lists 'images', 'annotations', 'categories')")
    if not coco["images"]:
        raise CarpartsError(f"{json_path}: lists no images")
    if not coco["annotations"]:
        raise CarpartsError(f"{json_path}: holds no annotations")

    taxonomy = taxonomy or Taxonomy.from_coco_categories(coco["categories"])
    known_categories = {c["id"] for c in coco["categories"]}
    image_ids = {img["id"] for img in coco["images"]}
    annotations: dict[int, list[dict]] = defaultdict(list)
    unknown_categories, unknown_images = set(), set()
    for ann in coco["annotations"]:
        if ann.get("category_id") not in known_categories:
            unknown_categories.add(ann.get("category_id"))
        if ann.get("image_id") not in image_ids:
            unknown_images.add(ann.get("image_id"))
        annotations[ann.get("image_id")].append(ann)
    if unknown_categories:
        raise CarpartsError(
            f"{json_path}: annotations use category ids {sorted_ids(unknown_categories)} that are not in 'categories'"
        )
    if unknown_images:
        raise CarpartsError(f"{json_path}: annotations refer to unknown image ids {sorted_ids(unknown_images)}")
    file_names = {img["id"]: img.get("file_name") for img in coco["images"]}
    for ann in coco["annotations"]:
        problem = segmentation_problem(ann.get("segmentation"))
        if problem is not None:
            raise CarpartsError(
                f"{json_path}: annotation {ann.get('id')} of image {ann['image_id']} ({file_names[ann['image_id']]}): "
                f"{problem}"
            )
    category_to_index = category_indices(coco["categories"], taxonomy)
    background_ids = {c["id"] for c in coco["categories"] if c["name"].lower() in BACKGROUND_LIKE}
    used = {a["category_id"] for anns in annotations.values() for a in anns}
    outside = used - set(category_to_index) - background_ids
    if outside:
        names = sorted(c["name"] for c in coco["categories"] if c["id"] in outside)
        raise CarpartsError(f"{json_path}: categories {names} are not classes of the model's taxonomy")

    images = sorted(coco["images"], key=lambda img: img["id"])
    for record in images:
        if not {"id", "file_name", "width", "height"} <= set(record):
            raise CarpartsError(f"{json_path}: image record {record.get('id')} lacks file_name/width/height")
    if check_files:
        missing = [r for r in images if not resolve_image_path(root, r).is_file()]
        if missing:
            more = f"; {len(missing) - 1} more images are missing" if len(missing) > 1 else ""
            raise CarpartsError(missing_image_message(root, missing[0], json_path.name) + more)
    return CocoDataset(
        root=root, images=images, annotations=dict(annotations), taxonomy=taxonomy,
        category_to_index=category_to_index, categories=coco["categories"],
    )  # fmt: skip


def category_indices(categories: Sequence[dict], taxonomy: Taxonomy) -> dict[int, int]:
    """COCO category id -> class index; by name, so a file with other id numbers still lines up."""
    class_index = {name: i for i, name in enumerate(taxonomy.names)}
    return {c["id"]: class_index[c["name"]] for c in categories if c["name"] in class_index}


def folder_labels(folders: Sequence[Path]) -> list[str]:
    """What names each folder in a joined data set: its own name, or as many of its parent folders as tell it
    apart from the others (``a/data`` and ``b/data``)."""
    paths = [Path(os.path.abspath(folder)).parts for folder in folders]
    for depth in range(1, max(map(len, paths)) + 1):
        labels = ["/".join(parts[-depth:]).lstrip("/") for parts in paths]
        if len(set(labels)) == len(labels):
            return labels
    twice = next(folder for k, folder in enumerate(folders) if paths[k] in paths[:k])
    raise CarpartsError(f"{twice}: named twice in --data")


def part_names(coco: CocoDataset) -> list[str]:
    """The names of a data set's own categories, background-like ones left out."""
    return [c["name"] for c in coco.categories if c["name"].lower() not in BACKGROUND_LIKE]


def join_folders(datasets: Sequence[CocoDataset], labels: Sequence[str], taxonomy: Taxonomy | None) -> CocoDataset:
    """Several folders as one data set, mapped onto ``taxonomy`` (default: the first folder's).

    Their categories must agree by name (ids may differ, as after a labelling tool's export). Image ``k`` of the
    joined set has ``id`` k and the file name ``<label>/<file_name>``, ``label`` being the folder's name from
    :func:`folder_labels` (``trainingset/train1.jpg``, ``mine/JPEGImages/1.jpg``), so that a run's
    ``split.json`` names every image of every folder unambiguously; one folder keeps its bare file names.
    """
    first = datasets[0]
    for coco in datasets[1:]:
        extra = [name for name in part_names(coco) if name not in part_names(first)]
        if extra:
            raise CarpartsError(f"{coco.root}: category '{extra[0]}' is not one of {first.root}'s categories")
        lacking = [name for name in part_names(first) if name not in part_names(coco)]
        if lacking:
            raise CarpartsError(f"{coco.root}: has no category '{lacking[0]}', which {first.root} has")
    taxonomy = taxonomy or first.taxonomy
    parts = [
        replace(coco, taxonomy=taxonomy, category_to_index=category_indices(coco.categories, taxonomy))
        for coco in datasets
    ]
    images, annotations = [], {}
    for part, label in zip(parts, labels, strict=True):
        for record in part.images:
            k = len(images)
            images.append({**record, "id": k, "file_name": f"{label}/{record['file_name']}"})
            if record["id"] in part.annotations:
                annotations[k] = part.annotations[record["id"]]
    return CocoDataset(
        root=Path(os.path.commonpath([os.path.abspath(part.root) for part in parts])), images=images,
        annotations=annotations, taxonomy=taxonomy, category_to_index=parts[0].category_to_index,
        categories=first.categories, parts=parts,
    )  # fmt: skip


def annotation_rle(ann: dict, height: int, width: int) -> dict:
    """One RLE for an annotation's segmentation (polygons, uncompressed or compressed RLE)."""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        polygons = [p for p in seg if len(p) >= 6]  # pycocotools rejects degenerate polygons
        if not polygons:
            return mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(seg.get("counts"), list):
        return mask_utils.frPyObjects(seg, height, width)
    return seg


def class_index_mask(
    annotations: Sequence[dict], height: int, width: int, category_to_index: dict[int, int]
) -> np.ndarray:
    """Rasterise annotations into one (H, W) uint8 class-index mask, 0 = background.

    Parts are painted largest area first, so where polygons overlap the smaller part lies on top
    (a light over a bumper, a mirror over a door). Annotations of categories outside the map (such as
    ``_background_``) are skipped.
    """
    return paint_masks(annotation_masks(annotations, height, width, category_to_index), height, width)


def paint_masks(masks: Sequence[tuple[dict, int, np.ndarray]], height: int, width: int) -> np.ndarray:
    """One (H, W) class-index mask from :func:`annotation_masks`, the largest part painted first."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for _, index, binary in sorted(masks, key=by_area):
        mask[binary] = index
    return mask


def annotation_masks(
    annotations: Sequence[dict], height: int, width: int, category_to_index: dict[int, int]
) -> list[tuple[dict, int, np.ndarray]]:
    """Each annotation of a mapped category with its class index and its own (H, W) boolean mask."""
    masks = []
    for ann in annotations:
        index = category_to_index.get(ann["category_id"])
        if index is not None:
            masks.append((ann, index, mask_utils.decode(annotation_rle(ann, height, width)).astype(bool)))
    return masks


def by_area(item: tuple[dict, int, np.ndarray]) -> int:
    """Sort key painting the largest annotation first."""
    return -int(item[2].sum())


def recipe_split(num_images: int, recipe: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    """(train, val) indices by the one split rule: the first ``limit_images`` images (0 = all), ``val_fraction`` of
    them held out, drawn by ``split_seed`` (runs made before ``split_seed`` existed drew it from ``seed``)."""
    limit = int(recipe.get("limit_images") or 0)
    n = min(num_images, limit) if limit else num_images
    return split_indices(n, recipe.get("val_fraction", 0.2), recipe.get("split_seed", recipe.get("seed", 0)))


def listed_split(coco: CocoDataset, listed: Mapping[str, Sequence[str]], source: str) -> tuple[list[int], list[int]]:
    """(train, val) indices of the file names a run's ``split.json`` lists (``source`` names that file)."""
    index = {record["file_name"]: i for i, record in enumerate(coco.images)}
    missing = [name for side in ("train", "val") for name in listed.get(side, []) if name not in index]
    if missing:
        raise CarpartsError(
            f"{source}: lists {len(missing)} image(s) that {coco.source} does not hold (first: {missing[0]}); "
            f"this is not the data set the model was trained on (use --split all)"
        )
    return sorted(index[name] for name in listed["train"]), sorted(index[name] for name in listed["val"])


def split_indices(n: int, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic train/val split of ``n`` items: the same (n, fraction, seed) gives the same split; a fraction of
    0 holds nothing out."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * val_fraction)) if n > 1 and val_fraction > 0 else 0
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def repeat_factors(coco: CocoDataset, indices: Sequence[int], threshold: float) -> list[float]:
    """Repeat-factor sampling (Gupta et al., LVIS, 2019): how often each image of ``indices`` is seen per epoch, on
    average. A part shown in a share ``f`` of these images has ``r = max(1, sqrt(threshold / f))``; an image takes the
    largest ``r`` of its parts (1 without any). Parts are read from the annotations."""
    classes = []
    for i in indices:
        part, j = coco.locate(i)
        found = part.annotations.get(part.images[j]["id"], [])
        classes.append({part.category_to_index[a["category_id"]] for a in found} - {0})
    counts = Counter(c for present in classes for c in present)
    factor = {c: max(1.0, float(np.sqrt(threshold * len(indices) / n))) for c, n in counts.items()}
    return [max((factor[c] for c in present), default=1.0) for present in classes]


def class_weights(coco: CocoDataset, indices: Sequence[int], power: float) -> list[float]:
    """Cross-entropy weight per class index: its share ``s`` of the pixels of the masks of ``indices`` to the power
    ``-power``, scaled so that the average pixel of those masks weighs 1 (``sum(s * w) = 1``). A class missing from
    them takes the largest weight of the others."""
    num_classes = coco.taxonomy.num_classes
    counts = np.zeros(num_classes)
    for i in indices:
        counts += np.bincount(coco.read_mask(i).ravel(), minlength=num_classes)[:num_classes]
    share = counts / counts.sum()
    present = share > 0
    weight = np.zeros(num_classes)
    weight[present] = share[present] ** -power
    weight /= (share * weight).sum()
    weight[~present] = weight[present].max()
    return weight.tolist()


class SegmentationDataset(torch.utils.data.Dataset):
    """Images and masks of a :class:`CocoDataset` subset, passed through an albumentations transform.

    An item is a position in the subset, or ``(position, seed)``: the transform's random draws then follow from
    ``seed`` alone, whichever data-loading process reads the item (see :class:`carparts.train.SeededSampler`).
    """

    def __init__(self, coco: CocoDataset, indices: Sequence[int], transform: Callable | None = None):
        self.coco = coco
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def draw_backdrop(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A photo of this subset and its mask, drawn with ``rng``."""
        return self.coco.read_pair(self.indices[int(rng.integers(len(self.indices)))])

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, seed = item if isinstance(item, tuple) else (item, None)
        image, mask = self.coco.read_pair(self.indices[i])
        if self.transform is not None:
            if seed is not None:
                # one generator shared by every step: albumentations 2.0's Compose(seed=...) gives each step its
                # own generator with the same seed, so their draws coincide (every flip would come with an affine)
                self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
            # `backdrop`: another photo of the subset on demand, for the `paste` and `clutter` levels' BackdropFill
            # (other pipelines pass it through untouched); drawn with the transform's generator, so seeded items
            # stay reproducible
            out = self.transform(image=image, mask=mask, backdrop=self.draw_backdrop)
            image, mask = out["image"], out["mask"]
        return torch.as_tensor(image), torch.as_tensor(mask, dtype=torch.long)
