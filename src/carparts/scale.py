"""Batch prediction on Ray Data: many photos, many workers, one or many machines, resumable.

The engine lists the photos (folders, globs, text or Parquet manifests, local paths or any URI pyarrow's
filesystems understand), skips those whose outputs are already complete, and streams the rest through a pool
of Ray actors. Each actor loads the model once, then reads, decodes, segments and writes each photo with the
same code as the local engine (:meth:`carparts.results.Result.save`), so outputs are identical and each one
lands as soon as it is done: a crash or Ctrl-C loses nothing already written. Photos that cannot be read are
listed in ``summary.json`` and do not stop the job. With ``coco``, each actor returns its photo's COCO annotations
(also kept in the photo's JSON, so photos a resumed run skips are read back from there) and the driver writes one
COCO file at the end.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from tqdm import tqdm

from carparts.coco_export import DEFAULT_TOLERANCE, coco_file, model_taxonomy, relative_names, write_coco
from carparts.errors import CarpartsError
from carparts.images import IMAGE_SUFFIXES, ImageScan, decode_image, read_image, scan_images, write_atomic

MANIFEST_SUFFIXES = {".txt", ".lst", ".parquet"}
SUMMARY = "summary.json"


def is_uri(source: str) -> bool:
    """``s3://bucket/x``, ``gs://...``, ``file:///...``: anything pyarrow's filesystems resolve by scheme."""
    return "://" in source


def _filesystem(uri: str):
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as e:
        raise CarpartsError(f"{uri}: cannot open this location ({e})") from None


def _read_bytes(source: str) -> bytes:
    if not is_uri(source):
        return Path(source).read_bytes()
    filesystem, path = _filesystem(source)
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except (FileNotFoundError, OSError) as e:
        raise CarpartsError(f"{source}: cannot read ({e})") from None


def _list_uri(uri: str) -> list[str]:
    """Image files under a URI folder (recursive), or the URI itself when it is a file."""
    from pyarrow import fs

    filesystem, path = _filesystem(uri)
    info = filesystem.get_file_info(path)
    if info.type != fs.FileType.Directory:
        return [uri]  # a missing file is reported when a worker reads it
    scheme = uri.split("://", 1)[0]
    infos = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    found = [i.path for i in infos if i.type == fs.FileType.File and Path(i.path).suffix.lower() in IMAGE_SUFFIXES]
    return [f"{scheme}://{p}" for p in sorted(found)]


def read_manifest(source: str) -> list[str]:
    """Image paths from a manifest: a text file (one per line, ``#`` comments) or a Parquet file (column ``path``).

    Relative local paths are taken relative to the manifest's folder, as a data set folder moved whole still works.
    """
    suffix = PurePosixPath(source).suffix.lower()
    data = _read_bytes(source) if is_uri(source) or Path(source).is_file() else None
    if data is None:
        raise CarpartsError(f"{source}: manifest not found")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise CarpartsError(f"{source}: not a readable Parquet file ({e})") from None
        if "path" not in table.column_names:
            raise CarpartsError(f"{source}: Parquet manifest needs a 'path' column (has {table.column_names})")
        entries = [str(p) for p in table.column("path").to_pylist() if p]
    else:
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise CarpartsError(f"{source}: manifest is not UTF-8 text") from None
        entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    base = None if is_uri(source) else Path(source).parent
    return [e if is_uri(e) or base is None or Path(e).is_absolute() else str(base / e) for e in entries]


def list_images(
    sources: list[str], exclude: Sequence[Path] = (), on_note: Callable[[str], None] | None = None,
    allow_empty: bool = False,
) -> list[str]:  # fmt: skip
    """Expand folders, globs, manifests and URIs into image locations, in a stable order.

    Local folder scans and globs leave out the ``exclude`` folders; ``on_note`` hears, in one line, how many files
    of scanned folders were skipped as not images. Finding none is an error unless ``allow_empty``.
    """
    found: list[str] = []
    skipped: list[Path] = []
    for source in sources:
        if PurePosixPath(source).suffix.lower() in MANIFEST_SUFFIXES:
            found.extend(read_manifest(source))
        elif is_uri(source):
            found.extend(_list_uri(source))
        else:
            scan = scan_images([source], exclude)
            found.extend(str(p) for p in scan.paths)
            skipped.extend(scan.skipped)
    if not found and not allow_empty:
        raise CarpartsError(f"no images found in {' '.join(sources)}")
    if skipped and on_note is not None:
        on_note(ImageScan(paths=[], skipped=skipped).skipped_note())
    return found


def load_image(source: str) -> np.ndarray:
    """Decode a local path or a URI into an RGB array, with the same checks as :func:`carparts.images.read_image`."""
    if not is_uri(source):
        return read_image(source)
    return decode_image(io.BytesIO(_read_bytes(source)), source)


