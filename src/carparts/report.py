"""Charts, validation prediction grids and a self-contained ``report.html`` for a run or an evaluation."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from carparts.classes import Taxonomy  # noqa: E402
from carparts.errors import CarpartsError  # noqa: E402
from carparts.images import write_atomic  # noqa: E402
from carparts.metrics import HEADLINE, boundary_text, source_text  # noqa: E402
from carparts.results import colour_mask  # noqa: E402

CURVES = (
    ("lr", "Learning rate", "lr"),
    ("train_loss", "Training loss", "loss"),
    ("val_loss", "Validation loss", "loss"),
    ("val_miou_parts", "Validation mIoU (parts)", "mIoU"),
)
PANEL = 256  # px per panel in prediction grids
ERROR_COLOUR = (255, 0, 0)


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CarpartsError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CarpartsError(f"{path}: {what} is half-written or not JSON") from None


def save_figure(fig: plt.Figure, path: Path) -> Path:
    write_atomic(path, lambda p: fig.savefig(p, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def plot_training_curves(epochs: list[dict[str, Any]], path: Path) -> Path:
    """``charts.png``: one panel each for learning rate, train loss, val loss and val part-mIoU per epoch."""
    return save_figure(training_curves_figure(epochs), path)


def training_curves_figure(epochs: list[dict[str, Any]]) -> plt.Figure:
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
    for ax, (key, title, ylabel) in zip(axes, CURVES, strict=True):
        points = [(row["epoch"], row[key]) for row in epochs if key in row]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", color="tab:blue" if key != "val_miou_parts" else "tab:green")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_per_class_iou(summary: dict[str, Any], taxonomy: Taxonomy, path: Path) -> Path:
    """Horizontal bars of IoU per part, sorted, each in its mask colour."""
    rows = [(name, summary["per_class"][name]["iou"], taxonomy.colours[i]) for i, name in enumerate(taxonomy.names)]
    rows = sorted((r for r in rows[1:] if r[1] is not None), key=lambda r: r[1])
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.2))
    ax.barh([r[0] for r in rows], [r[1] for r in rows], color=[np.array(r[2]) / 255 for r in rows], edgecolor="black")
    for y, (_, iou, _) in enumerate(rows):
        ax.text(iou + 0.01, y, f"{iou:.3f}", va="center", fontsize=8)
    miou = summary.get("miou_parts")
    if miou is not None:
        ax.axvline(miou, color="black", linestyle="--", linewidth=1, label=f"mIoU parts {miou:.3f}")
        ax.legend(loc="lower right")
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("IoU")
    ax.set_title("IoU per part")
    return save_figure(fig, path)


def plot_reliability(calibration: dict[str, Any], path: Path) -> Path:
    """Reliability diagram: accuracy against confidence per bin, before (temperature 1) and after calibration, with
    the diagonal a perfectly calibrated model follows and the share of pixels per bin below."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6), height_ratios=(3, 1), sharex=True)
    width = 1 / calibration["bins"]
    centres = (np.arange(calibration["bins"]) + 0.5) * width
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for key, label, colour in (("before", "uncalibrated", "tab:red"), ("after", "calibrated", "tab:blue")):
        bins = calibration[f"reliability_{key}"]
        seen = [i for i, n in enumerate(bins["count"]) if n]
        temperature = 1.0 if key == "before" else calibration["temperature"]
        top.plot([bins["confidence"][i] for i in seen], [bins["accuracy"][i] for i in seen], marker="o",
                 color=colour, label=f"{label} (T {temperature:.2f}): ECE {bins['ece']:.4f}")  # fmt: skip
    counts = np.asarray(calibration["reliability_after"]["count"], dtype=np.float64)
    bottom.bar(centres, counts / max(counts.sum(), 1), width=width * 0.9, color="tab:blue")
    top.set_ylabel("accuracy")
    top.set_title("Reliability of pixel confidences")
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_xlabel("confidence (probability of the predicted class)")
    bottom.set_ylabel("share of pixels")
    bottom.set_xlim(0, 1)
    return save_figure(fig, path)


