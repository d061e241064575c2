"""gtloc_engine.timezones: the IANA zone of a place and its UTC offset at a moment, DST included; nautical at sea."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from gtloc_engine.errors import GtlocError, TimeValueError
from gtloc_engine.timezones import Zone, utc_offset_min, zone_at

# (lat, lon, IANA zone, naive local wall clock, expected minutes east of UTC)
KNOWN = [
    (40.4168, -3.7038, "Europe/Madrid", dt.datetime(2021, 7, 15, 12, 0), 120),  # CEST
    (40.4168, -3.7038, "Europe/Madrid", dt.datetime(2021, 1, 15, 12, 0), 60),  # CET
    (27.7172, 85.3240, "Asia/Kathmandu", dt.datetime(2019, 5, 1, 9, 30), 345),
    (31.2304, 121.4737, "Asia/Shanghai", dt.datetime(2020, 8, 1, 18, 0), 480),
    (31.2304, 121.4737, "Asia/Shanghai", dt.datetime(2020, 1, 1, 18, 0), 480),  # no DST
    (-33.8688, 151.2093, "Australia/Sydney", dt.datetime(2022, 1, 10, 15, 0), 660),  # AEDT
    (-33.8688, 151.2093, "Australia/Sydney", dt.datetime(2022, 7, 10, 15, 0), 600),  # AEST
    (40.7128, -74.0060, "America/New_York", dt.datetime(2018, 7, 4, 12, 0), -240),
    (19.0760, 72.8777, "Asia/Kolkata", dt.datetime(2017, 3, 3, 3, 3), 330),
    (-31.5553, 159.0821, "Australia/Lord_Howe", dt.datetime(2021, 1, 1, 12, 0), 660),  # half-hour DST: +11
    (-31.5553, 159.0821, "Australia/Lord_Howe", dt.datetime(2021, 7, 1, 12, 0), 630),
    (-34.9285, 138.6007, "Australia/Adelaide", dt.datetime(2022, 1, 10, 15, 0), 630),  # ACDT, summer: +10:30
    (-34.9285, 138.6007, "Australia/Adelaide", dt.datetime(2022, 7, 10, 15, 0), 570),  # ACST, winter: +9:30
    (64.1466, -21.9426, "Atlantic/Reykjavik", dt.datetime(2016, 6, 21, 23, 0), 0),
]


@pytest.mark.parametrize("lat, lon, name, local, expected", KNOWN)
def test_known_places_get_their_iana_zone_and_offset(lat, lon, name, local, expected):
    zone = zone_at(lat, lon)
    assert zone == Zone(name) and not zone.nautical
    assert utc_offset_min(lat, lon, local) == expected
    # The same as zoneinfo itself says for that zone and wall clock.
    assert ZoneInfo(name).utcoffset(local) == dt.timedelta(minutes=expected)


@pytest.mark.parametrize("lat, lon, name, local, expected", KNOWN)
def test_an_instant_gives_the_same_offset_as_its_wall_clock(lat, lon, name, local, expected):
    utc = local - dt.timedelta(minutes=expected)
    aware_utc = utc.replace(tzinfo=dt.timezone.utc)
    assert utc_offset_min(lat, lon, aware_utc) == expected
    assert utc_offset_min(lat, lon, aware_utc.timestamp()) == expected  # Unix seconds
    assert utc_offset_min(lat, lon, int(aware_utc.timestamp())) == expected
    assert utc_offset_min(lat, lon, np.datetime64(utc, "s")) == expected  # datetime64 is UTC
    # An aware datetime in some other zone is the same instant.
    assert utc_offset_min(lat, lon, aware_utc.astimezone(dt.timezone(dt.timedelta(hours=-7)))) == expected
    assert zone_at(lat, lon).from_utc(aware_utc).replace(tzinfo=None) == local


def test_open_sea_has_the_nautical_zone_labelled_as_such():
    for lat, lon, hours in [(0.0, -30.0, -2), (-40.0, -120.0, -8), (10.0, 67.0, 4), (-50.0, 97.6, 7)]:
        zone = zone_at(lat, lon)
        assert zone.nautical and "nautical" in zone.name
        assert zone.name == f"nautical UTC{'+' if hours >= 0 else '-'}{abs(hours):02d}:00"
        for local in (dt.datetime(2020, 1, 1, 12), dt.datetime(2020, 7, 1, 12)):  # no DST at sea
            assert utc_offset_min(lat, lon, local) == hours * 60
    assert not zone_at(40.4, -3.7).nautical  # land is never nautical


def test_dst_gap_and_repeated_hour():
    madrid = zone_at(40.4168, -3.7038)
    # 2021-03-28 02:00 CET -> 03:00 CEST: 02:30 never happens; localize moves it to 03:30 CEST.
    gap = madrid.localize(dt.datetime(2021, 3, 28, 2, 30))
    assert gap.replace(tzinfo=None) == dt.datetime(2021, 3, 28, 3, 30)
    assert gap.utcoffset() == dt.timedelta(hours=2)
    assert madrid.offset_min(dt.datetime(2021, 3, 28, 2, 30)) == 60  # zoneinfo's fold-0 rule: the offset before
    # 2021-10-31 03:00 CEST -> 02:00 CET: 02:30 happens twice; fold picks which.
    first = madrid.localize(dt.datetime(2021, 10, 31, 2, 30))
    second = madrid.localize(dt.datetime(2021, 10, 31, 2, 30, fold=1))
    assert first.utcoffset() == dt.timedelta(hours=2) and second.utcoffset() == dt.timedelta(hours=1)
    assert second.astimezone(dt.timezone.utc) - first.astimezone(dt.timezone.utc) == dt.timedelta(hours=1)
    # A valid reading is kept as it is.
    assert madrid.localize(dt.datetime(2021, 6, 1, 8, 0)).replace(tzinfo=None) == dt.datetime(2021, 6, 1, 8, 0)


def test_the_dst_switch_happens_at_the_right_instant():
    # New York, 2019-11-03 06:00 UTC: EDT (-4) until then, EST (-5) from then.
    t = dt.datetime(2019, 11, 3, 6, 0, tzinfo=dt.timezone.utc)
    assert utc_offset_min(40.7128, -74.006, t - dt.timedelta(seconds=1)) == -240
    assert utc_offset_min(40.7128, -74.006, t) == -300


@pytest.mark.parametrize("lat, lon", [(91.0, 0.0), (0.0, 181.0), (float("nan"), 0.0), ("x", 0.0)])
def test_bad_places_are_refused(lat, lon):
    with pytest.raises(GtlocError):
        zone_at(lat, lon)


@pytest.mark.parametrize("when", ["2021-01-01T00:00", dt.date(2021, 1, 1), True, float("inf"), np.datetime64("NaT")])
def test_bad_times_are_refused(when):
    with pytest.raises(TimeValueError):
        utc_offset_min(40.4, -3.7, when)


def test_localize_and_from_utc_refuse_the_wrong_kind_of_time():
    madrid = zone_at(40.4168, -3.7038)
    with pytest.raises(TimeValueError):
        madrid.localize(dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc))
    with pytest.raises(TimeValueError):
        madrid.from_utc(dt.datetime(2021, 1, 1))


def test_kashgar_is_in_asia_urumqi_two_hours_behind_beijing():
    # timezonefinder's polygons put Kashgar in Asia/Urumqi, Xinjiang time (+06:00, no DST), not in China's official
    # Asia/Shanghai (+08:00), which many clocks there keep: EXIF claims with their own offset keep it (io/exif.py).
    kashgar = zone_at(39.4704, 75.9898)
    assert kashgar == Zone("Asia/Urumqi")
    for local in (dt.datetime(2023, 1, 15, 12, 0), dt.datetime(2023, 7, 15, 12, 0)):
        assert kashgar.offset_min(local) == 360 == ZoneInfo("Asia/Urumqi").utcoffset(local) / dt.timedelta(minutes=1)
        assert ZoneInfo("Asia/Shanghai").utcoffset(local) - ZoneInfo("Asia/Urumqi").utcoffset(local) == dt.timedelta(
            hours=2)


def test_manifest_unix_times_become_local_with_the_places_real_zone(tmp_path, caplog):
    from gtloc_engine.records import read_manifest

    # (lat, lon, UTC instant, zone that zoneinfo must agree with); the last row is at open sea (nautical UTC-02:00).
    rows = [(40.4168, -3.7038, dt.datetime(2021, 7, 15, 10, 0), "Europe/Madrid"),
            (27.7172, 85.3240, dt.datetime(2019, 5, 1, 3, 0), "Asia/Kathmandu"),
            (-34.9285, 138.6007, dt.datetime(2022, 1, 10, 3, 0), "Australia/Adelaide"),
            (-34.9285, 138.6007, dt.datetime(2022, 7, 10, 3, 0), "Australia/Adelaide"),
            (39.4704, 75.9898, dt.datetime(2023, 3, 1, 2, 0), "Asia/Urumqi"),
            (0.0, -30.0, dt.datetime(2020, 6, 1, 12, 0), None)]
    lines = ["path,lat_deg,lon_deg,timestamp"]
    for i, (lat, lon, utc, _) in enumerate(rows):
        lines.append(f"p{i}.jpg,{lat},{lon},{utc.replace(tzinfo=dt.timezone.utc).timestamp():.0f}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING"):
        records = read_manifest(manifest)
    for record, (lat, lon, utc, name) in zip(records, rows):
        aware = utc.replace(tzinfo=dt.timezone.utc)
        local = aware.astimezone(ZoneInfo(name)) if name else aware - dt.timedelta(hours=2)
        assert record.torus[1] * 24 == pytest.approx(local.hour + local.minute / 60, abs=1e-9), (name, local)
    # Kathmandu's +05:45 and Adelaide's +10:30 / +09:30: whole-hour zones from the longitude would be 15-30 min off.
    assert records[1].torus[1] * 24 == pytest.approx(8.75) and records[2].torus[1] * 24 == pytest.approx(13.5)
    assert records[3].torus[1] * 24 == pytest.approx(12.5) and records[0].torus[1] * 24 == pytest.approx(12.0)
    assert "1 Unix times at open sea" in caplog.text and "nautical" in caplog.text
