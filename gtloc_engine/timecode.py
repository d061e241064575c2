"""Capture times <-> points on GT-Loc's flat torus (time of year x time of day), torus distance, circular errors, TPS.

A capture time is used as the local wall clock where the photo was taken: the sun and the seasons follow local
time, not UTC. Normalised coordinates are `theta_year` = month position / 12 and `phi_day` = hour / 24, both in
[0, 1); both wrap around, so Dec 31 23:59 sits next to Jan 1 00:00.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Union

import numpy as np

from gtloc_engine.errors import TimeValueError

DAYS_PER_MONTH = 365.0 / 12.0  # the paper's month length for the time-of-year coordinate
TPS_MONTH_SCALE = 6.0  # the largest possible circular month error
TPS_HOUR_SCALE = 12.0  # the largest possible circular hour error

TimeLike = Union[int, float, str, dt.datetime, "LocalTime"]

_EXIF_RE = re.compile(r"^\s*(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(\.\d+)?\s*$")


@dataclass(frozen=True)
class LocalTime:
    """Local calendar fields of a capture time, plus the UTC offset when it is known."""

    year: int
    month: int
    day: int
    hour: int
    minute: int
    second: float
    utc_offset_min: int | None = None

    @property
    def month_pos(self) -> float:
        """Time of year in months, in [0, 12): (month - 1) + (day - 1) / (365/12), as in the paper."""
        return (self.month - 1) + (self.day - 1) / DAYS_PER_MONTH

    @property
    def hour_local(self) -> float:
        """Time of day in hours, in [0, 24)."""
        return self.hour + self.minute / 60.0 + self.second / 3600.0

    @property
    def theta_year(self) -> float:
        return self.month_pos / 12.0

    @property
    def phi_day(self) -> float:
        return self.hour_local / 24.0

    def isoformat(self) -> str:
        whole = int(self.second)
        micro = int(round((self.second - whole) * 1e6))
        stamp = dt.datetime(self.year, self.month, self.day, self.hour, self.minute, whole, min(micro, 999_999))
        if self.utc_offset_min is not None:
            stamp = stamp.replace(tzinfo=dt.timezone(dt.timedelta(minutes=self.utc_offset_min)))
        return stamp.isoformat()


def _from_datetime(value: dt.datetime) -> LocalTime:
    offset = value.utcoffset()
    offset_min = None if offset is None else int(round(offset.total_seconds() / 60.0))
    return LocalTime(
        value.year, value.month, value.day, value.hour, value.minute,
        value.second + value.microsecond / 1e6, offset_min,
    )


def date_at_month_pos(year: int, month_pos: float) -> dt.date:
    """The date of a month position in `year`: the inverse of LocalTime.month_pos ((month - 1) + (day - 1) / (365/12)),
    the day clipped to the month's last (a position past day 28 of February is Feb 28 or 29)."""
    month_pos = float(month_pos) % 12.0
    month = min(int(month_pos), 11) + 1
    day = 1 + int((month_pos - (month - 1)) * DAYS_PER_MONTH + 1e-9)
    next_month = dt.date(year + month // 12, month % 12 + 1, 1)
    return dt.date(year, month, min(day, (next_month - dt.timedelta(days=1)).day))


def utc_offset_min_for_lon(lon_deg):
    """Nautical time zone of a longitude in minutes, round(lon / 15) hours (an int, or an int array).

    Only for open sea, where no IANA zone exists (gtloc_engine.timezones labels it so): on land it is hours off
    (China, Spain, western Russia) or 30-45 minutes (India, Nepal). Halves round away from zero so zones are
    symmetric about Greenwich; 180 and -180 share a zone.
    """
    lon = np.asarray(lon_deg, dtype=np.float64)
    if not np.all(np.isfinite(lon)):
        raise TimeValueError(f"longitude {lon_deg!r} is not finite; cannot derive a time zone from it")
    lon = (lon + 180.0) % 360.0 - 180.0
    offset = (np.sign(lon) * np.floor(np.abs(lon) / 15.0 + 0.5) * 60).astype(np.int64)
    return int(offset) if offset.ndim == 0 else offset


def parse_time(value: TimeLike, *, utc_offset_min: int | None = None) -> LocalTime:
    """Turn Unix seconds, ISO 8601, EXIF 'YYYY:MM:DD HH:MM:SS' or a datetime into local calendar fields.

    Strings and naive datetimes are taken as the local wall clock already. Unix seconds are UTC, so they need
    `utc_offset_min` (the place's real one: gtloc_engine.timezones.utc_offset_min); without it they are an error.
    Aware datetimes and ISO strings with an offset keep their own wall clock.
    """
    if isinstance(value, LocalTime):
        return value
    if isinstance(value, bool):  # bool is an int subclass; a flag is never a timestamp
        raise TimeValueError(f"time value {value!r} is a boolean, not a timestamp")
    if isinstance(value, (int, float, np.integer, np.floating)):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise TimeValueError(f"Unix time {value!r} is not a finite number")
        if utc_offset_min is None:
            raise TimeValueError(f"Unix time {value!r} is UTC and no UTC offset was given to turn it into local time")
        try:
            zone = dt.timezone(dt.timedelta(minutes=utc_offset_min))
            return _from_datetime(dt.datetime.fromtimestamp(seconds, tz=zone))
        except (OverflowError, OSError, ValueError) as exc:
            raise TimeValueError(f"Unix time {value!r} is out of the supported range ({exc})") from None
    if isinstance(value, dt.datetime):
        return _from_datetime(value)
    if isinstance(value, dt.date):
        raise TimeValueError(f"date {value!r} has no time of day; give a date and time")
    if not isinstance(value, str):
        raise TimeValueError(f"time value {value!r} of type {type(value).__name__} is not a timestamp")
    text = value.strip()
    if not text:
        raise TimeValueError("empty time string; give ISO 8601, EXIF 'YYYY:MM:DD HH:MM:SS' or Unix seconds")
    match = _EXIF_RE.match(text)
    try:
        if match:
            year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
            frac = float(match.group(7)) if match.group(7) else 0.0
            parsed = dt.datetime(year, month, day, hour, minute, second)
            local = _from_datetime(parsed)
            return LocalTime(local.year, local.month, local.day, local.hour, local.minute, second + frac)
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError as exc:
        raise TimeValueError(f"time {value!r} is not a valid date and time ({exc})") from None
    if len(text) <= 10 and "T" not in text and " " not in text:
        raise TimeValueError(f"time {value!r} has no time of day; give a date and time")
    return _from_datetime(parsed)


def torus_coords(times: list[TimeLike], **kwargs) -> np.ndarray:
    """(N, 2) array of (theta_year, phi_day) in [0, 1) for a list of times (see parse_time for kwargs)."""
    out = np.empty((len(times), 2), dtype=np.float64)
    for i, value in enumerate(times):
        local = parse_time(value, **kwargs)
        out[i] = (local.theta_year, local.phi_day)
    return out


def time_fields(times: list[TimeLike], **kwargs) -> np.ndarray:
    """(N, 5) float64 local (month, day, hour, minute, second) rows: the authors' time input, fed to
    GTLoc.embed_time_fields, which computes their angles in their float32 order (see parse_time for kwargs)."""
    out = np.empty((len(times), 5), dtype=np.float64)
    for i, value in enumerate(times):
        t = parse_time(value, **kwargs)
        out[i] = (t.month, t.day, t.hour, t.minute, t.second)
    return out


def check_time_fields(fields: np.ndarray, what: str) -> np.ndarray:
    """(N, 5) local (month, day, hour, minute, second) rows in range (a time gallery); TimeValueError otherwise."""
    fields = np.asarray(fields, dtype=np.float64)
    if fields.ndim != 2 or fields.shape[1] != 5 or len(fields) == 0 or not np.all(np.isfinite(fields)):
        raise TimeValueError(f"{what}: expected a non-empty finite (N, 5) array of month, day, hour, minute, second; "
                             f"got shape {fields.shape}")
    lo, hi = np.array([1, 1, 0, 0, 0]), np.array([12, 31, 23, 59, 60])
    bad = ((fields < lo) | (fields > hi)).any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise TimeValueError(f"{what}: row {row} {fields[row].tolist()} is not a local (month 1-12, day 1-31, "
                             f"hour 0-23, minute 0-59, second 0-60) time; {int(bad.sum())} rows are out of range")
    return fields


def _wrapped(diff: np.ndarray, period: float) -> np.ndarray:
    """Shorter way round a circle of the given period."""
    diff = np.abs(np.asarray(diff, dtype=np.float64)) % period
    return np.minimum(diff, period - diff)


def torus_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance on the flat unit torus between (..., 2) arrays of (theta_year, phi_day), broadcasting."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d = _wrapped(a - b, 1.0)
    return np.sqrt((d * d).sum(axis=-1))


def month_error(month_true: np.ndarray, month_pred: np.ndarray) -> np.ndarray:
    """Circular month error min(|dm|, 12 - |dm|), months as continuous positions."""
    return _wrapped(np.asarray(month_true) - np.asarray(month_pred), 12.0)


def hour_error(hour_true: np.ndarray, hour_pred: np.ndarray) -> np.ndarray:
    """Circular hour error min(|dh|, 24 - |dh|)."""
    return _wrapped(np.asarray(hour_true) - np.asarray(hour_pred), 24.0)


def time_prediction_score(month_err: float, hour_err: float) -> float:
    """TPS = 100 (1 - sqrt((month_err/6)^2 + (hour_err/12)^2) / sqrt(2)); 100 is perfect, 0 the worst possible."""
    radius = math.sqrt((month_err / TPS_MONTH_SCALE) ** 2 + (hour_err / TPS_HOUR_SCALE) ** 2)
    return 100.0 * (1.0 - radius / math.sqrt(2.0))


def from_torus(theta_year: np.ndarray, phi_day: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Torus coordinates back to (month position in [0, 12), hour in [0, 24))."""
    return (np.asarray(theta_year) % 1.0) * 12.0, (np.asarray(phi_day) % 1.0) * 24.0


def circular_mean_spread(values: np.ndarray, weights: np.ndarray, period: float) -> tuple[float, float]:
    """Weighted circular mean and circular standard deviation sqrt(-2 ln R), both in the units of `period`."""
    angles = 2.0 * math.pi * np.asarray(values, dtype=np.float64) / period
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    c, s = float((w * np.cos(angles)).sum()), float((w * np.sin(angles)).sum())
    resultant = min(max(math.hypot(c, s), 1e-12), 1.0)
    mean = (math.atan2(s, c) % (2.0 * math.pi)) * period / (2.0 * math.pi)
    spread = math.sqrt(-2.0 * math.log(resultant)) * period / (2.0 * math.pi)
    return mean, spread