def plot_robustness(robustness: dict[str, Any], path: Path) -> Path:
    """Part-mIoU under each corruption (rows) at each severity (columns), the clean figure as the first column."""
    severities = [str(s) for s in robustness["severities"]]
    names = list(robustness["table"])
    clean = robustness["clean_miou_parts"]
    values = np.array(
        [[clean, *(robustness["table"][name][s] for s in severities)] for name in names], dtype=np.float64
    )  # None (no part anywhere) becomes nan
    fig, ax = plt.subplots(figsize=(0.75 * len(severities) + 4, 0.38 * len(names) + 1.6))
    image = ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=max(np.nanmax(values), 0.01), aspect="auto")
    for (row, col), value in np.ndenumerate(values):
        ax.text(col, row, "n/a" if np.isnan(value) else f"{100 * value:.0f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(severities) + 1), ["clean", *severities])
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("severity")
    rpc = "n/a" if robustness["rpc"] is None else f"{100 * robustness['rpc']:.1f} %"
    ax.set_title(f"Part-mIoU (%) under corruptions: mPC {100 * (robustness['mpc'] or np.nan):.1f}, rPC {rpc}")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path)


def robustness_section(robustness: dict[str, Any] | None, out_dir: Path) -> str:
    """The page's section on corruptions (``carparts evaluate --corruptions``): chart and headline; empty without."""
    if not robustness:
        return ""
    chart = plot_robustness(robustness, out_dir / "robustness.png").relative_to(out_dir).as_posix()
    rpc = "n/a" if robustness["rpc"] is None else f"{100 * robustness['rpc']:.1f} %"
    mpc = "n/a" if robustness["mpc"] is None else f"{robustness['mpc']:.4f}"
    return (
        f"<h2>Robustness under corruptions</h2><p>mPC {mpc} against clean part-mIoU "
        f"{robustness['clean_miou_parts']:.4f}: rPC {rpc}, on {robustness['images']} images; "
        f"{html.escape(robustness['protocol'])}.</p><figure><img src='{html.escape(chart)}' alt='robustness'></figure>"
    )


