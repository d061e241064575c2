"""Credible regions and credible_level on surfaces with a known (Gaussian in great-circle distance) density, whose
highest-density regions are spherical caps of known radius: r_p = sigma * sqrt(-2 ln(1 - p))."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import shapely
from rasterio.features import geometry_mask, shapes
from shapely.geometry import MultiPolygon, Point

from gtloc_engine.errors import GtlocError
from gtloc_engine.geo import EARTH_RADIUS_KM, Surface, haversine_km, row_area_sr
from gtloc_engine.inference.regions import (LEVEL_RTOL, WGS84, BlockPosterior, RegionConfig, credible_regions,
                                           row_cell_area_km2)
from gtloc_engine.inference.surfaces import credible_level

SIGMA_KM = 300.0


def gaussian_surface(lat0_deg, lon0_deg, *, sigma_km=SIGMA_KM, west_deg, north_deg, res_deg, shape, kind="regional"):
    """Mass per cell of a density exp(-d^2 / 2 sigma^2) (d: great-circle km), normalised over the raster."""
    h, w = shape
    lat = north_deg - (np.arange(h) + 0.5) * res_deg
    lon = west_deg + (np.arange(w) + 0.5) * res_deg
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    dist_km = haversine_km(np.stack((la, lo), axis=-1), np.array([lat0_deg, lon0_deg]))
    mass = np.exp(-(dist_km**2) / (2 * sigma_km**2)) * row_area_sr(north_deg, res_deg, h)[:, None]
    return Surface((mass / mass.sum()).astype(np.float32), west_deg, north_deg, res_deg, kind)


def cap_radius_km(level: float) -> float:
    return SIGMA_KM * math.sqrt(-2.0 * math.log(1.0 - level))


def cap_area_km2(radius_km: float) -> float:
    return 2.0 * math.pi * EARTH_RADIUS_KM**2 * (1.0 - math.cos(radius_km / EARTH_RADIUS_KM))


def window_around(lat0, lon0, half_deg_lat=15.0, res_deg=0.05):
    half_deg_lon = min(half_deg_lat / math.cos(math.radians(lat0)), 179.0)
    h, w = round(2 * half_deg_lat / res_deg), round(2 * half_deg_lon / res_deg)
    return {"west_deg": lon0 - half_deg_lon, "north_deg": lat0 + half_deg_lat, "res_deg": res_deg, "shape": (h, w)}


@pytest.mark.parametrize("lat0", [0.0, 45.0, 70.0])
def test_regions_match_the_analytic_caps(lat0):
    surface = gaussian_surface(lat0, 10.0, **window_around(lat0, 10.0))
    r50, r90 = credible_regions(surface, levels=(0.5, 0.9))
    assert (r50.level, r90.level) == (0.5, 0.9)
    for region in (r50, r90):
        assert isinstance(region.geometry, MultiPolygon) and region.geometry.is_valid
        assert region.cell_deg == surface.res_deg  # one polygon: drawn at the surface's own resolution
        assert region.mass == pytest.approx(region.level, abs=2e-3)
        assert region.area_km2 == pytest.approx(cap_area_km2(cap_radius_km(region.mass)), rel=0.03)
        assert region.geometry.contains(Point(10.0, lat0))
    assert r50.area_km2 < r90.area_km2 and r90.geometry.contains(r50.geometry)


def test_cell_areas_add_up_to_the_wgs84_ellipsoid():
    surface = Surface(np.zeros((720, 1440), np.float32), -180.0, 90.0, 0.25, "global")
    assert row_cell_area_km2(surface).sum() * 1440 == pytest.approx(510_065_621.7, rel=1e-6)  # WGS84 surface area


@pytest.mark.parametrize("lat0", [0.0, 60.0])
def test_area_is_the_geodesic_area_of_the_polygons(lat0):
    surface = gaussian_surface(lat0, 10.0, **window_around(lat0, 10.0, res_deg=0.1))
    for region in credible_regions(surface):
        dense = shapely.segmentize(region.geometry, 0.05)  # edges follow the parallels, not long geodesics
        geodesic = sum(abs(WGS84.geometry_area_perimeter(p)[0]) for p in shapely.get_parts(dense)) / 1e6
        assert region.area_km2 == pytest.approx(geodesic, rel=1e-4)


def test_regions_are_centred_on_the_peak_at_high_latitude():
    """Ranked by density, the 90% region reaches as far north of the peak as south of it; ranked by mass (the cells
    grow towards the equator) it would be shifted south by sigma^2 tan(lat) / R (~39 km here, 7 cells)."""
    lat0, res_deg = 70.0, 0.05
    surface = gaussian_surface(lat0, 10.0, **window_around(lat0, 10.0, res_deg=res_deg))
    (r90,) = credible_regions(surface, levels=(0.9,))
    _, south, _, north = r90.geometry.bounds
    assert (north - lat0) == pytest.approx(lat0 - south, abs=2 * res_deg)

    flat = surface.mass_per_cell.ravel()
    order = np.argsort(-flat)
    k = int(np.searchsorted(np.cumsum(flat[order]), 0.9))
    rows = np.unravel_index(order[:k + 1], surface.shape)[0]
    north_by_mass = surface.north_deg - rows.min() * res_deg
    south_by_mass = surface.north_deg - (rows.max() + 1) * res_deg
    assert (lat0 - south_by_mass) - (north_by_mass - lat0) > 8 * res_deg


def test_bimodal_surface_gives_two_polygons():
    a = gaussian_surface(0.0, -5.0, **window_around(0.0, 0.0))
    b = gaussian_surface(0.0, 5.0, **window_around(0.0, 0.0))
    surface = Surface((a.mass_per_cell + b.mass_per_cell) / 2, a.west_deg, a.north_deg, a.res_deg, "regional")
    (r50,) = credible_regions(surface, levels=(0.5,))
    assert len(r50.geometry.geoms) == 2
    assert r50.geometry.contains(Point(-5.0, 0.0)) and r50.geometry.contains(Point(5.0, 0.0))
    assert not r50.geometry.contains(Point(0.0, 0.0))


def test_region_straddling_the_antimeridian():
    # A global raster: the cap around (0, 180) is cut at +-180 into two polygons that together have its area.
    surface = gaussian_surface(0.0, 180.0, west_deg=-180.0, north_deg=90.0, res_deg=0.25, shape=(720, 1440),
                               kind="global")
    (r90,) = credible_regions(surface, levels=(0.9,))
    assert len(r90.geometry.geoms) == 2
    west, _, east, _ = r90.geometry.bounds
    assert west == pytest.approx(-180.0) and east == pytest.approx(180.0)
    assert r90.area_km2 == pytest.approx(cap_area_km2(cap_radius_km(r90.mass)), rel=0.03)
    assert credible_level(surface, 0.0, 179.99) < 0.01 and credible_level(surface, 0.0, -179.99) < 0.01


def test_region_around_a_pole():
    surface = gaussian_surface(90.0, 0.0, west_deg=-180.0, north_deg=90.0, res_deg=0.25, shape=(720, 1440),
                               kind="global")
    r50, r90 = credible_regions(surface)
    for region in (r50, r90):
        # Every cell of a row around the pole has the same density: whole rows join at once (ties are kept), so
        # the mass overshoots the level; the area is that of the cap holding the region's own mass.
        assert region.geometry.is_valid and region.level <= region.mass < region.level + 0.1
        assert region.area_km2 == pytest.approx(cap_area_km2(cap_radius_km(region.mass)), rel=0.03)
    assert credible_level(surface, 90.0, 0.0) < 0.01


def test_regional_surface_holding_less_than_a_level_leaves_it_out():
    full = gaussian_surface(0.0, 0.0, **window_around(0.0, 0.0))
    part = Surface(full.mass_per_cell * 0.6, full.west_deg, full.north_deg, full.res_deg, "regional")
    regions = credible_regions(part, levels=(0.5, 0.9))
    assert [r.level for r in regions] == [0.5]


def test_credible_level_is_zero_at_the_peak_and_grows_with_distance():
    lat0, lon0 = 30.0, 20.0
    surface = gaussian_surface(lat0, lon0, **window_around(lat0, lon0))
    assert credible_level(surface, lat0, lon0) == pytest.approx(0.0, abs=1e-3)
    km_north = np.arange(0.0, 1200.0, 50.0)
    levels = [credible_level(surface, lat0 + d / 111.19, lon0) for d in km_north]
    assert all(b >= a for a, b in itertools.pairwise(levels))
    assert levels[-1] > 0.99
    # On the analytic 90% boundary the level is 0.9 (to within the ring of cells the boundary crosses).
    r90 = cap_radius_km(0.9)
    for bearing_deg in (0.0, 90.0, 225.0):
        dlat = r90 * math.cos(math.radians(bearing_deg)) / 111.19
        dlon = r90 * math.sin(math.radians(bearing_deg)) / (111.19 * math.cos(math.radians(lat0 + dlat)))
        assert credible_level(surface, lat0 + dlat, lon0 + dlon) == pytest.approx(0.9, abs=0.01)


def test_credible_level_agrees_with_the_regions():
    surface = gaussian_surface(-20.0, 140.0, **window_around(-20.0, 140.0))
    (r90,) = credible_regions(surface, levels=(0.9,))
    rng = np.random.default_rng(0)
    for lat, lon in zip(rng.uniform(-30, -10, 40), rng.uniform(128, 152, 40)):
        inside = r90.geometry.contains(Point(lon, lat))
        level = credible_level(surface, lat, lon)
        if abs(level - 0.9) > 0.01:  # skip points on the boundary ring
            assert inside == (level < 0.9)


def test_place_outside_a_regional_surface_has_level_one():
    surface = gaussian_surface(0.0, 0.0, **window_around(0.0, 0.0, half_deg_lat=2.0))
    assert credible_level(surface, 40.0, 0.0) == 1.0


# ------------------------------------------------------------------------------------- speckled posteriors


def speckled_surface(res_deg=0.5, seed=0, sigma=1.5) -> Surface:
    """A global surface whose density is independent log-normal noise per cell: the worst case of a weak model's
    speckle (its exact 50% region is thousands of separate cells)."""
    h = round(180 / res_deg)
    log_density = np.random.default_rng(seed).normal(0.0, sigma, (h, 2 * h))
    mass = np.exp(log_density) * row_area_sr(90.0, res_deg, h)[:, None]
    return Surface((mass / mass.sum()).astype(np.float32), -180.0, 90.0, res_deg, "global")


def exact_region_polygons(surface: Surface, level: float) -> int:
    """Polygons of the exact (uncoarsened) region, traced independently of credible_regions."""
    density = surface.density_per_km2
    order = np.argsort(-density.ravel())
    k = int(np.searchsorted(np.cumsum(surface.mass_per_cell.ravel()[order], dtype=np.float64), level))
    mask = density >= density.ravel()[order[k]]
    return sum(1 for _ in shapes(mask.astype(np.uint8), mask=mask, connectivity=4))


def cells_inside(surface: Surface, geometry) -> np.ndarray:
    """(H, W) bool: the cells whose centres the geometry covers (rasterised back onto the surface's grid)."""
    return ~geometry_mask([geometry], out_shape=surface.shape, transform=surface.transform, all_touched=False)


@pytest.mark.parametrize("max_polygons", [64, 8])
def test_a_speckled_posterior_gives_at_most_max_polygons_per_level(max_polygons):
    surface = speckled_surface()
    assert exact_region_polygons(surface, 0.5) > 20 * max_polygons  # the exact region is speckle
    levels = (0.9, 0.5)  # returned in the order asked, built from the smallest up
    r90, r50 = credible_regions(surface, levels=levels, config=RegionConfig(max_polygons=max_polygons))
    assert (r90.level, r50.level) == levels
    for region in (r50, r90):
        assert region.geometry.is_valid and 1 <= len(region.geometry.geoms) <= max_polygons
        assert region.cell_deg > surface.res_deg  # it had to be coarsened
        assert region.mass >= region.level
        # Mass and area are those of the cells the polygons cover (a region this size can run along both poles,
        # where the polygons' own geodesic area is ill-posed: see regions.py).
        inside = cells_inside(surface, region.geometry)
        assert surface.mass_per_cell[inside].sum(dtype=np.float64) == pytest.approx(region.mass, rel=1e-6)
        assert inside.sum(axis=1) @ row_cell_area_km2(surface) == pytest.approx(region.area_km2, rel=1e-9)
    assert r90.geometry.buffer(1e-9).contains(r50.geometry) and r50.area_km2 < r90.area_km2
    assert r50.mass < r90.mass


def test_coarsening_keeps_the_region_close_to_its_level():
    """The blocks are chosen by density, so a coarsened region holds about its level, not everything it touches."""
    surface = speckled_surface()
    for region in credible_regions(surface, levels=(0.5, 0.9)):
        assert region.cell_deg > surface.res_deg and region.level <= region.mass < region.level + 0.05


def test_a_speckled_posterior_from_a_random_model_is_readable(tiny_model, tmp_path):
    from gtloc_engine.inference.surfaces import SurfaceConfig, SurfaceMaker

    maker = SurfaceMaker(tiny_model, global_res_deg=1.0, cache_dir=tmp_path, config=SurfaceConfig(coarse_res_deg=1.0))
    surface = maker.global_surface(np.random.default_rng(1).normal(size=tiny_model.cfg.embed_dim))
    assert exact_region_polygons(surface, 0.5) > 2 * RegionConfig().max_polygons
    r50, r90 = credible_regions(surface)
    for region in (r50, r90):
        assert 1 <= len(region.geometry.geoms) <= RegionConfig().max_polygons and region.mass >= region.level
    assert r90.geometry.buffer(1e-9).contains(r50.geometry)


def test_max_polygons_1_joins_two_modes_into_one_region():
    a = gaussian_surface(0.0, -5.0, **window_around(0.0, 0.0, res_deg=0.1))
    b = gaussian_surface(0.0, 5.0, **window_around(0.0, 0.0, res_deg=0.1))
    surface = Surface((a.mass_per_cell + b.mass_per_cell) / 2, a.west_deg, a.north_deg, a.res_deg, "regional")
    (r50,) = credible_regions(surface, levels=(0.5,), config=RegionConfig(max_polygons=1))
    assert len(r50.geometry.geoms) == 1 and r50.mass >= 0.5 and r50.cell_deg > surface.res_deg
    assert r50.geometry.contains(Point(-5.0, 0.0)) and r50.geometry.contains(Point(5.0, 0.0))


def test_max_polygons_must_be_positive():
    with pytest.raises(GtlocError, match="max_polygons"):
        credible_regions(speckled_surface(res_deg=5.0), config=RegionConfig(max_polygons=0))


def _sorted_threshold(density: np.ndarray, mass: np.ndarray, level: float) -> float:
    """The threshold by a full sort and cumulative sum (what BlockPosterior.threshold replaces)."""
    order = np.argsort(-density.ravel(), kind="stable")
    cumulative = np.cumsum(mass.ravel()[order], dtype=np.float64)
    k = min(int(np.searchsorted(cumulative, level * (1.0 - LEVEL_RTOL))), len(order) - 1)
    return float(density.ravel()[order[k]])


@pytest.mark.parametrize("case", ["speckle", "peaked", "ties_and_zeros", "flat"])
def test_the_binned_threshold_is_the_full_sorts_at_every_block_size(case):
    rng = np.random.default_rng(3)
    if case == "speckle":
        surface = speckled_surface(res_deg=1.0, seed=4)
    elif case == "peaked":
        surface = gaussian_surface(35.0, 139.0, west_deg=-180.0, north_deg=90.0, res_deg=0.5, shape=(360, 720),
                                   kind="global")
    else:
        mass = np.zeros((180, 360))
        if case == "ties_and_zeros":  # a few repeated values, most cells exactly 0: ties at every threshold
            cells = rng.choice(mass.size, 5000, replace=False)
            mass.ravel()[cells] = rng.choice([1.0, 2.0, 2.0, 4.0], 5000) * row_area_sr(90.0, 1.0, 180)[cells // 360]
        else:  # one density everywhere: every cell ties
            mass[:] = row_area_sr(90.0, 1.0, 180)[:, None]
        surface = Surface((mass / mass.sum()).astype(np.float32), -180.0, 90.0, 1.0, "global")
    for block in (1, 2, 4, 16):
        tiles = BlockPosterior(surface, block)
        for level in (0.01, 0.5, 0.9, 0.999, 1.0):
            expected = _sorted_threshold(tiles.density, tiles.mass, level)
            assert tiles.threshold(level) == expected, (case, block, level)
