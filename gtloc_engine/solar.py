"""Where the sun is, from first principles: the sun's orbit (NOAA's solar calculator, after Meeus) -> declination
and equation of time -> true solar time -> hour angle -> zenith and azimuth.

Three users: the sun check of a photo's claims (inference/sun_check.py: where the sun was at the claimed place
and time), the shadow locus (inference/shadow.py) and SunWorld, which needs the true sun for every synthetic photo
(sky colour, sun disc, shadows), so that the only signal linking pixels to place and time is the physics a real
photo carries. NOAA's shorter recipe, Spencer's (1971) Fourier series in the fractional year, was fitted to one
year and drifts with the leap-year cycle: against NREL SPA it is off by up to 0.52 deg in declination and 0.9 min
in the equation of time over 2015-2023. The orbital form below costs the same and stays within about 0.01 deg. No
refraction is applied: elevations are geometric (the renderer decides what twilight looks like; sun_check counts
refraction in its -0.833 deg sunrise).

Conventions: latitude north positive, longitude east positive, azimuth clockwise from true north (90 = east),
times are local wall-clock with their offset from UTC in minutes (east of Greenwich positive).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np

from gtloc_engine.errors import TimeValueError
from gtloc_engine.timecode import utc_offset_min_for_lon

__all__ = ["SolarPosition", "solar_position", "utc_offset_min_for_lon", "local_to_utc", "day_of_year"]


@dataclass(frozen=True)
class SolarPosition:
    """The sun seen from (lat_deg, lon_deg) at one local time; every field is an array of the broadcast shape."""

    elevation_deg: np.ndarray  # geometric, above the horizon; negative below it
    azimuth_deg: np.ndarray  # clockwise from true north, in [0, 360)
    zenith_deg: np.ndarray
    declination_deg: np.ndarray
    equation_of_time_min: np.ndarray  # apparent minus mean solar time
    hour_angle_deg: np.ndarray  # 0 at local solar noon, negative in the morning
    true_solar_time_min: np.ndarray  # local apparent solar time, minutes after solar midnight, in [0, 1440)


def _as_datetime64_s(local_datetime) -> np.ndarray:
    """Naive local wall-clock time(s) as datetime64[s]; aware ones are refused so no offset is applied twice."""
    if isinstance(local_datetime, _dt.datetime):
        items = [local_datetime]
    elif isinstance(local_datetime, (list, tuple)):
        items = list(local_datetime)
    else:
        items = None
    if items is not None and any(isinstance(d, _dt.datetime) and d.tzinfo is not None for d in items):
        raise TimeValueError(
            "local_datetime must be naive local wall-clock time; pass its offset as utc_offset_min"
        )
    try:
        out = np.asarray(local_datetime, dtype="datetime64[s]")
    except (TypeError, ValueError) as exc:
        raise TimeValueError(f"cannot read local_datetime {local_datetime!r} as a date-time: {exc}") from None
    if np.any(np.isnat(out)):
        raise TimeValueError("local_datetime contains NaT (a missing time); drop those photos first")
    return out


def local_to_utc(local_datetime, utc_offset_min) -> np.ndarray:
    """Local wall-clock time(s) with their UTC offset(s) in minutes -> UTC as datetime64[s]."""
    local = _as_datetime64_s(local_datetime)
    offset = np.asarray(utc_offset_min)
    if not np.issubdtype(offset.dtype, np.number) or not np.all(np.isfinite(offset)):
        raise TimeValueError(f"utc_offset_min must be finite minutes, got {utc_offset_min!r}")
    if np.any(np.abs(offset) > 18 * 60):
        raise TimeValueError(f"utc_offset_min must lie within +-1080 (18 h), got {utc_offset_min!r}")
    return local - np.rint(offset).astype(np.int64).astype("timedelta64[m]")


def day_of_year(datetime64_s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """datetime64[s] -> (day of year 1..366, seconds into the day, days in that year 365/366), all arrays."""
    t = np.asarray(datetime64_s, dtype="datetime64[s]")
    year_start = t.astype("datetime64[Y]")
    day_start = t.astype("datetime64[D]")
    doy = (day_start - year_start.astype("datetime64[D]")).astype(np.int64) + 1
    sec_of_day = (t - day_start.astype("datetime64[s]")).astype(np.int64).astype(np.float64)
    year = year_start.astype(np.int64) + 1970
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    return doy, sec_of_day, np.where(leap, 366, 365)


def solar_position(lat_deg, lon_deg, local_datetime, utc_offset_min) -> SolarPosition:
    """Sun elevation/azimuth (degrees) at places and local wall-clock times; inputs broadcast like numpy arrays."""
    lat = np.asarray(lat_deg, dtype=np.float64)
    lon = np.asarray(lon_deg, dtype=np.float64)
    if np.any(~np.isfinite(lat)) or np.any(np.abs(lat) > 90.0):
        raise ValueError(f"lat_deg must lie in [-90, 90], got {lat_deg!r}")
    if np.any(~np.isfinite(lon)):
        raise ValueError(f"lon_deg must be finite, got {lon_deg!r}")
    utc = local_to_utc(local_datetime, utc_offset_min)
    _, sec_of_day_utc, _ = day_of_year(utc)
    hour_utc = sec_of_day_utc / 3600.0

    # Julian centuries since J2000.0 (UT stands in for TT: the ~70 s difference moves the sun by 0.0008 deg).
    unix_s = (utc - np.datetime64("1970-01-01T00:00:00", "s")).astype(np.int64).astype(np.float64)
    t_cent = (unix_s / 86400.0 + 2440587.5 - 2451545.0) / 36525.0
    # The sun's apparent ecliptic longitude from its mean orbit plus the equation of the centre, corrected for
    # nutation and aberration.
    mean_lon = np.deg2rad(np.mod(280.46646 + t_cent * (36000.76983 + 0.0003032 * t_cent), 360.0))
    mean_anom = np.deg2rad(357.52911 + t_cent * (35999.05029 - 0.0001537 * t_cent))
    ecc = 0.016708634 - t_cent * (0.000042037 + 0.0000001267 * t_cent)
    centre_deg = (
        np.sin(mean_anom) * (1.914602 - t_cent * (0.004817 + 0.000014 * t_cent))
        + np.sin(2 * mean_anom) * (0.019993 - 0.000101 * t_cent)
        + np.sin(3 * mean_anom) * 0.000289
    )
    node = np.deg2rad(125.04 - 1934.136 * t_cent)
    app_lon = np.deg2rad(np.rad2deg(mean_lon) + centre_deg - 0.00569 - 0.00478 * np.sin(node))
    obliq_deg = 23.0 + (26.0 + (21.448 - t_cent * (46.815 + t_cent * (0.00059 - t_cent * 0.001813))) / 60.0) / 60.0
    obliq = np.deg2rad(obliq_deg + 0.00256 * np.cos(node))
    decl = np.arcsin(np.sin(obliq) * np.sin(app_lon))
    # Equation of time: the sun's right ascension against the mean sun, from eccentricity and obliquity.
    y = np.tan(obliq / 2.0) ** 2
    eqtime_min = 4.0 * np.rad2deg(
        y * np.sin(2 * mean_lon)
        - 2 * ecc * np.sin(mean_anom)
        + 4 * ecc * y * np.sin(mean_anom) * np.cos(2 * mean_lon)
        - 0.5 * y * y * np.sin(4 * mean_lon)
        - 1.25 * ecc * ecc * np.sin(2 * mean_anom)
    )

    # Working in UTC makes NOAA's "- 60 * timezone" term vanish: 4 minutes of clock per degree of longitude.
    true_solar_time_min = np.mod(hour_utc * 60.0 + eqtime_min + 4.0 * lon, 1440.0)
    hour_angle = np.deg2rad(true_solar_time_min / 4.0 - 180.0)

    phi = np.deg2rad(lat)
    sin_phi, cos_phi = np.sin(phi), np.cos(phi)
    sin_d, cos_d = np.sin(decl), np.cos(decl)
    cos_h = np.cos(hour_angle)
    cos_zenith = np.clip(sin_phi * sin_d + cos_phi * cos_d * cos_h, -1.0, 1.0)
    zenith = np.arccos(cos_zenith)
    # atan2 form: well conditioned everywhere except exactly at the poles or the zenith, where azimuth is undefined.
    azimuth = np.arctan2(-cos_d * np.sin(hour_angle), sin_d * cos_phi - cos_d * sin_phi * cos_h)

    shape = np.broadcast_shapes(lat.shape, lon.shape, utc.shape)

    def full(a):
        return np.broadcast_to(a, shape).copy()

    zenith_deg = np.rad2deg(zenith)
    return SolarPosition(
        elevation_deg=full(90.0 - zenith_deg),
        azimuth_deg=full(np.mod(np.rad2deg(azimuth), 360.0)),
        zenith_deg=full(zenith_deg),
        declination_deg=full(np.rad2deg(decl)),
        equation_of_time_min=full(eqtime_min),
        hour_angle_deg=full(np.rad2deg(hour_angle)),
        true_solar_time_min=full(true_solar_time_min),
    )
