"""A photo's place and time claims, from every place a photo keeps them (EXIF, XMP; JPEG, PNG, TIFF, WebP, HEIC),
never trusting a value; and a JPEG writer for them.

Order of precedence (the first source holding a valid value is the claim; each claim says which it was, in
`place_source`, `time_source` and `utc_offset_source`, whose values are the results schema's):
    place:  EXIF GPS (GPSLatitude/GPSLongitude and their refs)  >  XMP exif:GPSLatitude/GPSLongitude ("51,30.042N")
    time:   EXIF DateTimeOriginal (+ SubSecTimeOriginal, OffsetTimeOriginal)
            >  EXIF GPS UTC (GPSDateStamp + GPSTimeStamp), made local with the claimed place's IANA zone
            >  XMP exif:DateTimeOriginal  >  XMP photoshop:DateCreated
            >  XMP exif:GPSTimeStamp (UTC, made local with the place's zone)
            >  EXIF DateTimeDigitized (+ SubSecTimeDigitized, OffsetTimeDigitized), weaker: when it was digitized
            >  XMP xmp:CreateDate, then XMP exif:DateTimeDigitized, weaker likewise
    UTC offset of the claimed local time: its own (EXIF OffsetTime*, or the XMP date's offset) > local time minus
            GPS UTC (EXIF, else XMP; snapped to 15 min) > the claimed place's IANA zone at that wall clock (DST
            included; the nautical zone at open sea, labelled in notes).
EXIF IFD0 DateTime and xmp:ModifyDate are when the file was last changed, not claims. A claimed offset that
disagrees with the place's zone is kept (it is the camera's) and noted: the camera's clock was set to another zone,
or the place is wrong (Kashgar: its zone is Asia/Urumqi, +06:00, while many clocks there keep Beijing's +08:00).
XMP is parsed by Pillow's getxmp with defusedxml (entity bombs and external entities refused; io/xmp.py).

Public surface:
    ExifClaims            what a photo claims about where and when it was taken, where each claim came from, plus
                          notes on what was dropped
    read_exif_claims      path -> ExifClaims; never raises for bad metadata, only for a missing or unreadable file
    write_jpeg_with_exif  image + claims -> a JPEG written atomically (synthetic data, tests)
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from gtloc_engine.errors import BadPhotoError
from gtloc_engine.geo import haversine_km
from gtloc_engine.io.atomic import atomic_write
from gtloc_engine.io.photos import check_photo_file, open_photo
from gtloc_engine.io.results_schema import (OFFSET_EXIF_DIGITIZED, OFFSET_EXIF_ORIGINAL, OFFSET_GPS_GAP,
                                            OFFSET_NAUTICAL, OFFSET_XMP_DATE, OFFSET_ZONE, PLACE_EXIF_GPS,
                                            PLACE_XMP_GPS, TIME_EXIF_DIGITIZED, TIME_EXIF_GPS_UTC, TIME_EXIF_ORIGINAL,
                                            TIME_XMP_CREATE_DATE, TIME_XMP_DATE_CREATED, TIME_XMP_DIGITIZED,
                                            TIME_XMP_GPS_UTC, TIME_XMP_ORIGINAL)
from gtloc_engine.io.xmp import parse_xmp_datetime, parse_xmp_gps, xmp_properties
from gtloc_engine.timezones import Zone, zone_at

__all__ = ["ExifClaims", "read_exif_claims", "write_jpeg_with_exif"]

_GPS = ExifTags.GPS
_BASE = ExifTags.Base

# Real UTC offsets run from -12:00 to +14:00; anything beyond +-14 h is a wrong clock, not a time zone.
_MAX_UTC_OFFSET_MIN = 14 * 60
# Every time zone in use is a multiple of 15 minutes, so a derived offset is snapped to that grid.
_OFFSET_STEP_MIN = 15
# From the deepest ocean trench to the edge of space: outside this an altitude is a broken value.
_ALT_RANGE_M = (-11_000.0, 100_000.0)
# Seconds of arc are stored in units of 1e-4 arcsec (about 3 mm on the ground), well below 1e-6 deg.
_ARCSEC_DENOMINATOR = 10_000
_ALT_DENOMINATOR = 1_000
_GPS_SECONDS_DENOMINATOR = 1_000_000
_GPS_VERSION_ID = b"\x02\x03\x00\x00"
# EXIF 3.0 adds 2/3 (ellipsoidal height above/below); 1 and 3 both mean "below the reference".
_ALT_REF_BELOW = frozenset({1, 3})
_ALT_REF_ABOVE = frozenset({0, 2})

_DATETIME_RE = re.compile(r"([0-9]{4})[:-]([0-9]{2})[:-]([0-9]{2})[ T]([0-9]{2}):([0-9]{2}):([0-9]{2})", re.ASCII)
_DATE_RE = re.compile(r"([0-9]{4})[:-]([0-9]{2})[:-]([0-9]{2})", re.ASCII)
_OFFSET_RE = re.compile(r"([+-])([0-9]{2}):?([0-9]{2})", re.ASCII)
_SUBSEC_RE = re.compile(r"[0-9]+", re.ASCII)
_NOTE_VALUE_CHARS = 80
# EXIF and XMP places farther apart than this are two claims, and the note says which one was kept.
_PLACE_AGREEMENT_KM = 1.0
# (time tag, sub-second tag, offset tag, claim source, offset source) of the two EXIF local times, by precedence.
_EXIF_ORIGINAL = (_BASE.DateTimeOriginal, _BASE.SubsecTimeOriginal, _BASE.OffsetTimeOriginal, TIME_EXIF_ORIGINAL,
                  OFFSET_EXIF_ORIGINAL)
_EXIF_DIGITIZED = (_BASE.DateTimeDigitized, _BASE.SubsecTimeDigitized, _BASE.OffsetTimeDigitized,
                   TIME_EXIF_DIGITIZED, OFFSET_EXIF_DIGITIZED)
_TAG_NAMES = {_BASE.DateTimeOriginal: "DateTimeOriginal", _BASE.SubsecTimeOriginal: "SubSecTimeOriginal",
              _BASE.OffsetTimeOriginal: "OffsetTimeOriginal", _BASE.DateTimeDigitized: "DateTimeDigitized",
              _BASE.SubsecTimeDigitized: "SubSecTimeDigitized", _BASE.OffsetTimeDigitized: "OffsetTimeDigitized"}


@dataclass(frozen=True)
class ExifClaims:
    """What a photo claims about place and time (EXIF, XMP) and where each claim came from; a field it could not
    trust is None and `notes` says why."""

    lat_deg: float | None = None
    lon_deg: float | None = None
    alt_m: float | None = None
    # Naive: the claimed local wall clock (DateTimeOriginal with SubSecTimeOriginal, or the next source by
    # precedence), in whatever zone the camera was set to; a GPS UTC time made local in the place's zone.
    local_datetime: dt.datetime | None = None
    # Minutes east of UTC of local_datetime (utc_offset_source says from where); None without a time claim.
    utc_offset_min: int | None = None
    # Aware, in UTC: the GPS receiver's date and time (EXIF GPSDateStamp/GPSTimeStamp, else XMP exif:GPSTimeStamp).
    gps_utc_datetime: dt.datetime | None = None
    notes: tuple[str, ...] = ()
    place_source: str | None = None  # results_schema.PLACE_SOURCES
    time_source: str | None = None  # results_schema.TIME_SOURCES
    utc_offset_source: str | None = None  # results_schema.UTC_OFFSET_SOURCES
    time_zone: str | None = None  # the claimed place's IANA zone (or 'nautical UTC+hh:00' at open sea)

    @property
    def has_place(self) -> bool:
        """True when both latitude and longitude were claimed and passed the checks."""
        return self.lat_deg is not None and self.lon_deg is not None

    @property
    def has_time(self) -> bool:
        """True when a local capture date and time was claimed and passed the checks."""
        return self.local_datetime is not None


def read_exif_claims(path: str | os.PathLike) -> ExifClaims:
    """Read place and time claims from a photo's EXIF and XMP, by the module's order of precedence; bad or missing
    values become notes, never exceptions.

    Raises BadPhotoError only when the file itself is missing, not a regular file, unreadable or empty.
    """
    path = Path(path)
    check_photo_file(path)
    notes: list[str] = []
    exif_ifd, gps_ifd, xmp = _read_metadata(path, notes)
    lat_deg, lon_deg, place_source = _choose_place(gps_ifd, xmp, notes)
    alt_m = _read_altitude(gps_ifd, notes)
    gps_utc = _read_gps_utc_datetime(gps_ifd, notes)
    xmp_gps_utc = _read_xmp_gps_utc(xmp, notes)
    zone = _zone_of(lat_deg, lon_deg, notes) if place_source else None
    claim = _choose_time(exif_ifd, xmp, gps_utc, xmp_gps_utc, zone, notes)
    gps_utc = gps_utc or xmp_gps_utc
    if claim is not None and claim.offset_min is None:
        claim = _fill_offset(claim, gps_utc, zone, notes)
    if claim is not None and zone is not None and claim.offset_source not in (OFFSET_ZONE, OFFSET_NAUTICAL, None):
        _check_offset_against_zone(claim, zone, notes)
    return ExifClaims(
        lat_deg=lat_deg,
        lon_deg=lon_deg,
        alt_m=alt_m,
        local_datetime=claim.local if claim else None,
        utc_offset_min=claim.offset_min if claim else None,
        gps_utc_datetime=gps_utc,
        notes=tuple(notes),
        place_source=place_source,
        time_source=claim.source if claim else None,
        utc_offset_source=claim.offset_source if claim and claim.offset_min is not None else None,
        time_zone=zone.name if zone else None,
    )


def write_jpeg_with_exif(
    image: Image.Image,
    path: str | os.PathLike,
    *,
    lat_deg: float | None = None,
    lon_deg: float | None = None,
    alt_m: float | None = None,
    local_datetime: dt.datetime | None = None,
    utc_offset_min: int | None = None,
    quality: int = 92,
) -> Path:
    """Write `image` as a JPEG carrying the given GPS and capture-time EXIF, atomically; returns the path.

    `local_datetime` is the local wall clock; an aware datetime gives both its wall clock and its UTC offset.
    With an offset, GPSDateStamp/GPSTimeStamp are written too (in UTC). Bad arguments raise ValueError.
    """
    path = Path(path)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an int in 1..100, got {quality!r}")
    exif = _build_exif(lat_deg, lon_deg, alt_m, local_datetime, utc_offset_min)
    # JPEG holds only L and RGB (CMYK aside); anything else, alpha included, is flattened to RGB.
    jpeg_ready = image if image.mode in ("L", "RGB") else image.convert("RGB")
    atomic_write(path, lambda temp: jpeg_ready.save(temp, format="JPEG", quality=quality, exif=exif))
    return path


# ---------------------------------------------------------------------------------------------- reading


def _read_metadata(path: Path, notes: list[str]) -> tuple[dict, dict, dict]:
    """The Exif and GPS sub-IFDs as plain dicts and the XMP properties read (io/xmp.py); each part that cannot be
    parsed is empty, with a note, and costs the others nothing."""
    xmp: dict = {}
    try:
        with open_photo(path) as img:
            xmp = _read_xmp(img, notes)
            exif = img.getexif()
            exif_ifd = _read_sub_ifd(exif, ExifTags.IFD.Exif, "Exif", notes)
            gps_ifd = _read_sub_ifd(exif, ExifTags.IFD.GPSInfo, "GPS", notes)
            has_base = len(exif) > 0
    except BadPhotoError as exc:
        notes.append(f"no EXIF read: {exc}")
        return {}, {}, {}
    # Pillow's EXIF parsers raise assorted types (struct.error, KeyError, ...) on hostile bytes.
    except Exception as exc:
        notes.append(f"EXIF block could not be parsed ({_describe(exc)})")
        return {}, {}, xmp
    if not (has_base or exif_ifd or gps_ifd or xmp):
        notes.append("no readable EXIF data in the file")
    return exif_ifd, gps_ifd, xmp


def _read_xmp(img: Image.Image, notes: list[str]) -> dict:
    """The XMP properties of an open photo (io/xmp.py), parsed by Pillow's getxmp with defusedxml; {} with a note
    when the packet is hostile or broken."""
    if "xmp" not in img.info:
        return {}
    try:
        import defusedxml  # noqa: F401  (without it getxmp warns and returns nothing)
    except ImportError:
        notes.append("XMP not read: the defusedxml package is not installed (pip install defusedxml)")
        return {}
    try:
        return xmp_properties(img.getxmp(strip_namespaces=False))
    # defusedxml raises EntitiesForbidden / DTDForbidden / ExternalReferenceForbidden, expat a ParseError, deep
    # nesting a RecursionError: all of them are a hostile or broken packet.
    except Exception as exc:
        notes.append(f"XMP packet could not be parsed ({_describe(exc)}); its claims are ignored")
        return {}


def _read_sub_ifd(exif: Image.Exif, ifd: ExifTags.IFD, name: str, notes: list[str]) -> dict:
    try:
        return dict(exif.get_ifd(ifd))
    except Exception as exc:  # one broken sub-IFD must not cost the claims of the other
        notes.append(f"EXIF {name} section could not be parsed ({_describe(exc)})")
        return {}


def _read_position(gps: dict, notes: list[str]) -> tuple[float | None, float | None]:
    raw_lat, raw_lon = gps.get(_GPS.GPSLatitude), gps.get(_GPS.GPSLongitude)
    if raw_lat is None and raw_lon is None:
        return None, None
    if raw_lat is None or raw_lon is None:
        notes.append("GPS position has only one of latitude and longitude")
        return None, None
    lat_deg = _signed_degrees(raw_lat, gps.get(_GPS.GPSLatitudeRef), "latitude", ("N", "S"), 90.0, notes)
    lon_deg = _signed_degrees(raw_lon, gps.get(_GPS.GPSLongitudeRef), "longitude", ("E", "W"), 180.0, notes)
    if lat_deg is None or lon_deg is None:
        return None, None
    if lat_deg == 0.0 and lon_deg == 0.0:
        notes.append("GPS position 0,0 is a placeholder written by devices without a fix")
        return None, None
    return lat_deg, lon_deg


def _choose_place(gps: dict, xmp: dict, notes: list[str]) -> tuple[float | None, float | None, str | None]:
    """(lat_deg, lon_deg, place_source): EXIF GPS, else XMP GPS; two valid places far apart are noted."""
    lat_deg, lon_deg = _read_position(gps, notes)
    xmp_lat_deg, xmp_lon_deg = _read_xmp_position(xmp, notes)
    if lat_deg is not None:
        if xmp_lat_deg is not None:
            gap_km = float(haversine_km((lat_deg, lon_deg), (xmp_lat_deg, xmp_lon_deg)))
            if gap_km > _PLACE_AGREEMENT_KM:
                notes.append(f"XMP GPS ({xmp_lat_deg:.6f}, {xmp_lon_deg:.6f}) is {gap_km:.1f} km from the EXIF GPS "
                             f"place ({lat_deg:.6f}, {lon_deg:.6f}); the EXIF place is the claim")
        return lat_deg, lon_deg, PLACE_EXIF_GPS
    if xmp_lat_deg is not None:
        return xmp_lat_deg, xmp_lon_deg, PLACE_XMP_GPS
    return None, None, None


def _read_xmp_position(xmp: dict, notes: list[str]) -> tuple[float | None, float | None]:
    raw_lat, raw_lon = xmp.get("exif:GPSLatitude"), xmp.get("exif:GPSLongitude")
    if raw_lat is None and raw_lon is None:
        return None, None
    if raw_lat is None or raw_lon is None:
        notes.append("XMP GPS position has only one of exif:GPSLatitude and exif:GPSLongitude")
        return None, None
    out = []
    for raw, axis in ((raw_lat, "latitude"), (raw_lon, "longitude")):
        try:
            if not isinstance(raw, str):
                raise ValueError("is not a text value")
            out.append(parse_xmp_gps(raw, axis))
        except ValueError as exc:
            notes.append(f"XMP GPS {axis} {_shown(raw)} {exc}")
            return None, None
    if out == [0.0, 0.0]:
        notes.append("XMP GPS position 0,0 is a placeholder written by devices without a fix")
        return None, None
    return out[0], out[1]


def _signed_degrees(
    raw: Any, raw_ref: Any, what: str, refs: tuple[str, str], limit_deg: float, notes: list[str]
) -> float | None:
    """Degrees from an EXIF (deg, min, sec) value and its hemisphere letter; None (with a note) if anything is off."""
    parts = tuple(raw) if isinstance(raw, (tuple, list)) else (raw,)
    values = [_finite_float(part) for part in parts]
    if not 1 <= len(values) <= 3 or any(value is None for value in values):
        notes.append(f"GPS {what} {_shown(raw)} is not 1-3 finite numbers (zero denominator or junk)")
        return None
    if any(value < 0 for value in values):
        notes.append(f"GPS {what} {_shown(raw)} has a negative part; the sign belongs in its N/S/E/W ref")
        return None
    abs_deg = sum(value / 60.0**i for i, value in enumerate(values))
    if abs_deg > limit_deg:
        notes.append(f"GPS {what} {abs_deg} out of range")
        return None
    ref = _text(raw_ref).upper()[:1]
    if ref not in refs:
        notes.append(f"GPS {what} ref {_shown(raw_ref)} is not {refs[0]} or {refs[1]}, so the hemisphere is unknown")
        return None
    return -abs_deg if ref == refs[1] else abs_deg


def _read_altitude(gps: dict, notes: list[str]) -> float | None:
    raw = gps.get(_GPS.GPSAltitude)
    if raw is None:
        return None
    alt_m = _finite_float(raw)
    if alt_m is None:
        notes.append(f"GPS altitude {_shown(raw)} is not a finite number (zero denominator or junk)")
        return None
    ref = _byte_value(gps.get(_GPS.GPSAltitudeRef, 0))
    if ref in _ALT_REF_BELOW:
        alt_m = -abs(alt_m)
    elif ref not in _ALT_REF_ABOVE:
        notes.append(f"GPS altitude ref {_shown(gps.get(_GPS.GPSAltitudeRef))} is not 0 (above) or 1 (below sea level)")
        return None
    if not _ALT_RANGE_M[0] <= alt_m <= _ALT_RANGE_M[1]:
        notes.append(f"GPS altitude {alt_m} m out of range")
        return None
    return alt_m


def _read_exif_datetime(exif_ifd: dict, tag: int, subsec_tag: int, notes: list[str]) -> dt.datetime | None:
    """A naive wall clock from an EXIF 'YYYY:MM:DD HH:MM:SS' tag and its sub-second tag; None (noted) if broken."""
    raw = exif_ifd.get(tag)
    if raw is None:
        return None
    name = _TAG_NAMES[tag]
    text = _text(raw)
    # Cameras without a set clock write zeros or spaces in the fixed "YYYY:MM:DD HH:MM:SS" layout.
    if not text.strip(" :-0"):
        notes.append(f"{name} {_shown(raw)} is blank or zero")
        return None
    match = _DATETIME_RE.fullmatch(text)
    if match is None:
        notes.append(f"{name} {_shown(raw)} is not in 'YYYY:MM:DD HH:MM:SS' form")
        return None
    try:
        wall_clock = dt.datetime(*(int(group) for group in match.groups()))
    except ValueError:
        notes.append(f"{name} {_shown(raw)} is not a real date and time")
        return None
    return wall_clock.replace(microsecond=_read_subsec_us(exif_ifd, subsec_tag, notes))


def _read_subsec_us(exif_ifd: dict, tag: int, notes: list[str]) -> int:
    raw = exif_ifd.get(tag)
    if raw is None:
        return 0
    digits = _text(raw).strip()
    if not digits:
        return 0
    if _SUBSEC_RE.fullmatch(digits) is None:
        notes.append(f"{_TAG_NAMES[tag]} {_shown(raw)} is not digits; seconds kept whole")
        return 0
    # The digits are a decimal fraction of a second: "5" is 0.5 s, "123" is 0.123 s.
    return int(digits[:6].ljust(6, "0"))


def _read_gps_utc_datetime(gps: dict, notes: list[str]) -> dt.datetime | None:
    raw_date, raw_time = gps.get(_GPS.GPSDateStamp), gps.get(_GPS.GPSTimeStamp)
    if raw_date is None and raw_time is None:
        return None
    if raw_date is None or raw_time is None:
        notes.append("GPS time has only one of GPSDateStamp and GPSTimeStamp")
        return None
    match = _DATE_RE.fullmatch(_text(raw_date))
    try:
        date = dt.date(*(int(group) for group in match.groups())) if match else None
    except ValueError:
        date = None
    if date is None:
        notes.append(f"GPSDateStamp {_shown(raw_date)} is not a real 'YYYY:MM:DD' date")
        return None
    parts = tuple(raw_time) if isinstance(raw_time, (tuple, list)) else ()
    hms = [_finite_float(part) for part in parts]
    if len(hms) != 3 or any(value is None for value in hms):
        notes.append(f"GPSTimeStamp {_shown(raw_time)} is not three finite numbers (zero denominator or junk)")
        return None
    hour, minute, second = hms
    # 60 s is allowed: GPS receivers can report a leap second.
    if not (0 <= hour < 24 and 0 <= minute < 60 and 0 <= second < 61):
        notes.append(f"GPSTimeStamp {_shown(raw_time)} is not a time of day")
        return None
    midnight_utc = dt.datetime(date.year, date.month, date.day, tzinfo=dt.timezone.utc)
    return midnight_utc + dt.timedelta(hours=hour, minutes=minute, seconds=second)


def _read_utc_offset_min(exif_ifd: dict, tag: int, notes: list[str]) -> int | None:
    raw = exif_ifd.get(tag)
    if raw is None:
        return None
    name = _TAG_NAMES[tag]
    text = _text(raw).strip()
    if not text.strip(" :"):
        return None
    if text.upper() == "Z":
        return 0
    match = _OFFSET_RE.fullmatch(text)
    if match is None:
        notes.append(f"{name} {_shown(raw)} is not in '+HH:MM' form")
        return None
    sign, hours, minutes = match.groups()
    offset_min = (-1 if sign == "-" else 1) * (int(hours) * 60 + int(minutes))
    if int(minutes) >= 60 or abs(offset_min) > _MAX_UTC_OFFSET_MIN:
        notes.append(f"{name} {_shown(raw)} is not a real UTC offset")
        return None
    return offset_min


def _read_xmp_datetime(xmp: dict, name: str, notes: list[str]) -> tuple[dt.datetime, int | None] | None:
    """(naive wall clock, offset or None) of an XMP date property; None, with a note when it is there but broken."""
    raw = xmp.get(name)
    if raw is None:
        return None
    try:
        if not isinstance(raw, str):
            raise ValueError("is not a text value")
        return parse_xmp_datetime(raw)
    except ValueError as exc:
        notes.append(f"XMP {name} {_shown(raw)} {exc}")
        return None


def _read_xmp_gps_utc(xmp: dict, notes: list[str]) -> dt.datetime | None:
    """XMP exif:GPSTimeStamp as an aware UTC datetime (the XMP spec keeps it in UTC; an offset, if any, is applied)."""
    parsed = _read_xmp_datetime(xmp, "exif:GPSTimeStamp", notes)
    if parsed is None:
        return None
    wall_clock, offset_min = parsed
    try:
        return (wall_clock - dt.timedelta(minutes=offset_min or 0)).replace(tzinfo=dt.timezone.utc)
    except OverflowError:
        notes.append(f"XMP exif:GPSTimeStamp {wall_clock.isoformat()} is out of range once made UTC")
        return None


@dataclass(frozen=True)
class _TimeClaim:
    local: dt.datetime  # naive wall clock
    offset_min: int | None
    offset_source: str | None
    source: str


def _choose_time(exif_ifd: dict, xmp: dict, gps_utc: dt.datetime | None, xmp_gps_utc: dt.datetime | None,
                 zone: Zone | None, notes: list[str]) -> _TimeClaim | None:
    """The first valid time claim by precedence (the module docstring); sources after it are not read, so their
    broken values are not noted."""
    readers = (
        lambda: _exif_time(exif_ifd, _EXIF_ORIGINAL, notes),
        lambda: _utc_time(gps_utc, TIME_EXIF_GPS_UTC, zone, notes),
        lambda: _xmp_time(xmp, "exif:DateTimeOriginal", TIME_XMP_ORIGINAL, notes),
        lambda: _xmp_time(xmp, "photoshop:DateCreated", TIME_XMP_DATE_CREATED, notes),
        lambda: _utc_time(xmp_gps_utc, TIME_XMP_GPS_UTC, zone, notes),
        lambda: _exif_time(exif_ifd, _EXIF_DIGITIZED, notes),
        lambda: _xmp_time(xmp, "xmp:CreateDate", TIME_XMP_CREATE_DATE, notes),
        lambda: _xmp_time(xmp, "exif:DateTimeDigitized", TIME_XMP_DIGITIZED, notes),
    )
    for read in readers:
        if (claim := read()) is not None:
            return claim
    return None


def _exif_time(exif_ifd: dict, tags: tuple, notes: list[str]) -> _TimeClaim | None:
    tag, subsec_tag, offset_tag, source, offset_source = tags
    local = _read_exif_datetime(exif_ifd, tag, subsec_tag, notes)
    if local is None:
        return None
    offset_min = _read_utc_offset_min(exif_ifd, offset_tag, notes)
    return _TimeClaim(local, offset_min, offset_source if offset_min is not None else None, source)


def _xmp_time(xmp: dict, name: str, source: str, notes: list[str]) -> _TimeClaim | None:
    parsed = _read_xmp_datetime(xmp, name, notes)
    if parsed is None:
        return None
    local, offset_min = parsed
    return _TimeClaim(local, offset_min, OFFSET_XMP_DATE if offset_min is not None else None, source)


def _utc_time(utc: dt.datetime | None, source: str, zone: Zone | None, notes: list[str]) -> _TimeClaim | None:
    """A GPS UTC time as the local wall clock of the claimed place's zone; without a place it cannot be local."""
    if utc is None:
        return None
    if zone is None:
        notes.append(f"{source} time {utc.isoformat()} has no place claim to give its local time; no time claimed "
                     "from it")
        return None
    try:
        local = zone.from_utc(utc)
    except (OverflowError, ValueError) as exc:
        notes.append(f"{source} time {utc.isoformat()} cannot be made local in {zone.name} ({_describe(exc)})")
        return None
    offset_min = int(local.utcoffset().total_seconds() // 60)
    return _TimeClaim(local.replace(tzinfo=None), offset_min, _zone_source(zone), source)


def _zone_of(lat_deg: float, lon_deg: float, notes: list[str]) -> Zone | None:
    try:
        zone = zone_at(lat_deg, lon_deg)
    except Exception as exc:  # the zone index failing to load must not cost the other claims
        notes.append(f"no time zone for the claimed place ({_describe(exc)})")
        return None
    if zone.nautical:
        notes.append(f"no IANA time zone at the claimed place (open sea): local times there use the {zone.name} "
                     "zone of its longitude")
    return zone


def _zone_source(zone: Zone) -> str:
    return OFFSET_NAUTICAL if zone.nautical else OFFSET_ZONE


def _fill_offset(claim: _TimeClaim, gps_utc: dt.datetime | None, zone: Zone | None,
                 notes: list[str]) -> _TimeClaim:
    """A local time without its own offset: local minus GPS UTC, else the place's zone at that wall clock."""
    if gps_utc is not None:
        offset_min = _derive_utc_offset_min(claim.local, gps_utc, notes)
        if offset_min is not None:
            return _TimeClaim(claim.local, offset_min, OFFSET_GPS_GAP, claim.source)
    if zone is not None:
        try:
            return _TimeClaim(claim.local, zone.offset_min(claim.local), _zone_source(zone), claim.source)
        except (OverflowError, ValueError) as exc:
            notes.append(f"no UTC offset for {claim.local.isoformat()} in {zone.name} ({_describe(exc)})")
    return claim


def _check_offset_against_zone(claim: _TimeClaim, zone: Zone, notes: list[str]) -> None:
    """Note a claimed offset that is not the claimed place's zone's at that instant."""
    try:
        instant = (claim.local - dt.timedelta(minutes=claim.offset_min)).replace(tzinfo=dt.timezone.utc)
        zone_offset_min = zone.offset_min(instant)
    except (OverflowError, ValueError):
        return
    if zone_offset_min != claim.offset_min:
        notes.append(f"the claimed UTC offset {_hhmm(claim.offset_min)} ({claim.offset_source}) is not that of the "
                     f"claimed place's zone {zone.name} ({_hhmm(zone_offset_min)}) then: the camera's clock was set "
                     "to another zone, or the place claim is wrong")


def _hhmm(offset_min: int) -> str:
    sign = "-" if offset_min < 0 else "+"
    return f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"


def _derive_utc_offset_min(local_datetime: dt.datetime, gps_utc_datetime: dt.datetime, notes: list[str]) -> int | None:
    """Local wall clock minus GPS UTC, snapped to 15 min; None when the gap is larger than any time zone."""
    gap_min = (local_datetime - gps_utc_datetime.replace(tzinfo=None)).total_seconds() / 60.0
    offset_min = int(round(gap_min / _OFFSET_STEP_MIN)) * _OFFSET_STEP_MIN
    if abs(offset_min) > _MAX_UTC_OFFSET_MIN:
        notes.append(
            f"the claimed local time and GPS UTC time differ by {gap_min / 60.0:.1f} h, more than any UTC offset; "
            "no offset derived"
        )
        return None
    return offset_min


def _finite_float(value: Any) -> float | None:
    """A finite float from an EXIF number; None for zero-denominator rationals (NaN in Pillow), text and junk."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        as_float = float(value)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return as_float if math.isfinite(as_float) else None


def _text(value: Any) -> str:
    """EXIF ASCII as str: Pillow gives str, but malformed files give bytes (UNDEFINED type) or numbers."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return ""
    return value.strip("\x00 ")


def _byte_value(value: Any) -> int | None:
    """A BYTE tag's value: Pillow returns b'\\x01' for BYTE, but some writers store SHORT 1."""
    if isinstance(value, bytes) and len(value) >= 1:
        return value[0]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _shown(value: Any) -> str:
    """A raw EXIF value for a note: repr, cut short, since a hostile file can put kilobytes in any tag."""
    text = repr(value)
    return text if len(text) <= _NOTE_VALUE_CHARS else text[: _NOTE_VALUE_CHARS - 3] + "..."


def _describe(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


# ---------------------------------------------------------------------------------------------- writing


def _build_exif(
    lat_deg: float | None,
    lon_deg: float | None,
    alt_m: float | None,
    local_datetime: dt.datetime | None,
    utc_offset_min: int | None,
) -> Image.Exif:
    wall_clock, utc_offset_min = _split_datetime(local_datetime, utc_offset_min)
    gps: dict[int, Any] = {}
    if (lat_deg is None) != (lon_deg is None):
        raise ValueError(f"give both lat_deg and lon_deg or neither, got lat_deg={lat_deg!r} lon_deg={lon_deg!r}")
    if lat_deg is not None:
        lat_deg = _checked_float(lat_deg, "lat_deg", (-90.0, 90.0))
        lon_deg = _checked_float(lon_deg, "lon_deg", (-180.0, 180.0))
        gps[_GPS.GPSLatitudeRef] = "S" if lat_deg < 0 else "N"
        gps[_GPS.GPSLatitude] = _dms_rationals(abs(lat_deg))
        gps[_GPS.GPSLongitudeRef] = "W" if lon_deg < 0 else "E"
        gps[_GPS.GPSLongitude] = _dms_rationals(abs(lon_deg))
        gps[_GPS.GPSMapDatum] = "WGS-84"
    if alt_m is not None:
        alt_m = _checked_float(alt_m, "alt_m", _ALT_RANGE_M)
        gps[_GPS.GPSAltitudeRef] = 1 if alt_m < 0 else 0
        gps[_GPS.GPSAltitude] = IFDRational(round(abs(alt_m) * _ALT_DENOMINATOR), _ALT_DENOMINATOR)
    exif_ifd: dict[int, Any] = {}
    if wall_clock is not None:
        exif_ifd[_BASE.DateTimeOriginal] = (
            f"{wall_clock.year:04d}:{wall_clock.month:02d}:{wall_clock.day:02d} "
            f"{wall_clock.hour:02d}:{wall_clock.minute:02d}:{wall_clock.second:02d}"
        )
        if wall_clock.microsecond:
            exif_ifd[_BASE.SubsecTimeOriginal] = f"{wall_clock.microsecond:06d}"
    if utc_offset_min is not None:
        exif_ifd[_BASE.OffsetTimeOriginal] = _hhmm(utc_offset_min)
        if wall_clock is not None:
            utc = wall_clock - dt.timedelta(minutes=utc_offset_min)
            gps[_GPS.GPSDateStamp] = f"{utc.year:04d}:{utc.month:02d}:{utc.day:02d}"
            gps[_GPS.GPSTimeStamp] = (
                IFDRational(utc.hour, 1),
                IFDRational(utc.minute, 1),
                IFDRational(utc.second * _GPS_SECONDS_DENOMINATOR + utc.microsecond, _GPS_SECONDS_DENOMINATOR),
            )
    exif = Image.Exif()
    if gps:
        gps[_GPS.GPSVersionID] = _GPS_VERSION_ID
        exif[ExifTags.IFD.GPSInfo] = gps
    if exif_ifd:
        exif[ExifTags.IFD.Exif] = exif_ifd
    return exif


def _split_datetime(
    local_datetime: dt.datetime | None, utc_offset_min: int | None
) -> tuple[dt.datetime | None, int | None]:
    """(naive wall clock, offset in minutes); an aware datetime supplies its own offset, which must agree."""
    if utc_offset_min is not None:
        if isinstance(utc_offset_min, bool) or not isinstance(utc_offset_min, int):
            raise ValueError(f"utc_offset_min must be an int (minutes east of UTC), got {utc_offset_min!r}")
        if abs(utc_offset_min) > _MAX_UTC_OFFSET_MIN:
            raise ValueError(f"utc_offset_min {utc_offset_min} is beyond +-{_MAX_UTC_OFFSET_MIN} min")
    if local_datetime is None:
        return None, utc_offset_min
    if not isinstance(local_datetime, dt.datetime):
        raise ValueError(f"local_datetime must be a datetime.datetime, got {local_datetime!r}")
    offset = local_datetime.utcoffset()
    if offset is None:
        return local_datetime, utc_offset_min
    offset_s = offset.total_seconds()
    if offset_s % 60:
        raise ValueError(f"local_datetime {local_datetime.isoformat()} has an offset that is not whole minutes")
    aware_offset_min = int(offset_s // 60)
    if utc_offset_min is not None and utc_offset_min != aware_offset_min:
        raise ValueError(
            f"utc_offset_min {utc_offset_min} disagrees with local_datetime {local_datetime.isoformat()}"
        )
    return _split_datetime(local_datetime.replace(tzinfo=None), aware_offset_min)


def _checked_float(value: Any, name: str, bounds: tuple[float, float]) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not bounds[0] <= float(value) <= bounds[1]:
        raise ValueError(f"{name} {value} is outside {bounds[0]}..{bounds[1]}")
    return float(value)


def _dms_rationals(abs_deg: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    """Whole degrees, whole minutes, seconds as a rational; splitting integer units avoids 59.99999 -> 60 carries."""
    units_per_deg = 3600 * _ARCSEC_DENOMINATOR
    total_units = round(abs_deg * units_per_deg)
    degrees, remainder = divmod(total_units, units_per_deg)
    minutes, second_units = divmod(remainder, 60 * _ARCSEC_DENOMINATOR)
    return IFDRational(degrees, 1), IFDRational(minutes, 1), IFDRational(second_units, _ARCSEC_DENOMINATOR)
