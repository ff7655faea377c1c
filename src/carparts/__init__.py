"""carparts: find and outline the parts of cars in photos."""

import os

from carparts.classes import CARPARTS, Taxonomy
from carparts.errors import CarpartsError

# albumentations asks PyPI for a newer version on every import (a warning on each run on an offline machine);
# set before any carparts module imports it
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
__all__ = ["CARPARTS", "CarpartsError", "Taxonomy", "__version__"]
