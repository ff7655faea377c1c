import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from carparts.classes import CARPARTS
from carparts.data import SegmentationDataset, class_index_mask, load_coco, split_indices
from carparts.errors import CarpartsError
from carparts.transforms import eval_transform
from tests.conftest import rect, write_coco

INDEX = CARPARTS.category_to_index()
DOOR, LIGHT = 10, 11  # COCO ids of front_left_door and front_left_light


def ann(category_id, polygon, **extra):
    return {"id": 1, "image_id": 1, "category_id": category_id, "segmentation": [polygon], "iscrowd": 0, **extra}


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_smaller_part_lies_on_top_whatever_the_annotation_order(order):
    anns = [ann(DOOR, rect(0, 0, 10, 10)), ann(LIGHT, rect(2, 2, 5, 5))]
    mask = class_index_mask([anns[i] for i in order], 12, 12, INDEX)
    assert mask[3, 3] == INDEX[LIGHT]
    assert mask[8, 8] == INDEX[DOOR]
    assert mask[11, 11] == 0


def test_rle_and_background_category():
    binary = np.zeros((8, 8), dtype=np.uint8, order="F")
    binary[2:4, 2:6] = 1
    rle = mask_utils.encode(binary)
    rle["counts"] = rle["counts"].decode()
    anns = [{"category_id": 19, "segmentation": rle}, {"category_id": 1, "segmentation": [rect(0, 0, 7, 7)]}]
    mask = class_index_mask(anns, 8, 8, INDEX)
    assert (mask == INDEX[19]).sum() == 8
    assert set(np.unique(mask)) == {0, INDEX[19]}


def test_load_coco_reads_images_and_masks(tiny_coco):
    coco = load_coco(tiny_coco)
    assert len(coco) == 6 and coco.taxonomy == CARPARTS
    image, mask = coco.read_image(0), coco.read_mask(0)
    assert image.shape == (48, 64, 3) and mask.shape == (48, 64)
    assert set(np.unique(mask)) == {0, INDEX[DOOR], INDEX[LIGHT]}
    assert load_coco(tiny_coco / "annotations.json").root == tiny_coco


def test_dataset_yields_normalised_tensor_and_long_mask(tiny_coco):
    coco = load_coco(tiny_coco)
    x, y = SegmentationDataset(coco, [0, 1], eval_transform(64))[1]
    assert x.shape == (3, 64, 64) and y.shape == (64, 64)
    assert y.dtype.is_floating_point is False and int(y.max()) == INDEX[LIGHT]


def test_split_is_deterministic_disjoint_and_sized():
    train, val = split_indices(400, 0.2, seed=0)
    assert len(val) == 80 and len(train) == 320 and not set(train) & set(val)
    assert (train, val) == split_indices(400, 0.2, seed=0)
    assert val != split_indices(400, 0.2, seed=1)[1]


def test_missing_annotation_file(tmp_path):
    with pytest.raises(CarpartsError, match="annotation file not found"):
        load_coco(tmp_path)


def test_malformed_json(tmp_path):
    (tmp_path / "annotations.json").write_text("{not json")
    with pytest.raises(CarpartsError, match="not valid JSON"):
        load_coco(tmp_path)


def test_not_a_coco_file(tmp_path):
    (tmp_path / "annotations.json").write_text(json.dumps({"images": []}))
    with pytest.raises(CarpartsError, match="not a COCO file"):
        load_coco(tmp_path)


def test_empty_annotations(tmp_path):
    write_coco(tmp_path, [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}], [])
    with pytest.raises(CarpartsError, match="holds no annotations"):
        load_coco(tmp_path)


def test_unknown_category_ids_are_listed_in_numeric_order(tmp_path):
    anns = [{**ann(k, rect(0, 0, 4, 4)), "id": k} for k in (100, 99, 3000)]
    write_coco(tmp_path, [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}], anns)
    with pytest.raises(CarpartsError, match=r"annotations.json: annotations use category ids 99, 100, 3000 that are"):
        load_coco(tmp_path)


