import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

import carparts.export as export_module
from carparts.backend_onnx import OnnxPredictor, onnx_session
from carparts.classes import CARPARTS
from carparts.cli import main
from carparts.errors import CarpartsError
from carparts.export import check_onnx, export, export_onnx, mask_agreement, parity_accepted
from carparts.loading import load_predictor
from carparts.models import load_model
from carparts.predict import Predictor


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_onnx_logits_and_masks_match_torch(tiny_model, tmp_path):
    onnx_path = export_onnx(tiny_model, tmp_path / "model.onnx")
    report = check_onnx(tiny_model, onnx_path, [photo(48, 64), photo(90, 50, seed=1)])
    assert report["images"] == 2
    assert report["max_abs_logit_diff"] < 1e-3
    assert report["mask_agreement"] >= 0.999


def test_one_session_takes_any_batch_and_size(tiny_model, tmp_path):
    onnx_path = export_onnx(tiny_model, tmp_path / "model.onnx")
    model, _ = load_model(tiny_model)
    session = onnx_session(onnx_path, threads=1)
    for shape in [(1, 3, 64, 64), (2, 3, 32, 96)]:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        logits = session.run(["logits"], {"image": x.numpy()})[0]
        assert logits.shape == (shape[0], CARPARTS.num_classes, shape[2], shape[3])
        with torch.no_grad():
            assert np.abs(logits - model(x).numpy()).max() < 1e-3


def test_onnx_file_alone_rebuilds_the_model_description(tiny_model, tmp_path):
    onnx_path = export_onnx(tiny_model, tmp_path / "model.onnx")
    _, info = load_model(tiny_model)
    metadata = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert metadata["model_id"] == info.model_id
    assert json.loads(metadata["classes"]) == CARPARTS.to_dict()
    mirrored = [0, 1, 2, 5, 6, 3, 4, 7, 8, 11, 12, 9, 10, 13, 15, 14, 16, 17, 18]  # left <-> right, by index
    assert json.loads(metadata["flip_permutation"]) == mirrored
    assert json.loads(metadata["mean"]) == list(info.mean) and json.loads(metadata["input_size"]) == 64
    assert metadata["class_index_convention"].startswith("0 = background")

    predictor = load_predictor(onnx_path, "onnx", tta=True, threads=1)
    assert isinstance(predictor, OnnxPredictor) and predictor.info == info
    image = photo(40, 60)
    expected = Predictor.from_path(tiny_model, tta=True)(image)
    assert (predictor(image) == expected).mean() >= 0.999  # the shared TTA path, on onnxruntime


def test_onnx_file_without_carparts_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 2, 1), (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False)
    with pytest.raises(CarpartsError, match="plain.onnx: no carparts model description"):
        OnnxPredictor(path)
    with pytest.raises(CarpartsError, match="missing.onnx: ONNX file not found"):
        OnnxPredictor(tmp_path / "missing.onnx")


def test_unknown_backend_is_one_line(tiny_model):
    with pytest.raises(CarpartsError, match="unknown backend 'tensorrt'"):
        load_predictor(tiny_model, "tensorrt")


def perturbed_copy(onnx_path, out):
    """The exported file with one class's bias in the last convolution raised: it paints that class more."""
    proto = onnx.load(str(onnx_path))
    head = [node for node in proto.graph.node if node.op_type == "Conv"][-1]
    bias = next(tensor for tensor in proto.graph.initializer if tensor.name == head.input[2])
    values = numpy_helper.to_array(bias).copy()
    values[CARPARTS.names.index("hood")] += 20.0
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(proto, str(out))
    return out