def row_normalise(mat: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (share of a true class predicted as each class); empty rows stay 0."""
    rows = mat.sum(1, keepdims=True)
    return np.divide(mat, rows, out=np.zeros_like(mat, dtype=np.float64), where=rows > 0)


def plot_confusion(summary: dict[str, Any], taxonomy: Taxonomy, path: Path) -> Path:
    """Row-normalised confusion matrix: row = true class, column = predicted; left/right mix-ups stand out."""
    norm = row_normalise(np.asarray(summary["confusion_matrix"], dtype=np.float64))
    n = len(taxonomy.names)
    fig, ax = plt.subplots(figsize=(0.5 * n + 2, 0.5 * n + 1.5))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), taxonomy.names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), taxonomy.names, fontsize=8)
    for t in range(n):
        for p in range(n):
            if norm[t, p] >= 0.01:
                colour = "white" if norm[t, p] > 0.5 else "black"
                ax.text(p, t, f"{100 * norm[t, p]:.0f}", ha="center", va="center", fontsize=6, color=colour)
    for left, right in taxonomy.left_right_pairs:  # outline the mirror-twin cells
        for t, p in ((left, right), (right, left)):
            ax.add_patch(plt.Rectangle((p - 0.5, t - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.2))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (% of each true class; red boxes: left/right twins)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path)


def error_map(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The photo dimmed to grey, wrong pixels in red."""
    grey = image.mean(axis=2, keepdims=True).repeat(3, axis=2) * 0.5
    grey[truth != pred] = ERROR_COLOUR
    return grey.astype(np.uint8)


def prediction_grid(
    image: np.ndarray, truth: np.ndarray, pred: np.ndarray, taxonomy: Taxonomy, title: str = ""
) -> Image.Image:
    """photo | truth | prediction | errors, each panel ``PANEL`` px high, with a title line."""
    panels = [
        Image.fromarray(image),
        colour_mask(truth, taxonomy).convert("RGB"),
        colour_mask(pred, taxonomy).convert("RGB"),
        Image.fromarray(error_map(image, truth, pred)),
    ]
    width = max(1, round(image.shape[1] * PANEL / image.shape[0]))
    panels = [p.resize((width, PANEL), Image.NEAREST if i in (1, 2) else Image.BILINEAR) for i, p in enumerate(panels)]
    header = 22
    grid = Image.new("RGB", (4 * width, PANEL + header), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=14)
    for k, (panel, label) in enumerate(zip(panels, ("photo", "truth", "prediction", "errors"), strict=True)):
        grid.paste(panel, (k * width, header))
        draw.text((k * width + 4, 3), label if k else f"{label}  {title}", fill=(0, 0, 0), font=font)
    return grid


def contact_sheet(grids: list[Image.Image], title: str) -> Image.Image:
    """Grids stacked vertically under a title."""
    header = 30
    width = max(g.width for g in grids)
    sheet = Image.new("RGB", (width, header + sum(g.height for g in grids)), (255, 255, 255))
    ImageDraw.Draw(sheet).text((6, 6), title, fill=(0, 0, 0), font=ImageFont.load_default(size=18))
    y = header
    for grid in grids:
        sheet.paste(grid, (0, y))
        y += grid.height
    return sheet


class GridWriter:
    """Evaluation hook: saves one grid per image and keeps small copies for the best/worst sheets."""

    def __init__(self, out_dir: Path, taxonomy: Taxonomy):
        self.out_dir = out_dir
        self.taxonomy = taxonomy
        self.grids: dict[str, Image.Image] = {}

    def __call__(self, name: str, image: np.ndarray, truth: np.ndarray, pred: np.ndarray, miou: float | None) -> None:
        title = f"{name}  mIoU {miou:.3f}" if miou is not None else f"{name}  (no parts)"
        grid = prediction_grid(image, truth, pred, self.taxonomy, title)
        stem = Path(name).stem
        write_atomic(self.out_dir / f"{stem}.jpg", lambda p: grid.save(p, format="JPEG", quality=85))
        self.grids[name] = grid

    def sheets(self, per_image: list[dict[str, Any]], n: int = 6) -> dict[str, Path]:
        """``worst.png`` and ``best.png``: the ``n`` images of lowest and highest per-image part-mIoU."""
        written = {}
        for label, rows in zip(("worst", "best"), rank_images(per_image, n), strict=True):
            if not rows:
                continue
            title = f"{label.capitalize()} {len(rows)} images by part-mIoU"  # val split or photos alike
            sheet = contact_sheet([self.grids[r["file_name"]] for r in rows], title)
            path = self.out_dir.parent / f"{label}.png"
            write_atomic(path, lambda p, s=sheet: s.save(p, format="PNG"))
            written[label] = path
        return written


def rank_images(per_image: list[dict[str, Any]], n: int) -> tuple[list[dict], list[dict]]:
    """(worst n ascending, best n descending) by per-image part-mIoU; images without parts left out."""
    scored = sorted((r for r in per_image if r["miou_parts"] is not None), key=lambda r: r["miou_parts"])
    return scored[:n], scored[::-1][:n]


def figure_set(summary: dict[str, Any], taxonomy: Taxonomy, out_dir: Path) -> dict[str, Path]:
    """The evaluation figures: per-class IoU bars, the confusion matrix and the reliability diagram."""
    figures = {
        "per_class_iou": plot_per_class_iou(summary, taxonomy, out_dir / "per_class_iou.png"),
        "confusion_matrix": plot_confusion(summary, taxonomy, out_dir / "confusion_matrix.png"),
    }
    calibration = summary.get("calibration")
    if calibration and calibration["ece_before"] is not None:
        figures["reliability"] = plot_reliability(calibration, out_dir / "reliability.png")
    return figures


def confused_rows(pairs: list[dict[str, Any]]) -> str:
    """Table rows of confused pairs: truth, predicted, share, pixels, the images they mostly come from."""
    return "".join(
        f"<tr><td>{html.escape(c['truth'])}</td><td>{html.escape(c['predicted'])}</td><td>{c['share']:.1%}</td>"
        f"<td>{c['pixels']}</td><td>{html.escape(source_text(c))}</td></tr>"
        for c in pairs
    )


def boundary_section(boundary: dict[str, Any] | None) -> str:
    """Boundary against region errors: the terminal's line, then the confused pairs away from the boundaries."""
    if not boundary:
        return ""
    return f"""<h2>Boundary and region errors</h2>
<p>{html.escape(boundary_text(boundary))}. Region errors, the pixels away from every true boundary:</p>
<table><tr><th>truth</th><th>predicted</th><th>share</th><th>pixels</th><th>mostly from (share of the pixels)</th></tr>
{confused_rows(boundary["confused_pairs_interior"])}</table>"""


def label_checks_section(checks: list[dict[str, Any]] | None) -> str:
    """The annotations the model mostly calls another part (:class:`carparts.metrics.LabelChecks`)."""
    if not checks:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(c['file_name'])}</td><td>{c['annotation_id']}</td><td>{html.escape(c['label'])}</td>"
        f"<td>{html.escape(c['predicted'])}{' (the other side)' if c['mirror'] else ''}</td><td>{c['share']:.0%}</td>"
        f"<td>{c['confidence']:.2f}</td><td>{c['pixels']}</td></tr>"
        for c in checks
    )
    return f"""<h2>Labels to check</h2>
<p>Annotations the model calls another part on most of their pixels, the most confident first: a wrong label, or a
model error, for a person to decide.</p>
<table><tr><th>image</th><th>annotation id</th><th>label</th><th>predicted on most of it</th><th>share</th>
<th>mean confidence</th><th>pixels</th></tr>
{rows}</table>"""


