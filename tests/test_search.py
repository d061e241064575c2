"""Geo-temporal search over a real results GeoPackage made by the real pipeline (JPEGs with real EXIF, the tiny
trained toy model): every query kind against brute-force numpy, sensible rankings on a collection whose true
places and times are known, filters (radius, polygon files read with geopandas, claimed-time range, wrapping time
windows), model mismatch refused, the FAISS index's recall against exact search and its sidecar, the search_results
layer checked by GDAL's GeoPackage validator, and `gtloc search` as a real subprocess writing JSON and a GeoPackage
layer."""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
import torch
from conftest import TOY_PLACES_LATLON
from gpkg_validator import validate_gpkg
from PIL import Image
from shapely.geometry import Polygon

from gtloc_engine.errors import GtlocError
from gtloc_engine.geo import haversine_km
from gtloc_engine.inference.pipeline import PhotoPipeline, PipelineConfig
from gtloc_engine.inference.search import (AnnIndex, CollectionSearch, SearchConfig, SearchQuery, TimeWindow,
                                           exact_top_k, load_collection, write_results_gpkg)
from gtloc_engine.io.exif import write_jpeg_with_exif
from gtloc_engine.io.photos import file_sha256
from gtloc_engine.model import GTLoc, preset
from gtloc_engine.model.checkpoint import save_checkpoint
from gtloc_engine.timecode import hour_error, month_error

PLACES = (0, 1, 2, 3)  # toy places in the collection (Paris, Sydney, New York, Tokyo)
PER_PLACE = 5  # photos per place; the last of each carries no EXIF (its point is the prediction)
FAST = PipelineConfig(global_res_deg=1.0)


@pytest.fixture(scope="module")
def collection(toy_manifest, trained_checkpoint, cache_dir, tmp_path_factory):
    """(gpkg, truth): a results GeoPackage of 20 toy photos and, per file name, its true place index and time."""
    folder = tmp_path_factory.mktemp("search") / "photos"
    with open(toy_manifest) as f:
        rows = list(csv.DictReader(f))
    truth, counts = {}, dict.fromkeys(PLACES, 0)
    for row in rows:
        lat_deg, lon_deg = float(row["lat_deg"]), float(row["lon_deg"])
        place = int(np.argmin(haversine_km(np.array([lat_deg, lon_deg]), TOY_PLACES_LATLON)))
        if place not in counts or counts[place] == PER_PLACE:
            continue
        counts[place] += 1
        when = dt.datetime.fromisoformat(row["timestamp"])
        image = Image.open(toy_manifest.parent / row["path"]).convert("RGB")
        name = f"p{place}_{counts[place]}.jpg"
        claims = counts[place] < PER_PLACE
        write_jpeg_with_exif(image, folder / name, lat_deg=lat_deg if claims else None,
                             lon_deg=lon_deg if claims else None, local_datetime=when if claims else None)
        truth[name] = {"place": place, "lat_deg": lat_deg, "lon_deg": lon_deg, "time": when, "claims": claims}
    gpkg = folder.parent / "results.gpkg"
    PhotoPipeline(trained_checkpoint, top_k=1, cache_dir=cache_dir, config=FAST).run([folder], gpkg)
    return gpkg, truth


@pytest.fixture(scope="module")
def searcher(collection, trained_checkpoint):
    return CollectionSearch(collection[0], trained_checkpoint)


def _brute_force(gpkg: Path, model_sha256: str, queries: np.ndarray) -> list[tuple[str, float]]:
    """(sha256, max cosine over the query vectors) for every stored embedding, best first, read with sqlite3."""
    with sqlite3.connect(gpkg) as db:
        rows = db.execute("SELECT sha256, embedding FROM embeddings WHERE model_sha256 = ?", (model_sha256,)).fetchall()
    db.close()
    scored = [(sha, float((np.frombuffer(blob, "<f4") @ queries.T).max())) for sha, blob in rows]
    return sorted(scored, key=lambda item: -item[1])


