"""Training configuration: one dataclass, named presets, YAML load/save and command-line overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from carparts.errors import CarpartsError

DEFAULT_DATA = "../shared/data/carparts/trainingset"
AUGMENT_LEVELS = ("none", "flip", "strong", "framing", "paste", "clutter")
"""The ``augment`` levels :func:`carparts.transforms.train_transform` builds."""
PHOTOS_DATA = "../shared/data/carparts/photos"
"""50 real test photos at their own sizes: every results table shows them beside the validation split; never
trained on, and checkpoints are not chosen on them."""
CROPS = ("none", "car")
"""The crop policies a model can run with (``crop`` in ``model.json``, ``--crop``): the whole photo, or the box
around the car(s) a first pass finds."""
RESIZES = ("letterbox", "stretch")
"""How a photo becomes the network's input (``resize`` in the config and ``model.json``): keep the aspect ratio
and pad, or stretch to a square as the training images were made."""


def setting(default: Any, group: str, help: str) -> Any:
    """A config key: its default, the group its command-line flag is listed under, and its one description."""
    return field(default=default, metadata={"group": group, "help": help})


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``runs/<name>/config.yaml``.

    A run is reproducible from this file alone: ``carparts train --config runs/<name>/config.yaml``. Every key is
    also a ``carparts train`` flag (``img_size`` -> ``--img-size``), listed under its group with this description.
    """

    name: str = setting("train", "run", "run name: results go to <out>/<name> (default: the preset's name)")
    data: str = setting(
        DEFAULT_DATA,
        "run",
        "folder with annotations.json and the images; several, comma-separated (a list in YAML), "
        "train on all of them, their val split drawn per folder",
    )
    out: str = setting("runs", "run", "folder of runs")
    arch: str = setting("fpn", "model", "architecture: unet, fpn, deeplabv3plus, upernet, segformer, ...")
    encoder: str = setting("tf_efficientnet_lite1", "model", "encoder: resnet34, tf_efficientnet_lite0/1/2, ...")
    encoder_weights: str = setting("imagenet", "model", "imagenet, none, or a path to a weights file")
    init_from: str = setting(
        "",
        "model",
        "fine-tune: start from a trained model's weights (a run folder, a model file, or 'bundled' for the bundled "
        "model, 'accurate' for the accurate one) instead of --encoder-weights; its architecture, encoder and classes "
        "must be this run's",
    )
    distill_from: str = setting(
        "",
        "model",
        "distil: also learn a trained teacher's class probabilities (a run folder, a model file, 'bundled' or "
        "'accurate' for a bundled model), the teacher run on each training batch at its own input size; its classes "
        "must be this run's",
    )
    distill_weight: float = setting(
        0.5, "model", "with --distill-from: the teacher's share of the loss (KL divergence); the rest is --loss"
    )
    presence_weight: float = setting(
        0.0,
        "model",
        "weight of an auxiliary image-level loss: a head on the encoder's deepest features predicts which parts the "
        "photo shows (labels from its masks, so its viewpoint, rear-lid type and sides); used in training only, the "
        "exported model is unchanged; 0 = off",
    )
    viewpoint_weight: float = setting(
        0.0,
        "model",
        "weight of an auxiliary image-level loss: a head on the encoder's deepest features predicts the side the "
        "photo's largest car shows (one of 8 viewpoints, read from its masks as predict reads it); used in training "
        "only, the exported model is unchanged; 0 = off",
    )
    img_size: int = setting(320, "input", "input size in px (a multiple of 32)")
    augment: str = setting("strong", "input", "augmentation: none, flip, strong, framing, paste or clutter")
    resize: str = setting(
        "letterbox", "input", "input policy: letterbox (keep the aspect ratio, pad) or stretch (to a square)"
    )
    blur: float = setting(
        0.0,
        "input",
        "share of training photos given a camera blur (motion up to 15 px or out of focus, sigma up to 3 px, at the "
        "training size) on top of --augment; 0 = off",
    )
    repeat_threshold: float = setting(
        0.0,
        "input",
        "repeat-factor sampling (LVIS): a photo whose rarest part is in a share f of the training photos below this "
        "threshold t is seen sqrt(t/f) times an epoch on average (0.5 on the training set: tailgate photos 2x, trunk "
        "1.6x, an epoch 1.4x as long); 0 = off",
    )
    epochs: int = setting(24, "optimisation", "training epochs")
    batch_size: int = setting(8, "optimisation", "images per step (per device)")
    optimizer: str = setting("adamw", "optimisation", "adamw or sgd")
    lr: float = setting(1e-3, "optimisation", "peak learning rate")
    weight_decay: float = setting(1e-4, "optimisation", "weight decay")
    scheduler: str = setting("cosine", "optimisation", "cosine (after the warm-up) or none")
    warmup_epochs: float = setting(1.0, "optimisation", "epochs of linear learning-rate warm-up")
    grad_clip: float = setting(0.0, "optimisation", "gradient norm clipping (0 = none)")
    loss: str = setting("ce_dice", "optimisation", "ce_dice, bce_dice or ce")
    class_weight_power: float = setting(
        0.0,
        "optimisation",
        "weigh each class's cross-entropy by its share of the training masks' pixels to the power -p (0.5: inverse "
        "square root), scaled so that the average pixel weighs 1; 0 = unweighted",
    )
    ema_decay: float = setting(0.0, "optimisation", "validate and export an EMA of the weights (e.g. 0.99; 0 = off)")
    val_fraction: float = setting(
        0.2,
        "split",
        "share of each folder's images held out for validation; 0 trains on every image and keeps the last epoch",
    )
    split_seed: int = setting(0, "split", "which images form the validation split; stays fixed while --seed varies")
    seed: int = setting(0, "split", "weights initialisation, shuffling and augmentation")
    limit_images: int = setting(
        0, "split", "use only the first N images of each folder, N >= 2 (0 = all); for smoke tests"
    )
    workers: int = setting(2, "hardware", "data-loading processes")
    devices: str = setting("auto", "hardware", "devices per node (GPUs, or CPU processes with --accelerator cpu)")
    num_nodes: int = setting(1, "hardware", "machines taking part; see docs/scale.md")
    strategy: str = setting("auto", "hardware", "Lightning strategy: auto, ddp, ddp_spawn, fsdp...")
    accelerator: str = setting("auto", "hardware", "cpu, gpu or auto")
    precision: str = setting("auto", "hardware", "auto (16-mixed on GPU, 32 on CPU), 32-true, bf16-mixed...")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


