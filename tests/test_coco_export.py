"""COCO export of predictions: instance polygons (holes, specks, corners), categories, the run's file (pycocotools,
the project's own loader), bad input, the Ray engine's merge, and the round trip on the bundled samples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from carparts.classes import CARPARTS
from carparts.cli import main
from carparts.coco_export import coco_categories, instance_annotations, relative_names
from carparts.data import class_index_mask, load_coco
from carparts.errors import CarpartsError
from tests.conftest import CATEGORIES, SHARED_DATA

DOOR, LIGHT = CARPARTS.names.index("front_left_door"), CARPARTS.names.index("front_left_light")
BUMPER, WHEEL = CARPARTS.names.index("front_bumper"), CARPARTS.names.index("wheel")


def part_mask() -> np.ndarray:
    """A door with a background hole and a light inside it, a one-pixel speck, a bumper strip one pixel high and a
    wheel of two pixels touching at a corner."""
    mask = np.zeros((40, 50), np.uint8)
    mask[5:30, 5:40] = DOOR
    mask[10:15, 10:20] = 0  # a hole showing the background
    mask[18:25, 25:35] = LIGHT  # a hole filled by another part
    mask[32, 2] = BUMPER
    mask[38, 40:45] = BUMPER
    mask[0, 0] = mask[1, 1] = WHEEL  # 8-connected: one instance
    return mask


def rasterise(annotations: list[dict], shape: tuple[int, int]) -> np.ndarray:
    """The project's own loader's rasterisation (data.class_index_mask: largest first, pycocotools polygons)."""
    return class_index_mask(annotations, *shape, CARPARTS.category_to_index())


def test_each_8_connected_instance_is_one_polygon_holes_cut_and_every_pixel_kept():
    mask = part_mask()
    annotations = instance_annotations(mask, CARPARTS, tolerance=0)
    assert [(a["category_id"], a["area"], a["bbox"]) for a in annotations] == [
        (8, 1, [2, 32, 1, 1]), (8, 5, [40, 38, 5, 1]), (10, 755, [5, 5, 35, 25]), (11, 70, [25, 18, 10, 7]),
        (19, 2, [0, 0, 2, 2]),
    ]  # fmt: skip
    assert all(len(a["segmentation"]) == 1 and a["iscrowd"] == 0 and "score" not in a for a in annotations)
    np.testing.assert_array_equal(rasterise(annotations, mask.shape), mask)
    door = next(a for a in annotations if a["category_id"] == 10)
    # the outline's 4 corners; each hole traced as an octagon (8-connected tracing cuts its corners), its first
    # vertex again to close it and the outline's vertex again to come back along the slit
    assert len(door["segmentation"][0]) == 2 * (4 + 2 * (8 + 2))


def test_outline_runs_on_pixel_corners_and_simplifies_within_tolerance():
    square = np.zeros((10, 10), np.uint8)
    square[2:6, 3:8] = DOOR
    (annotation,) = instance_annotations(square, CARPARTS, tolerance=1.0)
    xs, ys = annotation["segmentation"][0][0::2], annotation["segmentation"][0][1::2]
    assert (min(xs), max(xs), min(ys), max(ys)) == (3.25, 7.75, 2.25, 5.75)  # 0.25 px inside the pixel edges
    disc = np.zeros((200, 200), np.uint8)
    yy, xx = np.mgrid[:200, :200]
    disc[(yy - 100) ** 2 + (xx - 100) ** 2 < 80**2] = WHEEL
    exact, simplified = (instance_annotations(disc, CARPARTS, tolerance=t)[0] for t in (0, 1.0))
    assert len(simplified["segmentation"][0]) < len(exact["segmentation"][0]) / 4
    assert np.mean(rasterise([simplified], disc.shape) == disc) > 0.995  # 0.997: ~0.2 px of the rim


def test_score_is_the_instance_mean_confidence():
    mask = part_mask()
    confidence = np.full(mask.shape, 0.5, np.float32)
    confidence[mask == LIGHT] = 0.9
    confidence[0, 0] = 1.0
    scores = {a["category_id"]: a["score"] for a in instance_annotations(mask, CARPARTS, confidence)}
    assert scores == {8: 0.5, 10: 0.5, 11: 0.9, 19: 0.75}


def test_categories_are_the_training_sets_ids_and_names():
    expected = [{"id": c["id"], "name": c["name"]} for c in CATEGORIES]
    assert [{"id": c["id"], "name": c["name"]} for c in coco_categories(CARPARTS)] == expected
    if (SHARED_DATA / "annotations.json").is_file():
        shipped = json.loads((SHARED_DATA / "annotations.json").read_text())["categories"]
        assert [{"id": c["id"], "name": c["name"]} for c in shipped] == expected


def test_file_names_are_relative_to_the_common_folder_or_the_given_root(tmp_path):
    photos = [tmp_path / "a" / "x.jpg", tmp_path / "a" / "b" / "y.jpg"]
    assert relative_names(photos) == (str(tmp_path / "a"), ["x.jpg", "b/y.jpg"])
    assert relative_names(photos, tmp_path) == (str(tmp_path), ["a/x.jpg", "a/b/y.jpg"])
    assert relative_names(["s3://bucket/cars/1.jpg", "s3://bucket/cars/2/2.jpg"])[1] == ["1.jpg", "2/2.jpg"]
    with pytest.raises(CarpartsError, match=r"x.jpg: not under the COCO root .*/a/b; file names"):
        relative_names(photos, tmp_path / "a" / "b")


def write_photos(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    paths = []
    for k, (h, w) in enumerate(sizes):
        pixels = np.kron(rng.integers(0, 255, (h // 8, w // 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"car{k}.jpg", quality=95)
        paths.append(folder / f"car{k}.jpg")
    return paths


def predicted_masks(out: Path, stems: list[str]) -> list[np.ndarray]:
    return [np.asarray(Image.open(out / f"{stem}.png")) for stem in stems]


def round_trip_agreement(coco_path: Path, photos: Path, masks: list[np.ndarray]) -> float:
    """Pixels where the project's loader, given the COCO file as annotations.json next to the photos, paints what
    predict did."""
    shutil.copy(coco_path, photos / "annotations.json")
    data = load_coco(photos)
    agree = sum(int((data.read_mask(k) == mask).sum()) for k, mask in enumerate(masks))
    return agree / sum(mask.size for mask in masks)


def test_predict_coco_loads_in_pycocotools_and_round_trips_through_the_loader(tiny_model, tmp_path, capsys):
    write_photos(tmp_path / "photos", [(48, 64), (64, 40)])
    coco_path, out = tmp_path / "pre.json", tmp_path / "out"
    args = ["predict", str(tmp_path / "photos"), "--model", str(tiny_model), "--out", str(out), "--quiet"]
    assert main([*args, "--coco", str(coco_path), "--coco-tolerance", "0"]) == 0
    assert "COCO file: " in capsys.readouterr().out

    coco = COCO(str(coco_path))
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in coco.dataset["images"]] == [
        (1, "car0.jpg", 64, 48), (2, "car1.jpg", 40, 64),
    ]  # fmt: skip
    assert [{"id": c["id"], "name": c["name"]} for c in coco.dataset["categories"]] == CATEGORIES
    annotations = coco.dataset["annotations"]
    assert annotations and [a["id"] for a in annotations] == list(range(1, len(annotations) + 1))
    assert all(0 < a["score"] <= 1 and a["iscrowd"] == 0 and len(a["segmentation"]) == 1 for a in annotations)
    results = coco.loadRes([{k: v for k, v in a.items() if k != "id"} for a in annotations])
    assert len(results.anns) == len(annotations)
    assert [int(coco.annToMask(a).sum()) for a in annotations] == [a["area"] for a in annotations]

    record = json.loads((out / "car0.json").read_text())
    mine = [{k: v for k, v in a.items() if k not in ("id", "image_id")} for a in annotations if a["image_id"] == 1]
    assert record["coco"] == {"tolerance": 0.0, "annotations": mine}
    # unsimplified outlines give back every pixel; the default tolerance's figure is held on real photos below
    masks = predicted_masks(out, ["car0", "car1"])
    assert round_trip_agreement(coco_path, tmp_path / "photos", masks) == 1.0


def test_an_existing_coco_file_is_refused_before_any_work(tiny_model, tmp_path, capsys):
    write_photos(tmp_path / "photos", [(32, 32)])
    coco_path, out = tmp_path / "pre.json", tmp_path / "out"
    coco_path.write_text("{}")
    args = ["predict", str(tmp_path / "photos"), "--model", str(tiny_model), "--out", str(out), "--quiet"]
    assert main([*args, "--coco", str(coco_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {coco_path}: exists; pass --overwrite to replace it, or choose another --coco file\n"
    assert not out.exists() and coco_path.read_text() == "{}"
    assert main([*args, "--coco", str(coco_path), "--overwrite"]) == 0
    assert len(json.loads(coco_path.read_text())["images"]) == 1
    assert main([*args, "--coco", str(tmp_path)]) == 2
    assert "is a folder; --coco takes the JSON file to write" in capsys.readouterr().err
    (tmp_path / "elsewhere").mkdir()
    assert main([*args, "--coco", str(tmp_path / "new.json"), "--coco-root", str(tmp_path / "elsewhere")]) == 2
    assert "car0.jpg: not under the COCO root" in capsys.readouterr().err
    assert main([*args, "--coco-tolerance", "2"]) == 2
    assert "--coco-root, --coco-tolerance and --overwrite go with --coco FILE" in capsys.readouterr().err
    assert main([*args, "--coco", str(tmp_path / "new.json"), "--coco-tolerance", "-1"]) == 2
    assert "--coco-tolerance must be 0 px or more, got -1.0" in capsys.readouterr().err
    assert not (tmp_path / "new.json").exists()


def test_a_folder_without_photos_writes_a_coco_file_with_no_images(tiny_model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    coco_path = tmp_path / "pre.json"
    args = ["predict", str(tmp_path / "empty"), "--model", str(tiny_model), "--out", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 2
    assert "no images found" in capsys.readouterr().err
    assert main([*args, "--coco", str(coco_path)]) == 0
    note = f"note: no photos found in {tmp_path / 'empty'}; wrote {coco_path} with 0 images\n"
    assert capsys.readouterr().err == note
    coco = COCO(str(coco_path))
    assert coco.dataset["images"] == coco.dataset["annotations"] == []
    assert [{"id": c["id"], "name": c["name"]} for c in coco.dataset["categories"]] == CATEGORIES


def local_coco(tiny_model: Path, tmp_path: Path) -> dict:
    """The local engine's COCO file of ``tmp_path/photos``, at one torch thread as each Ray actor runs."""
    import torch

    threads = torch.get_num_threads()
    args = ["predict", str(tmp_path / "photos"), "--model", str(tiny_model), "--quiet", "--out", str(tmp_path / "lo")]
    try:
        torch.set_num_threads(1)  # as each Ray actor, so the masks are the same to the bit
        assert main([*args, "--coco", str(tmp_path / "local.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads((tmp_path / "local.json").read_text())


def test_ray_driver_merges_rows_and_reads_resumed_photos_back(tiny_model, tmp_path, monkeypatch):
    """The driver's side of the Ray engine, with the actors run in this process (starting Ray costs seconds)."""
    pytest.importorskip("ray")
    from carparts import scale

    def in_process(todo, workers, threads, worker_args):
        worker = scale.SegmentWorker(**worker_args)
        rows = [{"image": i, "stem": s, "location": i} for i, s in todo]
        return [json.loads(json.dumps(worker(row))) for row in rows]  # rows travel as plain data

    monkeypatch.setattr(scale, "_run", in_process)
    monkeypatch.setattr(scale, "_connect", lambda address, cpus: False)
    write_photos(tmp_path / "photos", [(48, 64), (40, 40), (64, 32)])
    expected = local_coco(tiny_model, tmp_path)
    merged, out = tmp_path / "ray.json", tmp_path / "out_ray"
    run = dict(model=str(tiny_model), threads=1, progress=False, coco=merged)
    assert scale.predict_ray([str(tmp_path / "photos")], out, **run)["coco_images"] == 3
    assert json.loads(merged.read_text()) == expected
    (out / "car1.json").unlink()
    again = scale.predict_ray([str(tmp_path / "photos")], out, **run)
    assert (again["written"], again["skipped_complete"], again["coco_images"]) == (1, 2, 3)
    assert json.loads(merged.read_text()) == expected
    tighter = scale.predict_ray([str(tmp_path / "photos")], out, **run, coco_tolerance=0.5)  # another tolerance
    assert (tighter["written"], tighter["skipped_complete"]) == (3, 0)


def test_ray_engine_merges_one_file_equal_to_the_local_engine(tiny_model, tmp_path):
    """The rows' annotations through Ray Data's actors (the merge and resume: the test above)."""
    ray = pytest.importorskip("ray")
    from carparts.scale import predict_ray

    write_photos(tmp_path / "photos", [(48, 64), (40, 40), (64, 32)])
    expected = local_coco(tiny_model, tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        merged = tmp_path / "ray.json"
        summary = predict_ray([str(tmp_path / "photos")], tmp_path / "out_ray", model=str(tiny_model), workers=2,
                              threads=1, progress=False, coco=merged)  # fmt: skip
        assert (summary["written"], summary["coco_images"]) == (3, 3)
        assert json.loads(merged.read_text()) == expected
    finally:
        ray.shutdown()


def test_round_trip_of_the_bundled_model_on_the_samples_keeps_98_percent(tmp_path):
    """The figure docs/labelling.md states (99.74 % when measured): the bundled model's predictions on the four
    sample photos, exported at the default tolerance and rasterised back by the project's own loader."""
    from carparts.paths import SAMPLES
    from carparts.tools.prelabels import round_trip

    out, coco_path = tmp_path / "out", tmp_path / "pre.json"
    assert main(["predict", str(SAMPLES), "--out", str(out), "--coco", str(coco_path), "--quiet"]) == 0
    figures = round_trip(coco_path, out)
    assert figures["photos"] == 4 and figures["pixels"] == 4 * 512 * 512
    assert figures["agreement"] >= 0.98