def _names(output: dict) -> list[str]:
    return [Path(r["path"]).name for r in output["results"]]


# ------------------------------------------------------------------------------------------- exactness


def test_loads_every_photo_of_the_model_from_the_geopackage(collection, searcher):
    gpkg, truth = collection
    col = searcher.collection
    photos = gpd.read_file(gpkg, layer="photos")
    assert len(col) == len(truth) == len(photos)
    assert sorted(Path(p[0]).name for p in col.paths) == sorted(truth)
    assert col.emb.dtype == np.float32 and np.allclose(np.linalg.norm(col.emb, axis=1), 1.0, atol=1e-5)
    assert col.sha256 == sorted(col.sha256)
    for i, paths in enumerate(col.paths):
        assert file_sha256(paths[0]) == col.sha256[i]


@pytest.mark.parametrize("month, hour", [("11-2", "22-3"), ("6", None), (None, "14")])
def test_place_and_time_query_equals_brute_force(collection, searcher, trained_checkpoint, month, hour):
    gpkg, truth = collection
    model = searcher.model
    # The window's grid, written out independently: cell centres every 0.5 month and every hour.
    months = {"11-2": np.arange(10.25, 14.0, 0.5) % 12, "6": np.array([5.25, 5.75]), None: np.arange(0.25, 12, 0.5)}
    hours = {"22-3": np.arange(22.5, 27.0, 1.0) % 24, "14": np.array([14.5]), None: np.arange(0.5, 24, 1.0)}
    mm, hh = np.meshgrid(months[month] / 12, hours[hour] / 24, indexing="ij")
    torus = torch.tensor(np.stack((mm.ravel(), hh.ravel()), -1), dtype=torch.float32)
    with torch.inference_mode():
        place = model.embed_locations(torch.tensor([[40.7, -74.0]]))
        queries = torch.nn.functional.normalize(place + model.embed_times(torus), dim=-1).numpy()
    expected = _brute_force(gpkg, searcher.model_sha256, queries)
    output = searcher.search(SearchQuery(near_latlon_deg=(40.7, -74.0), window=TimeWindow.parse(month, hour),
                                         top_k=len(truth)))
    assert output["method"] == "exact" and output["query"]["kind"] == "place+time"
    assert [r["sha256"] for r in output["results"]] == [sha for sha, _ in expected]
    assert np.allclose([r["score"] for r in output["results"]], [s for _, s in expected], atol=1e-5)


def test_mean_pooling_scores_the_mean_similarity_over_the_window(collection, trained_checkpoint):
    gpkg, _ = collection
    search = CollectionSearch(gpkg, trained_checkpoint, config=SearchConfig(pooling="mean"))
    window = TimeWindow.parse("3-5", None)
    torus = window.torus_grid(0.5, 1.0)
    with torch.inference_mode():
        time_emb = search.model.embed_times(torch.tensor(torus, dtype=torch.float32)).numpy()
    output = search.search(SearchQuery(window=window, top_k=5))
    col = search.collection
    for r in output["results"]:
        sims = col.emb[col.row_of(r["sha256"])] @ time_emb.T
        assert r["score"] == pytest.approx(float(sims.mean()), abs=1e-5)


def test_exact_top_k_matches_a_full_sort_on_random_vectors():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(3000, 32)).astype(np.float32)
    queries = rng.normal(size=(4, 32)).astype(np.float32)
    rows = np.flatnonzero(rng.random(3000) < 0.3)
    idx, scores = exact_top_k(emb, queries, 25, rows)
    full = (emb @ queries.T).max(axis=1)
    expected = rows[np.argsort(-full[rows], kind="stable")[:25]]
    assert idx.tolist() == expected.tolist()
    assert np.allclose(scores, full[expected])


# ------------------------------------------------------------------------------------------- query kinds


