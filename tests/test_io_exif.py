"""EXIF claims: round trips through real JPEGs, and hostile or broken values that must become notes, not crashes."""

from __future__ import annotations

import datetime as dt
import os
import warnings

import pytest
from photo_files import dms, gps_position, save_jpeg_with_raw_exif, small_image
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from gtloc_engine.errors import BadPhotoError
from gtloc_engine.io.exif import ExifClaims, read_exif_claims, write_jpeg_with_exif

GPS = ExifTags.GPS
BASE = ExifTags.Base
DMS_TOLERANCE_DEG = 1e-6


@pytest.mark.parametrize(
    ("lat_deg", "lon_deg"),
    [(48.8566, 2.3522), (-33.8688, 151.2093), (40.7128, -74.0060), (-22.906847, -43.172896)],
    ids=["north-east", "south-east", "north-west", "south-west"],
)
def test_round_trip_keeps_position_in_every_hemisphere(tmp_path, lat_deg, lon_deg):
    path = write_jpeg_with_exif(small_image(), tmp_path / "p.jpg", lat_deg=lat_deg, lon_deg=lon_deg)
    claims = read_exif_claims(path)
    assert claims.has_place
    assert claims.lat_deg == pytest.approx(lat_deg, abs=DMS_TOLERANCE_DEG)
    assert claims.lon_deg == pytest.approx(lon_deg, abs=DMS_TOLERANCE_DEG)
    assert claims.notes == ()


def test_round_trip_keeps_altitude_below_sea_level(tmp_path):
    path = write_jpeg_with_exif(small_image(), tmp_path / "p.jpg", lat_deg=31.5, lon_deg=35.5, alt_m=-430.25)
    assert read_exif_claims(path).alt_m == pytest.approx(-430.25)


def test_round_trip_keeps_subseconds_offset_and_gps_utc(tmp_path):
    local = dt.datetime(2023, 12, 31, 23, 50, 1, 250000)
    path = write_jpeg_with_exif(small_image(), tmp_path / "p.jpg", local_datetime=local, utc_offset_min=-180)
    claims = read_exif_claims(path)
    assert claims.has_time and not claims.has_place
    assert claims.local_datetime == local
    assert claims.utc_offset_min == -180
    assert claims.gps_utc_datetime == dt.datetime(2024, 1, 1, 2, 50, 1, 250000, tzinfo=dt.timezone.utc)


def test_aware_datetime_gives_wall_clock_and_offset(tmp_path):
    aware = dt.datetime(2024, 7, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    claims = read_exif_claims(write_jpeg_with_exif(small_image(), tmp_path / "p.jpg", local_datetime=aware))
    assert claims.local_datetime == dt.datetime(2024, 7, 1, 12, 0)
    assert claims.utc_offset_min == 330
    assert claims.gps_utc_datetime == dt.datetime(2024, 7, 1, 6, 30, tzinfo=dt.timezone.utc)


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "out" / "p.jpg"
    write_jpeg_with_exif(small_image(), target, lat_deg=1.0, lon_deg=2.0)
    write_jpeg_with_exif(Image.new("RGBA", (8, 8)), target, lat_deg=3.0, lon_deg=4.0)
    assert os.listdir(target.parent) == ["p.jpg"]
    assert read_exif_claims(target).lat_deg == pytest.approx(3.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lat_deg": 91.0, "lon_deg": 0.0},
        {"lat_deg": 10.0},
        {"lat_deg": float("nan"), "lon_deg": 0.0},
        {"utc_offset_min": 15 * 60},
        {"quality": 0},
        {
            "local_datetime": dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
            "utc_offset_min": 120,
        },
    ],
)
def test_write_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        write_jpeg_with_exif(small_image(), tmp_path / "p.jpg", **kwargs)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("local", "gps_date", "gps_time", "expected_offset_min"),
    [
        ("2024:06:01 14:30:00", "2024:06:01", (9, 0, 3), 330),
        ("2024:01:01 20:00:00", "2024:01:02", (0, 59, 58), -300),
        ("2024:01:01 20:00:00", "2024:01:01", (20, 0, 0), 0),
    ],
)
def test_offset_is_derived_from_gps_utc_when_offset_tag_is_absent(
    tmp_path, local, gps_date, gps_time, expected_offset_min
):
    path = tmp_path / "p.jpg"
    gps = {GPS.GPSDateStamp: gps_date, GPS.GPSTimeStamp: tuple(IFDRational(v, 1) for v in gps_time)}
    save_jpeg_with_raw_exif(path, gps=gps, exif_ifd={BASE.DateTimeOriginal: local})
    assert read_exif_claims(path).utc_offset_min == expected_offset_min


def test_no_offset_is_derived_when_clocks_differ_by_more_than_any_zone(tmp_path):
    path = tmp_path / "p.jpg"
    gps = {GPS.GPSDateStamp: "2024:06:03", GPS.GPSTimeStamp: tuple(IFDRational(v, 1) for v in (9, 0, 0))}
    save_jpeg_with_raw_exif(path, gps=gps, exif_ifd={BASE.DateTimeOriginal: "2024:06:01 09:00:00"})
    claims = read_exif_claims(path)
    assert claims.utc_offset_min is None
    assert claims.local_datetime == dt.datetime(2024, 6, 1, 9, 0)
    assert any("no offset derived" in note for note in claims.notes)