def test_check_onnx_runs_onnxruntime_and_refuses_a_perturbed_export(tiny_model, tmp_path, monkeypatch):
    good = export_onnx(tiny_model, tmp_path / "model.onnx")
    bad = perturbed_copy(good, tmp_path / "bad.onnx")
    photos = [photo(48, 64), photo(90, 50, seed=1)]
    report = check_onnx(tiny_model, bad, photos)
    assert report["max_abs_logit_diff"] > 10 and report["mask_agreement"] < 0.5
    assert not parity_accepted(report["mask_agreement"])

    # the command: the perturbed file is checked against PyTorch, refused and removed
    monkeypatch.setattr(export_module, "export_onnx", lambda model, out, opset: perturbed_copy(good, out))
    out = tmp_path / "exported.onnx"
    with pytest.raises(CarpartsError, match=r"exported.onnx: ONNX masks agree with PyTorch on only \d"):
        export(tiny_model, out)
    assert not out.exists()


def test_parity_needs_999_pixels_in_1000_over_all_photos():
    small, large = np.zeros((10, 20), np.uint8), np.zeros((20, 40), np.uint8)  # 200 + 800 pixels
    one_off, two_off = small.copy(), small.copy()
    one_off[3, 4] = 5
    two_off[3, 4:6] = 5
    assert mask_agreement([(small, small), (large, large)]) == 1.0
    assert mask_agreement([(small, one_off), (large, large)]) == 0.999 and parity_accepted(0.999)
    assert mask_agreement([(small, two_off), (large, large)]) == 0.998 and not parity_accepted(0.998)


@pytest.mark.parametrize("agreement, kept", [(0.95, False), (0.998, False), (0.999, True), (1.0, True)])
def test_export_keeps_a_file_only_at_999_per_mille(tmp_path, monkeypatch, agreement, kept):
    def fake_export(model, out, opset):
        out.write_bytes(b"not checked yet")
        return out

    monkeypatch.setattr(export_module, "export_onnx", fake_export)
    monkeypatch.setattr(export_module, "check_onnx", lambda *a: {"images": 4, "max_abs_logit_diff": 3.0,
                                                                  "mask_agreement": agreement})  # fmt: skip
    out = tmp_path / "bad.onnx"
    if kept:
        assert export(None, out)["mask_agreement"] == agreement
    else:
        message = rf"bad.onnx: ONNX masks agree with PyTorch on only {100 * agreement:.3f} %"
        with pytest.raises(CarpartsError, match=message):
            export(None, out)
    assert out.exists() == kept


