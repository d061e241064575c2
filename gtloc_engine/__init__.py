"""gtloc_engine: GT-Loc, one embedding space for images, places (lat_deg, lon_deg) and capture times."""

__version__ = "0.1.0"

from gtloc_engine.errors import GtlocError  # noqa: E402  (public error type)

__all__ = ["GtlocError", "__version__"]
