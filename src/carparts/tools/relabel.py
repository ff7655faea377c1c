"""Write a corrected copy of a COCO folder: the annotations a fixes file names get the part they should have, the
images stay where they are (the copy links to them).

Usage (the training set's slips found with ``carparts evaluate``'s "labels to check", README)::

    python -m carparts.tools.relabel ../shared/data/carparts/trainingset --fixes data/trainingset_fixes.csv \\
        --out runs/trainingset-fixed
    carparts train --preset fast --data runs/trainingset-fixed --val-fraction 0 --name fixed-fast

The fixes file is a CSV with a header: ``file_name,annotation_id,polygon,label,new_label,note``. ``label`` must be
the annotation's part now (so a fix cannot land on the wrong annotation, or twice); ``polygon`` empty renames the
whole annotation, a number moves that polygon of it (0 = the first) into a new annotation of ``new_label`` (a
bumper drawn as a second polygon of the windscreen). The copy keeps every image in its order, so ``carparts train``
draws the same val split from it as from the original.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
from pathlib import Path
from typing import Any

from carparts.data import ANNOTATION_FILE
from carparts.errors import CarpartsError
from carparts.images import write_atomic

COLUMNS = ("file_name", "annotation_id", "polygon", "label", "new_label")


def read_fixes(path: Path) -> list[dict[str, str]]:
    """The fixes file's rows, each with its line number in ``line``; a missing column is an error naming it."""
    if not path.is_file():
        raise CarpartsError(f"{path}: fixes file not found")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CarpartsError(f"{path}: no column {', '.join(missing)} in the header (need {', '.join(COLUMNS)})")
        return [row | {"line": str(reader.line_num)} for row in reader]


def apply_fixes(coco: dict[str, Any], fixes: list[dict[str, str]], source: str) -> dict[str, Any]:
    """A copy of ``coco`` with the fixes applied; any row that does not match the file is an error naming its line."""
    fixed = copy.deepcopy(coco)
    category = {c["name"]: c["id"] for c in fixed["categories"]}
    names = {c["id"]: c["name"] for c in fixed["categories"]}
    images = {image["file_name"]: image["id"] for image in fixed["images"]}
    annotations = {ann["id"]: ann for ann in fixed["annotations"]}
    next_id = max(annotations, default=0) + 1
    for row in fixes:
        where = f"{source} line {row['line']}"
        ann = annotations.get(int(row["annotation_id"])) if row["annotation_id"].strip().isdigit() else None
        if ann is None or ann["image_id"] != images.get(row["file_name"]):
            raise CarpartsError(f"{where}: no annotation {row['annotation_id']!r} on image {row['file_name']!r}")
        if names.get(ann["category_id"]) != row["label"]:
            raise CarpartsError(
                f"{where}: annotation {ann['id']} is {names.get(ann['category_id'])!r}, not {row['label']!r} "
                "(already fixed, or the wrong id)"
            )
        if row["new_label"] not in category:
            raise CarpartsError(f"{where}: unknown part {row['new_label']!r}")
        if not row["polygon"].strip():
            ann["category_id"] = category[row["new_label"]]
            continue
        polygons = ann["segmentation"] if isinstance(ann["segmentation"], list) else []
        k = int(row["polygon"]) if row["polygon"].strip().isdigit() else -1
        if not 0 <= k < len(polygons) or len(polygons) < 2:
            raise CarpartsError(
                f"{where}: annotation {ann['id']} has {len(polygons)} polygon(s); polygon {row['polygon']!r} cannot "
                "be split off (leave the column empty to rename the whole annotation)"
            )
        moved = polygons.pop(k)
        xs, ys = moved[0::2], moved[1::2]
        part = {key: value for key, value in ann.items() if key not in ("segmentation", "bbox", "area")}
        part.update(id=next_id, category_id=category[row["new_label"]], segmentation=[moved])
        part.update(bbox=[min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], area=polygon_area(moved))
        fixed["annotations"].append(part)
        next_id += 1
    return fixed


def polygon_area(flat: list[float]) -> float:
    """Shoelace area of a COCO polygon ``[x0, y0, x1, y1, ...]``."""
    xs, ys = flat[0::2], flat[1::2]
    return abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2


def write_fixed_folder(source: Path, fixes_path: Path, out: Path) -> int:
    """Write ``out/annotations.json`` fixed and link every other entry of ``source`` (the images) into ``out``."""
    annotation_file = source / ANNOTATION_FILE
    if not annotation_file.is_file():
        raise CarpartsError(f"{source}: no {ANNOTATION_FILE}")
    if out.resolve() == source.resolve():
        raise CarpartsError(f"{out}: the corrected copy must go to another folder than {source}")
    fixes = read_fixes(fixes_path)
    fixed = apply_fixes(json.loads(annotation_file.read_text()), fixes, str(fixes_path))
    out.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        link = out / entry.name
        if entry.name != ANNOTATION_FILE and not link.exists():
            link.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    write_atomic(out / ANNOTATION_FILE, lambda p: p.write_text(json.dumps(fixed)))
    return len(fixes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="COCO folder: annotations.json and the images")
    parser.add_argument("--fixes", type=Path, required=True, help="CSV of fixes (see the module's help)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the corrected copy into")
    args = parser.parse_args(argv)
    try:
        count = write_fixed_folder(args.source, args.fixes, args.out)
    except CarpartsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {count} fix(es) applied to {args.source / ANNOTATION_FILE}; images linked from {args.source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
