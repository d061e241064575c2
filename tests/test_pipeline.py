"""Photos -> results GeoPackage through the real pipeline on real files (JPEGs with real EXIF, HEIC, hostile
inputs), read back with geopandas, sqlite3 and rasterio and checked by GDAL's validate_gpkg.py; resume, duplicates,
failures, cancel, commits per batch; `gtloc predict` as a real subprocess, also killed with SIGKILL mid-run."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
from photo_files import (
    EXIFTOOL, dms, exiftool_write, gps_position, noise_image, png_claiming_size, save_jpeg_with_raw_exif,
)
from PIL import Image
from PIL.TiffImagePlugin import IFDRational
from gpkg_validator import validate_gpkg

from gtloc_engine.errors import GtlocError
from gtloc_engine.inference.pipeline import PhotoPipeline, PipelineConfig, StageProfile, predict_to_geopackage
from gtloc_engine.io.exif import write_jpeg_with_exif

PARIS_LATLON = (48.8566, 2.3522)
CLAIMED_TIME = dt.datetime(2021, 7, 14, 21, 30, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))


# 1-degree surfaces: small grid constants and fast surfaces; the tiny toy model's posterior is speckled at any
# resolution (its credible regions are coarsened to RegionConfig.max_polygons polygons, see regions.py).
FAST = PipelineConfig(global_res_deg=1.0)


@pytest.fixture(scope="module")
def pipeline(trained_checkpoint, cache_dir):
    return PhotoPipeline(trained_checkpoint, top_k=3, cache_dir=cache_dir, config=FAST)


@pytest.fixture(scope="module")
def toy_images(toy_manifest):
    return [Image.open(p).convert("RGB") for p in sorted((toy_manifest.parent / "img").glob("*.png"))[:12]]


@pytest.fixture
def album(tmp_path, toy_images) -> Path:
    """Three photos: place + time claimed (non-ASCII name), time only, no EXIF at all."""
    folder = tmp_path / "album"
    write_jpeg_with_exif(toy_images[0], folder / "été_東京.jpg", lat_deg=PARIS_LATLON[0], lon_deg=PARIS_LATLON[1],
                         local_datetime=CLAIMED_TIME)
    write_jpeg_with_exif(toy_images[1], folder / "time_only.jpg", local_datetime=dt.datetime(2020, 1, 2, 8, 0))
    toy_images[2].save(folder / "plain.png")
    return folder


def _photos(gpkg: Path) -> gpd.GeoDataFrame:
    return gpd.read_file(gpkg, layer="photos").set_index("file_name")


def _table_count(gpkg: Path, table: str) -> int:
    with sqlite3.connect(gpkg) as db:
        count = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    db.close()
    return count


# ------------------------------------------------------------------------------------------- layers and fields


def test_writes_photos_candidates_regions_and_embeddings(pipeline, album, tmp_path):
    out = tmp_path / "results.gpkg"
    summary = pipeline.run([album], out)
    assert (summary.n_photos, summary.n_done, summary.n_skipped, summary.n_failed) == (3, 3, 0, 0)
    assert summary.to_json()["out_gpkg"] == str(out) and not summary.cancelled
    photos = _photos(out)
    assert photos.crs.to_epsg() == 4326 and len(photos) == 3
    assert set(photos.sha256) == {pipeline_sha(album / n) for n in photos.index}
    assert (photos.model_sha256 == pipeline.model_sha256).all()

    claimed = photos.loc["été_東京.jpg"]
    assert (claimed.geometry.x, claimed.geometry.y) == pytest.approx(PARIS_LATLON[::-1], abs=1e-6)  # lon, lat
    assert claimed.point_source == "claim" and claimed.time_given == "claimed place"
    assert claimed.claimed_time_local == "2021-07-14T21:30:05" and claimed.claimed_utc_offset_min == 120
    # map_time is UTC (a GeoPackage DATETIME) where the offset is known; map_time_local the local wall clock.
    assert claimed.map_time == pd.Timestamp("2021-07-14T19:30:05", tz="UTC")
    assert claimed.map_time_local == "2021-07-14T21:30:05" and claimed.map_time_source == "claim"
    assert claimed.verdict in {"consistent", "doubtful", "inconsistent", "inconclusive"}
    assert pd.notna(claimed.place_verdict) and pd.notna(claimed.time_verdict)
    assert claimed.place_evidence > 0 and claimed.time_evidence >= 0 and 0 <= claimed.place_level <= 1
    assert (photos.surface_res_deg == 1.0).all()

    time_only = photos.loc["time_only.jpg"]
    assert time_only.point_source == "prediction" and time_only.time_given == "image only"
    assert (time_only.geometry.y, time_only.geometry.x) == (time_only.pred_lat_deg, time_only.pred_lon_deg)
    assert pd.isna(time_only.place_verdict) and time_only.verdict == time_only.time_verdict
    assert time_only.map_time_source == "claim" and time_only.map_time_local == "2020-01-02T08:00:00"
    assert pd.isna(time_only.map_time)  # no UTC offset in its EXIF: no UTC time

    plain = photos.loc["plain.png"]
    assert plain.verdict == "no claim" and plain.map_time_source == "prediction" and pd.isna(plain.map_time)
    # The predicted month/hour placed in the reference year 2001, at whole minutes, as the local wall clock.
    local = dt.datetime.fromisoformat(plain.map_time_local)
    assert (local - dt.datetime(2001, 1, 1)).days == int(plain.pred_month_pos * 365 / 12) and local.second == 0
    assert abs(local.hour + local.minute / 60 - plain.pred_hour_local) < 1 / 60 + 1e-9
    assert 1 <= plain.pred_month <= 12 and plain.pred_month == int(plain.pred_month_pos) + 1
    for row in photos.itertuples():
        grid = np.array(json.loads(row.time_posterior))
        assert grid.shape == (12, 24) and grid.sum() == pytest.approx(1.0, abs=1e-4) and (grid >= 0).all()
        assert row.hour_spread > 0 and row.month_spread > 0 and 0 < row.top1_prob <= 1

    candidates = gpd.read_file(out, layer="candidates")
    assert candidates.crs.to_epsg() == 4326 and len(candidates) == 9
    for path, group in candidates.groupby("path"):
        assert sorted(group["rank"]) == [1, 2, 3]
        top = group[group["rank"] == 1].iloc[0]
        row = photos[photos.path == path].iloc[0]
        assert (top.lat_deg, top.lon_deg) == (row.pred_lat_deg, row.pred_lon_deg)
        assert (top.geometry.x, top.geometry.y) == (top.lon_deg, top.lat_deg)

    regions = gpd.read_file(out, layer="regions")
    assert regions.crs.to_epsg() == 4326 and set(regions.geom_type) == {"MultiPolygon"}
    for _, group in regions.groupby("path"):
        by_level = group.set_index("level")
        assert set(by_level.index) == {0.5, 0.9}
        assert by_level.loc[0.5, "area_km2"] < by_level.loc[0.9, "area_km2"]
        assert by_level.loc[0.9, "mass"] >= 0.9 - 1e-6
    assert _table_count(out, "embeddings") == 3 and _table_count(out, "failures") == 0
    assert validate_gpkg(out) == []


def pipeline_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------- resume


def test_rerun_skips_everything_and_adding_a_photo_processes_only_it(pipeline, album, tmp_path, toy_images):
    out = tmp_path / "results.gpkg"
    pipeline.run([album], out)
    first = _photos(out)
    summary = pipeline.run([album], out)
    assert (summary.n_done, summary.n_skipped, summary.n_failed) == (0, 3, 0)
    again = _photos(out)
    assert again.sort_index().equals(first.sort_index())  # processed_at_utc included: nothing recomputed
    assert len(gpd.read_file(out, layer="candidates")) == 9 and _table_count(out, "embeddings") == 3

    write_jpeg_with_exif(toy_images[3], album / "new.jpg")
    summary = pipeline.run([album], out)
    assert (summary.n_done, summary.n_skipped) == (1, 3)
    after = _photos(out)
    assert len(after) == 4
    assert after.drop(index="new.jpg").sort_index().processed_at_utc.equals(first.sort_index().processed_at_utc)


def test_a_run_at_another_surface_resolution_redraws_and_then_resumes(pipeline, trained_checkpoint, cache_dir, album,
                                                                     tmp_path):
    out = tmp_path / "results.gpkg"
    pipeline.run([album], out)  # 1 deg
    coarser = PhotoPipeline(trained_checkpoint, top_k=3, cache_dir=cache_dir, config=PipelineConfig(global_res_deg=2.0))
    summary = coarser.run([album], out)
    assert (summary.n_done, summary.n_skipped) == (3, 0)  # the 1 deg results are not taken for 2 deg ones
    photos = _photos(out)
    assert len(photos) == 3 and set(photos["surface_res_deg"]) == {2.0}
    edges = np.concatenate([np.asarray(polygon.exterior.coords) for regions in
                            gpd.read_file(out, layer="regions").geometry for polygon in regions.geoms])
    assert np.allclose(np.remainder(edges, 2.0), 0.0)  # every region drawn on the 2 deg cells
    assert len(gpd.read_file(out, layer="candidates")) == 9  # replaced, not added
    assert (coarser.run([album], out).n_skipped, pipeline.run([album], out).n_done) == (3, 3)


def test_a_changed_file_is_recomputed_and_replaces_its_rows(pipeline, album, tmp_path, toy_images):
    out = tmp_path / "results.gpkg"
    pipeline.run([album], out)
    toy_images[5].save(album / "plain.png")  # new bytes under the same path
    summary = pipeline.run([album], out)
    assert (summary.n_done, summary.n_skipped) == (1, 2)
    photos = _photos(out)
    assert len(photos) == 3 and photos.loc["plain.png", "sha256"] == pipeline_sha(album / "plain.png")
    assert len(gpd.read_file(out, layer="candidates")) == 9


def test_duplicate_files_are_computed_once_with_one_row_per_path(pipeline, album, tmp_path):
    (album / "sub").mkdir()
    shutil.copy(album / "time_only.jpg", album / "sub" / "copy.jpg")
    out = tmp_path / "results.gpkg"
    summary = pipeline.run([album, album / "time_only.jpg"], out)  # the same file given twice counts once
    assert (summary.n_photos, summary.n_done) == (4, 4)
    photos = _photos(out)
    original, copy = photos.loc["time_only.jpg"], photos.loc["copy.jpg"]
    assert original.sha256 == copy.sha256 and original.path != copy.path
    assert original.processed_at_utc == copy.processed_at_utc  # one computation, two rows
    assert _table_count(out, "embeddings") == 3
    candidates = gpd.read_file(out, layer="candidates")
    assert (candidates.path == copy.path).sum() == 3
    # A later copy of finished bytes is copied, not recomputed.
    shutil.copy(album / "time_only.jpg", album / "sub" / "copy2.jpg")
    pipeline.run([album], out)
    assert _photos(out).loc["copy2.jpg", "processed_at_utc"] == original.processed_at_utc


def test_a_copy_whose_original_now_fails_still_gets_results(pipeline, album, tmp_path):
    out = tmp_path / "results.gpkg"
    pipeline.run([album], out)
    (album / "sub").mkdir()
    shutil.copy(album / "time_only.jpg", album / "sub" / "copy.jpg")
    (album / "time_only.jpg").write_bytes(b"")  # the original breaks before its copy is reached
    summary = pipeline.run([album / "time_only.jpg", album / "sub" / "copy.jpg"], out)
    assert (summary.n_done, summary.n_failed) == (1, 1)
    photos = _photos(out)
    assert "copy.jpg" in photos.index and "time_only.jpg" not in photos.index
    assert pyogrio.read_dataframe(out, layer="failures").path.tolist() == [str((album / "time_only.jpg").absolute())]


def test_failures_are_recorded_retried_and_cleared(pipeline, album, tmp_path, toy_images):
    broken = album / "broken.jpg"
    write_jpeg_with_exif(toy_images[4], broken)
    good_bytes = broken.read_bytes()
    broken.write_bytes(good_bytes[: len(good_bytes) // 3])
    out = tmp_path / "results.gpkg"
    summary = pipeline.run([album], out)
    assert (summary.n_done, summary.n_failed) == (3, 1)
    assert summary.failures[0][0] == str(broken.absolute()) and "truncated" in summary.failures[0][1]
    failures = pyogrio.read_dataframe(out, layer="failures")
    assert failures.path.tolist() == [str(broken.absolute())] and "broken.jpg" in failures.reason.iloc[0]
    assert "broken.jpg" not in _photos(out).index

    summary = pipeline.run([album], out)  # still broken: retried, still one failure row
    assert (summary.n_failed, summary.n_skipped) == (1, 3) and _table_count(out, "failures") == 1

    broken.write_bytes(good_bytes)
    summary = pipeline.run([album], out)
    assert (summary.n_done, summary.n_failed) == (1, 0)
    assert _table_count(out, "failures") == 0 and "broken.jpg" in _photos(out).index


def test_cancel_stops_after_the_batch_and_keeps_a_valid_file(pipeline, album, tmp_path):
    out = tmp_path / "results.gpkg"
    cancel = threading.Event()
    summary = pipeline.run([album], out, batch_size=1, progress=lambda done, total: cancel.set(), cancel=cancel)
    assert summary.cancelled and summary.n_done == 1
    assert len(_photos(out)) == 1 and len(gpd.read_file(out, layer="candidates")) == 3
    assert validate_gpkg(out) == []
    summary = pipeline.run([album], out)
    assert (summary.n_done, summary.n_skipped) == (2, 1) and len(_photos(out)) == 3


class ThreadRecordingProfile(StageProfile):
    """A real StageProfile that also notes, per stage, the threads it ran on and the order the stages began."""

    def __init__(self):
        super().__init__()
        self.threads: dict[str, set[str]] = {}
        self.began: list[str] = []

    def stage(self, name):
        self.threads.setdefault(name, set()).add(threading.current_thread().name)
        self.began.append(name)
        return super().stage(name)


def test_the_next_batchs_forward_runs_on_a_thread_while_this_batch_is_analysed(trained_checkpoint, cache_dir,
                                                                               album, tmp_path):
    rows = {}
    for overlap in (True, False):
        pipe = PhotoPipeline(trained_checkpoint, top_k=3, cache_dir=cache_dir,
                             config=dataclasses.replace(FAST, overlap_forward=overlap))
        pipe.profile = profile = ThreadRecordingProfile()
        summary = pipe.run([album], tmp_path / f"{overlap}.gpkg", batch_size=1)
        assert summary.n_done == 3 and not summary.failures
        rows[overlap] = _photos(tmp_path / f"{overlap}.gpkg").sort_index()
        forward_threads = profile.threads["forward"]
        assert profile.threads["global_surface_candidates"] == {threading.main_thread().name}
        if overlap:
            assert len(forward_threads) == 1 and next(iter(forward_threads)).startswith("gtloc-forward")
            # One batch ahead, never more: when a photo's geodata begins, at most the next photo's forward has.
            order = [name for name in profile.began if name in ("forward", "global_surface_candidates")]
            assert len(order) == 6 and all(order[:k].count("forward") - order[:k].count("global_surface_candidates")
                                           <= 2 for k in range(len(order) + 1))
        else:
            assert forward_threads == {threading.main_thread().name}
    columns = ["pred_lat_deg", "pred_lon_deg", "top1_prob", "place_level", "pred_month", "pred_hour_local", "verdict"]
    assert rows[True][columns].equals(rows[False][columns])


def test_each_batch_is_committed_before_its_progress_report(pipeline, album, tmp_path):
    out = tmp_path / "results.gpkg"
    seen = []
    inode = []

    def progress(done, total):
        # sqlite3 only while the run's store is open: GDAL (pyogrio) carries its own SQLite, and one SQLite closing
        # the file in this process would drop the other's POSIX locks.
        seen.append((done, *(_table_count(out, table) for table in ("photos", "candidates", "embeddings"))))
        inode.append(out.stat().st_ino)

    pipeline.run([album], out, batch_size=1, progress=progress)
    assert seen == [(1, 1, 3, 1), (2, 2, 6, 2), (3, 3, 9, 3)]
    assert len(set(inode)) == 1  # written in place: the same file throughout, no rename
    # No journal, -wal or temp file left; the pictures' folder beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["album", "results.gpkg", "results_thumbs"]
    assert not [p for p in (tmp_path / "results_thumbs").iterdir() if p.name.startswith(".")]


def test_an_open_reader_neither_blocks_nor_sees_a_run_half_way(pipeline, album, tmp_path, caplog):
    """A reader in the middle of a read transaction for the whole run (a program with the file open): in WAL mode,
    the default, the batches commit without waiting and the reader keeps its consistent snapshot until it ends."""
    out = tmp_path / "results.gpkg"
    pipeline.run([album / "plain.png"], out)
    reader = sqlite3.connect(out, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM photos").fetchone()[0] == 1
    seen = []
    summary = pipeline.run([album], out, batch_size=1, progress=lambda done, total: seen.append(
        (_table_count(out, "photos"), reader.execute("SELECT count(*) FROM photos").fetchone()[0])))
    assert (summary.n_done, summary.n_skipped, summary.n_failed) == (2, 1, 0)
    assert seen == [(1, 1), (2, 1), (3, 1)]  # committed for everyone else, the reader's snapshot unchanged
    assert not any("locked" in r.message for r in caplog.records)
    reader.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM photos").fetchone()[0] == 3
    reader.close()
    assert validate_gpkg(out) == []


def test_an_existing_file_that_is_not_ours_is_refused_and_kept(pipeline, album, tmp_path):
    out = tmp_path / "notes.gpkg"
    out.write_text("field notes, not a GeoPackage")
    with pytest.raises(GtlocError, match="not a gtloc results GeoPackage"):
        pipeline.run([album], out)
    assert out.read_text() == "field notes, not a GeoPackage"


def test_no_photos_is_one_clear_error(pipeline, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GtlocError, match="no photos found"):
        pipeline.run([tmp_path / "empty"], tmp_path / "r.gpkg")
    assert not (tmp_path / "r.gpkg").exists()


# ------------------------------------------------------------------------------------------- rasters


def test_rasters_are_written_recorded_and_sum_to_the_posterior(pipeline, album, tmp_path):
    out, rasters = tmp_path / "results.gpkg", album / "rasters"  # inside the photo folder: must not be re-read
    summary = pipeline.run([album / "plain.png"], out, rasters_dir=rasters)
    row = _photos(out).loc["plain.png"]
    regional = json.loads(row.raster_regional)
    assert sorted(summary.rasters) == sorted([row.raster_global, *regional]) and len(regional) == 3
    with rasterio.open(row.raster_global) as src:
        assert src.crs.to_epsg() == 4326 and src.bounds == (-180.0, -90.0, 180.0, 90.0) and src.res == (1.0, 1.0)
        assert src.read(1).sum(dtype=np.float64) == pytest.approx(1.0, abs=1e-4)
    for path in regional:
        with rasterio.open(path) as src:
            mass = src.read(1, masked=True).sum()
            assert src.crs.to_epsg() == 4326 and 0 < mass < 1
    # The candidates' top place lies in the first regional raster (it is centred on the top mode).
    with rasterio.open(regional[0]) as src:
        west, south, east, north = src.bounds
        assert south <= row.pred_lat_deg <= north and west <= row.pred_lon_deg <= east
    summary = pipeline.run([album], out, rasters_dir=rasters)
    assert summary.n_photos == 3 and summary.n_failed == 0  # the .tif files were not taken for photos


def test_a_geotiff_that_cannot_be_written_fails_its_photo_only_and_the_rerun_writes_it(pipeline, album, tmp_path):
    """GeoTIFFs are written on a background thread while the next photo is computed: a file that cannot be written
    (here a folder in its place) turns that photo's finished rows into a failure before the batch commits."""
    out, rasters = tmp_path / "results.gpkg", tmp_path / "rasters"
    stem = f"time_only_{pipeline_sha(album / 'time_only.jpg')[:12]}_{pipeline.model_sha256[:8]}"
    blocker = rasters / f"{stem}_regional_2.tif"
    blocker.mkdir(parents=True)
    summary = pipeline.run([album], out, rasters_dir=rasters, batch_size=3)
    assert summary.n_done == 2 and summary.n_failed == 1, summary
    [(path, reason)] = summary.failures
    assert path.endswith("time_only.jpg") and str(blocker) in reason and "another rasters folder" in reason
    rows = _photos(out)
    assert "time_only.jpg" not in rows.index and len(rows) == 2
    assert all(Path(p).is_file() for p in summary.rasters) and len(summary.rasters) == 2 * 4
    assert not any(stem in p for p in summary.rasters)
    with sqlite3.connect(out) as db:
        assert db.execute("SELECT count(*) FROM failures WHERE path LIKE '%time_only.jpg'").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM candidates WHERE path LIKE '%time_only.jpg'").fetchone()[0] == 0
    db.close()
    assert validate_gpkg(out) == []
    assert not list(rasters.glob(".*.tmp"))  # no temp file left behind

    blocker.rmdir()
    again = pipeline.run([album], out, rasters_dir=rasters, batch_size=3)  # the failure is retried
    assert (again.n_done, again.n_skipped, again.n_failed) == (1, 2, 0)
    row = _photos(out).loc["time_only.jpg"]
    assert [Path(p).is_file() for p in [row.raster_global, *json.loads(row.raster_regional)]] == [True] * 4
    assert _table_count(out, "failures") == 0


