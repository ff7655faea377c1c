"""Training and evaluating on several COCO folders at once (``--data A,B``)."""

import json

import numpy as np
import pytest
import yaml

from carparts.classes import CARPARTS
from carparts.cli import main
from carparts.config import load_config
from carparts.data import listed_split, load_coco, split_indices
from carparts.errors import CarpartsError
from carparts.evaluate import evaluate, select_split
from carparts.models import ModelInfo, load_model
from carparts.paths import DEFAULT_MODEL
from carparts.train import train
from tests.conftest import CATEGORIES, SHARED_DATA, make_tiny_coco, rect, tiny_train_config, write_coco


@pytest.fixture
def two_folders(tmp_path):
    """Folders ``a`` (6 images) and ``b`` (4), both holding ``img0.jpg``..."""
    return make_tiny_coco(tmp_path / "a", n=6), make_tiny_coco(tmp_path / "b", n=4)


def test_two_folders_train_with_a_val_split_drawn_per_folder_and_evaluate_on_the_list(two_folders, tmp_path, capsys):
    a, b = two_folders
    config = tiny_train_config(f"{a},{b}", tmp_path / "runs", name="both")
    run = train(config, progress=False)
    split = json.loads((run / "split.json").read_text())
    # each folder split on its own by the one split rule: 2 of a's 6 images, 1 of b's 4
    a_train, a_val = split_indices(6, 0.34, 0)
    b_train, b_val = split_indices(4, 0.34, 0)
    assert split["val"] == [f"a/img{i}.jpg" for i in a_val] + [f"b/img{i}.jpg" for i in b_val]
    assert split["train"] == [f"a/img{i}.jpg" for i in a_train] + [f"b/img{i}.jpg" for i in b_train]
    _, info = load_model(run)
    assert info.recipe["data"] == f"{a},{b}" and info.metrics["val_native"]["images"] == 3

    summary = evaluate(run, f"{a},{b}", split="val", progress=False)
    assert [row["file_name"] for row in summary["per_image"]] == split["val"]
    assert evaluate(run, [b, a], split="train", progress=False)["images"] == 7  # the order of the list is free
    assert main(["evaluate", "--model", str(run), "--data", f"{a},{b}", "--split", "val", "--quiet"]) == 0
    assert "(val, 3 images, native size)" in capsys.readouterr().out


def test_without_split_json_the_recipe_splits_each_folder(two_folders):
    coco = load_coco(list(two_folders))
    info = ModelInfo(arch="fpn", encoder="tf_efficientnet_lite0", taxonomy=CARPARTS, recipe={"val_fraction": 0.5})
    assert select_split(coco, "val", info) == split_indices(6, 0.5, 0)[1] + [6 + i for i in split_indices(4, 0.5, 0)[1]]


def test_joined_folders_name_their_images_by_folder_and_read_each_folders_own_files(tmp_path):
    a = make_tiny_coco(tmp_path / "p" / "data", n=2)
    b = make_tiny_coco(tmp_path / "q" / "data", n=3)
    coco = load_coco(f"{a},{b}")
    assert [r["file_name"] for r in coco.images] == ["p/data/img0.jpg", "p/data/img1.jpg"] + [
        f"q/data/img{k}.jpg" for k in range(3)
    ]
    assert [r["id"] for r in coco.images] == [0, 1, 2, 3, 4] and coco.image_path(3) == b / "JPEGImages" / "img1.jpg"
    assert np.array_equal(coco.read_mask(4), load_coco(b).read_mask(2))
    with pytest.raises(CarpartsError, match="named twice in --data"):
        load_coco([a, b, a])


def test_folders_agree_on_category_names_whatever_their_ids(tmp_path):
    a = make_tiny_coco(tmp_path / "a", n=2)
    renumbered = [{**c, "id": c["id"] + 100} for c in CATEGORIES]  # as a labelling tool's export may number them
    image = {"id": 1, "file_name": "x.jpg", "width": 64, "height": 48}
    door = {"id": 1, "image_id": 1, "category_id": 110, "segmentation": [rect(2, 10, 40, 40)], "iscrowd": 0}
    b = write_coco(tmp_path / "b", [image], [door], renumbered)
    coco = load_coco([a, b])
    assert coco.taxonomy == CARPARTS
    assert (coco.read_mask(2) == CARPARTS.names.index("front_left_door")).sum() == 38 * 30


def test_folders_whose_categories_disagree_are_named_in_one_line(tmp_path):
    a = make_tiny_coco(tmp_path / "a", n=2)
    image = {"id": 1, "file_name": "x.jpg", "width": 64, "height": 48}
    door = {"id": 1, "image_id": 1, "category_id": 10, "segmentation": [rect(2, 10, 40, 40)], "iscrowd": 0}
    no_hood = write_coco(tmp_path / "no_hood", [image], [door], [c for c in CATEGORIES if c["name"] != "hood"])
    with pytest.raises(CarpartsError, match=f"^{no_hood}: has no category 'hood', which {a} has$"):
        load_coco(f"{a},{no_hood}")
    b = make_tiny_coco(tmp_path / "b", n=2)
    spoiler = write_coco(tmp_path / "spoiler", [image], [door], [*CATEGORIES, {"id": 20, "name": "spoiler"}])
    with pytest.raises(CarpartsError, match=f"^{spoiler}: category 'spoiler' is not one of {a}'s categories$"):
        load_coco([a, b, spoiler, no_hood])  # the first folder that disagrees


def test_a_missing_folder_is_named_before_anything_is_written(two_folders, tmp_path):
    a, _ = two_folders
    missing = tmp_path / "nope"
    with pytest.raises(CarpartsError, match=f"^{missing}: data folder not found$"):
        load_coco(f"{a},{missing}")
    config = load_config(overrides=dict(data=f"{a},{missing}", out=str(tmp_path / "runs"), workers=0))
    with pytest.raises(CarpartsError, match="nope: data folder not found"):
        train(config, progress=False)
    assert not (tmp_path / "runs").exists()


def test_yaml_takes_a_list_of_folders(two_folders, tmp_path):
    a, b = two_folders
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data": [str(a), str(b)], "val_fraction": 0.5}))
    config = load_config(path=path)
    assert config.data == f"{a},{b}" and len(load_coco(config.data)) == 10
    config.save(tmp_path / "saved.yaml")
    assert load_config(path=tmp_path / "saved.yaml").data == config.data  # the run's config.yaml reads back


def test_one_folder_keeps_bare_names_and_the_bundled_models_split(tiny_coco):
    assert [r["file_name"] for r in load_coco(tiny_coco).images][:2] == ["img0.jpg", "img1.jpg"]
    if not (SHARED_DATA / "annotations.json").is_file():
        pytest.skip(f"{SHARED_DATA} not present")
    coco, info = load_coco(SHARED_DATA, check_files=False), json.loads((DEFAULT_MODEL / "model.json").read_text())
    listed = json.loads((DEFAULT_MODEL / "split.json").read_text())
    assert listed_split(coco, listed, "split.json") == coco.recipe_split(info["recipe"])
