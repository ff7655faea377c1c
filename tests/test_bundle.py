import hashlib
import json

import pytest

from carparts.errors import CarpartsError
from carparts.evaluate import evaluate
from carparts.models import load_model
from carparts.tools.bundle import bundle
from tests.conftest import make_tiny_model


def test_bundle_measures_the_fp16_copy_on_val_and_on_the_photos(tiny_model, tiny_coco, tmp_path):
    description = json.loads((tiny_model / "model.json").read_text())
    description["recipe"] = {"data": str(tiny_coco), "val_fraction": 0.34, "split_seed": 0}
    (tiny_model / "model.json").write_text(json.dumps(description))
    card = tmp_path / "card.md"
    target = bundle(tiny_model, target=tmp_path / "bundled", card=card, photos=tiny_coco)

    _, info = load_model(target)
    val = evaluate(target, tiny_coco, split="val", progress=False)
    photos = evaluate(target, tiny_coco, split="all", progress=False)
    assert info.metrics["val_native"]["images"] == 2 and info.metrics["photos_native"]["images"] == 6
    assert info.metrics["photos_native"]["miou_all"] == photos["miou_all"]
    text = card.read_text()
    assert f"| mIoU over all classes | {val['miou_all']:.4f} | {photos['miou_all']:.4f} |" in text
    first = photos["confused_pairs"][0]
    source = first["images"][0]
    assert f"| {first['truth']} | {first['predicted']} | {first['share']:.1%} | {source['file_name']} " in text
    boundary = photos["boundary"]
    assert f"On the real photos, boundary errors: {boundary['wrong_near_boundary']:.0%} of the wrong pixels" in text
    assert info.temperature == info.metrics["calibration"]["temperature"]  # calibrated on the val split
    ece = photos["calibration"]
    assert f"at temperature 1 | {val['calibration']['ece_before']:.4f} | {ece['ece_before']:.4f} |" in text
    assert "no TTA" in text and "mirrored view" not in text


def test_the_accurate_slot_is_calibrated_and_measured_with_its_mirrored_view(tiny_model, tiny_coco, tmp_path):
    description = json.loads((tiny_model / "model.json").read_text())
    description["recipe"] = {"data": str(tiny_coco), "val_fraction": 0.34, "split_seed": 0}
    (tiny_model / "model.json").write_text(json.dumps(description))
    card = tmp_path / "card.md"
    target = bundle(tiny_model, target=tmp_path / "bundled", card=card, photos=tiny_coco, tta=True)

    _, info = load_model(target)
    assert info.metrics["calibration"]["tta"] is True
    photos = evaluate(target, tiny_coco, split="all", tta=True, progress=False)
    assert info.metrics["photos_native"]["miou_all"] == photos["miou_all"]
    text = card.read_text()
    assert f"--data {tiny_coco} --tta`" in text and "fitted on the validation split of the fp16 copy at" in text
    val = info.metrics["val_native"]["miou_all"]
    assert f"| mIoU over all classes | {val:.4f} | {photos['miou_all']:.4f} |" in text


