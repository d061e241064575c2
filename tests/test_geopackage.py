"""The results GeoPackage as a database: every field kind round-trips, files read back with geopandas and sqlite3,
rows are replaced in place inside transactions (no rewrite, no temp file), a committed batch survives a kill -9,
a reader's lock postpones a commit instead of failing it, files that are not ours are refused and left untouched,
format 1 and format 2 files (a real one, tests/fixtures/results_v2.gpkg) are upgraded in place, and GDAL's
validate_gpkg.py reports nothing on any file the store writes."""

from __future__ import annotations

import datetime as dt
import signal
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely

from gtloc_engine.errors import GtlocError
from gpkg_validator import validate_gpkg

from gtloc_engine.io import results_schema as schema
from gtloc_engine.io.geopackage import CANDIDATE_FIELDS, PHOTO_FIELDS, REGION_FIELDS, ResultsStore

SAMPLE = {"str": "café ☕", "float": 0.125, "int": -180, "bool": True, "datetime": "2001-06-16T12:15:00.000Z"}
ALLOWED_SAMPLE = {"point_source": "claim", "time_given": "claimed place", "place_given": "image",
                  "place_verdict": "doubtful", "time_verdict": "consistent", "verdict": "doubtful",
                  "map_time_source": "claim", "place_source": schema.PLACE_SOURCES[0],
                  "time_source": schema.TIME_SOURCES[0], "utc_offset_source": schema.UTC_OFFSET_SOURCES[0],
                  "light_regime": schema.DAY, "sun_check": schema.SUN_AGREES}


def _photo(path: str, **values) -> dict:
    row = {name: SAMPLE[kind] for name, kind in PHOTO_FIELDS.items()}
    row.update(ALLOWED_SAMPLE)
    row.update(path=path, sha256="a" * 64, model_sha256="m" * 64, geometry=shapely.Point(2.35, 48.85),
               given_time_local=None)
    row.update(values)
    return row


def _candidate(path: str, rank: int) -> dict:
    return {"path": path, "sha256": "a" * 64, "rank": rank, "probability": 0.5 / rank, "radius_km": 100.0,
            "lat_deg": 48.85, "lon_deg": 2.35 + rank, "geometry": shapely.Point(2.35 + rank, 48.85)}


def _region(path: str) -> dict:
    return {"path": path, "sha256": "a" * 64, "level": 0.9, "area_km2": 1234.5, "mass": 0.91,
            "geometry": shapely.MultiPolygon([shapely.box(2, 48, 3, 49), shapely.box(-75, 40, -73, 41)])}


def _fill(store: ResultsStore) -> ResultsStore:
    store.set_results("/photos/a.jpg", _photo("/photos/a.jpg"), [_candidate("/photos/a.jpg", r) for r in (1, 2)],
                      [_region("/photos/a.jpg")])
    nulls = dict.fromkeys(PHOTO_FIELDS)
    store.set_results("/photos/b.jpg", {**nulls, "path": "/photos/b.jpg", "geometry": None}, [], [])
    store.set_failure("/photos/c.jpg", "photo '/photos/c.jpg' is empty (0 bytes); copy it again")
    store.set_embedding("a" * 64, "m" * 64, np.linspace(-1, 1, 8, dtype=np.float32))
    assert store.commit()
    return store


@pytest.fixture
def filled(tmp_path) -> Path:
    out = tmp_path / "résultats.gpkg"
    with ResultsStore.open(out) as store:
        _fill(store)
    return out


def _count(gpkg: Path, table: str) -> int:
    with sqlite3.connect(gpkg) as db:
        count = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    db.close()
    return count


# ------------------------------------------------------------------------------------------- layers and fields


