"""The solar model (gtloc_engine/solar.py: the claim sun checks, the shadow locus, SunWorld) against NREL SPA (pvlib)
and against the textbook noon identity."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from gtloc_engine.errors import TimeValueError
from gtloc_engine.solar import solar_position, utc_offset_min_for_lon

pvlib = pytest.importorskip("pvlib")

TOLERANCE_DEG = 0.5


def _random_cases(n: int, seed: int):
    """Places uniform by area plus polar bands, times across 2015-2023 plus leap days, offsets of many kinds."""
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    polar = rng.random(n) < 0.2
    lat[polar] = rng.choice([-1.0, 1.0], polar.sum()) * rng.uniform(66.0, 89.9, polar.sum())
    lon = rng.uniform(-180.0, 180.0, n)
    t0 = np.datetime64("2015-01-01T00:00:00", "s")
    span_s = int((np.datetime64("2024-01-01T00:00:00", "s") - t0).astype(np.int64))
    utc = t0 + rng.integers(0, span_s, n).astype("timedelta64[s]")
    leap = rng.random(n) < 0.1
    leap_days = np.array(["2016-02-29", "2020-02-29"], dtype="datetime64[D]")[rng.integers(0, 2, leap.sum())]
    utc[leap] = leap_days.astype("datetime64[s]") + rng.integers(0, 86400, leap.sum()).astype("timedelta64[s]")
    # Mostly the nautical zone, sometimes an arbitrary real-world-like offset: the answer must not depend on it.
    offset = utc_offset_min_for_lon(lon)
    odd = rng.random(n) < 0.3
    offset[odd] = rng.integers(-12 * 4, 14 * 4 + 1, odd.sum()) * 15
    local = utc + offset.astype("timedelta64[m]")
    return lat, lon, utc, local, offset


def _pvlib(lat, lon, utc):
    times = pd.DatetimeIndex(utc, tz="UTC")
    ref = pvlib.solarposition.get_solarposition(times, lat, lon, method="nrel_numpy")
    return ref["elevation"].to_numpy(), ref["azimuth"].to_numpy()


def _unit(el_deg, az_deg):
    el, az = np.deg2rad(el_deg), np.deg2rad(az_deg)
    return np.stack([np.cos(el) * np.sin(az), np.cos(el) * np.cos(az), np.sin(el)], axis=-1)


def test_matches_pvlib_spa_within_half_a_degree():
    lat, lon, utc, local, offset = _random_cases(3000, seed=7)
    assert (np.abs(lat) > 66).sum() > 400 and (lat < 0).sum() > 1000 and (lat > 0).sum() > 1000
    ours = solar_position(lat, lon, local, offset)
    ref_el, ref_az = _pvlib(lat, lon, utc)

    el_err = np.abs(ours.elevation_deg - ref_el)
    assert el_err.max() < TOLERANCE_DEG, f"max elevation error {el_err.max():.4f} deg"
    # Azimuth is undefined at the zenith and the nadir and ill-conditioned near them: compare away from both
    # (wrapped, so 359.9 vs 0.1 is 0.2 deg), and check the full direction everywhere.
    az_err = np.abs((ours.azimuth_deg - ref_az + 180.0) % 360.0 - 180.0)
    defined = (ref_el > -80.0) & (ref_el < 88.0)
    assert defined.sum() > 2500
    assert az_err[defined].max() < TOLERANCE_DEG, f"max azimuth error {az_err[defined].max():.4f} deg"
    cos_angle = np.sum(_unit(ours.elevation_deg, ours.azimuth_deg) * _unit(ref_el, ref_az), axis=1)
    angle = np.degrees(np.arccos(np.clip(cos_angle, -1.0, 1.0)))
    assert angle.max() < TOLERANCE_DEG


def test_leap_days_and_polar_extremes_match_pvlib():
    lat = np.array([89.5, -89.5, 78.0, -78.0, 0.0, 23.4])
    lon = np.array([0.0, 120.0, 15.0, -60.0, -179.0, 179.0])
    for day in ("2016-02-29", "2020-02-29", "2016-12-31", "2020-06-21"):
        utc = np.full(len(lat), np.datetime64(f"{day}T10:30:00", "s"))
        offset = utc_offset_min_for_lon(lon)
        ours = solar_position(lat, lon, utc + offset.astype("timedelta64[m]"), offset)
        ref_el, _ = _pvlib(lat, lon, utc)
        assert np.abs(ours.elevation_deg - ref_el).max() < TOLERANCE_DEG


@pytest.mark.parametrize("lat_deg", [-89.0, -66.6, -45.0, -23.4, 0.0, 10.0, 23.4, 51.5, 70.0, 89.0])
@pytest.mark.parametrize("date", ["2019-03-20", "2019-06-21", "2020-02-29", "2021-12-21"])
def test_solar_noon_elevation_is_90_minus_lat_minus_declination(lat_deg, date):
    lon_deg = 37.0
    offset = utc_offset_min_for_lon(lon_deg)
    local = np.datetime64(f"{date}T12:00:00", "s")
    for _ in range(3):  # walk the clock to where the hour angle is zero (4 minutes per degree)
        sun = solar_position(lat_deg, lon_deg, local, offset)
        local = local - np.timedelta64(int(round(float(sun.hour_angle_deg) * 240.0)), "s")
    sun = solar_position(lat_deg, lon_deg, local, offset)
    assert abs(float(sun.hour_angle_deg)) < 0.01
    expected = 90.0 - abs(lat_deg - float(sun.declination_deg))
    assert float(sun.elevation_deg) == pytest.approx(expected, abs=0.01)
    # At noon the sun is due south of places north of it, due north of places south of it.
    if expected < 89.0:
        due = 180.0 if lat_deg > float(sun.declination_deg) else 0.0
        assert abs((float(sun.azimuth_deg) - due + 180.0) % 360.0 - 180.0) < 0.1


def test_same_instant_with_different_offsets_gives_the_same_sun():
    utc = np.datetime64("2018-09-01T03:00:00", "s")
    offsets = np.array([-600, -180, 0, 330, 540, 840])
    local = utc + offsets.astype("timedelta64[m]")
    sun = solar_position(35.0, 139.0, local, offsets)
    assert np.ptp(sun.elevation_deg) < 1e-9 and np.ptp(sun.azimuth_deg) < 1e-9


def test_python_datetimes_and_scalars_are_accepted():
    a = solar_position(48.85, 2.35, dt.datetime(2021, 6, 21, 14, 0), 120)
    b = solar_position(48.85, 2.35, np.datetime64("2021-06-21T14:00:00"), 120)
    assert a.elevation_deg.shape == () and float(a.elevation_deg) == float(b.elevation_deg)
    assert 60.0 < float(a.elevation_deg) < 66.0  # Paris, an hour after solar noon at midsummer


def test_aware_datetimes_are_refused_so_offsets_are_not_applied_twice():
    aware = dt.datetime(2021, 6, 21, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    with pytest.raises(TimeValueError):
        solar_position(48.85, 2.35, aware, 120)


@pytest.mark.parametrize(
    "lon_deg, offset_min",
    [(0.0, 0), (7.4, 0), (7.6, 60), (-7.6, -60), (-22.4, -60), (-22.6, -120),
     (139.7, 540), (179.0, 720), (-179.0, -720)],
)
def test_utc_offset_for_longitude_is_the_nautical_zone(lon_deg, offset_min):
    assert utc_offset_min_for_lon(lon_deg) == offset_min


def test_utc_offset_for_longitude_is_vectorised_and_symmetric():
    lon = np.linspace(-179.0, 179.0, 1001)
    offsets = utc_offset_min_for_lon(lon)
    assert offsets.dtype.kind == "i" and np.array_equal(offsets, -utc_offset_min_for_lon(-lon))
    assert np.all(np.abs(offsets / 60.0 - lon / 15.0) <= 0.5)
