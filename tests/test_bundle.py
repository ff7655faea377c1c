import json

from carparts.evaluate import evaluate
from carparts.models import load_model
from carparts.tools.bundle import bundle


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
    assert "| truth | predicted | share |" in text
    assert info.temperature == info.metrics["calibration"]["temperature"]  # calibrated on the val split
    ece = photos["calibration"]
    assert f"at temperature 1 | {val['calibration']['ece_before']:.4f} | {ece['ece_before']:.4f} |" in text
