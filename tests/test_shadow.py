"""The shadow locus (gtloc_engine/inference/shadow.py): its band against pvlib's sun (NREL SPA), the vectorised grid
against a per-cell brute-force integral over the time's uncertainty, local times read in each place's real zone, two
measurements intersecting around the truth, fusion with a place posterior, and the files it writes."""

from __future__ import annotations

import datetime as dt
import math
import threading

import numpy as np
import pandas as pd
import pytest
import rasterio

from gtloc_engine.errors import GtlocError
from gtloc_engine.geo import Surface, row_area_sr
from gtloc_engine.inference.shadow import (
    ELEVATION_SIGMA_FLOOR_DEG, ShadowCancelled, ShadowConfig, ShadowMeasurement, fuse, locate_by_shadow,
    locus_surface, log_likelihood, shadow_to_files, time_bins,
)
from gtloc_engine.inference.surfaces import credible_level
from gtloc_engine.io.rasters import read_surface_geotiff
from gtloc_engine.solar import solar_position
from gtloc_engine.timezones import zone_at, zones_at

pvlib = pytest.importorskip("pvlib")

KATHMANDU = (27.7172, 85.3240)  # Asia/Kathmandu, UTC+05:45
PATNA = (25.5941, 85.1376)  # Asia/Kolkata, UTC+05:30: the same longitude, 15 minutes of clock apart
MADRID = (40.4168, -3.7038)  # Europe/Madrid, UTC+02:00 in summer (not round(lon / 15) = 0)
MID_ATLANTIC = (0.0, -30.0)  # open sea: the nautical zone, UTC-02:00


def _pvlib_sun(lat_deg, lon_deg, utc) -> tuple[np.ndarray, np.ndarray]:
    """pvlib's geometric elevation and azimuth (NREL SPA) at places and UTC instants (broadcast)."""
    lat, lon, utc = np.broadcast_arrays(np.asarray(lat_deg, float), np.asarray(lon_deg, float),
                                        np.asarray(utc, dtype="datetime64[s]"))
    ref = pvlib.solarposition.get_solarposition(pd.DatetimeIndex(utc.ravel(), tz="UTC"), lat.ravel(), lon.ravel(),
                                                method="nrel_numpy")
    return ref["elevation"].to_numpy().reshape(lat.shape), ref["azimuth"].to_numpy().reshape(lat.shape)


def _log_gauss(x, sigma):
    return -0.5 * (x / sigma) ** 2 - np.log(sigma) - 0.5 * math.log(2 * math.pi)


def _wrap(x):
    return (np.asarray(x) + 180.0) % 360.0 - 180.0


def _raster_log_likelihood(surface: Surface, rows, cols) -> np.ndarray:
    """log L at cells, read back from a locus surface: mass = L x area_sr / exp(log_norm)."""
    area = row_area_sr(surface.north_deg, surface.res_deg, surface.shape[0])
    with np.errstate(divide="ignore"):  # cells far outside the band underflow float32 to 0
        return np.log(surface.mass_per_cell[rows, cols].astype(np.float64)) - np.log(area[rows]) \
            + surface.log_norm


@pytest.mark.parametrize("time, bearing", [("2024-03-20T09:30Z", None), ("2024-07-14T15:30", None),
                                           ("2024-12-01T06:10Z", 200.0)])
