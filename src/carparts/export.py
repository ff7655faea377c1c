"""ONNX export with the model's description in the file, a PyTorch/onnxruntime parity check, and an onnxruntime
predictor that needs nothing but the ``.onnx`` file."""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from carparts.errors import CarpartsError
from carparts.images import read_image, write_atomic
from carparts.models import ModelInfo, load_model
from carparts.predict import Ensemble, Predictor, preprocess, upsample_argmax

SAMPLES = Path(__file__).parent / "assets" / "samples"
MIN_AGREEMENT = 0.999  # share of equal argmax pixels below which an export is refused
DYNAMIC_AXES = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
# metadata values that are JSON; the others are plain strings
JSON_METADATA = {"classes", "mean", "std", "input_size", "stride", "flip_permutation", "recipe", "metrics"}


def onnx_metadata(info: ModelInfo) -> dict[str, str]:
    """``model.json``'s content plus the flip permutation, as the string pairs ONNX ``metadata_props`` hold."""
    data = {**info.to_dict(), "flip_permutation": list(info.taxonomy.flip_permutation)}
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in data.items()}


def info_from_metadata(metadata: dict[str, str], source: Path) -> ModelInfo:
    """Rebuild :class:`ModelInfo` from an exported file's metadata (the inverse of :func:`onnx_metadata`)."""
    try:
        data = {key: json.loads(value) if key in JSON_METADATA else value for key, value in metadata.items()}
        info = ModelInfo.from_dict(data)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CarpartsError(f"{source}: no carparts model description in the ONNX metadata ({e})") from None
    if info.model_id != data.get("model_id"):
        raise CarpartsError(f"{source}: metadata model_id {data.get('model_id')} does not match its own fields")
    return info


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


def onnx_session(onnx_path: Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU onnxruntime session with all graph optimisations; ``threads`` intra-op threads (None: ort's own)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not Path(onnx_path).is_file():
        raise CarpartsError(f"{onnx_path}: ONNX file not found")
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable files
        raise CarpartsError(f"{onnx_path}: cannot load ONNX model ({e.__class__.__name__})") from None


class OnnxNetwork:
    """An onnxruntime session as a network: normalised (N, 3, h, w) tensor -> (N, C, h, w) logits tensor."""

    def __init__(self, session: ort.InferenceSession):
        self.session = session

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        image = np.ascontiguousarray(batch.numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(["logits"], {"image": image})[0])


class OnnxPredictor(Predictor):
    """:class:`Predictor` on onnxruntime: the same preprocessing, TTA and outputs; the model description is
    read from the ``.onnx`` file's metadata, so that file alone is enough."""

    backend = "onnx"

    def __init__(self, onnx_path: str | Path, tta: bool = False, threads: int | None = None):
        onnx_path = Path(onnx_path)
        session = onnx_session(onnx_path, threads)
        info = info_from_metadata(session.get_modelmeta().custom_metadata_map, onnx_path)
        super().__init__(OnnxNetwork(session), info, tta=tta)


def load_predictor(
    model: str | Path | Sequence[str | Path] | None,
    backend: str = "torch",
    tta: bool = False,
    threads: int | None = None,
    input_size: int | Sequence[int] | None = None,
) -> Predictor:
    """A predictor on ``torch`` or ``onnx`` (onnxruntime, CPU).

    ``model`` is what ``--model`` takes (None: the bundled model). For ``onnx`` it may also be an ``.onnx``
    file, used as is; any other model is exported on the fly into a temporary folder (a few seconds, no
    parity check; run ``carparts export`` once to keep the file). ``threads`` sets onnxruntime's intra-op
    threads, or ``torch.set_num_threads`` (process-wide) for ``torch``; None leaves the defaults.
    ``input_size`` runs the network with the photo's longest side at that many pixels instead of the size the
    model was trained at (the networks are fully convolutional), e.g. to test inference nearer native size.

    Several models (a list, or comma-separated) or several input sizes make an
    :class:`~carparts.predict.Ensemble` of every model at every size: multi-scale TTA is one model at sizes
    ``(320, 416)``. Each model is loaded once and shared by its sizes.
    """
    sizes = [input_size] if input_size is None or isinstance(input_size, int) else list(input_size)
    members = []
    for path in split_models(model):
        base = _open_predictor(path, backend, tta, threads)
        for size in sizes:
            member = copy.copy(base) if len(sizes) > 1 else base  # same network, its own input size
            if size:
                member.info = dataclasses.replace(base.info, input_size=size)
            members.append(member)
    return members[0] if len(members) == 1 else Ensemble(members)


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
    if model is not None and Path(model).suffix == ".onnx":
        return OnnxPredictor(model, tta=tta, threads=threads)
    with tempfile.TemporaryDirectory(prefix="carparts-onnx-") as tmp:
        # the session holds the whole graph in memory once created, so the file can go
        return OnnxPredictor(export_onnx(model, Path(tmp) / "model.onnx"), tta=tta, threads=threads)


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
