import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from carparts.classes import CARPARTS
from carparts.errors import CarpartsError
from carparts.models import (
    ModelInfo,
    build_model,
    imagenet_classifier,
    load_model,
    resolve_model_path,
    save_model,
    timm_imagenet_state_dict,
)
from carparts.paths import SAMPLES
from carparts.predict import Predictor
from carparts.transforms import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import make_tiny_model

# ImageNet classes a car photo may rightly be called
CAR_CLASSES = {436, 468, 511, 609, 627, 656, 661, 717, 751, 817, 864}  # wagon, cab, convertible, jeep, ...


def test_lite0_imagenet_weights_map_onto_timm_and_recognise_a_car():
    model = imagenet_classifier("tf_efficientnet_lite0")
    image = Image.open(SAMPLES / "train1.jpg").convert("RGB").resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float()[None] / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        top = model(x).softmax(1)[0].topk(3)
    assert int(top.indices[0]) in CAR_CLASSES
    assert float(top.values[0]) > 0.3


def test_imagenet_encoder_is_loaded_into_the_segmentation_model():
    model = build_model("fpn", "tf_efficientnet_lite0", 19, encoder_weights="imagenet")
    reference = timm_imagenet_state_dict("tf_efficientnet_lite0")["conv_stem.weight"]
    assert torch.equal(model.encoder.model.conv_stem.weight, reference)


def test_encoder_weights_from_a_file(tmp_path):
    donor = build_model("unet", "resnet18", 5, encoder_weights="none")
    torch.save({"state_dict": donor.encoder.state_dict()}, tmp_path / "enc.pth")
    model = build_model("unet", "resnet18", 5, encoder_weights=str(tmp_path / "enc.pth"))
    assert torch.equal(model.encoder.conv1.weight, donor.encoder.conv1.weight)


def test_encoder_weights_that_do_not_fit(tmp_path):
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(CarpartsError, match="encoder weights do not fit"):
        build_model("unet", "resnet18", 5, encoder_weights=str(tmp_path / "bad.pth"))
    with pytest.raises(CarpartsError, match="weights file not found"):
        build_model("unet", "resnet18", 5, encoder_weights=str(tmp_path / "none.pth"))


def test_unreachable_hub_says_what_to_do(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CarpartsError, match="--encoder-weights PATH .* --encoder-weights none"):
        build_model("unet", "resnet34", 19, encoder_weights="imagenet")


@pytest.mark.parametrize("arch, encoder", [("unet", "nope"), ("nope", "resnet34")])
def test_unknown_arch_or_encoder(arch, encoder):
    with pytest.raises(CarpartsError, match="unknown"):
        build_model(arch, encoder, 19)


def test_save_load_round_trip_fp16(tmp_path):
    model = build_model("fpn", "tf_efficientnet_lite0", CARPARTS.num_classes).eval()
    info = ModelInfo(arch="fpn", encoder="tf_efficientnet_lite0", taxonomy=CARPARTS, input_size=64)
    save_model(model, info, tmp_path, fp16=True)
    loaded, loaded_info = load_model(tmp_path / "model.json")
    assert loaded_info.taxonomy == CARPARTS and loaded_info.input_size == 64
    assert loaded_info.model_id == info.model_id and len(info.weights_sha256) == 64
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=0.05)
    assert next(loaded.parameters()).dtype == torch.float32


def test_bad_model_paths(tmp_path):
    with pytest.raises(CarpartsError, match="model not found"):
        resolve_model_path(tmp_path / "missing")
    with pytest.raises(CarpartsError, match="no model.json"):
        resolve_model_path(tmp_path)
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(CarpartsError, match="malformed model description"):
        load_model(tmp_path)


@pytest.mark.parametrize("key, value", [("crop", "box"), ("resize", "squash")])
def test_model_json_with_an_unknown_policy_is_refused_naming_the_file(tmp_path, key, value):
    # an unknown crop or resize in a hand-edited model.json must not silently run as another policy
    model = build_model("fpn", "tf_efficientnet_lite0", CARPARTS.num_classes).eval()
    info = ModelInfo(arch="fpn", encoder="tf_efficientnet_lite0", taxonomy=CARPARTS, input_size=64)
    save_model(model, info, tmp_path)
    data = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**data, key: value}))
    expected = rf"model\.json: malformed model description \({key} '{value}' is not one of"
    with pytest.raises(CarpartsError, match=expected):
        load_model(tmp_path)


def test_bundled_default_model_is_the_one_readme_describes():
    # README's figures belong to these weights: a new bundle must update this test and README together
    model, info = load_model(None)
    weights = resolve_model_path(None) / "model.safetensors"
    assert info.taxonomy == CARPARTS
    assert info.model_id == "clutter-fast-fpn-tf_efficientnet_lite1-320@0fbb0f27"
    assert (info.input_size, info.resize, info.temperature) == (320, "stretch", 1.4722)
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == info.weights_sha256
    assert info.recipe["val_fraction"] == 0 and "val_native" not in info.metrics  # trained on all 400 images
    assert round(info.metrics["photos_native"]["miou_parts"], 4) == 0.7442  # README's real-photos part-mIoU
    assert weights.stat().st_size < 25e6


def test_tiny_model_fixture_paints_several_parts(tiny_model, tmp_path):
    # serve and predict tests check the parts they get back: with no parts those checks would check nothing
    predictor = Predictor.from_path(tiny_model)
    photos = [
        np.full((32, 48, 3), 90, np.uint8),  # test_serve's upload
        np.full((30, 50, 3), 90, np.uint8),  # test_predict's
        np.full((30, 40, 3), (120, 30, 30), np.uint8),  # test_cli's
        np.full((32, 48, 3), (200, 40, 40), np.uint8),
        np.zeros((64, 64, 3), np.uint8),
    ]
    for photo in photos:
        parts = set(np.unique(predictor(photo)).tolist()) - {0}
        assert len(parts) >= 3, f"{photo.shape} {photo[0, 0]}: parts {sorted(parts)}"
    again = make_tiny_model(tmp_path / "again")  # seeded: built twice, the same weights
    assert load_model(again)[1].weights_sha256 == load_model(tiny_model)[1].weights_sha256
