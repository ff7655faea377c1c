"""End to end on real photos: train briefly, evaluate at native size, predict. Slow (about a minute)."""

import json

import numpy as np
import pytest
from PIL import Image

from carparts.cli import main
from tests.conftest import SHARED_DATA

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED_DATA / "annotations.json").is_file(), reason=f"{SHARED_DATA} not present"),
]


def test_train_evaluate_predict_on_real_images(tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["train", "--data", str(SHARED_DATA), "--preset", "fast", "--epochs", "1", "--img-size", "128"]
    args += ["--batch-size", "4", "--limit-images", "10", "--workers", "0", "--out", str(runs), "--name", "e2e"]
    args += ["--quiet"]
    assert main(args) == 0
    run = runs / "e2e"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"][0]["epoch"] == 1 and metrics["epochs"][0]["train_loss"] > 0

    assert main(["evaluate", "--data", str(SHARED_DATA), "--model", str(run), "--split", "val",
                 "--out", str(tmp_path / "eval"), "--quiet"]) == 0  # fmt: skip
    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert summary["images"] == 2
    assert sum(map(sum, summary["confusion_matrix"])) == 2 * 512 * 512
    assert "mIoU over the parts" in capsys.readouterr().out

    photo = SHARED_DATA / "JPEGImages" / "train1.jpg"
    wide = tmp_path / "wide.png"
    Image.open(photo).resize((700, 300)).save(wide)
    out = tmp_path / "pred"
    assert main(["predict", str(photo), str(wide), "--model", str(run), "--out", str(out), "--tta", "--quiet"]) == 0
    assert np.asarray(Image.open(out / "wide.png")).shape == (300, 700)
    record = json.loads((out / "train1.json").read_text())
    assert (record["width"], record["height"]) == (512, 512)
    assert all(1 <= p["class_id"] <= 18 for p in record["parts"])