def test_layers_read_back_with_geopandas_in_epsg_4326_lon_lat(filled):
    layers = dict(pyogrio.list_layers(filled))
    assert layers == {"photos": "Point", "candidates": "Point", "regions": "MultiPolygon", "failures": None,
                      "embeddings": None, "gtloc_info": None}
    photos = gpd.read_file(filled, layer="photos")
    assert photos.crs.to_epsg() == 4326
    assert list(photos.columns) == [*PHOTO_FIELDS, "geometry"]
    a = photos.set_index("path").loc["/photos/a.jpg"]
    assert (a.geometry.x, a.geometry.y) == (2.35, 48.85)  # x = lon, y = lat
    assert a.notes == SAMPLE["str"] and a.claimed_utc_offset_min == -180 and a.top1_prob == 0.125
    # map_time is a GeoPackage DATETIME: GDAL reads it as UTC
    assert bool(a.place_in_90) and a.map_time == pd.Timestamp("2001-06-16T12:15:00", tz="UTC")
    assert a.map_time_local == SAMPLE["str"]  # a text field
    assert gpd.read_file(filled, layer="candidates").sort_values("rank")["lon_deg"].tolist() == [3.35, 4.35]
    regions = gpd.read_file(filled, layer="regions")
    assert regions.geometry.iloc[0].geom_type == "MultiPolygon" and len(regions.geometry.iloc[0].geoms) == 2
    failures = pyogrio.read_dataframe(filled, layer="failures")
    assert failures.path.tolist() == ["/photos/c.jpg"] and "0 bytes" in failures.reason.iloc[0]
    # The spatial index answers a bounding-box query (GDAL uses the R-tree), the extents cover the rows.
    assert len(pyogrio.read_dataframe(filled, layer="regions", bbox=(-76, 39, -72, 42))) == 1
    assert len(pyogrio.read_dataframe(filled, layer="regions", bbox=(100, 0, 101, 1))) == 0
    assert pyogrio.read_info(filled, layer="regions")["total_bounds"] == (-75.0, 40.0, 3.0, 49.0)


def test_every_field_round_trips_including_nulls(tmp_path):
    out = tmp_path / "r.gpkg"
    with ResultsStore.open(out) as store:
        _fill(store)
    with ResultsStore.open(out) as again:
        photos = again.photos
        assert photos["/photos/a.jpg"] == _photo("/photos/a.jpg")  # REAL, INTEGER, TEXT, BOOLEAN keep values
        assert photos["/photos/b.jpg"] == {**dict.fromkeys(PHOTO_FIELDS), "path": "/photos/b.jpg", "geometry": None}
        assert [set(c) for c in again.candidates["/photos/a.jpg"]] == [{*CANDIDATE_FIELDS, "geometry"}] * 2
        assert again.regions["/photos/a.jpg"][0] == _region("/photos/a.jpg")
        assert set(again.regions["/photos/a.jpg"][0]) == {*REGION_FIELDS, "geometry"}
        assert again.failures.keys() == {"/photos/c.jpg"}
        np.testing.assert_array_equal(again.embeddings[("a" * 64, "m" * 64)], np.linspace(-1, 1, 8, dtype="f4"))
        assert again.keys() == [("/photos/a.jpg", "a" * 64, "m" * 64, None), ("/photos/b.jpg", None, None, None)]


def test_embeddings_are_float32_little_endian_blobs_replaced_per_bytes_and_model(filled):
    with ResultsStore.open(filled) as store:
        store.set_embedding("a" * 64, "m" * 64, np.arange(4, dtype=np.float64))  # replaces, as float32
        store.set_embedding("a" * 64, "n" * 64, np.ones(3))  # another model: another row
    with sqlite3.connect(filled) as db:
        kinds = dict(db.execute("SELECT table_name, data_type FROM gpkg_contents").fetchall())
        rows = db.execute("SELECT sha256, model_sha256, dim, embedding FROM embeddings ORDER BY model_sha256"
                          ).fetchall()
    db.close()
    assert kinds["embeddings"] == kinds["failures"] == kinds["gtloc_info"] == "attributes"
    assert kinds["photos"] == "features"
    assert [(r[1][0], r[2], len(r[3])) for r in rows] == [("m", 4, 16), ("n", 3, 12)]
    np.testing.assert_array_equal(np.frombuffer(rows[0][3], "<f4"), np.arange(4, dtype=np.float32))