@pytest.mark.parametrize(
    ("polygon", "problem"),
    [([1, 2, 3], "polygon [1, 2, 3] has 3 numbers; it needs x, y pairs, at least 3 points (6 numbers)"),
     ([0, 0, 4, 0, 4, 4, 0], "polygon [0, 0, 4, 0, 4, 4, 0] has 7 numbers; it needs x, y pairs, at least 3 points "
      "(6 numbers)"),
     ([0, 0, "4", 0, 4, 4], 'polygon [0, 0, "4", 0, 4, 4] is not a list of numbers')],
)  # fmt: skip
def test_a_broken_polygon_is_named_with_its_file_image_and_annotation(tmp_path, polygon, problem):
    images = [{"id": 7, "file_name": "a.jpg", "width": 8, "height": 8}]
    write_coco(tmp_path, images, [ann(DOOR, rect(0, 0, 4, 4), image_id=7), ann(LIGHT, polygon, image_id=7, id=42)])
    with pytest.raises(CarpartsError) as error:
        load_coco(tmp_path)
    assert str(error.value) == f"{tmp_path / 'annotations.json'}: annotation 42 of image 7 (a.jpg): {problem}"


def test_category_outside_a_given_taxonomy(tmp_path):
    cats = [{"id": 5, "name": "spoiler"}]
    write_coco(tmp_path, [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}], [ann(5, rect(0, 0, 4, 4))], cats)
    with pytest.raises(CarpartsError, match="not classes of the model"):
        load_coco(tmp_path, taxonomy=CARPARTS)


def test_missing_image_file_is_named_where_it_was_looked_for(tiny_coco):
    (tiny_coco / "JPEGImages" / "img3.jpg").unlink()
    with pytest.raises(CarpartsError) as error:
        load_coco(tiny_coco)
    assert str(error.value) == (
        f"{tiny_coco / 'JPEGImages' / 'img3.jpg'}: image listed in annotations.json not found "
        f"(nor at {tiny_coco / 'img3.jpg'})"
    )


def test_image_size_disagreeing_with_json_is_named(tiny_coco):
    coco = load_coco(tiny_coco)
    coco.images[0]["width"] = 10
    with pytest.raises(CarpartsError, match="img0.jpg: image is 64x48"):
        SegmentationDataset(coco, [0])[0]


def test_a_seed_fixes_the_transform_and_each_of_its_steps_draws_on_its_own(tiny_coco):
    import albumentations as A

    coco = load_coco(tiny_coco)
    dataset = SegmentationDataset(coco, [0], A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]))
    truth = torch.as_tensor(coco.read_mask(0), dtype=torch.long)
    views = {"none": truth, "h": truth.flip(1), "v": truth.flip(0), "hv": truth.flip(0, 1)}

    def flips(seed):
        mask = dataset[(0, seed)][1]
        return next(name for name, view in views.items() if torch.equal(mask, view))

    assert [flips(seed) for seed in range(8)] == [flips(seed) for seed in range(8)]
    # two steps fed by equal generators would flip together or not at all ("none", "hv"); one shared generator
    # lets each step draw its own chance
    assert {flips(seed) for seed in range(40)} == {"none", "h", "v", "hv"}


def test_paste_items_repeat_with_their_seed_backdrop_included(tiny_coco):
    from carparts.transforms import train_transform

    coco = load_coco(tiny_coco)
    dataset = SegmentationDataset(coco, [0, 1, 2], train_transform(32, coco.taxonomy.flip_permutation, "paste"))
    for seed in range(10):
        image, mask = dataset[(1, seed)]
        again_image, again_mask = dataset[(1, seed)]
        assert torch.equal(image, again_image) and torch.equal(mask, again_mask)
        assert int(mask.max()) < coco.taxonomy.num_classes
