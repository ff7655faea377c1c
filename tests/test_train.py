import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from carparts.cars import VIEWPOINTS
from carparts.classes import CARPARTS
from carparts.config import load_config
from carparts.data import load_coco
from carparts.errors import CarpartsError
from carparts.evaluate import evaluate
from carparts.models import load_info, load_model
from carparts.report import report_run
from carparts.train import (
    RUN_DIR_ENV,
    SeededSampler,
    SegmentationLoss,
    new_run_dir,
    parts_present,
    resolve_resume,
    resume_config,
    run_split,
    train,
    validate_checkpoint,
    viewpoint_labels,
    viewpoint_loss,
    warmup_cosine,
)
from tests.conftest import make_tiny_coco, tiny_train_config


def test_warmup_then_cosine():
    f = warmup_cosine(total_steps=10, warmup_steps=2, cosine=True)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == 1.0 and math.isclose(f(6), 0.5) and f(10) == 0.0
    assert warmup_cosine(10, 0, cosine=False)(7) == 1.0


@pytest.mark.parametrize("kind", ["ce_dice", "bce_dice", "ce"])
def test_losses_prefer_the_right_answer(kind):
    target = torch.randint(0, 4, (2, 8, 8))
    right = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float() * 20 - 10
    loss = SegmentationLoss(kind, 4)
    assert loss(right, target) < 0.05 < loss(-right, target)


def test_new_run_dir_never_reuses_a_run(tmp_path):
    first = new_run_dir(str(tmp_path), "exp")
    (first / "metrics.json").write_text("{}")
    assert new_run_dir(str(tmp_path), "exp").name == "exp-2"


def test_unknown_strategy_is_one_line_and_writes_nothing(tiny_coco, tmp_path):
    config = load_config(preset="fast", overrides=dict(data=str(tiny_coco), out=str(tmp_path / "runs"), strategy="dpp"))
    with pytest.raises(CarpartsError, match="unknown strategy 'dpp'; choose from auto, ddp"):
        train(config, progress=False)
    assert not (tmp_path / "runs").exists()


def test_a_model_that_cannot_be_built_leaves_no_run_folder(tiny_coco, tmp_path):
    bad = [{"arch": "unett"}, {"encoder": "resnet999"}, {"encoder_weights": str(tmp_path / "missing.pt")}]
    for override in bad:
        config = load_config(preset="fast", overrides=dict(
            data=str(tiny_coco), out=str(tmp_path / "runs"), img_size=64, workers=0, **override,
        ))  # fmt: skip
        with pytest.raises(CarpartsError):
            train(config, progress=False)
    assert not (tmp_path / "runs").exists()


def test_a_split_needs_an_image_on_each_side(tiny_coco, tmp_path):
    config = load_config(overrides=dict(data=str(tiny_coco)))
    two, one = load_coco(make_tiny_coco(tmp_path / "two", n=2)), load_coco(make_tiny_coco(tmp_path / "one", n=1))
    assert sorted(sum(run_split(config, two), [])) == [0, 1]
    with pytest.raises(CarpartsError, match="1 image.* leave 1 to train on and 0 to validate on; both need"):
        run_split(config, one)
    with pytest.raises(CarpartsError, match="2 image.* leave 0 to train on and 2 to validate on; both need"):
        run_split(load_config(overrides=dict(data=str(tiny_coco), val_fraction=0.9)), two)
    with pytest.raises(CarpartsError, match="limit_images must be 0 .all images. or at least 2"):
        load_config(overrides=dict(limit_images=1))


