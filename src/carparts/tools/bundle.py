"""Make a trained run the bundled default model: fp16 weights + model.json in ``carparts/assets/default``.

Usage: ``python -m carparts.tools.bundle runs/<name>`` (``make bundle`` trains and bundles in one go). It re-measures
the fp16 copy on the run's validation split and on the real test photos (``PHOTOS_DATA``) and writes the measured
part of ``docs/model_card.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

from carparts.calibration import calibrate
from carparts.config import PHOTOS_DATA
from carparts.evaluate import evaluate, headline
from carparts.images import write_atomic
from carparts.metrics import HEADLINE
from carparts.models import SPLIT_FILE, ModelInfo, load_model, resolve_model_path, save_model
from carparts.paths import DEFAULT_MODEL

DOCS = Path(__file__).resolve().parents[3] / "docs"


def bundle(
    run_dir: Path, target: Path | None = None, card: Path | None = DOCS / "model_card_figures.md",
    photos: str | Path = PHOTOS_DATA, input_size: int | None = None,
) -> Path:  # fmt: skip
    """Save the run's model in fp16 as the default, re-measured after the cast on its validation split and on the
    real test photos."""
    target = target or DEFAULT_MODEL
    model, info = load_model(run_dir)
    info.input_size = input_size or info.input_size  # the size the bundled model runs at, when not its training size
    save_model(model, info, target, fp16=True)
    if info.split is not None:  # the validation split the run was trained with travels with the model
        (target / SPLIT_FILE).write_text(json.dumps(info.split, indent=1))
    calibration = calibrate(target, info.recipe["data"], split="val", progress=False)  # the fp16 copy's own
    info.temperature = calibration["temperature"]
    summary = evaluate(target, info.recipe["data"], split="val", progress=False)
    photos_summary = evaluate(target, photos, split="all", progress=False)
    info.metrics["val_native"] = headline(summary)
    info.metrics["photos_native"] = headline(photos_summary)
    info.metrics["calibration"] = calibration
    info.metrics["ece"] = {
        data: {"before": result["calibration"]["ece_before"], "after": result["calibration"]["ece_after"]}
        for data, result in (("val", summary), ("photos", photos_summary))
    }
    save_model(model, info, target, fp16=True)
    if card is not None:
        write_atomic(card, lambda p: p.write_text(model_card_figures(info, summary, photos_summary)))
    return resolve_model_path(target)


def model_card_figures(info: ModelInfo, summary: dict[str, Any], photos: dict[str, Any]) -> str:
    """The measured half of the model card: recipe, metrics per class on the validation split and on the real
    photos, the most confused parts and the worst images."""
    val, real = info.metrics["val_native"], info.metrics["photos_native"]
    ev, ep = info.metrics["ece"]["val"], info.metrics["ece"]["photos"]
    recipe = info.recipe

    def fmt(value: float | None) -> str:
        return "absent" if value is None else f"{value:.3f}"

    rows = "\n".join(
        f"| {name} | {fmt(r['iou'])} | {fmt(photos['per_class'][name]['iou'])} |"
        for name, r in summary["per_class"].items()
    )
    confused = "\n".join(f"| {c['truth']} | {c['predicted']} | {c['share']:.1%} |" for c in photos["confused_pairs"])
    headline = "\n".join(f"| {label} | {val[key]:.4f} | {real[key]:.4f} |" for key, label in HEADLINE.items())
    scored = sorted((r for r in photos["per_image"] if r["miou_parts"] is not None), key=lambda r: r["miou_parts"])
    worst = ", ".join(f"{r['file_name']} ({r['miou_parts']:.2f})" for r in scored[:8])
    r = recipe
    return f"""<!-- written by `python -m carparts.tools.bundle {r.get("out", "runs")}/{r.get("name")}`; do not edit -->
## Measured figures

Model `{info.model_id}` (fp16 weights, as bundled), input policy `{info.resize}` at {info.input_size} px.
Validation split: {val["images"]} images of the training set (split seed {recipe.get("split_seed")}, fraction
{recipe.get("val_fraction")}), scored by `carparts evaluate --split val`; real photos: the {real["images"]} test
photos of `{photos["data"]}` at their own sizes, scored by `carparts evaluate --data {photos["data"]}`. Both at
native resolution on {platform.machine()}, CPU, torch backend, no TTA. Checkpoints are chosen on the validation
split; the photos are never trained on.

| metric | val split | real photos |
|---|---|---|
{headline}
| calibration error (ECE, 15 bins, pixels) at temperature 1 | {ev["before"]:.4f} | {ep["before"]:.4f} |
| calibration error at the stored temperature {info.temperature} | {ev["after"]:.4f} | {ep["after"]:.4f} |

The temperature was fitted on the validation split of the fp16 copy (`carparts calibrate`).

Recipe: {r.get("arch")} + {r.get("encoder")} ({r.get("encoder_weights")} weights), {r.get("img_size")}px
input, {recipe.get("epochs")} epochs, batch {recipe.get("batch_size")}, {recipe.get("optimizer")} lr {recipe.get("lr")}
wd {recipe.get("weight_decay")}, {recipe.get("scheduler")} schedule with {recipe.get("warmup_epochs")} warm-up epoch(s),
loss {recipe.get("loss")}, augmentation `{recipe.get("augment")}`.

| class | IoU val | IoU photos |
|---|---|---|
{rows}

Most confused parts on the real photos (share of the true part's pixels predicted as the other part):

| truth | predicted | share |
|---|---|---|
{confused}

Worst real photos by part-mIoU: {worst}.
"""


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m carparts.tools.bundle", description=__doc__.split("\n")[0])
    parser.add_argument("run", help="run folder to bundle")
    parser.add_argument("--input-size", type=int, help="px the bundled model runs at (default: training size)")
    args = parser.parse_args()
    print(f"bundled {bundle(Path(args.run), input_size=args.input_size)}")
