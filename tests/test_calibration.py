import json
import warnings

import numpy as np
import pytest
import torch

from carparts.calibration import calibrate, fit_temperature
from carparts.cli import main
from carparts.evaluate import evaluate
from carparts.loading import UncalibratedModel, load_predictor
from carparts.metrics import ReliabilityBins
from carparts.models import load_model
from carparts.predict import Predictor, top_probability


def test_reliability_bins_give_the_expected_calibration_error():
    bins = ReliabilityBins(bins=10)
    # 4 pixels at 0.95 of which 3 right (gap 0.2), 4 pixels at 0.55 of which 2 right (gap 0.05)
    bins.update(np.array([0.95] * 4 + [0.55] * 4), np.array([1, 1, 1, 0, 1, 1, 0, 0], dtype=bool))
    assert bins.ece() == pytest.approx((4 * 0.2 + 4 * 0.05) / 8)
    record = bins.to_dict()
    assert record["count"][9] == 4 and record["count"][5] == 4 and record["pixels"] == 8
    assert record["accuracy"][9] == pytest.approx(0.75) and record["confidence"][5] == pytest.approx(0.55)
    assert record["accuracy"][0] is None
    bins.update(np.array([1.0]), np.array([True]))  # a confidence of exactly 1 falls in the top bin
    assert bins.count[9] == 5
    assert ReliabilityBins().ece() is None


def test_fit_temperature_recovers_the_temperature_that_made_the_labels():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(20000, 5, generator=generator) * 4
    labels = torch.multinomial((scores / 2.5).softmax(1), 1, generator=generator)[:, 0]
    assert fit_temperature(scores, labels) == pytest.approx(2.5, rel=0.08)


def test_top_probability_falls_as_the_temperature_rises():
    scores = torch.tensor([[[4.0, 0.0]], [[0.0, 0.0]]])  # 2 classes, a 1 x 2 grid
    cold, warm = top_probability(scores, 1.0, 1, 2), top_probability(scores, 4.0, 1, 2)
    assert cold[0, 0] == pytest.approx(1 / (1 + np.exp(-4)), rel=1e-5) and cold[0, 1] == pytest.approx(0.5)
    assert warm[0, 0] == pytest.approx(1 / (1 + np.exp(-1)), rel=1e-5)
    assert top_probability(scores, 1.0, 3, 4).shape == (3, 4)


def test_calibrate_stores_the_temperature_and_predictions_use_it(tiny_model, tiny_coco):
    record = calibrate(tiny_model, tiny_coco, split="all", progress=False)
    assert record["images"] == 6 and record["pixels"] == 6 * 64 * 48  # every pixel of the 64 x 48 grid
    assert record["nll_after"] <= record["nll_before"]
    description = json.loads((tiny_model / "model.json").read_text())
    assert description["temperature"] == record["temperature"] != 1.0
    assert description["metrics"]["calibration"]["split"] == "all"
    _, info = load_model(tiny_model)
    assert info.temperature == record["temperature"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a calibrated model loads without the note
        predictor = load_predictor(tiny_model)
    summary = evaluate(None, tiny_coco, predictor=predictor, progress=False)
    calibration = summary["calibration"]
    assert calibration["stored"] and calibration["temperature"] == record["temperature"]
    assert calibration["ece_after"] == calibration["reliability_after"]["ece"] is not None
    assert calibration["reliability_before"]["pixels"] == 6 * 64 * 48


def test_an_uncalibrated_model_is_read_at_temperature_one_and_says_so_once(tiny_model, capsys):
    with pytest.warns(UncalibratedModel, match="no stored temperature"):
        predictor = load_predictor(tiny_model)
    assert predictor.temperature == 1.0
    assert main(["calibrate", "--model", str(tiny_model / "nope")]) == 2
    assert "model not found" in capsys.readouterr().err


def test_the_cli_note_is_one_line(tiny_model, tmp_path, capsys):
    photo = tmp_path / "photos"
    photo.mkdir()
    from PIL import Image

    Image.fromarray(np.full((40, 60, 3), 90, dtype=np.uint8)).save(photo / "car.jpg")
    assert main(["predict", str(photo), "--model", str(tiny_model), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "no stored temperature" in line]
    assert len(notes) == 1 and notes[0].startswith("note: tiny-fpn-")


def test_confidence_and_uncertainty_reach_the_outputs(tiny_model, tmp_path):
    from PIL import Image

    photo = tmp_path / "car.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "out"
    assert main(["predict", str(photo), "--model", str(tiny_model), "--out", str(out), "--uncertainty", "--quiet"]) == 0
    record = json.loads((out / "car.json").read_text())
    assert record["parts"] and all(0 < part["confidence"] <= 1 for part in record["parts"])
    heat = Image.open(out / "car_uncertainty.png")
    assert heat.size == (60, 40) and heat.mode == "RGB"
    predictor = Predictor.from_path(tiny_model)
    mask, confidence = predictor.predict(np.asarray(Image.open(photo).convert("RGB")))
    parts = mask > 0
    assert record["confidence"] == pytest.approx(float(confidence[parts].mean()), abs=1e-4)
    first = record["parts"][0]
    assert first["confidence"] == pytest.approx(float(confidence[mask == first["class_id"]].mean()), abs=1e-4)


def test_the_temperature_travels_in_the_onnx_metadata(tiny_model):
    from carparts.backend_onnx import info_from_metadata, onnx_metadata

    _, info = load_model(tiny_model)
    info.temperature = 1.7
    restored = info_from_metadata(onnx_metadata(info), tiny_model / "model.onnx")
    assert restored.temperature == 1.7 and restored.model_id == info.model_id


def test_calibrate_fits_the_configuration_the_model_runs_in(tiny_model, tiny_coco, capsys):
    plain = calibrate(tiny_model, tiny_coco, split="all", progress=False)
    assert plain["tta"] is False and plain["input_size"] == load_model(tiny_model)[1].input_size
    assert main(["calibrate", "--model", str(tiny_model), "--data", str(tiny_coco), "--split", "all", "--tta",
                 "--input-size", "96", "--quiet"]) == 0  # fmt: skip
    assert "at 96 px with the mirrored view" in capsys.readouterr().out
    record = json.loads((tiny_model / "model.json").read_text())["metrics"]["calibration"]
    assert record["tta"] is True and record["input_size"] == 96
    # the mirrored view averaged in changes the scores, so the temperature that fits them
    assert record["temperature"] != plain["temperature"] and record["nll_after"] <= record["nll_before"]
    assert load_model(tiny_model)[1].input_size != 96  # the model's own size is left as it was


def test_calibrate_takes_one_input_size(tiny_model, capsys):
    with pytest.raises(SystemExit):
        main(["calibrate", "--model", str(tiny_model), "--input-size", "320,416"])
    assert "expected one pixel size like 512, got '320,416'" in capsys.readouterr().err
