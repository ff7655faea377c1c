"""Post-hoc logit adjustment (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021) scored on a
labelled folder: each pixel's class is the argmax of the model's scores plus ``tau * log(1 / s_c)``, ``s_c`` the
class's share of the pixels of a training set's masks. ``tau > 0`` favours the rare parts (what a class-weighted
loss would teach), ``tau < 0`` the frequent ones, 0 is the model as it is. The network runs once per photo; every
``tau`` reuses its scores.

Usage (docs/experiments.md, P87)::

    python -m carparts.tools.logit_adjust --accurate --taus=-0.2,-0.1,0,0.1,0.2,0.5 --out runs/logit-adjust.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from carparts.cli import add_inference_options, apply_accurate, load_predictor_from
from carparts.config import PHOTOS_DATA, TrainConfig
from carparts.data import class_weights, load_coco
from carparts.errors import CarpartsError
from carparts.images import write_atomic
from carparts.metrics import ConfusionMatrix
from carparts.predict import Predictor, upsample_argmax


def class_bias(train_data: str | Path) -> torch.Tensor:
    """``log(1 / s_c)`` per class index up to a constant, ``s_c`` the class's pixel share in every mask of
    ``train_data`` (:func:`carparts.data.class_weights` at power 1)."""
    coco = load_coco(train_data)
    return torch.tensor(class_weights(coco, range(len(coco.images)), 1.0)).log()


def sweep(
    predictor: Predictor, data: str | Path, bias: torch.Tensor, taus: list[float], progress: bool = True
) -> dict[float, dict[str, Any]]:
    """The metrics of every ``tau`` on every annotated photo of ``data`` at native size (``evaluate``'s figures at
    ``tau = 0``); a photo that cannot be read is named on stderr and left out."""
    coco = load_coco(data)
    matrices = {tau: ConfusionMatrix(coco.taxonomy.num_classes) for tau in taus}
    for index in tqdm(range(len(coco.images)), desc="logit adjustment", unit="img", disable=not progress):
        try:
            image, truth, _ = coco.read_annotated(index)
        except CarpartsError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        scores = predictor.logits(image).float()
        for tau in taus:
            matrices[tau].update(truth, upsample_argmax(scores + tau * bias[:, None, None], *truth.shape))
    names, pairs = coco.taxonomy.names, coco.taxonomy.left_right_pairs
    return {tau: matrix.summary(names, pairs) for tau, matrix in matrices.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_inference_options(parser)
    parser.add_argument("--data", default=PHOTOS_DATA, help=f"COCO folder to score (default {PHOTOS_DATA})")
    parser.add_argument(
        "--train-data",
        default=TrainConfig().data,
        help="COCO folder whose pixel shares give the bias (default %(default)s)",
    )
    parser.add_argument("--taus", default="-0.1,0,0.1,0.2", help="comma-separated values of tau (default %(default)s)")
    parser.add_argument("--out", type=Path, help="JSON file for every tau's metrics")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    apply_accurate(args)
    try:
        taus = [float(t) for t in args.taus.split(",")]
    except ValueError:
        print(f"error: --taus {args.taus}: not a comma-separated list of numbers", file=sys.stderr)
        return 2
    try:
        results = sweep(load_predictor_from(args), args.data, class_bias(args.train_data), taus, not args.quiet)
    except CarpartsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("tau     part-mIoU  pixel accuracy  left/right confusion")
    for tau, summary in results.items():
        swaps = summary["left_right_confusion"]
        print(f"{tau:<7g} {summary['miou_parts']:.4f}     {summary['pixel_accuracy']:.4f}          "
              f"{'absent' if swaps is None else f'{swaps:.4f}'}")  # fmt: skip
    if args.out:
        record = {
            "data": str(args.data),
            "train_data": str(args.train_data),
            "taus": {str(t): results[t] for t in taus},
        }
        write_atomic(args.out, lambda path: path.write_text(json.dumps(record, indent=1)))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