def test_a_failure_replaces_results_and_results_replace_a_failure(filled):
    with ResultsStore.open(filled) as store:
        store.set_failure("/photos/a.jpg", "gone")
        store.set_results("/photos/c.jpg", _photo("/photos/c.jpg"), [_candidate("/photos/c.jpg", 1)], [])
    with ResultsStore.open(filled) as again:
        assert set(again.photos) == {"/photos/b.jpg", "/photos/c.jpg"} and set(again.failures) == {"/photos/a.jpg"}
        assert "/photos/a.jpg" not in again.candidates and "/photos/a.jpg" not in again.regions
    assert _count(filled, "rtree_candidates_geom") == _count(filled, "candidates") == 1  # the index follows


def test_results_for_a_path_replace_its_rows_never_add_to_them(filled):
    with ResultsStore.open(filled) as store:
        for _ in range(3):
            store.set_results("/photos/a.jpg", _photo("/photos/a.jpg", notes="again"),
                              [_candidate("/photos/a.jpg", r) for r in (1, 2, 3)], [_region("/photos/a.jpg")])
            store.commit()
    assert _count(filled, "photos") == 2 and _count(filled, "candidates") == 3 and _count(filled, "regions") == 1
    assert _count(filled, "rtree_photos_geom") == 1 and _count(filled, "rtree_regions_geom") == 1


def test_a_duplicate_path_copies_rows_under_its_own_name(filled):
    with ResultsStore.open(filled) as store:
        store.copy_results("/photos/a.jpg", "/other/copy.jpg", "copy.jpg")
        copy = store.photos["/other/copy.jpg"]
        assert copy == {**_photo("/photos/a.jpg"), "path": "/other/copy.jpg", "file_name": "copy.jpg"}
        assert [c["path"] for c in store.candidates["/other/copy.jpg"]] == ["/other/copy.jpg"] * 2
        assert [c["rank"] for c in store.candidates["/other/copy.jpg"]] == [1, 2]
        assert store.candidates["/photos/a.jpg"][0]["path"] == "/photos/a.jpg"  # the source is untouched
        # done / finished_source on the copy: the store contract's, for both backends (test_postgis_store.py).
    assert validate_gpkg(filled) == []


# ------------------------------------------------------------------------------------------- in place, transactions


def test_commits_write_in_place_and_leave_no_other_files(tmp_path):
    out = tmp_path / "r.gpkg"
    store = ResultsStore.open(out)
    inode = out.stat().st_ino
    for i in range(5):
        store.set_results(f"/p/{i}.jpg", _photo(f"/p/{i}.jpg"), [], [])
        assert store.commit()
        assert out.stat().st_ino == inode  # the same file, never replaced by a rename
        assert _count(out, "photos") == i + 1  # committed rows are visible to another connection at once
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.gpkg"]  # no temp file, journal, -wal or -shm


def test_rows_are_only_visible_once_committed(tmp_path):
    out = tmp_path / "r.gpkg"
    with ResultsStore.open(out) as store:
        store.set_results("/p/a.jpg", _photo("/p/a.jpg"), [], [])
        assert _count(out, "photos") == 0  # buffered in memory: a batch is one transaction
        store.commit()
        assert _count(out, "photos") == 1


def test_a_row_the_schema_does_not_allow_is_refused_and_nothing_is_written(filled):
    before = _count(filled, "photos"), _count(filled, "candidates")
    with ResultsStore.open(filled) as store:
        for bad in ({"verdict": "probably fine"}, {"map_time": dt.datetime(2021, 7, 14, 21, 30)},  # naive: not UTC
                    {"map_time": "2021-07-14T21:30:00"}, {"pred_month": "7"}, {"place_in_90": 1},
                    {"geometry": "not a geometry"}, {"geometry": shapely.box(0, 0, 1, 1)}, {"no_such_field": 1}):
            with pytest.raises(ValueError):
                store.set_results("/photos/d.jpg", _photo("/photos/d.jpg", **bad), [], [])
        with pytest.raises(ValueError, match="MULTIPOLYGON"):
            store.set_results("/photos/d.jpg", _photo("/photos/d.jpg"), [], [{**_region("/photos/d.jpg"),
                                                                              "geometry": shapely.Point(0, 0)}])
    assert (_count(filled, "photos"), _count(filled, "candidates")) == before
    assert validate_gpkg(filled) == []


