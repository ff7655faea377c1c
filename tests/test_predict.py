import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from carparts.classes import CARPARTS, Taxonomy
from carparts.errors import CarpartsError
from carparts.loading import load_predictor
from carparts.metrics import ConfusionMatrix
from carparts.models import ModelInfo, load_model
from carparts.predict import (
    Ensemble,
    Predictor,
    car_box,
    predict_paths,
    preprocess,
    unique_stems,
    upsample_argmax,
)

LEFT, RIGHT = CARPARTS.names.index("back_left_door"), CARPARTS.names.index("back_right_door")


class LeftHalfModel(torch.nn.Module):
    """Says 'back_left_door' (confidently) on the left half of whatever it sees, weak background elsewhere."""

    def forward(self, x):
        n, _, h, w = x.shape
        logits = torch.zeros((n, CARPARTS.num_classes, h, w))
        logits[:, 0] = 5.0
        logits[:, LEFT, :, : w // 2] = 10.0
        return logits


class ConstantModel(torch.nn.Module):
    """The same class scores at every pixel."""

    def __init__(self, scores):
        super().__init__()
        self.scores = torch.tensor(scores, dtype=torch.float32)

    def forward(self, x):
        n, _, h, w = x.shape
        return self.scores.view(1, -1, 1, 1).expand(n, -1, h, w).clone()


def scores(**by_name):
    out = [0.0] * CARPARTS.num_classes
    for name, value in by_name.items():
        out[CARPARTS.names.index(name)] = value
    return out


def info(size=64):
    return ModelInfo(arch="fpn", encoder="tf_efficientnet_lite0", taxonomy=CARPARTS, input_size=size)


def test_preprocess_letterboxes_to_the_stride():
    x, (h, w) = preprocess(np.zeros((100, 50, 3), dtype=np.uint8), info(64))
    assert (h, w) == (64, 32) and tuple(x.shape) == (1, 3, 64, 32)
    x, (h, w) = preprocess(np.zeros((30, 100, 3), dtype=np.uint8), info(64))
    assert (h, w) == (19, 64) and tuple(x.shape) == (1, 3, 32, 64)
    assert torch.allclose(x[0, :, 19:], x[0, :, :13])  # black padding == a black photo after normalisation


def test_upsample_argmax_tiles_and_whole_match_one_interpolation():
    logits = torch.randn(19, 13, 17)
    expected = F.interpolate(logits[None], size=(101, 67), mode="bilinear", align_corners=False)[0].argmax(0).numpy()
    tiled = upsample_argmax(logits, 101, 67, max_elements=19 * 67 * 3)  # forces the row-tile path
    assert (tiled == expected).all()
    whole = upsample_argmax(logits, 101, 67)  # the OpenCV path
    assert (whole == expected).mean() > 0.999


@pytest.mark.parametrize("shape", [(37, 91), (200, 40), (64, 64)])
def test_predictor_returns_native_size_mask(tiny_model, shape):
    predictor = Predictor.from_path(tiny_model)
    mask = predictor(np.zeros((*shape, 3), dtype=np.uint8))
    assert mask.shape == shape and mask.dtype == np.uint8 and int(mask.max()) < CARPARTS.num_classes


def test_tta_unflips_and_swaps_left_and_right():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    plain = Predictor(LeftHalfModel(), info())(image)
    assert (plain[:, :32] == LEFT).all() and (plain[:, 32:] == 0).all()
    tta = Predictor(LeftHalfModel(), info(), tta=True)(image)
    # the mirrored view puts a left door on the photo's right half, which is the car's right door
    assert (tta[:, :32] == LEFT).all() and (tta[:, 32:] == RIGHT).all()


def test_unique_stems():
    from pathlib import Path

    assert unique_stems([Path("a/x.jpg"), Path("b/x.png"), Path("y.jpg")]) == ["x", "x_2", "y"]


def test_predict_paths_writes_outputs_and_skips_bad_files(tiny_model, tmp_path):
    good = tmp_path / "in" / "car.png"
    good.parent.mkdir()
    Image.new("RGB", (50, 30), (90, 90, 90)).save(good)
    (tmp_path / "in" / "fake.jpg").write_text("not an image")
    out = tmp_path / "out"
    errors = []
    result = predict_paths([str(tmp_path / "in")], Predictor.from_path(tiny_model), out, False, errors.append)
    assert sorted(p.name for p in result.written) == ["car.json", "car.png", "car_overlay.jpg"]
    assert len(result.failed) == 1 and "fake.jpg: not an image" in errors[0]
    record = json.loads((out / "car.json").read_text())
    _, model_info = load_model(tiny_model)
    assert (record["width"], record["height"], record["model"]) == (50, 30, model_info.model_id)
    mask = np.asarray(Image.open(out / "car.png"))
    assert mask.shape == (30, 50)
    assert sum(p["pixels"] for p in record["parts"]) == int((mask > 0).sum())


def test_ensemble_averages_probabilities_not_logits():
    # one member is fairly sure of the hood (p 0.75), the other weakly prefers the trunk (p 0.30) and rules
    # the hood out; averaged logits would pick the trunk (1 vs -3), averaged probabilities pick the hood
    sure, mild = scores(hood=4.0), scores(hood=-10.0, trunk=2.0)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    ensemble = Ensemble([Predictor(ConstantModel(sure), info()), Predictor(ConstantModel(mild), info())])
    expected = (torch.tensor(sure).softmax(0) + torch.tensor(mild).softmax(0)).argmax()
    assert int(expected) == CARPARTS.names.index("hood")
    assert (ensemble(image) == int(expected)).all()
    assert ensemble.info.model_id.startswith("ensemble2-fpn-tf_efficientnet_lite0-")  # distinct parts once


def test_ensemble_members_at_different_sizes_meet_on_the_largest_grid():
    # the small member sees a 16x32 photo and calls its left half a door; the large one, at 32x64, says hood
    small = Predictor(LeftHalfModel(), info(32))
    large = Predictor(ConstantModel(scores(hood=6.0)), info(64))
    ensemble = Ensemble([small, large])
    image = np.zeros((64, 128, 3), dtype=np.uint8)
    assert tuple(ensemble.logits(image).shape) == (CARPARTS.num_classes, 32, 64)
    mask = ensemble(image)
    assert mask.shape == (64, 128)
    assert (mask[:, :54] == LEFT).all() and (mask[:, 74:] == CARPARTS.names.index("hood")).all()
    assert ensemble.info.input_size == 64


def test_ensemble_applies_tta_per_member():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    members = [Predictor(LeftHalfModel(), info(), tta=True), Predictor(LeftHalfModel(), info(), tta=True)]
    mask = Ensemble(members)(image)
    assert (mask[:, :32] == LEFT).all() and (mask[:, 32:] == RIGHT).all()


def test_ensemble_refuses_one_model_and_mixed_classes():
    with pytest.raises(CarpartsError, match="at least two"):
        Ensemble([Predictor(LeftHalfModel(), info())])
    other = Taxonomy.from_dict({**CARPARTS.to_dict(), "names": ["background", *CARPARTS.names[1:-1], "spoiler"]})
    odd = ModelInfo(arch="fpn", encoder="tf_efficientnet_lite0", taxonomy=other, input_size=64)
    with pytest.raises(CarpartsError, match="different classes"):
        Ensemble([Predictor(LeftHalfModel(), info()), Predictor(LeftHalfModel(), odd)])


def test_predict_never_reads_back_its_own_outputs(tiny_model, tmp_path):
    photos = tmp_path / "imgs"
    photos.mkdir()
    Image.new("RGB", (50, 30), (90, 90, 90)).save(photos / "car.jpg")
    out = photos / "pred"
    predictor = Predictor.from_path(tiny_model)
    first = predict_paths([str(photos)], predictor, out, False)
    again = predict_paths([str(photos)], predictor, out, False)  # pred/car.png, pred/car_overlay.jpg are no photos
    assert [p.name for p in again.written] == [p.name for p in first.written] == [
        "car.png", "car_overlay.jpg", "car.json"
    ]  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["car.json", "car.png", "car_overlay.jpg"]
    assert json.loads((out / "car.json").read_text())["image"] == str(photos / "car.jpg")


def test_predict_refuses_an_output_folder_that_would_overwrite_a_photo(tiny_model, tmp_path):
    photos = tmp_path / "imgs"
    photos.mkdir()
    Image.new("RGB", (50, 30), (90, 90, 90)).save(photos / "photo.png")
    original = (photos / "photo.png").read_bytes()
    predictor = Predictor.from_path(tiny_model)
    with pytest.raises(CarpartsError, match="imgs: this source folder is the output folder"):
        predict_paths([str(photos)], predictor, photos, False)
    with pytest.raises(CarpartsError, match="photo.png: the outputs of .*photo.png would overwrite this photo"):
        predict_paths([str(photos / "photo.png")], predictor, photos, False)
    with pytest.raises(CarpartsError, match="no images found"):  # a glob's matches in the output folder are left out
        predict_paths([str(photos / "*.png")], predictor, tmp_path / "imgs" / ".", False)
    assert (photos / "photo.png").read_bytes() == original
    assert sorted(p.name for p in photos.iterdir()) == ["photo.png"]


class BrightIsHoodModel(torch.nn.Module):
    """Calls every bright pixel hood and every dark one background, and keeps each batch it sees."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x)
        bright = (x.mean(1) > 0).float()
        logits = torch.zeros((x.shape[0], CARPARTS.num_classes, *x.shape[2:]))
        logits[:, 0], logits[:, CARPARTS.names.index("hood")] = 10 * (1 - bright), 10 * bright
        return logits


def test_car_box_widens_the_parts_box_by_the_margin_and_clips_it():
    grid = torch.zeros((3, 10, 20))
    grid[0] = 1.0
    grid[1, 2:5, 5:10] = 2.0  # rows 2-4, columns 5-9 of a grid that covers a 100 x 200 photo
    assert car_box(grid, 100, 200, margin=0.2) == (14, 56, 40, 110)
    assert car_box(grid, 100, 200, margin=2.0) == (0, 100, 0, 200)
    assert car_box(torch.zeros((3, 10, 20)).index_fill_(0, torch.tensor([0]), 1.0), 100, 200) is None


def test_crop_car_segments_the_box_around_the_car_in_a_second_pass():
    image = np.zeros((120, 240, 3), dtype=np.uint8)
    image[40:80, 100:180] = 255  # the "car": a third of the height, a third of the width
    network = BrightIsHoodModel()
    cropping = Predictor(network, dataclasses.replace(info(64), resize="stretch", crop="car"))
    mask = cropping(image)
    finder, inner = network.seen
    assert finder.shape[-2:] == (160, 160) and inner.shape[-2:] == (64, 64)
    share = [float((view.mean(1) > 0).float().mean()) for view in (finder, inner)]
    assert share[0] < 0.15 and share[1] > 0.45  # the second pass sees the car large, not the whole photo
    truth = (image[..., 0] > 0).astype(np.uint8) * CARPARTS.names.index("hood")
    one_pass = Predictor(BrightIsHoodModel(), dataclasses.replace(info(64), resize="stretch"))(image)
    cm_crop, cm_whole = ConfusionMatrix(CARPARTS.num_classes), ConfusionMatrix(CARPARTS.num_classes)
    cm_crop.update(truth, mask)
    cm_whole.update(truth, one_pass)
    hood = CARPARTS.names.index("hood")
    assert cm_crop.iou()[hood] > 0.9 and cm_crop.iou()[hood] > cm_whole.iou()[hood]  # finer borders
    assert cropping.network_runs == 2

    network.seen.clear()
    whole = load_predictor(None, input_size=64, crop="none")  # the override turns the bundled model's policy off
    assert whole.info.crop == "none" and whole.network_runs == 1
    with pytest.raises(CarpartsError, match="unknown crop 'box'"):
        load_predictor(None, crop="box")


def test_an_ensemble_of_one_model_at_several_sizes_runs_the_finder_pass_once():
    image = np.zeros((120, 240, 3), dtype=np.uint8)
    image[40:80, 100:180] = 255
    network = BrightIsHoodModel()
    members = [Predictor(network, dataclasses.replace(info(size), resize="stretch", crop="car")) for size in (64, 96)]
    separately = [member.logits(image).log_softmax(0) for member in members]
    network.seen.clear()
    ensemble = Ensemble(members)
    together = ensemble.logits(image)
    assert [view.shape[-1] for view in network.seen] == [160, 64, 96]  # one finder pass, then each member's box
    assert ensemble.network_runs == 3
    grid = together.shape[1:]
    assert grid == separately[1].shape[1:]  # the finer grid: the member at 96
    resized = [F.interpolate(o[None], size=grid, mode="bilinear")[0] if o.shape[1:] != grid else o for o in separately]
    assert torch.allclose(together, torch.logsumexp(torch.stack(resized), dim=0))  # as if each ran its own finder
    other = Predictor(BrightIsHoodModel(), dataclasses.replace(info(64), resize="stretch", crop="car"))
    other.info.weights_sha256 = "another model"
    assert Ensemble([*members, other]).network_runs == 5  # another model runs its own finder pass


def test_crop_car_without_any_part_found_segments_the_whole_photo():
    network = BrightIsHoodModel()
    cropping = Predictor(network, dataclasses.replace(info(64), crop="car"))
    assert (cropping(np.zeros((50, 70, 3), dtype=np.uint8)) == 0).all()
    assert [view.shape[-2:] for view in network.seen] == [(128, 160), (64, 64)]  # letterboxed: finder, then whole
