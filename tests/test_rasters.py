"""GeoTIFFs of real surfaces (a tiny model's posterior for a place query), read back with rasterio and gdalinfo, and
checked as Cloud Optimized GeoTIFFs by GDAL's own validator."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from gtloc_engine.errors import GtlocError
from gtloc_engine.geo import Surface
from gtloc_engine.inference.surfaces import SurfaceConfig, SurfaceMaker
from gtloc_engine.io.rasters import NODATA, overview_factors, read_surface_geotiff, write_surface_geotiff
from gtloc_engine.model import GTLoc, preset

PLACE = (-33.9, 151.2)
# GDAL's COG validator ships with the system's GDAL Python bindings (Debian python3-gdal), not with rasterio.
SYSTEM_PYTHON = Path("/usr/bin/python3")
COG_VALIDATOR = Path("/usr/lib/python3/dist-packages/osgeo_utils/samples/validate_cloud_optimized_geotiff.py")


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory):
    torch.manual_seed(0)
    model = GTLoc(preset("tiny"), seed=0).eval()
    maker = SurfaceMaker(model, global_res_deg=1.0, cache_dir=tmp_path_factory.mktemp("constants"),
                         config=SurfaceConfig(coarse_res_deg=2.0))
    with torch.inference_mode():
        q = model.embed_locations(torch.tensor([PLACE], dtype=torch.float32))[0].numpy()
    g = maker.global_surface(q)
    return g, maker.regional_surfaces(q, g, n_modes=2)


def gdalinfo_corners(path) -> dict[str, tuple[float, float]]:
    out = subprocess.run(["gdalinfo", str(path)], capture_output=True, text=True, check=True).stdout
    corners = {}
    for name in ("Upper Left", "Lower Left", "Upper Right", "Lower Right"):
        m = re.search(rf"{name}\s*\(\s*([-\d.]+),\s*([-\d.]+)\)", out)
        corners[name] = (float(m.group(1)), float(m.group(2)))
    return corners


def footprint_means(mass: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Mean of the full-resolution cells over each pixel of a (rows, cols) overview of the same extent, a cell cut by
    a pixel's edge weighted by the share inside it: the f x f block means when f divides the size."""

    def weights(n: int, m: int) -> np.ndarray:  # (m, n) share of source cell j inside overview pixel i
        edges = np.arange(m + 1) * (n / m)
        cells = np.arange(n + 1)
        return np.clip(np.minimum(edges[1:, None], cells[None, 1:]) - np.maximum(edges[:-1, None], cells[None, :-1]),
                       0.0, None)

    wr, wc = weights(mass.shape[0], shape[0]), weights(mass.shape[1], shape[1])
    return (wr @ mass.astype(np.float64) @ wc.T) / (wr.sum(1)[:, None] * wc.sum(1)[None, :])


def read_overviews(path) -> list[np.ndarray]:
    """Every overview level of band 1 as stored (no resampling on read)."""
    with rasterio.open(path) as src:
        n = len(src.overviews(1))
    out = []
    for level in range(n):
        with rasterio.open(path, overview_level=level) as ov:
            out.append(ov.read(1))
    return out


def test_global_geotiff_reads_back_with_its_georeferencing(surfaces, tmp_path):
    g, _ = surfaces
    path = write_surface_geotiff(tmp_path / "global.tif", g, tags={"photo": "IMG_1.jpg"})
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 4326
        assert src.dtypes == ("float32",) and src.count == 1 and src.nodata == NODATA
        assert (src.width, src.height) == (360, 180)
        assert src.transform == rasterio.Affine(1.0, 0.0, -180.0, 0.0, -1.0, 90.0)
        assert tuple(src.bounds) == (-180.0, -90.0, 180.0, 90.0)
        assert src.profile["tiled"] and src.compression.name.lower() == "deflate"
        assert src.overviews(1) == overview_factors((180, 360)) and len(src.overviews(1)) >= 2
        tags = src.tags()
        assert tags["GTLOC_KIND"] == "global" and tags["GTLOC_MODEL_KEY"] == g.model_key
        assert tags["photo"] == "IMG_1.jpg"
        mass = src.read(1)
        assert float(mass.sum(dtype=np.float64)) == pytest.approx(1.0, abs=1e-5)
        # The densest cell (mass / cell area) read from the file is the surface's peak (the best cell by exact
        # evaluation, see test_surfaces), next to or on the query place's cell.
        area = g.cell_area_km2
        row, col = np.unravel_index(np.argmax(mass / area), mass.shape)
        lon, lat = src.xy(row, col)
        assert (lat, lon) == pytest.approx(g.peak_latlon_deg())
        place_row, place_col = src.index(PLACE[1], PLACE[0])
        assert abs(place_row - row) <= 1 and abs(place_col - col) <= 1



@pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="gdalinfo binary not on PATH")
def test_gdalinfo_reports_the_corners(surfaces, tmp_path):
    g, regionals = surfaces
    for i, surface in enumerate([g, *regionals]):
        path = write_surface_geotiff(tmp_path / f"s{i}.tif", surface)
        west, south, east, north = surface.bounds_deg
        corners = gdalinfo_corners(path)
        assert corners["Upper Left"] == pytest.approx((west, north), abs=1e-6)
        assert corners["Lower Right"] == pytest.approx((east, south), abs=1e-6)


