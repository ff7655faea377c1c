"""Make a trained run a bundled model: fp16 weights + model.json in ``carparts/assets/default`` (or ``accurate``).

Usage: ``python -m carparts.tools.bundle runs/<name> [--to accurate]`` (``make bundle`` trains and bundles both in
one go). It re-measures
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
from carparts.config import CROPS, PHOTOS_DATA, TrainConfig
from carparts.errors import CarpartsError
from carparts.evaluate import evaluate, headline
from carparts.images import write_atomic
from carparts.loading import check_crop
from carparts.metrics import HEADLINE, boundary_text, source_text
from carparts.models import SPLIT_FILE, ModelInfo, load_info, load_model, resolve_model_path, save_model
from carparts.paths import ACCURATE_MODEL, DEFAULT_MODEL

DOCS = Path(__file__).resolve().parents[3] / "docs"
TWIN_KEYS = (
    "arch", "encoder", "img_size", "augment", "blur", "repeat_threshold", "presence_weight", "viewpoint_weight",
    "class_weight_power",
)  # fmt: skip
"""What a temperature twin may differ in from the run that borrows its temperature; the model card names it."""
RECIPE_DEFAULTS = TrainConfig().to_dict()
"""A setting's value in a run recorded before the setting existed (its default, which is what that run used)."""
SLOTS = {  # --to: where the model goes, and the file its measured model card goes to
    "default": (DEFAULT_MODEL, DOCS / "model_card_figures.md"),
    "accurate": (ACCURATE_MODEL, DOCS / "model_card_accurate_figures.md"),
}


def bundle(
    run_dir: Path, target: Path | None = None, card: Path | None = DOCS / "model_card_figures.md",
    photos: str | Path = PHOTOS_DATA, input_size: int | None = None, temperature_from: Path | None = None,
    crop: str | None = None, tta: bool = False,
) -> Path:  # fmt: skip
    """Save the run's model in fp16 as the default, calibrated and re-measured after the cast on its validation
    split and on the real test photos.

    A run trained on every image (``--val-fraction 0``) has no validation split: its temperature is then taken
    from ``temperature_from``, a calibrated run of the same recipe that held its split out, and only the photos
    are measured. ``input_size`` and ``crop`` set the bundled model's input policy where not the run's own.
    ``tta``: the model runs with its mirrored view (the accurate slot), so a temperature fitted here is fitted so.
    """
    target = target or DEFAULT_MODEL
    model, info = load_model(run_dir)
    held_out = info.recipe.get("val_fraction", 0.2) > 0
    # read before the target is written: the twin may be the model bundled there now
    borrowed = None if held_out else borrowed_temperature(run_dir, temperature_from, info.recipe)
    info.input_size = input_size or info.input_size  # the size the bundled model runs at, when not its training size
    info.crop = check_crop(crop) if crop else info.crop
    save_model(model, info, target, fp16=True)
    (target / SPLIT_FILE).unlink(missing_ok=True)  # an earlier bundle's split is not this model's
    if info.split is not None:  # the split the run was trained with travels with the model
        (target / SPLIT_FILE).write_text(json.dumps(info.split, indent=1))
    # a held-out run's temperature is fitted on its val split, on the fp16 copy
    calibration = calibrate(target, info.recipe["data"], split="val", progress=False, tta=tta) if held_out else borrowed
    info.temperature = calibration["temperature"]
    save_model(model, info, target, fp16=True)
    results = {"photos": evaluate(target, photos, split="all", tta=tta, progress=False)}
    if held_out:
        results["val"] = evaluate(target, info.recipe["data"], split="val", tta=tta, progress=False)
    info.metrics.pop("val_native", None)
    info.metrics.update({f"{name}_native": headline(summary) for name, summary in results.items()})
    info.metrics["calibration"] = calibration
    info.metrics["ece"] = {
        name: {"before": summary["calibration"]["ece_before"], "after": summary["calibration"]["ece_after"]}
        for name, summary in results.items()
    }
    save_model(model, info, target, fp16=True)
    if card is not None:
        flags = [
            ("--to accurate", target == ACCURATE_MODEL),
            (f"--input-size {input_size}", input_size),
            (f"--temperature-from {temperature_from}", temperature_from),
            (f"--crop {crop}", crop),
        ]
        command = " ".join([f"python -m carparts.tools.bundle {run_dir}", *(flag for flag, given in flags if given)])
        text = model_card_figures(info, results.get("val"), results["photos"], command)
        write_atomic(card, lambda p: p.write_text(text))
    return resolve_model_path(target)


