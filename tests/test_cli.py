import json
import re
import subprocess
import sys

import pytest
from PIL import Image

from carparts.cli import main
from tests.conftest import write_coco


def test_no_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    assert "required" in capsys.readouterr().err


def test_evaluate_needs_data(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate"])
    assert "--data" in capsys.readouterr().err


def test_bad_preset_choice(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--preset", "huge"])
    assert "invalid choice" in capsys.readouterr().err


def test_empty_annotations_is_one_line(tmp_path, capsys):
    write_coco(tmp_path, [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}], [])
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'annotations.json'}: holds no annotations"


def test_predict_reports_bad_files_keeps_going_and_leaves_earlier_outputs(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.png").write_bytes(b"keep me")
    good = tmp_path / "good.jpg"
    Image.new("RGB", (40, 30), (120, 30, 30)).save(good)
    text = tmp_path / "text.jpg"
    text.write_text("hello")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    args = ["predict", str(tmp_path / "missing.jpg"), str(text), str(truncated), str(good)]
    code = main([*args, "--model", str(tiny_model), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1
    errors = without_notes(captured.err)
    assert errors[0].endswith("missing.jpg: file not found")
    assert errors[1].endswith("text.jpg: not an image (unrecognised format)")
    assert "cut.jpg: damaged or truncated image" in errors[2]
    assert "3 image(s) failed" in errors[3]
    assert "1 image(s) segmented" in captured.out
    assert {p.name for p in out.iterdir()} == {"earlier.png", "good.png", "good_overlay.jpg", "good.json"}
    assert (out / "earlier.png").read_bytes() == b"keep me"


def test_predict_errors_start_their_own_line_under_the_progress_bar(tiny_model, tmp_path, capsys):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (40, 30), (120, 30, 30)).save(good)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    assert main(["predict", str(truncated), str(good), "--model", str(tiny_model), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "predict:" in err, "the progress bar was not drawn"
    # tqdm clears its bar (a carriage return) before the line; a plain print would follow the bar's text
    assert re.search(r"(^|[\r\n])error: \S*cut.jpg: damaged or truncated image", err)
    assert not re.search(r"[^\r\n]error:", err)


def without_notes(stderr: str) -> list[str]:
    """stderr's lines but the ``note:`` lines (the test models are not calibrated, and say so once)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("note: ")]


def test_missing_model_folder(tmp_path, capsys):
    Image.new("RGB", (40, 30)).save(tmp_path / "car.jpg")
    assert main(["predict", str(tmp_path), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "nope: model not found" in capsys.readouterr().err


def test_console_command_prints_no_traceback(tiny_model, tmp_path):
    command = [sys.executable, "-m", "carparts.cli", "evaluate", "--data", str(tmp_path), "--model", str(tiny_model)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2
    assert without_notes(result.stderr) == [f"error: {tmp_path / 'annotations.json'}: annotation file not found"]


@pytest.mark.parametrize(
    ("extra", "model", "sizes"),
    [([], None, None), (["--model", "runs/a,runs/b"], "runs/a,runs/b", None), (["--input-size", "384"], None, [384])],
)  # fmt: skip
def test_accurate_fills_in_what_is_not_given(extra, model, sizes):
    from carparts.cli import apply_accurate, build_parser
    from carparts.paths import ACCURATE_MODELS

    for command in (["predict", "car.jpg"], ["evaluate", "--data", "d"], ["serve"], ["benchmark"]):
        args = build_parser().parse_args([*command, "--accurate", *extra])
        apply_accurate(args)
        assert args.model == (model or ",".join(str(p) for p in ACCURATE_MODELS))
        assert args.input_size == sizes and args.tta is True


def test_crop_flag_reaches_the_predictor_of_every_command(tiny_model):
    from carparts.cli import build_parser, load_predictor_from

    args = build_parser().parse_args(["predict", "car.jpg", "--model", str(tiny_model), "--crop", "car"])
    predictor = load_predictor_from(args)
    assert predictor.info.crop == "car" and predictor.network_runs == 2
    for command in (["evaluate", "--data", "d"], ["cars", "--data", "d"], ["serve"], ["benchmark"]):
        assert build_parser().parse_args([*command, "--crop", "none"]).crop == "none"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "car.jpg", "--crop", "box"])


def test_accurate_runs_the_bundled_accurate_model_at_its_size_with_tta(tmp_path):
    from carparts.loading import load_predictor
    from carparts.models import load_info
    from carparts.paths import ACCURATE_MODELS, DEFAULT_MODEL, SAMPLES

    photo = tmp_path / "car.jpg"
    Image.open(sorted(SAMPLES.glob("*.jpg"))[0]).save(photo)
    assert main(["predict", str(photo), "--accurate", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    record = json.loads((tmp_path / "out" / "car.json").read_text())
    predictor = load_predictor(ACCURATE_MODELS, tta=True)
    assert record["model"] == predictor.info.model_id != load_info(DEFAULT_MODEL).model_id
    assert predictor.network_runs == 2 and predictor.info.encoder == "tf_efficientnet_lite2"
    assert predictor.info.input_size == 512
    assert record["parts"]  # a real car photo: the accurate configuration finds parts


def test_predict_into_the_photo_folder_is_refused_and_the_photo_kept(tiny_model, tmp_path, capsys):
    photos = tmp_path / "imgs"
    photos.mkdir()
    Image.new("RGB", (40, 30), (120, 30, 30)).save(photos / "photo.png")
    original = (photos / "photo.png").read_bytes()
    assert main(["predict", str(photos), "--out", str(photos), "--model", str(tiny_model), "--quiet"]) == 2
    assert main(["predict", str(photos / "photo.png"), "--out", str(photos), "--model", str(tiny_model)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "is the output folder" in errors[0] and "would overwrite this photo" in errors[1]
    assert (photos / "photo.png").read_bytes() == original and [p.name for p in photos.iterdir()] == ["photo.png"]


def test_predict_says_once_which_files_it_skipped(tiny_model, tmp_path, capsys):
    photos = tmp_path / "imgs"
    photos.mkdir()
    Image.new("RGB", (40, 30), (120, 30, 30)).save(photos / "car.jpg")
    for name in ["anim.gif", "phone.heic", "notes"]:
        (photos / name).write_bytes(b"x")
    assert main(["predict", str(photos), "--out", str(tmp_path / "out"), "--model", str(tiny_model), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert without_notes(captured.err) == ["skipped 3 files that are not images: anim.gif, notes, phone.heic"]
    assert "1 image(s) segmented" in captured.out


@pytest.mark.parametrize("under", [False, True])
@pytest.mark.parametrize("command", ["train", "predict", "evaluate"])
def test_an_output_folder_that_is_a_file_is_one_line(command, under, tiny_model, tmp_path, capsys):
    from tests.conftest import make_tiny_coco

    data = make_tiny_coco(tmp_path / "data", n=2)
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    out = afile / "sub" if under else afile
    args = {
        "train": ["train", "--data", str(data), "--encoder-weights", "none"],
        "predict": ["predict", str(data / "JPEGImages"), "--model", str(tiny_model)],
        "evaluate": ["evaluate", "--data", str(data), "--model", str(tiny_model)],
    }[command]
    assert main([*args, "--out", str(out), "--quiet"]) == 2
    where = f"lies under {afile}, which is a file" if under else "is a file"
    assert capsys.readouterr().err == f"error: {out}: {where}, not a folder; choose another output folder\n"
    assert afile.read_text() == "not a folder"


def test_train_refuses_too_few_images_and_recipe_changes_on_resume(tiny_coco, tmp_path, capsys):
    out = ["--data", str(tiny_coco), "--out", str(tmp_path / "runs"), "--quiet"]
    assert main(["train", *out, "--limit-images", "1"]) == 2
    assert main(["train", "--resume", str(tmp_path / "runs" / "fast"), "--preset", "seed", "--img-size", "64"]) == 2
    assert main(["train", "--resume", str(tmp_path / "runs" / "fast"), "--epochs", "3", "--seed", "0"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: invalid config: limit_images must be 0 (all images) or at least 2",
        f"error: --resume continues {tmp_path / 'runs' / 'fast'} with its own config; only --epochs can change "
        "(drop --preset, --img-size)",
        f"error: --resume continues {tmp_path / 'runs' / 'fast'} with its own config; only --epochs can change "
        "(drop --seed)",
    ]
    assert not (tmp_path / "runs").exists()


def test_ctrl_c_in_training_says_how_to_resume_and_quiet_keeps_lightning_silent(
    tiny_coco, tmp_path, capfd, monkeypatch
):
    from carparts.train import SegmentationModule

    stop_in_epoch = {"at": 1}
    original = SegmentationModule.training_step

    def interrupted(self, batch, batch_idx):
        if self.current_epoch == stop_in_epoch["at"]:
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    monkeypatch.setattr(SegmentationModule, "training_step", interrupted)
    args = ["train", "--data", str(tiny_coco), "--out", str(tmp_path / "runs"), "--epochs", "2", "--img-size", "64",
            "--encoder-weights", "none", "--workers", "0", "--batch-size", "2", "--val-fraction", "0.34",
            "--quiet"]  # fmt: skip
    assert main([*args, "--name", "t"]) == 130
    captured = capfd.readouterr()  # no Lightning lines ("GPU available", tips, warnings): only the hint
    hint = f"interrupted; continue with: carparts train --resume {tmp_path / 'runs' / 't'}\n"
    assert (captured.out, captured.err) == ("", hint)
    assert (tmp_path / "runs" / "t" / "checkpoints" / "last.ckpt").is_file()

    stop_in_epoch["at"] = 0  # before any epoch ends: nothing to resume, no run folder left behind
    assert main([*args, "--name", "u"]) == 130
    assert capfd.readouterr().err == "interrupted; no epoch had finished\n"
    assert not (tmp_path / "runs" / "u").exists()


def test_every_config_key_is_a_train_flag_with_its_description():
    from dataclasses import fields

    from carparts.cli import build_parser
    from carparts.config import TrainConfig

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {action.dest: action for action in train._actions}
    for key in fields(TrainConfig):
        assert key.name in flags, key.name
        assert key.metadata["help"] in flags[key.name].help
    args = build_parser().parse_args(["train", "--augment", "framing", "--resize", "stretch", "--warmup-epochs", "0.5"])
    assert (args.augment, args.resize, args.warmup_epochs) == ("framing", "stretch", 0.5)


def test_a_flag_only_yaml_could_set_before_reaches_the_run_config(tiny_coco, tmp_path):
    import yaml

    code = main(["train", "--data", str(tiny_coco), "--out", str(tmp_path), "--name", "r", "--epochs", "1",
                 "--img-size", "64", "--encoder-weights", "none", "--workers", "0", "--batch-size", "2",
                 "--val-fraction", "0.34", "--loss", "ce", "--resize", "stretch", "--grad-clip", "1.5",
                 "--quiet"])  # fmt: skip
    assert code == 0
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert (saved["loss"], saved["resize"], saved["grad_clip"]) == ("ce", "stretch", 1.5)


@pytest.mark.parametrize("command", ["predict", "evaluate", "cars", "serve", "benchmark"])
def test_every_command_that_runs_a_model_takes_the_same_inference_options(command):
    from carparts.cli import build_parser

    parser = build_parser()._subparsers._group_actions[0].choices[command]
    options = {flag for action in parser._actions for flag in action.option_strings}
    assert {"--model", "--backend", "--tta", "--input-size", "--accurate"} <= options


def test_cars_scores_with_tta_and_the_onnx_backend(tiny_model, tiny_coco, tmp_path, capsys):
    code = main(["cars", "--data", str(tiny_coco), "--model", str(tiny_model), "--split", "all", "--labels", "none",
                 "--backend", "onnx", "--tta", "--input-size", "64,96", "--quiet",
                 "--out", str(tmp_path / "c")])  # fmt: skip
    assert code == 0
    summary = json.loads((tmp_path / "c" / "cars.json").read_text())
    assert summary["model"].startswith("ensemble2") and len(summary["per_image"]) == 6


def test_evaluation_prediction_and_serving_code_do_not_import_onnxruntime():
    code = "import sys, carparts.evaluate, carparts.predict, carparts.loading, carparts.serve.app, carparts.cli; "
    code += "assert 'onnxruntime' not in sys.modules, 'onnxruntime imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
