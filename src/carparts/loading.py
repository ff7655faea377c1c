"""Load a predictor for a runtime: one model or an ensemble, at one or several input sizes, on eager torch or on
onnxruntime (imported only when asked for). Every command that takes ``--model`` loads through here."""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from carparts.config import CROPS
from carparts.errors import CarpartsError
from carparts.predict import Ensemble, Predictor


class UncalibratedModel(UserWarning):
    """A model without a stored temperature was loaded: its confidences are uncalibrated."""


def load_predictor(
    model: str | Path | Sequence[str | Path] | None,
    backend: str = "torch",
    tta: bool = False,
    threads: int | None = None,
    input_size: int | Sequence[int] | None = None,
    crop: str | None = None,
) -> Predictor:
    """A predictor on ``torch`` or ``onnx`` (onnxruntime, CPU).

    ``model`` is what ``--model`` takes (None: the bundled model). For ``onnx`` it may also be an ``.onnx``
    file, used as is; any other model is exported on the fly into a temporary folder (a few seconds, no
    parity check; run ``carparts export`` once to keep the file). ``threads`` sets onnxruntime's intra-op
    threads, or ``torch.set_num_threads`` (process-wide) for ``torch``; None leaves the defaults.
    ``input_size`` runs the network with the photo's longest side at that many pixels instead of the size the
    model was trained at (the networks are fully convolutional), e.g. to test inference nearer native size.
    ``crop`` (``none`` or ``car``) replaces the models' own ``crop`` policy (``model.json``).

    Several models (a list, or comma-separated) or several input sizes make an
    :class:`~carparts.predict.Ensemble` of every model at every size: multi-scale TTA is one model at sizes
    ``(320, 416)``. Each model is loaded once and shared by its sizes.
    """
    sizes = [input_size] if input_size is None or isinstance(input_size, int) else list(input_size)
    members = []
    for path in split_models(model):
        base = _open_predictor(path, backend, tta, threads)
        if base.info.temperature is None:
            warnings.warn(
                f"{base.info.model_id} has no stored temperature: its confidences are read at temperature 1, "
                "uncalibrated (`carparts calibrate --model MODEL` fits one)",
                UncalibratedModel, stacklevel=2,
            )  # fmt: skip
        if crop is not None:
            base.info = dataclasses.replace(base.info, crop=check_crop(crop))
        for size in sizes:
            member = copy.copy(base) if len(sizes) > 1 else base  # same network, its own input size
            if size:
                member.info = dataclasses.replace(base.info, input_size=size)
            members.append(member)
    return members[0] if len(members) == 1 else Ensemble(members)


def check_crop(crop: str) -> str:
    if crop not in CROPS:
        raise CarpartsError(f"unknown crop '{crop}'; choose {' or '.join(CROPS)}")
    return crop


def split_models(model: str | Path | Sequence[str | Path] | None) -> list[str | Path | None]:
    """The models ``--model`` names: one path, a comma-separated list of paths (an ensemble), or a list."""
    if model is None or isinstance(model, Path):
        return [model]
    if isinstance(model, str):
        return [part.strip() for part in model.split(",") if part.strip()] or [None]
    return list(model)


def _open_predictor(model: str | Path | None, backend: str, tta: bool, threads: int | None) -> Predictor:
    if backend == "torch":
        if threads:
            torch.set_num_threads(threads)
        return Predictor.from_path(model, tta=tta)
    if backend != "onnx":
        raise CarpartsError(f"unknown backend '{backend}'; choose torch or onnx")
    from carparts.backend_onnx import OnnxPredictor  # onnxruntime loads only for this backend
    from carparts.export import export_onnx

    if model is not None and Path(model).suffix == ".onnx":
        return OnnxPredictor(model, tta=tta, threads=threads)
    with tempfile.TemporaryDirectory(prefix="carparts-onnx-") as tmp:
        # the session holds the whole graph in memory once created, so the file can go
        return OnnxPredictor(export_onnx(model, Path(tmp) / "model.onnx"), tta=tta, threads=threads)