# ------------------------------------------------------------------------------------------- hostile input


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.fixture
def hostile_folder(tmp_path, toy_images) -> tuple[Path, set[str], set[str]]:
    """Every bad input of the issue in one folder: (folder, names that must fail, names that must succeed)."""
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "notes.jpg").write_text("this is not a photo\n" * 10)
    write_jpeg_with_exif(noise_image(128, 96), folder / "truncated.jpg")
    data = (folder / "truncated.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    png_claiming_size(folder / "bomb.png", 60_000, 60_000)
    _fifo(folder / "pipe.jpg")
    (folder / "gone.jpg").symlink_to(folder / "nowhere.jpg")
    fail = {"notes.jpg", "truncated.jpg", "empty.jpg", "bomb.png", "pipe.jpg", "gone.jpg"}

    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 3).astype(np.uint16)).save(folder / "deep16.png")
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 250, 20, 20] + [0, 0, 0] * 254)
    palette.save(folder / "palette.png", transparency=0)
    toy_images[6].convert("RGBA").save(folder / "alpha.png")
    save_jpeg_with_raw_exif(folder / "lat95.jpg", gps=gps_position("N", dms(95, 0, 0), "E", dms(10, 0, 0)))
    zero = IFDRational(0, 0)
    save_jpeg_with_raw_exif(folder / "zero_den.jpg", gps=gps_position("S", (IFDRational(12, 1), zero, zero), "W",
                                                                         dms(43, 10, 0)))
    write_jpeg_with_exif(toy_images[7], folder / "фото 1.jpg", lat_deg=-33.9, lon_deg=151.2)
    shutil.copy(folder / "фото 1.jpg", folder / "фото 1 (copy).jpg")
    ok = {"cmyk.jpg", "deep16.png", "palette.png", "alpha.png", "lat95.jpg", "zero_den.jpg", "фото 1.jpg",
          "фото 1 (copy).jpg"}
    if os.geteuid() != 0:  # root reads anything, so a mode-000 file is only unreadable for other users
        locked = folder / "locked.jpg"
        shutil.copy(folder / "cmyk.jpg", locked)
        locked.chmod(0)
        fail.add("locked.jpg")
    return folder, fail, ok


