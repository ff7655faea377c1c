"""Inference on photos of any size, flip TTA with left/right swap, and per-image outputs (mask, overlay, JSON)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from tqdm import tqdm

from carparts.cars import Car, cars_json, find_cars
from carparts.classes import Taxonomy
from carparts.errors import CarpartsError
from carparts.images import ImageScan, check_output_folder, read_image, scan_images, write_atomic
from carparts.models import ModelInfo, load_model

PNG_COMPRESS_LEVEL = 3
"""zlib's fast levels (1-3) write a mask PNG in a third of the default level's time, at about twice the size
(16 KB instead of 8 KB for a 1600x1200 mask); slower levels save little on files this small."""

# a torch module or any callable: normalised (N, 3, h, w) batch -> (N, C, h, w) logits
Network = Callable[[torch.Tensor], torch.Tensor]


def preprocess(image: np.ndarray, info: ModelInfo) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize a (H, W, 3) uint8 photo as in training and normalise it.

    ``info.resize == "letterbox"``: longest side to ``input_size``, padded to the stride; ``"stretch"``: to an
    ``input_size`` square whatever the aspect ratio, as the training images were made. Resizing is OpenCV's area
    interpolation, the very call training makes. Returns the (1, 3, h_pad, w_pad) normalised tensor and the
    (h, w) of the resized photo inside it.
    """
    height, width = image.shape[:2]
    if info.resize == "stretch":
        h = w = info.input_size
    else:
        scale = info.input_size / max(height, width)
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = image if (h, w) == (height, width) else cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None].float()
    mean = torch.tensor(info.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(info.std).view(1, 3, 1, 1) * 255
    h_pad, w_pad = math.ceil(h / info.stride) * info.stride, math.ceil(w / info.stride) * info.stride
    padded = torch.zeros((1, 3, h_pad, w_pad))  # black after normalisation is (0 - mean)/std
    padded[:] = -mean / std
    padded[:, :, :h, :w] = (x - mean) / std
    return padded, (h, w)


def upsample_argmax(logits: torch.Tensor, height: int, width: int, max_elements: int = 2**26) -> np.ndarray:
    """Bilinearly resize (C, h, w) logits to (height, width) and take the argmax.

    Up to ``max_elements`` resized logits (a 3.5 MP photo with 19 classes) OpenCV resizes them at once, 3-4x
    faster than torch on a CPU; larger photos go in row tiles through ``grid_sample`` so memory stays flat (a
    4000x3000 photo would need ~1 GB of float logits at once). Both sample at pixel centres, as
    ``F.interpolate(align_corners=False)`` does.
    """
    channels = logits.shape[0]
    if 2 <= channels <= 512 and channels * height * width <= max_elements:
        hwc = np.ascontiguousarray(logits.float().permute(1, 2, 0).numpy())
        return cv2.resize(hwc, (width, height), interpolation=cv2.INTER_LINEAR).argmax(-1).astype(np.uint8)
    rows_per_tile = max(1, max_elements // (channels * width))
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width * 2 - 1
    out = np.empty((height, width), dtype=np.uint8)
    for top in range(0, height, rows_per_tile):
        bottom = min(height, top + rows_per_tile)
        ys = (torch.arange(top, bottom, dtype=torch.float32) + 0.5) / height * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
        tile = F.grid_sample(logits[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        out[top:bottom] = tile[0].argmax(0).to(torch.uint8).numpy()
    return out


class Predictor:
    """A network plus its input policy: ``predictor(image) -> class-index mask`` at native size.

    ``model`` is a torch module or any callable mapping a normalised (N, 3, h, w) batch to (N, C, h, w)
    logits (the onnxruntime backend in :mod:`carparts.backend_onnx` is one), so letterboxing, flip TTA and
    resizing back are the same code for every backend.
    """

    backend = "torch"

    def __init__(self, model: Network, info: ModelInfo, tta: bool = False, device: str = "cpu"):
        self.model = model.to(device).eval() if isinstance(model, torch.nn.Module) else model
        self.info = info
        self.tta = tta
        self.device = device
        self.flip_permutation = torch.tensor(info.taxonomy.flip_permutation)

    @classmethod
    def from_path(cls, path: str | Path | None = None, tta: bool = False, device: str = "cpu") -> Predictor:
        model, info = load_model(path)
        return cls(model, info, tta=tta, device=device)

    @property
    def network_runs(self) -> int:
        """Network passes per photo: two under flip TTA (the photo and its mirror), else one."""
        return 2 if self.tta else 1

    @torch.inference_mode()
    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """The network alone: a normalised (N, 3, h, w) batch -> (N, C, h, w) float32 logits on the CPU."""
        return self.model(batch.to(self.device)).float().cpu()

    @torch.inference_mode()
    def logits(self, image: np.ndarray) -> torch.Tensor:
        """(C, h, w) class scores for the resized photo (padding cropped away); log-probabilities under TTA."""
        x, (h, w) = preprocess(image, self.info)
        if not self.tta:
            return self.run(x)[0, :, :h, :w]
        out = self.run(torch.cat([x, x.flip(-1)])).log_softmax(1)
        # the mirrored view sees a left door where the photo has a right one: unflip, then swap channels
        # (the permutation is its own inverse: left<->right)
        flipped_back = out[1].flip(-1)[self.flip_permutation]
        return torch.logsumexp(torch.stack([out[0], flipped_back]), dim=0)[:, :h, :w]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W) uint8 class-index mask at the photo's native size."""
        return upsample_argmax(self.logits(image), image.shape[0], image.shape[1])


class Ensemble(Predictor):
    """Several predictors as one: the members' class probabilities, averaged, then the argmax.

    Each member letterboxes the photo at its own input size (with its own flip TTA when asked); its
    log-probabilities are resized to the largest member's grid and the probabilities averaged there, so models
    trained at different sizes combine. All members must share one class taxonomy. ``info`` describes the whole
    (``arch`` and ``encoder`` list the members' distinct ones); ``recipe`` is the first member's, and
    :attr:`members` lets evaluation check that every member was trained on the same split.
    """

    def __init__(self, members: Sequence[Predictor]):
        if len(members) < 2:
            raise CarpartsError("an ensemble needs at least two models")
        first = members[0]
        for member in members[1:]:
            if member.info.taxonomy != first.info.taxonomy:
                raise CarpartsError(
                    f"{member.info.model_id} and {first.info.model_id} have different classes; cannot ensemble"
                )
        self.members = list(members)
        self.backend = first.backend
        self.tta = first.tta
        self.device = first.device
        digest = hashlib.sha256("".join(m.info.weights_sha256 for m in members).encode()).hexdigest()
        self.info = dataclasses.replace(
            first.info,
            name=f"ensemble{len(members)}",
            arch="+".join(dict.fromkeys(m.info.arch for m in members)),  # each distinct one once, in order
            encoder="+".join(dict.fromkeys(m.info.encoder for m in members)),
            input_size=max(m.info.input_size for m in members),
            metrics={},
            weights_sha256=digest,
        )
        self.model = None

    @property
    def network_runs(self) -> int:
        return sum(member.network_runs for member in self.members)

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        raise CarpartsError("an ensemble has no single network to run; use its members")

    @torch.inference_mode()
    def logits(self, image: np.ndarray) -> torch.Tensor:
        """(C, h, w) log of the summed member probabilities, on the largest member's resized grid."""
        outputs = [member.logits(image).log_softmax(0) for member in self.members]
        h, w = max((o.shape[1:] for o in outputs), key=lambda hw: hw[0] * hw[1])
        resized = [
            o if o.shape[1:] == (h, w) else F.interpolate(o[None], size=(h, w), mode="bilinear")[0] for o in outputs
        ]
        return torch.logsumexp(torch.stack(resized), dim=0)


def part_summary(mask: np.ndarray, taxonomy: Taxonomy) -> list[dict[str, Any]]:
    """Per part present: class id, name, pixel count, share of all car pixels, bbox [x, y, w, h]."""
    counts = class_counts(mask)
    car_pixels = int(counts[1:].sum())
    boxes = ndimage.find_objects(mask)  # one pass: boxes[k - 1] bounds class k, None when absent
    parts = []
    for index in np.flatnonzero(counts[1:]) + 1:
        rows, cols = boxes[index - 1]
        parts.append({
            "class_id": int(index),
            "name": taxonomy.names[index],
            "pixels": int(counts[index]),
            "share": round(int(counts[index]) / car_pixels, 6),
            "bbox": [cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start],
        })  # fmt: skip
    return parts


def part_polygons(mask: np.ndarray, tolerance: float = 1.0) -> dict[int, list[list[int]]]:
    """Outer outlines of each class present, as COCO-style flat ``[x0, y0, x1, y1, ...]`` polygons.

    Outlines are simplified to within ``tolerance`` px (Douglas-Peucker) to keep the JSON small.
    """
    import cv2

    outlines: dict[int, list[list[int]]] = {}
    for index in np.unique(mask):
        if index == 0:
            continue
        contours, _ = cv2.findContours((mask == index).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        simplified = [cv2.approxPolyDP(c, tolerance, True).reshape(-1) for c in contours]
        outlines[int(index)] = [c.astype(int).tolist() for c in simplified if len(c) >= 6]
    return outlines


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
    present = [i for i in np.flatnonzero(class_counts(mask)) if i > 0]
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


def class_counts(mask: np.ndarray) -> np.ndarray:
    """(256,) int64 pixel count of every value of a uint8 ``mask``."""
    # OpenCV's histogram is several times faster than np.bincount; its float32 bins are exact up to 2**24, so
    # it counts slices of at most that many pixels
    rows = max(1, 2**24 // max(1, mask.shape[1]))
    counts = np.zeros(256, dtype=np.int64)
    for top in range(0, mask.shape[0], rows):
        counts += cv2.calcHist([mask[top : top + rows]], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    return counts


def car_tag(car: Car) -> str:
    """``car 2: front-left``, or ``car 2`` when the viewpoint is unknown."""
    return f"car {car.id}: {car.viewpoint}" if car.viewpoint else f"car {car.id}"


@dataclass
class PredictResult:
    written: list[Path]
    failed: list[str]
    skipped: list[Path] = dataclasses.field(default_factory=list)  # files in scanned folders that are not images


OUTPUT_SUFFIXES = (".png", "_overlay.jpg", ".json")


def output_paths(out_dir: Path, stem: str) -> list[Path]:
    """A photo's outputs: ``<stem>.png`` (mask), ``<stem>_overlay.jpg``, ``<stem>.json``, in writing order."""
    return [out_dir / f"{stem}{suffix}" for suffix in OUTPUT_SUFFIXES]


def write_outputs(
    image_path: Path, image: np.ndarray, mask: np.ndarray, info: ModelInfo, out_dir: Path, stem: str
) -> list[Path]:
    """Write ``<stem>.png`` (palette class-index mask), ``<stem>_overlay.jpg`` and ``<stem>.json`` (parts, and the
    cars they form: :func:`carparts.cars.find_cars`)."""
    taxonomy = info.taxonomy
    mask_path, overlay_path, json_path = output_paths(out_dir, stem)
    write_atomic(
        mask_path, lambda p: colour_mask(mask, taxonomy).save(p, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    )
    cars = find_cars(mask, taxonomy)
    write_atomic(overlay_path, lambda p: overlay(image, mask, taxonomy, cars=cars).save(p, format="JPEG", quality=90))
    record = {
        "image": str(image_path),
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "model": info.model_id,
        "class_index_convention": "0 = background; see model's classes",
        "parts": part_summary(mask, taxonomy),
        "cars": cars_json(cars),
    }
    write_atomic(json_path, lambda p: p.write_text(json.dumps(record, indent=2)))
    return [mask_path, overlay_path, json_path]


def unique_stems(paths: list[Path]) -> list[str]:
    """Output names per input: the file stem, suffixed ``_2``, ``_3``... where two inputs share a stem."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        stems.append(path.stem if seen[path.stem] == 1 else f"{path.stem}_{seen[path.stem]}")
    return stems


def check_sources_outside(sources: Sequence[str | Path], out_dir: Path) -> None:
    """Refuse an output folder that cannot be written, and a source folder that is the output folder or lies
    inside it (outputs of an earlier run would be read back as photos)."""
    check_output_folder(out_dir)
    out = out_dir.resolve()
    for source in map(Path, sources):
        if source.is_dir() and (source.resolve() == out or out in source.resolve().parents):
            where = "is" if source.resolve() == out else "lies inside"
            raise CarpartsError(
                f"{source}: this source folder {where} the output folder {out_dir}, so outputs would be read back "
                f"as photos; write them elsewhere (e.g. --out {source / 'pred'})"
            )


def check_no_overwrite(images: Sequence[str | Path], stems: Sequence[str], out_dir: Path) -> None:
    """Refuse an output folder where one photo's outputs would overwrite one of the photos."""
    photos = {Path(image).resolve(): Path(image) for image in images if Path(image).is_file()}
    for image, stem in zip(images, stems, strict=True):
        for output in output_paths(out_dir, stem):
            if output.resolve() in photos:
                raise CarpartsError(
                    f"{output}: the outputs of {image} would overwrite this photo; choose another output folder"
                )


def images_to_predict(sources: Sequence[str | Path], out_dir: Path) -> ImageScan:
    """The photos in ``sources``, checked so that predicting them never reads or overwrites its own outputs.

    Folder scans and globs leave out ``out_dir`` and everything under it; an unwritable ``out_dir``, a source
    folder that is (or lies in) ``out_dir``, and outputs that would overwrite a photo are refused here, before
    any photo is read or written.
    """
    check_sources_outside(sources, out_dir)
    scan = scan_images(sources, exclude=[out_dir])
    if not scan.paths:
        raise CarpartsError(f"no images found in {' '.join(map(str, sources))}")
    check_no_overwrite(scan.paths, unique_stems(scan.paths), out_dir)
    return scan


def predict_paths(
    sources: Sequence[str | Path], predictor: Predictor, out_dir: Path, progress: bool = True, on_error=print
) -> PredictResult:
    """Segment every image found in ``sources`` (see :func:`images_to_predict`); a bad file is reported and
    skipped, the rest go on."""
    scan = images_to_predict(sources, out_dir)
    paths = scan.paths
    result = PredictResult(written=[], failed=[], skipped=scan.skipped)
    progress_bar = tqdm(paths, desc="predict", unit="img", disable=not progress)
    for path, stem in zip(progress_bar, unique_stems(paths), strict=True):
        try:
            image = read_image(path)
            mask = predictor(image)
            result.written += write_outputs(path, image, mask, predictor.info, out_dir, stem)
        except CarpartsError as e:
            result.failed.append(str(e))
            on_error(f"error: {e}")
    return result
