"""Likelihood surfaces as Cloud Optimized GeoTIFFs (rasterio, GDAL's COG driver) and back.

File layout: a COG (validate_cloud_optimized_geotiff.py accepts it: IFDs first, overviews before the full
resolution, smallest first), one float32 band, EPSG:4326, north-up transform from the surface (row 0 at its north
edge), 256x256 tiles, DEFLATE with the floating-point predictor, written atomically (temp file + rename).
- Values: probability mass in each cell (see inference/surfaces.py for the normalisation); the band's unit is
  'probability'. A global surface sums to 1, a regional one to the global posterior's mass inside it.
- Nodata: -1 (a mass is never negative). Surfaces have no missing cells; nodata is declared so that GIS
  software treats overview padding and any future masked cells correctly.
- Internal overviews (factors 2, 4, ... while the overview keeps at least 32 pixels on its short side; the COG
  driver makes a level floor(size / factor) pixels) hold the MEAN MASS PER FULL-RESOLUTION CELL over the area each
  overview pixel covers (GDAL 'average' of the masses): the overview pixel's own mass is that value x the
  full-resolution cells it covers, (height / overview height) x (width / overview width), so every level still
  accounts for all the mass (tag GTLOC_OVERVIEW_VALUES says so). Where the factor divides the size (the global
  grids) a value is the exact mean of its factor x factor cells; elsewhere (the odd-sized regional windows) GDAL
  weights a cell cut by a pixel's edge by the share inside it and builds each level from the one above, so a
  value is a weighted mean of the cells at its footprint, and the per-cell units and each level's total still
  hold exactly. Why not the alternatives: 'sum' (the overview pixel's mass) is what a mass raster would want, but
  GDAL builds overviews with nearest/average/rms/gauss/cubic/... only ('sum' exists for warping, not for
  overviews, through GDAL 3.10; rasterio 1.4 refuses it); 'nearest' drops mass and peaks; and with 'average' one
  colour ramp fits every zoom level, because all levels stay in per-cell units.
- Tags: GTLOC_KIND, GTLOC_MODEL_KEY, GTLOC_LOG_NORM, GTLOC_TOTAL_MASS, GTLOC_UNITS, GTLOC_NORMALISATION,
  GTLOC_OVERVIEW_VALUES, plus the caller's tags (values stringified).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS

from gtloc_engine.errors import GtlocError
from gtloc_engine.geo import SURFACE_KINDS, Surface
from gtloc_engine.io.atomic import atomic_write

NODATA = -1.0
OVERVIEW_MIN_PX = 32
TILE_PX = 256
UNITS = "probability mass per cell"
OVERVIEW_VALUES = ("mean mass per full-resolution cell; x the full-resolution cells an overview pixel covers "
                   "(factor^2 where the factor divides the size) = the overview pixel's mass")
NORMALISATION = ("mass = exp(logit_scale * cos(image, place)) * cell area on the sphere, normalised over the globe; "
                 "global surfaces sum to 1, regional ones to the global posterior's mass inside them")


def overview_factors(shape: tuple[int, int]) -> list[int]:
    factors, f = [], 2
    while min(shape) // f >= OVERVIEW_MIN_PX:
        factors.append(f)
        f *= 2
    return factors


def write_surface_geotiff(path: str | Path, surface: Surface, *, tags: dict | None = None) -> Path:
    """Write the surface as a float32 COG (EPSG:4326, nodata -1, tiled, DEFLATE, average overviews); atomic."""
    mass = np.asarray(surface.mass_per_cell, dtype=np.float32)
    if mass.ndim != 2 or not np.all(np.isfinite(mass)) or (mass < 0).any():
        raise GtlocError(f"surface for {path} has shape {mass.shape} or non-finite/negative masses; nothing written")
    h, w = mass.shape
    # GDAL's COG driver can only copy a dataset: rasterio fills an in-memory one and GDAL writes the COG from it on
    # close, building the overviews itself. OVERVIEW_COUNT, because its default stops once a level fits in a tile.
    profile = {
        "driver": "COG", "width": w, "height": h, "count": 1, "dtype": "float32", "crs": CRS.from_epsg(4326),
        "transform": surface.transform, "nodata": NODATA, "compress": "DEFLATE", "predictor": "FLOATING_POINT",
        "BIGTIFF": "IF_SAFER", "blocksize": TILE_PX,  # a small regional raster is one padded tile
        "overview_resampling": "AVERAGE", "overview_count": len(overview_factors((h, w))),
    }
    all_tags = {
        "GTLOC_KIND": surface.kind, "GTLOC_MODEL_KEY": surface.model_key, "GTLOC_LOG_NORM": repr(surface.log_norm),
        "GTLOC_TOTAL_MASS": repr(surface.total_mass), "GTLOC_UNITS": UNITS, "GTLOC_NORMALISATION": NORMALISATION,
        "GTLOC_OVERVIEW_VALUES": OVERVIEW_VALUES,
        **{str(k): str(v) for k, v in (tags or {}).items()},
    }

    def write(tmp: Path) -> None:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(mass, 1)
            dst.update_tags(**all_tags)
            dst.set_band_description(1, UNITS)
            dst.update_tags(1, units="probability")

    return atomic_write(path, write)


def read_surface_geotiff(path: str | Path) -> Surface:
    """Read a surface written by write_surface_geotiff (or any north-up, square-pixel EPSG:4326 mass raster)."""
    path = Path(path)
    if not path.is_file():
        raise GtlocError(f"surface raster {path} not found; write it with gtloc first")
    try:
        with rasterio.open(path) as src:
            t, crs, nodata = src.transform, src.crs, src.nodata
            mass = src.read(1).astype(np.float32)
            tags = src.tags()
    except rasterio.errors.RasterioError as exc:
        raise GtlocError(f"surface raster {path} cannot be read ({exc}); re-create it") from None
    if crs is None or crs.to_epsg() != 4326 or t.b != 0 or t.d != 0 or not math.isclose(t.a, -t.e, rel_tol=1e-9):
        raise GtlocError(f"surface raster {path} is not a north-up, square-pixel EPSG:4326 raster")
    if nodata is not None:
        mass[mass == nodata] = 0.0
    kind = tags.get("GTLOC_KIND", "global")
    return Surface(mass, t.c, t.f, t.a, kind if kind in SURFACE_KINDS else "global", tags.get("GTLOC_MODEL_KEY", ""),
                   float(tags.get("GTLOC_LOG_NORM", "nan")), tags)