def test_hostile_inputs_fail_alone_and_the_rest_finish(pipeline, hostile_folder, tmp_path):
    folder, must_fail, must_work = hostile_folder
    out = tmp_path / "results.gpkg"
    summary = pipeline.run([folder], out)
    failures = pyogrio.read_dataframe(out, layer="failures")
    assert {Path(p).name for p in failures.path} == must_fail == {Path(p).name for p, _ in summary.failures}
    for reason in failures.reason:
        assert "\n" not in reason and "photo '" in reason
    photos = _photos(out)
    assert set(photos.index) == must_work and summary.n_done == len(must_work)
    assert validate_gpkg(out) == []
    for name in ("lat95.jpg", "zero_den.jpg"):
        assert photos.loc[name, "verdict"] == "no claim" and photos.loc[name, "point_source"] == "prediction"
    assert "out of range" in photos.loc["lat95.jpg", "notes"]
    assert "zero denominator" in photos.loc["zero_den.jpg", "notes"]
    sydney = photos.loc["фото 1.jpg"]
    assert (sydney.claimed_lat_deg, sydney.claimed_lon_deg) == pytest.approx((-33.9, 151.2), abs=1e-6)
    assert photos.loc["фото 1 (copy).jpg", "processed_at_utc"] == sydney.processed_at_utc


