"""XMP place and time properties of a photo, read through Pillow's getxmp (defusedxml underneath), never trusted.

XMP is XML, so a hostile photo can carry an entity bomb ("billion laughs"), external entities or absurd nesting.
io/exif.py parses the packet with Pillow's getxmp, which uses defusedxml (entity declarations are refused outright),
and turns any failure into a note. This module parses no XML: it picks the properties out of getxmp's tree by
namespace URI (getxmp(strip_namespaces=False), Pillow >= 13), from the top level of every rdf:Description, and
parses their text: XMP dates (the W3C profile of ISO 8601, offset optional) and XMP GPS coordinates ("DDD,MM,SSk"
or "DDD,MM.mmk", k one of N S E W, as exiftool and Adobe write them, e.g. "51,30.042N").

Public surface:
    XMP_PROPERTIES          the properties read, as 'prefix:Name' (prefixes: exif, photoshop, xmp)
    xmp_properties          a getxmp tree -> {'prefix:Name': value} of the properties it holds
    parse_xmp_datetime      XMP date text -> (naive wall clock, minutes east of UTC or None); ValueError says why
    parse_xmp_gps           XMP GPSCoordinate text, 'latitude' or 'longitude' -> signed degrees; ValueError says why
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

__all__ = ["XMP_PROPERTIES", "xmp_properties", "parse_xmp_datetime", "parse_xmp_gps"]

_NAMESPACES = {
    "exif": "http://ns.adobe.com/exif/1.0/",
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
}
_RDF_DESCRIPTION = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description"
XMP_PROPERTIES = ("exif:DateTimeOriginal", "photoshop:DateCreated", "exif:GPSTimeStamp", "xmp:CreateDate",
                  "exif:DateTimeDigitized", "exif:GPSLatitude", "exif:GPSLongitude")
_KEYS = {f"{{{_NAMESPACES[name.split(':')[0]]}}}{name.split(':')[1]}": name for name in XMP_PROPERTIES}
# Beyond this many nodes a packet is junk, not metadata (a real one has tens); the walk stops there.
_MAX_NODES = 100_000

# XMP dates are the W3C profile of ISO 8601: YYYY[-MM[-DD[Thh:mm[:ss[.s]][TZD]]]]; 'T' may be a space in the wild.
_DATE_RE = re.compile(r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2})(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})"
                      r"(?:[.,]([0-9]+))?)?\s*(Z|[+-][0-9]{2}:?[0-9]{2})?)?)?)?", re.ASCII)
_GPS_RE = re.compile(r"([0-9]{1,3}),([0-9]{1,2}(?:\.[0-9]+)?)(?:,([0-9]{1,2}(?:\.[0-9]+)?))?([NSEW])",
                     re.ASCII | re.IGNORECASE)
_AXES = {"latitude": ("N", "S", 90.0), "longitude": ("E", "W", 180.0)}
# Real UTC offsets run from -12:00 to +14:00.
_MAX_UTC_OFFSET_MIN = 14 * 60


def xmp_properties(tree: Any) -> dict[str, Any]:
    """The XMP_PROPERTIES found at the top level of the rdf:Description elements of a getxmp tree (taken with
    strip_namespaces=False), first occurrence wins: text values stripped, anything else (a structure, an empty
    element) as it is, for the caller to refuse."""
    out: dict[str, Any] = {}
    for description in _descriptions(tree):
        for key, name in _KEYS.items():
            if name not in out and key in description:
                value = description[key]
                if isinstance(value, dict) and isinstance(value.get("text"), str):  # attributes too (xml:lang)
                    value = value["text"]
                out[name] = value.strip() if isinstance(value, str) else value
    return out


def parse_xmp_datetime(text: str) -> tuple[dt.datetime, int | None]:
    """(naive local wall clock, minutes east of UTC or None) from an XMP date; ValueError when it has no time of day,
    is zero or blank, or is not a real date and time."""
    # Devices without a set clock write zeros; editors leave empty elements.
    if not text.strip(" :-T0Z+"):
        raise ValueError("is blank or zero")
    match = _DATE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError("is not an XMP (ISO 8601) date")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    if hour is None:
        raise ValueError("has no time of day")
    try:
        wall_clock = dt.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0),
                                 int((fraction or "0")[:6].ljust(6, "0")))
    except ValueError:
        raise ValueError("is not a real date and time (zero or out of range)") from None
    if zone is None:
        return wall_clock, None
    if zone == "Z":
        return wall_clock, 0
    hours, minutes = int(zone[1:3]), int(zone[-2:])
    offset_min = (-1 if zone[0] == "-" else 1) * (hours * 60 + minutes)
    if minutes >= 60 or abs(offset_min) > _MAX_UTC_OFFSET_MIN:
        raise ValueError(f"has offset {zone}, not a real UTC offset")
    return wall_clock, offset_min


def parse_xmp_gps(text: str, axis: str) -> float:
    """Signed degrees from an XMP GPSCoordinate ('51,30.042N', '33,52,7.72S'); ValueError when malformed, on the
    wrong axis (a latitude with E/W) or out of range."""
    positive, negative, limit_deg = _AXES[axis]
    match = _GPS_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError("is not in XMP's 'DDD,MM,SSk' or 'DDD,MM.mmk' form")
    degrees, minutes, seconds, ref = match.groups()
    ref = ref.upper()
    if ref not in (positive, negative):
        raise ValueError(f"has hemisphere {ref}, not {positive} or {negative}")
    if float(minutes) >= 60.0 or (seconds is not None and float(seconds) >= 60.0):
        raise ValueError("has minutes or seconds of 60 or more")
    abs_deg = int(degrees) + float(minutes) / 60.0 + (float(seconds) / 3600.0 if seconds is not None else 0.0)
    if abs_deg > limit_deg:
        raise ValueError(f"is {abs_deg:.6f} deg, out of range")
    return -abs_deg if ref == negative else abs_deg


def _descriptions(tree: Any):
    """Every rdf:Description dict in getxmp's nested dicts and lists, in document order (an iterative walk)."""
    stack, seen = [tree], 0
    while stack and seen < _MAX_NODES:
        node = stack.pop()
        seen += 1
        if isinstance(node, list):
            stack.extend(reversed(node))
        elif isinstance(node, dict):
            children = []
            for key, value in node.items():
                if key == _RDF_DESCRIPTION:  # not walked into: its properties are what is read
                    yield from (item for item in (value if isinstance(value, list) else [value])
                                if isinstance(item, dict))
                else:
                    children.append(value)
            stack.extend(reversed(children))