def write_html(
    out_dir: Path,
    title: str,
    summary: dict[str, Any],
    taxonomy: Taxonomy,
    figures: dict[str, Path],
    grids: list[Path],
    config: dict[str, Any] | None,
) -> Path:
    """One page opening from disk: headline figures, per-class table, charts, sheets, grids and config."""

    def fmt(value: float | None) -> str:
        return "absent" if value is None else f"{value:.4f}"

    def rel(path: Path) -> str:
        return html.escape(path.relative_to(out_dir).as_posix())

    headline = "".join(f"<tr><th>{label}</th><td>{fmt(summary.get(key))}</td></tr>" for key, label in HEADLINE.items())
    if summary.get("interval"):
        interval = summary["interval"]
        low, high = interval["miou_parts"]
        headline += (
            f"<tr><th>mIoU over the parts, {interval['level']:.0%} interval over the images (bootstrap, "
            f"{interval['draws']} draws)</th><td>{low:.4f} to {high:.4f}</td></tr>"
        )
    calibration = summary.get("calibration") or {}
    if calibration.get("ece_before") is not None:
        headline += (
            f"<tr><th>calibration error (ECE, {calibration['bins']} bins, pixels)</th><td>"
            f"{calibration['ece_before']:.4f} at temperature 1, {calibration['ece_after']:.4f} at "
            f"{calibration['temperature']:.3f}</td></tr>"
        )
    per_class = "".join(
        f"<tr><td><span class='sw' style='background:rgb{tuple(taxonomy.colours[i])}'></span>{html.escape(name)}</td>"
        f"<td>{fmt(row['iou'])}</td><td>{fmt(row['dice'])}</td><td>{row['pixels']}</td></tr>"
        for i, (name, row) in enumerate(summary["per_class"].items())
    )
    confused = confused_rows(summary.get("confused_pairs", []))
    images = "".join(
        f"<figure><img src='{rel(p)}' alt='{key}'><figcaption>{key.replace('_', ' ')}</figcaption></figure>"
        for key, p in figures.items()
    )
    grid_links = "".join(f"<a href='{rel(p)}'><img class='thumb' src='{rel(p)}' alt='{p.stem}'></a>" for p in grids)
    config_block = f"<h2>Config</h2><pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>" if config else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 10px; text-align: left; }}
