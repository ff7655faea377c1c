"""Inference on photos of any size (input policy, crop to the car, flip TTA with left/right swap, ensembles) and the
photo loop of
``carparts predict``; each photo's outputs come from its :class:`~carparts.results.Result`."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from carparts.errors import CarpartsError
from carparts.images import ImageScan, check_output_folder, read_image, scan_images
from carparts.models import CAR_FINDER_SIZE, CAR_MARGIN, ModelInfo, load_model
from carparts.results import Result, output_paths

# a torch module or any callable: normalised (N, 3, h, w) batch -> (N, C, h, w) logits
Network = Callable[[torch.Tensor], torch.Tensor]


FinderKey = tuple[str, str]
"""What a crop model's finder pass depends on: its weights and resize policy (:meth:`Predictor.finder_key`)."""
Finders = dict[FinderKey, torch.Tensor]
"""The finder passes run on one photo, by :data:`FinderKey` (:meth:`Predictor.car_logits`)."""


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


def car_box(scores: torch.Tensor, height: int, width: int, margin: float = CAR_MARGIN) -> tuple[int, ...] | None:
    """``(top, bottom, left, right)`` in photo pixels of every pixel not called background by ``scores`` ((C, h, w)
    on a grid covering the whole ``height`` x ``width`` photo), widened by ``margin`` of its size on each side and
    clipped to the photo; None when no pixel is a part."""
    found = scores.argmax(0) != 0
    if not found.any():
        return None
    rows, cols = torch.nonzero(found.any(1)).flatten(), torch.nonzero(found.any(0)).flatten()
    sy, sx = height / found.shape[0], width / found.shape[1]
    top, bottom = rows[0].item() * sy, (rows[-1].item() + 1) * sy
    left, right = cols[0].item() * sx, (cols[-1].item() + 1) * sx
    dy, dx = margin * (bottom - top), margin * (right - left)
    return (
        max(0, math.floor(top - dy)), min(height, math.ceil(bottom + dy)),
        max(0, math.floor(left - dx)), min(width, math.ceil(right + dx)),
    )  # fmt: skip


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


