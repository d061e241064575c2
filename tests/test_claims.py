"""Claim verification: credible levels against independently built posteriors, verdict thresholds, untrained
heads, and on a trained model through real JPEGs with real EXIF (claim at the top place, at its antipode, none)."""

from __future__ import annotations

import datetime as dt
import math

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gtloc_engine.geo import EARTH_RADIUS_KM
from gtloc_engine.inference.claims import (
    CONSISTENT,
    DOUBTFUL,
    INCONSISTENT,
    NO_CLAIM,
    VerdictThresholds,
    grid_credible_level,
    verify_claims,
)
from gtloc_engine.inference.predictor import HOUR_BINS, MONTH_BINS, TimeEstimate, embed_photos
from gtloc_engine.io.exif import ExifClaims, write_jpeg_with_exif

BOTH_HEADS = {"location": True, "time": True}


# ------------------------------------------------------------------------------------------- thresholds, levels


@pytest.mark.parametrize(("level", "verdict"), [
    (0.0, CONSISTENT), (0.8999, CONSISTENT), (0.9, DOUBTFUL), (0.9899, DOUBTFUL), (0.99, INCONSISTENT),
    (1.0, INCONSISTENT),
])
def test_default_thresholds_split_levels_at_90_and_99_percent(level, verdict):
    assert VerdictThresholds().verdict(level) == verdict


@pytest.mark.parametrize(("consistent_below", "doubtful_below"), [(0.0, 0.5), (0.95, 0.9), (0.9, 1.5)])
def test_thresholds_out_of_order_are_refused(consistent_below, doubtful_below):
    with pytest.raises(ValueError, match="consistent_below"):
        VerdictThresholds(consistent_below, doubtful_below)


def test_grid_level_is_the_mass_ranked_above_the_cell():
    probs = np.random.default_rng(3).dirichlet(np.ones(60)).reshape(6, 10)
    # Independent truth: walk the cells from most to least probable; each cell's level is the mass before it.
    order = np.argsort(-probs, axis=None)
    mass_before = np.concatenate(([0.0], np.cumsum(probs.ravel()[order])[:-1]))
    for rank in (0, 1, 17, 59):
        cell = np.unravel_index(order[rank], probs.shape)
        assert grid_credible_level(probs, cell) == pytest.approx(mass_before[rank])


def test_grid_level_of_a_flat_posterior_is_zero_everywhere():
    flat = np.full((4, 4), 1 / 16)
    assert grid_credible_level(flat, (0, 0)) == grid_credible_level(flat, (3, 2)) == 0.0


# ------------------------------------------------------------------------------------------- verify_claims


def _peaked_time_grid(month_pos: float, hour_local: float, width: float = 0.05) -> tuple[np.ndarray, TimeEstimate]:
    """A month x hour posterior peaked (Gaussian on the torus) at the given time, and its estimate."""
    theta = (np.arange(MONTH_BINS) + 0.5) / MONTH_BINS
    phi = (np.arange(HOUR_BINS) + 0.5) / HOUR_BINS
    d_theta = np.abs(theta[:, None] - month_pos / 12)
    d_phi = np.abs(phi[None, :] - hour_local / 24)
    d2 = np.minimum(d_theta, 1 - d_theta) ** 2 + np.minimum(d_phi, 1 - d_phi) ** 2
    grid = np.exp(-d2 / (2 * width**2))
    grid /= grid.sum()
    return grid, TimeEstimate(month_pos, hour_local, 0.5, 1.0, grid)


def test_time_claim_at_the_mode_is_consistent_and_opposite_is_inconsistent():
    grid, estimate = _peaked_time_grid(5.5, 12.25)  # mid-June, 12:15
    at_mode = ExifClaims(local_datetime=dt.datetime(2020, 6, 16, 12, 15))
    report = verify_claims(at_mode, place_level=None, pred_latlon_deg=None, time_grid=grid, time_estimate=estimate,
                           heads_trained=BOTH_HEADS)
    assert report.time_level == 0.0 and report.time_verdict == CONSISTENT == report.verdict
    assert report.claim_month_err < 0.05 and report.claim_hour_err < 0.01
    # Six months and twelve hours away is the farthest point of the torus.
    opposite = ExifClaims(local_datetime=dt.datetime(2020, 12, 16, 0, 15))
    report = verify_claims(opposite, place_level=None, pred_latlon_deg=None, time_grid=grid, time_estimate=estimate,
                           heads_trained=BOTH_HEADS)
    assert report.time_level > 0.99 and report.verdict == INCONSISTENT
    assert report.claim_month_err == pytest.approx(6.0, abs=0.05) and report.claim_hour_err == pytest.approx(12.0)


