"""A results row checked against the schema, the same for every store (io/geopackage.py, io/postgis.py).

Public surface:
    check_fields(table, row)          ValueError for a field the table does not have
    layer_geometry(table, geometry)   the geometry a layer stores (its own type, None for none or empty)
    sql_value(table, field, value)    a Python value as the value its field stores (bool as 0/1, UTC text), checked
    python_value(field, value)        a stored value back as Python (0/1 -> bool)
    FullReads                         the full-table reads every store offers (photos, ..., embeddings)
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
from shapely.geometry import MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry

from gtloc_engine.io import results_schema as schema


def check_fields(table: schema.Table, row: dict) -> None:
    """ValueError naming the fields of `row` that `table` does not have ('geometry' is every layer's)."""
    unknown = set(row) - {*table.field_names, "geometry"}
    if unknown:
        raise ValueError(f"{table.name} has no fields {sorted(unknown)}")


def layer_geometry(table: schema.Table, geometry) -> BaseGeometry | None:
    """The geometry a layer stores: its own type (a Polygon becomes a MultiPolygon), or None for none/empty."""
    if geometry is None:
        return None
    if not isinstance(geometry, BaseGeometry):
        raise ValueError(f"{table.name} geometry must be a shapely geometry or None, got {type(geometry).__name__}")
    if geometry.is_empty:
        return None  # stored as NULL: an empty geometry has no place on the map
    if table.geometry_type == "MULTIPOLYGON" and isinstance(geometry, Polygon):
        geometry = MultiPolygon([geometry])
    wanted = {"POINT": Point, "MULTIPOLYGON": MultiPolygon}[table.geometry_type]
    if not isinstance(geometry, wanted):
        raise ValueError(f"{table.name} stores {table.geometry_type} geometries, got {geometry.geom_type}")
    return geometry


def sql_value(table: schema.Table, field: schema.Field, value):
    """A Python value as the SQL value its field stores; ValueError for a kind or value the schema does not allow."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if field.required:
            raise ValueError(f"{table.name}.{field.name} must not be null")
        return None
    kind = field.kind
    try:
        if kind == "str":
            if not isinstance(value, str):
                raise TypeError
            out = str(value)
        elif kind == "float":
            if isinstance(value, (str, bytes, bool)):
                raise TypeError
            out = float(value)
            if math.isnan(out):
                return None
        elif kind == "int":
            if isinstance(value, (str, bytes, float, bool)) or isinstance(value, np.bool_):
                raise TypeError
            out = int(value)
        elif kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError
            out = int(bool(value))
        elif kind == "datetime":
            if isinstance(value, dt.datetime):
                if value.tzinfo is None:
                    raise ValueError(f"{table.name}.{field.name} is UTC: give an aware datetime or "
                                     "'YYYY-MM-DDTHH:MM:SS.SSSZ', got a naive datetime")
                out = schema.utc_datetime_text(value)
            elif isinstance(value, str) and schema.is_utc_datetime_text(value):
                out = value
            else:
                raise TypeError
        else:  # blob
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise TypeError
            out = bytes(value)
    except (TypeError, OverflowError):
        raise ValueError(f"{table.name}.{field.name} is {kind}, got {value!r}") from None
    if field.allowed and out not in field.allowed:
        raise ValueError(f"{table.name}.{field.name} must be one of {field.allowed} or null, got {out!r}")
    return out


def python_value(field: schema.Field, value):
    """A stored value as the Python value the store returns (0/1 -> bool, integers of a REAL column -> float)."""
    if value is None:
        return None
    if field.kind == "bool":
        return bool(value)
    if field.kind == "float":
        return float(value)
    return value


class FullReads:
    """The whole-table reads of a store, for tools and tests (not for resume: that uses the indexed lookups). A
    store provides _read_features(table) (rows with their geometry) and _read_rows(sql) (plain rows, after
    flushing its pending writes)."""

    @property
    def photos(self) -> dict[str, dict]:
        """Every photo row keyed by path."""
        return {row["path"]: row for row in self._read_features(schema.PHOTOS)}

    @property
    def candidates(self) -> dict[str, list[dict]]:
        return self._grouped(schema.CANDIDATES)

    @property
    def regions(self) -> dict[str, list[dict]]:
        return self._grouped(schema.REGIONS)

    @property
    def failures(self) -> dict[str, dict]:
        rows = self._read_rows("SELECT path, reason, failed_at_utc FROM failures ORDER BY fid")
        return {path: {"path": path, "reason": reason, "failed_at_utc": at} for path, reason, at in rows}

    def _grouped(self, table: schema.Table) -> dict[str, list[dict]]:
        grouped: dict[str, list[dict]] = {}
        for row in self._read_features(table):
            grouped.setdefault(row["path"], []).append(row)
        return grouped

    @property
    def embeddings(self) -> dict[tuple[str, str], np.ndarray]:
        rows = self._read_rows("SELECT sha256, model_sha256, dim, embedding FROM embeddings ORDER BY fid")
        return {(sha, model): np.frombuffer(blob, dtype="<f4", count=dim).copy() for sha, model, dim, blob in rows}
