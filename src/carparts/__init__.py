"""carparts: find and outline the parts of cars in photos."""

from carparts.classes import CARPARTS, Taxonomy
from carparts.errors import CarpartsError

__version__ = "0.1.0"
__all__ = ["CARPARTS", "CarpartsError", "Taxonomy", "__version__"]
