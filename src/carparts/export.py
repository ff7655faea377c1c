"""ONNX export with the model's description in the file, and a PyTorch/onnxruntime parity check."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from carparts.backend_onnx import OnnxPredictor, onnx_metadata
from carparts.errors import CarpartsError
from carparts.images import read_image, write_atomic
from carparts.loading import load_predictor, split_models  # noqa: F401  (old home; callers move to loading)
from carparts.models import load_model
from carparts.paths import SAMPLES
from carparts.predict import Predictor, preprocess, upsample_argmax

MIN_AGREEMENT = 0.999  # share of equal argmax pixels below which an export is refused
DYNAMIC_AXES = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}


def export_onnx(model_path: str | Path | None, out: Path, opset: int = 17) -> Path:
    """Export a saved model to ONNX: input ``image`` (N, 3, H, W) float32 normalised, output ``logits``
    (N, C, H, W); batch, height and width dynamic (H and W multiples of the stride, as ``preprocess`` gives).

    Uses the TorchScript exporter: the torch.export-based one takes many minutes on these models on a CPU.
    """
    model, info = load_model(model_path)
    example = torch.zeros(1, 3, info.input_size, info.input_size)

    def write(path: Path) -> None:
        with warnings.catch_warnings():
            # the legacy-exporter deprecation notice and tracer warnings about shape arithmetic, which is
            # constant for inputs padded to the stride
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), str(path), input_names=["image"], output_names=["logits"],
                dynamic_axes=DYNAMIC_AXES, opset_version=opset, dynamo=False,
            )  # fmt: skip
        proto = onnx.load(str(path))
        for key, value in onnx_metadata(info).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(path))

    out = Path(out)
    write_atomic(out, write)
    return out


def check_onnx(model_path: str | Path | None, onnx_path: Path, images: list[np.ndarray]) -> dict[str, Any]:
    """Run PyTorch and onnxruntime on the same preprocessed photos; compare logits and native-size masks.

    Returns ``max_abs_logit_diff`` (at network resolution) and ``mask_agreement`` (:func:`mask_agreement` of the
    two backends' masks), over all ``images``.
    """
    torch_predictor = Predictor.from_path(model_path)
    onnx_predictor = OnnxPredictor(onnx_path)
    max_diff, mask_pairs = 0.0, []
    for image in images:
        x, (h, w) = preprocess(image, torch_predictor.info)
        expected, actual = torch_predictor.run(x)[0, :, :h, :w], onnx_predictor.run(x)[0, :, :h, :w]
        max_diff = max(max_diff, float((expected - actual).abs().max()))
        height, width = image.shape[:2]
        mask_pairs.append((upsample_argmax(expected, height, width), upsample_argmax(actual, height, width)))
    return {"images": len(images), "max_abs_logit_diff": max_diff, "mask_agreement": mask_agreement(mask_pairs)}


def mask_agreement(mask_pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Share of pixels with the same class in each (expected, actual) pair of masks, over all pairs."""
    equal = sum(int((expected == actual).sum()) for expected, actual in mask_pairs)
    total = sum(expected.size for expected, _ in mask_pairs)
    return equal / max(total, 1)


def parity_accepted(agreement: float) -> bool:
    """Whether masks agreeing on this share of pixels make an export good enough to keep."""
    return agreement >= MIN_AGREEMENT


def export(model_path: str | Path | None, out: Path, opset: int = 17) -> dict[str, Any]:
    """``carparts export``: write the ONNX file, check it against PyTorch on the bundled sample photos, print
    the figures; refuse (and remove the file) when masks agree on fewer than 99.9 % of pixels."""
    out = export_onnx(model_path, Path(out), opset=opset)
    samples = sorted(SAMPLES.glob("*.jpg"))
    report = check_onnx(model_path, out, [read_image(p) for p in samples])
    print(
        f"{out}: opset {opset}; parity on {report['images']} sample photos: max |logit diff| "
        f"{report['max_abs_logit_diff']:.2e}, mask agreement {100 * report['mask_agreement']:.3f} %"
    )
    if not parity_accepted(report["mask_agreement"]):
        out.unlink()
        raise CarpartsError(
            f"{out}: ONNX masks agree with PyTorch on only {100 * report['mask_agreement']:.3f} % of pixels "
            f"(need {100 * MIN_AGREEMENT:.1f} %); file removed"
        )
    return report
