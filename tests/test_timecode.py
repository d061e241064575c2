"""The torus time representation: parsing, wrap-around, distances, circular errors and TPS."""

import datetime as dt
import math

import numpy as np
import pytest

from gtloc_engine.errors import TimeValueError
from gtloc_engine.timecode import (
    circular_mean_spread, hour_error, month_error, parse_time, time_prediction_score, torus_coords,
    torus_distance, utc_offset_min_for_lon,
)


@pytest.mark.parametrize("value", [
    "2021-06-15T14:30:00", "2021:06:15 14:30:00", dt.datetime(2021, 6, 15, 14, 30),
    "2021-06-15T14:30:00+02:00", "2021-06-15 14:30:00",
])
def test_parse_time_gives_the_same_local_fields_for_every_format(value):
    t = parse_time(value)
    assert (t.year, t.month, t.day, t.hour, t.minute, t.second) == (2021, 6, 15, 14, 30, 0)


def test_unix_seconds_become_local_time_with_the_given_offset():
    stamp = dt.datetime(2021, 12, 31, 23, 30, tzinfo=dt.timezone.utc).timestamp()
    t = parse_time(stamp, utc_offset_min=60)
    assert (t.year, t.month, t.day, t.hour, t.minute) == (2022, 1, 1, 0, 30)
    assert t.utc_offset_min == 60


def test_the_nautical_zone_of_a_longitude_rounds_halves_away_from_greenwich():
    assert utc_offset_min_for_lon(139.7) == 9 * 60 and utc_offset_min_for_lon(-74.0) == -5 * 60
    assert utc_offset_min_for_lon(-180.0) == utc_offset_min_for_lon(180.0) == -720
    assert utc_offset_min_for_lon(np.array([7.5, -7.5, 0.0])).tolist() == [60, -60, 0]


def test_unix_seconds_without_an_offset_is_an_error():
    # No longitude fallback: the offset at a place is its IANA zone's (gtloc_engine.timezones), never lon / 15.
    with pytest.raises(TimeValueError, match="UTC"):
        parse_time(1_600_000_000)
    with pytest.raises(TypeError):
        parse_time(1_600_000_000, lon_deg=10.0)


def test_subseconds_and_z_suffix():
    t = parse_time("2020-02-29T23:59:59.500Z")
    assert t.second == pytest.approx(59.5) and t.utc_offset_min == 0


@pytest.mark.parametrize("bad", ["", "   ", "2021:13:01 10:00:00", "0000:00:00 00:00:00", "2021-02-30T10:00:00",
                                 "yesterday", "2021-06-15", "2021:06:15 25:00:00"])
def test_invalid_times_raise_an_error_that_names_the_value(bad):
    with pytest.raises(TimeValueError) as info:
        parse_time(bad)
    message = str(info.value)
    assert "\n" not in message
    if bad.strip():
        assert repr(bad) in message
    else:
        assert "empty" in message


@pytest.mark.parametrize("bad", [True, None, float("nan"), dt.date(2021, 1, 1)])
def test_non_timestamps_are_rejected(bad):
    with pytest.raises(TimeValueError):
        parse_time(bad, utc_offset_min=0)


def test_leap_day_and_year_end_are_inside_the_unit_torus():
    for stamp in ["2020-02-29T12:00:00", "2021-12-31T23:59:59", "2020-12-31T23:59:59", "2021-01-01T00:00:00"]:
        t = parse_time(stamp)
        assert 0.0 <= t.theta_year < 1.0 and 0.0 <= t.phi_day < 1.0
    feb29 = parse_time("2020-02-29T00:00:00").month_pos
    mar1 = parse_time("2020-03-01T00:00:00").month_pos
    assert feb29 < mar1 and mar1 - feb29 < 0.1


def test_new_years_eve_is_close_to_new_year_on_the_torus():
    a, b = torus_coords(["2021-12-31T23:59:00", "2022-01-01T00:00:00"])
    assert torus_distance(a, b) < 0.002
    mid = torus_coords(["2021-07-01T12:00:00"])[0]
    assert torus_distance(a, mid) > 0.5