def test_val_fraction_zero_trains_on_every_image_and_keeps_the_last_epoch(tiny_coco, tmp_path):
    config = tiny_train_config(tiny_coco, tmp_path / "runs", name="all", epochs=2, val_fraction=0.0)
    run = train(config, progress=False)
    split = json.loads((run / "split.json").read_text())
    assert (len(split["train"]), split["val"]) == (6, [])
    assert not (run / "checkpoints" / "best.ckpt").exists() and not (run / "eval_val").exists()
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in rows["epochs"]] == [1, 2] and rows["best"]["epoch"] == 2
    assert "val_miou_parts" not in rows["best"]
    _, info = load_model(run)
    assert info.metrics["last_epoch"]["epoch"] == 2
    with pytest.raises(CarpartsError, match="trained on every image .val_fraction 0.: it has no val split"):
        evaluate(run, str(tiny_coco), split="val", progress=False)
    assert evaluate(run, str(tiny_coco), split="train", progress=False)["images"] == 6
    assert "no val" in report_run(run, progress=False).read_text()  # training curves only


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(CarpartsError, match="no checkpoint to resume from"):
        resolve_resume(str(tmp_path))


def test_train_one_epoch_then_resume(tiny_coco, tmp_path):
    config = tiny_train_config(tiny_coco, tmp_path / "runs", name="t")
    run = train(config, progress=False)
    for name in ["config.yaml", "metrics.json", "metrics.csv", "model.json", "model.safetensors", "split.json",
                 "checkpoints/best.ckpt", "checkpoints/last.ckpt", "eval_val/metrics.json"]:  # fmt: skip
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 1
    split = json.loads((run / "split.json").read_text())
    assert len(split["val"]) == 2 and len(split["train"]) == 4
    _, info = load_model(run)
    assert info.recipe["img_size"] == 64 and info.input_size == 64
    assert info.metrics["val_native"]["images"] == 2
    assert info.temperature == info.metrics["calibration"]["temperature"]  # fitted before the val evaluation:
    evaluated = json.loads((run / "eval_val" / "metrics.json").read_text())["calibration"]
    assert evaluated["stored"] and evaluated["temperature"] == info.temperature  # its ECE after is calibrated

    train(resume_config(str(run), epochs=2), resume=str(run), progress=False)
    rows = json.loads((run / "metrics.json").read_text())["epochs"]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["seconds"] >= rows[0]["seconds"]  # training time keeps counting across the resume
    assert {"lr", "train_loss", "val_loss", "val_miou_parts"} <= set(rows[1])


def test_one_config_trains_one_run_whatever_the_data_loading_workers(tiny_coco, tmp_path):
    def epochs(name, workers):
        config = tiny_train_config(tiny_coco, tmp_path / "runs", name=name, epochs=2, workers=workers)
        rows = json.loads((train(config, progress=False) / "metrics.json").read_text())["epochs"]
        return [{key: value for key, value in row.items() if key != "seconds"} for row in rows]

    first = epochs("a", workers=0)
    assert epochs("b", workers=0) == first  # augmentation is seeded too, not only Lightning's generators
    assert epochs("c", workers=2) == first  # each image's augmentation does not depend on which worker reads it
    assert first[0]["train_loss"] != first[1]["train_loss"]


def test_seeded_sampler_draws_new_order_and_augmentation_per_epoch_and_rank():
    def draw(epoch, rank=0, world=1, seed=0):
        sampler = SeededSampler(list(range(10)), seed, rank, world)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert draw(0) == draw(0) and sorted(i for i, _ in draw(0)) == list(range(10))
    assert {s for _, s in draw(0)}.isdisjoint(s for _, s in draw(1))  # another epoch: other augmentations
    assert [i for i, _ in draw(0)] != [i for i, _ in draw(1)]  # ... and another order
    assert draw(0, seed=1) != draw(0)
    shards = [draw(3, rank, world=2) for rank in (0, 1)]
    assert sorted(i for shard in shards for i, _ in shard) == list(range(10))
    assert {s for _, s in shards[0]}.isdisjoint(s for _, s in shards[1])


