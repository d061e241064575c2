"""The results GeoPackage: every field kind round-trips, files are read back with geopandas and sqlite3, writes are
atomic, and files that are not ours are refused and left untouched."""

from __future__ import annotations

import datetime as dt
import sqlite3

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely

from gtloc_engine.errors import GtlocError
from gtloc_engine.io.geopackage import CANDIDATE_FIELDS, PHOTO_FIELDS, REGION_FIELDS, ResultsStore

SAMPLE = {"str": "café ☕", "float": 0.125, "int": -180, "bool": True, "datetime": dt.datetime(2001, 6, 16, 12, 15)}


def _photo(path: str, **values) -> dict:
    row = {name: SAMPLE[kind] for name, kind in PHOTO_FIELDS.items()}
    row.update(path=path, sha256="a" * 64, model_sha256="m" * 64, geometry=shapely.Point(2.35, 48.85),
               given_time_local=None, **values)
    return row


def _candidate(path: str, rank: int) -> dict:
    return {"path": path, "sha256": "a" * 64, "rank": rank, "probability": 0.5 / rank, "radius_km": 100.0,
            "lat_deg": 48.85, "lon_deg": 2.35 + rank, "geometry": shapely.Point(2.35 + rank, 48.85)}


def _region(path: str) -> dict:
    return {"path": path, "sha256": "a" * 64, "level": 0.9, "area_km2": 1234.5, "mass": 0.91,
            "geometry": shapely.MultiPolygon([shapely.box(2, 48, 3, 49), shapely.box(-75, 40, -73, 41)])}


def _filled_store(path) -> ResultsStore:
    store = ResultsStore.open(path)
    store.set_results("/photos/a.jpg", _photo("/photos/a.jpg"), [_candidate("/photos/a.jpg", r) for r in (1, 2)],
                      [_region("/photos/a.jpg")])
    nulls = dict.fromkeys(PHOTO_FIELDS)
    store.set_results("/photos/b.jpg", {**nulls, "path": "/photos/b.jpg", "geometry": None}, [], [])
    store.set_failure("/photos/c.jpg", "photo '/photos/c.jpg' is empty (0 bytes); copy it again")
    store.embeddings[("a" * 64, "m" * 64)] = np.linspace(-1, 1, 8, dtype=np.float32)
    store.save()
    return store


def test_layers_read_back_with_geopandas_in_epsg_4326_lon_lat(tmp_path):
    out = tmp_path / "résultats.gpkg"
    _filled_store(out)
    layers = dict(pyogrio.list_layers(out))
    assert layers == {"photos": "Point", "candidates": "Point", "regions": "MultiPolygon", "failures": None,
                      "gtloc_info": None, "embeddings": None}
    photos = gpd.read_file(out, layer="photos")
    assert photos.crs.to_epsg() == 4326
    assert list(photos.columns) == [*PHOTO_FIELDS, "geometry"]
    a = photos.set_index("path").loc["/photos/a.jpg"]
    assert (a.geometry.x, a.geometry.y) == (2.35, 48.85)  # x = lon, y = lat
    assert a.notes == SAMPLE["str"] and a.claimed_utc_offset_min == -180 and a.top1_prob == 0.125
    assert bool(a.place_in_90) and a.map_time.to_pydatetime() == SAMPLE["datetime"]
    assert gpd.read_file(out, layer="candidates").sort_values("rank")["lon_deg"].tolist() == [3.35, 4.35]
    regions = gpd.read_file(out, layer="regions")
    assert regions.geometry.iloc[0].geom_type == "MultiPolygon" and len(regions.geometry.iloc[0].geoms) == 2
    failures = pyogrio.read_dataframe(out, layer="failures")
    assert failures.path.tolist() == ["/photos/c.jpg"] and "0 bytes" in failures.reason.iloc[0]


def test_every_field_round_trips_including_nulls(tmp_path):
    out = tmp_path / "r.gpkg"
    written = _filled_store(out)
    again = ResultsStore.open(out)
    for path in written.photos:
        assert again.photos[path] == written.photos[path]  # REAL, INTEGER and TEXT keep values exactly
    assert again.photos["/photos/b.jpg"] == {**dict.fromkeys(PHOTO_FIELDS), "path": "/photos/b.jpg", "geometry": None}
    assert [set(c) for c in again.candidates["/photos/a.jpg"]] == [{*CANDIDATE_FIELDS, "geometry"}] * 2
    assert set(again.regions["/photos/a.jpg"][0]) == {*REGION_FIELDS, "geometry"}
    assert again.failures.keys() == {"/photos/c.jpg"}
    np.testing.assert_array_equal(again.embeddings[("a" * 64, "m" * 64)], np.linspace(-1, 1, 8, dtype=np.float32))


