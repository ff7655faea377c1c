"""The onnxruntime backend: a CPU session over an exported ``.onnx`` file, wrapped as a :class:`Predictor`; the
model's description travels in the file's metadata, so that file alone is enough. Imported only when the
``onnx`` backend is asked for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from carparts.errors import CarpartsError
from carparts.models import ModelInfo
from carparts.predict import Predictor

# metadata values that are JSON; the others are plain strings
JSON_METADATA = {
    "classes", "mean", "std", "input_size", "stride", "flip_permutation", "recipe", "metrics", "temperature",
}  # fmt: skip


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
