"""Make a trained run the bundled default model: fp16 weights + model.json in ``carparts/assets/default``.

Usage: ``python -m carparts.bundle runs/<name>`` (``make bundle`` trains and bundles in one go).
"""

from __future__ import annotations

import sys
from pathlib import Path

from carparts.evaluate import evaluate, headline
from carparts.models import load_model, resolve_model_path, save_model


def bundle(run_dir: Path, target: Path | None = None) -> Path:
    """Save the run's model in fp16 as the default, re-measured on its validation split after the cast."""
    target = target or resolve_model_path(None)
    model, info = load_model(run_dir)
    save_model(model, info, target, fp16=True)
    summary = evaluate(target, info.recipe["data"], split="val", progress=False)
    info.metrics["val_native"] = headline(summary)
    save_model(model, info, target, fp16=True)
    return target


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m carparts.bundle RUN_DIR")
    folder = bundle(Path(sys.argv[1]))
    print(f"bundled {folder}")