def top_probability(scores: torch.Tensor, temperature: float, height: int, width: int) -> np.ndarray:
    """(height, width) float32 probability of the winning class: ``softmax(scores / temperature)``'s maximum on the
    network's grid, resized bilinearly to the photo (one channel, so cheap at any size)."""
    top = (scores.float() / temperature).softmax(0).amax(0).numpy()
    if top.shape != (height, width):
        top = cv2.resize(top, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(top, 0.0, 1.0)


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
        """Network passes per photo: two under flip TTA (the photo and its mirror), else one; plus the finder's
        pass when the model crops to the car."""
        return (2 if self.tta else 1) + (self.info.crop == "car")

    @torch.inference_mode()
    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """The network alone: a normalised (N, 3, h, w) batch -> (N, C, h, w) float32 logits on the CPU."""
        return self.model(batch.to(self.device)).float().cpu()

    @torch.inference_mode()
    def logits(self, image: np.ndarray, finders: Finders | None = None) -> torch.Tensor:
        """(C, h, w) class scores on a grid covering the photo: the resized photo's (padding cropped away), or the
        two passes of :meth:`car_logits` when the model crops to the car; log-probabilities under TTA. ``finders``:
        the finder passes already run on this photo (see :meth:`car_logits`)."""
        if self.info.crop == "car":
            return self.car_logits(image, finders)
        return self.view_logits(image, self.info, self.tta)

    def finder_key(self) -> FinderKey:
        """What the finder pass depends on: members that are one model at several sizes share it."""
        return self.info.weights_sha256, self.info.resize

    @torch.inference_mode()
    def car_logits(self, image: np.ndarray, finders: Finders | None = None) -> torch.Tensor:
        """Two passes, framed as training framed its cars: the whole photo at :data:`CAR_FINDER_SIZE` px finds
        the car(s) (:func:`car_box`), then the box around them is resized by the input policy and segmented at
        the model's size (with TTA when on). Returns log-probabilities on a grid of the photo's aspect ratio as fine
        as the second pass's view: the box's from the second pass, the rest from the first. ``finders``: finder
        passes by :meth:`finder_key`, run on this photo; this model's is added when missing (an ensemble hands one
        dict to all its members, so one model at several sizes runs it once)."""
        height, width = image.shape[:2]
        finders = {} if finders is None else finders
        key = self.finder_key()
        if key not in finders:
            finders[key] = self.view_logits(
                image, dataclasses.replace(self.info, input_size=CAR_FINDER_SIZE), tta=False
            )
        first = finders[key]
        box = car_box(first, height, width)
        if box is None:  # no car found: the whole photo, as without cropping
            return self.view_logits(image, self.info, self.tta)
        top, bottom, left, right = box
        # the grid keeps the second pass's resolution (at most native, at most 4x the input size on a side)
        size = self.info.input_size
        scale = min(1.0, size / min(bottom - top, right - left), 4 * size / max(height, width))
        grid_h, grid_w = max(1, round(height * scale)), max(1, round(width * scale))
        grid = F.interpolate(first.log_softmax(0)[None], size=(grid_h, grid_w), mode="bilinear")[0]
        inner = self.view_logits(np.ascontiguousarray(image[top:bottom, left:right]), self.info, self.tta)
        g_top, g_left = min(grid_h - 1, round(top * scale)), min(grid_w - 1, round(left * scale))
        g_bottom, g_right = max(g_top + 1, round(bottom * scale)), max(g_left + 1, round(right * scale))
        inner = F.interpolate(inner.log_softmax(0)[None], size=(g_bottom - g_top, g_right - g_left), mode="bilinear")
        grid[:, g_top:g_bottom, g_left:g_right] = inner[0]
        return grid

    def view_logits(self, image: np.ndarray, info: ModelInfo, tta: bool) -> torch.Tensor:
        """One view: (C, h, w) class scores for ``image`` resized by ``info``'s input policy (padding cropped away);
        log-probabilities under ``tta``."""
        x, (h, w) = preprocess(image, info)
        if not tta:
            return self.run(x)[0, :, :h, :w]
        out = self.run(torch.cat([x, x.flip(-1)])).log_softmax(1)
        # the mirrored view sees a left door where the photo has a right one: unflip, then swap channels
        # (the permutation is its own inverse: left<->right)
        flipped_back = out[1].flip(-1)[self.flip_permutation]
        return torch.logsumexp(torch.stack([out[0], flipped_back]), dim=0)[:, :h, :w]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W) uint8 class-index mask at the photo's native size."""
        return upsample_argmax(self.logits(image), image.shape[0], image.shape[1])

    @property
    def temperature(self) -> float:
        """The calibration temperature stored with the model (``carparts calibrate``); 1 for a model without one
        (:func:`carparts.loading.load_predictor` says so when it loads such a model)."""
        return 1.0 if self.info.temperature is None else float(self.info.temperature)

    def predict(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask, confidence) at the photo's native size: the (H, W) uint8 class-index mask and the (H, W) float32
        calibrated probability of each pixel's class (:func:`top_probability`)."""
        height, width = image.shape[:2]
        scores = self.logits(image)
        return upsample_argmax(scores, height, width), top_probability(scores, self.temperature, height, width)

    def result(self, image: np.ndarray, source: str) -> Result:
        """The photo's :class:`~carparts.results.Result`, which makes every output; ``source`` names the photo."""
        mask, confidence = self.predict(image)
        return Result(image, mask, self.info, source, confidence=confidence)


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
        """The members' passes, less the finder passes that members of one model share."""
        cropping = [m for m in self.members if m.info.crop == "car"]
        shared = len(cropping) - len({m.finder_key() for m in cropping})
        return sum(member.network_runs for member in self.members) - shared

    @property
    def temperature(self) -> float:
        """The members' temperatures' geometric mean, applied to the averaged probabilities (members that are one
        model at several sizes share one temperature, so it is that one)."""
        return math.exp(sum(math.log(member.temperature) for member in self.members) / len(self.members))

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        raise CarpartsError("an ensemble has no single network to run; use its members")

    @torch.inference_mode()
    def logits(self, image: np.ndarray, finders: Finders | None = None) -> torch.Tensor:
        """(C, h, w) log of the summed member probabilities, on the largest member's resized grid."""
        finders = {} if finders is None else finders  # one dict for all members: a shared finder pass runs once
        outputs = [member.logits(image, finders).log_softmax(0) for member in self.members]
        h, w = max((o.shape[1:] for o in outputs), key=lambda hw: hw[0] * hw[1])
        resized = [
            o if o.shape[1:] == (h, w) else F.interpolate(o[None], size=(h, w), mode="bilinear")[0] for o in outputs
        ]
        return torch.logsumexp(torch.stack(resized), dim=0)


