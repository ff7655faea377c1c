"""Where the files that ship inside the package live: the bundled models, sample photos and hand labels."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
DEFAULT_MODEL = ASSETS / "default"
"""The bundled default model (``fast`` recipe, fp16): what every command uses without ``--model``."""
SEED1_MODEL = ASSETS / "seed1"
"""A second seed of the default model's recipe, the ``accurate`` configuration's second member."""
ACCURATE_MODELS = (DEFAULT_MODEL, SEED1_MODEL)
SAMPLES = ASSETS / "samples"
"""A few photos of the training set's validation split (credited in ``CREDITS.md`` there): demo, ONNX parity
check, benchmark and load test."""
CAR_LABELS = ASSETS / "car_labels.csv"
"""Hand-labelled car viewpoints of the validation split, for ``carparts cars``."""
