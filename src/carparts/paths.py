"""Where the files that ship inside the package live: the bundled models, sample photos and hand labels."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
DEFAULT_MODEL = ASSETS / "default"
"""The bundled default model (``fast`` recipe, fp16): what every command uses without ``--model``."""
ACCURATE_MODELS = (DEFAULT_MODEL,)
"""The ``accurate`` configuration's models: the bundled model alone (a second seed of the earlier recipe lowered
the real-photo figure; docs/experiments.md, real-photo rows)."""
SAMPLES = ASSETS / "samples"
"""A few photos of the training set's validation split (credited in ``CREDITS.md`` there): demo, ONNX parity
check, benchmark and load test."""
CAR_LABELS = ASSETS / "car_labels.csv"
"""Hand-labelled car viewpoints of the validation split, for ``carparts cars``."""
