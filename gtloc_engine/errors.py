"""The one error type the engine raises for bad input; its message is a single line a user can act on."""


class GtlocError(Exception):
    """Bad input or state, described in one line: what is wrong, which file or value, what to do."""


class BadPhotoError(GtlocError):
    """A photo that cannot be read safely (missing, empty, truncated, not an image, too large)."""


class CheckpointError(GtlocError):
    """A checkpoint that is missing, corrupt, incomplete or from an incompatible version."""


class TimeValueError(GtlocError, ValueError):
    """A timestamp that cannot be turned into a local date and time."""