def test_place_check_reports_level_distance_and_region():
    claims = ExifClaims(lat_deg=0.0, lon_deg=90.0)
    report = verify_claims(claims, place_level=0.95, pred_latlon_deg=(0.0, 0.0), time_grid=None,
                           time_estimate=None, heads_trained=BOTH_HEADS)
    assert report.place_dist_km == pytest.approx(math.pi / 2 * EARTH_RADIUS_KM)  # a quarter of the equator
    assert report.place_in_90 is False and report.place_verdict == DOUBTFUL == report.verdict
    assert report.time_verdict is None and report.time_level is None  # no time claimed


def test_overall_verdict_is_the_worst_part():
    grid, estimate = _peaked_time_grid(2.0, 8.0)
    claims = ExifClaims(lat_deg=10.0, lon_deg=10.0, local_datetime=dt.datetime(2020, 9, 1, 20, 0))
    report = verify_claims(claims, place_level=0.1, pred_latlon_deg=(10.0, 10.0), time_grid=grid,
                           time_estimate=estimate, heads_trained=BOTH_HEADS)
    assert (report.place_verdict, report.time_verdict, report.verdict) == (CONSISTENT, INCONSISTENT, INCONSISTENT)


def test_no_claims_give_no_claim():
    grid, estimate = _peaked_time_grid(2.0, 8.0)
    report = verify_claims(ExifClaims(), place_level=None, pred_latlon_deg=(1.0, 2.0), time_grid=grid,
                           time_estimate=estimate, heads_trained=BOTH_HEADS)
    assert report.verdict == NO_CLAIM and report.place_verdict is None and report.time_verdict is None


def test_an_untrained_head_gives_no_verdict_and_a_note():
    claims = ExifClaims(lat_deg=10.0, lon_deg=10.0, local_datetime=dt.datetime(2020, 9, 1, 20, 0))
    grid, estimate = _peaked_time_grid(2.0, 8.0)
    report = verify_claims(claims, place_level=0.05, pred_latlon_deg=(10.0, 10.0), time_grid=grid,
                           time_estimate=estimate, heads_trained={"location": True, "time": False})
    assert report.time_verdict is None and report.time_level is None
    assert report.verdict == CONSISTENT  # the place alone
    assert any("time head" in note for note in report.notes)
    only_time = ExifClaims(local_datetime=dt.datetime(2020, 9, 1, 20, 0))
    report = verify_claims(only_time, place_level=None, pred_latlon_deg=None, time_grid=None, time_estimate=None,
                           heads_trained={"location": True, "time": False})
    assert report.verdict == NO_CLAIM and any("never trained" in note for note in report.notes)


# ------------------------------------------------------------------------------------------- on a trained model


def test_time_posterior_given_place_fuses_place_and_time_embeddings(trained_checkpoint, cache_dir):
    import torch

    from gtloc_engine.inference.predictor import Predictor
    from gtloc_engine.model.checkpoint import load_checkpoint

    model = load_checkpoint(trained_checkpoint)
    predictor = Predictor(model, cache_dir=cache_dir)
    noise = torch.randn(2, model.cfg.embed_dim, generator=torch.Generator().manual_seed(0))
    image = torch.nn.functional.normalize(noise, dim=-1).numpy()
    places = np.array([[48.8, 2.3], [-33.9, 151.2]])
    grids = predictor.time_posterior_given_place(image, places)
    assert grids.shape == (2, MONTH_BINS, HOUR_BINS) and np.allclose(grids.sum(axis=(1, 2)), 1.0)
    # The ig2t head: the log-odds of two cells is its scale x the difference of the cosines of the fused
    # image + place query with the two cells' time embeddings.
    with torch.no_grad():
        place = model.embed_locations(torch.tensor(places[:1], dtype=torch.float32))[0].numpy()
        cells = [(6, 24), (30, 0)]  # two month x hour bins, embedded at their centres as the grid is
        centres = [[(m + 0.5) / MONTH_BINS, (h + 0.5) / HOUR_BINS] for m, h in cells]
        times = model.embed_times(torch.tensor(centres, dtype=torch.float32)).numpy()
        scale = float(model.logit_scale("ig2t"))
    query = (place + image[0]) / np.linalg.norm(place + image[0])
    expected = scale * (times[0] @ query - times[1] @ query)
    assert np.log(grids[0][cells[0]] / grids[0][cells[1]]) == pytest.approx(expected, abs=1e-3)
    assert not np.allclose(grids[0], grids[1])  # another place, another time posterior


@pytest.fixture(scope="module")
def pipeline(trained_checkpoint, cache_dir):
    from gtloc_engine.inference.pipeline import PhotoPipeline, PipelineConfig

    # 1-degree surfaces keep the toy model's diffuse credible regions cheap; levels do not depend on it much.
    return PhotoPipeline(trained_checkpoint, top_k=3, cache_dir=cache_dir, config=PipelineConfig(global_res_deg=1.0))


