"""The results GeoPackage's schema as data: the one engine definition of its layers, tables, fields and values.

Used by the writer (io/geopackage.py: table DDL, field kinds, value checks on every write) and by the claim check
(inference/claims.py: the verdict strings). docs/geopackage.md is its written form and qgis_plugin/results_schema.py
the plugin's copy of what the plugin reads (QGIS's Python cannot import the engine); tests/test_results_schema.py
checks that a written file, the docs, this module and the plugin's module agree.

Format version rule: FORMAT_VERSION (in the file's gtloc_info table) goes up on any change an older reader would
misread: a field renamed, removed or retyped, a value's meaning changed, a new allowed value. Adding a field alone
does not need it, but is documented. An engine refuses a file whose version is newer than its own with one line; a
file of an older version is upgraded in place, in one transaction, by the first engine that writes to it (see
UPGRADES in io/geopackage.py and docs/geopackage.md).

Public surface:
    FORMAT, FORMAT_VERSION, GPKG_VERSION, GPKG_APPLICATION_ID, GPKG_USER_VERSION, SRS_ID
    verdicts and other allowed values: CONSISTENT ... NO_CLAIM, INCONCLUSIVE, VERDICTS, POINT_SOURCES, MAP_TIME_SOURCES,
        PLACE_GIVEN_VALUES, TIME_GIVEN_VALUES, DEFAULT_CREDIBLE_LEVELS
    claim sources, in order of precedence: PLACE_SOURCES, TIME_SOURCES (WEAK_TIME_SOURCES), UTC_OFFSET_SOURCES
    the sun check: LIGHT_REGIMES (DAY ... NIGHT), SUN_CHECKS (SUN_AGREES, SUN_DISAGREES, SUN_NOT_CHECKED)
    Field, Table, TABLES, table(name), SQL_TYPES
    PHOTOS, CANDIDATES, REGIONS, FAILURES, EMBEDDINGS, INFO          the tables
    PHOTO_FIELDS, CANDIDATE_FIELDS, REGION_FIELDS, FAILURE_FIELDS     field name -> kind
    INDEXES                                                          (index name, table, columns, unique)
    utc_datetime_text(datetime)                                      a GeoPackage DATETIME value ('...Z')
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

FORMAT = "gtloc-results"
FORMAT_VERSION = 3  # 3: verdicts may be 'inconclusive'; 2: map_time is UTC or null, gtloc_info has an INTEGER key
# GeoPackage 1.2 (application_id 'GPKG', user_version 10200): what QGIS 3.22's GDAL (3.6) opens without a
# version warning; nothing here needs 1.3 or 1.4.
GPKG_VERSION = "1.2"
GPKG_APPLICATION_ID = 0x47504B47  # 'GPKG'
GPKG_USER_VERSION = 10200
SRS_ID = 4326  # every geometry: EPSG:4326, x = longitude, y = latitude (degrees)
GEOMETRY_COLUMN = "geom"
FID_COLUMN = "fid"

# -------------------------------------------------------------------------------------------- allowed values

CONSISTENT, DOUBTFUL, INCONSISTENT, NO_CLAIM = "consistent", "doubtful", "inconsistent", "no claim"
INCONCLUSIVE = "inconclusive"  # the posterior is too diffuse, or the claim's evidence too weak, to judge the claim
PART_VERDICTS = (CONSISTENT, DOUBTFUL, INCONSISTENT, INCONCLUSIVE)  # place_verdict, time_verdict (null: unchecked)
VERDICTS = (*PART_VERDICTS, NO_CLAIM)  # verdict: the worst part (inference/claims.py SEVERITY), or 'no claim'
POINT_CLAIM, POINT_PREDICTION = "claim", "prediction"
POINT_SOURCES = (POINT_CLAIM, POINT_PREDICTION)
MAP_TIME_CLAIM, MAP_TIME_PREDICTION = "claim", "prediction"
MAP_TIME_SOURCES = (MAP_TIME_CLAIM, MAP_TIME_PREDICTION)
PLACE_GIVEN_IMAGE, PLACE_GIVEN_IMAGE_TIME = "image", "image+time"
PLACE_GIVEN_VALUES = (PLACE_GIVEN_IMAGE, PLACE_GIVEN_IMAGE_TIME)
TIME_GIVEN_PLACE, TIME_GIVEN_IMAGE = "claimed place", "image only"
TIME_GIVEN_VALUES = (TIME_GIVEN_PLACE, TIME_GIVEN_IMAGE)
DEFAULT_CREDIBLE_LEVELS = (0.5, 0.9)  # regions.level written by default (PipelineConfig.credible_levels)
MAP_TIME_REFERENCE_YEAR = 2001  # map_time_local of a predicted time: month position and hour placed in this year
# Where a photo keeps its claims (io/exif.py reads them), each tuple in order of precedence: the first source that
# holds a valid value is the claim, and place_source / time_source / utc_offset_source name it.
PLACE_EXIF_GPS, PLACE_XMP_GPS = "EXIF GPS", "XMP exif:GPSLatitude/GPSLongitude"
PLACE_SOURCES = (PLACE_EXIF_GPS, PLACE_XMP_GPS)
TIME_EXIF_ORIGINAL, TIME_EXIF_GPS_UTC = "EXIF DateTimeOriginal", "EXIF GPS UTC"
TIME_XMP_ORIGINAL, TIME_XMP_DATE_CREATED = "XMP exif:DateTimeOriginal", "XMP photoshop:DateCreated"
TIME_XMP_GPS_UTC = "XMP exif:GPSTimeStamp"
TIME_EXIF_DIGITIZED = "EXIF DateTimeDigitized (weaker)"
TIME_XMP_CREATE_DATE, TIME_XMP_DIGITIZED = "XMP xmp:CreateDate (weaker)", "XMP exif:DateTimeDigitized (weaker)"
TIME_SOURCES = (TIME_EXIF_ORIGINAL, TIME_EXIF_GPS_UTC, TIME_XMP_ORIGINAL, TIME_XMP_DATE_CREATED, TIME_XMP_GPS_UTC,
                TIME_EXIF_DIGITIZED, TIME_XMP_CREATE_DATE, TIME_XMP_DIGITIZED)
# When the image was digitized (scanned, or written by the camera): usually the capture time, not always.
WEAK_TIME_SOURCES = (TIME_EXIF_DIGITIZED, TIME_XMP_CREATE_DATE, TIME_XMP_DIGITIZED)
OFFSET_EXIF_ORIGINAL, OFFSET_EXIF_DIGITIZED = "EXIF OffsetTimeOriginal", "EXIF OffsetTimeDigitized"
OFFSET_XMP_DATE = "XMP date's own offset"
OFFSET_GPS_GAP = "claimed local time - GPS UTC"
OFFSET_ZONE, OFFSET_NAUTICAL = "IANA zone of the claimed place", "nautical zone (open sea)"
UTC_OFFSET_SOURCES = (OFFSET_EXIF_ORIGINAL, OFFSET_EXIF_DIGITIZED, OFFSET_XMP_DATE, OFFSET_GPS_GAP, OFFSET_ZONE,
                      OFFSET_NAUTICAL)
# The sun at a claimed place and time (inference/sun_check.py), by the sun's geometric elevation: day above
# -0.833 deg (the upper limb on the horizon, refraction included), civil twilight above -6, nautical above -12,
# astronomical above -18, night below.
DAY, CIVIL_TWILIGHT, NAUTICAL_TWILIGHT = "day", "civil twilight", "nautical twilight"
ASTRONOMICAL_TWILIGHT, NIGHT = "astronomical twilight", "night"
LIGHT_REGIMES = (DAY, CIVIL_TWILIGHT, NAUTICAL_TWILIGHT, ASTRONOMICAL_TWILIGHT, NIGHT)
SUN_AGREES, SUN_DISAGREES, SUN_NOT_CHECKED = "agrees", "disagrees", "not checked"
SUN_CHECKS = (SUN_AGREES, SUN_DISAGREES, SUN_NOT_CHECKED)
INFO_KEYS = ("format", "format_version", "engine_version")

# -------------------------------------------------------------------------------------------- fields and tables

# kind -> the SQL type written (GeoPackage 1.2 data types, table 1 of the spec). 'datetime' values are UTC text
# 'YYYY-MM-DDTHH:MM:SS.SSSZ' (utc_datetime_text); 'bool' is 0/1; 'blob' raw bytes.
SQL_TYPES = {"str": "TEXT", "float": "REAL", "int": "INTEGER", "bool": "BOOLEAN", "datetime": "DATETIME",
             "blob": "BLOB"}
UNITS = ("", "deg", "km", "km2", "min", "h", "month")  # '' = none (text, ids, probabilities, masses, levels)


@dataclass(frozen=True)
class Field:
    """One column: kind (SQL_TYPES key), unit (UNITS), allowed values (empty: any), NOT NULL or not."""

    name: str
    kind: str
    unit: str = ""
    allowed: tuple = ()
    required: bool = False

    @property
    def sql_type(self) -> str:
        return SQL_TYPES[self.kind]


@dataclass(frozen=True)
class Table:
    """A layer (data_type 'features', with a geometry column) or a table ('attributes'), registered in
    gpkg_contents; every one has an INTEGER PRIMARY KEY `fid` before its fields (and `geom` for layers)."""

    name: str
    data_type: str  # 'features' | 'attributes'
    geometry_type: str | None  # 'POINT' | 'MULTIPOLYGON' | None
    fields: tuple[Field, ...]
    description: str

    @property
    def kinds(self) -> dict[str, str]:
        return {f.name: f.kind for f in self.fields}

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)


def _f(name: str, kind: str, unit: str = "", allowed: tuple = (), required: bool = False) -> Field:
    return Field(name, kind, unit, tuple(allowed), required)


PHOTOS = Table("photos", "features", "POINT", (
    _f("path", "str", required=True),
    _f("file_name", "str"),
    _f("sha256", "str"),
    _f("model_sha256", "str"),
    _f("point_source", "str", allowed=POINT_SOURCES),
    _f("claimed_lat_deg", "float", "deg"),
    _f("claimed_lon_deg", "float", "deg"),
    _f("claimed_time_local", "str"),
    _f("claimed_utc_offset_min", "int", "min"),
    _f("place_source", "str", allowed=PLACE_SOURCES),
    _f("time_source", "str", allowed=TIME_SOURCES),
    _f("utc_offset_source", "str", allowed=UTC_OFFSET_SOURCES),
    _f("claimed_time_zone", "str"),
    _f("sun_elev_deg", "float", "deg"),
    _f("sun_azimuth_deg", "float", "deg"),
    _f("sunrise_local", "str"),
    _f("sunset_local", "str"),
    _f("light_regime", "str", allowed=LIGHT_REGIMES),
    _f("sun_check", "str", allowed=SUN_CHECKS),
    _f("sun_regime_mass", "float"),
    _f("pred_lat_deg", "float", "deg"),
    _f("pred_lon_deg", "float", "deg"),
    _f("top1_prob", "float"),
    _f("pred_month", "int"),
    _f("pred_month_pos", "float", "month"),
    _f("pred_hour_local", "float", "h"),
    _f("month_spread", "float", "month"),
    _f("hour_spread", "float", "h"),
    _f("time_given", "str", allowed=TIME_GIVEN_VALUES),
    _f("place_given", "str", allowed=PLACE_GIVEN_VALUES),
    _f("given_time_local", "str"),
    _f("place_level", "float"),
    _f("place_evidence", "float"),
    _f("place_dist_km", "float", "km"),
    _f("place_in_90", "bool"),
    _f("time_level", "float"),
    _f("time_evidence", "float"),
    _f("claim_month_err", "float", "month"),
    _f("claim_hour_err", "float", "h"),
    _f("place_verdict", "str", allowed=PART_VERDICTS),
    _f("time_verdict", "str", allowed=PART_VERDICTS),
    _f("verdict", "str", allowed=VERDICTS),
    _f("map_time", "datetime"),
    _f("map_time_local", "str"),
    _f("map_time_source", "str", allowed=MAP_TIME_SOURCES),
    _f("time_posterior", "str"),
    _f("time_posterior_image", "str"),
    _f("raster_global", "str"),
    _f("raster_regional", "str"),
    _f("surface_res_deg", "float", "deg"),
    _f("thumbnail", "str"),
    _f("time_plot", "str"),
    _f("notes", "str"),
    _f("processed_at_utc", "str"),
), "one row per photo path: at the claimed place if any, else the most likely one")

CANDIDATES = Table("candidates", "features", "POINT", (
    _f("path", "str", required=True),
    _f("sha256", "str"),
    _f("rank", "int"),
    _f("probability", "float"),
    _f("radius_km", "float", "km"),
    _f("lat_deg", "float", "deg"),
    _f("lon_deg", "float", "deg"),
), "the top-k places per photo path: modes of the location surface")

REGIONS = Table("regions", "features", "MULTIPOLYGON", (
    _f("path", "str", required=True),
    _f("sha256", "str"),
    _f("level", "float"),
    _f("area_km2", "float", "km2"),
    _f("mass", "float"),
), "credible regions per photo path and level")

FAILURES = Table("failures", "attributes", None, (
    _f("path", "str", required=True),
    _f("reason", "str", required=True),
    _f("failed_at_utc", "str"),
), "photos that could not be processed")

EMBEDDINGS = Table("embeddings", "attributes", None, (
    _f("sha256", "str", required=True),
    _f("model_sha256", "str", required=True),
    _f("dim", "int", required=True),
    _f("embedding", "blob", required=True),
), "image embeddings, float32 little-endian")

INFO = Table("gtloc_info", "attributes", None, (
    _f("key", "str", allowed=INFO_KEYS, required=True),
    _f("value", "str", required=True),
), "what wrote this file")

TABLES = (PHOTOS, CANDIDATES, REGIONS, FAILURES, EMBEDDINGS, INFO)
LAYERS = tuple(t for t in TABLES if t.data_type == "features")
EMBEDDINGS_TABLE, INFO_TABLE = EMBEDDINGS.name, INFO.name

# (name, table, columns, unique): what resume, replacing a path's rows and search look up.
INDEXES = (
    ("photos_path_idx", "photos", ("path",), True),
    ("photos_sha256_idx", "photos", ("sha256", "model_sha256"), False),
    ("candidates_path_idx", "candidates", ("path",), False),
    ("regions_path_idx", "regions", ("path",), False),
    ("failures_path_idx", "failures", ("path",), True),
    ("embeddings_key_idx", "embeddings", ("sha256", "model_sha256"), True),
    ("gtloc_info_key_idx", "gtloc_info", ("key",), True),
)

PHOTO_FIELDS: dict[str, str] = PHOTOS.kinds
CANDIDATE_FIELDS: dict[str, str] = CANDIDATES.kinds
REGION_FIELDS: dict[str, str] = REGIONS.kinds
FAILURE_FIELDS: dict[str, str] = FAILURES.kinds

_UTC_DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z\Z")


def table(name: str) -> Table:
    return next(t for t in TABLES if t.name == name)


def utc_datetime_text(value: dt.datetime) -> str:
    """A GeoPackage DATETIME: UTC, ISO 8601 with milliseconds and 'Z'. A naive datetime is taken as UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def is_utc_datetime_text(text: str) -> bool:
    return bool(_UTC_DATETIME_RE.match(text))
