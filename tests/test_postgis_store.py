"""The PostGIS case store against a real PostgreSQL 15 + PostGIS server started by the tests (tests/postgis_cluster.py):
the store contract run on both stores (every field round-trips, a path's rows are replaced never added, failures
and results replace each other, duplicates copied, bad rows refused, a writer killed with SIGKILL loses only what it
had not committed and never leaves half a batch, two writer processes on overlapping paths leave every path once),
then what only PostGIS has (typed PostGIS geometries, GiST indexes, roles, passwords from PGPASSWORD / pgpass and
never in the URL, foreign databases refused), and the real pipeline and `gtloc predict` processes writing a case:
resume, duplicates, failures, kill -9 mid-run, two concurrent runs on overlapping folders, and search."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image

from gtloc_engine.errors import GtlocError
from gtloc_engine.inference.pipeline import PhotoPipeline, PipelineConfig
from gtloc_engine.inference.search import CollectionSearch, SearchConfig, SearchQuery
from gtloc_engine.io import results_schema as schema
from gtloc_engine.io.exif import write_jpeg_with_exif
from gtloc_engine.io.postgis import PG_TYPES
from gtloc_engine.io.store import open_store

psycopg = pytest.importorskip("psycopg", reason="the postgis extra (psycopg 3) is not installed: pip install '.[dev]'")
TESTS = Path(__file__).resolve().parent
SAMPLE = {"str": "café ☕", "float": 0.125, "int": -180, "bool": True, "datetime": "2001-06-16T12:15:00.000Z"}
FAST = PipelineConfig(global_res_deg=1.0)


def photo_row(path: str, **values) -> dict:
    """Every photo field set (an allowed value where the schema lists them), at Paris."""
    row = {f.name: (f.allowed[0] if f.allowed else SAMPLE[f.kind]) for f in schema.PHOTOS.fields}
    row.update(path=path, sha256="a" * 64, model_sha256="m" * 64, given_time_local=None,
               geometry=shapely.Point(2.35, 48.85))
    row.update(values)
    return row


def candidate_row(path: str, rank: int) -> dict:
    return {"path": path, "sha256": "a" * 64, "rank": rank, "probability": 0.5 / rank, "radius_km": 100.0,
            "lat_deg": 48.85, "lon_deg": 2.35 + rank, "geometry": shapely.Point(2.35 + rank, 48.85)}


def region_row(path: str) -> dict:
    return {"path": path, "sha256": "a" * 64, "level": 0.9, "area_km2": 1234.5, "mass": 0.91,
            "geometry": shapely.MultiPolygon([shapely.box(2, 48, 3, 49), shapely.box(-75, 40, -73, 41)])}


def fill(store) -> None:
    store.set_results("/photos/a.jpg", photo_row("/photos/a.jpg"),
                      [candidate_row("/photos/a.jpg", r) for r in (1, 2)], [region_row("/photos/a.jpg")])
    store.set_results("/photos/b.jpg", {**dict.fromkeys(schema.PHOTO_FIELDS), "geometry": None}, [], [])
    store.set_failure("/photos/c.jpg", "photo '/photos/c.jpg' is empty (0 bytes); copy it again")
    store.set_embedding("a" * 64, "m" * 64, np.linspace(-1, 1, 8, dtype=np.float32))
    assert store.commit()


@pytest.fixture(params=["gpkg", "postgis"])
def target(request, tmp_path):
    """The same contract on both stores: a new results GeoPackage, or a new PostGIS case."""
    if request.param == "gpkg":
        return tmp_path / "r.gpkg"
    return request.getfixturevalue("pg_case")


def dbname(url: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(url)["dbname"]


def counts(target) -> tuple[int, int, int, int]:
    """(photos, candidates, regions, embeddings) rows, read by a fresh store."""
    with open_store(target) as store:
        return (len(store.photos), sum(map(len, store.candidates.values())), sum(map(len, store.regions.values())),
                len(store.embeddings))


# ------------------------------------------------------------------------------------------- the store contract


def test_every_field_round_trips_including_nulls(target):
    with open_store(target) as store:
        fill(store)
    with open_store(target) as again:
        assert again.photos["/photos/a.jpg"] == photo_row("/photos/a.jpg")
        assert again.photos["/photos/b.jpg"] == {**dict.fromkeys(schema.PHOTO_FIELDS), "path": "/photos/b.jpg",
                                                 "geometry": None}
        assert again.candidates["/photos/a.jpg"] == [candidate_row("/photos/a.jpg", r) for r in (1, 2)]
        assert again.regions["/photos/a.jpg"] == [region_row("/photos/a.jpg")]
        assert again.failures.keys() == {"/photos/c.jpg"} and "0 bytes" in again.failures["/photos/c.jpg"]["reason"]
        np.testing.assert_array_equal(again.embeddings[("a" * 64, "m" * 64)], np.linspace(-1, 1, 8, dtype="f4"))
        assert again.keys() == [("/photos/a.jpg", "a" * 64, "m" * 64, None), ("/photos/b.jpg", None, None, None)]


def test_results_for_a_path_replace_its_rows_never_add_to_them(target):
    with open_store(target) as store:
        fill(store)
        for notes in ("again", "and again", "once more"):
            store.set_results("/photos/a.jpg", photo_row("/photos/a.jpg", notes=notes),
                              [candidate_row("/photos/a.jpg", r) for r in (1, 2, 3)], [region_row("/photos/a.jpg")])
            store.set_embedding("a" * 64, "m" * 64, np.ones(8))  # an upsert on (sha256, model_sha256)
            store.commit()
        assert store.photos["/photos/a.jpg"]["notes"] == "once more"
    assert counts(target) == (2, 3, 1, 1)


def test_a_failure_replaces_results_and_results_replace_a_failure(target):
    with open_store(target) as store:
        fill(store)
        store.set_failure("/photos/a.jpg", "gone")
        store.set_results("/photos/c.jpg", photo_row("/photos/c.jpg"), [candidate_row("/photos/c.jpg", 1)], [])
    with open_store(target) as again:
        assert set(again.photos) == {"/photos/b.jpg", "/photos/c.jpg"} and set(again.failures) == {"/photos/a.jpg"}
        assert "/photos/a.jpg" not in again.candidates and "/photos/a.jpg" not in again.regions


def test_a_duplicate_path_copies_rows_under_its_own_name(target):
    with open_store(target) as store:
        fill(store)
        store.copy_results("/photos/a.jpg", "/other/copy.jpg", "copy.jpg")
        assert store.photos["/other/copy.jpg"] == {**photo_row("/photos/a.jpg"), "path": "/other/copy.jpg",
                                                   "file_name": "copy.jpg"}
        assert [(c["path"], c["rank"]) for c in store.candidates["/other/copy.jpg"]] == [("/other/copy.jpg", 1),
                                                                                         ("/other/copy.jpg", 2)]
        res = SAMPLE["float"]  # the rows' surface_res_deg
        assert store.done("/other/copy.jpg", "a" * 64, "m" * 64, None, res)
        assert not store.done("/other/copy.jpg", "a" * 64, "x", None, res)  # another model
        assert not store.done("/other/copy.jpg", "a" * 64, "m" * 64, None, 1.0)  # surfaces of another cell size
        assert store.finished_source("a" * 64, "m" * 64, None, res) == "/photos/a.jpg"
        assert store.finished_source("a" * 64, "m" * 64, "2021-07-01T12:00:00", res) is None  # another known time
        assert store.finished_source("a" * 64, "m" * 64, None, 1.0) is None


def test_a_row_the_schema_does_not_allow_is_refused_and_nothing_is_written(target):
    with open_store(target) as store:
        fill(store)
        for bad in ({"verdict": "probably fine"}, {"map_time": dt.datetime(2021, 7, 14, 21, 30)},  # naive: not UTC
                    {"pred_month": "7"}, {"geometry": shapely.box(0, 0, 1, 1)}, {"no_such_field": 1}):
            with pytest.raises(ValueError):
                store.set_results("/photos/d.jpg", photo_row("/photos/d.jpg", **bad), [], [])
        with pytest.raises(ValueError, match="MULTIPOLYGON"):
            store.set_results("/photos/d.jpg", photo_row("/photos/d.jpg"), [],
                              [{**region_row("/photos/d.jpg"), "geometry": shapely.Point(0, 0)}])
    assert counts(target) == (2, 2, 1, 1)


# A writer that commits batches of 20 photos (5 candidates, 2 regions, an embedding each) as fast as it can until
# it is killed: the parent kills it while it writes, most likely inside a commit.
BUSY_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_postgis_store import candidate_row, photo_row, region_row
    from gtloc_engine.io.store import open_store
    store = open_store(sys.argv[1])
    batch = 0
    while True:
        for i in range(20):
            key = f"/p/{{batch}}_{{i}}.jpg"
            store.set_results(key, photo_row(key), [candidate_row(key, r) for r in range(1, 6)], [region_row(key)] * 2)
            store.set_embedding(f"{{batch:06d}}{{i:06d}}".ljust(64, "0"), "m" * 64, np.ones(512))
        store.commit()
        print(batch, flush=True)
        batch += 1
""")