def output_stems(images: list[str]) -> list[str]:
    """Output names, as the local engine gives them: the file stem, suffixed ``_2``... on repeats."""
    from carparts.predict import unique_stems

    return unique_stems([PurePosixPath(i) for i in images])


def read_record(out_dir: Path, stem: str, image: str) -> dict[str, Any] | None:
    """A photo's JSON record when its outputs are complete, else None. The JSON is written last and names its
    photo, so it proves both."""
    try:
        record = json.loads((out_dir / f"{stem}.json").read_text())
        return record if record["image"] == image else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_complete(out_dir: Path, stem: str, image: str, coco_tolerance: float | None = None) -> bool:
    """Whether ``image``'s outputs exist (with ``coco_tolerance``: and its JSON holds COCO annotations made at
    that tolerance, else the photo is done again)."""
    record = read_record(out_dir, stem, image)
    if record is None or coco_tolerance is None:
        return record is not None
    return isinstance(record.get("coco"), dict) and record["coco"].get("tolerance") == coco_tolerance


class SegmentWorker:
    """A Ray actor: loads the model once, then segments and writes one photo per call."""

    def __init__(
        self,
        model: str | None,
        backend: str,
        tta: bool,
        out_dir: str,
        threads: int,
        input_size: list[int] | None = None,
        coco_tolerance: float | None = None,
        crop: str | None = None,
    ):
        from carparts.loading import load_predictor

        self.predictor = load_predictor(model, backend, tta=tta, threads=threads, input_size=input_size, crop=crop)
        self.out_dir = Path(out_dir)
        self.coco_tolerance = coco_tolerance

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        """Segment and write one photo; the status row carries the error, if any, and with COCO export the
        photo's :func:`coco_entry` as JSON text (one string column, whatever the polygons' shapes)."""
        image_path, stem = row["image"], row["stem"]
        error, coco = "", ""
        try:
            photo = self.predictor.result(load_image(row["location"]), image_path)
            photo.save(self.out_dir, stem, coco_tolerance=self.coco_tolerance)
            if self.coco_tolerance is not None:
                height, width = photo.mask.shape
                annotations = photo.coco_annotations(self.coco_tolerance)  # made once, by save, for the JSON
                entry = {"model": photo.info.model_id, "width": width, "height": height, "annotations": annotations}
                coco = json.dumps(entry)
        except CarpartsError as e:
            error = str(e)
        except Exception as e:  # one odd photo must not stop a job over millions; it is listed instead
            error = f"{image_path}: {type(e).__name__}: {e}"
        return {"image": image_path, "stem": stem, "error": error, "coco": coco}


def coco_entry(record: dict[str, Any]) -> dict[str, Any]:
    """What the run's COCO file needs of a photo's JSON record, as a worker's status row carries it: model, size
    and COCO annotations."""
    return {key: record[key] for key in ("model", "width", "height")} | {"annotations": record["coco"]["annotations"]}


