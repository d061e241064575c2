"""The UTC offset of a place at a moment: the real (IANA) time zone, daylight saving included, from coordinates.

Which zone a place lies in comes from timezonefinder's polygons of the IANA zones (their land and territorial
waters); the zone's rules, DST included, come from the standard library's zoneinfo (the system's tz database, or
the `tzdata` package where the system has none). Only where no IANA zone exists, at open sea, is the nautical
zone used, round(lon / 15) hours, and it is labelled as such (`Zone.nautical`). Everything runs offline.

Public surface (small on purpose; the dataset writer, EXIF claims and manifests with Unix times share it):
    zone_at(lat_deg, lon_deg) -> Zone            the place's zone: IANA key, or a labelled nautical zone
    utc_offset_min(lat_deg, lon_deg, when)       minutes east of UTC in force there at `when`
    zones_at(lat_deg, lon_deg) -> (zones, index)  many places at once (a grid's cells): zones[index[i]]
    Zone.offset_min(when), Zone.localize(naive), Zone.from_utc(instant)

`when` is either an instant or a local wall-clock reading, told apart by type:
    - an aware datetime, Unix seconds (int / float) or a numpy datetime64 (taken as UTC) is an instant;
    - a naive datetime is the local wall clock at that place. A reading that occurs twice (the hour repeated when
      DST ends) takes its first occurrence unless datetime.fold is 1 (PEP 495); one that never occurs (skipped
      when DST starts) gets the offset in force before the change (zoneinfo's rule for fold = 0);
      Zone.localize moves such a reading forward by the gap instead, to a wall-clock time that exists.
"""

from __future__ import annotations

import datetime as _dt
import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

from gtloc_engine.errors import GtlocError, TimeValueError
from gtloc_engine.timecode import utc_offset_min_for_lon

__all__ = ["Zone", "zone_at", "zones_at", "utc_offset_min"]

_FINDER = None
_FINDER_LOCK = threading.Lock()
_UTC = _dt.timezone.utc


def _finder():
    """One timezonefinder instance per process (loading its index costs ~0.2 s)."""
    global _FINDER
    if _FINDER is None:
        with _FINDER_LOCK:
            if _FINDER is None:
                from timezonefinder import TimezoneFinder

                _FINDER = TimezoneFinder()
    return _FINDER


def _check_place(lat_deg, lon_deg) -> tuple[float, float]:
    try:
        lat, lon = float(lat_deg), float(lon_deg)
    except (TypeError, ValueError):
        raise GtlocError(f"place ({lat_deg!r}, {lon_deg!r}) is not a pair of numbers") from None
    if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90.0 or abs(lon) > 180.0:
        raise GtlocError(f"place ({lat_deg}, {lon_deg}) is not a valid lat_deg in [-90, 90], lon_deg in [-180, 180]")
    return lat, lon


