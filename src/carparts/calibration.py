"""Calibrated confidences: temperature scaling (Guo et al. 2017) fitted on a model's val split, and the pixel-level
expected calibration error (ECE, 15 equal-width bins) with its reliability diagram.

A model's probabilities are ``softmax(scores / temperature)``; the temperature lives in ``model.json`` (and the ONNX
metadata), is fitted by ``carparts calibrate`` and at the end of ``carparts train``, and is read by every output
that carries a ``confidence`` (see :meth:`carparts.predict.Predictor.predict`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from tqdm import tqdm

from carparts.data import CocoDataset, load_coco
from carparts.errors import CarpartsError
from carparts.evaluate import select_split
from carparts.images import write_atomic
from carparts.models import resolve_model_path
from carparts.predict import Predictor

PIXELS_PER_IMAGE = 8192
"""Pixels drawn from each image to fit the temperature: 80 val images give 655k, plenty for one parameter."""


def fit_temperature(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature ``T`` minimising the negative log-likelihood of ``softmax(scores / T)`` for (N, C) scores
    and (N,) labels; searched over log T in [-3, 3] (T from 0.05 to 20) by scipy's bounded Brent method."""
    if not len(labels):
        raise CarpartsError("no pixels to fit a temperature on")
    scores, labels = scores.double(), labels.long()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(scores / math.exp(log_t), labels))

    return round(math.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x), 4)


def sample_pixels(
    predictor: Predictor,
    coco: CocoDataset,
    indices: list[int],
    per_image: int = PIXELS_PER_IMAGE,
    seed: int = 0,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) scores and (N,) true classes of pixels drawn at random from each image, on the network's grid (the
    truth resized to it with nearest-neighbour), as :meth:`Predictor.logits` gives them before any temperature."""
    rng = np.random.default_rng(seed)
    all_scores, all_labels = [], []
    for index in tqdm(indices, desc="calibrate", unit="img", disable=not progress):
        image, truth = coco.read_pair(index)
        scores = predictor.logits(image)  # (C, h, w)
        h, w = scores.shape[1:]
        grid_truth = cv2.resize(truth, (w, h), interpolation=cv2.INTER_NEAREST)
        picked = rng.choice(h * w, size=min(per_image, h * w), replace=False)
        all_scores.append(scores.reshape(scores.shape[0], -1)[:, picked].T)
        all_labels.append(torch.from_numpy(grid_truth.reshape(-1)[picked].astype(np.int64)))
    return torch.cat(all_scores), torch.cat(all_labels)


def calibrate(
    model: str | Path | None, data: str | Path | None = None, split: str = "val", progress: bool = True,
    tta: bool = False, input_size: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Fit a model folder's temperature on ``split`` of ``data`` (default: the data set it was trained on, whose
    val split the model never trained on) and store it in its ``model.json``; the weights are left untouched.

    ``tta`` and ``input_size`` fit it for the configuration the model will run in: averaging a mirrored view
    softens the probabilities, so the `--accurate` configuration (its mirrored view at 512 px) wants a lower
    temperature than the network alone at its training size.

    Returns what is also recorded under ``metrics.calibration``: temperature, data, split, images, pixels, the
    configuration (tta, input_size) and the negative log-likelihood per pixel before and after.
    """
    folder = resolve_model_path(model)
    predictor = Predictor.from_path(folder, tta=tta)
    if input_size:
        predictor.info = dataclasses.replace(predictor.info, input_size=input_size)
    info = predictor.info
    data = data or info.recipe.get("data")
    if not data:
        raise CarpartsError(f"{folder}: the model does not say which data it was trained on; pass --data")
    coco = load_coco(data, taxonomy=info.taxonomy)
    indices = select_split(coco, split, info)
    scores, labels = sample_pixels(predictor, coco, indices, progress=progress)
    temperature = fit_temperature(scores, labels)
    record = {
        "temperature": temperature, "data": str(data), "split": split, "images": len(indices),
        "pixels": len(labels), "tta": tta, "input_size": info.input_size,
        "nll_before": round(float(F.cross_entropy(scores, labels)), 5),
        "nll_after": round(float(F.cross_entropy(scores / temperature, labels)), 5),
    }  # fmt: skip
    description = json.loads((folder / "model.json").read_text())
    description["temperature"] = temperature
    description.setdefault("metrics", {})["calibration"] = record
    write_atomic(folder / "model.json", lambda p: p.write_text(json.dumps(description, indent=2)))
    return record
