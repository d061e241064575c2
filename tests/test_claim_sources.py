"""Every place a photo keeps its claims, written by exiftool into real files (JPEG, PNG, HEIC), read by the engine
in its documented order of precedence, each claim labelled with where it came from; broken and hostile values
become notes. The same files through `gtloc predict` as a real subprocess: the GeoPackage says where each claim
came from, and holds the sun at the claimed place and time.

exiftool refuses to write some hostile inputs (an XMP packet with a DTD, XMP dates of zero): those are planted with
exiftool's raw writes (`-TAG#=`, `-xmp<=sidecar`) where it takes them, else with Pillow, and said so below."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path
from zoneinfo import ZoneInfo

import geopandas as gpd
import pandas as pd
import pytest
from photo_files import EXIFTOOL, exiftool_write, small_image, xmp_packet
from PIL import Image

from gtloc_engine.io import results_schema as schema
from gtloc_engine.io.exif import read_exif_claims

pytestmark = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool is not installed (apt-get install "
                                "libimage-exiftool-perl; .ci/setup-qgis does it)")

DEG_TOLERANCE = 1e-6  # exiftool keeps EXIF seconds as rationals and XMP minutes to 4-6 decimals


def _jpeg(tmp_path: Path, name: str = "p.jpg") -> Path:
    path = tmp_path / name
    small_image().save(path, format="JPEG")
    return path


def _sidecar(tmp_path: Path, **properties: str) -> str:
    """'-xmp<=FILE': exiftool copies the XMP packet as it is (values it would otherwise normalise or refuse)."""
    path = tmp_path / "sidecar.xmp"
    path.write_bytes(xmp_packet(**properties))
    return f"-xmp<={path}"


def _claims_of_case(tmp_path: Path, args: tuple):
    """The claims of a JPEG written with exiftool arguments, or ("SIDECAR", properties) for a raw XMP packet."""
    if args[0] == "SIDECAR":
        args = (_sidecar(tmp_path, **args[1]),)
    return read_exif_claims(exiftool_write(_jpeg(tmp_path), *args))


def _exif_gps(lat_deg: float, lon_deg: float) -> tuple[str, ...]:
    """EXIF GPS only (exiftool's bare -GPSLatitude writes EXIF and XMP alike)."""
    return (f"-GPS:GPSLatitude={abs(lat_deg)}", f"-GPS:GPSLatitudeRef={'S' if lat_deg < 0 else 'N'}",
            f"-GPS:GPSLongitude={abs(lon_deg)}", f"-GPS:GPSLongitudeRef={'W' if lon_deg < 0 else 'E'}")


def _xmp_gps(lat_deg: float, lon_deg: float) -> tuple[str, ...]:
    """XMP GPS only: exiftool writes XMP's 'DD,MM.mmk' form from signed degrees."""
    return f"-XMP-exif:GPSLatitude={lat_deg}", f"-XMP-exif:GPSLongitude={lon_deg}"


# ------------------------------------------------------------------------------------------- each source


# (id, exiftool arguments, expected claims): every source by itself, in both hemispheres of each axis.
SOURCES = [
    ("exif-original-paris", ("-ExifIFD:DateTimeOriginal=2021:07:14 21:30:05", "-ExifIFD:SubSecTimeOriginal=25",
                             "-ExifIFD:OffsetTimeOriginal=+02:00", *_exif_gps(48.8566, 2.3522)),
     dict(place_source="EXIF GPS", lat=48.8566, lon=2.3522, time_source="EXIF DateTimeOriginal",
          local=dt.datetime(2021, 7, 14, 21, 30, 5, 250000), offset=120,
          offset_source="EXIF OffsetTimeOriginal", zone="Europe/Paris")),
    ("exif-gps-utc-madrid", ("-GPS:GPSDateStamp=2021:07:15", "-GPS:GPSTimeStamp=20:30:00",
                             *_exif_gps(40.4168, -3.7038)),
     dict(place_source="EXIF GPS", lat=40.4168, lon=-3.7038, time_source="EXIF GPS UTC",
          local=dt.datetime(2021, 7, 15, 22, 30), offset=120, offset_source="IANA zone of the claimed place",
          zone="Europe/Madrid")),
    ("exif-gps-utc-kathmandu", ("-GPS:GPSDateStamp=2019:05:01", "-GPS:GPSTimeStamp=03:00:00",
                                *_exif_gps(27.7172, 85.3240)),
     dict(place_source="EXIF GPS", lat=27.7172, lon=85.3240, time_source="EXIF GPS UTC",
          local=dt.datetime(2019, 5, 1, 8, 45), offset=345, offset_source="IANA zone of the claimed place",
          zone="Asia/Kathmandu")),
    ("exif-gps-utc-santiago", ("-GPS:GPSDateStamp=2022:01:10", "-GPS:GPSTimeStamp=15:00:00",
                               *_exif_gps(-33.4489, -70.6693)),
     dict(place_source="EXIF GPS", lat=-33.4489, lon=-70.6693, time_source="EXIF GPS UTC",
          local=dt.datetime(2022, 1, 10, 12, 0), offset=-180, offset_source="IANA zone of the claimed place",
          zone="America/Santiago")),
    ("xmp-original-sydney", ("-XMP-exif:DateTimeOriginal=2023:07:15 12:30:45.25+10:00",
                             *_xmp_gps(-33.8688, 151.2093)),
     dict(place_source="XMP exif:GPSLatitude/GPSLongitude", lat=-33.8688, lon=151.2093,
          time_source="XMP exif:DateTimeOriginal", local=dt.datetime(2023, 7, 15, 12, 30, 45, 250000), offset=600,
          offset_source="XMP date's own offset", zone="Australia/Sydney")),
    ("xmp-date-created-new-york", ("-XMP-photoshop:DateCreated=2018:07:04 12:00:00", *_xmp_gps(40.7128, -74.0060)),
     dict(place_source="XMP exif:GPSLatitude/GPSLongitude", lat=40.7128, lon=-74.0060,
          time_source="XMP photoshop:DateCreated", local=dt.datetime(2018, 7, 4, 12, 0), offset=-240,
          offset_source="IANA zone of the claimed place", zone="America/New_York")),
    ("xmp-gps-time-adelaide-summer", ("-XMP-exif:GPSDateTime=2022:01:10 03:00:00Z", *_xmp_gps(-34.9285, 138.6007)),
     dict(place_source="XMP exif:GPSLatitude/GPSLongitude", lat=-34.9285, lon=138.6007,
          time_source="XMP exif:GPSTimeStamp", local=dt.datetime(2022, 1, 10, 13, 30), offset=630,
          offset_source="IANA zone of the claimed place", zone="Australia/Adelaide")),
    ("xmp-gps-time-adelaide-winter", ("-XMP-exif:GPSDateTime=2022:07:10 03:00:00Z", *_xmp_gps(-34.9285, 138.6007)),
     dict(place_source="XMP exif:GPSLatitude/GPSLongitude", lat=-34.9285, lon=138.6007,
          time_source="XMP exif:GPSTimeStamp", local=dt.datetime(2022, 7, 10, 12, 30), offset=570,
          offset_source="IANA zone of the claimed place", zone="Australia/Adelaide")),
    ("exif-digitized-weaker", ("-ExifIFD:CreateDate=2020:01:02 08:00:00", "-ExifIFD:OffsetTimeDigitized=-05:00"),
     dict(place_source=None, lat=None, lon=None, time_source="EXIF DateTimeDigitized (weaker)",
          local=dt.datetime(2020, 1, 2, 8, 0), offset=-300, offset_source="EXIF OffsetTimeDigitized", zone=None)),
    ("xmp-create-date-weaker", ("-XMP-xmp:CreateDate=2020:01:02 08:00:00+01:00",),
     dict(place_source=None, lat=None, lon=None, time_source="XMP xmp:CreateDate (weaker)",
          local=dt.datetime(2020, 1, 2, 8, 0), offset=60, offset_source="XMP date's own offset", zone=None)),
    ("xmp-digitized-weaker-kashgar", ("-XMP-exif:DateTimeDigitized=2023:03:01 08:00:00",
                                      *_exif_gps(39.4704, 75.9898)),
     dict(place_source="EXIF GPS", lat=39.4704, lon=75.9898, time_source="XMP exif:DateTimeDigitized (weaker)",
          local=dt.datetime(2023, 3, 1, 8, 0), offset=360, offset_source="IANA zone of the claimed place",
          zone="Asia/Urumqi")),
]


@pytest.mark.parametrize("args, expected", [case[1:] for case in SOURCES], ids=[case[0] for case in SOURCES])
def test_each_source_is_read_and_labelled(tmp_path, args, expected):
    claims = read_exif_claims(exiftool_write(_jpeg(tmp_path), *args))
    assert claims.place_source == expected["place_source"]
    if expected["lat"] is None:
        assert not claims.has_place
    else:
        assert claims.lat_deg == pytest.approx(expected["lat"], abs=DEG_TOLERANCE)
        assert claims.lon_deg == pytest.approx(expected["lon"], abs=DEG_TOLERANCE)
    assert (claims.time_source, claims.local_datetime) == (expected["time_source"], expected["local"])
    assert (claims.utc_offset_min, claims.utc_offset_source) == (expected["offset"], expected["offset_source"])
    assert claims.time_zone == expected["zone"]
    assert claims.notes == ()
    # Every label is one of the results schema's allowed values.
    assert claims.place_source in (None, *schema.PLACE_SOURCES) and claims.time_source in schema.TIME_SOURCES
    assert claims.utc_offset_source in schema.UTC_OFFSET_SOURCES
    if claims.utc_offset_source == "IANA zone of the claimed place":  # what zoneinfo says for that zone then
        zone_offset = ZoneInfo(claims.time_zone).utcoffset(claims.local_datetime)
        assert zone_offset == dt.timedelta(minutes=claims.utc_offset_min)


def test_the_weak_sources_are_the_digitized_ones():
    assert all("(weaker)" in s for s in schema.WEAK_TIME_SOURCES)
    assert [s for s in schema.TIME_SOURCES if "(weaker)" in s] == list(schema.WEAK_TIME_SOURCES)
    assert schema.TIME_SOURCES.index(schema.TIME_EXIF_GPS_UTC) < schema.TIME_SOURCES.index(schema.TIME_XMP_ORIGINAL)


@pytest.mark.parametrize("lat_text, lon_text, lat_deg, lon_deg", [
    ("33,52,7.72S", "151,12,33.48E", -(33 + 52 / 60 + 7.72 / 3600), 151 + 12 / 60 + 33.48 / 3600),  # DMS, fractions
    ("51,30.042N", "0,7.5W", 51 + 30.042 / 60, -(7.5 / 60)),  # degrees and decimal minutes (the example)
    ("64,8.796n", "21,56.556w", 64 + 8.796 / 60, -(21 + 56.556 / 60)),  # lower-case hemisphere
])
def test_xmp_gps_in_both_of_its_forms(tmp_path, lat_text, lon_text, lat_deg, lon_deg):
    path = exiftool_write(_jpeg(tmp_path), _sidecar(tmp_path, exif_GPSLatitude=lat_text, exif_GPSLongitude=lon_text))
    claims = read_exif_claims(path)
    assert claims.place_source == "XMP exif:GPSLatitude/GPSLongitude"
    assert (claims.lat_deg, claims.lon_deg) == pytest.approx((lat_deg, lon_deg), abs=1e-9)


def test_exif_dms_with_fractional_seconds_in_every_hemisphere(tmp_path):
    for lat_ref, lon_ref in (("N", "E"), ("S", "E"), ("N", "W"), ("S", "W")):
        path = exiftool_write(_jpeg(tmp_path), "-GPS:GPSLatitude=12 34 56.789", f"-GPS:GPSLatitudeRef={lat_ref}",
                              "-GPS:GPSLongitude=123 45 6.5", f"-GPS:GPSLongitudeRef={lon_ref}")
        claims = read_exif_claims(path)
        assert claims.lat_deg == pytest.approx((12 + 34 / 60 + 56.789 / 3600) * (-1 if lat_ref == "S" else 1),
                                               abs=1e-9)
        assert claims.lon_deg == pytest.approx((123 + 45 / 60 + 6.5 / 3600) * (-1 if lon_ref == "W" else 1),
                                               abs=1e-9)


# ------------------------------------------------------------------------------------------- precedence


def test_date_time_original_wins_over_every_other_time(tmp_path):
    path = exiftool_write(_jpeg(tmp_path), "-ExifIFD:DateTimeOriginal=2021:07:14 21:30:05",
                          "-GPS:GPSDateStamp=2021:07:14", "-GPS:GPSTimeStamp=10:00:00", *_exif_gps(48.8566, 2.3522),
                          "-XMP-exif:DateTimeOriginal=2020:01:01 01:01:01", "-XMP-photoshop:DateCreated=2019:01:01",
                          "-ExifIFD:CreateDate=2018:01:01 01:01:01", "-XMP-xmp:CreateDate=2017:01:01 01:01:01")
    claims = read_exif_claims(path)
    assert (claims.time_source, claims.local_datetime) == ("EXIF DateTimeOriginal", dt.datetime(2021, 7, 14, 21, 30, 5))
    # No offset tag: it comes from the local time minus GPS UTC (21:30 - 10:00, snapped to 15 min = +11:30) ...
    assert (claims.utc_offset_min, claims.utc_offset_source) == (690, "claimed local time - GPS UTC")
    # ... which is not Paris's +02:00 then, and the note says so.
    assert len(claims.notes) == 1 and "Europe/Paris (+02:00)" in claims.notes[0] and "+11:30" in claims.notes[0]


def test_a_zero_date_time_original_gives_way_to_gps_utc_with_a_note(tmp_path):
    path = exiftool_write(_jpeg(tmp_path), "-ExifIFD:DateTimeOriginal#=0000:00:00 00:00:00",
                          "-GPS:GPSDateStamp=2021:01:15", "-GPS:GPSTimeStamp=11:00:00", *_exif_gps(40.4168, -3.7038))
    claims = read_exif_claims(path)
    assert (claims.time_source, claims.local_datetime) == ("EXIF GPS UTC", dt.datetime(2021, 1, 15, 12, 0))  # CET
    assert claims.utc_offset_min == 60 and claims.time_zone == "Europe/Madrid"
    assert claims.notes == ("DateTimeOriginal '0000:00:00 00:00:00' is blank or zero",)


def test_xmp_time_comes_before_the_weaker_exif_digitized_time(tmp_path):
    path = exiftool_write(_jpeg(tmp_path), "-ExifIFD:CreateDate=2018:01:01 01:01:01",
                          "-XMP-photoshop:DateCreated=2022:05:06 07:08:09+02:00")
    claims = read_exif_claims(path)
    assert (claims.time_source, claims.local_datetime, claims.utc_offset_min) == (
        "XMP photoshop:DateCreated", dt.datetime(2022, 5, 6, 7, 8, 9), 120)


def test_a_date_without_a_time_of_day_is_no_time_and_the_next_source_is_used(tmp_path):
    path = exiftool_write(_jpeg(tmp_path), "-XMP-photoshop:DateCreated=2023:07:15",
                          "-XMP-xmp:CreateDate=2023:07:15 09:10:11")
    claims = read_exif_claims(path)
    assert claims.time_source == "XMP xmp:CreateDate (weaker)"
    assert claims.notes == ("XMP photoshop:DateCreated '2023-07-15' has no time of day",)


def test_a_broken_exif_place_gives_way_to_xmp(tmp_path):
    path = exiftool_write(_jpeg(tmp_path), "-GPS:GPSLatitude=95", "-GPS:GPSLatitudeRef=N", "-GPS:GPSLongitude=10",
                          "-GPS:GPSLongitudeRef=E", *_xmp_gps(51.5007, -0.1246))
    claims = read_exif_claims(path)
    assert claims.place_source == "XMP exif:GPSLatitude/GPSLongitude"
    assert (claims.lat_deg, claims.lon_deg) == pytest.approx((51.5007, -0.1246), abs=DEG_TOLERANCE)
    assert claims.notes == ("GPS latitude 95.0 out of range",)


def test_exif_and_xmp_places_far_apart_keep_exif_with_a_note(tmp_path):
    path = exiftool_write(_jpeg(tmp_path), *_exif_gps(48.8566, 2.3522), *_xmp_gps(51.5007, -0.1246))
    claims = read_exif_claims(path)
    assert claims.place_source == "EXIF GPS" and claims.lat_deg == pytest.approx(48.8566, abs=DEG_TOLERANCE)
    assert len(claims.notes) == 1 and "XMP GPS" in claims.notes[0] and "the EXIF place is the claim" in claims.notes[0]
    distance_km = float(claims.notes[0].split(" is ")[1].split(" km")[0])
    assert distance_km == pytest.approx(343.5, abs=1.0)  # Paris - London


def test_a_camera_on_beijing_time_in_kashgar_keeps_its_offset_with_a_note(tmp_path):
    path = exiftool_write(_jpeg(tmp_path), "-ExifIFD:DateTimeOriginal=2023:03:01 10:00:00",
                          "-ExifIFD:OffsetTimeOriginal=+08:00", *_exif_gps(39.4704, 75.9898))
    claims = read_exif_claims(path)
    assert (claims.utc_offset_min, claims.utc_offset_source, claims.time_zone) == (
        480, "EXIF OffsetTimeOriginal", "Asia/Urumqi")
    assert claims.notes == ("the claimed UTC offset +08:00 (EXIF OffsetTimeOriginal) is not that of the claimed "
                            "place's zone Asia/Urumqi (+06:00) then: the camera's clock was set to another zone, or "
                            "the place claim is wrong",)


@pytest.mark.parametrize("local, offset", [("2021:01:15 12:00:00", 60), ("2021:07:15 12:00:00", 120)])
def test_an_offsetless_time_takes_the_places_zone_with_dst(tmp_path, local, offset):
    path = exiftool_write(_jpeg(tmp_path), f"-ExifIFD:DateTimeOriginal={local}", *_exif_gps(40.4168, -3.7038))
    claims = read_exif_claims(path)
    assert (claims.utc_offset_min, claims.utc_offset_source) == (offset, "IANA zone of the claimed place")


def test_open_sea_uses_the_nautical_zone_and_says_so(tmp_path):
    path = exiftool_write(_jpeg(tmp_path), "-GPS:GPSDateStamp=2020:06:01", "-GPS:GPSTimeStamp=12:00:00",
                          *_exif_gps(0.0, -30.0))
    claims = read_exif_claims(path)
    assert (claims.time_zone, claims.utc_offset_source) == ("nautical UTC-02:00", "nautical zone (open sea)")
    assert claims.local_datetime == dt.datetime(2020, 6, 1, 10, 0) and claims.utc_offset_min == -120
    assert len(claims.notes) == 1 and "open sea" in claims.notes[0] and "nautical" in claims.notes[0]


# ------------------------------------------------------------------------------------------- broken values


@pytest.mark.parametrize("args, note", [
    (("-ExifIFD:DateTimeOriginal#=0000:00:00 00:00:00",), "DateTimeOriginal '0000:00:00 00:00:00' is blank or zero"),
    (("-ExifIFD:DateTimeOriginal#=    :  :     :  :  ",), "DateTimeOriginal '    :  :     :  :  ' is blank or zero"),
    (("-ExifIFD:CreateDate#=0000:00:00 00:00:00",), "DateTimeDigitized '0000:00:00 00:00:00' is blank or zero"),
    (("SIDECAR", {"exif_DateTimeOriginal": "0000-00-00T00:00:00"}),
     "XMP exif:DateTimeOriginal '0000-00-00T00:00:00' is blank or zero"),
    (("SIDECAR", {"xmp_CreateDate": "  "}), "XMP xmp:CreateDate '' is blank or zero"),
    (("SIDECAR", {"photoshop_DateCreated": "2023-02-30T10:00:00"}),
     "XMP photoshop:DateCreated '2023-02-30T10:00:00' is not a real date and time (zero or out of range)"),
    (("SIDECAR", {"exif_DateTimeOriginal": "2023-07-15T10:00:00+15:00"}),
     "XMP exif:DateTimeOriginal '2023-07-15T10:00:00+15:00' has offset +15:00, not a real UTC offset"),
], ids=["exif-zero", "exif-blank", "exif-digitized-zero", "xmp-zero", "xmp-blank", "xmp-impossible", "xmp-offset"])
def test_zero_blank_and_impossible_dates_are_no_time_claim(tmp_path, args, note):
    claims = _claims_of_case(tmp_path, args)
    assert not claims.has_time and claims.time_source is None and claims.utc_offset_min is None
    assert claims.notes == (note,)


@pytest.mark.parametrize("args, note", [
    (_exif_gps(0.0, 0.0), "GPS position 0,0 is a placeholder written by devices without a fix"),
    (_xmp_gps(0.0, 0.0), "XMP GPS position 0,0 is a placeholder written by devices without a fix"),
    (("-GPS:GPSLongitude=190", "-GPS:GPSLongitudeRef=E", "-GPS:GPSLatitude=10", "-GPS:GPSLatitudeRef=N"),
     "GPS longitude 190.0 out of range"),
    (("SIDECAR", {"exif_GPSLatitude": "95,00.0N", "exif_GPSLongitude": "10,00.0E"}),
     "XMP GPS latitude '95,00.0N' is 95.000000 deg, out of range"),
    (("SIDECAR", {"exif_GPSLatitude": "10,75.0N", "exif_GPSLongitude": "10,00.0E"}),
     "XMP GPS latitude '10,75.0N' has minutes or seconds of 60 or more"),
    (("SIDECAR", {"exif_GPSLatitude": "10,30.0E", "exif_GPSLongitude": "10,00.0E"}),
     "XMP GPS latitude '10,30.0E' has hemisphere E, not N or S"),
    (("SIDECAR", {"exif_GPSLatitude": "51.5", "exif_GPSLongitude": "10,00.0E"}),
     "XMP GPS latitude '51.5' is not in XMP's 'DDD,MM,SSk' or 'DDD,MM.mmk' form"),
    (("SIDECAR", {"exif_GPSLatitude": "51,30.0N"}),
     "XMP GPS position has only one of exif:GPSLatitude and exif:GPSLongitude"),
], ids=["exif-null-island", "xmp-null-island", "exif-lon-190", "xmp-lat-95", "xmp-minutes-75", "xmp-wrong-axis",
        "xmp-decimal", "xmp-one-axis"])
def test_broken_places_are_no_place_claim(tmp_path, args, note):
    claims = _claims_of_case(tmp_path, args)
    assert not claims.has_place and claims.place_source is None and claims.time_zone is None
    assert claims.notes == (note,)


def test_gps_utc_without_a_place_is_no_time_claim(tmp_path):
    path = exiftool_write(_jpeg(tmp_path), "-GPS:GPSDateStamp=2021:07:15", "-GPS:GPSTimeStamp=20:30:00")
    claims = read_exif_claims(path)
    assert not claims.has_time and claims.gps_utc_datetime == dt.datetime(2021, 7, 15, 20, 30, tzinfo=dt.timezone.utc)
    assert claims.notes == ("EXIF GPS UTC time 2021-07-15T20:30:00+00:00 has no place claim to give its local time; "
                            "no time claimed from it",)


# ------------------------------------------------------------------------------------------- hostile XMP


BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lollollollollollollollollollol">'
                  + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                             for i in range(1, 10))
                  + b"]><x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF "
                    b"xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'><rdf:Description "
                    b"xmlns:exif='http://ns.adobe.com/exif/1.0/' exif:DateTimeOriginal='&lol9;'/></rdf:RDF>"
                    b"</x:xmpmeta>")