def test_heic_claims_are_read_through_pillow_heif(pipeline, toy_images, tmp_path):
    pytest.importorskip("pillow_heif")
    import pillow_heif

    pillow_heif.register_heif_opener()
    jpeg = write_jpeg_with_exif(toy_images[8], tmp_path / "src.jpg", lat_deg=35.68, lon_deg=139.69,
                                local_datetime=dt.datetime(2022, 4, 1, 6, 45))
    heic = tmp_path / "IMG_0001.HEIC"
    toy_images[8].resize((64, 64)).save(heic, exif=Image.open(jpeg).info["exif"])
    out = tmp_path / "results.gpkg"
    summary = pipeline.run([heic], out)
    assert summary.n_failed == 0
    row = _photos(out).loc["IMG_0001.HEIC"]
    assert (row.claimed_lat_deg, row.claimed_lon_deg) == pytest.approx((35.68, 139.69), abs=1e-6)
    assert row.claimed_time_local == "2022-04-01T06:45:00" and row.point_source == "claim"


def test_the_models_gallery_is_never_encoded_but_the_time_grid_is(trained_checkpoint, album, tmp_path):
    """Places come from surfaces: the checkpoint's gallery (20,000 generic places here, 100K for GeoCLIP) is not
    encoded or loaded; the time grid is (the time posterior needs it)."""
    cache = tmp_path / "cache"
    out = tmp_path / "results.gpkg"
    predict_to_geopackage(trained_checkpoint, [album / "time_only.jpg"], out, cache_dir=cache, config=FAST)
    assert pd.notna(_photos(out).loc["time_only.jpg"].pred_month)
    rows = {path.name.split("-")[0]: np.load(path, mmap_mode="r").shape[0]
            for path in (cache / "constants").glob("*/*.npy")}
    assert rows["time"] == 48 * 48 and rows.get("gallery", 0) == 0