def test_last_checkpoint_follows_every_epoch_when_best_does_not(tiny_coco, tmp_path, monkeypatch):
    from carparts.metrics import ConfusionMatrix

    original, scores = ConfusionMatrix.summary, iter([0.5, 0.4, 0.3])

    def worsening(self, *args, **kwargs):  # validation gets worse every epoch
        return {**original(self, *args, **kwargs), "miou_parts": next(scores, 0.0)}

    monkeypatch.setattr(ConfusionMatrix, "summary", worsening)
    config = tiny_train_config(tiny_coco, tmp_path / "runs", name="t", epochs=2)
    run = train(config, progress=False)
    load = lambda name: torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=False)  # noqa: E731
    assert load("best.ckpt")["epoch"] == 0 and load("last.ckpt")["epoch"] == 1
    assert load("last.ckpt")["global_step"] == 4  # 4 training images, batch 2, 2 epochs: resume loses nothing


def test_ema_weights_are_validated_checkpointed_and_exported(tiny_coco, tmp_path):
    config = tiny_train_config(tiny_coco, tmp_path / "runs", name="ema", ema_decay=0.5)
    run = train(config, progress=False)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    averaged, raw = ckpt["state_dict"], ckpt["current_model_state"]
    name = next(k for k in averaged if k.startswith("model.encoder") and k.endswith("weight"))
    assert not torch.equal(averaged[name], raw[name])  # 2 optimiser steps at decay 0.5 differ from the raw weights
    model, _ = load_model(run)
    assert torch.equal(model.state_dict()[name.removeprefix("model.")], averaged[name])
    train(resume_config(str(run), epochs=2), resume=str(run), progress=False)  # resumes both weight sets
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())["epochs"]] == [1, 2]
    with pytest.raises(CarpartsError, match="ema_decay"):
        load_config(preset="fast", overrides={"ema_decay": 1.0})


def test_two_process_ddp_writes_one_run_whose_metrics_match_one_process(tmp_path):
    """Lightning DDP on 2 CPU processes (gloo): one run folder, one set of checkpoints, and validation figures
    (confusion matrices summed over ranks, 3 images split 2 + 1 with no repeats) equal to one process."""
    data = make_tiny_coco(tmp_path / "data", n=9)
    command = [
        sys.executable, "-m", "carparts", "train", "--data", str(data), "--out", str(tmp_path / "runs"),
        "--name", "ddp", "--epochs", "1", "--batch-size", "2", "--img-size", "64", "--encoder-weights", "none",
        "--workers", "0", "--val-fraction", "0.34", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
        "--quiet",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", RUN_DIR_ENV)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp"]
    run = tmp_path / "runs" / "ddp"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert len(json.loads((run / "split.json").read_text())["val"]) == 3
    (logged,) = json.loads((run / "metrics.json").read_text())["epochs"]

    single = validate_checkpoint(run, "last")
    for key in ("val/miou_parts", "val/miou_all", "val/pixel_accuracy"):
        assert logged[key.replace("/", "_")] == pytest.approx(single[key], abs=2e-6), key
    assert (run / "model.safetensors").is_file() and (run / "report.html").is_file()