def borrowed_temperature(run_dir: Path, twin: Path | None, recipe: dict[str, Any]) -> dict[str, Any]:
    """The calibration of ``twin``, the same recipe trained with its val split held out, for a run without one
    (``recipe``); where the twin's architecture, encoder or size differ, the calibration says so."""
    if twin is None:
        raise CarpartsError(
            f"{run_dir}: trained on every image, so it has no val split to fit a temperature on; pass "
            "--temperature-from a calibrated run of the same recipe that held its split out"
        )
    twin_info = load_info(twin)
    if twin_info.temperature is None:
        raise CarpartsError(f"{twin}: not calibrated; run `carparts calibrate --model {twin}` first")
    fitted = twin_info.metrics.get("calibration", {})
    # a twin that borrowed its own temperature (a re-bundled model) passes on where it was fitted
    differs = fitted.get("from_differs") or {
        key: recipe_value(twin_info.recipe, key)
        for key in TWIN_KEYS
        if recipe_value(twin_info.recipe, key) != recipe_value(recipe, key)
    }
    borrowed = {**fitted, "temperature": twin_info.temperature, "from": fitted.get("from", twin_info.model_id)}
    return borrowed | ({"from_differs": differs} if differs else {})


def fitted_in(calibration: dict[str, Any]) -> str:
    """How a temperature was fitted, as a clause: the input size and the mirrored view (none for a record made
    before calibrations recorded them)."""
    size = f" at {calibration['input_size']} px" if calibration.get("input_size") else ""
    return size + (" with the mirrored view averaged in (flip TTA)" if calibration.get("tta") else "")


def recipe_value(recipe: dict[str, Any], key: str) -> Any:
    return recipe.get(key, RECIPE_DEFAULTS.get(key))


def augmentation(recipe: dict[str, Any]) -> str:
    """The recipe's augmentation as the model card names it: the level, the camera blur and the repeat-factor
    sampling when there were any."""
    blur, repeat = recipe_value(recipe, "blur"), recipe_value(recipe, "repeat_threshold")
    return (
        f"`{recipe.get('augment')}`"
        + (f" with camera blur on {blur:.0%} of the training photos" if blur else "")
        + (f", photos of rare parts repeated (repeat-factor sampling, threshold {repeat})" if repeat else "")
    )


def loss(recipe: dict[str, Any]) -> str:
    """The recipe's loss as the model card names it, with the cross-entropy's class weights when it had them."""
    power = recipe_value(recipe, "class_weight_power")
    weights = f" (cross-entropy classes weighted by their pixel share to the power -{power})" if power else ""
    return f"{recipe.get('loss')}{weights}"


def lineage(recipe: dict[str, Any]) -> str:
    """The models a run started from and learnt from, by id (``sources`` in its recipe), and the training-only
    image-level heads (parts present, viewpoint) when it had them, as clauses."""
    sources = recipe.get("sources", {})
    clauses = []
    if "init_from" in sources:
        clauses.append(f"; fine-tuned from `{sources['init_from']}`")
    if "distill_from" in sources:
        clauses.append(f"; distilled from `{sources['distill_from']}` (weight {recipe.get('distill_weight')})")
    if recipe_value(recipe, "presence_weight"):
        clauses.append(f"; with a parts-present head in training (weight {recipe['presence_weight']})")
    if recipe_value(recipe, "viewpoint_weight"):
        clauses.append(f"; with a viewpoint head in training (weight {recipe['viewpoint_weight']})")
    return "".join(clauses)