@dataclass
class PredictResult:
    written: list[Path]
    failed: list[str]
    segmented: int = 0  # photos whose outputs were all written
    skipped: list[Path] = dataclasses.field(default_factory=list)  # files in scanned folders that are not images
    coco: list[dict] = dataclasses.field(default_factory=list)  # with coco_tolerance: path, width, height, annotations


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
        for output in output_paths(out_dir, stem, uncertainty=True):  # every output a photo may get
            if output.resolve() in photos:
                raise CarpartsError(
                    f"{output}: the outputs of {image} would overwrite this photo; choose another output folder"
                )


def images_to_predict(sources: Sequence[str | Path], out_dir: Path, allow_empty: bool = False) -> ImageScan:
    """The photos in ``sources``, checked so that predicting them never reads or overwrites its own outputs.

    Folder scans and globs leave out ``out_dir`` and everything under it; an unwritable ``out_dir``, a source
    folder that is (or lies in) ``out_dir``, and outputs that would overwrite a photo are refused here, before
    any photo is read or written. No photo at all is an error unless ``allow_empty`` (a COCO export still writes
    its file).
    """
    check_sources_outside(sources, out_dir)
    scan = scan_images(sources, exclude=[out_dir])
    if not scan.paths and not allow_empty:
        raise CarpartsError(f"no images found in {' '.join(map(str, sources))}")
    check_no_overwrite(scan.paths, unique_stems(scan.paths), out_dir)
    return scan


def predict_paths(
    sources: Sequence[str | Path], predictor: Predictor, out_dir: Path, progress: bool = True, on_error=print,
    uncertainty: bool = False, coco_tolerance: float | None = None,
) -> PredictResult:  # fmt: skip
    """Segment every image found in ``sources`` (see :func:`images_to_predict`) and save its outputs (with the
    uncertainty heat map when ``uncertainty``); a bad file is reported and skipped, the rest go on. With
    ``coco_tolerance`` each photo's COCO annotations go into its JSON and into ``coco`` of the result."""
    scan = images_to_predict(sources, out_dir, allow_empty=coco_tolerance is not None)
    paths = scan.paths
    result = PredictResult(written=[], failed=[], skipped=scan.skipped)
    progress_bar = tqdm(paths, desc="predict", unit="img", disable=not progress)
    for path, stem in zip(progress_bar, unique_stems(paths), strict=True):
        try:
            photo = predictor.result(read_image(path), str(path))
            result.written += photo.save(out_dir, stem, uncertainty, coco_tolerance)
            result.segmented += 1
            if coco_tolerance is not None:
                height, width = photo.mask.shape
                annotations = photo.coco_annotations(coco_tolerance)
                result.coco.append({"path": path, "width": width, "height": height, "annotations": annotations})
        except CarpartsError as e:
            result.failed.append(str(e))
            on_error(f"error: {e}")
    return result