def test_init_from_fine_tunes_a_trained_model_and_resumes_without_it(tiny_coco, tiny_model, tmp_path):
    start, _ = load_model(tiny_model)
    # seed 1: a new run's own random weights differ from the tiny model's (drawn with seed 0)
    settings = dict(encoder="tf_efficientnet_lite0", lr=1e-9, weight_decay=0.0, warmup_epochs=0.0, seed=1)
    config = tiny_train_config(tiny_coco, tmp_path / "runs", name="ft", init_from=str(tiny_model), **settings)
    run = train(config, progress=False)
    tuned, info = load_model(run)
    assert info.recipe["init_from"] == str(tiny_model)
    start_id = load_info(tiny_model).model_id  # the path may later hold another model: its id is what stays true
    assert info.recipe["sources"] == {"init_from": start_id}
    # at a learning rate of 1e-9 the weights stay the trained model's (normalisation statistics still move)
    learnt = {k for k, _ in start.named_parameters()}
    assert all(
        torch.allclose(tuned.state_dict()[k], v, atol=1e-5) for k, v in start.state_dict().items() if k in learnt
    )
    fresh, _ = load_model(
        train(tiny_train_config(tiny_coco, tmp_path / "runs", name="new", **settings), progress=False)
    )
    assert not torch.allclose(
        fresh.state_dict()["segmentation_head.0.weight"], start.state_dict()["segmentation_head.0.weight"]
    )

    shutil.rmtree(tiny_model)  # a resumed run takes its weights from its checkpoint, not from init_from
    train(resume_config(str(run), epochs=2), resume=str(run), progress=False)
    assert [r["epoch"] for r in json.loads((run / "metrics.json").read_text())["epochs"]] == [1, 2]
    assert load_info(run).recipe["sources"] == {"init_from": start_id}  # carried in the checkpoint