def test_the_locus_band_is_where_pvlib_puts_the_sun_at_the_given_elevation(tmp_path, time, bearing):
    """At 200 random cells in the band (and 200 outside it) the GeoTIFF's likelihood is the Gaussian of the residual
    between the measured elevation and pvlib's sun there (local times: each cell's zone, from zoneinfo)."""
    elev, sigma = 35.0, 1.0
    m = ShadowMeasurement.validated(time=time, elev_deg=elev, elev_sigma_deg=sigma, bearing_deg=bearing,
                                    bearing_sigma_deg=None if bearing is None else 8.0)
    summary = shadow_to_files([m], tmp_path, config=ShadowConfig(res_deg=0.5))
    locus = read_surface_geotiff(summary["locus_tif"])
    assert locus.shape == (360, 720) and locus.total_mass == pytest.approx(1.0, abs=1e-5)
    assert float(locus.tags["GTLOC_LOG_NORM"]) == locus.log_norm

    rng = np.random.default_rng(11)
    rows, cols = rng.integers(0, 360, 100_000), rng.integers(0, 720, 100_000)
    lat, lon = locus.lat_centres_deg[rows], locus.lon_centres_deg[cols]
    if m.instant_utc is not None:
        utc = np.full(len(rows), np.datetime64(m.instant_utc, "s"))
    else:  # the same wall clock in every cell's own zone, place by place through zoneinfo
        utc = np.array([np.datetime64(zone_at(a, b).localize(m.wall_clock_local).astimezone(dt.timezone.utc)
                                      .replace(tzinfo=None), "s") for a, b in zip(lat, lon)])
    ref_el, ref_az = _pvlib_sun(lat, lon, utc)
    expected = _log_gauss(elev - ref_el, sigma)
    if bearing is not None:
        expected += _log_gauss(_wrap(bearing + 180.0 - ref_az), 8.0)
    got = _raster_log_likelihood(locus, rows, cols)
    peak = float(np.max(expected))
    band = np.flatnonzero((expected > peak - 8.0) & (ref_el < 80.0))[:200]  # within 4 sigma; azimuth defined
    assert len(band) == 200
    assert np.abs(got[band] - expected[band]).max() < 0.05, np.abs(got[band] - expected[band]).max()
    outside = np.flatnonzero(np.abs(elev - ref_el) > 8.0 * sigma)[:200]
    assert len(outside) == 200
    density = locus.density_per_km2
    assert (density[rows[outside], cols[outside]] < 1e-12 * density.max()).all()


def _brute_force_log_likelihood(m: ShadowMeasurement, lat_deg: float, lon_deg: float, n_steps: int = 2001) -> float:
    """log L at one place by direct integration over the time's normal (+-6 sigma, n_steps points), the place's zone
    looked up on its own, the Gaussians written out: independent of the binned, vectorised evaluation."""
    sigma_t = m.time_sigma_min
    steps_min = np.linspace(-6 * sigma_t, 6 * sigma_t, n_steps) if sigma_t else np.zeros(1)
    weights = np.exp(-0.5 * (steps_min / sigma_t) ** 2) if sigma_t else np.ones(1)
    weights /= weights.sum()
    start = np.datetime64(m.instant_utc if m.instant_utc is not None else m.wall_clock_local, "ms")
    local = start + np.rint(steps_min * 60_000).astype("timedelta64[ms]")
    offsets = np.zeros(len(local))
    if m.wall_clock_local is not None:
        zone = zone_at(lat_deg, lon_deg)
        ends = [zone.offset_min(t.astype(dt.datetime)) for t in local[[0, -1]]]
        # Offsets change at most once in a few hours: look each step up only where the window holds a change.
        offsets[:] = ends[0] if ends[0] == ends[1] else [zone.offset_min(t.astype(dt.datetime)) for t in local]
    sun = solar_position(lat_deg, lon_deg, local, offsets)
    ll = _log_gauss(m.sun_elevation_deg - sun.elevation_deg, m.elevation_sigma_deg)
    if m.sun_azimuth_deg is not None:
        ll = ll + _log_gauss(_wrap(m.sun_azimuth_deg - sun.azimuth_deg), m.azimuth_sigma_deg)
    with np.errstate(divide="ignore"):  # a place the sun never reaches in the window: log 0
        return float(np.log(np.sum(weights * np.exp(ll))))


@pytest.mark.parametrize("fields", [
    {"time": "2024-05-02T17:20", "height_m": 3.0, "length_m": 4.0, "height_sigma_m": 0.1, "length_sigma_m": 0.2},
    {"time": "2024-05-02T17:20", "elev_deg": 25.0, "time_sigma_min": 20.0},
    {"time": "2024-10-27T02:30", "elev_deg": 10.0, "elev_sigma_deg": 2.0, "time_sigma_min": 45.0,
     "bearing_deg": 250.0, "bearing_sigma_deg": 10.0},  # the night Europe's clocks go back
    {"time": "2024-02-10T11:00+01:00", "elev_deg": 40.0, "time_sigma_min": 8.0, "bearing_deg": 340.0},
])
def test_the_vectorised_locus_matches_a_brute_force_integral_per_cell(fields):
    m = ShadowMeasurement.validated(**fields)
    surface = locus_surface([m], res_deg=5.0)
    lat, lon = surface.lat_centres_deg, surface.lon_centres_deg
    brute = np.array([[_brute_force_log_likelihood(m, a, b) for b in lon] for a in lat])
    log_mass = brute + np.log(row_area_sr(90.0, 5.0, len(lat)))[:, None]
    expected = np.exp(log_mass - np.logaddexp.reduce(log_mass.ravel()))
    assert np.abs(surface.mass_per_cell - expected).max() < 2e-3
    # Where the locus has its mass (within ~3 sigma of its peak) the binned marginal is the integral to 5%; in the
    # far tails the Gaussian smear within a bin overstates a little more (the module docstring says how much).
    strong = expected > 0.01 * expected.max()
    assert strong.sum() >= 5
    assert np.abs(np.log(surface.mass_per_cell[strong]) - np.log(expected[strong])).max() < 0.05
    # The same function evaluated place by place (no grid) gives the grid's values.
    rows, cols = np.nonzero(strong)
    one_by_one = np.array([log_likelihood(m, lat[r], lon[c]) for r, c in zip(rows, cols)])
    assert one_by_one == pytest.approx(_raster_log_likelihood(surface, rows, cols), abs=1e-4)