def test_regional_geotiff_round_trip(surfaces, tmp_path):
    _, regionals = surfaces
    r = regionals[0]
    path = write_surface_geotiff(tmp_path / "regional.tif", r)
    with rasterio.open(path) as src:
        assert src.overviews(1) == overview_factors(r.shape) and src.overviews(1)
        assert src.res == pytest.approx((r.res_deg, r.res_deg))
    back = read_surface_geotiff(path)
    np.testing.assert_array_equal(back.mass_per_cell, r.mass_per_cell)
    assert back.bounds_deg == pytest.approx(r.bounds_deg, abs=1e-12)
    assert (back.kind, back.model_key, back.log_norm) == ("regional", r.model_key, r.log_norm)
    assert back.total_mass == pytest.approx(r.total_mass, rel=1e-6)
    assert back.peak_latlon_deg() == pytest.approx(r.peak_latlon_deg())


@pytest.mark.parametrize("which", ["global", "regional"])
def test_overviews_hold_the_mean_mass_per_full_resolution_cell(surfaces, tmp_path, which):
    g, regionals = surfaces
    surface = g if which == "global" else regionals[0]
    path = write_surface_geotiff(tmp_path / f"{which}.tif", surface)
    mass = surface.mass_per_cell
    h, w = mass.shape
    levels = read_overviews(path)
    assert len(levels) == len(overview_factors((h, w))) >= 1
    above = mass.astype(np.float64)
    for f, ov in zip(overview_factors((h, w)), levels):
        assert ov.dtype == np.float32 and ov.shape == (h // f, w // f)  # the COG driver's floor(size / factor)
        if h % f == 0 and w % f == 0:  # the global grid: plain f x f block means of the full-resolution masses
            blocks = mass.astype(np.float64).reshape(h // f, f, w // f, f).mean(axis=(1, 3))
            np.testing.assert_allclose(ov, blocks, rtol=1e-5, atol=1e-12)
        # Odd regional sizes: GDAL's average weights the cells a pixel's edges cut, and builds each level from the
        # one above (the same thing as block means where the factor divides the size).
        above = footprint_means(above, ov.shape)
        np.testing.assert_allclose(ov, above, rtol=1e-5, atol=1e-12)
        # Either way a level x the full-resolution cells per pixel accounts for all the mass.
        cells_per_pixel = (h / ov.shape[0]) * (w / ov.shape[1])
        assert float(ov.sum(dtype=np.float64)) * cells_per_pixel == pytest.approx(surface.total_mass, rel=1e-5)
    if which == "regional":  # the case really is the odd-sized one, with more than one level
        assert h % 2 == 1 and w % 2 == 1 and len(levels) >= 2


@pytest.mark.skipif(not (SYSTEM_PYTHON.is_file() and COG_VALIDATOR.is_file()),
                    reason=f"GDAL's COG validator not installed ({COG_VALIDATOR}; Debian: apt-get install python3-gdal)")
@pytest.mark.parametrize("which", ["global", "regional"])
def test_rasters_are_valid_cloud_optimized_geotiffs(surfaces, tmp_path, which):
    g, regionals = surfaces
    path = write_surface_geotiff(tmp_path / f"{which}.tif", g if which == "global" else regionals[0])
    proc = subprocess.run([str(SYSTEM_PYTHON), str(COG_VALIDATOR), str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "is a valid cloud optimized GeoTIFF" in proc.stdout, proc.stdout + proc.stderr
    with rasterio.open(path) as src:
        structure = src.tags(ns="IMAGE_STRUCTURE")
        assert structure["LAYOUT"] == "COG" and structure["COMPRESSION"] == "DEFLATE"
        assert structure["PREDICTOR"] == "3"  # floating-point predictor
        assert src.block_shapes == [(256, 256)] and src.dtypes == ("float32",) and src.nodata == NODATA
        assert src.tags()["GTLOC_OVERVIEW_VALUES"] and src.tags(1)["units"] == "probability"
        assert src.descriptions == ("probability mass per cell",)


def test_window_past_the_antimeridian_keeps_its_extent(tmp_path):
    mass = np.full((101, 151), 1.0 / (101 * 151), np.float32)
    surface = Surface(mass, 179.5, -4.5, 0.009, "regional")
    path = write_surface_geotiff(tmp_path / "am.tif", surface)
    with rasterio.open(path) as src:
        assert src.bounds.right == pytest.approx(179.5 + 151 * 0.009) and src.bounds.right > 180.0
    assert read_surface_geotiff(path).cell_index(-5.0, -179.9) is not None


def test_write_is_atomic_and_overwrites(surfaces, tmp_path):
    g, regionals = surfaces
    path = tmp_path / "out.tif"
    write_surface_geotiff(path, g)
    write_surface_geotiff(path, regionals[0])
    assert read_surface_geotiff(path).kind == "regional"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


@pytest.mark.parametrize("bad", [np.full((4, 4), np.nan, np.float32), -np.ones((4, 4), np.float32)])
def test_bad_surface_writes_nothing(tmp_path, bad):
    with pytest.raises(GtlocError, match="nothing written"):
        write_surface_geotiff(tmp_path / "bad.tif", Surface(bad, 0.0, 10.0, 1.0, "regional"))
    assert list(tmp_path.iterdir()) == []


def test_reading_a_bad_raster_is_one_clear_error(tmp_path):
    with pytest.raises(GtlocError, match="not found"):
        read_surface_geotiff(tmp_path / "missing.tif")
    (tmp_path / "junk.tif").write_bytes(b"II*\x00junk")
    with pytest.raises(GtlocError, match="cannot be read"):
        read_surface_geotiff(tmp_path / "junk.tif")
    utm = tmp_path / "utm.tif"
    with rasterio.open(utm, "w", driver="GTiff", width=4, height=4, count=1, dtype="float32", crs="EPSG:32633",
                       transform=rasterio.Affine(10, 0, 500000, 0, -10, 6000000)) as dst:
        dst.write(np.zeros((1, 4, 4), np.float32))
    with pytest.raises(GtlocError, match="EPSG:4326"):
        read_surface_geotiff(utm)
