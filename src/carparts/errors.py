"""The project's exception: a message a user can act on, printed by the CLI in one line."""

import sys


def print_line(message: str) -> None:
    """One line on stderr that starts on a line of its own even while a progress bar is drawn there (tqdm clears
    the bar, prints, redraws it): an error or note met mid-run, where a plain print would follow the bar's text."""
    from tqdm import tqdm  # here, not at the top: every command imports this module, and most print no line

    tqdm.write(message, file=sys.stderr)


class CarpartsError(Exception):
    """A user-facing error (bad input, missing file, unreachable weights). The message names the file."""


class NotAnImageError(CarpartsError):
    """The bytes are not in an image format we can read."""


class DamagedImageError(CarpartsError):
    """A recognised image format whose data is truncated or corrupt."""


class ImageTooLargeError(CarpartsError):
    """The header declares more pixels than the limit (decompression bomb guard)."""
