import json

import numpy as np
import pytest

from carparts.classes import CARPARTS
from carparts.data import load_coco
from carparts.errors import CarpartsError
from carparts.tools.relabel import main, write_fixed_folder
from tests.conftest import make_tiny_coco, rect

HEADER = "file_name,annotation_id,polygon,label,new_label,note\n"


def test_fixes_rename_an_annotation_and_split_off_a_polygon(tmp_path):
    data = make_tiny_coco(tmp_path / "data", n=2)
    coco = json.loads((data / "annotations.json").read_text())
    coco["annotations"][3]["segmentation"].append(rect(50, 2, 60, 8))  # img1's door: a second, stray polygon
    (data / "annotations.json").write_text(json.dumps(coco))
    fixes = tmp_path / "fixes.csv"
    fixes.write_text(
        HEADER + "img0.jpg,1,,front_left_light,front_right_light,side slip\n"
        "img1.jpg,4,1,front_left_door,hood,a hood drawn as part of the door\n"
    )
    assert write_fixed_folder(data, fixes, tmp_path / "fixed") == 2

    fixed, original = load_coco(tmp_path / "fixed"), load_coco(data)
    assert len(fixed) == len(original) and fixed.image_path(0).resolve() == original.image_path(0).resolve()
    idx = {name: i for i, name in enumerate(CARPARTS.names)}
    light = original.read_mask(0) == idx["front_left_light"]
    assert (fixed.read_mask(0)[light] == idx["front_right_light"]).all()
    hood = fixed.read_mask(1) == idx["hood"]
    assert hood.sum() == 10 * 6 and hood[2:8, 50:60].all()
    assert (fixed.read_mask(1)[10:40, 2:40] != idx["hood"]).all()  # the door's own polygon stays a door
    assert json.loads((data / "annotations.json").read_text()) == coco  # the original is never touched

    # a fix applied twice, or to the wrong id, is a one-line error naming its line, and nothing is written
    again = tmp_path / "again.csv"
    again.write_text(HEADER + "img0.jpg,1,,front_left_light,front_right_light,\n")
    with pytest.raises(CarpartsError, match=r"again.csv line 2: annotation 1 is 'front_right_light', not "):
        write_fixed_folder(tmp_path / "fixed", again, tmp_path / "twice")
    assert not (tmp_path / "twice").exists()
    fixes.write_text(HEADER + "img1.jpg,1,,front_left_light,front_right_light,\n")
    assert main([str(data), "--fixes", str(fixes), "--out", str(tmp_path / "other")]) == 1
    fixes.write_text(HEADER + "img0.jpg,2,0,front_left_door,hood,\n")
    with pytest.raises(CarpartsError, match="has 1 polygon"):
        write_fixed_folder(data, fixes, tmp_path / "other")
    assert np.array_equal(load_coco(data).read_mask(0), original.read_mask(0))
