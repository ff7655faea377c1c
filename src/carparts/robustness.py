"""Robustness under the 15 ImageNet-C corruptions of Michaelis et al. 2019: part-mIoU per corruption and severity,
mPC (their mean) and rPC (mPC over the clean part-mIoU), measured on the same photos under one size protocol."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import multiprocessing
import sys
import time
import types
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from tqdm import tqdm

from carparts.data import load_coco
from carparts.errors import CarpartsError, print_line
from carparts.images import write_atomic
from carparts.metrics import ConfusionMatrix, nanmean

if TYPE_CHECKING:
    from carparts.predict import Predictor

CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
"""The benchmark's 15 corruptions in its order (noise, blur, weather, digital): ``imagecorruptions``'s "common" set."""
SEVERITIES = (1, 2, 3, 4, 5)
CORRUPTION_SIZE = 352
"""Default longest side, in px, every photo and its truth mask are resized to before corrupting and scoring: the
bundled model's training size, near the 320-416 px its networks see, so a corruption acts at about the resolution
the network works at. glass_blur's per-pixel Python loop takes 7 s for a 4:3 photo at 352, 15 s at 512
(docs/robustness.md)."""
CORRUPTION_WORKERS = 2
"""Default processes that corrupt photos beside the one running the network: glass_blur keeps one core busy."""
CLEAN = "clean"
PROGRESS_FILE = "robustness_progress.json"
"""Kept in the output folder while a run goes on, so that an interrupted run resumes; removed once the figures are
in ``metrics.json``."""


def parse_corruptions(text: str) -> list[str]:
    """``--corruptions`` names, comma-separated; none given (``""``) means all 15."""
    names = [name.strip() for name in text.split(",") if name.strip()] or list(CORRUPTIONS)
    unknown = [name for name in names if name not in CORRUPTIONS]
    if unknown:
        raise CarpartsError(f"unknown corruption {', '.join(unknown)}; choose from {', '.join(CORRUPTIONS)}")
    return list(dict.fromkeys(names))


def parse_severities(text: str) -> list[int]:
    """``--severities``, e.g. ``1,3,5``: integers 1 to 5."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or any(part not in {str(s) for s in SEVERITIES} for part in parts):
        raise CarpartsError(f"severities must be among {','.join(map(str, SEVERITIES))} (e.g. 1,3,5); got {text!r}")
    return sorted({int(part) for part in parts})