def test_late_evening_is_close_to_midnight():
    a, b = torus_coords(["2021-05-10T23:59:00", "2021-05-10T00:00:00"])
    assert torus_distance(a, b) == pytest.approx(1 / (24 * 60), abs=1e-9)


def test_torus_distance_matches_the_formula_and_is_a_symmetric_wrapped_metric():
    rng = np.random.default_rng(0)
    a, b, c = rng.uniform(0, 1, (3, 500, 2))
    d = torus_distance(a, b)
    diff = np.abs(a - b)
    expected = np.sqrt((np.minimum(diff, 1 - diff) ** 2).sum(-1))
    np.testing.assert_allclose(d, expected)
    np.testing.assert_allclose(d, torus_distance(b, a))
    np.testing.assert_allclose(torus_distance(a, a), 0.0)
    np.testing.assert_allclose(torus_distance(a + 1.0, b - 3.0), d, atol=1e-12)  # integer shifts wrap
    assert np.all(d <= math.sqrt(0.5) + 1e-12)
    assert np.all(torus_distance(a, c) <= d + torus_distance(b, c) + 1e-12)


@pytest.mark.parametrize("true,pred,err", [(0.5, 11.5, 1.0), (11.9, 0.1, 0.2), (3.0, 9.0, 6.0), (2.0, 2.0, 0.0)])
def test_month_error_is_circular(true, pred, err):
    assert month_error(true, pred) == pytest.approx(err)


@pytest.mark.parametrize("true,pred,err", [(23.5, 0.5, 1.0), (0.0, 12.0, 12.0), (6.0, 3.0, 3.0)])
def test_hour_error_is_circular(true, pred, err):
    assert hour_error(true, pred) == pytest.approx(err)


# The paper's time prediction table on SkyFinder: (month error, hour error, TPS), from ../shared/GTLOC_NOTES.md.
PAPER_TIME_TABLE = [
    ("Zhai et al.", 2.46, 3.18, 65.48), ("Padilha et al.", 1.62, 3.61, 71.42), ("Salem et al.", 2.72, 3.05, 63.25),
    ("Zhai w/ CLIP", 1.65, 3.14, 73.20), ("Padilha w/ CLIP", 1.62, 2.98, 74.06), ("Salem w/ CLIP", 1.56, 2.87, 75.02),
    ("CLIP + cls", 1.61, 3.17, 73.37), ("CLIP + reg", 1.55, 3.06, 74.33), ("DINOv2 + cls", 2.24, 3.74, 65.61),
    ("DINOv2 + reg", 2.12, 3.53, 67.49), ("OpenCLIP + cls", 1.66, 3.43, 71.87), ("OpenCLIP + reg", 1.72, 3.34, 71.75),
    ("TimeLoc", 1.52, 2.84, 75.49), ("GT-Loc", 1.40, 2.72, 77.00),
]


@pytest.mark.parametrize("name,month_err,hour_err,tps", PAPER_TIME_TABLE, ids=[r[0] for r in PAPER_TIME_TABLE])
def test_tps_reproduces_the_papers_table(name, month_err, hour_err, tps):
    # The table prints errors to 2 decimals, which moves TPS by up to ~0.06.
    assert time_prediction_score(month_err, hour_err) == pytest.approx(tps, abs=0.07)


def test_tps_bounds():
    assert time_prediction_score(0.0, 0.0) == 100.0
    assert time_prediction_score(6.0, 12.0) == pytest.approx(0.0)


def test_circular_spread_is_zero_for_a_point_mass_and_wraps():
    mean, spread = circular_mean_spread(np.array([23.0, 1.0]), np.array([1.0, 1.0]), 24.0)
    assert min(mean, 24 - mean) == pytest.approx(0.0, abs=1e-9)
    assert spread == pytest.approx(1.0, rel=0.05)
    _, zero = circular_mean_spread(np.array([5.0]), np.array([1.0]), 12.0)
    assert zero == pytest.approx(0.0, abs=1e-4)
