import pytest

from carparts.config import PRESETS, TrainConfig, load_config
from carparts.errors import CarpartsError


def test_seed_preset_is_the_reference_recipe():
    cfg = load_config(preset="seed")
    assert (cfg.arch, cfg.encoder, cfg.encoder_weights) == ("unet", "resnet34", "imagenet")
    assert (cfg.batch_size, cfg.epochs, cfg.img_size, cfg.val_fraction) == (16, 5, 256, 0.2)
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.scheduler) == ("adamw", 1e-3, 0.0, "cosine")
    assert (cfg.grad_clip, cfg.warmup_epochs, cfg.loss) == (0.0, 0.0, "bce_dice")


def test_precedence_preset_then_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\nlr: 0.01\n")
    cfg = load_config(preset="seed", path=path, overrides={"lr": 0.5, "seed": None})
    assert cfg.epochs == 7 and cfg.lr == 0.5 and cfg.arch == "unet" and cfg.seed == 0


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(preset="fast", overrides={"name": "x", "epochs": "3"})
    cfg.save(tmp_path / "config.yaml")
    assert load_config(path=tmp_path / "config.yaml") == cfg
    assert isinstance(cfg.epochs, int)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "nope"}, "unknown preset"),
        ({"overrides": {"colour": 1}}, "unknown config key"),
        ({"overrides": {"img_size": 100}}, "multiple of 32"),
        ({"overrides": {"val_fraction": 1.5}}, "val_fraction"),
        ({"overrides": {"epochs": "many"}}, "expects int"),
        ({"path": "/nonexistent.yaml"}, "config file not found"),
    ],
)
def test_bad_configs_give_clear_errors(kwargs, message):
    with pytest.raises(CarpartsError, match=message):
        load_config(**kwargs)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(CarpartsError, match="mapping"):
        load_config(path=path)


def test_presets_only_use_known_keys():
    for values in PRESETS.values():
        TrainConfig(**values)