EXTERNAL_ENTITY = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/hostname">]>'
                   b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF "
                   b"xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'><rdf:Description "
                   b"xmlns:exif='http://ns.adobe.com/exif/1.0/'><exif:GPSLatitude>&xxe;</exif:GPSLatitude>"
                   b"</rdf:Description></rdf:RDF></x:xmpmeta>")
DEEP_NESTING = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>" + b"<a>" * 9_000 + b"</a>" * 9_000 + b"</x:xmpmeta>"  # 63 KB


@pytest.mark.parametrize("packet, error", [
    (BILLION_LAUGHS, "EntitiesForbidden"), (EXTERNAL_ENTITY, "EntitiesForbidden"),
    (b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><unclosed", "ParseError"), (DEEP_NESTING, "RecursionError"),
], ids=["billion-laughs", "external-entity", "malformed", "deep-nesting"])
def test_a_hostile_xmp_packet_is_a_note_and_costs_the_exif_claims_nothing(tmp_path, packet, error):
    # exiftool refuses to write a packet with a DTD ("Invalid XMP data"), so Pillow plants it; the EXIF beside it
    # is exiftool's.
    path = tmp_path / "hostile.jpg"
    small_image().save(path, format="JPEG", xmp=packet)
    exiftool_write(path, "-ExifIFD:DateTimeOriginal=2021:07:14 21:30:05", *_exif_gps(48.8566, 2.3522))
    assert Image.open(path).info["xmp"].startswith(packet[:20])  # the packet survived exiftool's rewrite
    tracemalloc.start()
    try:
        claims = read_exif_claims(path)
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak_bytes < 64 * 2**20  # the bomb expands to 3 GB of 'lol'; refused before any of it is built
    assert claims.has_place and claims.time_source == "EXIF DateTimeOriginal"
    assert len(claims.notes) == 1 and claims.notes[0].startswith("XMP packet could not be parsed")
    assert error in claims.notes[0] and "its claims are ignored" in claims.notes[0]


# ------------------------------------------------------------------------------------------- other formats


def test_heic_keeps_its_exif_and_xmp_claims(tmp_path):
    # exiftool cannot create a HEIC; pillow-heif can (its wheels carry libheif with the x265 encoder), and exiftool
    # then writes EXIF and XMP into it.
    pillow_heif = pytest.importorskip("pillow_heif")
    from gtloc_engine.io.photos import open_photo

    pillow_heif.register_heif_opener()  # for writing; the engine registers it itself when it meets a HEIC
    path = tmp_path / "phone.heic"
    Image.new("RGB", (64, 48), (90, 140, 200)).save(path, format="HEIF")
    exiftool_write(path, *_exif_gps(-22.906847, -43.172896), "-XMP-exif:DateTimeOriginal=2024:02:10 18:45:00")
    claims = read_exif_claims(path)
    assert claims.place_source == "EXIF GPS" and claims.time_zone == "America/Sao_Paulo"
    assert (claims.lat_deg, claims.lon_deg) == pytest.approx((-22.906847, -43.172896), abs=DEG_TOLERANCE)
    assert (claims.time_source, claims.local_datetime, claims.utc_offset_min) == (
        "XMP exif:DateTimeOriginal", dt.datetime(2024, 2, 10, 18, 45), -180)
    with open_photo(path) as img:
        assert img.format == "HEIF"


def test_png_keeps_its_xmp_claims(tmp_path):
    path = tmp_path / "p.png"
    small_image().save(path)
    exiftool_write(path, *_xmp_gps(64.1466, -21.9426), "-XMP-exif:DateTimeOriginal=2016:06:21 23:00:00")
    claims = read_exif_claims(path)
    assert (claims.place_source, claims.time_source, claims.time_zone) == (
        "XMP exif:GPSLatitude/GPSLongitude", "XMP exif:DateTimeOriginal", "Atlantic/Reykjavik")


# ------------------------------------------------------------------------------------------- from the CLI


def gtloc(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "gtloc_engine.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                                           "HOME": str(Path.home())})


def test_predict_from_the_cli_labels_every_claim_and_holds_the_sun(trained_checkpoint, tmp_path):
    folder = tmp_path / "album"
    folder.mkdir()
    by_name = {}
    for case_id, args, expected in SOURCES:
        exiftool_write(_jpeg(folder, f"{case_id}.jpg"), *args)
        by_name[f"{case_id}.jpg"] = expected
    exiftool_write(_jpeg(folder, "broken.jpg"), "-ExifIFD:DateTimeOriginal#=0000:00:00 00:00:00",
                   *_exif_gps(0.0, 0.0))
    small_image().save(folder / "plain.png")
    out = tmp_path / "results.gpkg"
    proc = gtloc("predict", folder, "--model", trained_checkpoint, "--out", out, "--res-deg", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["n_done"] == len(SOURCES) + 2
    photos = gpd.read_file(out, layer="photos").set_index("file_name")

    for name, expected in by_name.items():
        row = photos.loc[name]
        assert row.time_source == expected["time_source"], name
        assert row.claimed_time_local == expected["local"].isoformat(), name
        assert row.claimed_utc_offset_min == expected["offset"] and row.utc_offset_source == expected["offset_source"]
        if expected["place_source"] is None:
            assert pd.isna(row.place_source) and pd.isna(row.claimed_time_zone)  # NULL
            assert pd.isna(row.sun_check) and pd.isna(row.sun_elev_deg)  # no place, no sun
            continue
        assert (row.place_source, row.claimed_time_zone) == (expected["place_source"], expected["zone"]), name
        assert row.claimed_lat_deg == pytest.approx(expected["lat"], abs=DEG_TOLERANCE)
        # The sun then and there, and the check against the time posterior.
        assert -90 <= row.sun_elev_deg <= 90 and 0 <= row.sun_azimuth_deg < 360
        assert row.light_regime in schema.LIGHT_REGIMES and row.sun_check in ("agrees", "disagrees")
        assert 0.0 <= row.sun_regime_mass <= 1.0
        assert (row.sun_check == "disagrees") == ("sun: the claim is in" in (row.notes or ""))
        rise, set_ = dt.datetime.fromisoformat(row.sunrise_local), dt.datetime.fromisoformat(row.sunset_local)
        assert rise < set_ and rise.utcoffset() == ZoneInfo(expected["zone"]).utcoffset(rise.replace(tzinfo=None))

    broken = photos.loc["broken.jpg"]
    assert pd.isna(broken.time_source) and pd.isna(broken.place_source) and broken.verdict == "no claim"
    assert "blank or zero" in broken.notes and "placeholder" in broken.notes
    plain = photos.loc["plain.png"]
    assert pd.isna(plain.place_source) and pd.isna(plain.time_source) and pd.isna(plain.light_regime)