def test_latitude_95_is_no_claim_with_a_note(tmp_path):
    path = tmp_path / "p.jpg"
    gps = gps_position("N", dms(95, 0, 0), "E", dms(10, 0, 0))
    save_jpeg_with_raw_exif(path, gps=gps)
    claims = read_exif_claims(path)
    assert not claims.has_place and claims.lat_deg is None and claims.lon_deg is None
    assert "GPS latitude 95.0 out of range" in claims.notes


def test_longitude_over_180_is_no_claim(tmp_path):
    path = tmp_path / "p.jpg"
    gps = gps_position("N", dms(10, 0, 0), "W", dms(180, 30, 0))
    save_jpeg_with_raw_exif(path, gps=gps)
    claims = read_exif_claims(path)
    assert not claims.has_place
    assert any("longitude" in note and "out of range" in note for note in claims.notes)


def test_zero_denominators_are_no_claims_with_notes(tmp_path):
    path = tmp_path / "p.jpg"
    zero = IFDRational(0, 0)
    gps = {
        **gps_position("S", (IFDRational(12, 1), zero, IFDRational(1, 0)), "W", dms(43, 10, 0)),
        GPS.GPSAltitudeRef: 0,
        GPS.GPSAltitude: IFDRational(5, 0),
        GPS.GPSDateStamp: "2024:01:01",
        GPS.GPSTimeStamp: (IFDRational(1, 1), zero, IFDRational(0, 1)),
    }
    save_jpeg_with_raw_exif(path, gps=gps)
    claims = read_exif_claims(path)
    assert (claims.lat_deg, claims.lon_deg, claims.alt_m, claims.gps_utc_datetime) == (None, None, None, None)
    assert sum("zero denominator" in note for note in claims.notes) == 3


@pytest.mark.parametrize("ref", ["X", "", b"\x00"])
def test_unknown_hemisphere_ref_is_no_claim(tmp_path, ref):
    path = tmp_path / "p.jpg"
    gps = gps_position(ref, dms(10, 0, 0), "E", dms(10, 0, 0))
    save_jpeg_with_raw_exif(path, gps=gps)
    claims = read_exif_claims(path)
    assert not claims.has_place
    assert any("ref" in note for note in claims.notes)


def test_null_island_placeholder_is_no_claim(tmp_path):
    path = tmp_path / "p.jpg"
    gps = gps_position("N", dms(0, 0, 0), "E", dms(0, 0, 0))
    save_jpeg_with_raw_exif(path, gps=gps)
    assert not read_exif_claims(path).has_place


@pytest.mark.parametrize("stamp", ["0000:00:00 00:00:00", "    :  :     :  :  ", "2024:02:30 10:00:00", "yesterday"])
def test_zero_blank_or_impossible_dates_are_no_time_claim(tmp_path, stamp):
    path = tmp_path / "p.jpg"
    save_jpeg_with_raw_exif(path, exif_ifd={BASE.DateTimeOriginal: stamp, BASE.OffsetTimeOriginal: "+01:00"})
    claims = read_exif_claims(path)
    assert not claims.has_time
    assert claims.local_datetime is None
    assert any("DateTimeOriginal" in note for note in claims.notes)


@pytest.mark.parametrize(("tag", "expected"), [("+05:30", 330), ("-03:00", -180), ("+25:00", None), ("junk", None)])
def test_offset_tag_is_parsed_or_dropped(tmp_path, tag, expected):
    path = tmp_path / "p.jpg"
    exif_ifd = {BASE.DateTimeOriginal: "2024:05:06 07:08:09", BASE.OffsetTimeOriginal: tag}
    save_jpeg_with_raw_exif(path, exif_ifd=exif_ifd)
    claims = read_exif_claims(path)
    assert claims.utc_offset_min == expected
    assert claims.local_datetime == dt.datetime(2024, 5, 6, 7, 8, 9)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt block; the claims must survive
@pytest.mark.parametrize(
    "blob",
    [
        b"Exif\x00\x00" + b"garbage bytes " * 4,
        b"Exif\x00\x00MM\x00*\x00\x00\xff\xff" + bytes(range(60)),
        b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + bytes(range(255, 100, -1)),
    ],
    ids=["not-tiff", "offset-past-end", "huge-entry-count"],
)
def test_garbage_exif_gives_empty_claims_not_a_crash(tmp_path, blob):
    path = tmp_path / "p.jpg"
    small_image().save(path, format="JPEG", exif=blob)
    claims = read_exif_claims(path)
    assert (claims.has_place, claims.has_time, claims.alt_m, claims.utc_offset_min) == (False, False, None, None)
    assert claims.notes


def test_png_without_exif_gives_empty_claims(tmp_path):
    path = tmp_path / "p.png"
    small_image().save(path)
    claims = read_exif_claims(path)
    assert claims == ExifClaims(notes=claims.notes)
    assert not claims.has_place and not claims.has_time


def test_text_file_gives_empty_claims_with_a_note(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a photo\n")
    claims = read_exif_claims(path)
    assert not claims.has_place and claims.notes


def test_missing_file_raises_bad_photo_error(tmp_path):
    with pytest.raises(BadPhotoError, match="does not exist"):
        read_exif_claims(tmp_path / "gone.jpg")


def test_reading_emits_no_warning_for_a_clean_file(tmp_path):
    path = write_jpeg_with_exif(small_image(), tmp_path / "p.jpg", lat_deg=1.5, lon_deg=2.5, alt_m=10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_exif_claims(path).alt_m == pytest.approx(10.0)
