"""Galleries a user brings: places (N, 2) lat/lon degrees and times (N, 5) local month, day, hour, minute, second.

Places come as `.npy` ((N, 2) numbers, lat then lon, as the authors' mp16.npy) or `.csv` (a header whose first two
columns are LAT,LON, lat,lon or lat_deg,lon_deg, as GeoCLIP's coordinates_100K.csv). Times come as `.npy` ((N, 5),
as the authors' cvt.npy). `.npy` files are read with allow_pickle=False: no object arrays, nothing unpickled.
The authors' galleries are CC BY-NC 4.0 and never ship with gtloc.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from gtloc_engine.errors import GtlocError
from gtloc_engine.timecode import check_time_fields

_PLACE_HEADERS = (("lat", "lon"), ("lat_deg", "lon_deg"))


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise GtlocError(f"{what} {path} is not a readable numeric .npy file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise GtlocError(f"{what} {path} holds {getattr(array, 'dtype', type(array))}, not numbers")
    return array


def read_place_gallery(path: str | Path) -> np.ndarray:
    """(N, 2) float64 lat/lon degrees from a .npy or .csv gallery, checked for shape, range and finiteness."""
    path = Path(path)
    if not path.is_file():
        raise GtlocError(f"place gallery {path} not found; pass an (N, 2) lat/lon .npy or a LAT,LON .csv")
    if path.suffix.lower() == ".npy":
        latlon = _load_npy(path, "place gallery").astype(np.float64)
    elif path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            header = [h.strip().lower() for h in next(csv.reader(f), [])[:2]]
        if tuple(header) not in _PLACE_HEADERS:
            raise GtlocError(f"place gallery {path} has header {header}, expected LAT,LON (or lat_deg,lon_deg) first")
        try:
            latlon = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1), dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise GtlocError(f"place gallery {path} has a row that is not two numbers ({exc})") from None
    else:
        raise GtlocError(f"place gallery {path} must be a .npy or .csv file")
    if latlon.ndim != 2 or latlon.shape[1] != 2 or len(latlon) == 0:
        raise GtlocError(f"place gallery {path} has shape {latlon.shape}; expected (N, 2) lat/lon degrees")
    bad = ~np.isfinite(latlon).all(axis=1) | (np.abs(latlon[:, 0]) > 90) | (np.abs(latlon[:, 1]) > 180)
    if bad.any():
        raise GtlocError(f"place gallery {path}: {int(bad.sum())} of {len(latlon)} rows are not lat in [-90, 90], "
                         "lon in [-180, 180] degrees (is it lon/lat?)")
    return latlon


def read_time_gallery(path: str | Path) -> np.ndarray:
    """(N, 5) float64 local (month, day, hour, minute, second) rows from a .npy gallery (e.g. the authors' cvt.npy)."""
    path = Path(path)
    if not path.is_file():
        raise GtlocError(f"time gallery {path} not found; pass an (N, 5) month, day, hour, minute, second .npy")
    if path.suffix.lower() != ".npy":
        raise GtlocError(f"time gallery {path} must be a .npy file of (N, 5) month, day, hour, minute, second rows")
    return check_time_fields(_load_npy(path, "time gallery"), f"time gallery {path}")