PRESETS: dict[str, dict[str, Any]] = {
    # The reference recipe, exactly: U-Net, ImageNet ResNet-34, bs 16, 5 epochs, AdamW lr 1e-3, wd 0,
    # cosine without warm-up, no clipping, 256x256, BCE + Dice, 80/20 split, flips only.
    "seed": dict(
        arch="unet", encoder="resnet34", encoder_weights="imagenet", img_size=256, augment="flip",
        epochs=5, batch_size=16, optimizer="adamw", lr=1e-3, weight_decay=0.0, scheduler="cosine",
        warmup_epochs=0.0, grad_clip=0.0, loss="bce_dice",
    ),
    # The bundled default: FPN + ImageNet EfficientNet-Lite1 (weights ship on PyPI) at 352x352 on stretched inputs,
    # framing augmentation whose empty borders show other photos' surroundings (clutter), 30 epochs; bundled to run
    # at 320, 6.8x faster than the reference on a CPU (docs/benchmarks.md; docs/experiments.md, rows P7-P8, P62-P64).
    "fast": dict(
        arch="fpn", encoder="tf_efficientnet_lite1", encoder_weights="imagenet", img_size=352, resize="stretch",
        augment="clutter", epochs=30, batch_size=8, optimizer="adamw", lr=1e-3, weight_decay=1e-4,
        scheduler="cosine", warmup_epochs=1.0, grad_clip=0.0, loss="ce_dice",
    ),
}  # fmt: skip
# The bundled accurate model (`--accurate`): the fast recipe with EfficientNet-Lite2 at 448x448 and plain framing
# (clutter did not help Lite2: two seeds -0.026 / +0.007, rows P65-P66); bundled in fp16 to run at 512 with its
# mirrored view (docs/experiments.md, rows P37-P44).
PRESETS["accurate"] = {**PRESETS["fast"], "encoder": "tf_efficientnet_lite2", "img_size": 448, "augment": "framing"}

FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}


def _coerce(key: str, value: Any) -> Any:
    kind = FIELD_TYPES[key]
    if key == "data" and isinstance(value, list | tuple):  # YAML's `data: [A, B]` is the flag's --data A,B
        value = ",".join(map(str, value))
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise CarpartsError(f"config key '{key}' expects {kind}, got {value!r}") from None


def load_config(
    preset: str | None = None, path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Resolve a config: defaults <- preset <- YAML file <- overrides (None values are ignored)."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise CarpartsError(f"unknown preset '{preset}'; choose from {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise CarpartsError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise CarpartsError(f"{path}: not valid YAML ({e.__class__.__name__})") from None
        if not isinstance(loaded, dict):
            raise CarpartsError(f"{path}: expected a mapping of config keys")
        values.update(loaded)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(values) - set(FIELD_TYPES))
    if unknown:
        raise CarpartsError(f"unknown config key(s): {', '.join(unknown)}")
    config = TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Reject values that would only fail deep inside training."""
    checks = [
        (config.epochs >= 1, "epochs must be >= 1"),
        (config.batch_size >= 1, "batch_size must be >= 1"),
        (config.img_size >= 32 and config.img_size % 32 == 0, "img_size must be a multiple of 32, >= 32"),
        (0.0 <= config.val_fraction < 1.0, "val_fraction must be at least 0 and below 1"),
        (config.lr > 0, "lr must be > 0"),
        (0.0 <= config.ema_decay < 1.0, "ema_decay must be in [0, 1): 0 turns EMA off"),
        (0.0 <= config.blur <= 1.0, "blur must be in [0, 1]: the share of training photos blurred"),
        (0.0 <= config.repeat_threshold <= 1.0, "repeat_threshold must be in [0, 1]: a share of the training photos"),
        (0.0 <= config.distill_weight <= 1.0, "distill_weight must be in [0, 1]"),
        (config.presence_weight >= 0.0, "presence_weight must be >= 0: 0 turns the parts-present head off"),
        (config.viewpoint_weight >= 0.0, "viewpoint_weight must be >= 0: 0 turns the viewpoint head off"),
        (config.loss in ("ce_dice", "bce_dice", "ce"), "loss must be ce_dice, bce_dice or ce"),
        (0.0 <= config.class_weight_power <= 1.0, "class_weight_power must be in [0, 1]: 0 turns the weights off"),
        (
            config.class_weight_power == 0 or config.loss != "bce_dice",
            "class_weight_power weighs the cross-entropy of ce_dice or ce, not bce_dice",
        ),
        (config.scheduler in ("cosine", "none"), "scheduler must be cosine or none"),
        (config.augment in AUGMENT_LEVELS, f"augment must be one of {', '.join(AUGMENT_LEVELS)}"),
        (config.resize in RESIZES, f"resize must be {' or '.join(RESIZES)}"),
        (config.optimizer in ("adamw", "sgd"), "optimizer must be adamw or sgd"),
        (config.limit_images == 0 or config.limit_images >= 2, "limit_images must be 0 (all images) or at least 2"),
    ]
    for ok, message in checks:
        if not ok:
            raise CarpartsError(f"invalid config: {message}")
