"""Where the files that ship inside the package live: the bundled models, sample photos and hand labels."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
DEFAULT_MODEL = ASSETS / "default"
"""The bundled default model (``fast`` recipe, fp16): what every command uses without ``--model``."""
ACCURATE_MODEL = ASSETS / "accurate"
"""The bundled accurate model (``accurate`` recipe: FPN + Lite2 trained at 448 px, fp16), bundled to run at 512 px."""
ACCURATE_MODELS = (ACCURATE_MODEL,)
"""The ``accurate`` configuration's models, each at its own bundled input size with its mirrored view (averaging it
with Lite1 models trained at 448 px lowered the real-photo figure; docs/experiments.md, row P43)."""
SAMPLES = ASSETS / "samples"
"""A few photos of the training set's validation split (credited in ``CREDITS.md`` there): demo, ONNX parity
check, benchmark and load test."""
CAR_LABELS = ASSETS / "car_labels.csv"
"""Hand-labelled car viewpoints of the validation split, for ``carparts cars``."""
