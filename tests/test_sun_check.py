"""The sun check of a claim: the sun at the claimed place and time against pvlib (NREL SPA), sunrise and sunset in
the place's real zone, light regimes, each posterior cell's share of a regime against a brute-force pvlib count, the
agree / disagree rule on real posterior grids, SunWorld photos whose truth is known, and the sun fields in a
GeoPackage written by the pipeline."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from gtloc_engine.inference.predictor import HOUR_BINS, MONTH_BINS
from gtloc_engine.inference.sun_check import (REGIME_FLOORS_DEG, SunCheckConfig, check_sun, light_regime,
                                              regime_fractions)
from gtloc_engine.io import results_schema as schema
from gtloc_engine.io.exif import ExifClaims, read_exif_claims
from gtloc_engine.timezones import zone_at

pvlib = pytest.importorskip("pvlib")

SUN_TOLERANCE_DEG = 0.5  # gtloc_engine.solar against NREL SPA (tests/test_synth_solar.py)
SUNRISE_TOLERANCE_MIN = 2.0


def _claims(lat_deg: float, lon_deg: float, local: dt.datetime, offset_min: int | None = None) -> ExifClaims:
    """A place + local time claim; the offset, when not given, is the place's zone's (as io/exif.py fills it)."""
    if offset_min is None:
        offset_min = zone_at(lat_deg, lon_deg).offset_min(local)
    return ExifClaims(lat_deg=lat_deg, lon_deg=lon_deg, local_datetime=local, utc_offset_min=offset_min)


def _pvlib_sun(lat_deg, lon_deg, utc):
    ref = pvlib.solarposition.get_solarposition(pd.DatetimeIndex(np.atleast_1d(utc), tz="UTC"), lat_deg, lon_deg,
                                                method="nrel_numpy")
    return ref["elevation"].to_numpy(), ref["azimuth"].to_numpy()  # geometric ('apparent_elevation' is refracted)


def _uniform() -> np.ndarray:
    return np.full((MONTH_BINS, HOUR_BINS), 1.0 / (MONTH_BINS * HOUR_BINS))


def _hours(lo: float, hi: float) -> np.ndarray:
    """A posterior spread evenly over local hours [lo, hi) of every month."""
    hours = (np.arange(HOUR_BINS) + 0.5) * 24 / HOUR_BINS
    grid = np.tile(((hours >= lo) & (hours < hi)).astype(float), (MONTH_BINS, 1))
    return grid / grid.sum()


# ------------------------------------------------------------------------------------------- the sun itself


def test_the_claims_sun_matches_pvlib_at_random_places_and_times():
    rng = np.random.default_rng(3)
    for _ in range(60):
        lat, lon = float(np.degrees(np.arcsin(rng.uniform(-0.95, 0.95)))), float(rng.uniform(-180, 180))
        utc = dt.datetime(2015, 1, 1) + dt.timedelta(seconds=int(rng.integers(0, 9 * 365 * 86400)))
        zone = zone_at(lat, lon)
        local = zone.from_utc(utc.replace(tzinfo=dt.timezone.utc))
        report = check_sun(_claims(lat, lon, local.replace(tzinfo=None), zone.offset_min(local)), None)
        ref_el, ref_az = _pvlib_sun(lat, lon, utc)
        assert abs(report.sun_elev_deg - ref_el[0]) < SUN_TOLERANCE_DEG, (lat, lon, utc, zone)
        if -80 < ref_el[0] < 88:  # azimuth is undefined at the zenith and the nadir
            assert abs((report.sun_azimuth_deg - ref_az[0] + 180) % 360 - 180) < SUN_TOLERANCE_DEG
        assert report.light_regime == light_regime(ref_el[0]) or min(
            abs(ref_el[0] - floor) for _, floor in REGIME_FLOORS_DEG) < SUN_TOLERANCE_DEG


@pytest.mark.parametrize("lat, lon, day, zone_name", [
    (40.4168, -3.7038, dt.date(2021, 7, 15), "Europe/Madrid"),  # CEST: sunset after 21:00 on the clock
    (40.4168, -3.7038, dt.date(2021, 1, 15), "Europe/Madrid"),
    (27.7172, 85.3240, dt.date(2019, 5, 1), "Asia/Kathmandu"),  # +05:45
    (-34.9285, 138.6007, dt.date(2022, 1, 10), "Australia/Adelaide"),  # +10:30 in summer
    (-34.9285, 138.6007, dt.date(2022, 7, 10), "Australia/Adelaide"),  # +09:30 in winter
    (39.4704, 75.9898, dt.date(2023, 3, 1), "Asia/Urumqi"),  # Kashgar
    (-33.4489, -70.6693, dt.date(2022, 1, 10), "America/Santiago"),
    (64.1466, -21.9426, dt.date(2016, 6, 21), "Atlantic/Reykjavik"),  # that day's sunset is at 00:04 the next
    (40.4168, -3.7038, dt.date(2021, 3, 28), "Europe/Madrid"),  # the day DST starts: a 23-hour local day
])
def test_sunrise_and_sunset_match_pvlib_in_the_places_zone(lat, lon, day, zone_name):
    report = check_sun(_claims(lat, lon, dt.datetime.combine(day, dt.time(12, 0))), None)
    ref = pvlib.solarposition.sun_rise_set_transit_spa(pd.DatetimeIndex([pd.Timestamp(day).tz_localize(zone_name)]),
                                                       lat, lon)
    for ours, column in ((report.sunrise_local, "sunrise"), (report.sunset_local, "sunset")):
        theirs = ref[column].iloc[0].to_pydatetime(warn=False)
        mine = dt.datetime.fromisoformat(ours)
        assert abs((mine - theirs).total_seconds()) / 60 < SUNRISE_TOLERANCE_MIN, (column, mine, theirs)
        assert mine.utcoffset() == theirs.utcoffset() == ZoneInfo(zone_name).utcoffset(mine.replace(tzinfo=None))
    assert dt.datetime.fromisoformat(report.sunrise_local).date() == day  # the sunset may be after midnight


@pytest.mark.parametrize("day, kind", [(dt.date(2021, 6, 21), "polar day"), (dt.date(2021, 12, 21), "polar night")])
def test_polar_day_and_night_have_no_sunrise_and_say_so(day, kind):
    report = check_sun(_claims(69.6492, 18.9553, dt.datetime.combine(day, dt.time(12, 0))), None)  # Tromso
    assert report.sunrise_local is None and report.sunset_local is None
    assert report.light_regime == ("day" if kind == "polar day" else "civil twilight")
    assert f"sun: {kind} at the claimed place on {day}: no sunrise or sunset" in report.notes


def test_light_regimes_have_the_documented_floors():
    assert tuple(name for name, _ in REGIME_FLOORS_DEG) == schema.LIGHT_REGIMES
    elevations = [45.0, -0.5, -0.9, -5.9, -6.1, -11.9, -12.1, -17.9, -18.1, -60.0]
    expected = ["day", "day", "civil twilight", "civil twilight", "nautical twilight", "nautical twilight",
                "astronomical twilight", "astronomical twilight", "night", "night"]
    assert list(light_regime(np.array(elevations))) == expected
    assert light_regime(-0.833) == "civil twilight" and light_regime(-0.832) == "day"  # the floor is exclusive


# ------------------------------------------------------------------------------------------- regime shares


def test_regime_shares_match_a_brute_force_pvlib_count():
    lat, lon, year = 40.4168, -3.7038, 2021
    zone = zone_at(lat, lon)
    fractions = regime_fractions(lat, lon, zone, year, (MONTH_BINS, HOUR_BINS))
    assert fractions.shape == (MONTH_BINS, HOUR_BINS, len(schema.LIGHT_REGIMES))
    assert np.allclose(fractions.sum(axis=-1), 1.0)
    rng = np.random.default_rng(0)
    for m, h in zip(rng.integers(0, MONTH_BINS, 40), rng.integers(0, HOUR_BINS, 40)):
        # The cell's wall clocks at 5-minute steps on its month bin's middle day, made UTC with zoneinfo; pvlib
        # says where the sun is; count the regimes.
        from gtloc_engine.timecode import date_at_month_pos

        day = date_at_month_pos(year, (m + 0.5) * 12 / MONTH_BINS)
        walls = [dt.datetime.combine(day, dt.time()) + dt.timedelta(minutes=30 * int(h) + 2.5 + 5 * k)
                 for k in range(6)]
        utc = [w.replace(tzinfo=ZoneInfo("Europe/Madrid")).astimezone(dt.timezone.utc).replace(tzinfo=None)
               for w in walls]
        elevation, _ = _pvlib_sun(lat, lon, np.array(utc, dtype="datetime64[s]"))
        counts = np.array([np.mean(light_regime(elevation) == name) for name in schema.LIGHT_REGIMES])
        # One sample may fall on the other side of a floor within the models' 0.5 deg (a sixth of the cell).
        assert np.abs(fractions[m, h] - counts).max() <= 1 / 6 + 1e-9, (m, h, fractions[m, h], counts)
    # Madrid in mid-July, CEST: 14:00-14:30 is day, 02:00-02:30 night, and the sun sets at about 21:44.
    july = int(6.5 / 12 * MONTH_BINS)
    assert fractions[july, 28, 0] == 1.0 and fractions[july, 4, -1] == 1.0
    assert fractions[july, 42, 0] == 1.0 and fractions[july, 43, 0] < 1.0  # 21:00-21:30 day; 21:30-22:00 not all


# ------------------------------------------------------------------------------------------- the check


def test_a_night_claim_against_a_daylight_posterior_disagrees_with_a_sun_note():
    claim = _claims(40.4168, -3.7038, dt.datetime(2021, 7, 15, 23, 45))  # two hours after Madrid's sunset
    report = check_sun(claim, _hours(10, 16))
    assert report.light_regime == "night" and report.sun_elev_deg == pytest.approx(-18.4, abs=0.1)
    assert report.sun_check == "disagrees" and report.sun_regime_mass == 0.0
    assert len(report.notes) == 1 and report.notes[0].startswith(f"sun: the claim is in {report.light_regime}")
    assert "23:45 Europe/Madrid" in report.notes[0] and "sunset 21:44" in report.notes[0]
    # The same posterior and a claim at noon: day, and the posterior has all its mass on day.
    noon = check_sun(_claims(40.4168, -3.7038, dt.datetime(2021, 7, 15, 13, 0)), _hours(10, 16))
    assert (noon.light_regime, noon.sun_check, noon.notes) == ("day", "agrees", [])
    assert noon.sun_regime_mass == pytest.approx(1.0)


def test_a_blind_posterior_agrees_even_with_a_short_twilight():
    claim = _claims(40.4168, -3.7038, dt.datetime(2021, 7, 15, 22, 0))  # civil twilight, ~30 min long
    report = check_sun(claim, _uniform())
    assert report.light_regime == "civil twilight"
    assert report.sun_regime_mass < SunCheckConfig().min_mass  # a few percent: twilight is short ...
    assert report.sun_check == "agrees"  # ... but no less than a posterior that knows nothing gives it
    assert check_sun(claim, _hours(10, 16)).sun_check == "disagrees"  # daylight only: no mass on twilight


def test_thresholds_are_data_and_validated():
    claim = _claims(40.4168, -3.7038, dt.datetime(2021, 7, 15, 23, 45))
    grid = 0.88 * _hours(10, 16) + 0.12 * _hours(0, 4)  # 12% on the small hours, all of them night in July
    report = check_sun(claim, grid)
    assert report.sun_regime_mass == pytest.approx(0.12) and report.sun_check == "agrees"
    strict = check_sun(claim, grid, SunCheckConfig(min_mass=0.2, min_share_of_blind=1.0))
    assert strict.sun_check == "disagrees"  # 12% < 20%, and less than a blind posterior's 35% on night
    little = check_sun(claim, 0.97 * _hours(10, 16) + 0.03 * _hours(0, 4))  # 3%: under 5% and a quarter of 35%
    assert little.sun_check == "disagrees" and "puts 3.0% of its mass on night" in little.notes[0]
    with pytest.raises(ValueError):
        SunCheckConfig(min_mass=0.0)
    with pytest.raises(ValueError):
        SunCheckConfig(min_share_of_blind=1.5)


def test_without_a_place_and_time_nothing_is_computed_and_without_a_posterior_nothing_is_checked():
    assert check_sun(None, _uniform()).fields() == dict.fromkeys(check_sun(None, None).fields())
    time_only = ExifClaims(local_datetime=dt.datetime(2021, 7, 15, 12), utc_offset_min=120)
    assert all(v is None for v in check_sun(time_only, _uniform()).fields().values())
    report = check_sun(_claims(40.4168, -3.7038, dt.datetime(2021, 7, 15, 13, 0)), None)
    assert report.sun_check == "not checked" and report.sun_elev_deg > 60 and report.sun_regime_mass is None
    assert report.notes == ["sun: not checked against the model: no time posterior (time head not trained)"]
    absurd = check_sun(_claims(40.4168, -3.7038, dt.datetime(1, 1, 1, 12, 0), 60), _uniform())
    assert absurd.sun_elev_deg is None and "outside 1800-2200" in absurd.notes[0]
    assert set(check_sun(None, None).fields()) <= set(schema.PHOTO_FIELDS)


def test_the_claimed_offset_gives_the_instant_even_when_it_is_not_the_zones():
    # Kashgar at 10:00 on a Beijing-time camera (+08:00) is 02:00 UTC: the sun of 08:00 Xinjiang time.
    beijing = check_sun(_claims(39.4704, 75.9898, dt.datetime(2023, 3, 1, 10, 0), 480), None)
    urumqi = check_sun(_claims(39.4704, 75.9898, dt.datetime(2023, 3, 1, 8, 0), 360), None)
    assert beijing.sun_elev_deg == pytest.approx(urumqi.sun_elev_deg, abs=1e-9)
    assert beijing.sunrise_local == urumqi.sunrise_local and beijing.sunrise_local.endswith("+06:00")


# ------------------------------------------------------------------------------------------- SunWorld truth


def test_sunworld_photos_get_the_sun_they_were_rendered_under(tmp_path):
    from gtloc_engine.synth import read_scenes, write_dataset

    manifest = write_dataset(tmp_path / "sw", 8, seed=5, image_size=16)
    scenes = read_scenes(manifest.parent)
    assert len(scenes) == 8
    for rel_path, scene in scenes.items():
        claims = read_exif_claims(manifest.parent / rel_path)
        assert claims.time_source == "EXIF DateTimeOriginal" and claims.utc_offset_source == "EXIF OffsetTimeOriginal"
        assert claims.time_zone == scene["zone"] and claims.utc_offset_min == scene["utc_offset_min"]
        report = check_sun(claims, _uniform())
        truth_el, truth_az = scene["sun_elevation_deg"], scene["sun_azimuth_deg"]
        assert report.sun_elev_deg == pytest.approx(truth_el, abs=0.01)  # whole seconds in EXIF: ~0.004 deg
        if -80 < truth_el < 88:
            assert abs((report.sun_azimuth_deg - truth_az + 180) % 360 - 180) < 0.05
        assert report.light_regime == light_regime(truth_el) or min(
            abs(truth_el - floor) for _, floor in REGIME_FLOORS_DEG) < 0.01
        assert report.sun_check == "agrees"  # a uniform posterior never disagrees