@pytest.mark.parametrize("place, offset", [(KATHMANDU, "+05:45"), (PATNA, "+05:30"), (MADRID, "+02:00"),
                                           (MID_ATLANTIC, "-02:00")])
def test_a_local_time_is_read_in_each_places_own_zone(place, offset):
    naive = ShadowMeasurement.validated(time="2024-07-14T09:00", elev_deg=30.0)
    aware = ShadowMeasurement.validated(time=f"2024-07-14T09:00{offset}", elev_deg=30.0)
    assert float(log_likelihood(naive, *place)) == pytest.approx(float(log_likelihood(aware, *place)), abs=1e-9)


def test_kathmandu_and_india_at_the_same_local_time_see_different_suns():
    """15 minutes of clock apart at one longitude: the sun moves ~3 deg, far more than the 0.25 deg sigma."""
    m = ShadowMeasurement.validated(time="2024-03-20T09:00", elev_deg=30.0, elev_sigma_deg=0.25)
    lat = np.array([KATHMANDU[0], PATNA[0]])
    lon = np.array([KATHMANDU[1], PATNA[1]])
    wrong = [ShadowMeasurement.validated(time=f"2024-03-20T09:00{o}", elev_deg=30.0, elev_sigma_deg=0.25)
             for o in ("+05:30", "+05:45")]  # each place given the other's clock
    got = log_likelihood(m, lat, lon)
    assert got[0] != pytest.approx(float(log_likelihood(wrong[0], *KATHMANDU)), abs=0.5)
    assert got[1] != pytest.approx(float(log_likelihood(wrong[1], *PATNA)), abs=0.5)
    zones, index = zones_at(lat, lon)
    assert [zones[i].name for i in index] == ["Asia/Kathmandu", "Asia/Kolkata"]


def test_zones_at_agrees_with_zone_at_place_by_place():
    rng = np.random.default_rng(3)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, 2000)))
    lon = rng.uniform(-180, 180, 2000)
    zones, index = zones_at(lat, lon)
    assert [zones[i] for i in index] == [zone_at(a, b) for a, b in zip(lat, lon)]
    assert any(z.nautical for z in zones) and any(not z.nautical for z in zones)


def test_two_times_intersect_to_a_smaller_region_holding_the_truth():
    """The same pole at 08:00 and 16:00 UTC in Madrid (one time written as the local clock): each alone is a band
    around the globe, together two small spots, one of them at Madrid."""
    times = [np.datetime64("2024-06-21T08:00:00"), np.datetime64("2024-06-21T16:00:00")]
    (el_morning,), (el_afternoon,) = (_pvlib_sun([MADRID[0]], [MADRID[1]], [t])[0] for t in times)
    morning = ShadowMeasurement.validated(time="2024-06-21T10:00", height_m=math.tan(math.radians(el_morning)),
                                          length_m=1.0, height_sigma_m=0.01, length_sigma_m=0.01)
    afternoon = ShadowMeasurement.validated(time="2024-06-21T16:00Z", elev_deg=float(el_afternoon),
                                            elev_sigma_deg=0.5)
    config = ShadowConfig(res_deg=0.5)
    alone = [locate_by_shadow([m], config=config) for m in (morning, afternoon)]
    both = locate_by_shadow([morning, afternoon], config=config)
    area_90 = {id(r): {reg.level: reg.area_km2 for reg in r.regions["locus"]}[0.9] for r in (*alone, both)}
    assert all(area_90[id(both)] < area_90[id(r)] / 5 for r in alone)
    for r in (*alone, both):
        assert credible_level(r.locus, *MADRID) < 0.9
    best = both.candidates["locus"][0]
    assert abs(best.lat_deg - MADRID[0]) < 1.5 and abs(best.lon_deg - MADRID[1]) < 1.5