def model_card_figures(info: ModelInfo, summary: dict[str, Any] | None, photos: dict[str, Any], command: str) -> str:
    """The measured half of the model card: recipe, metrics per class on the validation split (when the model held
    one out) and on the real photos, calibration, the most confused parts and the worst images, in the
    configuration they were measured in (``photos["tta"]``: with the mirrored view)."""
    tta = photos["tta"]
    val, real = info.metrics.get("val_native"), info.metrics["photos_native"]
    ev, ep = info.metrics["ece"].get("val"), info.metrics["ece"]["photos"]
    recipe = info.recipe
    calibration = info.metrics["calibration"]

    def fmt(value: float | None, digits: int = 3) -> str:
        return "absent" if value is None else f"{value:.{digits}f}"

    def on_val(value: Any) -> str:
        return "trained on" if summary is None else value

    rows = "\n".join(
        f"| {name} | {on_val(fmt(summary and summary['per_class'][name]['iou']))} | {fmt(r['iou'])} |"
        for name, r in photos["per_class"].items()
    )
    confused = "\n".join(
        f"| {c['truth']} | {c['predicted']} | {c['share']:.1%} | {source_text(c)} |" for c in photos["confused_pairs"]
    )
    headline = "\n".join(
        f"| {label} | {on_val(fmt(val and val[key], 4))} | {real[key]:.4f} |" for key, label in HEADLINE.items()
    )
    boundary = f"On the real photos, {boundary_text(photos['boundary'])}.\n\n" if photos.get("boundary") else ""
    scored = sorted((r for r in photos["per_image"] if r["miou_parts"] is not None), key=lambda r: r["miou_parts"])
    worst = ", ".join(f"{r['file_name']} ({r['miou_parts']:.2f})" for r in scored[:8])
    ece_val = {key: on_val(fmt(ev and ev[key], 4)) for key in ("before", "after")}
    r = recipe
    if summary is None:
        split = (
            f"No validation split: trained on all {len(info.split['train']) if info.split else 'the'} images of the "
            f"training set for a fixed {recipe.get('epochs')} epochs (the count chosen on the split by a run of the "
            f"same recipe that held 20 % out); its last epoch is the model"
        )
        differs = ", ".join(f"{key} {value}" for key, value in calibration.get("from_differs", {}).items())
        fitted = (
            f"The temperature is that of `{calibration.get('from')}`, the same recipe with its split held out"
            f"{f' but with {differs}' if differs else ''}, fitted on {calibration.get('images', '?')} val images"
            f"{fitted_in(calibration)} (`carparts calibrate`)."
        )
    else:
        split = (
            f"Validation split: {val['images']} images of the training set (split seed {recipe.get('split_seed')}, "
            f"fraction {recipe.get('val_fraction')}), scored by `carparts evaluate --split val`; checkpoints are "
            "chosen on it"
        )
        fitted = (
            f"The temperature was fitted on the validation split of the fp16 copy{fitted_in(calibration)} "
            "(`carparts calibrate`)."
        )
    return f"""<!-- written by `{command}`; do not edit -->
## Measured figures

Model `{info.model_id}` (fp16 weights, as bundled), input policy `{info.resize}` at {info.input_size} px.
{split}. Real photos: the {real["images"]} test photos of `{photos["data"]}` at their own sizes, scored by
`carparts evaluate --data {photos["data"]}{" --tta" if tta else ""}`, never trained on. At native resolution on
{platform.machine()}, CPU, torch backend, {"with the mirrored view averaged in (flip TTA)" if tta else "no TTA"}.

| metric | val split | real photos |
|---|---|---|
{headline}
| calibration error (ECE, 15 bins, pixels) at temperature 1 | {ece_val["before"]} | {ep["before"]:.4f} |
| calibration error at the stored temperature {info.temperature} | {ece_val["after"]} | {ep["after"]:.4f} |

{fitted}

Recipe: {r.get("arch")} + {r.get("encoder")} ({r.get("encoder_weights")} weights), {r.get("img_size")}px
input, {recipe.get("epochs")} epochs, batch {recipe.get("batch_size")}, {recipe.get("optimizer")} lr {recipe.get("lr")}
wd {recipe.get("weight_decay")}, {recipe.get("scheduler")} schedule with {recipe.get("warmup_epochs")} warm-up epoch(s),
loss {loss(recipe)}, augmentation {augmentation(recipe)}{lineage(recipe)}.

| class | IoU val | IoU photos |
|---|---|---|
{rows}

Most confused parts on the real photos (share of the true part's pixels predicted as the other part):

| truth | predicted | share | mostly from (share of the pair's pixels) |
|---|---|---|---|
{confused}

{boundary}Worst real photos by part-mIoU: {worst}.
"""


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m carparts.tools.bundle", description=__doc__.split("\n")[0])
    parser.add_argument("run", help="run folder to bundle")
    parser.add_argument("--to", choices=SLOTS, default="default", help="which bundled model it becomes")
    parser.add_argument("--input-size", type=int, help="px the bundled model runs at (default: training size)")
    parser.add_argument("--crop", choices=CROPS, help="the bundled model's crop policy (default: the run's own)")
    parser.add_argument(
        "--temperature-from", type=Path, help="for a run trained on every image: a calibrated run of its recipe"
    )
    args = parser.parse_args()
    try:
        target, card = SLOTS[args.to]
        target = bundle(
            Path(args.run),
            target,
            card,
            input_size=args.input_size,
            temperature_from=args.temperature_from,
            crop=args.crop,
            tta=args.to == "accurate",  # the accurate configuration runs with its mirrored view (`--accurate`)
        )
        print(f"bundled {target}")
    except CarpartsError as e:
        raise SystemExit(f"error: {e}") from None