def _connect(address: str | None, cpus_wanted: int) -> bool:
    """Join the cluster at ``address``, or start a local Ray with this machine's cores (at least ``cpus_wanted``,
    what the actors reserve, so that none waits forever); True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    settings: dict[str, Any] = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    if address:
        ray.init(address=address, **settings)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, cpus_wanted), **settings)
    return True


def predict_ray(
    sources: list[str],
    out_dir: Path,
    model: str | None = None,
    backend: str = "torch",
    tta: bool = False,
    workers: int = 2,
    threads: int | None = None,
    address: str | None = None,
    progress: bool = True,
    input_size: int | list[int] | None = None,
    on_note: Callable[[str], None] | None = None,
    coco: Path | None = None,
    coco_root: str | None = None,
    coco_tolerance: float = DEFAULT_TOLERANCE,
    crop: str | None = None,
) -> dict[str, Any]:
    """Segment every photo in ``sources`` on a pool of ``workers`` Ray actors; return (and write) the summary.

    ``threads`` is each actor's CPU threads and the CPUs it reserves (default: this machine's cores shared
    out between the workers). ``out_dir`` must be visible to every worker (a shared filesystem on a cluster).
    As with the local engine, ``out_dir`` is left out of folder scans, and outputs that would overwrite a photo
    are refused before any work (:func:`carparts.predict.images_to_predict`).

    ``coco``: also write this COCO file (replaced if it exists) of every photo segmented, now or by an earlier
    run, with file names relative to ``coco_root`` (:func:`carparts.coco_export.relative_names`); photos done
    earlier without COCO annotations at ``coco_tolerance`` are done again. No photo at all then writes a file
    with no images.
    """
    try:
        import ray
    except ImportError:
        raise CarpartsError("--engine ray needs Ray Data: pip install 'carparts[ray]'") from None

    from carparts.loading import split_models
    from carparts.predict import check_no_overwrite, check_sources_outside

    check_sources_outside([s for s in sources if not is_uri(s)], out_dir)
    images = list_images(sources, exclude=[out_dir], on_note=on_note, allow_empty=coco is not None)
    stems = output_stems(images)
    local = [(image, stem) for image, stem in zip(images, stems, strict=True) if not is_uri(image)]
    check_no_overwrite([image for image, _ in local], [stem for _, stem in local], out_dir)
    tolerance = None if coco is None else coco_tolerance
    if coco is not None:  # a photo outside the root, or a model without a description: before any work
        coco_root, coco_names = relative_names(images, coco_root)
        taxonomy = model_taxonomy(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [(i, s) for i, s in zip(images, stems, strict=True) if not is_complete(out_dir, s, i, tolerance)]
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    summary: dict[str, Any] = {
        "engine": "ray", "backend": backend, "workers": workers, "threads_per_worker": threads,
        "images": len(images), "skipped_complete": len(images) - len(todo), "written": 0, "failed": [],
        "interrupted": False, "seconds": 0.0,
    }  # fmt: skip
    # workers may start elsewhere: absolute paths (comma-joined for an ensemble)
    members = None if model is None else ",".join(str(Path(m).absolute()) for m in split_models(model))
    worker_args = dict(
        model=members, backend=backend, tta=tta, out_dir=str(out_dir.absolute()), threads=threads,
        input_size=input_size, coco_tolerance=tolerance, crop=crop,
    )  # fmt: skip
    entries: dict[str, dict[str, Any]] = {}  # image -> coco_entry, from the workers' rows
    started_ray = _connect(address, workers * threads) if todo else False
    start = time.perf_counter()
    try:
        rows = _run(todo, workers, threads, worker_args)
        for row in tqdm(rows, total=len(todo), desc="predict (ray)", unit="img", disable=not progress):
            summary.setdefault("seconds_to_first", round(time.perf_counter() - start, 3))  # actors up, model loaded
            if row["error"]:
                summary["failed"].append({"image": row["image"], "error": row["error"]})
            else:
                summary["written"] += 1
                if tolerance is not None:
                    entries[row["image"]] = json.loads(row["coco"])
        if coco is not None:
            photos, names = merged_entries(images, stems, coco_names, entries, out_dir, summary["failed"])
            model_id = photos[0]["model"] if photos else None
            info = {"model": model_id, "root": coco_root, "tolerance_px": coco_tolerance}
            coco_data = coco_file(photos, names, taxonomy, {k: v for k, v in info.items() if v is not None})
            write_coco(coco, coco_data)
            summary |= {"coco": str(coco), "coco_root": coco_root, "coco_images": len(coco_data["images"]),
                        "coco_annotations": len(coco_data["annotations"])}  # fmt: skip
    except KeyboardInterrupt:
        summary["interrupted"] = True
        raise
    finally:
        summary["seconds"] = round(time.perf_counter() - start, 3)
        summary["images_per_second"] = round(summary["written"] / summary["seconds"], 3) if summary["seconds"] else 0
        write_atomic(out_dir / SUMMARY, lambda p: p.write_text(json.dumps(summary, indent=2)))
        if started_ray:
            ray.shutdown()
    return summary


def merged_entries(
    images: list[str], stems: list[str], names: list[str], entries: dict[str, dict[str, Any]], out_dir: Path,
    failed: list[dict[str, str]],
) -> tuple[list[dict[str, Any]], list[str]]:  # fmt: skip
    """(photos, file names) for the run's COCO file, in listing order: what the workers returned, else (a photo an
    earlier run finished) its JSON record's COCO annotations; photos that failed are left out."""
    failures = {failure["image"] for failure in failed}
    photos, kept = [], []
    for image, stem, name in zip(images, stems, names, strict=True):
        if image in failures:
            continue
        if image not in entries:
            record = read_record(out_dir, stem, image)
            if record is None or not isinstance(record.get("coco"), dict):
                failed.append({"image": image, "error": f"{out_dir / stem}.json: no COCO annotations to read back"})
                continue
            entries[image] = coco_entry(record)
        photos.append(entries[image])
        kept.append(name)
    return photos, kept


def _run(
    todo: list[tuple[str, str]], workers: int, threads: int, worker_args: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """Stream ``todo`` through the actor pool (``worker_args`` build each :class:`SegmentWorker`); yield one
    status row per photo as it completes."""
    if not todo:
        return
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts photos, not blocks
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # workers may not share the driver's working folder: they read absolute paths, outputs name the given one
    rows = [{"image": i, "stem": s, "location": i if is_uri(i) else str(Path(i).absolute())} for i, s in todo]
    dataset = ray.data.from_items(rows)
    results = dataset.map(
        SegmentWorker,
        fn_constructor_kwargs=worker_args,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=threads,
    )  # fmt: skip
    yield from results.iter_rows()