def test_fusion_is_the_normalised_product_and_finds_where_both_agree():
    """A posterior with two equal modes, Madrid and Tokyo; a shadow consistent with Madrid only keeps Madrid."""
    res = 1.0
    lat = (90.0 - (np.arange(180) + 0.5) * res)[:, None]
    lon = (-180.0 + (np.arange(360) + 0.5) * res)[None, :]
    blob = np.exp(-((lat - MADRID[0]) ** 2 + (lon - MADRID[1]) ** 2) / 8.0) \
        + np.exp(-((lat - 35.7) ** 2 + (lon - 139.7) ** 2) / 8.0) + 1e-12
    area = row_area_sr(90.0, res, 180)[:, None]
    posterior = Surface((blob * area / (blob * area).sum()).astype(np.float32), -180.0, 90.0, res, "global", "toy")
    (el,), _ = _pvlib_sun([MADRID[0]], [MADRID[1]], [np.datetime64("2024-06-21T17:00:00")])
    m = ShadowMeasurement.validated(time="2024-06-21T17:00Z", elev_deg=float(el))
    result = locate_by_shadow([m], posterior=posterior, config=ShadowConfig(res_deg=res))
    expected = posterior.mass_per_cell.astype(np.float64) * (result.locus.mass_per_cell / area)
    expected /= expected.sum()
    assert np.abs(result.fused.mass_per_cell - expected).max() < 1e-6
    assert result.fused.model_key == "toy"
    best = result.candidates["fused"][0]
    assert abs(best.lat_deg - MADRID[0]) < 3 and abs(best.lon_deg - MADRID[1]) < 3
    near_madrid = (np.abs(lat - MADRID[0]) < 10) & (np.abs(lon - MADRID[1]) < 10)
    assert result.fused.mass_per_cell[near_madrid].sum() > 0.999 > posterior.mass_per_cell[near_madrid].sum() + 0.4
    assert 0.2 < result.posterior_mass_in_locus[0.9] < 0.8  # the locus passes through Madrid, not Tokyo


def test_a_posterior_on_another_grid_is_refused_naming_the_fix():
    m = ShadowMeasurement.validated(time="2024-06-21T17:00Z", elev_deg=30.0)
    locus = locus_surface([m], res_deg=2.0)
    other = Surface(np.full((90, 180), 1.0 / 16200, np.float32), -180.0, 90.0, 2.0, "global")
    assert fuse(locus, other).total_mass == pytest.approx(1.0, abs=1e-5)
    coarse = Surface(np.full((45, 90), 1.0 / 4050, np.float32), -180.0, 90.0, 4.0, "global")
    with pytest.raises(GtlocError, match="--res-deg 2.0"):
        fuse(locus, coarse)


@pytest.mark.parametrize("sigma_min, elev_sigma_deg", [(1.0, 1.0), (10.0, 1.0), (45.0, 2.0), (120.0, 0.25)])
def test_the_time_bins_are_the_normal_cut_into_pieces(sigma_min, elev_sigma_deg):
    """Probabilities summing to 1, a mixture with mean 0 and, by the law of total variance, variance sigma_t^2."""
    m = ShadowMeasurement.validated(time="2024-06-21T12:00", elev_deg=30.0, elev_sigma_deg=elev_sigma_deg,
                                    time_sigma_min=sigma_min)
    offsets, weights, sigmas = time_bins(m)
    assert weights.sum() == pytest.approx(1.0) and (weights > 0).all() and (np.diff(offsets) > 0).all()
    assert (weights * offsets).sum() == pytest.approx(0.0, abs=1e-9)
    assert (weights * (offsets**2 + sigmas**2)).sum() == pytest.approx(sigma_min**2, rel=1e-9)
    assert 1 < len(offsets) <= 48