# ------------------------------------------------------------------------------------------- untrained head


@pytest.fixture(scope="module")
def location_only_checkpoint(toy_manifest, cache_dir, tmp_path_factory) -> Path:
    from gtloc_engine.model import preset
    from gtloc_engine.training.trainer import MODEL_FILE, TrainConfig, Trainer

    out = tmp_path_factory.mktemp("loc_only")
    Trainer(TrainConfig(out_dir=str(out), model=preset("tiny").to_dict(), manifest=str(toy_manifest), epochs=2,
                        batch_size=64, lr=1e-3, loc_queue=128, time_queue=128, warmup_steps=10, time_weight=0.0,
                        cache_dir=str(cache_dir), progress=False)).run()
    return out / MODEL_FILE


@pytest.mark.slow
def test_a_head_never_trained_gives_no_verdict_and_a_note(location_only_checkpoint, album, tmp_path, cache_dir):
    out = tmp_path / "results.gpkg"
    predict_to_geopackage(location_only_checkpoint, [album / "été_東京.jpg"], out, cache_dir=cache_dir, config=FAST)
    row = _photos(out).loc["été_東京.jpg"]
    assert pd.isna(row.time_verdict) and pd.isna(row.time_level) and pd.isna(row.pred_month)
    assert pd.isna(row.time_posterior) and row.map_time_source == "claim"
    assert pd.notna(row.place_verdict) and row.verdict == row.place_verdict
    assert "time head not trained" in row.notes and "time claim not checked" in row.notes


