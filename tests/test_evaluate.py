import json

import pytest

from carparts.classes import CARPARTS
from carparts.data import load_coco, recipe_split, split_indices
from carparts.errors import CarpartsError
from carparts.evaluate import evaluate, select_split
from carparts.models import ModelInfo


def test_evaluate_counts_every_native_pixel_once(tiny_model, tiny_coco, tmp_path):
    summary = evaluate(tiny_model, tiny_coco, out=tmp_path / "eval", progress=False)
    assert summary["images"] == 6 and summary["resolution"] == "native"
    assert sum(map(sum, summary["confusion_matrix"])) == 6 * 64 * 48
    pixels = {name: row["pixels"] for name, row in summary["per_class"].items()}
    assert pixels["front_left_light"] == 6 * 16 * 10 and pixels["front_left_door"] == 6 * (38 * 30 - 16 * 10)
    assert summary["per_class"]["trunk"]["pixels"] == 0
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["miou_parts"] == summary["miou_parts"] and len(written["per_image"]) == 6
    assert set(written["per_class"]) == set(CARPARTS.names)
    boundary = written["boundary"]  # the wrong pixels split into boundary and region errors
    assert 0 < boundary["band_pixels"] < 1 and boundary["band"] == 0.005
    wrong = 6 * 64 * 48 - sum(summary["confusion_matrix"][i][i] for i in range(CARPARTS.num_classes))
    assert boundary["wrong_near_boundary"] is None if wrong == 0 else 0 <= boundary["wrong_near_boundary"] <= 1
    low, high = written["interval"]["miou_parts"]  # the images' sampling noise, around the figure itself
    assert low <= summary["miou_parts"] + 1e-4 and summary["miou_parts"] - 1e-4 <= high


def test_val_split_follows_the_model_recipe():
    recipe = {"val_fraction": 0.25, "seed": 3, "limit_images": 8}
    assert recipe_split(20, recipe) == split_indices(8, 0.25, 3)
    assert recipe_split(5, {}) == split_indices(5, 0.2, 0)
    # since `split_seed` exists, the split no longer moves with the training seed
    assert recipe_split(20, {**recipe, "split_seed": 0}) == split_indices(8, 0.25, 0)


def test_select_split_reads_the_runs_split_json_else_applies_the_rule(tiny_coco):
    coco = load_coco(tiny_coco)
    info = ModelInfo(arch="fpn", encoder="tf_efficientnet_lite0", taxonomy=CARPARTS, recipe={"val_fraction": 0.5})
    assert select_split(coco, "val", info) == recipe_split(6, info.recipe)[1]
    assert select_split(coco, "all", info) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(CarpartsError, match="unknown split"):
        select_split(coco, "test", info)
    info.split = {"train": ["img0.jpg", "img2.jpg", "img3.jpg", "img5.jpg"], "val": ["img4.jpg", "img1.jpg"]}
    assert select_split(coco, "val", info) == [1, 4] and select_split(coco, "train", info) == [0, 2, 3, 5]
    info.split = {"train": ["img0.jpg"], "val": ["other.jpg"]}
    with pytest.raises(CarpartsError, match="does not hold .first: other.jpg"):
        select_split(coco, "val", info)


def test_a_run_folder_is_scored_on_the_split_its_split_json_lists(tiny_model, tiny_coco):
    (tiny_model / "split.json").write_text(json.dumps({"train": ["img0.jpg"], "val": ["img3.jpg", "img5.jpg"]}))
    summary = evaluate(tiny_model, tiny_coco, split="val", progress=False)
    assert [row["file_name"] for row in summary["per_image"]] == ["img3.jpg", "img5.jpg"]


def copy_model(folder, target, **recipe):
    """A copy of a saved model whose recipe says it was trained with ``recipe``."""
    import shutil

    shutil.copytree(folder, target)
    data = json.loads((target / "model.json").read_text())
    data["recipe"] = {**data.get("recipe", {}), **recipe}
    (target / "model.json").write_text(json.dumps(data))
    return target


def test_ensemble_is_scored_only_on_a_split_its_members_share(tiny_model, tiny_coco, tmp_path):
    same = copy_model(tiny_model, tmp_path / "same", val_fraction=0.5, split_seed=0, seed=1)
    first = copy_model(tiny_model, tmp_path / "first", val_fraction=0.5, split_seed=0)
    summary = evaluate(f"{first},{same}", tiny_coco, split="val", progress=False)
    assert summary["images"] == 3 and summary["model"].startswith("ensemble2-")
    other = copy_model(tiny_model, tmp_path / "other", val_fraction=0.5, split_seed=7)
    assert recipe_split(6, {"val_fraction": 0.5, "split_seed": 7}) != recipe_split(
        6, {"val_fraction": 0.5, "split_seed": 0}
    )
    with pytest.raises(CarpartsError, match="another val split"):
        evaluate(f"{first},{other}", tiny_coco, split="val", progress=False)
    assert evaluate(f"{first},{other}", tiny_coco, split="all", progress=False)["images"] == 6