def test_place_query_ranks_photos_of_that_place_first(collection, searcher):
    _, truth = collection
    precision = []
    for place in PLACES:
        output = searcher.search(SearchQuery(near_latlon_deg=tuple(TOY_PLACES_LATLON[place]), top_k=len(truth)))
        assert output["query"]["kind"] == "place" and len(output["results"]) == len(truth)
        found = np.array([truth[name]["place"] for name in _names(output)])
        ranks = np.flatnonzero(found == place)
        assert ranks.mean() < np.flatnonzero(found != place).mean()
        precision.append(np.mean(found[:PER_PLACE] == place))
    # chance is 1 / len(PLACES) = 0.25; the tiny toy model is weak, but far better than that
    assert min(precision) >= 0.4 and np.mean(precision) >= 0.6


def test_photo_query_finds_photos_of_the_same_place_and_not_itself(collection, searcher):
    gpkg, truth = collection
    hits = 0
    for name, info in truth.items():
        output = searcher.search(SearchQuery(like_photo=str(gpkg.parent / "photos" / name), top_k=3))
        names = _names(output)
        assert name not in names and len(names) == 3
        hits += truth[names[0]]["place"] == info["place"]
    assert hits >= 0.8 * len(truth)


def test_photo_query_with_a_photo_outside_the_collection_embeds_it(collection, searcher, tmp_path):
    gpkg, truth = collection
    name = next(iter(truth))
    image = Image.open(gpkg.parent / "photos" / name)
    outside = tmp_path / "new.png"
    image.save(outside)  # other bytes (PNG), the same pixels
    inside = searcher.search(SearchQuery(like_photo=str(gpkg.parent / "photos" / name), top_k=len(truth)))
    output = searcher.search(SearchQuery(like_photo=str(outside), top_k=1))
    assert _names(output) == [name]  # not excluded: its bytes differ from the query's
    assert inside["results"][0]["score"] < output["results"][0]["score"] <= 1.0 + 1e-5


@pytest.mark.parametrize("name", ["p1_1.jpg", "p1_5.jpg"])  # with an EXIF place; without (predicted point)
def test_photo_and_window_query_is_the_photos_place_at_that_time(collection, searcher, name):
    """--like + --month/--hour: place + time (gt2i) at the query photo's point in the collection, itself left out."""
    gpkg, truth = collection
    col = searcher.collection
    photo = gpkg.parent / "photos" / name
    row = col.row_of(file_sha256(photo))
    place = col.point_latlon_deg("point")[row]
    if truth[name]["claims"]:
        assert np.allclose(place, [truth[name]["lat_deg"], truth[name]["lon_deg"]], atol=1e-5)
    window = TimeWindow.parse("6-8", "12-14")
    output = searcher.search(SearchQuery(like_photo=str(photo), window=window, top_k=len(truth)))
    assert output["query"]["kind"] == "photo+time"
    assert name not in _names(output) and len(output["results"]) == len(truth) - 1
    assert any("same place as the query photo" in note for note in output["notes"])
    same = searcher.search(SearchQuery(near_latlon_deg=(float(place[0]), float(place[1])), window=window,
                                       top_k=len(truth)))
    expected = [r["sha256"] for r in same["results"] if r["sha256"] != col.sha256[row]]
    assert [r["sha256"] for r in output["results"]] == expected
    assert [r["dist_km"] for r in output["results"]] == [r["dist_km"] for r in same["results"]
                                                          if r["sha256"] != col.sha256[row]]