def _as_instant(when) -> _dt.datetime | None:
    """An aware UTC datetime for instants; None for a naive (local wall-clock) datetime."""
    if isinstance(when, bool):
        raise TimeValueError(f"time value {when!r} is a boolean, not a time")
    if isinstance(when, _dt.datetime):
        return None if when.tzinfo is None or when.utcoffset() is None else when.astimezone(_UTC)
    if isinstance(when, np.datetime64):
        if np.isnat(when):
            raise TimeValueError("time value is NaT (missing)")
        seconds = float((when - np.datetime64("1970-01-01T00:00:00", "s")) / np.timedelta64(1, "s"))
    elif isinstance(when, (int, float, np.integer, np.floating)):
        seconds = float(when)
    else:
        raise TimeValueError(
            f"time value {when!r} of type {type(when).__name__} is neither a datetime nor Unix seconds")
    if not math.isfinite(seconds):
        raise TimeValueError(f"Unix time {when!r} is not finite")
    try:
        return _dt.datetime.fromtimestamp(seconds, tz=_UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise TimeValueError(f"Unix time {when!r} is out of range ({exc})") from None


@dataclass(frozen=True)
class Zone:
    """A place's time zone: an IANA zone (`name` is its key, e.g. 'Europe/Madrid') or, at open sea, the nautical
    zone of its longitude (`nautical` True, `name` e.g. 'nautical UTC+05:00', a fixed offset without DST)."""

    name: str
    nautical: bool = False
    nautical_offset_min: int = 0  # used only when nautical

    @property
    def tzinfo(self) -> _dt.tzinfo:
        if self.nautical:
            return _dt.timezone(_dt.timedelta(minutes=self.nautical_offset_min), self.name)
        return _zoneinfo(self.name)

    def offset_min(self, when) -> int:
        """Minutes east of UTC in force at `when` (an instant, or a naive local wall-clock reading: see the module)."""
        instant = _as_instant(when)
        offset = (instant.astimezone(self.tzinfo) if instant is not None else when.replace(tzinfo=self.tzinfo)
                  ).utcoffset()
        return int(round(offset.total_seconds() / 60.0))

    def from_utc(self, when) -> _dt.datetime:
        """The aware local datetime at an instant (aware datetime, Unix seconds or datetime64 as UTC)."""
        instant = _as_instant(when)
        if instant is None:
            raise TimeValueError(f"{when!r} is a naive datetime: a local reading, not an instant; use localize")
        return instant.astimezone(self.tzinfo)

    def localize(self, local: _dt.datetime) -> _dt.datetime:
        """A naive local wall-clock reading as an aware datetime in this zone. A reading skipped by a DST change is
        moved forward by the gap (02:30 on a spring-forward night becomes 03:30); a repeated one keeps its fold."""
        if not isinstance(local, _dt.datetime) or local.tzinfo is not None:
            raise TimeValueError(f"localize wants a naive local datetime, got {local!r}")
        aware = local.replace(tzinfo=self.tzinfo)
        # A skipped reading gets the offset in force before the change (PEP 495, fold 0), so its round trip
        # through UTC lands the length of the gap later: the wall clock it would have shown.
        round_trip = aware.astimezone(_UTC).astimezone(self.tzinfo)
        return round_trip if round_trip.replace(tzinfo=None) != local else aware


@lru_cache(maxsize=1024)
def _zoneinfo(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except Exception as exc:  # ZoneInfoNotFoundError, or a key that is not a valid path
        raise GtlocError(f"time zone {name!r} is not in this machine's tz database ({exc}); "
                         "install the `tzdata` package") from None


def _nautical(lon: float) -> Zone:
    offset = int(utc_offset_min_for_lon(lon))
    sign = "+" if offset >= 0 else "-"
    return Zone(f"nautical UTC{sign}{abs(offset) // 60:02d}:00", nautical=True, nautical_offset_min=offset)


@lru_cache(maxsize=65536)
def _zone_at_rounded(lat: float, lon: float) -> Zone:
    name = _finder().timezone_at_land(lng=lon, lat=lat)
    return _nautical(lon) if name is None else Zone(name)


def zone_at(lat_deg, lon_deg) -> Zone:
    """The time zone of a place: its IANA zone (on land and in territorial waters), else the labelled nautical
    zone. Lookups are cached at 1e-6 deg (~0.1 m)."""
    lat, lon = _check_place(lat_deg, lon_deg)
    return _zone_at_rounded(round(lat, 6), round(lon, 6))


def utc_offset_min(lat_deg, lon_deg, when, *, zone: Zone | None = None) -> int:
    """Minutes east of UTC in force at a place at `when`, DST included.

    `when`: an instant (aware datetime, Unix seconds, datetime64 as UTC) or a naive local wall-clock datetime
    (see the module docstring for repeated and skipped readings). `zone` skips the lookup when already known.
    Examples: Madrid in July +120, Kathmandu +345, Shanghai +480, Sydney in January +660.
    """
    return (zone if zone is not None else zone_at(lat_deg, lon_deg)).offset_min(when)


def zones_at(lat_deg, lon_deg) -> tuple[list[Zone], np.ndarray]:
    """The zones of many places at once: (zones, index) with zones[index[i]] == zone_at(lat[i], lon[i]) for the
    flattened places (index has their shape). One batch lookup: the 1M cells of a 0.25 deg grid take ~1.2 s, where
    zone_at one by one takes ~8 s; a few hundred distinct zones come back, so offsets are computed once per zone."""
    lat = np.asarray(lat_deg, dtype=np.float64)
    lon = np.asarray(lon_deg, dtype=np.float64)
    if lat.shape != lon.shape:
        raise GtlocError(f"zones_at: {lat.shape} latitudes but {lon.shape} longitudes")
    flat_lat, flat_lon = lat.ravel(), lon.ravel()
    bad = ~(np.isfinite(flat_lat) & np.isfinite(flat_lon)) | (np.abs(flat_lat) > 90.0) | (np.abs(flat_lon) > 180.0)
    if bad.any():
        i = int(np.argmax(bad))
        _check_place(flat_lat[i], flat_lon[i])  # raises, naming the first bad place
    finder = _finder()
    if hasattr(finder, "timezone_ids_at_land"):
        ids = np.asarray(finder.timezone_ids_at_land(lngs=flat_lon, lats=flat_lat), dtype=np.int64)
        land_ids = np.unique(ids[ids >= 0])
        zones = [Zone(finder.zone_name_from_id(int(i))) for i in land_ids]
        index = np.searchsorted(land_ids, ids)
    else:  # timezonefinder before its batch lookups: the same answers, place by place
        names = [finder.timezone_at_land(lng=float(x), lat=float(y)) for x, y in zip(flat_lon, flat_lat)]
        ids = np.array([-1 if n is None else 0 for n in names], dtype=np.int64)
        land_names = sorted({n for n in names if n is not None})
        zones = [Zone(n) for n in land_names]
        position = {n: i for i, n in enumerate(land_names)}
        index = np.array([position.get(n, 0) for n in names], dtype=np.int64)
    sea = ids < 0
    if sea.any():
        # Open sea: the nautical zone of the longitude, one Zone per distinct offset, labelled as such.
        sea_lon = flat_lon[sea]
        offsets = np.asarray(utc_offset_min_for_lon(sea_lon)).reshape(-1)
        _, first, which = np.unique(offsets, return_index=True, return_inverse=True)
        index[sea] = len(zones) + which
        zones += [_nautical(float(sea_lon[i])) for i in first]
    return zones, index.reshape(lat.shape)