def test_unannotated_images_score_as_background_and_a_missing_photo_is_skipped(tiny_model, tmp_path, capsys):
    from PIL import Image

    from carparts.cli import main
    from tests.conftest import make_tiny_coco

    data = make_tiny_coco(tmp_path / "data", n=3)
    coco = json.loads((data / "annotations.json").read_text())
    coco["images"].append({"id": 9, "file_name": "bare.jpg", "width": 40, "height": 30})  # no annotation
    (data / "annotations.json").write_text(json.dumps(coco))
    Image.new("RGB", (40, 30), (50, 60, 70)).save(data / "JPEGImages" / "bare.jpg")
    (data / "JPEGImages" / "img1.jpg").unlink()

    truths = {}
    summary = evaluate(tiny_model, data, progress=False, on_image=lambda name, _, truth, *rest: truths.update(
        {name: truth}), on_error=lambda message: None)  # fmt: skip
    assert sorted(truths) == ["bare.jpg", "img0.jpg", "img2.jpg"] and not truths["bare.jpg"].any()
    assert (summary["images"], summary["images_without_annotations"]) == (3, 1)
    assert sum(map(sum, summary["confusion_matrix"])) == 2 * 64 * 48 + 40 * 30
    assert [s["file_name"] for s in summary["skipped"]] == ["img1.jpg"]

    assert main(["evaluate", "--data", str(data), "--model", str(tiny_model), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert [line for line in captured.err.splitlines() if not line.startswith("note: ")] == [
        f"error: {data / 'JPEGImages' / 'img1.jpg'}: image listed in annotations.json not found "
        f"(nor at {data / 'img1.jpg'})"
    ]
    assert "1 image(s) have no annotations: scored as all background" in captured.out
    assert "1 image(s) could not be read and were not scored" in captured.out


def test_compare_gives_the_paired_difference_of_two_evaluations(tiny_model, tiny_coco, tmp_path, capsys):
    from carparts.cli import main
    from carparts.evaluate import compare

    a = evaluate(tiny_model, tiny_coco, out=tmp_path / "a", progress=False)
    evaluate(tiny_model, tiny_coco, out=tmp_path / "a2", progress=False)
    b = evaluate(tiny_model, tiny_coco, out=tmp_path / "b", tta=True, progress=False)
    same = compare(tmp_path / "a", tmp_path / "a2" / "metrics.json")  # a folder or its metrics.json
    assert same["difference"] == 0 and same["interval"] == [0, 0] and same["b_ahead"] == 0
    result = compare(tmp_path / "a", tmp_path / "b")
    assert b["miou_parts"] != a["miou_parts"]  # the mirrored view changes some pixels
    assert result["difference"] == pytest.approx(b["miou_parts"] - a["miou_parts"], abs=1e-4)
    assert result["a"] == round(a["miou_parts"], 4) and result["images"] == 6
    low, high = result["interval"]
    assert low - 1e-4 <= result["difference"] <= high + 1e-4
    changes = list(result["per_class"].values())
    assert changes == sorted(changes, key=abs, reverse=True)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert f"= {result['difference']:+.4f}; 95% interval" in capsys.readouterr().out

    written = json.loads((tmp_path / "b" / "metrics.json").read_text())
    written["per_image"] = written["per_image"][1:]  # another image set
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metrics.json").write_text(json.dumps(written))
    with pytest.raises(CarpartsError, match=r"did not score the same images and classes \(1 image\(s\) in one only\)"):
        compare(tmp_path / "a", tmp_path / "c")
    for row in written["per_image"]:
        row.pop("confusion")  # as an older carparts wrote it
    (tmp_path / "c" / "metrics.json").write_text(json.dumps(written))
    with pytest.raises(CarpartsError, match="no per-image confusion matrices"):
        compare(tmp_path / "a", tmp_path / "c")
    with pytest.raises(CarpartsError, match="no metrics.json"):
        compare(tmp_path / "a", tmp_path / "nothing")


def test_evaluate_lists_a_part_labelled_with_the_wrong_side(tiny_model, tmp_path):
    import torch

    from carparts.loading import load_predictor
    from carparts.metrics import format_table
    from carparts.report import label_checks_section
    from tests.conftest import make_tiny_coco

    data = make_tiny_coco(tmp_path / "data", n=2)
    coco = json.loads((data / "annotations.json").read_text())
    coco["annotations"][0]["category_id"] = 13  # img0's front-left light labelled front_right_light: a slip
    (data / "annotations.json").write_text(json.dumps(coco))
    layout = torch.zeros(CARPARTS.num_classes, 48, 64)  # a model that sees the parts as they are
    layout[0] = 1.0
    layout[:, 10:40, 2:40] = torch.eye(CARPARTS.num_classes)[CARPARTS.names.index("front_left_door")][:, None, None]
    layout[:, 20:30, 4:20] = torch.eye(CARPARTS.num_classes)[CARPARTS.names.index("front_left_light")][:, None, None]
    predictor = load_predictor(tiny_model)
    predictor.logits = lambda image: layout * 8

    summary = evaluate(None, data, progress=False, predictor=predictor, out=tmp_path / "eval")
    checks = json.loads((tmp_path / "eval" / "metrics.json").read_text())["label_checks"]
    assert [
        (c["file_name"], c["annotation_id"], c["label"], c["predicted"], c["mirror"], c["share"]) for c in checks
    ] == [("img0.jpg", 1, "front_right_light", "front_left_light", True, 1.0)]
    assert "labels to check (the model calls most of the part another): img0.jpg #1 front_right_light" in (
        format_table(summary)
    )
    assert "<td>front_left_light (the other side)</td>" in label_checks_section(checks)
