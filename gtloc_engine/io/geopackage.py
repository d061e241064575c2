"""The results GeoPackage: read an existing one back, write all of it atomically (temp file + os.replace).

Layers (EPSG:4326; geometries in lon/lat axis order, as GeoPackage and QGIS expect):
    photos      Point   one row per photo path: at the claimed place if any, else the most likely one
    candidates  Point   top-k places per photo path (rank; probability = posterior mass within radius_km)
    regions     MultiPolygon  credible regions per photo path (level 0.5 / 0.9, geodesic area, mass)
    failures    table   photos that could not be processed: path, reason, failed_at_utc
    embeddings  table   image embeddings: sha256, model_sha256, dim, embedding (float32 little-endian BLOB)

    gtloc_info  table   key/value: format "gtloc-results", format_version, engine_version

Written as GeoPackage 1.2 (GPKG_VERSION), which QGIS 3.22's GDAL reads without a version warning.
A file is recognised as ours by its gtloc_info table; any other existing
file (another GeoPackage, a text file, a folder) is refused with one error line and never overwritten.

Public surface:
    PHOTO_FIELDS, CANDIDATE_FIELDS, REGION_FIELDS, FAILURE_FIELDS   field name -> kind (the schema, as data)
    ResultsStore    rows keyed by photo path, loaded from / saved to one GeoPackage
    check_results_path  refuse a name that is not .gpkg or a file that is not ours, before any work starts
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
from shapely.geometry.base import BaseGeometry

from gtloc_engine import __version__
from gtloc_engine.errors import GtlocError
from gtloc_engine.io.atomic import atomic_write

# pyogrio logs "Created N records" at INFO for every layer it writes: noise in a CLI that logs at INFO.
logging.getLogger("pyogrio").setLevel(logging.WARNING)

FORMAT = "gtloc-results"
FORMAT_VERSION = 1  # bump on any change an older reader would misread
CRS = "EPSG:4326"
# GeoPackage 1.2: the engine's GDAL (3.12 via pyogrio) writes 1.4 by default, which the GDAL under QGIS 3.22 (3.6
# here) opens with a warning that it "may only be partially supported"; nothing here needs 1.3 or 1.4.
GPKG_VERSION = "1.2"

# Field kinds: 'str', 'float', 'int', 'bool', 'datetime'; every field may be null.
PHOTO_FIELDS: dict[str, str] = {
    "path": "str", "file_name": "str", "sha256": "str", "model_sha256": "str", "point_source": "str",
    "claimed_lat_deg": "float", "claimed_lon_deg": "float", "claimed_time_local": "str",
    "claimed_utc_offset_min": "int", "pred_lat_deg": "float", "pred_lon_deg": "float", "top1_prob": "float",
    "pred_month": "int", "pred_month_pos": "float", "pred_hour_local": "float", "month_spread": "float",
    "hour_spread": "float", "time_given": "str", "place_given": "str", "given_time_local": "str", "place_level": "float", "place_dist_km": "float",
    "place_in_90": "bool", "time_level": "float", "claim_month_err": "float", "claim_hour_err": "float",
    "place_verdict": "str", "time_verdict": "str", "verdict": "str", "map_time": "datetime",
    "map_time_source": "str", "time_posterior": "str", "raster_global": "str", "raster_regional": "str",
    "notes": "str", "processed_at_utc": "str",
}
CANDIDATE_FIELDS = {"path": "str", "sha256": "str", "rank": "int", "probability": "float", "radius_km": "float",
                    "lat_deg": "float", "lon_deg": "float"}
REGION_FIELDS = {"path": "str", "sha256": "str", "level": "float", "area_km2": "float", "mass": "float"}
FAILURE_FIELDS = {"path": "str", "reason": "str", "failed_at_utc": "str"}
_LAYERS = {"photos": ("Point", PHOTO_FIELDS), "candidates": ("Point", CANDIDATE_FIELDS),
           "regions": ("MultiPolygon", REGION_FIELDS)}
_PANDAS_DTYPES = {"str": object, "float": "float64", "int": "Int64", "bool": "boolean", "datetime": "datetime64[ms]"}
EMBEDDINGS_TABLE = "embeddings"
INFO_TABLE = "gtloc_info"  # key/value: format, format_version, engine_version (how a file is recognised)


@dataclass
class ResultsStore:
    """Every row of a results GeoPackage in memory, keyed by photo path (absolute); `save` writes it all.

    photos[path] is a dict of PHOTO_FIELDS plus 'geometry' (shapely Point or None); candidates[path] and
    regions[path] are lists of such dicts; failures[path] one dict; embeddings[(sha256, model_sha256)] a
    float32 vector. Setting a path's results drops its failure, and a failure drops its results.
    """

    path: Path
    photos: dict[str, dict] = field(default_factory=dict)
    candidates: dict[str, list[dict]] = field(default_factory=dict)
    regions: dict[str, list[dict]] = field(default_factory=dict)
    failures: dict[str, dict] = field(default_factory=dict)
    embeddings: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | os.PathLike) -> ResultsStore:
        """The store of an existing results GeoPackage, or an empty one; GtlocError for any other file."""
        path = Path(path)
        check_results_path(path)
        store = cls(path)
        if not os.path.lexists(path):
            return store
        for name, kind in (("photos", PHOTO_FIELDS), ("candidates", CANDIDATE_FIELDS), ("regions", REGION_FIELDS),
                           ("failures", FAILURE_FIELDS)):
            for row in _read_rows(path, name, kind):
                if name == "photos":
                    store.photos[row["path"]] = row
                elif name == "failures":
                    store.failures[row["path"]] = row
                else:
                    getattr(store, name).setdefault(row["path"], []).append(row)
        store.embeddings = _read_embeddings(path)
        return store

    def done(self, photo_path: str, sha256: str, model_sha256: str, given_time_local: str | None = None) -> bool:
        """True when this path already has results for these bytes from this model, given the same known time."""
        row = self.photos.get(photo_path)
        return (row is not None and row["sha256"] == sha256 and row["model_sha256"] == model_sha256
                and row.get("given_time_local") == given_time_local)

    def set_results(self, photo_path: str, photo: dict, candidates: list[dict], regions: list[dict]) -> None:
        self.photos[photo_path] = photo
        self.candidates[photo_path] = candidates
        self.regions[photo_path] = regions
        self.failures.pop(photo_path, None)

    def copy_results(self, source_path: str, photo_path: str, file_name: str) -> None:
        """Give `photo_path` the results of `source_path` (same bytes, same model): one row per path."""
        renamed = {"path": photo_path}
        photo = {**self.photos[source_path], **renamed, "file_name": file_name}
        self.set_results(photo_path, photo, [{**c, **renamed} for c in self.candidates.get(source_path, [])],
                         [{**r, **renamed} for r in self.regions.get(source_path, [])])

    def set_failure(self, photo_path: str, reason: str) -> None:
        self.failures[photo_path] = {"path": photo_path, "reason": reason,
                                     "failed_at_utc": dt.datetime.now(dt.UTC).isoformat()}
        for rows in (self.photos, self.candidates, self.regions):
            rows.pop(photo_path, None)

    def save(self) -> Path:
        """Write every layer and table to a temp file next to the target, then os.replace it over the target."""
        if os.path.lexists(self.path):
            _check_ours(self.path)  # someone may have put another file there since open()
        return atomic_write(self.path, self._write)

    def _write(self, tmp: Path) -> None:
        # GDAL wants a .gpkg extension (it warns otherwise), so build under that name and move it onto `tmp`.
        building = tmp.with_name(tmp.name + ".gpkg")
        try:
            self._write_gpkg(building)
            os.replace(building, tmp)
        finally:
            building.unlink(missing_ok=True)

    def _write_gpkg(self, target: Path) -> None:
        layers = {"photos": list(self.photos.values()),
                  "candidates": [row for rows in self.candidates.values() for row in rows],
                  "regions": [row for rows in self.regions.values() for row in rows]}
        for name, rows in layers.items():
            geometry_type, kinds = _LAYERS[name]
            frame = gpd.GeoDataFrame(_columns(rows, kinds), geometry=[r.get("geometry") for r in rows], crs=CRS)
            pyogrio.write_dataframe(frame, target, layer=name, driver="GPKG", geometry_type=geometry_type,
                                    promote_to_multi=geometry_type.startswith("Multi"),
                                    dataset_options={"VERSION": GPKG_VERSION})  # used when the file is created
        pyogrio.write_dataframe(pd.DataFrame(_columns(list(self.failures.values()), FAILURE_FIELDS)), target,
                                layer="failures", driver="GPKG")
        with closing(sqlite3.connect(target)) as db, db:
            _create_attributes_table(db, INFO_TABLE, "key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL",
                                     "what wrote this file")
            db.executemany(f"INSERT INTO {INFO_TABLE} (key, value) VALUES (?, ?)",
                           [("format", FORMAT), ("format_version", str(FORMAT_VERSION)),
                            ("engine_version", __version__)])
            _create_attributes_table(db, EMBEDDINGS_TABLE, "fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "
                                     "sha256 TEXT NOT NULL, model_sha256 TEXT NOT NULL, dim INTEGER NOT NULL, "
                                     "embedding BLOB NOT NULL", "image embeddings, float32 little-endian")
            db.executemany(f"INSERT INTO {EMBEDDINGS_TABLE} (sha256, model_sha256, dim, embedding) VALUES (?, ?, ?, ?)",
                           [(sha, model, int(vec.size), np.asarray(vec, dtype="<f4").tobytes())
                            for (sha, model), vec in self.embeddings.items()])


def check_results_path(path: str | os.PathLike) -> None:
    """GtlocError unless `path` ends in .gpkg and is either free or a results GeoPackage this version can read."""
    path = Path(path)
    if path.suffix.lower() != ".gpkg":
        raise GtlocError(f"results file '{path}' must end in .gpkg; name it e.g. results.gpkg")
    if os.path.lexists(path):
        _check_ours(path)


# ---------------------------------------------------------------------------------------------- helpers


def _check_ours(path: Path) -> None:
    """Raise GtlocError unless `path` is a results GeoPackage this version can read."""
    refuse = f"'{path}' exists and is not a gtloc results GeoPackage; choose another --out name or move that file"
    if not path.is_file():
        raise GtlocError(refuse)
    try:
        with closing(_connect_read_only(path)) as db:
            info = dict(db.execute(f"SELECT key, value FROM {INFO_TABLE}").fetchall())
    except sqlite3.Error:  # not SQLite at all, or SQLite without our table
        raise GtlocError(refuse) from None
    if info.get("format") != FORMAT:
        raise GtlocError(refuse)
    version = info.get("format_version", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise GtlocError(f"'{path}' is a gtloc results GeoPackage of format version {version!r}, newer than this "
                         f"engine reads ({FORMAT_VERSION}); update gtloc or write to another file")


def _connect_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def _create_attributes_table(db: sqlite3.Connection, name: str, columns_sql: str, description: str) -> None:
    """A GeoPackage attributes table (no geometry), registered in gpkg_contents so GDAL and QGIS list it."""
    db.execute(f"CREATE TABLE {name} ({columns_sql})")
    db.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, description, last_change) "
               "VALUES (?, 'attributes', ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))", (name, name, description))


def _columns(rows: list[dict], kinds: dict[str, str]) -> dict[str, pd.Series]:
    """Typed columns in schema order; nulls stay null whatever the kind."""
    columns = {}
    for name, kind in kinds.items():
        values = [row.get(name) for row in rows]
        if kind == "datetime":
            columns[name] = pd.Series(pd.to_datetime(values), dtype=_PANDAS_DTYPES[kind])
        else:
            columns[name] = pd.Series(values, dtype=_PANDAS_DTYPES[kind])
    return columns


def _read_rows(path: Path, layer: str, kinds: dict[str, str]) -> list[dict]:
    frame = pyogrio.read_dataframe(path, layer=layer)
    missing = [name for name in kinds if name not in frame.columns]
    if missing:
        raise GtlocError(f"'{path}' layer {layer} lacks the fields {missing}; it was not written by this gtloc version"
                         "; write to another file")
    has_geometry = isinstance(frame, gpd.GeoDataFrame)
    rows = []
    for record in frame.to_dict("records"):
        row = {name: _python_value(record[name], kind) for name, kind in kinds.items()}
        if has_geometry:
            geometry = record.get("geometry")
            row["geometry"] = geometry if isinstance(geometry, BaseGeometry) else None
        rows.append(row)
    return rows


def _python_value(value, kind: str):
    """A value read back by pyogrio (NaN, NaT, numpy scalars) as a plain Python value or None."""
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    if kind == "str":
        return str(value)
    if kind == "float":
        return float(value)
    if kind == "int":
        return int(value)
    if kind == "bool":
        return bool(value)
    return pd.Timestamp(value).to_pydatetime()


def _read_embeddings(gpkg: Path) -> dict[tuple[str, str], np.ndarray]:
    try:
        with closing(_connect_read_only(gpkg)) as db:
            rows = db.execute(f"SELECT sha256, model_sha256, dim, embedding FROM {EMBEDDINGS_TABLE}").fetchall()
    except sqlite3.Error as exc:
        raise GtlocError(f"'{gpkg}' has no readable {EMBEDDINGS_TABLE} table ({exc}); write to another file") from None
    return {(sha, model): np.frombuffer(blob, dtype="<f4", count=dim).copy() for sha, model, dim, blob in rows}