def test_photo_and_window_query_outside_the_collection_uses_its_exif_place(collection, searcher, tmp_path):
    gpkg, truth = collection
    image = Image.open(gpkg.parent / "photos" / "p2_1.jpg").convert("RGB")
    outside = tmp_path / "elsewhere.jpg"
    write_jpeg_with_exif(image, outside, lat_deg=35.7, lon_deg=139.7, local_datetime=dt.datetime(2021, 1, 1, 12))
    output = searcher.search(SearchQuery(like_photo=str(outside), window=TimeWindow.parse("1", None), top_k=5))
    assert any("EXIF place (35.7000, 139.7000)" in note for note in output["notes"])
    same = searcher.search(SearchQuery(near_latlon_deg=(35.7, 139.7), window=TimeWindow.parse("1", None), top_k=5))
    assert _names(output) == _names(same)  # Tokyo in January, whatever the query's pixels show
    assert output["results"][0]["dist_km"] == same["results"][0]["dist_km"]


def test_time_query_ranks_photos_taken_near_that_time_higher(collection, searcher):
    _, truth = collection
    rank_error = []
    for month, hour in ((1, 6), (4, 12), (7, 18), (10, 0)):
        output = searcher.search(SearchQuery(window=TimeWindow.parse(str(month), str(hour)), top_k=len(truth)))
        assert output["query"]["kind"] == "time"
        times = [truth[name]["time"] for name in _names(output)]
        err = [month_error(month - 0.5, t.month - 1 + t.day / 31) / 6 + hour_error(hour + 0.5, t.hour + t.minute / 60)
               / 12 for t in times]
        top, bottom = np.mean(err[:5]), np.mean(err[-5:])
        rank_error.append(top < bottom)
    assert sum(rank_error) >= 3


def test_text_query_goes_through_the_image_adapter_and_says_the_tower_is_untrained(collection, searcher):
    gpkg, truth = collection
    model = searcher.model
    with torch.inference_mode():
        features = model.backbone.encode_text(model.backbone.tokenize(["snow at dusk"]))
        query = model.embed_features(features.float()).numpy()
    output = searcher.search(SearchQuery(text="snow at dusk", top_k=len(truth)))
    assert [r["sha256"] for r in output["results"]] == [sha for sha, _ in
                                                        _brute_force(gpkg, searcher.model_sha256, query)]
    assert any("not a frozen pretrained CLIP" in note for note in output["notes"])


def test_text_query_without_a_text_tower_is_refused_in_one_line(collection, trained_checkpoint):
    search = CollectionSearch(collection[0], trained_checkpoint)
    del search.model.backbone.clip.transformer  # a CLIP whose text tower is gone
    with pytest.raises(GtlocError, match="no usable text tower") as info:
        search.search(SearchQuery(text="snow at dusk"))
    assert "\n" not in str(info.value)


def test_place_query_with_an_untrained_location_head_is_refused(collection, tmp_path):
    model = GTLoc(preset("tiny"), seed=0)
    model.heads_trained = {"location": False, "time": True}
    ckpt = save_checkpoint(tmp_path / "time_only.safetensors", model)
    # same embeddings under this model's sha256: a copy of the GeoPackage whose rows are relabelled
    gpkg = tmp_path / "copy.gpkg"
    shutil.copyfile(collection[0], gpkg)
    with sqlite3.connect(gpkg) as db:
        db.execute("UPDATE embeddings SET model_sha256 = ?", (file_sha256(ckpt),))
    db.close()
    with pytest.raises(GtlocError, match="no trained location head"):
        CollectionSearch(gpkg, ckpt).search(SearchQuery(near_latlon_deg=(0.0, 0.0)))


@pytest.mark.parametrize("query", [SearchQuery(), SearchQuery(near_latlon_deg=(1.0, 2.0), text="x"),
                                   SearchQuery(text="x", radius_km=5.0), SearchQuery(near_latlon_deg=(95.0, 0.0)),
                                   SearchQuery(near_latlon_deg=(1.0, 2.0), top_k=0)])
def test_bad_queries_are_refused_in_one_line(query):
    with pytest.raises(GtlocError) as info:
        query.validate()
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------- filters


