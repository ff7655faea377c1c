"""The corruption benchmark: the package's corruptions, the mPC/rPC arithmetic, resuming, bad input, the CLI flag."""

from __future__ import annotations

import json

import numpy as np
import pytest

from carparts.cli import main
from carparts.errors import CarpartsError
from carparts.loading import load_predictor
from carparts.robustness import (
    CORRUPTIONS,
    PROGRESS_FILE,
    corrupt,
    fit_longest_side,
    imagecorruptions,
    parse_corruptions,
    parse_severities,
    score_corruptions,
)


def test_the_15_corruptions_are_the_packages_benchmark_set():
    assert list(CORRUPTIONS) == imagecorruptions().get_corruption_names("common")


def test_every_corruption_runs_at_every_severity_and_repeats_for_the_same_photo():
    photo = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    for corruption in CORRUPTIONS:
        for severity in (1, 5):
            out = corrupt(photo, corruption, severity, "a.jpg")
            assert out.shape == photo.shape and out.dtype == np.uint8, corruption
            assert not np.array_equal(out, photo), corruption
            assert np.array_equal(out, corrupt(photo, corruption, severity, "a.jpg")), corruption
    assert not np.array_equal(corrupt(photo, "fog", 3, "a.jpg"), corrupt(photo, "fog", 3, "b.jpg"))


def test_fit_longest_side_scales_the_photo_and_keeps_mask_labels():
    photo = np.zeros((100, 200, 3), dtype=np.uint8)
    truth = np.zeros((100, 200), dtype=np.uint8)
    truth[:, 100:] = 7
    image, mask = fit_longest_side(photo, truth, 120)
    assert image.shape == (60, 120, 3)
    assert mask.shape == image.shape[:2] and set(np.unique(mask)) == {0, 7}


def test_bad_names_and_severities_are_one_line_errors_listing_the_valid_ones():
    assert parse_corruptions("") == list(CORRUPTIONS)
    assert parse_corruptions("fog, contrast,fog") == ["fog", "contrast"]
    assert parse_severities("5,1,3") == [1, 3, 5]
    with pytest.raises(CarpartsError) as e:
        parse_corruptions("fog,rain")
    assert "rain" in str(e.value) and "jpeg_compression" in str(e.value) and "\n" not in str(e.value)
    for bad in ("0", "6", "1,x", "", "2.5"):
        with pytest.raises(CarpartsError, match="among 1,2,3,4,5"):
            parse_severities(bad)


def scores(robustness: dict) -> dict:
    return {k: v for k, v in robustness.items() if k != "seconds"}


def test_mpc_is_the_mean_of_the_table_and_rpc_its_share_of_clean(tiny_model, tiny_coco):
    predictor = load_predictor(tiny_model)
    args = (predictor, tiny_coco, "all", ["fog", "contrast"], [1, 5], 64)
    robustness = score_corruptions(*args, progress=False, workers=0)
    assert robustness["images"] == 6 and robustness["longest_side"] == 64
    assert set(robustness["table"]) == {"fog", "contrast"}
    assert all(set(row) == {"1", "5"} for row in robustness["table"].values())
    cells = [value for row in robustness["table"].values() for value in row.values()]
    assert robustness["mpc"] == pytest.approx(np.mean(cells))
    assert robustness["rpc"] == pytest.approx(robustness["mpc"] / robustness["clean_miou_parts"])
    assert robustness["per_corruption"]["fog"] == pytest.approx(np.mean(list(robustness["table"]["fog"].values())))
    assert scores(score_corruptions(*args, progress=False, workers=2)) == scores(robustness)  # worker processes


def test_an_interrupted_run_resumes_to_the_same_figures(tiny_model, tiny_coco, tmp_path):
    predictor = load_predictor(tiny_model)
    args = (tiny_coco, "all", ["fog", "contrast"], [2])
    whole = score_corruptions(predictor, *args, 64, out=tmp_path / "whole", progress=False, workers=0)

    class StopsAtTheThirdPhoto:
        def __init__(self):
            self.info, self.backend, self.tta, self.calls = predictor.info, predictor.backend, predictor.tta, 0

        def __call__(self, image):
            self.calls += 1
            if self.calls > 2 * 3:  # 3 variants a photo: clean, fog/2, contrast/2
                raise KeyboardInterrupt
            return predictor(image)

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        score_corruptions(StopsAtTheThirdPhoto(), *args, 64, out=out, progress=False, workers=0)
    assert json.loads((out / PROGRESS_FILE).read_text())["done"] == ["img0.jpg", "img1.jpg"]
    notes = []
    resumed = score_corruptions(predictor, *args, 64, out=out, progress=False, on_note=notes.append, workers=0)
    assert notes == [f"resuming the corruption run in {out / PROGRESS_FILE}: 2 photo(s) already scored"]
    assert scores(resumed) == scores(whole)

    notes.clear()  # other settings: the saved progress is not theirs
    other = score_corruptions(predictor, *args, 48, out=out, progress=False, on_note=notes.append, workers=0)
    assert "starting afresh" in notes[0] and other["images"] == 6


def test_evaluate_corruptions_writes_metrics_table_and_report(tiny_model, tiny_coco, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", "--data", str(tiny_coco), "--model", str(tiny_model), "--out", str(out), "--quiet"]
    flags = ["--corruptions", "pixelate,brightness", "--severities", "1,3", "--corruption-size", "64"]
    assert main([*argv, *flags, "--corruption-workers", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    robustness = metrics["robustness"]
    assert metrics["miou_parts"] is not None  # the clean figures stay at the top level
    assert list(robustness["table"]) == ["pixelate", "brightness"] and robustness["severities"] == [1, 3]
    assert robustness["rpc"] == pytest.approx(robustness["mpc"] / robustness["clean_miou_parts"])
    assert not (out / PROGRESS_FILE).exists()
    assert (out / "robustness.png").is_file() and "Robustness under corruptions" in (out / "report.html").read_text()
    printed = capsys.readouterr().out
    assert "pixelate" in printed and f"rPC {100 * robustness['rpc']:.1f} %" in printed


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--corruptions", "rain"], "unknown corruption rain; choose from gaussian_noise, "),
        (["--corruptions", "--severities", "0,6"], "severities must be among 1,2,3,4,5"),
        (["--severities", "1"], "--severities, --corruption-size and --corruption-workers go with --corruptions"),
    ],
)
def test_evaluate_refuses_bad_corruption_flags_in_one_line(tiny_coco, tmp_path, capsys, flags, message):
    missing_model = tmp_path / "no-model"  # refused before any model loads
    assert main(["evaluate", "--data", str(tiny_coco), "--model", str(missing_model), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message) and err.count("\n") == 1