def test_a_polygon_region_is_stored_as_a_multipolygon_and_an_empty_geometry_as_null(tmp_path):
    out = tmp_path / "r.gpkg"
    with ResultsStore.open(out) as store:
        store.set_results("/p/a.jpg", _photo("/p/a.jpg", geometry=shapely.Point()), [],
                          [{**_region("/p/a.jpg"), "geometry": shapely.box(0, 0, 1, 1)}])
    regions = gpd.read_file(out, layer="regions")
    assert regions.geometry.iloc[0].geom_type == "MultiPolygon"
    assert gpd.read_file(out, layer="photos").geometry.iloc[0] is None
    assert validate_gpkg(out) == []


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np, shapely
    sys.path.insert(0, {tests!r})
    from test_geopackage import _photo, _candidate, _region
    from gtloc_engine.io.geopackage import ResultsStore
    store = ResultsStore.open(sys.argv[1], journal_mode=sys.argv[2])
    for batch in range(3):
        for i in range(10):
            key = f"/p/{{batch}}_{{i}}.jpg"
            store.set_results(key, _photo(key), [_candidate(key, r) for r in range(1, 6)], [_region(key)] * 2)
            store.set_embedding(f"{{batch}}{{i}}".ljust(64, "0"), "m" * 64, np.ones(512))
        store.commit()
    for i in range(10):  # a fourth batch, written into the open transaction but never committed
        key = f"/p/3_{{i}}.jpg"
        store.set_results(key, _photo(key), [_candidate(key, 1)], [_region(key)])
    store.done("/p/0_0.jpg", "a" * 64, "m" * 64)  # a lookup applies the buffered rows inside the transaction
    print("killing", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_a_kill_9_keeps_every_committed_batch_and_a_valid_file(tmp_path, journal_mode):
    out = tmp_path / "r.gpkg"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER.format(tests=str(Path(__file__).parent)), str(out),
                           journal_mode], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL and "killing" in proc.stdout, proc.stderr
    assert validate_gpkg(out) == []  # (SQLite rolls the unfinished transaction back when the file is opened)
    with ResultsStore.open(out) as store:
        assert sorted(store.photos) == sorted(f"/p/{b}_{i}.jpg" for b in range(3) for i in range(10))
        assert sum(map(len, store.candidates.values())) == 150 and len(store.embeddings) == 30
        store.set_results("/p/3_0.jpg", _photo("/p/3_0.jpg"), [], [])  # and it takes new rows again
    assert _count(out, "photos") == 31 and _count(out, "rtree_photos_geom") == 31


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_a_reader_holding_the_file_postpones_a_commit_and_never_fails_it(tmp_path, journal_mode):
    """In rollback mode a reader's open read transaction blocks the writer's commit: the store keeps the rows and
    writes them with a later commit. In WAL mode readers never block it."""
    out = tmp_path / "r.gpkg"
    store = ResultsStore.open(out, journal_mode=journal_mode, busy_timeout_s=0.2)
    store.set_results("/p/a.jpg", _photo("/p/a.jpg"), [], [])
    store.commit()
    reader = sqlite3.connect(out, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM photos").fetchone()[0] == 1  # holds its snapshot / shared lock
    store.set_results("/p/b.jpg", _photo("/p/b.jpg"), [], [])
    committed = store.commit()
    assert committed is (journal_mode == "wal")
    assert reader.execute("SELECT count(*) FROM photos").fetchone()[0] == 1  # the reader's view is unchanged
    reader.execute("COMMIT")
    store.set_results("/p/c.jpg", _photo("/p/c.jpg"), [], [])
    assert store.commit()  # the postponed rows go with this one
    assert reader.execute("SELECT count(*) FROM photos").fetchone()[0] == 3
    reader.close()
    store.close()
    assert validate_gpkg(out) == []


def test_the_default_journal_is_wal_on_a_local_disk_and_close_leaves_only_the_gpkg(tmp_path):
    out = tmp_path / "r.gpkg"
    with ResultsStore.open(out) as store:
        assert store.journal_mode == "wal"
        _fill(store)
        assert {p.name for p in tmp_path.iterdir()} >= {"r.gpkg-wal", "r.gpkg-shm"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.gpkg"]  # checkpointed into the .gpkg on close
    assert _gpkg_header(out) == (b"GPKG", 10200)  # GDAL reads these bytes of the file itself...
    assert out.read_bytes()[18:20] == b"\x02\x02"  # ... of a file that stays in WAL mode
    assert _count(out, "photos") == 2 and validate_gpkg(out) == []
    with ResultsStore.open(out, journal_mode="delete") as store:  # either way round
        assert store.journal_mode == "delete"
    with ResultsStore.open(out) as store:
        assert store.journal_mode == "wal"


def test_a_file_another_program_set_back_to_the_rollback_journal_is_made_wal_again_with_one_warning(tmp_path,
                                                                                                       caplog):
    out = tmp_path / "r.gpkg"
    with caplog.at_level("WARNING", logger="gtloc"):
        with ResultsStore.open(out) as store:  # a new file: nothing to say
            _fill(store)
        with ResultsStore.open(out):  # left in WAL by gtloc: nothing to say
            pass
        assert caplog.records == []
        with closing(sqlite3.connect(out)) as db:  # what QGIS does when it opens the file alone
            assert db.execute("PRAGMA journal_mode = delete").fetchone()[0] == "delete"
        with ResultsStore.open(out) as store:
            assert store.journal_mode == "wal" and out.read_bytes()[18:20] == b"\x02\x02"
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert str(out) in caplog.records[0].getMessage() and "reload (F5)" in caplog.records[0].getMessage()
    assert _count(out, "photos") == 2


def test_after_close_the_gpkg_alone_holds_every_row_even_while_a_reader_keeps_it_open(tmp_path):
    """With a reader still connected (QGIS with the layer open) SQLite keeps the -wal and -shm files, but close()
    has checkpointed every commit into the .gpkg: a copy of the .gpkg alone is complete."""
    out = tmp_path / "r.gpkg"
    store = ResultsStore.open(out)
    reader = sqlite3.connect(out)
    assert reader.execute("SELECT count(*) FROM photos").fetchone()[0] == 0
    for i in range(300):
        store.set_results(f"/p/{i}.jpg", _photo(f"/p/{i}.jpg"), [_candidate(f"/p/{i}.jpg", 1)],
                          [_region(f"/p/{i}.jpg")])
        if i % 16 == 15:
            store.commit()
    store.close()
    assert (tmp_path / "r.gpkg-wal").exists() and (tmp_path / "r.gpkg-wal").stat().st_size == 0
    alone = tmp_path / "copy" / "r.gpkg"
    alone.parent.mkdir()
    alone.write_bytes(out.read_bytes())
    assert _count(alone, "photos") == 300 and _count(alone, "regions") == 300
    assert reader.execute("SELECT count(*) FROM photos").fetchone()[0] == 300
    reader.close()


NOLOCK_WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_geopackage import _photo, _candidate, _region
    from gtloc_engine.io.geopackage import ResultsStore
    store = ResultsStore.open(sys.argv[1])
    print("open", flush=True)
    deadline, i = time.monotonic() + 6, 0
    while time.monotonic() < deadline:
        for _ in range(4):
            key = f"/p/{{i}}.jpg"
            store.set_results(key, _photo(key), [_candidate(key, r) for r in range(1, 6)], [_region(key)] * 2)
            i += 1
        store.commit()
    store.close()
    print(i, flush=True)
""")


def test_a_reader_without_locks_as_qgis_opens_a_gpkg_never_sees_a_half_written_commit(tmp_path):
    """QGIS >= 3.22 (GDAL >= 3.4.2) opens a GeoPackage it only reads with GDAL's NOLOCK=ON: no SQLite locks. GDAL
    ignores it for a file in WAL mode, the store's default, so such a reader always sees whole commits (in rollback
    mode it sees pages half-way through a commit now and then: 'database disk image is malformed')."""
    out = tmp_path / "r.gpkg"
    writer = subprocess.Popen([sys.executable, "-c", NOLOCK_WRITER.format(tests=str(Path(__file__).parent)),
                               str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "open"
    counts, errors = [], []
    while writer.poll() is None:
        try:
            frame = pyogrio.read_dataframe(out, layer="candidates", columns=["path", "rank"], nolock="ON")
            counts.append(len(frame))
            assert len(frame) % 5 == 0  # a photo's five candidates are committed together
        except Exception as exc:  # noqa: BLE001 - any failure to read is what this test is about
            errors.append(f"{type(exc).__name__}: {exc}")
    written = int(writer.communicate(timeout=60)[0].strip())
    assert errors == [] and len(counts) > 20
    assert counts == sorted(counts) and 0 < counts[len(counts) // 2] < 5 * written  # read while it grew


def _gpkg_header(path: Path) -> tuple[bytes, int]:
    """application_id and user_version as written in the file header (OGC 12-128r15, 1.1.1.1.1)."""
    head = path.read_bytes()[:72]
    return head[68:72], int.from_bytes(head[60:64], "big")


def test_the_file_is_geopackage_1_2_for_qgis_3_22(filled):
    """GeoPackage 1.2 (application_id 'GPKG', user_version 10200); a default GDAL 3.12 file is 1.4 (10400), which the
    GDAL under QGIS 3.22 opens with a version warning."""
    assert _gpkg_header(filled) == (b"GPKG", 10200)
    with sqlite3.connect(filled) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0].to_bytes(4, "big") == b"GPKG"
        info = dict(db.execute("SELECT key, value FROM gtloc_info").fetchall())
        key_column = [c for c in db.execute("PRAGMA table_info(gtloc_info)").fetchall() if c[5]]
    db.close()
    assert info["format"] == "gtloc-results" and info["format_version"] == str(schema.FORMAT_VERSION) == "3"
    assert [(c[1], c[2]) for c in key_column] == [("fid", "INTEGER")]  # GeoPackage Req 119


def test_validate_gpkg_reports_nothing_on_a_new_a_filled_and_an_emptied_file(tmp_path):
    empty = tmp_path / "empty.gpkg"
    ResultsStore.open(empty).close()
    assert validate_gpkg(empty) == []
    out = tmp_path / "r.gpkg"
    with ResultsStore.open(out) as store:
        _fill(store)
    assert validate_gpkg(out) == []
    with ResultsStore.open(out) as store:
        for path in ("/photos/a.jpg", "/photos/b.jpg"):
            store.set_failure(path, "removed")
    assert _count(out, "photos") == 0 and validate_gpkg(out) == []


# ------------------------------------------------------------------------------------------- refusals, versions


@pytest.mark.parametrize("kind", ["text", "other_gpkg", "sqlite", "folder", "empty_file"])
def test_a_file_that_is_not_ours_is_refused_and_left_alone(tmp_path, kind):
    out = tmp_path / "r.gpkg"
    if kind == "text":
        out.write_text("my notes")
    elif kind == "other_gpkg":
        gpd.GeoDataFrame({"name": ["x"]}, geometry=[shapely.Point(0, 0)], crs="EPSG:4326").to_file(out, layer="photos")
    elif kind == "sqlite":
        with sqlite3.connect(out) as db:
            db.execute("CREATE TABLE gtloc_info (key TEXT, value TEXT)")
            db.execute("INSERT INTO gtloc_info VALUES ('format', 'someone else')")
        db.close()
    elif kind == "empty_file":
        out.write_bytes(b"")
    else:
        out.mkdir()
    before = out.read_bytes() if out.is_file() else None
    with pytest.raises(GtlocError, match="not a gtloc results GeoPackage") as info:
        ResultsStore.open(out)
    assert "\n" not in str(info.value)
    assert (out.read_bytes() if out.is_file() else None) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.gpkg"]  # no journal or -wal left next to it


def test_a_newer_format_is_refused(filled):
    with sqlite3.connect(filled) as db:
        db.execute("UPDATE gtloc_info SET value = '99' WHERE key = 'format_version'")
    db.close()
    with pytest.raises(GtlocError, match="newer"):
        ResultsStore.open(filled)


def test_the_name_must_end_in_gpkg(tmp_path):
    with pytest.raises(GtlocError, match=".gpkg"):
        ResultsStore.open(tmp_path / "results.sqlite")
    assert list(tmp_path.iterdir()) == []


# Format 1 as gtloc wrote it before the incremental store: GDAL (pyogrio) wrote every layer whole; map_time was the
# local wall clock; gtloc_info had a TEXT primary key.
V1_PHOTO_FIELDS = {name: kind for name, kind in PHOTO_FIELDS.items() if name != "map_time_local"}


def _write_format_1(out: Path, rows: list[dict]) -> None:
    dtypes = {"str": object, "float": "float64", "int": "Int64", "bool": "boolean", "datetime": "datetime64[ms]"}
    columns = {}
    for name, kind in V1_PHOTO_FIELDS.items():
        values = [row.get(name) for row in rows]
        columns[name] = pd.Series(pd.to_datetime(values) if kind == "datetime" else values, dtype=dtypes[kind])
    frame = gpd.GeoDataFrame(columns, geometry=[r["geometry"] for r in rows], crs="EPSG:4326")
    pyogrio.write_dataframe(frame, out, layer="photos", driver="GPKG", geometry_type="Point",
                            dataset_options={"VERSION": "1.2"})
    for layer, kinds, geometry_type in (("candidates", CANDIDATE_FIELDS, "Point"),
                                        ("regions", REGION_FIELDS, "MultiPolygon")):
        empty = gpd.GeoDataFrame({n: pd.Series([], dtype=dtypes[k]) for n, k in kinds.items()}, geometry=[],
                                 crs="EPSG:4326")
        pyogrio.write_dataframe(empty, out, layer=layer, driver="GPKG", geometry_type=geometry_type)
    pyogrio.write_dataframe(pd.DataFrame({"path": pd.Series([], dtype=object), "reason": pd.Series([], dtype=object),
                                          "failed_at_utc": pd.Series([], dtype=object)}), out, layer="failures",
                            driver="GPKG")
    with sqlite3.connect(out) as db:
        for name, columns_sql in (("gtloc_info", "key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL"),
                                  ("embeddings", "fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, sha256 TEXT NOT "
                                                 "NULL, model_sha256 TEXT NOT NULL, dim INTEGER NOT NULL, embedding "
                                                 "BLOB NOT NULL")):
            db.execute(f"CREATE TABLE {name} ({columns_sql})")
            db.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, last_change) VALUES (?, "
                       "'attributes', ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))", (name, name))
        db.executemany("INSERT INTO gtloc_info VALUES (?, ?)", [("format", "gtloc-results"), ("format_version", "1"),
                                                                ("engine_version", "0.1.0")])
    db.close()


def test_a_format_1_file_is_upgraded_in_place_and_resumes(tmp_path):
    out = tmp_path / "old.gpkg"
    claimed = _photo("/p/claimed.jpg", claimed_utc_offset_min=120, map_time=dt.datetime(2021, 7, 14, 21, 30, 5))
    unknown_offset = _photo("/p/plain.jpg", sha256="b" * 64, claimed_utc_offset_min=None,
                            map_time=dt.datetime(2001, 3, 2, 6, 15))
    _write_format_1(out, [claimed, unknown_offset])
    findings = " ".join(validate_gpkg(out))
    assert "map_time" in findings and "gtloc_info" in findings  # what format 1 got wrong
    with ResultsStore.open(out) as store:
        res = SAMPLE["float"]
        assert store.done("/p/claimed.jpg", "a" * 64, "m" * 64, None, res)
        assert store.done("/p/plain.jpg", "b" * 64, "m" * 64, None, res)
        photos = store.photos
        store.set_results("/p/new.jpg", _photo("/p/new.jpg"), [_candidate("/p/new.jpg", 1)], [_region("/p/new.jpg")])
    assert photos["/p/claimed.jpg"]["map_time"] == "2021-07-14T19:30:05.000Z"  # 21:30:05 at UTC+2
    assert photos["/p/claimed.jpg"]["map_time_local"] == "2021-07-14T21:30:05"
    plain = photos["/p/plain.jpg"]
    assert plain["map_time"] is None and plain["map_time_local"] == "2001-03-02T06:15:00"  # no offset: no UTC
    assert validate_gpkg(out) == []
    with sqlite3.connect(out) as db:
        assert db.execute("SELECT value FROM gtloc_info WHERE key = 'format_version'").fetchone()[0] == "3"
    db.close()
    assert _count(out, "photos") == 3 and _count(out, "rtree_regions_geom") == 1
    assert pyogrio.read_info(out, layer="photos")["features"] == 3  # GDAL's own feature count kept up to date


# Format 2 as gtloc wrote it before the verdict 'inconclusive': tests/fixtures/results_v2.gpkg, made by the format-2
# writer itself (tests/fixtures/README.md says how).
RESULTS_V2 = Path(__file__).parent / "fixtures" / "results_v2.gpkg"


def _columns(gpkg: Path) -> dict[str, list[str]]:
    with sqlite3.connect(gpkg) as db:
        columns = {t.name: [row[1] for row in db.execute(f"PRAGMA table_info({t.name})")] for t in schema.TABLES}
    db.close()
    return columns


def _info_version(gpkg: Path) -> str:
    with sqlite3.connect(gpkg) as db:
        version = db.execute("SELECT value FROM gtloc_info WHERE key = 'format_version'").fetchone()[0]
    db.close()
    return version


def test_a_format_2_file_is_upgraded_in_place_and_resumes(tmp_path):
    out = tmp_path / "case.gpkg"
    out.write_bytes(RESULTS_V2.read_bytes())
    assert _info_version(out) == "2" and "place_evidence" not in _columns(out)["photos"]
    with sqlite3.connect(out) as db:
        before = db.execute("SELECT path, verdict, place_level, place_verdict FROM photos ORDER BY fid").fetchall()
    db.close()
    assert before[0] == ("/photos/paris.jpg", "consistent", 0.12, "consistent")
    with ResultsStore.open(out) as store:
        assert store.done("/photos/paris.jpg", "a" * 64, "m" * 64)
        assert store.done("/photos/plain.png", "b" * 64, "m" * 64)
        old = store.photos
        new = {**dict.fromkeys(PHOTO_FIELDS), "sha256": "c" * 64, "model_sha256": "m" * 64, "verdict": "inconclusive",
               "place_verdict": "inconclusive", "place_level": 0.18, "place_evidence": 1.6, "surface_res_deg": 0.25,
               "thumbnail": "/cases/case_thumbs/" + "c" * 64 + ".jpg", "geometry": shapely.Point(10.0, 20.0)}
        store.set_results("/photos/new.jpg", new, [_candidate("/photos/new.jpg", 1)], [_region("/photos/new.jpg")])
    assert _info_version(out) == str(schema.FORMAT_VERSION) == "3"
    columns = _columns(out)
    for table in schema.TABLES:  # every schema column, whatever the other helpers of this version added
        assert set(table.field_names) <= set(columns[table.name]), table.name
    paris = old["/photos/paris.jpg"]
    assert (paris["verdict"], paris["place_level"]) == ("consistent", 0.12)
    assert paris["map_time"] == "2021-07-14T19:30:05.000Z"
    assert paris["place_evidence"] is None and paris["surface_res_deg"] is None and paris["thumbnail"] is None
    assert validate_gpkg(out) == []
    photos = gpd.read_file(out, layer="photos").set_index("path")
    assert list(photos.index) == ["/photos/paris.jpg", "/photos/plain.png", "/photos/new.jpg"]
    assert photos.loc["/photos/new.jpg", "verdict"] == "inconclusive"
    assert photos.loc["/photos/new.jpg", "place_evidence"] == 1.6
    assert _count(out, "regions") == 5 and _count(out, "failures") == 1 and _count(out, "embeddings") == 2
    assert _count(out, "rtree_photos_geom") == 3


def test_a_file_of_this_version_missing_a_newer_field_gets_it(filled):
    with sqlite3.connect(filled) as db:
        db.execute("ALTER TABLE photos DROP COLUMN time_plot")  # as written before the field was added
    db.close()
    assert "time_plot" not in _columns(filled)["photos"]
    with ResultsStore.open(filled) as store:
        store.set_results("/photos/z.jpg", {**dict.fromkeys(PHOTO_FIELDS), "time_plot": "/t/z_time.png",
                                            "geometry": None}, [], [])
    assert "time_plot" in _columns(filled)["photos"] and _info_version(filled) == str(schema.FORMAT_VERSION)
    with ResultsStore.open(filled) as store:
        assert store.photos["/photos/z.jpg"]["time_plot"] == "/t/z_time.png"
    assert validate_gpkg(filled) == []