def test_time_windows_wrap_around_the_year_and_the_day():
    window = TimeWindow.parse("11-2", "22-3")
    # (month position, local hour): Dec 15 23:30 and Jan 1 02:59 inside; Mar 1, Oct 31, 03:00, 21:59 outside
    cases = {(11.5, 23.5): True, (0.0, 2.98): True, (1.99, 22.0): True, (2.0, 23.0): False, (9.99, 23.0): False,
             (11.0, 3.0): False, (11.0, 21.98): False}
    got = window.contains(np.array([m for m, _ in cases]), np.array([h for _, h in cases]))
    assert got.tolist() == list(cases.values())
    grid = window.torus_grid(0.5, 1.0)
    assert len(grid) == 8 * 5  # Nov..Feb in half months x 22..03 in hours
    assert window.contains(grid[:, 0] * 12, grid[:, 1] * 24).all()
    assert TimeWindow.parse("12", "23").contains(np.array([11.5]), np.array([23.5])).all()
    assert len(TimeWindow.parse(None, None).torus_grid(0.5, 1.0)) == 24 * 24


@pytest.mark.parametrize("month, hour", [("13", None), ("0", None), (None, "24"), ("a-b", None), (None, "1-2-3")])
def test_bad_windows_are_refused_in_one_line(month, hour):
    with pytest.raises(GtlocError, match="must be N or A-B"):
        TimeWindow.parse(month, hour)


def test_radius_filter_keeps_photos_whose_point_is_near(collection, searcher):
    gpkg, truth = collection
    photos = gpd.read_file(gpkg, layer="photos")
    near = TOY_PLACES_LATLON[0]
    dist_km = haversine_km(np.array(near), np.stack((photos.geometry.y, photos.geometry.x), -1))
    expected = set(photos.sha256[dist_km <= 500.0])
    output = searcher.search(SearchQuery(near_latlon_deg=tuple(near), radius_km=500.0, top_k=len(truth)))
    assert {r["sha256"] for r in output["results"]} == expected and len(expected) >= PER_PLACE - 1
    assert all(r["dist_km"] <= 500.0 for r in output["results"])


@pytest.mark.parametrize("suffix, crs", [(".geojson", "EPSG:4326"), (".gpkg", "EPSG:3857")])
def test_polygon_filter_from_a_real_file(collection, searcher, tmp_path, suffix, crs):
    gpkg, truth = collection
    # Two boxes, around Sydney and Tokyo; the GeoPackage one in Web Mercator, so it must be reprojected.
    boxes = [Polygon([(150, -35), (153, -35), (153, -32), (150, -32)]),
             Polygon([(138, 34), (141, 34), (141, 37), (138, 37)])]
    polygon_file = tmp_path / f"area{suffix}"
    layer = None
    if suffix == ".gpkg":  # a first layer that must not be used, and the chosen one
        gpd.GeoDataFrame(geometry=[Polygon([(0, 0), (1, 0), (1, 1)])], crs=crs).to_file(polygon_file, layer="other")
        layer = "areas"
    gpd.GeoDataFrame({"name": ["sydney", "tokyo"]}, geometry=boxes, crs="EPSG:4326").to_crs(crs).to_file(
        polygon_file, layer=layer)
    photos = gpd.read_file(gpkg, layer="photos")
    expected = set(photos.sha256[shapely.intersects(shapely.union_all(boxes), photos.geometry.values)])
    output = searcher.search(SearchQuery(near_latlon_deg=(0.0, 0.0), within=str(polygon_file), within_layer=layer,
                                         top_k=len(truth)))
    assert {r["sha256"] for r in output["results"]} == expected
    assert len(expected) >= 2 * (PER_PLACE - 1)


def test_polygon_file_without_polygons_is_refused(collection, searcher, tmp_path):
    points = tmp_path / "points.geojson"
    gpd.GeoDataFrame(geometry=gpd.points_from_xy([1.0], [2.0]), crs="EPSG:4326").to_file(points)
    with pytest.raises(GtlocError, match="has no polygons"):
        searcher.search(SearchQuery(near_latlon_deg=(0.0, 0.0), within=str(points)))
    with pytest.raises(GtlocError, match="cannot be read"):
        searcher.search(SearchQuery(near_latlon_deg=(0.0, 0.0), within=str(tmp_path / "missing.geojson")))


