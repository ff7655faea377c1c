import pytest

from carparts.config import PRESETS, TrainConfig, load_config, validate
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


@pytest.mark.parametrize(
    "values, message",
    [
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"img_size": 16}, "img_size must be a multiple of 32"),
        ({"img_size": 330}, "img_size must be a multiple of 32"),
        ({"val_fraction": -0.1}, "val_fraction must be at least 0 and below 1"),
        ({"val_fraction": 1.0}, "val_fraction must be at least 0 and below 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"ema_decay": 1.0}, "ema_decay must be in"),
        ({"ema_decay": -0.1}, "ema_decay must be in"),
        ({"blur": 1.5}, "blur must be in"),
        ({"blur": -0.1}, "blur must be in"),
        ({"loss": "focal"}, "loss must be"),
        ({"scheduler": "step"}, "scheduler must be"),
        ({"augment": "heavy"}, "augment must be"),
        ({"resize": "crop"}, "resize must be"),
        ({"optimizer": "lamb"}, "optimizer must be"),
    ],
)
def test_validate_refuses_each_invalid_value(values, message):
    with pytest.raises(CarpartsError, match=f"^invalid config: {message}"):
        validate(TrainConfig(**values))


def test_validate_accepts_the_defaults_and_every_preset():
    assert validate(TrainConfig()) is None
    for values in PRESETS.values():
        assert validate(TrainConfig(**values)) is None
