import json
import re

import numpy as np
import pytest

from carparts.classes import CARPARTS
from carparts.config import load_config
from carparts.errors import CarpartsError
from carparts.metrics import BoundaryErrors, ConfusionMatrix
from carparts.report import (
    GridWriter,
    error_map,
    prediction_grid,
    rank_images,
    report_run,
    row_normalise,
    training_curves_figure,
    write_html,
)
from carparts.train import train

EPOCHS = [
    {"epoch": 1, "lr": 0.001, "train_loss": 2.0, "val_loss": 1.5, "val_miou_parts": 0.3},
    {"epoch": 2, "lr": 0.0005, "train_loss": 1.2, "val_loss": 1.1, "val_miou_parts": 0.45},
    {"epoch": 3, "lr": 0.0, "train_loss": 0.9, "val_loss": 1.0, "val_miou_parts": 0.5},
]


def test_chart_data_equal_the_metrics_file():
    fig = training_curves_figure(EPOCHS)
    for ax, key in zip(fig.axes, ["lr", "train_loss", "val_loss", "val_miou_parts"], strict=True):
        xs, ys = ax.lines[0].get_data()
        assert list(xs) == [1, 2, 3]
        assert list(ys) == [row[key] for row in EPOCHS]
        assert ax.get_xlabel() == "epoch" and ax.get_title()


def test_row_normalise():
    norm = row_normalise(np.array([[3, 1], [0, 0]]))
    assert norm.tolist() == [[0.75, 0.25], [0.0, 0.0]]


def test_ranking_worst_and_best():
    per_image = [{"file_name": f"{k}.jpg", "miou_parts": v} for k, v in enumerate([0.5, None, 0.1, 0.9, 0.3])]
    worst, best = rank_images(per_image, 2)
    assert [r["miou_parts"] for r in worst] == [0.1, 0.3]
    assert [r["miou_parts"] for r in best] == [0.9, 0.5]


def test_grid_panels_and_error_map():
    image = np.full((20, 30, 3), 100, dtype=np.uint8)
    truth = np.zeros((20, 30), dtype=np.uint8)
    pred = truth.copy()
    pred[:5, :5] = 3
    errors = error_map(image, truth, pred)
    assert (errors[:5, :5] == (255, 0, 0)).all() and (errors[10:, 10:] == 50).all()
    grid = prediction_grid(image, truth, pred, CARPARTS, "x")
    assert grid.size == (4 * 384, 256 + 22)


def test_worst_sheet_is_written_in_order(tmp_path):
    writer = GridWriter(tmp_path / "val_predictions", CARPARTS)
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    for name, miou in [("a.jpg", 0.7), ("b.jpg", 0.2), ("c.jpg", 0.5)]:
        writer(name, image, np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8), miou)
    per_image = [{"file_name": n, "miou_parts": m} for n, m in [("a.jpg", 0.7), ("b.jpg", 0.2), ("c.jpg", 0.5)]]
    sheets = writer.sheets(per_image, n=2)
    assert sheets["worst"] == tmp_path / "worst.png" and sheets["best"].is_file()
    assert sorted(p.name for p in (tmp_path / "val_predictions").iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]


def test_report_of_a_one_epoch_run(tiny_coco, tmp_path):
    config = load_config(preset="fast", overrides=dict(
        data=str(tiny_coco), out=str(tmp_path), name="r", epochs=1, batch_size=2, img_size=64,
        encoder_weights="none", workers=0, val_fraction=0.34,
    ))  # fmt: skip
    run = train(config, progress=False)
    page = report_run(run, progress=False)
    html = page.read_text()
    referenced = re.findall(r"(?:src|href)='([^']+)'", html)
    assert {"charts.png", "per_class_iou.png", "confusion_matrix.png"} <= set(referenced)
    assert len([r for r in referenced if r.startswith("val_predictions/")]) == 2 * 2  # link + thumbnail each
    for ref in referenced:
        assert (run / ref).is_file(), ref
    metrics = json.loads((run / "eval_val" / "metrics.json").read_text())
    assert f"{metrics['miou_parts']:.4f}" in html if metrics["miou_parts"] is not None else "absent" in html


def test_missing_or_half_written_run(tmp_path):
    with pytest.raises(CarpartsError, match="run folder not found"):
        report_run(tmp_path / "nope")
    with pytest.raises(CarpartsError, match="metrics file .* not found"):
        report_run(tmp_path)
    (tmp_path / "metrics.json").write_text('{"epochs": [{"epo')
    with pytest.raises(CarpartsError, match="half-written"):
        report_run(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"epochs": EPOCHS}))
    with pytest.raises(CarpartsError, match="no exported model"):
        report_run(tmp_path)


def test_report_lists_the_most_confused_pairs(tmp_path):
    cm = ConfusionMatrix(CARPARTS.num_classes)
    tailgate, trunk = CARPARTS.names.index("tailgate"), CARPARTS.names.index("trunk")
    cm.update(np.array([tailgate] * 3 + [trunk]), np.array([trunk, tailgate, tailgate, trunk]))
    summary = cm.summary(CARPARTS.names, CARPARTS.left_right_pairs, per_image={"car<1>.jpg": cm.mat.numpy()})
    page = write_html(tmp_path, "eval", summary, CARPARTS, {}, [], None).read_text()
    assert "<tr><td>tailgate</td><td>trunk</td><td>33.3%</td><td>1</td><td>car&lt;1&gt;.jpg 100%</td></tr>" in page


def test_report_splits_boundary_from_region_errors(tmp_path):
    truth = np.zeros((40, 40), np.uint8)
    truth[10:30, 10:30] = CARPARTS.names.index("trunk")
    pred = truth.copy()
    pred[18:22, 18:22] = CARPARTS.names.index("tailgate")  # deep inside the trunk: a region error
    cm, boundary = ConfusionMatrix(CARPARTS.num_classes), BoundaryErrors(CARPARTS.num_classes)
    cm.update(truth, pred)
    boundary.update(truth, pred, "van.jpg")
    summary = cm.summary(CARPARTS.names, CARPARTS.left_right_pairs)
    summary["boundary"] = boundary.to_dict(CARPARTS.names)
    summary["interval"] = {"miou_parts": [0.41, 0.52], "level": 0.95, "draws": 2000, "seed": 0}
    page = write_html(tmp_path, "eval", summary, CARPARTS, {}, [], None).read_text()
    assert "95% interval over the images (bootstrap, 2000 draws)</th><td>0.4100 to 0.5200</td>" in page
    assert "<h2>Boundary and region errors</h2>" in page
    assert "0% of the wrong pixels lie within 0.5% of the image diagonal" in page
    assert "<tr><td>trunk</td><td>tailgate</td><td>" in page and "<td>van.jpg 100%</td>" in page