def test_export_command_checks_parity_on_the_sample_photos(tiny_model, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", "--model", str(tiny_model), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "parity on 4 sample photos" in printed and "mask agreement" in printed


def test_predict_with_onnx_backend_writes_the_same_outputs(tiny_model, tmp_path):
    sources = tmp_path / "in"
    sources.mkdir()
    Image.fromarray(photo(30, 50)).save(sources / "wide.png")
    Image.fromarray(photo(90, 70, seed=1)).save(sources / "tall.png")
    for backend in ("torch", "onnx"):
        args = ["predict", str(sources), "--model", str(tiny_model), "--out", str(tmp_path / backend), "--quiet"]
        assert main([*args, "--backend", backend]) == 0
    for stem in ("wide", "tall"):
        masks = [np.asarray(Image.open(tmp_path / backend / f"{stem}.png")) for backend in ("torch", "onnx")]
        assert masks[0].shape == masks[1].shape and (masks[0] == masks[1]).mean() >= 0.999
        records = [json.loads((tmp_path / backend / f"{stem}.json").read_text()) for backend in ("torch", "onnx")]
        assert records[0]["model"] == records[1]["model"] and records[0].keys() == records[1].keys()
        assert (tmp_path / "onnx" / f"{stem}_overlay.jpg").is_file()


def test_evaluate_on_onnx_scores_like_torch(tiny_model, tiny_coco, tmp_path):
    from carparts.evaluate import evaluate

    on_torch = evaluate(tiny_model, tiny_coco, progress=False)
    on_onnx = evaluate(tiny_model, tiny_coco, progress=False, backend="onnx")
    assert (on_torch["backend"], on_onnx["backend"]) == ("torch", "onnx")
    matrices = np.asarray(on_torch["confusion_matrix"]), np.asarray(on_onnx["confusion_matrix"])
    assert (
        matrices[0].sum() == matrices[1].sum() and np.abs(matrices[0] - matrices[1]).sum() <= 0.002 * matrices[0].sum()
    )

    out = tmp_path / "eval"
    args = ["evaluate", "--data", str(tiny_coco), "--model", str(tiny_model), "--backend", "onnx", "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["backend"] == "onnx"
    assert (out / "report.html").is_file()


def test_input_size_overrides_the_size_the_network_sees(tiny_model):
    from carparts.predict import preprocess

    predictor = load_predictor(tiny_model, "torch", input_size=96)
    assert predictor.info.input_size == 96 and predictor.info.model_id.endswith(
        f"-96@{predictor.info.weights_sha256[:8]}"
    )
    x, (h, w) = preprocess(np.zeros((48, 64, 3), np.uint8), predictor.info)
    assert (h, w) == (72, 96) and predictor(np.zeros((48, 64, 3), np.uint8)).shape == (48, 64)
    assert load_predictor(tiny_model, "torch").info.input_size == 64  # the model's own size otherwise


def test_comma_separated_models_load_as_one_ensemble_on_either_backend(tiny_model, tmp_path):
    from carparts.loading import split_models
    from carparts.predict import Ensemble

    assert split_models(None) == [None] and split_models(f"{tiny_model}") == [f"{tiny_model}"]
    assert split_models(f"{tiny_model}, {tiny_model}") == [f"{tiny_model}", f"{tiny_model}"]
    image = photo(40, 70)
    single = load_predictor(tiny_model, "torch")(image)
    for backend in ("torch", "onnx"):
        ensemble = load_predictor(f"{tiny_model},{tiny_model}", backend, input_size=96)
        assert isinstance(ensemble, Ensemble) and ensemble.backend == backend
        assert all(m.info.input_size == 96 for m in ensemble.members)
    # two copies of one model average to that model
    ensemble = load_predictor([tiny_model, tiny_model], "torch")
    assert (ensemble(image) == single).mean() > 0.999
    with pytest.raises(CarpartsError, match="model not found"):
        load_predictor(f"{tiny_model},{tmp_path / 'nope'}", "torch")


def test_several_input_sizes_are_multi_scale_tta_on_one_loaded_network(tiny_model):
    from carparts.predict import Ensemble

    for backend in ("torch", "onnx"):
        predictor = load_predictor(tiny_model, backend, input_size=[64, 96])
        assert isinstance(predictor, Ensemble) and [m.info.input_size for m in predictor.members] == [64, 96]
        assert predictor.members[0].model is predictor.members[1].model  # loaded once
        assert predictor(photo(48, 80)).shape == (48, 80)
        assert tuple(predictor.logits(photo(48, 80)).shape[1:]) == (58, 96)  # the larger size's grid
    ensemble = load_predictor(f"{tiny_model},{tiny_model}", "torch", input_size=[64, 96])
    assert [m.info.input_size for m in ensemble.members] == [64, 96, 64, 96]


def test_input_size_flag_takes_one_size_or_a_list(capsys):
    from carparts.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["predict", "x.jpg", "--input-size", "320,416"]).input_size == [320, 416]
    assert parse(["evaluate", "--data", "d", "--input-size", "384"]).input_size == [384]
    for bad in ("big", "16"):
        with pytest.raises(SystemExit):
            parse(["predict", "x.jpg", "--input-size", bad])
        assert "--input-size" in capsys.readouterr().err


def test_an_ensemble_cannot_be_exported_and_says_so(tiny_model, tmp_path):
    with pytest.raises(CarpartsError, match="only work with predict, evaluate and serve"):
        export_onnx(f"{tiny_model},{tiny_model}", tmp_path / "x.onnx")
