"""The shadow locus GeoPackage (`gtloc shadow --out DIR` writes DIR/shadow.gpkg): its credible regions, candidates
and the measurements they came from, as three layers (docs/geopackage.md, "The shadow GeoPackage").

    shadow_regions       MultiPolygon  credible regions of the locus and of the fused surface (surface, level, ...)
    shadow_candidates    Point         modes of each surface (surface, rank, probability = mass within radius_km)
    shadow_measurements  table         one row per measurement: what was given and what the locus used

Written with GDAL (pyogrio) as a GeoPackage 1.2 file (what QGIS 3.22's GDAL reads without a version warning), built
under a temporary name and renamed into place, so a reader never sees half a file and a failed run leaves the old
one whole. A file of another kind at that path is refused.

Public surface:
    SHADOW_GPKG, REGIONS_LAYER, CANDIDATES_LAYER, MEASUREMENTS_TABLE, SURFACES
    REGION_FIELDS, CANDIDATE_FIELDS, MEASUREMENT_FIELDS    field name -> kind ('text', 'integer', 'real'), as data
    write_shadow_gpkg(path, regions, candidates, measurements) -> Path
    check_shadow_gpkg_path(path)   refuse a file there that is not a GeoPackage, before any work starts
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from gtloc_engine.errors import GtlocError
from gtloc_engine.io.atomic import atomic_write
from gtloc_engine.io.geopackage import check_is_geopackage
from gtloc_engine.io.results_schema import GPKG_VERSION

SHADOW_GPKG = "shadow.gpkg"
REGIONS_LAYER, CANDIDATES_LAYER, MEASUREMENTS_TABLE = "shadow_regions", "shadow_candidates", "shadow_measurements"
SURFACES = ("locus", "fused")  # a row's `surface`: the shadow alone, or times the photo's posterior
REGION_FIELDS = {"surface": "text", "level": "real", "area_km2": "real", "mass": "real", "cell_deg": "real"}
CANDIDATE_FIELDS = {"surface": "text", "rank": "integer", "lat_deg": "real", "lon_deg": "real",
                    "probability": "real", "radius_km": "real"}
MEASUREMENT_FIELDS = {
    "measurement": "integer", "time": "text", "time_kind": "text", "time_utc": "text", "time_sigma_min": "real",
    "height_m": "real", "length_m": "real", "height_sigma_m": "real", "length_sigma_m": "real",
    "elev_deg": "real", "elev_sigma_deg": "real", "bearing_deg": "real", "bearing_sigma_deg": "real",
    "sun_elevation_deg": "real", "elevation_sigma_deg": "real", "sun_azimuth_deg": "real",
    "azimuth_sigma_deg": "real", "time_bins": "integer",
}
_DTYPES = {"text": object, "integer": "Int64", "real": "Float64"}  # pandas' nullable types: None is written NULL


def _column(kind: str, values: list):
    import pandas as pd

    return pd.array(values, dtype=_DTYPES[kind]) if kind != "text" else pd.Series(values, dtype=object)


def _frame(fields: dict[str, str], rows: list[dict]):
    import pandas as pd

    return pd.DataFrame({name: _column(kind, [row.get(name) for row in rows]) for name, kind in fields.items()})


def write_shadow_gpkg(path: str | os.PathLike, regions: dict[str, list], candidates: dict[str, list],
                      measurements: list[dict]) -> Path:
    """regions / candidates: surface name ('locus', 'fused') -> CredibleRegion / Candidate lists; measurements:
    ShadowMeasurement.to_json() dicts in order. Replaces `path` whole (a GeoPackage or nothing may stand there)."""
    import geopandas as gpd
    import pyogrio
    from shapely.geometry import Point

    path = Path(path)
    check_shadow_gpkg_path(path)
    region_rows = [{"surface": name, "level": r.level, "area_km2": r.area_km2, "mass": r.mass,
                    "cell_deg": r.cell_deg, "geometry": r.geometry}
                   for name in SURFACES for r in regions.get(name, [])]
    candidate_rows = [{"surface": name, **c.to_json(), "geometry": Point(c.lon_deg, c.lat_deg)}
                      for name in SURFACES for c in candidates.get(name, [])]
    measurement_rows = [{"measurement": i + 1, **m} for i, m in enumerate(measurements)]

    def layer(fields, rows):
        return gpd.GeoDataFrame(_frame(fields, rows), geometry=[r["geometry"] for r in rows], crs="EPSG:4326")

    def write(tmp: Path) -> None:
        building = tmp.with_name(tmp.name + ".gpkg")  # GDAL wants the .gpkg extension
        quiet = logging.getLogger("pyogrio")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # pyogrio logs "Created N records" per layer at INFO: noise on stderr
        try:
            pyogrio.write_dataframe(layer(REGION_FIELDS, region_rows), building, layer=REGIONS_LAYER, driver="GPKG",
                                    geometry_type="MultiPolygon", dataset_options={"VERSION": GPKG_VERSION})
            pyogrio.write_dataframe(layer(CANDIDATE_FIELDS, candidate_rows), building, layer=CANDIDATES_LAYER,
                                    driver="GPKG", geometry_type="Point")
            pyogrio.write_dataframe(_frame(MEASUREMENT_FIELDS, measurement_rows), building, layer=MEASUREMENTS_TABLE,
                                    driver="GPKG")
            os.replace(building, tmp)
        finally:
            quiet.setLevel(level)
            building.unlink(missing_ok=True)

    if any(not np.isfinite(r["mass"]) for r in region_rows):
        raise GtlocError(f"shadow regions for {path} have non-finite masses; nothing written")
    return atomic_write(path, write)


def check_shadow_gpkg_path(path: str | os.PathLike) -> None:
    """GtlocError unless nothing or a GeoPackage (SQLite with gpkg_contents) stands at `path`: another file is never
    replaced."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    check_is_geopackage(path, "choose another output folder or move that file")
