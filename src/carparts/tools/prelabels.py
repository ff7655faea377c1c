"""Check a COCO export of predictions (``carparts predict --coco``): draw its annotations back over the photos with
pycocotools, as a labelling tool shows the pre-labels, and measure the round trip against predict's own masks.

Usage (the figure and numbers in ``docs/labelling.md``)::

    carparts predict src/carparts/assets/samples --out runs/prelabels --coco runs/prelabels.json
    python -m carparts.tools.prelabels runs/prelabels.json --masks runs/prelabels \\
        --out docs/img/labelling_prelabels.jpg --tolerances 0,0.5,1,2

The round trip rasterises the file with the project's own COCO loader (:func:`carparts.data.load_coco`, largest
part first, as training reads it) and counts the pixels where it paints what predict's ``<stem>.png`` holds.
``--tolerances`` re-exports predict's masks at other outline tolerances (the same
:func:`carparts.coco_export.instance_annotations`) and measures each the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pycocotools.coco import COCO

from carparts.classes import Taxonomy
from carparts.coco_export import coco_file, instance_annotations, write_coco
from carparts.data import load_coco
from carparts.images import read_image, write_atomic
from carparts.predict import unique_stems

ALPHA = 0.45


def open_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        return COCO(str(path))


def draw_prelabels(coco: COCO, image_id: int, photo: np.ndarray, taxonomy: Taxonomy) -> Image.Image:
    """The photo with each annotation's ``annToMask`` blended in its class colour (largest first, as the loader
    paints) and its polygon outlined, so the vertices a labeller will drag are visible."""
    colour_of = {cid: taxonomy.colours[i] for i, cid in enumerate(taxonomy.category_ids) if cid is not None}
    annotations = sorted(coco.loadAnns(coco.getAnnIds(imgIds=[image_id])), key=lambda a: -a["area"])
    canvas = photo.astype(np.float32)
    for annotation in annotations:
        inside = coco.annToMask(annotation).astype(bool)
        colour = np.asarray(colour_of.get(annotation["category_id"], (255, 255, 255)), np.float32)
        canvas[inside] = (1 - ALPHA) * canvas[inside] + ALPHA * colour
    image = Image.fromarray(canvas.round().astype(np.uint8))
    draw = ImageDraw.Draw(image)
    width = max(1, photo.shape[1] // 256)
    for annotation in annotations:
        for polygon in annotation["segmentation"]:
            points = list(zip(polygon[0::2], polygon[1::2], strict=True))
            draw.line([*points, points[0]], fill=(255, 255, 255), width=width)
    return image


def preview(coco: COCO, images_dir: Path, taxonomy: Taxonomy, tile: int = 384, columns: int = 2) -> Image.Image:
    """Every image of the file drawn by :func:`draw_prelabels`, ``tile`` px wide, in a grid with a caption each."""
    font = ImageFont.load_default(size=14)
    tiles = []
    for record in coco.dataset["images"]:
        drawn = draw_prelabels(coco, record["id"], read_image(images_dir / record["file_name"]), taxonomy)
        drawn = drawn.resize((tile, round(tile * drawn.height / drawn.width)), Image.Resampling.LANCZOS)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[record["id"]]))
        caption = f"{record['file_name']}: {len(annotations)} part instances"
        if annotations and "score" in annotations[0]:
            caption += f", mean score {np.mean([a['score'] for a in annotations]):.2f}"
        framed = Image.new("RGB", (tile, drawn.height + 22), (255, 255, 255))
        framed.paste(drawn, (0, 22))
        ImageDraw.Draw(framed).text((4, 3), caption, fill=(0, 0, 0), font=font)
        tiles.append(framed)
    rows = [tiles[k : k + columns] for k in range(0, len(tiles), columns)]
    heights = [max(t.height for t in row) for row in rows]
    grid = Image.new("RGB", (columns * tile + (columns - 1) * 4, sum(heights) + 4 * (len(rows) - 1)), (255,) * 3)
    for r, row in enumerate(rows):
        for c, framed in enumerate(row):
            grid.paste(framed, (c * (tile + 4), sum(heights[:r]) + 4 * r))
    return grid


def round_trip(coco_path: Path, masks_dir: Path) -> dict[str, float | int]:
    """Pixels where :func:`carparts.data.load_coco` paints the file's annotations as predict's masks say, over all
    pixels and over the pixels that are a part in either."""
    data = load_coco(coco_path, check_files=False)  # masks come from annotations and sizes alone
    stems = unique_stems([Path(record["file_name"]) for record in data.images])
    agree = total = part_agree = part_total = 0
    for k, stem in enumerate(stems):
        predicted = np.asarray(Image.open(masks_dir / f"{stem}.png"))
        painted = data.read_mask(k)
        parts = (predicted > 0) | (painted > 0)
        agree += int((painted == predicted).sum())
        total += predicted.size
        part_agree += int((painted == predicted)[parts].sum())
        part_total += int(parts.sum())
    return {
        "photos": len(stems), "pixels": total, "agreement": agree / total, "part_pixels": part_total,
        "part_agreement": part_agree / part_total if part_total else 1.0,
    }  # fmt: skip


def tolerance_rows(coco_path: Path, masks_dir: Path, tolerances: list[float], scratch: Path) -> list[dict]:
    """The round trip, outline vertices and file size with predict's masks re-exported at each tolerance."""
    source = json.loads(coco_path.read_text())
    taxonomy = Taxonomy.from_coco_categories(source["categories"])
    stems = unique_stems([Path(record["file_name"]) for record in source["images"]])
    masks = [np.asarray(Image.open(masks_dir / f"{stem}.png")) for stem in stems]
    rows = []
    for tolerance in tolerances:
        photos = [
            {"width": w, "height": h, "annotations": instance_annotations(m, taxonomy, None, tolerance)}
            for m, (h, w) in zip(masks, (m.shape for m in masks), strict=True)
        ]
        names = [record["file_name"] for record in source["images"]]
        path = scratch / f"tolerance_{tolerance}.json"
        write_coco(path, coco_file(photos, names, taxonomy, source.get("info", {})))
        vertices = sum(len(p) // 2 for photo in photos for a in photo["annotations"] for p in a["segmentation"])
        rows.append({"tolerance": tolerance, **round_trip(path, masks_dir), "vertices": vertices,
                     "file_kb": round(path.stat().st_size / 1024, 1)})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("coco", type=Path, help="the COCO file carparts predict --coco wrote")
    parser.add_argument("--images", type=Path, help="folder the file names are relative to (default: the file's root)")
    parser.add_argument("--masks", type=Path, help="predict's --out folder: also measure the round trip")
    parser.add_argument("--out", type=Path, help="write the drawing here (JPEG or PNG)")
    parser.add_argument("--tile", type=int, default=384, help="width of each photo in the drawing, px (default 384)")
    parser.add_argument("--tolerances", help="with --masks: also re-export at these tolerances, e.g. 0,0.5,1,2")
    args = parser.parse_args(argv)
    coco = open_coco(args.coco)
    if args.out:
        images_dir = args.images or Path(coco.dataset.get("info", {}).get("root", args.coco.parent))
        taxonomy = Taxonomy.from_coco_categories(coco.dataset["categories"])
        drawing = preview(coco, images_dir, taxonomy, args.tile)
        fmt = "PNG" if args.out.suffix.lower() == ".png" else "JPEG"
        write_atomic(args.out, lambda p: drawing.save(p, format=fmt, quality=85))
        print(f"{args.out}: {len(coco.dataset['images'])} photo(s), {args.out.stat().st_size // 1024} KB")
    if args.masks:
        figures = round_trip(args.coco, args.masks)
        print(json.dumps(figures))
        print(
            f"round trip: {100 * figures['agreement']:.2f} % of {figures['pixels']} pixels ({figures['photos']} "
            f"photos) painted back as predicted; {100 * figures['part_agreement']:.2f} % of the "
            f"{figures['part_pixels']} part pixels"
        )
    if args.masks and args.tolerances:
        print("| tolerance (px) | pixels painted back | part pixels painted back | outline vertices | file |")
        print("|---|---|---|---|---|")
        with tempfile.TemporaryDirectory() as scratch:
            tolerances = [float(t) for t in args.tolerances.split(",")]
            for row in tolerance_rows(args.coco, args.masks, tolerances, Path(scratch)):
                print(
                    f"| {row['tolerance']:g} | {100 * row['agreement']:.2f} % | {100 * row['part_agreement']:.2f} % "
                    f"| {row['vertices']} | {row['file_kb']} KB |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
