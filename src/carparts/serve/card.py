"""What ``GET /v1/model`` answers: the model in words, its classes, its measured figure and test-time settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from carparts.metrics import HEADLINE
from carparts.models import ModelInfo
from carparts.predict import Predictor
from carparts.results import UNCERTAINTY_FULL_SCALE

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


def calibration(predictor: Predictor) -> dict[str, Any]:
    """How the confidences are read: the temperature applied (``softmax(logits / T)``), whether every model was
    calibrated (``carparts calibrate``; an uncalibrated one is read at 1), where it was fitted, in words."""
    members = getattr(predictor, "members", [predictor])
    temperature = round(float(predictor.temperature), 4)
    if all(m.info.temperature is None for m in members):
        words = (
            "not calibrated: no temperature is stored with the model, so confidences are the plain softmax "
            "(temperature 1); `carparts calibrate --model MODEL` fits one"
        )
        return {"temperature": None, "applied": temperature, "calibrated": False, "description": words}
    calibrated = all(m.info.temperature is not None for m in members)
    fitted = members[0].info.metrics.get("calibration") or {}
    words = f"confidences are softmax(logits / {temperature:g})"
    if fitted.get("images") and len({m.info.weights_sha256 for m in members}) == 1:  # one model at its sizes
        data = "/".join(Path(fitted["data"]).parts[-2:]) if fitted.get("data") else "its data set"
        words += f", the temperature fitted on {fitted['images']} images ({fitted.get('split', 'val')} of {data})"
    if not calibrated:
        words += "; some models of the ensemble have no temperature and count as 1"
    return {"temperature": temperature, "applied": temperature, "calibrated": calibrated, "description": words}


def model_card(predictor: Predictor, backend: str, service: dict[str, Any]) -> dict[str, Any]:
    """The whole answer of ``GET /v1/model``: ``model.json``'s content plus how this service runs the model
    (``service``: its threads and request limits)."""
    members = getattr(predictor, "members", [predictor])
    confidences = calibration(predictor)
    return predictor.info.to_dict() | {
        "description": model_description(predictor),
        "temperature": confidences["temperature"],  # an ensemble's own, not its first model's
        "headline": headline_figure(predictor.info),
        "backend": backend,
        "calibration": confidences,
        "uncertainty_full_scale": UNCERTAINTY_FULL_SCALE,
        **service,
        "test_time": {
            "models": len({m.info.weights_sha256 for m in members}),
            "input_sizes": sorted({m.info.input_size for m in members}),
            "flip_tta": predictor.tta,
            "crop": sorted({m.info.crop for m in members}),
            "network_runs_per_photo": predictor.network_runs,
        },
    }