@functools.cache
def imagecorruptions() -> types.ModuleType:
    """The ``imagecorruptions`` package (Michaelis et al.'s own corruption code), importable on today's stack.

    Its last release (1.1.2, 2020) predates three removals: ``pkg_resources`` (setuptools 81; it only locates the
    bundled frost pictures), ``np.float_`` (NumPy 2; fog's fractal) and scikit-image's ``multichannel=`` (0.19;
    glass blur's Gaussian); and scikit-image's ``random_noise`` (impulse noise) now draws from a generator of its
    own, so it is handed one seeded from NumPy's global generator, which it drew from before. Each is bridged for
    that package alone; its corruption functions run unchanged.
    """
    if importlib.util.find_spec("imagecorruptions") is None:
        raise CarpartsError("the corruption benchmark needs the imagecorruptions package: pip install imagecorruptions")
    stand_in = None
    if importlib.util.find_spec("pkg_resources") is None:  # only while importing it: others may test for the real one
        stand_in = types.ModuleType("pkg_resources")
        stand_in.resource_filename = lambda module, name: str(Path(sys.modules[module].__file__).parent / name)
        sys.modules["pkg_resources"] = stand_in
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # scipy.ndimage.interpolation, until SciPy 2
            import imagecorruptions as package
            from imagecorruptions import corruptions
    finally:
        if stand_in is not None:
            del sys.modules["pkg_resources"]
    numpy_with_float_ = types.ModuleType("numpy")
    numpy_with_float_.__dict__.update(np.__dict__)
    numpy_with_float_.float_ = np.float64
    corruptions.np = numpy_with_float_
    gaussian = corruptions.gaussian
    if "multichannel" not in gaussian.__code__.co_varnames:

        def gaussian_multichannel(image, sigma=1.0, multichannel=None, **kwargs):
            return gaussian(image, sigma=sigma, channel_axis=-1 if multichannel else None, **kwargs)

        corruptions.gaussian = gaussian_multichannel
    random_noise = corruptions.sk.util.random_noise
    util = types.ModuleType("skimage.util")
    util.__dict__.update(corruptions.sk.util.__dict__)
    util.random_noise = lambda image, mode="gaussian", **kwargs: random_noise(
        image, mode=mode, rng=np.random.randint(2**31), **kwargs
    )
    skimage_seeded = types.ModuleType("skimage")
    skimage_seeded.__dict__.update(corruptions.sk.__dict__)
    skimage_seeded.util = util
    corruptions.sk = skimage_seeded
    return package


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """NumPy's global generator (the one ``imagecorruptions`` draws from) seeded, then restored as it was."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def corrupt(image: np.ndarray, corruption: str, severity: int, key: str) -> np.ndarray:
    """``image`` under one corruption at one severity, the same every run for the same ``key`` (the photo's name)."""
    seed = zlib.crc32(f"{key}/{corruption}/{severity}".encode())
    with seeded(seed):
        return imagecorruptions().corrupt(image, corruption_name=corruption, severity=severity)


def fit_longest_side(image: np.ndarray, truth: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The photo (area or linear interpolation) and its class-index mask (nearest) with the longest side ``size``."""
    height, width = truth.shape
    scale = size / max(height, width)
    h, w = max(32, round(height * scale)), max(32, round(width * scale))  # imagecorruptions needs 32 px
    if (h, w) == (height, width):
        return image, truth
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interpolation), cv2.resize(
        truth, (w, h), interpolation=cv2.INTER_NEAREST
    )


def corrupt_variant(image: np.ndarray, key: str, variant: str) -> np.ndarray:
    """The photo a variant names: ``clean`` as it is, ``corruption/severity`` through :func:`corrupt`."""
    if variant == CLEAN:
        return image
    corruption, severity = variant.split("/")
    return corrupt(image, corruption, int(severity), key)


@contextlib.contextmanager
def corruption_map(workers: int) -> Iterator[Callable]:
    """``map`` in this process (``workers`` 0 or 1), or an ordered ``imap`` over that many worker processes, which
    corrupt the next variants while this process runs the network (imagecorruptions computes on one core)."""
    if workers <= 1:
        yield map
        return
    with multiprocessing.get_context("spawn").Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
        yield pool.imap


def variant_names(corruptions: Sequence[str], severities: Sequence[int]) -> list[str]:
    """``clean`` first, then ``corruption/severity`` for each pair."""
    return [CLEAN] + [f"{corruption}/{severity}" for corruption in corruptions for severity in severities]


def read_progress(path: Path) -> dict[str, Any]:
    """A progress file's contents; empty when it is not one (so the run starts afresh)."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return saved if isinstance(saved, dict) else {}


def score_corruptions(
    predictor: Predictor,
    data: str | Path,
    split: str = "all",
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    size: int = CORRUPTION_SIZE,
    out: Path | None = None,
    progress: bool = True,
    on_note: Callable[[str], None] = print_line,
    workers: int = CORRUPTION_WORKERS,
) -> dict[str, Any]:
    """Score ``predictor`` on every selected photo, clean and under each corruption at each severity.

    Protocol: each photo and its rasterised truth mask are resized so the longest side is ``size`` px (photo
    area-/linear-, mask nearest-interpolated); that photo, clean or corrupted, is what the predictor gets, and its
    mask is scored at that size against that truth. One confusion matrix per variant, summed over the photos, as
    :func:`carparts.evaluate.evaluate` does. With ``out``, progress is saved after each photo into
    ``PROGRESS_FILE`` and a later run with the same settings goes on from there. ``workers`` > 1 corrupts in that
    many processes beside the network (:func:`corruption_map`). Returns the ``robustness`` dict of ``metrics.json``
    (:func:`robustness_summary`).
    """
    from carparts.evaluate import select_split  # evaluate's split rule, so both score the same photos

    package_version = importlib.metadata.version("imagecorruptions")
    imagecorruptions()  # a missing package fails here, before any photo
    taxonomy = predictor.info.taxonomy
    coco = load_coco(data, taxonomy=taxonomy, check_files=False)
    indices = select_split(coco, split, predictor.info)
    variants = variant_names(corruptions, severities)
    members = getattr(predictor, "members", [predictor])
    settings = {
        "model": predictor.info.model_id, "input_sizes": [m.info.input_size for m in members],
        "backend": predictor.backend, "tta": predictor.tta, "data": str(data), "split": split,
        "corruptions": list(corruptions), "severities": list(severities), "longest_side": size,
        "package": f"imagecorruptions {package_version}",
    }  # fmt: skip
    state = {"settings": settings, "done": [], "skipped": [], "seconds": 0.0, "matrices": {}}
    progress_path = Path(out) / PROGRESS_FILE if out is not None else None
    if progress_path is not None and progress_path.is_file():
        saved = read_progress(progress_path)
        if saved.get("settings") == settings:
            state = saved
            on_note(f"resuming the corruption run in {progress_path}: {len(saved['done'])} photo(s) already scored")
        else:
            on_note(f"{progress_path} was left by a run with other settings; starting afresh")
    matrices = {variant: ConfusionMatrix(taxonomy.num_classes) for variant in variants}
    for variant, mat in state["matrices"].items():
        matrices[variant].mat += np.asarray(mat, dtype=np.int64)
    finished = set(state["done"]) | {row["file_name"] for row in state["skipped"]}
    todo = [i for i in indices if coco.images[i]["file_name"] not in finished]

    bar = tqdm(
        total=len(indices) * len(variants), initial=(len(indices) - len(todo)) * len(variants), unit="variant",
        desc=f"corruptions ({len(variants)} variants per photo)", disable=not progress,
    )  # fmt: skip
    with corruption_map(workers) as map_variants:
        for index in todo:
            name = coco.images[index]["file_name"]
            started = time.perf_counter()
            try:
                image, truth = coco.read_pair(index)
            except CarpartsError as e:
                state["skipped"].append({"file_name": name, "error": str(e)})
                on_note(f"error: {e}")
                bar.update(len(variants))
                continue
            image, truth = fit_longest_side(image, truth, size)
            photos = map_variants(functools.partial(corrupt_variant, image, name), variants)
            for variant, photo in zip(variants, photos, strict=True):
                matrices[variant].update(truth, predictor(photo))
                bar.update()
            state["done"].append(name)
            state["seconds"] += time.perf_counter() - started
            if progress_path is not None:
                state["matrices"] = {variant: mat.mat.tolist() for variant, mat in matrices.items()}
                write_atomic(progress_path, lambda p: p.write_text(json.dumps(state)))
    bar.close()
    if not state["done"]:
        raise CarpartsError(f"{data}: none of the {len(indices)} images could be read (see the errors above)")
    return robustness_summary(matrices, settings, state)


def robustness_summary(
    matrices: dict[str, ConfusionMatrix], settings: dict[str, Any], state: dict[str, Any]
) -> dict[str, Any]:
    """Part-mIoU of each variant; ``table[corruption][severity]``, each corruption's mean over its severities, mPC
    (the mean over every corruption and severity) and rPC = mPC / clean part-mIoU."""
    miou = {variant: nanmean(mat.iou()[1:]) for variant, mat in matrices.items()}
    table = {
        corruption: {str(severity): miou[f"{corruption}/{severity}"] for severity in settings["severities"]}
        for corruption in settings["corruptions"]
    }
    scores = [value for row in table.values() for value in row.values()]
    mpc = None if None in scores else float(np.mean(scores))
    clean = miou[CLEAN]
    return {
        **settings,
        "protocol": (
            f"each photo and its truth mask (nearest) resized to a longest side of {settings['longest_side']} px, "
            f"then corrupted with {settings['package']} (NumPy's generator seeded per photo and variant); "
            "the clean figure is scored under the same protocol; part-mIoU from one confusion matrix per variant"
        ),
        "images": len(state["done"]),
        "skipped": state["skipped"],
        "seconds": round(state["seconds"], 1),
        "clean_miou_parts": clean,
        "mpc": mpc,
        "rpc": None if mpc is None or not clean else mpc / clean,
        "per_corruption": {c: nanmean(np.array(list(row.values()), dtype=float)) for c, row in table.items()},
        "table": table,
    }


def format_robustness(robustness: dict[str, Any]) -> str:
    """The corruption x severity table of part-mIoU, each corruption's mean, then clean, mPC and rPC."""

    def fmt(value: float | None) -> str:
        return f"{'n/a':>7}" if value is None else f"{value:>7.4f}"

    severities = robustness["severities"]
    lines = [
        f"robustness: part-mIoU on {robustness['images']} photos at longest side {robustness['longest_side']} px "
        f"({robustness['package']}; {robustness['seconds']:.0f} s)",
        f"{'corruption':<18}" + "".join(f"{'sev ' + str(s):>7}" for s in severities) + f"{'mean':>7}",
    ]
    for corruption, row in robustness["table"].items():
        cells = "".join(fmt(row[str(s)]) for s in severities)
        lines.append(f"{corruption:<18}{cells}{fmt(robustness['per_corruption'][corruption])}")
    rpc = "n/a" if robustness["rpc"] is None else f"{100 * robustness['rpc']:.1f} %"
    lines.append(
        f"clean {fmt(robustness['clean_miou_parts']).strip()} | mPC {fmt(robustness['mpc']).strip()} | rPC {rpc}"
    )
    return "\n".join(lines)


def save_robustness(out: Path, summary: dict[str, Any]) -> None:
    """Write ``summary`` (the clean evaluation with its ``robustness`` key) as ``metrics.json``, atomically, then
    drop the progress file: from here the figures live in ``metrics.json``."""
    out = Path(out)
    write_atomic(out / "metrics.json", lambda p: p.write_text(json.dumps(summary, indent=2)))
    (out / PROGRESS_FILE).unlink(missing_ok=True)
