"""``python -m carparts``: the same as the ``carparts`` command (and how Lightning relaunches it per device)."""

import sys

from carparts.cli import main

sys.exit(main())