def test_a_run_trained_on_every_image_borrows_its_twins_temperature(tiny_model, tiny_coco, tmp_path):
    description = json.loads((tiny_model / "model.json").read_text())
    description["recipe"] = {
        "data": str(tiny_coco), "val_fraction": 0.0, "epochs": 30, "encoder": "lite2", "augment": "clutter",
        "blur": 0.3, "repeat_threshold": 0.5, "distill_weight": 0.5, "presence_weight": 0.4, "loss": "ce_dice",
        "class_weight_power": 0.5, "viewpoint_weight": 0.3,
        "sources": {"init_from": "start@0001", "distill_from": "teacher@0002"},
    }  # fmt: skip
    (tiny_model / "model.json").write_text(json.dumps(description))
    with pytest.raises(CarpartsError, match="trained on every image, so it has no val split to fit a temperature"):
        bundle(tiny_model, target=tmp_path / "b0", card=None, photos=tiny_coco)
    twin = make_tiny_model(tmp_path / "twin")
    with pytest.raises(CarpartsError, match="twin: not calibrated"):
        bundle(tiny_model, target=tmp_path / "b1", card=None, photos=tiny_coco, temperature_from=twin)
    twin_description = json.loads((twin / "model.json").read_text())
    twin_description["recipe"] |= {"encoder": "lite1", "img_size": 448, "augment": "framing"}
    (twin / "model.json").write_text(json.dumps({**twin_description, "temperature": 1.25}))
    card = tmp_path / "card.md"
    target = bundle(tiny_model, target=tmp_path / "b2", card=card, photos=tiny_coco, temperature_from=twin)
    _, info = load_model(target)
    assert info.temperature == 1.25 and info.metrics["calibration"]["from"].startswith("tiny-")
    assert "val_native" not in info.metrics and info.metrics["photos_native"]["images"] == 6
    text = card.read_text()
    assert "No validation split: trained on all" in text and "| mIoU over the parts | trained on |" in text
    # the twin is named with what differs in it, and the card says how it was bundled
    differs = (
        "encoder lite1, img_size 448, augment framing, blur 0.0, repeat_threshold 0.0, presence_weight 0.0, "
        "viewpoint_weight 0.0, class_weight_power 0.0"
    )
    assert f"its split held out but with {differs}, fitted on" in text
    assert "loss ce_dice (cross-entropy classes weighted by their pixel share to the power -0.5)" in text
    augment = "`clutter` with camera blur on 30% of the training photos, photos of rare parts repeated"
    assert f"augmentation {augment} (repeat-factor sampling, threshold 0.5); fine-tuned from" in text
    assert f"written by `python -m carparts.tools.bundle {tiny_model} --temperature-from {twin}`" in text
    heads = "with a parts-present head in training (weight 0.4); with a viewpoint head in training (weight 0.3)."
    assert f"; distilled from `teacher@0002` (weight 0.5); {heads}" in text


def test_rebundling_sets_the_crop_policy_and_keeps_where_the_temperature_was_fitted(tiny_model, tiny_coco, tmp_path):
    description = json.loads((tiny_model / "model.json").read_text())
    description["recipe"] = {"data": str(tiny_coco), "val_fraction": 0.0, "epochs": 30, "encoder": "lite2"}
    description["temperature"] = 1.25
    description["metrics"] = {"calibration": {"temperature": 1.25, "from": "split-twin@1234", "images": 80}}
    (tiny_model / "model.json").write_text(json.dumps(description))
    target = bundle(tiny_model, target=tmp_path / "b", card=None, photos=tiny_coco, temperature_from=tiny_model,
                    crop="car")  # fmt: skip
    _, info = load_model(target)
    assert info.crop == "car" and info.temperature == 1.25
    assert info.metrics["calibration"] == {"temperature": 1.25, "from": "split-twin@1234", "images": 80}
    assert (
        "find the car(s) in a first pass at 160 px" in json.loads((target / "model.json").read_text())["input_policy"]
    )
    # the model bundled in a slot may lend its temperature to the next one bundled there (it is read first)
    other = make_tiny_model(tmp_path / "other")  # not calibrated: its temperature can only come from the slot
    other_description = json.loads((other / "model.json").read_text())
    other_description["recipe"] = {"data": str(tiny_coco), "val_fraction": 0.0}
    (other / "model.json").write_text(json.dumps(other_description))
    again = bundle(other, target=target, card=None, photos=tiny_coco, temperature_from=target)
    assert load_model(again)[1].metrics["calibration"]["from"] == "split-twin@1234"
    with pytest.raises(CarpartsError, match="unknown crop 'box'"):
        bundle(tiny_model, target=tmp_path / "c", card=None, photos=tiny_coco, temperature_from=tiny_model, crop="box")


def test_the_bundled_models_load_and_stay_within_60_mb():
    from carparts.paths import ASSETS
    from carparts.tools.bundle import SLOTS

    for target, card in SLOTS.values():
        _, info = load_model(target)
        assert hashlib.sha256((target / "model.safetensors").read_bytes()).hexdigest() == info.weights_sha256
        assert info.temperature is not None and info.metrics["photos_native"]["images"] == 50
        assert info.model_id in card.read_text()  # the model card's figures are this model's
    assert sum(f.stat().st_size for f in ASSETS.rglob("*.safetensors")) <= 60e6