def test_claimed_time_range_filter(collection, searcher):
    _, truth = collection
    after, before = dt.datetime(2021, 3, 1), dt.datetime(2021, 9, 1)
    expected = {name for name, info in truth.items() if info["claims"] and after <= info["time"] < before}
    output = searcher.search(SearchQuery(near_latlon_deg=(0.0, 0.0), claimed_after=after, claimed_before=before,
                                         top_k=len(truth)))
    assert set(_names(output)) == expected and 0 < len(expected) < len(truth)


# ------------------------------------------------------------------------------------------- models, FAISS


def test_another_checkpoint_is_refused_in_one_line(collection, tmp_path):
    other = save_checkpoint(tmp_path / "other.safetensors", GTLoc(preset("tiny"), seed=1))
    with pytest.raises(GtlocError, match="holds no embeddings from this checkpoint") as info:
        load_collection(collection[0], file_sha256(other))
    assert "\n" not in str(info.value)
    with pytest.raises(GtlocError, match="holds no embeddings from this checkpoint"):
        CollectionSearch(collection[0], other)


def _clustered(n: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    x = centres[rng.integers(clusters, size=n)] + 0.7 * rng.normal(size=(n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), centres


def test_faiss_recall_at_10_against_exact_on_50k_clustered_vectors():
    emb, centres = _clustered(50_000, 128, 200, seed=0)
    index = AnnIndex.build(emb, SearchConfig())
    assert index.key["calibrated_recall_at_10"] >= 0.97
    # Fresh queries, not drawn from the rows: near cluster centres, and between two clusters.
    rng = np.random.default_rng(7)
    a, b = centres[rng.integers(200, size=100)], centres[rng.integers(200, size=100)]
    queries = np.concatenate([a + rng.normal(size=a.shape), a + b]).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = np.argsort(-(queries @ emb.T), axis=1)[:, :10]
    recall = np.mean([len(set(t) & set(index.search(q, 10)[0].tolist())) / 10 for t, q in zip(truth, queries)])
    assert recall >= 0.95
    rows = np.flatnonzero(np.random.default_rng(3).random(len(emb)) < 0.5)  # a filter through the FAISS selector
    found, _ = index.search(queries[0], 10, rows)
    assert set(found.tolist()) <= set(rows.tolist()) and len(found) == 10


def test_faiss_sidecar_is_built_reused_and_rebuilt_when_the_collection_changes(collection, trained_checkpoint,
                                                                               cache_dir, tmp_path):
    gpkg, truth = collection
    copy = tmp_path / "results.gpkg"
    shutil.copyfile(gpkg, copy)
    config = SearchConfig(exact_max_rows=0)  # force the approximate path on a small collection
    query = SearchQuery(near_latlon_deg=(35.7, 139.7), top_k=len(truth) + 5)
    first = CollectionSearch(copy, trained_checkpoint, config=config).search(query)
    exact = CollectionSearch(copy, trained_checkpoint).search(query)
    assert first["method"] == "faiss" and exact["method"] == "exact"
    assert [r["sha256"] for r in first["results"]] == [r["sha256"] for r in exact["results"]]
    sidecar = copy.with_name(copy.name + ".faiss")
    header = json.loads(sidecar.read_bytes().split(b"\n")[1])
    assert header["n_rows"] == len(truth) and header["model_sha256"] == file_sha256(trained_checkpoint)
    stamp = sidecar.stat().st_mtime_ns
    # a window's 24 x 24 query vectors would scan the one list 576 times: one exact matrix product is cheaper
    window = CollectionSearch(copy, trained_checkpoint, config=config).search(SearchQuery(window=TimeWindow()))
    assert window["method"] == "exact"
    CollectionSearch(copy, trained_checkpoint, config=config).search(query)
    assert sidecar.stat().st_mtime_ns == stamp  # same collection: loaded, not rebuilt
    extra = tmp_path / "more"
    extra.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(extra / "red.png")
    twin = next(iter(truth))
    shutil.copyfile(gpkg.parent / "photos" / twin, extra / "twin.jpg")  # same bytes, another name
    PhotoPipeline(trained_checkpoint, top_k=1, cache_dir=cache_dir, config=FAST).run([extra], copy)
    again = CollectionSearch(copy, trained_checkpoint, config=config).search(query)
    assert len(again["results"]) == len(truth) + 1  # one result per distinct photo bytes
    assert json.loads(sidecar.read_bytes().split(b"\n")[1])["n_rows"] == len(truth) + 1
    twins = [r for r in again["results"] if Path(r["path"]).name == twin or Path(r["paths"][-1]).name == twin]
    assert len(twins) == 1 and sorted(Path(p).name for p in twins[0]["paths"]) == sorted([twin, "twin.jpg"])


def test_results_layer_is_never_written_over_a_file_that_is_not_a_geopackage(collection, searcher, tmp_path):
    output = searcher.search(SearchQuery(near_latlon_deg=(0.0, 0.0), top_k=3))
    notes = tmp_path / "notes.gpkg"
    notes.write_text("my notes")
    with pytest.raises(GtlocError, match="is not a GeoPackage"):
        write_results_gpkg(notes, output)
    assert notes.read_text() == "my notes"
    fresh = write_results_gpkg(tmp_path / "hits.gpkg", output)
    assert gpd.read_file(fresh, layer="search_results")["sha256"].tolist() == [r["sha256"] for r in output["results"]]


def test_the_validator_reports_what_is_wrong(tmp_path):
    """The checks below can fail: a DATETIME column holding a time without its UTC mark is reported, and so are the
    R-tree triggers of GeoPackage 1.4 (the engine's GDAL's default), which the system's GDAL 3.6 does not know."""
    bad = tmp_path / "bad.gpkg"
    pyogrio.write_dataframe(gpd.GeoDataFrame({"n": [1]}, geometry=[shapely.Point(1, 2)], crs="EPSG:4326"), bad,
                            layer="points")
    with sqlite3.connect(bad) as db:
        db.execute("CREATE TABLE times (fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, t DATETIME)")
        db.execute("INSERT INTO times (t) VALUES ('2021-07-14T15:30:00')")
        db.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier) VALUES ('times', 'attributes', "
                   "'times')")
    db.close()
    report = validate_gpkg(bad)
    assert any("not a valid DATETIME" in line for line in report), report
    if pyogrio.__gdal_version__ >= (3, 7, 0):
        assert any("rtree_points_geom_update1 trigger missing" in line for line in report), report


@pytest.mark.parametrize("query", [SearchQuery(near_latlon_deg=(48.85, 2.35), top_k=5),
                                   SearchQuery(near_latlon_deg=(48.85, 2.35), radius_km=1.0, top_k=5)],
                         ids=["five results", "none"])
def test_search_results_in_a_new_geopackage_pass_gdals_validator(searcher, tmp_path, query):
    output = searcher.search(query)
    out = write_results_gpkg(tmp_path / "hits.gpkg", output)
    assert validate_gpkg(out) == []
    assert len(gpd.read_file(out, layer="search_results")) == len(output["results"])
    with sqlite3.connect(out) as db:  # GeoPackage 1.2, what QGIS 3.22's GDAL opens without a version warning
        assert db.execute("PRAGMA user_version").fetchone()[0] == 10200
    db.close()
    write_results_gpkg(out, searcher.search(SearchQuery(window=TimeWindow.parse("6", None), top_k=3)))  # replaced
    assert validate_gpkg(out) == [] and len(gpd.read_file(out, layer="search_results")) == 3


def test_search_results_added_to_an_existing_geopackage_add_nothing_the_validator_reports(collection, searcher,
                                                                                         tmp_path):
    output = searcher.search(SearchQuery(near_latlon_deg=(35.7, 139.7), top_k=4))
    # Another valid GeoPackage (a polygon layer, as a user's area file): it stays valid with the layer added.
    areas = tmp_path / "areas.gpkg"
    pyogrio.write_dataframe(gpd.GeoDataFrame({"name": ["box"]}, geometry=[Polygon([(0, 0), (1, 0), (1, 1)])],
                                             crs="EPSG:4326"), areas, layer="areas", dataset_options={"VERSION": "1.2"})
    assert validate_gpkg(areas) == []
    write_results_gpkg(areas, output)
    assert validate_gpkg(areas) == []
    assert sorted(pyogrio.list_layers(areas)[:, 0]) == ["areas", "search_results"]
    # The results GeoPackage itself (its own conformance is the results store's): the layer adds no finding.
    results = tmp_path / "results.gpkg"
    shutil.copyfile(collection[0], results)
    before = validate_gpkg(results)
    write_results_gpkg(results, output)
    write_results_gpkg(results, output)  # and replacing it again
    assert set(validate_gpkg(results)) <= set(before)
    assert not any("search_results" in line for line in validate_gpkg(results))
    assert load_collection(results, searcher.model_sha256).sha256 == searcher.collection.sha256


# ------------------------------------------------------------------------------------------- command line


def gtloc(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "gtloc_engine.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                                           "HOME": str(Path.home())})


@pytest.mark.slow
def test_cli_search_writes_json_and_a_geopackage_layer(collection, trained_checkpoint, tmp_path):
    gpkg, truth = collection
    results = tmp_path / "results.gpkg"
    shutil.copyfile(gpkg, results)
    proc = gtloc("search", results, "--model", trained_checkpoint, "--near", "48.8,2.3", "--month", "11-2",
                 "--hour", "22-3", "--top", 4)
    assert proc.returncode == 0, proc.stderr
    output = json.loads(proc.stdout)
    assert output["query"]["kind"] == "place+time" and len(output["results"]) == 4
    like = gpkg.parent / "photos" / "p0_1.jpg"
    proc = gtloc("search", results, "--model", trained_checkpoint, "--like", like, "--month", "6-8", "--top", 3)
    assert proc.returncode == 0, proc.stderr
    same_place = json.loads(proc.stdout)
    assert same_place["query"]["kind"] == "photo+time" and "p0_1.jpg" not in _names(same_place)
    assert "same place as the query photo" in proc.stderr  # notes go to stderr as one line each
    proc = gtloc("search", results, "--model", trained_checkpoint, "--near", "48.8,2.3", "--month", "11-2",
                 "--hour", "22-3", "--top", 4, "--out", results)  # added to the results GeoPackage itself
    assert proc.returncode == 0, proc.stderr
    layer = gpd.read_file(results, layer="search_results")
    assert layer.crs.to_epsg() == 4326 and layer["rank"].tolist() == [1, 2, 3, 4]
    assert layer["sha256"].tolist() == [r["sha256"] for r in output["results"]]
    assert np.allclose(layer.geometry.y, [r["lat_deg"] for r in output["results"]])
    assert len(gpd.read_file(results, layer="photos")) == len(truth)  # the other layers are untouched
    assert "search_results" in pyogrio.list_layers(results)[:, 0]
    assert load_collection(results, file_sha256(trained_checkpoint)).sha256  # still a readable results file
    other = save_checkpoint(tmp_path / "other.safetensors", GTLoc(preset("tiny"), seed=1))
    proc = gtloc("search", results, "--model", other, "--near", "48.8,2.3")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "holds no embeddings from this checkpoint" in proc.stderr
