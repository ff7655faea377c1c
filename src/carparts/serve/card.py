"""What ``GET /v1/model`` answers: the model in words, its classes, its measured figure and test-time settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from carparts.metrics import HEADLINE
from carparts.models import ModelInfo
from carparts.predict import Predictor

ARCH_NAMES = {
    "unet": "U-Net",
    "unetplusplus": "U-Net++",
    "fpn": "FPN",
    "deeplabv3plus": "DeepLabV3+",
    "upernet": "UPerNet",
    "segformer": "SegFormer",
    "linknet": "LinkNet",
    "pan": "PAN",
}


def encoder_name(encoder: str) -> str:
    """``tf_efficientnet_lite1`` -> ``EfficientNet-Lite1``, ``resnet34`` -> ``ResNet-34``; others as they are."""
    if match := re.fullmatch(r"(?:tf_)?efficientnet_lite(\d)", encoder):
        return f"EfficientNet-Lite{match[1]}"
    if match := re.fullmatch(r"resnet(\d+)", encoder):
        return f"ResNet-{match[1]}"
    return encoder


def network_name(info: ModelInfo) -> str:
    """``FPN + EfficientNet-Lite1``."""
    return f"{ARCH_NAMES.get(info.arch, info.arch)} + {encoder_name(info.encoder)}"


def model_description(predictor: Predictor) -> str:
    """The model in words for people: ``FPN + EfficientNet-Lite1, 18 parts``; an ensemble names its networks."""
    members = getattr(predictor, "members", [predictor])
    networks = {m.info.weights_sha256: network_name(m.info) for m in members}  # sizes of one model count once
    names = list(dict.fromkeys(networks.values()))
    text = names[0] if len(networks) == 1 else f"ensemble of {len(networks)} models ({', '.join(names)})"
    return f"{text}, {len(predictor.info.taxonomy.parts)} parts"


def headline_figure(info: ModelInfo) -> dict[str, Any] | None:
    """The parts' mIoU ``model.json`` records, with the photos it was measured on: the real test photos when it
    records them (what users' photos look like), else the validation split; None when it records neither."""
    real = info.metrics.get("photos_native") or {}
    if "miou_parts" in real:
        return {
            "metric": HEADLINE["miou_parts"],
            "value": round(float(real["miou_parts"]), 3),
            "measured_on": f"{real.get('images', 'the')} real test photos at their own sizes, never trained on",
        }
    measured = info.metrics.get("val_native") or {}
    if "miou_parts" not in measured:
        return None
    data = "/".join(Path(info.recipe["data"]).parts[-2:]) if info.recipe.get("data") else "its data set"
    photos = measured.get("images")
    on = f"{photos} held-out photos" if photos else "held-out photos"
    return {
        "metric": HEADLINE["miou_parts"],
        "value": round(float(measured["miou_parts"]), 3),
        "measured_on": f"{on} (the validation split of {data}, not trained on), at native resolution",
    }


def model_card(predictor: Predictor, backend: str, service: dict[str, Any]) -> dict[str, Any]:
    """The whole answer of ``GET /v1/model``: ``model.json``'s content plus how this service runs the model
    (``service``: its threads and request limits)."""
    members = getattr(predictor, "members", [predictor])
    return predictor.info.to_dict() | {
        "description": model_description(predictor),
        "headline": headline_figure(predictor.info),
        "backend": backend,
        **service,
        "test_time": {
            "models": len({m.info.weights_sha256 for m in members}),
            "input_sizes": sorted({m.info.input_size for m in members}),
            "flip_tta": predictor.tta,
            "network_runs_per_photo": predictor.network_runs,
        },
    }
