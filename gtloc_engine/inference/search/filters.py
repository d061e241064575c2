"""Which photos of a collection a query may return: within a radius of its place (haversine), inside a polygon
layer, with a claimed local time in a range; the query photo itself is left out. Applied before ranking, so top k
are k photos that pass.

    filter_rows(collection, query, config, near_latlon_deg)   rows that pass (None: all) and distances to the place
    inside_polygons(polygon_file, latlon_deg, layer)          the polygon filter
    claimed_in_range(times, after, before)                    the claimed-time filter
"""

from __future__ import annotations

import datetime as dt
import os

import numpy as np

from gtloc_engine.errors import GtlocError
from gtloc_engine.geo import haversine_km
from gtloc_engine.inference.search.collection import Collection
from gtloc_engine.inference.search.query import SearchConfig, SearchQuery, local_wall_clock
from gtloc_engine.io.photos import file_sha256


def filter_rows(collection: Collection, query: SearchQuery, config: SearchConfig,
                near_latlon_deg: tuple[float, float] | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Indices of the rows that pass the query's filters (None = all) and each row's distance in km to
    `near_latlon_deg` (the place searched; None: no distances). A photo's place is config.point_source's."""
    keep = np.ones(len(collection), dtype=bool)
    points = collection.point_latlon_deg(config.point_source)
    dist_km = None
    if near_latlon_deg is not None:
        dist_km = haversine_km(np.array(near_latlon_deg), points)  # NaN where the photo has no place
    if query.radius_km is not None:
        keep &= np.nan_to_num(dist_km, nan=np.inf) <= query.radius_km
    if query.within is not None:
        keep &= inside_polygons(query.within, points, layer=query.within_layer)
    if query.claimed_after is not None or query.claimed_before is not None:
        keep &= claimed_in_range(collection.claimed_time_local, query.claimed_after, query.claimed_before)
    if query.kind in ("photo", "photo+time") and config.exclude_query_photo:
        row = collection.row_of(file_sha256(query.like_photo))
        if row is not None:
            keep[row] = False
    return (None if keep.all() else np.flatnonzero(keep)), dist_km


def inside_polygons(polygon_file: str | os.PathLike, latlon_deg: np.ndarray, *, layer: str | None = None
                    ) -> np.ndarray:
    """True where a (lat, lon) point lies inside (or on the edge of) any polygon of the file's layer (default:
    the first), in EPSG:4326."""
    import geopandas as gpd
    import shapely

    try:
        frame = gpd.read_file(polygon_file, layer=layer)
    except Exception as exc:  # noqa: BLE001  (missing file, unknown format, corrupt: one line for all)
        raise GtlocError(f"polygon file {polygon_file} cannot be read ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); give a GeoJSON, GeoPackage or Shapefile "
                         "with polygons") from None
    if frame.crs is not None and not frame.crs.equals("EPSG:4326"):
        frame = frame.to_crs("EPSG:4326")
    polygons = [g for g in frame.geometry if g is not None and g.geom_type in ("Polygon", "MultiPolygon")]
    if not polygons:
        raise GtlocError(f"polygon file {polygon_file} has no polygons; give a file whose features are polygons")
    area = shapely.union_all(polygons)
    lat, lon = latlon_deg[:, 0], latlon_deg[:, 1]
    finite = np.isfinite(lat) & np.isfinite(lon)
    inside = np.zeros(len(latlon_deg), dtype=bool)
    inside[finite] = shapely.intersects_xy(area, lon[finite], lat[finite])  # x = lon, y = lat
    return inside


def claimed_in_range(times: list[str | None], after: dt.datetime | None, before: dt.datetime | None) -> np.ndarray:
    """True where a claimed local time exists and lies in [after, before); wall clocks compared, offsets ignored."""
    out = np.zeros(len(times), dtype=bool)
    for i, text in enumerate(times):
        if not text:
            continue
        wall = local_wall_clock(text)
        out[i] = (after is None or wall >= after) and (before is None or wall < before)
    return out