def test_a_writer_killed_with_sigkill_keeps_every_committed_batch_and_never_half_of_one(target):
    proc = subprocess.Popen([sys.executable, "-c", BUSY_WRITER.format(tests=str(TESTS)), str(target)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    committed = -1
    try:
        while committed < 2:  # three batches committed, the fourth on its way
            line = proc.stdout.readline()
            assert line, proc.stderr.read()[-2000:]
            committed = int(line)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    photos, candidates, regions, embeddings = counts(target)
    assert photos >= 60 and photos % 20 == 0  # whole batches only
    assert (candidates, regions, embeddings) == (5 * photos, 2 * photos, photos)
    with open_store(target) as store:
        store.set_results("/p/new.jpg", photo_row("/p/new.jpg"), [], [])  # it takes new rows again
    assert counts(target)[0] == photos + 1


# One of two writers on the same 40 paths, in opposite orders, five rounds of batches of 8: each path's rows are
# replaced under the other's feet all the time.
RACING_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_postgis_store import candidate_row, photo_row, region_row
    from gtloc_engine.io.store import open_store
    target, name, order = sys.argv[1], sys.argv[2], sys.argv[3]
    paths = [f"/shared/{{i:02d}}.jpg" for i in range(40)]
    if order == "reversed":
        paths.reverse()
    store = open_store(target)
    for round_ in range(5):
        for start in range(0, len(paths), 8):
            for key in paths[start:start + 8]:
                store.set_results(key, photo_row(key, notes=name), [candidate_row(key, r) for r in (1, 2, 3)],
                                  [region_row(key)])
                store.set_embedding(key.ljust(64, "0"), "m" * 64, np.full(16, round_))
            store.commit()
            store.done(paths[start], "a" * 64, "m" * 64)  # lookups between batches, as the pipeline does
    store.close()
    print("ok", flush=True)
""")


def test_two_writer_processes_on_the_same_paths_leave_every_path_once(target):
    writers = [subprocess.Popen([sys.executable, "-c", RACING_WRITER.format(tests=str(TESTS)), str(target), name,
                                 order], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, order in (("one", "forward"), ("two", "reversed"))]
    outputs = [w.communicate(timeout=300) for w in writers]
    assert [w.returncode for w in writers] == [0, 0], [err[-2000:] for _, err in outputs]
    assert counts(target) == (40, 120, 40, 40)
    with open_store(target) as store:
        assert all(len(c) == 3 and {r["rank"] for r in c} == {1, 2, 3} for c in store.candidates.values())
        assert {row["notes"] for row in store.photos.values()} <= {"one", "two"}


# ------------------------------------------------------------------------------------------- PostGIS itself


def test_layers_are_postgis_geometries_in_epsg_4326_with_typed_columns_and_gist_indexes(pg_case):
    with open_store(pg_case) as store:
        fill(store)
    with psycopg.connect(pg_case) as db:
        geometry_columns = db.execute("SELECT f_table_name, f_geometry_column, type, srid FROM geometry_columns "
                                      "ORDER BY f_table_name").fetchall()
        assert geometry_columns == [("candidates", "geom", "POINT", 4326), ("photos", "geom", "POINT", 4326),
                                    ("regions", "geom", "MULTIPOLYGON", 4326)]
        x, y = db.execute("SELECT ST_X(geom), ST_Y(geom) FROM photos WHERE path = '/photos/a.jpg'").fetchone()
        assert (x, y) == (2.35, 48.85)  # x = lon, y = lat
        # the regions' two polygons, and a bounding-box query answered through the spatial index
        assert db.execute("SELECT ST_NumGeometries(geom) FROM regions").fetchone()[0] == 2
        assert db.execute("SELECT count(*) FROM regions WHERE geom && ST_MakeEnvelope(-76, 39, -72, 42, 4326)"
                          ).fetchone()[0] == 1
        gist = {r[0] for r in db.execute("SELECT tablename FROM pg_indexes WHERE indexdef LIKE '%USING gist%'")}
        assert gist == {"photos", "candidates", "regions"}
        types = dict(db.execute("SELECT column_name, data_type FROM information_schema.columns "
                                "WHERE table_name = 'photos'").fetchall())
        assert {name: types[name] for name in schema.PHOTO_FIELDS} == {
            f.name: PG_TYPES[f.kind] for f in schema.PHOTOS.fields}
        when = db.execute("SELECT map_time FROM photos WHERE path = '/photos/a.jpg'").fetchone()[0]
        assert when == dt.datetime(2001, 6, 16, 12, 15, tzinfo=dt.timezone.utc)  # a real instant, not text
        info = dict(db.execute("SELECT key, value FROM gtloc_info").fetchall())
        assert info["format"] == "gtloc-results" and info["format_version"] == str(schema.FORMAT_VERSION)


def test_a_password_in_the_target_is_refused_before_connecting(pg_server, pg_case):
    for bad in (pg_case.replace("gtloc_admin@", "gtloc_admin:s3cret@"), pg_case + "&password=s3cret",
                "service=case password=s3cret"):
        with pytest.raises(GtlocError, match="PGPASSWORD") as info:
            open_store(bad)
        assert "\n" not in str(info.value) and "s3cret" not in str(info.value)
    assert pg_server.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'photos'",
                          database=dbname(pg_case)) == "0"


def test_a_password_comes_from_pgpassword_or_a_pgpass_file(pg_server, pg_case, tmp_path, monkeypatch):
    pg_server.add_role("analyst_pw", password="correct horse")
    database = dbname(pg_case)
    pg_server.psql(f'GRANT CREATE, CONNECT ON DATABASE "{database}" TO analyst_pw; '
                   "GRANT CREATE ON SCHEMA public TO analyst_pw", database=database)
    url = pg_server.url(database, "analyst_pw")
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    with pytest.raises(GtlocError, match="PGPASSWORD") as info:
        open_store(url)
    assert "\n" not in str(info.value)
    monkeypatch.setenv("PGPASSWORD", "correct horse")
    with open_store(url) as store:
        fill(store)
    monkeypatch.delenv("PGPASSWORD")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"*:*:{database}:analyst_pw:correct horse\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    with open_store(url) as store:
        assert len(store.photos) == 2


def test_a_viewer_role_reads_and_searches_but_is_refused_writing_with_one_line(pg_server, pg_case):
    with open_store(pg_case) as store:
        fill(store)
    database = dbname(pg_case)
    pg_server.add_role("viewer")
    pg_server.psql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO viewer", database=database)
    viewer = pg_server.url(database, "viewer")
    with pytest.raises(GtlocError, match="may only read") as info:
        open_store(viewer)
    assert "\n" not in str(info.value)
    from gtloc_engine.inference.search import load_collection

    collection = load_collection(viewer, "m" * 64)
    assert collection.sha256 == ["a" * 64] and collection.paths == [["/photos/a.jpg"]]


def _team_server_sql() -> tuple[list[str], str]:
    """docs/team-server.md's role statements (CREATE ROLE lines) and its grants block, as written there."""
    text = (TESTS.parent / "docs" / "team-server.md").read_text(encoding="utf-8")
    roles = [line for line in text.splitlines() if line.startswith("CREATE ROLE ")]
    grants = text.split("<!-- case-grants", 1)[1].split("```sql\n", 1)[1].split("```", 1)[0]
    return roles, grants


def test_the_documented_roles_let_analysts_write_and_viewers_only_read(pg_server):
    """docs/team-server.md's roles and grants, run as written: the owner's first run makes the tables, an analyst
    writes (identity columns and upserts need no more rights), a viewer reads and searches, and neither can alter
    the tables or gtloc_info."""
    roles, grants = _team_server_sql()
    pg_server.add_role("alice")
    for statement in roles:
        pg_server.psql(statement)
    pg_server.create_database("case_kyiv", owner="alice")
    with open_store(pg_server.url("case_kyiv", "alice")) as store:
        fill(store)
    pg_server.psql(grants, database="case_kyiv", user="alice")

    with open_store(pg_server.url("case_kyiv", "bob")) as store:
        store.set_results("/bob/x.jpg", photo_row("/bob/x.jpg"), [candidate_row("/bob/x.jpg", 1)],
                          [region_row("/bob/x.jpg")])
        store.copy_results("/photos/a.jpg", "/bob/copy.jpg", "copy.jpg")
        store.set_failure("/photos/b.jpg", "bob's retry failed")
        store.set_embedding("a" * 64, "m" * 64, np.zeros(8))
        assert set(store.photos) == {"/photos/a.jpg", "/bob/x.jpg", "/bob/copy.jpg"}
    for statement in ("DROP TABLE photos", "UPDATE gtloc_info SET value = '1'", "ALTER TABLE photos ADD x int"):
        for user in ("bob", "carol"):
            with pytest.raises(subprocess.CalledProcessError):
                pg_server.psql(statement, database="case_kyiv", user=user)
    with pytest.raises(GtlocError, match="'carol' may only read"):
        open_store(pg_server.url("case_kyiv", "carol"))
    from gtloc_engine.inference.search import load_collection

    assert load_collection(pg_server.url("case_kyiv", "carol"), "m" * 64).paths == [  # all three hold one bytes
        ["/bob/copy.jpg", "/bob/x.jpg", "/photos/a.jpg"]]


def test_a_database_that_is_not_a_gtloc_case_is_refused_and_left_alone(pg_server, pg_case):
    database = dbname(pg_case)
    pg_server.psql("CREATE TABLE photos (id int, caption text); INSERT INTO photos VALUES (1, 'mine')",
                   database=database)
    with pytest.raises(GtlocError, match="not a gtloc case") as info:
        open_store(pg_case)
    assert "\n" not in str(info.value)
    assert pg_server.psql("SELECT caption FROM photos", database=database) == "mine"
    assert pg_server.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'gtloc_info'", database=database) == "0"


def test_a_newer_case_is_refused_and_an_older_one_gets_its_missing_columns(pg_server, pg_case):
    with open_store(pg_case) as store:
        fill(store)
    database = dbname(pg_case)
    pg_server.psql("UPDATE gtloc_info SET value = '99' WHERE key = 'format_version'", database=database)
    with pytest.raises(GtlocError, match="newer"):
        open_store(pg_case)
    pg_server.psql(f"UPDATE gtloc_info SET value = '{schema.FORMAT_VERSION - 1}' WHERE key = 'format_version'; "
                   "ALTER TABLE photos DROP COLUMN map_time_local", database=database)
    with open_store(pg_case) as store:
        assert store.photos["/photos/a.jpg"]["map_time_local"] is None  # the column is back, the rows kept
        assert store.done("/photos/a.jpg", "a" * 64, "m" * 64, None, SAMPLE["float"])
    assert pg_server.psql("SELECT value FROM gtloc_info WHERE key = 'format_version'",
                          database=database) == str(schema.FORMAT_VERSION)


def test_a_database_without_postgis_gets_it_when_the_role_may_add_it(pg_server):
    url = pg_server.create_database("case_without_postgis", postgis=False)
    with open_store(url) as store:
        fill(store)
    assert pg_server.psql("SELECT extname FROM pg_extension WHERE extname = 'postgis'",
                          database="case_without_postgis") == "postgis"


# ------------------------------------------------------------------------------------------- the real pipeline


@pytest.fixture(scope="module")
def pipeline(trained_checkpoint, cache_dir):
    return PhotoPipeline(trained_checkpoint, top_k=2, cache_dir=cache_dir, config=FAST)


@pytest.fixture(scope="module")
def toy_images(toy_manifest):
    return [Image.open(p).convert("RGB") for p in sorted((toy_manifest.parent / "img").glob("*.png"))[:8]]


@pytest.fixture
def album(tmp_path, toy_images) -> Path:
    folder = tmp_path / "album"
    write_jpeg_with_exif(toy_images[0], folder / "paris.jpg", lat_deg=48.8566, lon_deg=2.3522,
                         local_datetime=dt.datetime(2021, 7, 14, 21, 30))
    write_jpeg_with_exif(toy_images[1], folder / "time_only.jpg", local_datetime=dt.datetime(2020, 1, 2, 8, 0))
    toy_images[2].save(folder / "plain.png")
    return folder


def test_the_pipeline_resumes_copies_duplicates_and_retries_failures_in_a_case(pipeline, album, pg_case,
                                                                                toy_images):
    summary = pipeline.run([album], pg_case)
    assert (summary.n_done, summary.n_failed) == (3, 0) and summary.to_json()["out_gpkg"] == pg_case
    with open_store(pg_case) as store:
        first = store.photos
    assert pipeline.run([album], pg_case).n_skipped == 3
    with open_store(pg_case) as store:
        assert store.photos == first  # processed_at_utc included: nothing recomputed

    shutil.copy(album / "time_only.jpg", album / "copy.jpg")  # the same bytes under another name
    broken = album / "broken.jpg"
    write_jpeg_with_exif(toy_images[3], broken)
    good = broken.read_bytes()
    broken.write_bytes(good[: len(good) // 3])
    summary = pipeline.run([album], pg_case)
    assert (summary.n_done, summary.n_skipped, summary.n_failed) == (1, 3, 1)
    with open_store(pg_case) as store:
        photos = store.photos
        copy, original = photos[str(album / "copy.jpg")], photos[str(album / "time_only.jpg")]
        assert copy["processed_at_utc"] == original["processed_at_utc"] and copy["file_name"] == "copy.jpg"
        assert set(store.failures) == {str(broken)} and "broken.jpg" in store.failures[str(broken)]["reason"]
        assert len(store.embeddings) == 3
    broken.write_bytes(good)
    summary = pipeline.run([album], pg_case)
    assert (summary.n_done, summary.n_failed) == (1, 0)
    with open_store(pg_case) as store:
        assert store.failures == {} and len(store.photos) == 5
        assert {len(c) for c in store.candidates.values()} == {2}


def test_search_over_a_case_answers_as_over_the_geopackage_of_the_same_photos(pipeline, album, pg_case, tmp_path,
                                                                              trained_checkpoint):
    gpkg = tmp_path / "same.gpkg"
    pipeline.run([album], gpkg)
    pipeline.run([album], pg_case)
    query = SearchQuery(near_latlon_deg=(48.85, 2.35), top_k=5)
    from_gpkg = CollectionSearch(gpkg, trained_checkpoint).search(query)
    from_case = CollectionSearch(pg_case, trained_checkpoint).search(query)
    assert [(r["sha256"], r["paths"], r["score"], r["lat_deg"]) for r in from_case["results"]] == [
        (r["sha256"], r["paths"], r["score"], r["lat_deg"]) for r in from_gpkg["results"]]
    assert len(from_case["results"]) == 3 and from_case["gpkg"] == pg_case
    # FAISS over the case: its index is cached under $GTLOC_CACHE/search, keyed by the collection
    approximate = CollectionSearch(pg_case, trained_checkpoint, config=SearchConfig(exact_max_rows=0))
    assert approximate.search(query)["method"] == "faiss"
    sidecar = approximate.sidecar_path
    assert sidecar.is_relative_to(os.environ["GTLOC_CACHE"]) and sidecar.is_file()
    stamp = sidecar.stat().st_mtime_ns
    CollectionSearch(pg_case, trained_checkpoint, config=SearchConfig(exact_max_rows=0)).search(query)
    assert sidecar.stat().st_mtime_ns == stamp  # the same collection: loaded, not rebuilt


# ------------------------------------------------------------------------------------------- `gtloc predict`


def gtloc_command(*args) -> list[str]:
    return [sys.executable, "-m", "gtloc_engine.cli", *map(str, args)]


def engine_env(cache_dir: Path) -> dict:
    return {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "GTLOC_CACHE": str(cache_dir)}


def copy_toy_photos(toy_manifest: Path, folder: Path, indices: range) -> None:
    folder.mkdir(parents=True)
    sources = sorted((toy_manifest.parent / "img").glob("*.png"))
    for i in indices:
        shutil.copy(sources[i], folder / sources[i].name)


@pytest.mark.slow
def test_gtloc_predict_killed_with_sigkill_keeps_its_batches_and_the_rerun_completes(
        trained_checkpoint, toy_manifest, tmp_path, cache_dir, pg_case):
    folder = tmp_path / "photos"
    copy_toy_photos(toy_manifest, folder, range(40))
    args = ["predict", folder, "--model", trained_checkpoint, "--out", pg_case, "--top-k", "2", "--res-deg", "1",
            "--batch-size", "2", "--quiet"]
    proc = subprocess.Popen(gtloc_command(*args), env=engine_env(cache_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen, deadline = 0, time.monotonic() + 240
    try:
        with psycopg.connect(pg_case, autocommit=True) as db:
            while seen < 6 and proc.poll() is None and time.monotonic() < deadline:  # three batches committed
                time.sleep(0.05)
                if db.execute("SELECT to_regclass('photos')").fetchone()[0] is not None:
                    seen = db.execute("SELECT count(*) FROM photos").fetchone()[0]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"it ended on its own before the kill: {stderr[-2000:]}"
    with open_store(pg_case) as store:
        kept = store.photos
        assert seen <= len(kept) < 40
        assert set(store.candidates) == set(kept) and {len(c) for c in store.candidates.values()} == {2}
        assert set(store.regions) == set(kept)  # no photo half written

    again = subprocess.run(gtloc_command(*args), env=engine_env(cache_dir), capture_output=True, text=True,
                           timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["n_skipped"], summary["n_done"]) == (len(kept), 40 - len(kept))
    with open_store(pg_case) as store:
        photos = store.photos
        assert len(photos) == 40 and sum(map(len, store.candidates.values())) == 80
        assert all(photos[p]["processed_at_utc"] == kept[p]["processed_at_utc"] for p in kept)  # kept rows untouched


@pytest.mark.slow
def test_two_gtloc_predict_runs_on_overlapping_folders_produce_every_photo_once(trained_checkpoint, toy_manifest,
                                                                                 tmp_path, cache_dir, pg_case):
    shared = tmp_path / "shared"
    copy_toy_photos(toy_manifest, shared, range(12))
    for name, extra in (("a", range(12, 18)), ("b", range(18, 24))):
        copy_toy_photos(toy_manifest, tmp_path / name, extra)
    runs = [subprocess.Popen(gtloc_command("predict", shared, tmp_path / name, "--model", trained_checkpoint, "--out",
                                           pg_case, "--top-k", "2", "--res-deg", "1", "--batch-size", "3", "--quiet"),
                             env=engine_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in ("a", "b")]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    summaries = [json.loads(out) for out, _ in outputs]
    assert [s["n_photos"] for s in summaries] == [18, 18]
    with open_store(pg_case) as store:
        photos = store.photos
        assert sorted(Path(p).name for p in photos) == sorted(
            p.name for p in sorted((toy_manifest.parent / "img").glob("*.png"))[:24])
        assert {len(c) for c in store.candidates.values()} == {2} and len(store.candidates) == 24
        assert len(store.embeddings) == len({row["sha256"] for row in photos.values()})


@pytest.mark.slow
def test_gtloc_predict_refuses_a_password_on_the_command_line_with_one_line(trained_checkpoint, album, pg_case,
                                                                             cache_dir):
    bad = pg_case.replace("gtloc_admin@", "gtloc_admin:hunter2@")
    proc = subprocess.run(gtloc_command("predict", album, "--model", trained_checkpoint, "--out", bad),
                          env=engine_env(cache_dir), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "hunter2" not in proc.stderr
    assert "PGPASSWORD" in proc.stderr and proc.stdout == ""
