"""Surfaces from a real (tiny, random) model: normalisation against the encoder's own scores, peaks against exact
evaluation at every cell centre, regional windows (antimeridian, poles), candidates, coarser grids summed from the
cache, and the claim check's place score against exact evaluation and across resolutions. The query embedding is the
embedding of a place, so cos = 1 there."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gtloc_engine.errors import GtlocError
from gtloc_engine.geo import (
    EARTH_RADIUS_KM, KM_PER_DEG_LAT, fibonacci_sphere_latlon, global_centres_latlon, haversine_km, row_area_sr,
)
from gtloc_engine.inference.surfaces import (
    SurfaceConfig, SurfaceMaker, credible_area_km2, credible_level, find_candidates,
)
from gtloc_engine.model import GTLoc, preset

RES_DEG = 0.5
CONFIG = SurfaceConfig(coarse_res_deg=1.0)  # 64,800 cached grid points: fast to build for the tiny model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GTLoc(preset("tiny"), seed=0).eval()


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("constants")


@pytest.fixture(scope="module")
def maker(model, cache_root):
    return SurfaceMaker(model, global_res_deg=RES_DEG, cache_dir=cache_root, config=CONFIG)


@pytest.fixture(scope="module")
def exact_maker(model, cache_root):
    return SurfaceMaker(model, global_res_deg=RES_DEG, cache_dir=cache_root,
                        config=SurfaceConfig(coarse_res_deg=1.0, regional_sample_km=1.0))


def place_query(model, lat_deg, lon_deg) -> np.ndarray:
    with torch.inference_mode():
        return model.embed_locations(torch.tensor([[lat_deg, lon_deg]], dtype=torch.float32))[0].numpy()


def test_global_surface_is_a_normalised_global_grid(model, maker):
    surface = maker.global_surface(place_query(model, 48.8, 2.3))
    assert surface.kind == "global" and surface.shape == (360, 720)
    assert surface.mass_per_cell.dtype == np.float32
    assert surface.bounds_deg == (-180.0, -90.0, 180.0, 90.0)
    assert surface.total_mass == pytest.approx(1.0, abs=1e-5)
    assert (surface.mass_per_cell >= 0).all()
    assert surface.model_key == maker.model_key and math.isfinite(surface.log_norm)


@pytest.mark.parametrize("place", [(48.8, 2.3), (10.0, 179.8)])
def test_global_peak_is_the_best_cell_by_exact_evaluation(model, maker, place):
    q = place_query(model, *place)
    surface = maker.global_surface(q)
    exact = maker.scores_at(q, global_centres_latlon(RES_DEG)).reshape(surface.shape)
    # Density is proportional to exp(score): the densest cell is the one with the best exact score.
    assert np.unravel_index(np.argmax(surface.density_per_km2), surface.shape) == \
        np.unravel_index(np.argmax(exact), surface.shape)


def test_batched_surfaces_equal_single_ones(model, maker):
    qs = np.stack([place_query(model, 48.8, 2.3), place_query(model, -33.9, 151.2)])
    for batched, q in zip(maker.global_surfaces(qs), qs):
        single = maker.global_surface(q)
        np.testing.assert_allclose(batched.mass_per_cell, single.mass_per_cell, rtol=1e-4, atol=1e-12)
        assert batched.log_norm == pytest.approx(single.log_norm, abs=1e-5)
    assert maker.global_surfaces(np.zeros((0, model.cfg.embed_dim), np.float32)) == []


def test_masses_are_exp_score_times_area_over_the_global_norm(model, maker):
    q = place_query(model, -33.9, 151.2)
    surface = maker.global_surface(q)
    # The densest cells are always re-scored exactly: check the formula there, against the encoder itself.
    rows, cols = np.unravel_index(np.argsort(-surface.density_per_km2.ravel())[:20], surface.shape)
    latlon = np.stack((surface.lat_centres_deg[rows], surface.lon_centres_deg[cols]), axis=-1)
    expected = np.exp(maker.scores_at(q, latlon) + np.log(row_area_sr(90.0, RES_DEG, 360))[rows] - surface.log_norm)
    np.testing.assert_allclose(surface.mass_per_cell[rows, cols], expected, rtol=1e-4)
    # ...and the interpolated cells elsewhere follow the encoder too (bicubic between cached grid scores).
    rng = np.random.default_rng(0)
    rr, cc = rng.integers(0, 360, 200), rng.integers(0, 720, 200)
    latlon = np.stack((surface.lat_centres_deg[rr], surface.lon_centres_deg[cc]), axis=-1)
    log_mass = maker.scores_at(q, latlon) + np.log(row_area_sr(90.0, RES_DEG, 360))[rr] - surface.log_norm
    assert np.median(np.abs(np.log(surface.mass_per_cell[rr, cc]) - log_mass)) < 0.5


def test_second_maker_reads_the_grid_from_the_cache(model, maker, cache_root):
    calls = [0]
    handle = model.location_encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        again = SurfaceMaker(model, global_res_deg=RES_DEG, cache_dir=cache_root, config=CONFIG)
    finally:
        handle.remove()
    assert calls[0] == 0
    np.testing.assert_array_equal(np.asarray(again.coarse_emb), np.asarray(maker.coarse_emb))


def test_regional_surfaces_sit_on_the_modes_at_about_1_km(model, maker):
    q = place_query(model, 48.8, 2.3)
    g = maker.global_surface(q)
    regionals = maker.regional_surfaces(q, g, n_modes=3, cell_km=1.0)
    modes = find_candidates(g, 3, radius_km=CONFIG.candidate_radius_km)
    assert len(regionals) == 3
    for r, mode in zip(regionals, modes):
        assert r.kind == "regional" and r.res_deg == pytest.approx(1.0 / KM_PER_DEG_LAT)
        half = round(1.5 * RES_DEG * KM_PER_DEG_LAT)  # 1.5 global cells (83 km) beat the default 50 km
        assert maker.regional_half_km == pytest.approx(1.5 * RES_DEG * KM_PER_DEG_LAT)
        assert r.shape[0] == 2 * half + 1 and r.shape[1] == 2 * round(half / math.cos(math.radians(mode.lat_deg))) + 1
        west, south, east, north = r.bounds_deg
        assert (south + north) / 2 == pytest.approx(mode.lat_deg, abs=1e-9)
        assert (west + east) / 2 == pytest.approx(mode.lon_deg, abs=1e-9)
        assert 0.0 < r.total_mass < 1.0 and r.log_norm == g.log_norm
    # The global peak here is the query place: the 1 km surface finds it to within a couple of cells.
    peak = regionals[0].peak_latlon_deg()
    assert haversine_km(np.array(peak), np.array([48.8, 2.3])) < 3.0


def test_exact_regional_masses_follow_the_formula(model, exact_maker):
    q = place_query(model, -33.9, 151.2)
    g = exact_maker.global_surface(q)
    (r,) = exact_maker.regional_surfaces(q, g, n_modes=1)
    rows, cols = np.array([0, 50, r.shape[0] - 1, 7]), np.array([0, 60, r.shape[1] - 1, 33])
    latlon = np.stack((r.lat_centres_deg[rows], r.lon_centres_deg[cols]), axis=-1)
    area = row_area_sr(r.north_deg, r.res_deg, r.shape[0])[rows]
    expected = np.exp(exact_maker.scores_at(q, latlon) + np.log(area) - g.log_norm)
    np.testing.assert_allclose(r.mass_per_cell[rows, cols], expected, rtol=1e-4)


@pytest.mark.parametrize("place", [(48.8, 2.3), (75.0, -40.0)])
def test_regional_lattice_follows_exact_evaluation(model, maker, exact_maker, place):
    q = place_query(model, *place)
    g = maker.global_surface(q)
    fast = maker.regional_surfaces(q, g, n_modes=1)
    exact = exact_maker.regional_surfaces(q, g, n_modes=1)
    for a, b in zip(fast, exact):
        assert a.shape == b.shape and a.bounds_deg == b.bounds_deg
        assert np.abs(a.mass_per_cell - b.mass_per_cell).sum() / b.total_mass < 0.08


def test_regional_window_across_the_antimeridian(model, maker):
    q = place_query(model, -5.0, -179.9)
    g = maker.global_surface(q)
    (r,) = maker.regional_surfaces(q, g, n_modes=1)
    west, _, east, _ = r.bounds_deg
    assert west < -180.0 < east  # contiguous past the antimeridian, not split or clipped
    assert np.isfinite(r.mass_per_cell).all() and r.total_mass > 0
    _, lon = r.peak_latlon_deg()
    assert -180.0 <= lon < 180.0
    # A place east of the antimeridian, given in [-180, 180], is found in the window at lon - 360.
    assert r.cell_index(-5.0, 179.95) is not None
    assert credible_level(r, -5.0, 179.95) < r.total_mass


def test_regional_window_at_a_pole_is_clipped(model, maker):
    q = place_query(model, 89.9, 30.0)
    g = maker.global_surface(q)
    regionals = maker.regional_surfaces(q, g, n_modes=3)
    polar = [r for r in regionals if r.bounds_deg[3] == 90.0]
    for r in regionals:
        assert -90.0 <= r.bounds_deg[1] and r.bounds_deg[3] <= 90.0 and np.isfinite(r.mass_per_cell).all()
    if polar:
        assert polar[0].shape[0] < regionals[-1].shape[0] or polar[0] is regionals[-1]


def test_candidates_are_separated_modes_with_their_disc_mass(model, maker):
    g = maker.global_surface(place_query(model, 35.7, 139.7))
    cands = find_candidates(g, 5, radius_km=200.0)
    assert [c.rank for c in cands] == [1, 2, 3, 4, 5]
    assert (cands[0].lat_deg, cands[0].lon_deg) == g.peak_latlon_deg()
    pts = np.array([[c.lat_deg, c.lon_deg] for c in cands])
    for i in range(len(cands)):
        for j in range(i):
            assert haversine_km(pts[i], pts[j]) > 400.0
    # Independent check of a disc's mass: every cell centre on the globe against the radius.
    lat, lon = np.meshgrid(g.lat_centres_deg, g.lon_centres_deg, indexing="ij")
    for c in cands:
        disc = haversine_km(np.stack((lat, lon), axis=-1), np.array([c.lat_deg, c.lon_deg])) <= 200.0
        assert c.probability == pytest.approx(float(g.mass_per_cell[disc].sum(dtype=np.float64)), rel=1e-6)
    assert sum(c.probability for c in cands) <= 1.0 + 1e-6


def test_credible_level_on_a_model_surface(model, maker):
    g = maker.global_surface(place_query(model, 1.3, 103.8))
    assert credible_level(g, *g.peak_latlon_deg()) == 0.0
    assert 0.0 < credible_level(g, -60.0, -120.0) <= 1.0


@pytest.mark.parametrize("res", [0.3, 0.7, 0.0, -1.0, 1.5])  # 1.5: tiles, but is no multiple of the 1 deg cache
def test_resolutions_that_do_not_tile_are_refused(model, cache_root, res):
    with pytest.raises(GtlocError, match="resolution"):
        SurfaceMaker(model, global_res_deg=res, cache_dir=cache_root, config=CONFIG)


def test_finer_global_resolution_is_refined_from_the_same_cache(model, cache_root):
    fine = SurfaceMaker(model, global_res_deg=0.25, cache_dir=cache_root, config=CONFIG)
    q = place_query(model, 48.8, 2.3)
    g = fine.global_surface(q)
    assert g.shape == (720, 1440) and g.total_mass == pytest.approx(1.0, abs=1e-5)
    assert haversine_km(np.array(g.peak_latlon_deg()), np.array([48.8, 2.3])) < 30.0


def test_bad_embedding_is_one_clear_error(maker):
    with pytest.raises(GtlocError, match="embedding"):
        maker.global_surface(np.zeros(5, np.float32))


def test_a_coarser_resolution_sums_blocks_of_the_cached_grid(model, maker, cache_root):
    coarse = SurfaceMaker(model, global_res_deg=2.0, cache_dir=cache_root, config=CONFIG)
    q = place_query(model, -33.9, 151.2)
    g, cells = coarse.global_surface(q), maker.grid_surface(q)
    assert g.shape == (90, 180) and cells.shape == (180, 360) and cells.res_deg == 1.0
    np.testing.assert_allclose(g.mass_per_cell, cells.mass_per_cell.reshape(90, 2, 180, 2).sum(axis=(1, 3)),
                               rtol=1e-4, atol=1e-9)
    assert g.log_norm == pytest.approx(cells.log_norm)


def test_the_grid_surface_scores_every_cell_exactly(model, maker):
    q = place_query(model, 35.7, 139.7)
    cells = maker.grid_surface(q)
    rng = np.random.default_rng(5)
    rows, cols = rng.integers(0, 180, 20), rng.integers(0, 360, 20)
    latlon = np.stack((cells.lat_centres_deg[rows], cells.lon_centres_deg[cols]), axis=-1)
    area = row_area_sr(90.0, 1.0, 180)[rows]
    expected = np.exp(maker.scores_at(q, latlon).astype(np.float64) - cells.log_norm) * area
    np.testing.assert_allclose(cells.mass_per_cell[rows, cols], expected, rtol=1e-4)


def test_score_place_ranks_the_exact_density_among_the_cells_and_ignores_the_resolution(model, maker, cache_root):
    q = place_query(model, 48.8, 2.3)
    # The place of 40 spread over the globe whose level is nearest 0.5: a test of the ranking, not of an extreme.
    lat, lon = min(fibonacci_sphere_latlon(40), key=lambda p: abs(maker.score_place(q, *p).level - 0.5))
    score = maker.score_place(q, lat, lon, region_level=0.9)
    cells = maker.grid_surface(q)
    density = math.exp(float(maker.scores_at(q, np.array([[lat, lon]]))[0]) - cells.log_norm) / EARTH_RADIUS_KM**2
    assert score.density_per_km2 == pytest.approx(density, rel=1e-5)
    assert score.evidence == pytest.approx(density * 4 * math.pi * EARTH_RADIUS_KM**2, rel=1e-5)
    # Brute force: the mass of every cell denser than the place; the area of the cells below level 0.9.
    masses, dens = cells.mass_per_cell.astype(np.float64), cells.density_per_km2
    assert score.level == pytest.approx(masses[dens > np.float32(density)].sum(), abs=1e-6)
    assert 0.2 < score.level < 0.8
    order = np.argsort(-dens, axis=None)
    before = np.cumsum(masses.ravel()[order]) - masses.ravel()[order]
    areas = np.broadcast_to(cells.cell_area_km2, cells.shape).ravel()[order]
    assert score.region_area_km2 == pytest.approx(areas[before < 0.9].sum(), rel=1e-6)
    assert credible_area_km2(cells, 0.9) == score.region_area_km2 and score.res_deg == 1.0
    for res in (0.5, 2.0):  # upsampled or summed for the map, the claim check stays on the cached grid
        other = SurfaceMaker(model, global_res_deg=res, cache_dir=cache_root, config=CONFIG)
        assert other.score_place(q, lat, lon, region_level=0.9) == score


def test_score_place_levels_match_an_exact_finer_grid(model, cache_root):
    """Levels on the default 0.5 deg cache against exact scores at every centre of a 0.25 deg grid (1M encoder
    evaluations), for claims the model puts at mid-range levels."""
    q = place_query(model, 40.7, -74.0)
    maker = SurfaceMaker(model, global_res_deg=0.25, cache_dir=cache_root)
    scores = {tuple(p): maker.score_place(q, *p) for p in fibonacci_sphere_latlon(60)}
    mid = [(p, s) for p, s in scores.items() if 0.3 <= s.level <= 0.9]
    assert len(mid) >= 5
    exact = maker.scores_at(q, global_centres_latlon(0.25)).astype(np.float64).reshape(720, 1440)
    log_mass = exact + np.log(row_area_sr(90.0, 0.25, 720))[:, None]
    log_norm = np.logaddexp.reduce(log_mass.ravel())
    mass, log_density = np.exp(log_mass - log_norm), exact - log_norm
    for (lat, lon), s in mid:
        claim = float(maker.scores_at(q, np.array([[lat, lon]]))[0]) - log_norm
        assert s.level == pytest.approx(float(mass[log_density > claim].sum()), abs=0.02), (lat, lon)
