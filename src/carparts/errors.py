"""The project's exception: a message a user can act on, printed by the CLI in one line."""


class CarpartsError(Exception):
    """A user-facing error (bad input, missing file, unreachable weights). The message names the file."""


class NotAnImageError(CarpartsError):
    """The bytes are not in an image format we can read."""


class DamagedImageError(CarpartsError):
    """A recognised image format whose data is truncated or corrupt."""


class ImageTooLargeError(CarpartsError):
    """The header declares more pixels than the limit (decompression bomb guard)."""