.sw {{ display: inline-block; width: 12px; height: 12px; margin-right: 6px; border: 1px solid #000; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }}
figure img {{ max-width: 100%; }}
.thumb {{ width: 340px; margin: 2px; border: 1px solid #ddd; }}
pre {{ background: #f6f6f6; padding: 1em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Model <code>{html.escape(str(summary.get("model", "")))}</code> on {summary.get("images", "?")} images
({html.escape(str(summary.get("split", "")))} split, scored at native resolution).</p>
<table>{headline}</table>
{images}
<h2>Per class</h2>
<table><tr><th>class</th><th>IoU</th><th>Dice</th><th>true pixels</th></tr>{per_class}</table>
<h2>Most confused parts</h2>
<p>Share of a part's true pixels predicted as another part (background left out).</p>
<table><tr><th>truth</th><th>predicted</th><th>share</th><th>pixels</th><th>mostly from (share of the pixels)</th></tr>
{confused}</table>
{boundary_section(summary.get("boundary"))}
{label_checks_section(summary.get("label_checks"))}
{robustness_section(summary.get("robustness"), out_dir)}
<h2>Validation predictions</h2>
<p>photo | truth | prediction | errors (wrong pixels in red)</p>
{grid_links}
{config_block}
</body></html>
"""
    path = out_dir / "report.html"
    write_atomic(path, lambda p: p.write_text(page))
    return path


def report_evaluation(
    predictor, data: str | Path, split: str, out_dir: Path, progress: bool = True, robustness: dict | None = None
) -> dict[str, Any]:
    """Evaluate ``predictor`` with grids saved along the way, then write figures and ``report.html`` into
    ``out_dir``; ``robustness`` (:func:`carparts.robustness.score_corruptions`) adds its section to the page."""
    summary, figures, grids = evaluate_with_figures(predictor, data, split, out_dir, out_dir, progress)
    if robustness is not None:
        summary["robustness"] = robustness
    title = f"Evaluation of {predictor.info.model_id}"
    write_html(out_dir, title, summary, predictor.info.taxonomy, figures, grids, None)
    return summary


def evaluate_with_figures(
    predictor, data: str | Path, split: str, out_dir: Path, metrics_dir: Path, progress: bool
) -> tuple[dict[str, Any], dict[str, Path], list[Path]]:
    """Evaluate once, drawing a grid per image; then per-class, confusion and best/worst figures."""
    from carparts.evaluate import evaluate

    taxonomy = predictor.info.taxonomy
    writer = GridWriter(out_dir / "val_predictions", taxonomy)
    summary = evaluate(None, data, split, metrics_dir, progress=progress, on_image=writer, predictor=predictor)
    figures = figure_set(summary, taxonomy, out_dir)
    figures.update(writer.sheets(summary["per_image"]))
    return summary, figures, sorted((out_dir / "val_predictions").glob("*.jpg"))


def report_run(run_dir: str | Path, progress: bool = True) -> Path:
    """Write the full report of a training run into its folder; return the path of ``report.html``."""
    from carparts.predict import Predictor

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CarpartsError(f"{run_dir}: run folder not found")
    epochs = read_json(run_dir / "metrics.json", "metrics file (has the run finished an epoch?)").get("epochs")
    if not epochs:
        raise CarpartsError(f"{run_dir / 'metrics.json'}: no epochs recorded yet")
    if not (run_dir / "model.json").is_file():
        raise CarpartsError(f"{run_dir / 'model.json'}: no exported model (did training finish?)")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    predictor = Predictor.from_path(run_dir)
    data = predictor.info.recipe.get("data", config.get("data"))
    charts = {"charts": plot_training_curves(epochs, run_dir / "charts.png")}
    if predictor.info.recipe.get("val_fraction") == 0:  # trained on every image: curves only, nothing held out
        summary = {"model": predictor.info.model_id, "images": 0, "split": "no val", "per_class": {}}
        return write_html(run_dir, f"Training run {run_dir.name}", summary, predictor.info.taxonomy, charts, [], config)
    summary, figures, grids = evaluate_with_figures(predictor, data, "val", run_dir, run_dir / "eval_val", progress)
    figures = {**charts, **figures}
    return write_html(run_dir, f"Training run {run_dir.name}", summary, predictor.info.taxonomy, figures, grids, config)
