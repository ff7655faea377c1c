"""The project's exception: a message a user can act on, printed by the CLI in one line."""


class CarpartsError(Exception):
    """A user-facing error (bad input, missing file, unreachable weights). The message names the file."""