def test_init_from_another_architecture_is_one_line_and_writes_nothing(tiny_coco, tiny_model, tmp_path):
    config = tiny_train_config(tiny_coco, tmp_path / "runs", init_from=str(tiny_model))  # the preset's Lite1
    with pytest.raises(
        CarpartsError,
        match="cannot fine-tune from it: its encoder is tf_efficientnet_lite0, this run's tf_efficientnet_lite1",
    ):
        train(config, progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_distillation_loss_is_zero_on_the_teachers_own_answer(tiny_model, tiny_coco, tmp_path):
    from carparts.models import load_teacher
    from carparts.train import SegmentationModule

    config = tiny_train_config(tiny_coco, tmp_path / "runs", distill_from=str(tiny_model))
    module = SegmentationModule(config.to_dict(), load_coco(tiny_coco).taxonomy.to_dict())
    module.set_teacher(*load_teacher(config.distill_from, module.taxonomy))
    teacher = module.teacher[0]
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        answer = teacher(images)
        assert float(module.distillation_loss(images, answer)) < 1e-5
        assert float(module.distillation_loss(images, torch.randn_like(answer))) > 0.1
        # a batch at another size: the teacher runs at its own 64 px, its answer resized to the student's grid
        resize = torch.nn.functional.interpolate
        big = resize(images, size=(96, 96), mode="bilinear", align_corners=False)
        seen = teacher(resize(big, size=(64, 64), mode="bilinear", align_corners=False))
        grid = resize(seen, size=(96, 96), mode="bilinear", align_corners=False)
        assert float(module.distillation_loss(big, grid)) < 1e-5 < 0.1 < float(module.distillation_loss(big, -grid))
    assert not any(name.startswith("teacher") for name in module.state_dict())  # never saved with the student


def test_a_distilled_run_learns_the_teachers_answers(tiny_coco, tiny_model, tmp_path):
    teacher, _ = load_model(tiny_model)
    settings = dict(encoder="tf_efficientnet_lite0", epochs=3, lr=3e-3, warmup_epochs=0.0, seed=1)
    agreement = {}
    for weight in (0.0, 1.0):
        config = tiny_train_config(
            tiny_coco, tmp_path / "runs", name=f"w{weight}", distill_from=str(tiny_model), distill_weight=weight,
            **settings,
        )  # fmt: skip
        student, info = load_model(train(config, progress=False))
        assert info.recipe["distill_from"] == str(tiny_model) and info.recipe["distill_weight"] == weight
        images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            agreement[weight] = float((student(images).argmax(1) == teacher(images).argmax(1)).float().mean())
    assert agreement[1.0] > agreement[0.0] + 0.1, agreement
    run = tmp_path / "runs" / "w1.0"  # a resumed run loads its teacher again; each epoch records its distillation loss
    train(resume_config(str(run), epochs=4), resume=str(run), progress=False)
    rows = json.loads((run / "metrics.json").read_text())["epochs"]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and all(r["train_distill"] >= 0 for r in rows)
    assert load_info(run).recipe["sources"] == {"distill_from": load_info(tiny_model).model_id}


def test_distilling_from_a_model_with_other_classes_is_one_line_and_writes_nothing(tiny_coco, tmp_path):
    from carparts.classes import Taxonomy
    from carparts.models import ModelInfo, build_model, save_model

    taxonomy = Taxonomy(names=("background", "wheel"), category_ids=(None, 19))
    other = save_model(
        build_model("fpn", "tf_efficientnet_lite0", 2, encoder_weights="none"),
        ModelInfo(arch="fpn", encoder="tf_efficientnet_lite0", taxonomy=taxonomy, input_size=64, name="other"),
        tmp_path / "other",
    )
    config = tiny_train_config(tiny_coco, tmp_path / "runs", distill_from=str(other))
    with pytest.raises(CarpartsError, match=f"{other}: cannot distil from it: its classes are wheel, this run's"):
        train(config, progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_parts_present_counts_parts_over_a_minimum_share_of_the_photo():
    masks = torch.zeros(2, 100, 100, dtype=torch.long)
    masks[0, :10, :10] = 3  # 1 % of the photo: present
    masks[0, 50, :4] = 5  # 4 px, 0.04 %: a sliver, not present
    masks[1, :, 50:] = 18  # the last class
    present = parts_present(masks, num_classes=19)
    assert present.shape == (2, 18) and present.dtype == torch.float32
    assert present[0].nonzero().flatten().tolist() == [2] and present[1].nonzero().flatten().tolist() == [17]


def test_viewpoint_labels_read_the_largest_cars_side_and_follow_a_flip():
    index = {name: CARPARTS.names.index(name) for name in CARPARTS.names}
    masks = torch.zeros(3, 96, 128, dtype=torch.long)
    # a car seen from its front-left: the front (bumper, hood) on the image's left, the left doors beside it
    masks[0, 40:80, 4:40] = index["front_bumper"]
    masks[0, 20:40, 4:40] = index["hood"]
    masks[0, 20:80, 40:60] = index["front_left_door"]
    masks[0, 20:80, 60:80] = index["back_left_door"]
    masks[0, 0:6, 0:6] = index["back_bumper"]  # a speck of a second car elsewhere does not decide
    # the same photo mirrored: what flip augmentation makes of it (left and right classes swapped)
    masks[1] = torch.tensor(CARPARTS.flip_permutation)[masks[0].flip(-1)]
    # masks[2]: background only, no label
    labels = viewpoint_labels(masks, CARPARTS)
    assert labels.dtype == torch.long
    assert [VIEWPOINTS[k] for k in labels[:2]] == ["front-left", "front-right"] and labels[2] == -100
    scores = torch.zeros(3, len(VIEWPOINTS), requires_grad=True)
    assert math.isclose(float(viewpoint_loss(scores, labels).detach()), math.log(len(VIEWPOINTS)), rel_tol=1e-6)
    empty = viewpoint_loss(scores, torch.full((3,), -100))  # a batch without a label: 0, not NaN
    empty.backward()
    assert float(empty.detach()) == 0.0 and scores.grad is not None


@pytest.mark.parametrize("head", ["presence", "viewpoint"])
def test_image_level_heads_are_checkpointed_and_resumed_but_not_exported(head, tiny_coco, tmp_path):
    setting = f"{head}_weight"
    settings = dict(encoder="tf_efficientnet_lite0", val_fraction=0.0, lr=3e-3, warmup_epochs=0.0)
    runs = {
        w: train(tiny_train_config(tiny_coco, tmp_path / "runs", name=f"p{w}", **{setting: w}, **settings),
                 progress=False)
        for w in (0.0, 1.0)
    }  # fmt: skip
    (plain, plain_info), (with_head, info) = (load_model(runs[w]) for w in (0.0, 1.0))
    assert info.recipe[setting] == 1.0 and plain_info.recipe[setting] == 0.0
    assert plain.state_dict().keys() == with_head.state_dict().keys()  # the head is not exported
    rows = json.loads((runs[1.0] / "metrics.json").read_text())["epochs"]
    assert rows[0][f"train_{head}"] > 0 and f"train_{head}" not in json.loads(
        (runs[0.0] / "metrics.json").read_text())["epochs"][0]  # fmt: skip
    train(resume_config(str(runs[1.0]), epochs=2), resume=str(runs[1.0]), progress=False)  # the head resumes too
    assert [r["epoch"] for r in json.loads((runs[1.0] / "metrics.json").read_text())["epochs"]] == [1, 2]
    with pytest.raises(CarpartsError, match=f"{setting} must be >= 0"):
        load_config(preset="fast", overrides={setting: -0.1})


def test_image_level_losses_reach_the_encoder_and_not_the_decoder(tiny_coco, tmp_path):
    from carparts.train import SegmentationModule

    config = tiny_train_config(tiny_coco, tmp_path / "runs", presence_weight=1.0, viewpoint_weight=1.0)
    module = SegmentationModule(config.to_dict(), CARPARTS.to_dict()).eval()
    images, masks = torch.randn(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.long)
    masks[0, :, :32] = CARPARTS.names.index("front_bumper")
    masks[0, :, 32:] = CARPARTS.names.index("front_left_door")
    logits, loss, aux = module.segmentation_losses(images, masks)
    assert torch.equal(logits, module(images)) and torch.equal(loss, module.loss(logits, masks))
    assert sorted(aux) == ["presence", "viewpoint"]
    for name, value in aux.items():
        module.zero_grad()
        value.backward(retain_graph=True)
        encoder = [p.grad for p in module.model.encoder.parameters() if p.grad is not None]
        assert encoder and any(float(g.abs().sum()) > 0 for g in encoder), name
        head = [*module.model.decoder.parameters(), *module.model.segmentation_head.parameters()]
        assert all(p.grad is None or not p.grad.any() for p in head), name
    plain = SegmentationModule(tiny_train_config(tiny_coco, tmp_path / "r").to_dict(), CARPARTS.to_dict())
    assert plain.presence_head is None and plain.viewpoint_head is None
    assert plain.segmentation_losses(images, masks)[2] == {}


def test_repeat_factor_sampler_draws_a_fixed_epoch_with_rare_images_repeated():
    def draw(epoch, rank=0, world=1, seed=0):
        sampler = SeededSampler(list(range(4)), seed, rank, world, repeats=[3.0, 1.0, 1.5, 1.5])
        sampler.set_epoch(epoch)
        return [i for i, _ in sampler], len(sampler)

    epochs = [draw(epoch) for epoch in range(8)]
    assert all(length == len(indices) == 7 for indices, length in epochs)  # round(3 + 1 + 1.5 + 1.5) draws
    assert all(indices.count(0) == 3 and indices.count(1) == 1 for indices, _ in epochs)
    assert {indices.count(2) for indices, _ in epochs} == {1, 2}  # the 7th draw goes to 2 or 3, epoch by epoch
    assert all(indices.count(2) + indices.count(3) == 3 for indices, _ in epochs)
    assert draw(5) == draw(5) and draw(5) != draw(5, seed=1)
    shards = [draw(3, rank, world=2)[0] for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 4  # 7 draws padded to 8, dealt to two ranks
    assert sorted(shards[0] + shards[1][:-1]) == sorted(draw(3)[0])
    with pytest.raises(ValueError, match="3 repeat factors for 4 images"):
        SeededSampler(list(range(4)), 0, repeats=[1.0, 1.0, 1.0])


def test_repeat_factors_follow_the_rarest_part_of_each_image(tiny_coco):
    from carparts.data import repeat_factors

    coco = load_coco(tiny_coco)
    rare, common = sorted(coco.category_to_index)[:2]
    coco.annotations = {record["id"]: [{"category_id": common}] for record in coco.images}
    first = coco.images[0]["id"]
    coco.annotations[first] = [{"category_id": rare}, {"category_id": common}]
    del coco.annotations[coco.images[1]["id"]]  # no annotation: seen once
    n = len(coco.images)
    factors = repeat_factors(coco, list(range(n)), threshold=0.5)
    assert factors[0] == pytest.approx((0.5 * n) ** 0.5) and factors[1:] == [1.0] * (n - 1)
    assert repeat_factors(coco, list(range(n)), threshold=0.9 / n) == [1.0] * n  # every part above the threshold
    with pytest.raises(CarpartsError, match="repeat_threshold must be in"):
        load_config(preset="fast", overrides={"repeat_threshold": 1.5})


def test_class_weights_follow_pixel_shares_and_keep_the_average_pixel_at_one(tiny_coco):
    from carparts.data import class_weights

    coco = load_coco(tiny_coco)
    indices = list(range(len(coco.images)))
    n = coco.taxonomy.num_classes
    counts = sum(np.bincount(coco.read_mask(i).ravel(), minlength=n) for i in indices)
    share = counts / counts.sum()
    weight = np.asarray(class_weights(coco, indices, power=0.5))
    present = share > 0
    assert 2 <= present.sum() < n  # the tiny photos show some parts, not all
    assert (share * weight).sum() == pytest.approx(1.0)
    a, b = np.flatnonzero(present)[:2]
    assert weight[a] / weight[b] == pytest.approx((share[b] / share[a]) ** 0.5)
    assert np.all(weight[~present] == weight[present].max())
    assert class_weights(coco, indices, power=0.0) == pytest.approx([1.0] * n)
    with pytest.raises(CarpartsError, match="class_weight_power must be in"):
        load_config(preset="fast", overrides={"class_weight_power": 1.5})
    with pytest.raises(CarpartsError, match="not bce_dice"):
        load_config(preset="fast", overrides={"class_weight_power": 0.5, "loss": "bce_dice"})


def test_class_weight_power_weighs_the_training_and_validation_loss(tiny_coco, tmp_path):
    logged = {}
    for power in (0.0, 0.5):
        config = tiny_train_config(tiny_coco, tmp_path / "runs", name=f"w{power}", class_weight_power=power)
        run = train(config, progress=False)
        (logged[power],) = json.loads((run / "metrics.json").read_text())["epochs"]
    # the same seed, weights and batches: only the loss's class weights differ
    assert logged[0.5]["train_loss"] != pytest.approx(logged[0.0]["train_loss"], rel=1e-3)
    # a checkpoint validated later weighs its loss as training did
    assert validate_checkpoint(run, "last")["val/loss"] == pytest.approx(logged[0.5]["val_loss"], rel=1e-5)


def test_repeat_threshold_lengthens_the_training_epoch(tiny_coco, tmp_path):
    from carparts.data import repeat_factors

    coco_file = tiny_coco / "annotations.json"  # the front-left light in the first photo only: a rare part
    coco = json.loads(coco_file.read_text())
    coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] != 11 or a["image_id"] == 1]
    coco_file.write_text(json.dumps(coco))
    steps = {}
    for threshold in (0.0, 1.0):
        config = tiny_train_config(tiny_coco, tmp_path / "runs", name=f"r{threshold}", repeat_threshold=threshold,
                                   val_fraction=0.0, batch_size=1)  # fmt: skip
        run = train(config, progress=False)
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        steps[threshold] = ckpt["global_step"]
    factors = repeat_factors(load_coco(tiny_coco), list(range(6)), 1.0)
    assert factors == [pytest.approx(6**0.5)] + [1.0] * 5
    assert (steps[0.0], steps[1.0]) == (6, 7)  # 6 + 1.45 draws, rounded