def test_embeddings_are_float32_little_endian_blobs_in_an_attributes_table(tmp_path):
    out = tmp_path / "r.gpkg"
    _filled_store(out)
    with sqlite3.connect(out) as db:
        kinds = dict(db.execute("SELECT table_name, data_type FROM gpkg_contents").fetchall())
        sha, dim, blob = db.execute("SELECT sha256, dim, embedding FROM embeddings").fetchone()
    db.close()
    assert kinds["embeddings"] == kinds["failures"] == "attributes" and kinds["photos"] == "features"
    assert sha == "a" * 64 and dim == 8 and isinstance(blob, bytes) and len(blob) == 32
    np.testing.assert_array_equal(np.frombuffer(blob, "<f4"), np.linspace(-1, 1, 8, dtype=np.float32))


def test_a_failure_replaces_results_and_results_replace_a_failure(tmp_path):
    store = _filled_store(tmp_path / "r.gpkg")
    store.set_failure("/photos/a.jpg", "gone")
    assert "/photos/a.jpg" not in store.photos and "/photos/a.jpg" not in store.candidates
    store.set_results("/photos/c.jpg", _photo("/photos/c.jpg"), [], [])
    assert "/photos/c.jpg" not in store.failures
    store.save()
    again = ResultsStore.open(tmp_path / "r.gpkg")
    assert set(again.photos) == {"/photos/b.jpg", "/photos/c.jpg"} and set(again.failures) == {"/photos/a.jpg"}
    assert "/photos/a.jpg" not in again.candidates and "/photos/a.jpg" not in again.regions


def test_a_duplicate_path_copies_rows_under_its_own_name(tmp_path):
    store = _filled_store(tmp_path / "r.gpkg")
    store.copy_results("/photos/a.jpg", "/other/copy.jpg", "copy.jpg")
    copy = store.photos["/other/copy.jpg"]
    assert copy["file_name"] == "copy.jpg" and copy["sha256"] == "a" * 64
    assert [c["path"] for c in store.candidates["/other/copy.jpg"]] == ["/other/copy.jpg"] * 2
    assert store.candidates["/photos/a.jpg"][0]["path"] == "/photos/a.jpg"  # the source is untouched
    assert store.done("/other/copy.jpg", "a" * 64, "m" * 64) and not store.done("/other/copy.jpg", "a" * 64, "x")


def test_save_replaces_the_file_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "r.gpkg"
    store = _filled_store(out)
    store.set_failure("/photos/d.jpg", "bad")
    store.save()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.gpkg"]
    assert len(pyogrio.read_dataframe(out, layer="failures")) == 2


def test_a_failed_save_keeps_the_previous_file(tmp_path):
    out = tmp_path / "r.gpkg"
    store = _filled_store(out)
    before = out.read_bytes()
    store.photos["/photos/a.jpg"]["geometry"] = "not a geometry"
    with pytest.raises(Exception):  # noqa: B017 - whatever the writer raises, the old file must survive
        store.save()
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.gpkg"]


@pytest.mark.parametrize("kind", ["text", "other_gpkg", "folder"])
def test_a_file_that_is_not_ours_is_refused_and_left_alone(tmp_path, kind):
    out = tmp_path / "r.gpkg"
    if kind == "text":
        out.write_text("my notes")
    elif kind == "other_gpkg":
        gpd.GeoDataFrame({"name": ["x"]}, geometry=[shapely.Point(0, 0)], crs="EPSG:4326").to_file(out, layer="photos")
    else:
        out.mkdir()
    before = out.read_bytes() if out.is_file() else None
    with pytest.raises(GtlocError, match="not a gtloc results GeoPackage") as info:
        ResultsStore.open(out)
    assert "\n" not in str(info.value)
    assert (out.read_bytes() if out.is_file() else None) == before


def test_a_newer_format_is_refused(tmp_path):
    out = tmp_path / "r.gpkg"
    _filled_store(out)
    with sqlite3.connect(out) as db:
        db.execute("UPDATE gtloc_info SET value = '99' WHERE key = 'format_version'")
    db.close()
    with pytest.raises(GtlocError, match="newer"):
        ResultsStore.open(out)


def test_the_name_must_end_in_gpkg(tmp_path):
    with pytest.raises(GtlocError, match=".gpkg"):
        ResultsStore.open(tmp_path / "results.sqlite")


def test_the_file_is_geopackage_1_2_for_qgis_3_22(tmp_path):
    """GeoPackage 1.2 in the file header (OGC 12-128r15, 1.1.1.1: application_id 'GPKG', user_version 10200);
    a default GDAL 3.12 file is 1.4 (10400), which the GDAL under QGIS 3.22 opens with a version warning."""
    out = tmp_path / "r.gpkg"
    _filled_store(out).save()  # a re-save (a new file built from scratch) keeps the version
    with sqlite3.connect(out) as db:
        application_id = db.execute("PRAGMA application_id").fetchone()[0]
        user_version = db.execute("PRAGMA user_version").fetchone()[0]
    db.close()
    assert application_id.to_bytes(4, "big") == b"GPKG" and user_version == 10200
    assert len(ResultsStore.open(out).photos) == 2  # and it still reads back