def test_the_elevation_sigma_is_propagated_from_height_and_length():
    m = ShadowMeasurement.validated(time="2024-06-21T12:00Z", height_m=10.0, length_m=5.0, height_sigma_m=0.3,
                                    length_sigma_m=0.4)
    # d atan(h / L) = (L dh - h dL) / (h^2 + L^2); independent errors add in quadrature.
    expected = math.degrees(math.sqrt((5.0 * 0.3) ** 2 + (10.0 * 0.4) ** 2) / 125.0)
    assert m.sun_elevation_deg == pytest.approx(math.degrees(math.atan(2.0)))
    assert m.elevation_sigma_deg == pytest.approx(expected)
    exact = ShadowMeasurement.validated(time="2024-06-21T12:00Z", height_m=10.0, length_m=5.0)
    assert exact.elevation_sigma_deg == ELEVATION_SIGMA_FLOOR_DEG
    assert ShadowMeasurement.validated(time="2024-06-21T12:00Z", height_m=1.0, length_m=0.0).sun_elevation_deg == 90


def test_a_cancel_stops_between_time_bins_and_writes_nothing(tmp_path):
    m = ShadowMeasurement.validated(time="2024-06-21T12:00", elev_deg=30.0, time_sigma_min=30.0)
    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append((done, total))
        cancel.set()

    with pytest.raises(ShadowCancelled):
        shadow_to_files([m], tmp_path / "out", config=ShadowConfig(res_deg=2.0), progress=progress, cancel=cancel)
    assert seen == [(1, len(time_bins(m)[0]))] and len(time_bins(m)[0]) > 1 and not (tmp_path / "out").exists()


def test_the_outputs_carry_the_measurements_and_a_file_in_the_way_is_refused(tmp_path):
    m = ShadowMeasurement.validated(time="2024-06-21T12:00Z", elev_deg=30.0, bearing_deg=10.0)
    summary = shadow_to_files([m], tmp_path / "out", config=ShadowConfig(res_deg=2.0, top_k=3))
    with rasterio.open(summary["locus_tif"]) as src:
        assert src.crs.to_epsg() == 4326 and src.tags()["GTLOC_NORMALISATION"].startswith("mass = shadow likelihood")
        assert '"bearing_deg": 10.0' in src.tags()["GTLOC_SHADOW_MEASUREMENTS"]
    assert summary["fused"] is None and len(summary["locus"]["candidates"]) == 3
    assert summary["measurements"][0]["sun_azimuth_deg"] == 190.0
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(GtlocError, match="is a file"):
        shadow_to_files([m], tmp_path / "file", config=ShadowConfig(res_deg=2.0))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "shadow.gpkg").write_text("my notes")
    with pytest.raises(GtlocError, match="not a GeoPackage"):
        shadow_to_files([m], tmp_path / "other", config=ShadowConfig(res_deg=2.0))
    assert (tmp_path / "other" / "shadow.gpkg").read_text() == "my notes"


def test_the_shadow_geopackage_has_the_documented_columns(tmp_path):
    """docs/geopackage.md's shadow tables list exactly the columns the writer's field tables make."""
    import re
    import sqlite3
    from pathlib import Path

    from gtloc_engine.io.shadow_gpkg import CANDIDATE_FIELDS, MEASUREMENT_FIELDS, REGION_FIELDS

    m = ShadowMeasurement.validated(time="2024-06-21T12:00Z", elev_deg=30.0)
    gpkg = shadow_to_files([m], tmp_path, config=ShadowConfig(res_deg=5.0))["gpkg"]
    docs = (Path(__file__).resolve().parents[1] / "docs" / "geopackage.md").read_text(encoding="utf-8")
    section = docs.split("## The shadow GeoPackage", 1)[1]
    with sqlite3.connect(gpkg) as db:
        for table, fields in (("shadow_regions", REGION_FIELDS), ("shadow_candidates", CANDIDATE_FIELDS),
                              ("shadow_measurements", MEASUREMENT_FIELDS)):
            columns = {name: kind for _, name, kind, *_ in db.execute(f"PRAGMA table_info({table})")}
            assert {k: v for k, v in columns.items() if k not in ("fid", "geom")} == {
                name: kind.upper() for name, kind in fields.items()}
            part = section.split(f"#### `{table}`", 1)[1].split("\n#### ", 1)[0]
            rows = re.findall(r"^\| `(\w+)` \| (\w+) \|", part, flags=re.MULTILINE)
            assert rows == [(name, kind.upper()) for name, kind in fields.items()], table
    db.close()
