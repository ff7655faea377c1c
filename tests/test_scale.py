"""The Ray Data engine: same outputs as the local engine, resume, damaged photos, manifests and URIs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from carparts.errors import CarpartsError
from carparts.scale import SUMMARY, SegmentWorker, is_complete, list_images, output_stems, predict_ray, read_manifest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray for the module: starting it costs seconds, so tests share it."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def photos(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for k, (h, w) in enumerate(sizes):
        path = folder / f"car{k}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def read_mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_ray_masks_equal_local_engine_then_resume_skips_them(local_ray, tiny_model, tmp_path):
    from carparts.loading import load_predictor
    from carparts.predict import predict_paths

    images = photos(tmp_path / "in", [(48, 64), (70, 50), (33, 90)])
    threads = torch.get_num_threads()
    try:
        predictor = load_predictor(str(tiny_model), "torch", threads=1)  # same threads as each Ray actor
        predict_paths([str(tmp_path / "in")], predictor, tmp_path / "local", progress=False)
    finally:
        torch.set_num_threads(threads)

    summary = predict_ray([str(tmp_path / "in")], tmp_path / "ray", model=str(tiny_model), workers=2, threads=1,
                          progress=False)  # fmt: skip
    assert (summary["written"], summary["skipped_complete"], summary["failed"]) == (3, 0, [])
    for path in images:
        local, distributed = (
            read_mask(tmp_path / "local" / f"{path.stem}.png"),
            read_mask(tmp_path / "ray" / f"{path.stem}.png"),
        )
        assert local.shape == distributed.shape == Image.open(path).size[::-1]
        np.testing.assert_array_equal(local, distributed)
        local_json = json.loads((tmp_path / "local" / f"{path.stem}.json").read_text())
        assert json.loads((tmp_path / "ray" / f"{path.stem}.json").read_text()) == local_json

    # one output removed: a re-run redoes that photo only and leaves the others' files untouched
    (tmp_path / "ray" / "car1.json").unlink()
    before = (tmp_path / "ray" / "car0.png").stat().st_mtime_ns
    again = predict_ray([str(tmp_path / "in")], tmp_path / "ray", model=str(tiny_model), workers=1, progress=False)
    assert (again["written"], again["skipped_complete"]) == (1, 2)
    assert (tmp_path / "ray" / "car1.json").is_file()
    assert (tmp_path / "ray" / "car0.png").stat().st_mtime_ns == before
    assert json.loads((tmp_path / "ray" / SUMMARY).read_text())["written"] == 1


def test_damaged_photos_are_listed_and_the_rest_complete(local_ray, tiny_model, tmp_path):
    good = photos(tmp_path / "in", [(40, 40), (50, 60)])
    (tmp_path / "in" / "notes.jpg").write_text("not a photo")
    truncated = tmp_path / "in" / "cut.jpg"
    truncated.write_bytes(good[1].read_bytes()[:300])
    manifest = tmp_path / "list.txt"
    manifest.write_text("# photos\nin/car0.jpg\nin/notes.jpg\n\nin/cut.jpg\nin/missing.jpg\nin/car1.jpg\n")

    summary = predict_ray([str(manifest)], tmp_path / "out", model=str(tiny_model), workers=2, threads=1,
                          progress=False)  # fmt: skip
    assert summary["written"] == 2
    failed = {Path(f["image"]).name: f["error"] for f in summary["failed"]}
    assert set(failed) == {"notes.jpg", "cut.jpg", "missing.jpg"}
    assert "not an image" in failed["notes.jpg"] and "truncated" in failed["cut.jpg"]
    assert "not found" in failed["missing.jpg"]
    assert json.loads((tmp_path / "out" / SUMMARY).read_text())["failed"] == summary["failed"]
    assert all((tmp_path / "out" / f"car{k}_overlay.jpg").is_file() for k in (0, 1))


def test_file_uris_go_through_pyarrow_filesystems(local_ray, tiny_model, tmp_path):
    photos(tmp_path / "in" / "sub", [(40, 56)])
    uri = (tmp_path / "in").as_uri()
    assert list_images([uri]) == [f"{uri}/sub/car0.jpg"]
    summary = predict_ray([uri], tmp_path / "out", model=str(tiny_model), workers=1, threads=1, progress=False)
    assert summary["written"] == 1
    assert json.loads((tmp_path / "out" / "car0.json").read_text())["image"] == f"{uri}/sub/car0.jpg"


def test_each_worker_loads_the_predictor_with_the_crop_policy_asked_for(tiny_model, tmp_path):
    worker = SegmentWorker(str(tiny_model), "torch", tta=False, out_dir=str(tmp_path), threads=1, crop="car")
    assert worker.predictor.info.crop == "car" and worker.predictor.network_runs == 2


def test_parquet_manifest_needs_a_path_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": ["a.jpg", "/abs/b.png"]}), tmp_path / "m.parquet")
    assert read_manifest(str(tmp_path / "m.parquet")) == [str(tmp_path / "a.jpg"), "/abs/b.png"]
    pq.write_table(pa.table({"file": ["a.jpg"]}), tmp_path / "bad.parquet")
    with pytest.raises(CarpartsError, match="bad.parquet: Parquet manifest needs a 'path' column"):
        read_manifest(str(tmp_path / "bad.parquet"))
    with pytest.raises(CarpartsError, match="nope.txt: manifest not found"):
        list_images([str(tmp_path / "nope.txt")])


def test_stems_and_completeness(tmp_path):
    assert output_stems(["a/x.jpg", "b/x.png", "s3://bucket/y.jpg"]) == ["x", "x_2", "y"]
    (tmp_path / "x.json").write_text(json.dumps({"image": "a/x.jpg"}))
    assert is_complete(tmp_path, "x", "a/x.jpg")
    assert not is_complete(tmp_path, "x", "b/x.jpg")  # same stem, another photo: not its output
    (tmp_path / "y.json").write_text("{half")
    assert not is_complete(tmp_path, "y", "y.jpg")


def test_engine_benchmark_writes_rows_for_each_engine(local_ray, tiny_model, tmp_path):
    from carparts.cli import main

    photos(tmp_path / "in", [(40, 40), (48, 64), (30, 50)])
    out, md = tmp_path / "scale.json", tmp_path / "scale.md"
    args = ["benchmark", "--engines", str(tmp_path / "in"), "--model", str(tiny_model), "--ray-workers", "1,2"]
    assert main(args + ["--out", str(out), "--md", str(md)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["engine"], r["workers"]) for r in rows] == [("local", 1), ("ray", 1), ("ray", 2)]
    assert all(r["images"] == 3 and r["steady_img_s"] > 0 and not r.get("failed") for r in rows)
    assert md.read_text().count("\n| ") == 4  # header + 3 rows


def test_ray_engine_refuses_to_overwrite_or_read_back_photos_before_starting(tmp_path):
    (photo,) = photos(tmp_path / "imgs", [(30, 40)])
    Image.open(photo).save(tmp_path / "imgs" / "car0.png")
    original = (tmp_path / "imgs" / "car0.png").read_bytes()
    with pytest.raises(CarpartsError, match="is the output folder"):
        predict_ray([str(tmp_path / "imgs")], tmp_path / "imgs", progress=False)
    with pytest.raises(CarpartsError, match="car0.png: the outputs of .*car0.jpg would overwrite this photo"):
        predict_ray([str(photo), str(tmp_path / "imgs" / "car0.png")], tmp_path / "imgs", progress=False)
    assert (tmp_path / "imgs" / "car0.png").read_bytes() == original
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["car0.jpg", "car0.png"]
    notes = []
    (tmp_path / "imgs" / "pred").mkdir()
    (tmp_path / "imgs" / "pred" / "car0.png").write_bytes(b"an earlier output")
    (tmp_path / "imgs" / "clip.gif").write_bytes(b"x")
    found = list_images([str(tmp_path / "imgs")], exclude=[tmp_path / "imgs" / "pred"], on_note=notes.append)
    assert [Path(p).name for p in found] == ["car0.jpg", "car0.png"]
    assert notes == ["skipped 1 file that is not an image: clip.gif"]