@pytest.fixture(scope="module")
def claimed_photos(pipeline, toy_manifest, tmp_path_factory):
    """The toy photo with the most confident place prediction, as JPEGs: without EXIF, claiming its most likely
    place and modal time, and claiming the antipode of that place."""
    from gtloc_engine.inference.surfaces import find_candidates

    folder = tmp_path_factory.mktemp("claims")
    sources = sorted((toy_manifest.parent / "img").glob("*.png"))[:24]
    images = [Image.open(src).convert("RGB") for src in sources]
    plain = [write_jpeg_with_exif(image, folder / "plain" / f"p{i}.jpg") for i, image in enumerate(images)]
    emb, _, failures = embed_photos(pipeline.model, plain)
    assert not failures
    # Confidence = the posterior mass near the most likely place (the pipeline's top1_prob).
    tops = [find_candidates(pipeline.surface_maker.global_surface(e), 1)[0] for e in emb]
    best = int(np.argmax([top.probability for top in tops]))
    top_latlon = (tops[best].lat_deg, tops[best].lon_deg)
    mode = pipeline.predictor.estimate_time(
        pipeline.predictor.time_posterior_given_place(emb[best:best + 1], [top_latlon])[0])
    # The modal time as a calendar date and clock in a non-leap year (month position 0 = Jan 1 00:00).
    modal_day = dt.datetime(2021, 1, 1) + dt.timedelta(days=int(mode.month_pos * 365 / 12))
    modal_time = modal_day + dt.timedelta(minutes=round(mode.hour_local * 60))
    image = images[best]  # encoded from the same pixels as the plain JPEG: EXIF is the only difference
    antipode = (-top_latlon[0], (top_latlon[1] + 360) % 360 - 180)
    return {
        "plain": plain[best],
        "top": write_jpeg_with_exif(image, folder / "top" / "top.jpg", lat_deg=top_latlon[0], lon_deg=top_latlon[1],
                                    local_datetime=modal_time, utc_offset_min=60),
        "antipode": write_jpeg_with_exif(image, folder / "antipode" / "far.jpg", lat_deg=antipode[0],
                                         lon_deg=antipode[1]),
        "top_latlon": top_latlon, "antipode_latlon": antipode, "modal_time": modal_time,
    }


def _one_row(pipeline_out) -> dict:
    photos = gpd.read_file(pipeline_out, layer="photos")
    assert len(photos) == 1
    return photos.iloc[0]


def test_claim_at_the_top_place_and_modal_time_is_consistent(pipeline, claimed_photos, tmp_path):
    out = tmp_path / "top.gpkg"
    pipeline.run([claimed_photos["top"]], out)
    row = _one_row(out)
    assert row.point_source == "claim" and row.time_given == "claimed place"
    assert (row.geometry.y, row.geometry.x) == pytest.approx(claimed_photos["top_latlon"], abs=1e-5)
    assert row.place_dist_km < 0.01 and row.place_level < 0.9 and row.place_in_90
    assert row.time_level < 0.9 and row.claim_hour_err < 0.5
    assert (row.place_verdict, row.time_verdict, row.verdict) == (CONSISTENT, CONSISTENT, CONSISTENT)
    assert row.claimed_utc_offset_min == 60
    local = claimed_photos["modal_time"].replace(microsecond=0)
    assert row.map_time_source == "claim" and row.map_time_local == local.isoformat()
    assert row.map_time == pd.Timestamp(local - dt.timedelta(minutes=60), tz="UTC")  # map_time is UTC (offset +60)


def test_claim_at_the_antipode_of_a_confident_prediction_is_inconsistent(pipeline, claimed_photos, tmp_path):
    out = tmp_path / "far.gpkg"
    pipeline.run([claimed_photos["antipode"]], out)
    row = _one_row(out)
    assert row.place_level >= 0.99 and not row.place_in_90
    assert row.place_dist_km == pytest.approx(math.pi * EARTH_RADIUS_KM, rel=1e-3)  # half the globe
    assert row.place_verdict == INCONSISTENT == row.verdict
    assert pd.isna(row.time_verdict)  # no time claimed
    assert (row.geometry.y, row.geometry.x) == pytest.approx(claimed_photos["antipode_latlon"], abs=1e-5)


def test_photo_without_exif_is_no_claim_at_the_predicted_place(pipeline, claimed_photos, tmp_path):
    out = tmp_path / "plain.gpkg"
    pipeline.run([claimed_photos["plain"]], out)
    row = _one_row(out)
    assert row.verdict == NO_CLAIM and row.point_source == "prediction" and row.time_given == "image only"
    assert (row.geometry.y, row.geometry.x) == pytest.approx(claimed_photos["top_latlon"], abs=1e-5)
    assert (row.pred_lat_deg, row.pred_lon_deg) == pytest.approx(claimed_photos["top_latlon"], abs=1e-5)
    assert row.map_time_source == "prediction" and row.map_time_local.startswith("2001-") and pd.isna(row.map_time)