# ------------------------------------------------------------------------------------------- command line


def gtloc(*args, cache: Path, timeout=300):
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "GTLOC_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "gtloc_engine.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


@pytest.mark.slow
def test_cli_writes_the_geopackage_and_exits_1_for_a_bad_photo(trained_checkpoint, toy_images, tmp_path, cache_dir):
    album = tmp_path / "album"
    write_jpeg_with_exif(toy_images[0], album / "good.jpg", lat_deg=PARIS_LATLON[0], lon_deg=PARIS_LATLON[1])
    (album / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    out = tmp_path / "results.gpkg"
    args = ["--model", trained_checkpoint, "--out", out, "--top-k", "2", "--res-deg", "1"]
    proc = gtloc("predict", album, *args, cache=cache_dir)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gtloc: error:")]
    assert len(errors) == 1 and "broken.jpg" in errors[0]
    summary = json.loads(proc.stdout)
    assert (summary["n_done"], summary["n_failed"]) == (1, 1)
    assert len(_photos(out)) == 1 and _table_count(out, "failures") == 1
    assert len(gpd.read_file(out, layer="candidates")) == 2

    write_jpeg_with_exif(toy_images[1], album / "broken.jpg")  # the photo copied again, intact
    proc = gtloc("predict", album, *args, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_skipped"] == 1 and _table_count(out, "failures") == 0
    assert len(_photos(out)) == 2


@pytest.mark.slow
@pytest.mark.parametrize("case", ["foreign_gpkg", "rasters_without_gpkg"])
def test_cli_bad_output_requests_are_one_line_exit_2(trained_checkpoint, album, tmp_path, cache_dir, case):
    # Both are refused before the model loads.
    if case == "foreign_gpkg":
        out = tmp_path / "mine.gpkg"
        out.write_text("not ours")
        args = ["--out", out]
    else:
        args = ["--out", tmp_path / "r.json", "--rasters", tmp_path / "rasters"]
    proc = gtloc("predict", album, "--model", trained_checkpoint, *args, cache=cache_dir)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    if case == "foreign_gpkg":
        assert "mine.gpkg" in proc.stderr and out.read_text() == "not ours"
    else:
        assert "--rasters" in proc.stderr and not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_cli_killed_with_sigkill_keeps_every_committed_batch_and_resumes(trained_checkpoint, toy_manifest, tmp_path,
                                                                         cache_dir):
    folder = tmp_path / "photos"
    folder.mkdir()
    for source in sorted((toy_manifest.parent / "img").glob("*.png"))[:60]:
        shutil.copy(source, folder / source.name)
    out = tmp_path / "results.gpkg"
    args = ["predict", folder, "--model", trained_checkpoint, "--out", out, "--top-k", "2", "--res-deg", "1",
            "--batch-size", "2", "--quiet"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "GTLOC_CACHE": str(cache_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "gtloc_engine.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, deadline = 0, time.monotonic() + 240
    try:
        while seen < 6 and proc.poll() is None and time.monotonic() < deadline:  # three batches committed
            time.sleep(0.05)
            if out.exists():
                try:
                    with closing(sqlite3.connect(f"{out.as_uri()}?mode=ro", uri=True, timeout=5)) as db:
                        seen = db.execute("SELECT count(*) FROM photos").fetchone()[0]
                except sqlite3.Error:
                    pass  # not created yet
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"it ended on its own before the kill: {stderr[-2000:]}"
    assert validate_gpkg(out) == []
    kept = _photos(out)
    assert seen <= len(kept) < 60  # every batch committed before the kill, and the run was cut short
    assert _table_count(out, "candidates") == 2 * len(kept) and _table_count(out, "embeddings") == len(kept)
    assert set(gpd.read_file(out, layer="regions").path) == set(kept.path)  # no photo half written

    again = gtloc(*args, cache=cache_dir)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["n_skipped"], summary["n_done"]) == (len(kept), 60 - len(kept))
    photos = _photos(out)
    assert len(photos) == 60 and validate_gpkg(out) == []
    assert photos.loc[kept.index, "processed_at_utc"].equals(kept.processed_at_utc)  # the kept rows untouched


# ------------------------------------------------------------------------------------------- pictures for QGIS


@pytest.mark.skipif(EXIFTOOL is None, reason="exiftool is not installed (Debian: libimage-exiftool-perl)")
def test_thumbnails_and_time_plots_sit_beside_the_results_upright_and_are_reused(pipeline, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    # Stored 600 x 400, left half red, right half blue; EXIF Orientation 6: to be viewed turned 90 deg clockwise,
    # so upright it is 400 x 600 with the red half on top.
    pixels = np.zeros((400, 600, 3), np.uint8)
    pixels[:, :300] = (220, 30, 30)
    pixels[:, 300:] = (30, 30, 220)
    turned = folder / "turned.jpg"
    Image.fromarray(pixels).save(turned, quality=95)
    exiftool_write(turned, "-Orientation#=6", "-GPSLatitude=48.8566", "-GPSLatitudeRef=N", "-GPSLongitude=2.3522",
                   "-GPSLongitudeRef=E", "-DateTimeOriginal=2021:07:14 21:30:05")
    with Image.open(turned) as stored:
        assert stored.size == (600, 400) and stored.getexif()[0x0112] == 6
    shutil.copy(turned, folder / "copy.jpg")  # the same bytes under another name share the pictures
    out = tmp_path / "case.gpkg"
    pipeline.run([folder], out)
    photos = _photos(out)
    thumbs = tmp_path / "case_thumbs"
    row = photos.loc["turned.jpg"]
    assert Path(row.thumbnail) == thumbs / f"{row.sha256}.jpg"
    assert Path(row.time_plot) == thumbs / f"{row.sha256}_{pipeline.model_sha256[:12]}_time.png"
    assert photos.loc["copy.jpg", "thumbnail"] == row.thumbnail
    assert sorted(p.name for p in thumbs.iterdir()) == sorted([Path(row.thumbnail).name, Path(row.time_plot).name])
    with Image.open(row.thumbnail) as thumb:
        assert thumb.format == "JPEG" and thumb.size == (171, 256)  # upright: width and height swapped, then shrunk
        assert len(thumb.getexif()) == 0  # no metadata of the photo goes into it
        upright = np.asarray(thumb.convert("RGB"), dtype=float)
    top, bottom = upright[:100].mean(axis=(0, 1)), upright[-100:].mean(axis=(0, 1))
    assert top[0] > 180 > top[2] and bottom[2] > 180 > bottom[0]  # the red half is on top
    with Image.open(row.time_plot) as plot:
        assert plot.format == "PNG" and plot.size == (240, 120) and plot.mode == "RGB"
    # A second run skips the finished photos and writes no picture again.
    stamps = {p.name: p.stat().st_mtime_ns for p in thumbs.iterdir()}
    time.sleep(0.05)
    summary = pipeline.run([folder], out)
    assert summary.n_skipped == 2 and summary.n_done == 0
    assert {p.name: p.stat().st_mtime_ns for p in thumbs.iterdir()} == stamps
    # Another checkpoint file recomputes the rows: the thumbnail (the bytes' own) is kept, the time plot is new.
    from gtloc_engine.model.checkpoint import save_checkpoint

    other = save_checkpoint(tmp_path / "other.safetensors", pipeline.model, info={"copy": "of the same weights"})
    again = PhotoPipeline(other, top_k=3, cache_dir=pipeline.cache_dir, config=FAST)
    assert again.run([folder], out).n_done == 2
    redone = _photos(out).loc["turned.jpg"]
    assert redone.thumbnail == row.thumbnail
    assert Path(row.thumbnail).stat().st_mtime_ns == stamps[Path(row.thumbnail).name]
    assert redone.time_plot != row.time_plot and Path(redone.time_plot).is_file()
