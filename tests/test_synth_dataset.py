"""A SunWorld dataset on disk: manifest, EXIF that agrees with it, splits, determinism, resumable writes."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

from zoneinfo import ZoneInfo

import numpy as np
import pytest
from PIL import Image

from gtloc_engine.errors import GtlocError
from gtloc_engine.io.exif import read_exif_claims
from gtloc_engine.synth import SCENE_COLUMNS, read_scenes, solar_position, write_dataset

N_PHOTOS = 30


def _rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("sunworld") / "ds", N_PHOTOS, seed=4, untimed_fraction=0.5)


def test_manifest_has_the_contract_header_and_one_row_per_photo(dataset):
    assert dataset.name == "manifest.csv"
    header = dataset.read_text(encoding="utf-8").splitlines()[0]
    assert header == "path,lat_deg,lon_deg,timestamp,split"
    rows = _rows(dataset)
    assert len(rows) == N_PHOTOS
    assert {r["split"] for r in rows} <= {"train", "val", "test"}
    assert sum(r["split"] == "train" for r in rows) == 24 and sum(r["split"] == "val" for r in rows) == 3
    for r in rows:
        assert not Path(r["path"]).is_absolute() and r["path"].startswith("photos/")
        assert (dataset.parent / r["path"]).is_file()
    params = json.loads((dataset.parent / "world.json").read_text())
    assert params["seed"] == 4 and params["world"]["config"]["seed"] == 4 and params["n_photos"] == N_PHOTOS


def test_exif_matches_the_manifest(dataset):
    for r in _rows(dataset):
        photo = dataset.parent / r["path"]
        claims = read_exif_claims(photo)
        assert claims.lat_deg == pytest.approx(float(r["lat_deg"]), abs=1e-6)
        assert claims.lon_deg == pytest.approx(float(r["lon_deg"]), abs=1e-6)
        assert claims.alt_m is not None
        if r["timestamp"]:
            stamp = dt.datetime.fromisoformat(r["timestamp"])
            assert stamp.utcoffset() is not None
            assert claims.local_datetime == stamp.replace(tzinfo=None)
            assert claims.utc_offset_min == int(stamp.utcoffset().total_seconds() // 60)
        else:
            assert claims.local_datetime is None and claims.utc_offset_min is None
        with Image.open(photo) as im:
            assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"


def test_untimed_photos_are_a_share_of_the_train_split_only(dataset):
    rows = _rows(dataset)
    untimed = [r for r in rows if not r["timestamp"]]
    assert len(untimed) == 12  # half of the 24 train photos
    assert all(r["split"] == "train" for r in untimed)
    assert all(r["timestamp"] for r in rows if r["split"] != "train")


def test_timestamps_are_iso_local_time_with_offset_and_pixels_follow_the_sun(dataset):
    from timezonefinder import TimezoneFinder

    finder = TimezoneFinder()
    bright_day, dark_night = [], []
    for r in _rows(dataset):
        if not r["timestamp"]:
            continue
        assert r["timestamp"][10] == "T" and r["timestamp"][-6] in "+-" and r["timestamp"][-3] == ":"
        stamp = dt.datetime.fromisoformat(r["timestamp"])
        offset_min = int(stamp.utcoffset().total_seconds() // 60)
        # The offset is the one the place's IANA zone had at that wall clock (DST included), not longitude's.
        zone = finder.timezone_at_land(lng=float(r["lon_deg"]), lat=float(r["lat_deg"]))
        assert zone is not None
        assert ZoneInfo(zone).utcoffset(stamp.replace(tzinfo=None)) == stamp.utcoffset()
        lat, lon = float(r["lat_deg"]), float(r["lon_deg"])
        el = float(solar_position(lat, lon, stamp.replace(tzinfo=None), offset_min).elevation_deg)
        with Image.open(dataset.parent / r["path"]) as im:
            mean = float(np.asarray(im).mean())
        (bright_day if el > 10 else dark_night if el < -12 else []).append(mean)
    assert bright_day and min(bright_day) > 40
    assert all(m < 40 for m in dark_night)


@pytest.fixture(scope="module")
def dst_dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("sunworld_dst") / "ds", 80, seed=9)


def test_exif_times_are_the_local_wall_clock_with_the_zones_offset_and_gps_utc(dst_dataset):
    scenes = read_scenes(dst_dataset.parent)
    summer_time = 0
    for r in _rows(dst_dataset):
        claims = read_exif_claims(dst_dataset.parent / r["path"])
        scene = scenes[r["path"]]
        zone = ZoneInfo(scene["zone"])
        local = dt.datetime.fromisoformat(r["timestamp"]).replace(tzinfo=None)
        assert claims.local_datetime == local  # DateTimeOriginal: the wall clock where the photo was taken
        expected = int(zone.utcoffset(local).total_seconds() // 60)
        assert claims.utc_offset_min == expected == scene["utc_offset_min"]  # OffsetTimeOriginal
        utc = (local - dt.timedelta(minutes=expected)).replace(tzinfo=dt.timezone.utc)
        assert claims.gps_utc_datetime == utc  # GPSDateStamp + GPSTimeStamp
        assert scene["utc_time"] == utc.strftime("%Y-%m-%dT%H:%M:%SZ")
        standard = min(zone.utcoffset(dt.datetime(local.year, 1, 15)), zone.utcoffset(dt.datetime(local.year, 7, 15)))
        summer_time += zone.utcoffset(local) != standard
    assert summer_time >= 3  # some photos are on daylight saving time


def test_scenes_hold_the_truth_behind_every_photo(dst_dataset):
    header = (dst_dataset.parent / "scenes.csv").read_text(encoding="utf-8").splitlines()[0]
    assert tuple(header.split(",")) == SCENE_COLUMNS
    scenes = read_scenes(dst_dataset.parent)
    rows = _rows(dst_dataset)
    assert set(scenes) == {r["path"] for r in rows}
    for r in rows:
        sc = scenes[r["path"]]
        stamp = dt.datetime.fromisoformat(r["timestamp"])
        sun = solar_position(float(r["lat_deg"]), float(r["lon_deg"]), stamp.replace(tzinfo=None),
                             int(stamp.utcoffset().total_seconds() // 60))
        assert sc["sun_elevation_deg"] == pytest.approx(float(sun.elevation_deg), abs=1e-3)
        assert sc["sun_azimuth_deg"] == pytest.approx(float(sun.azimuth_deg), abs=1e-3)
        rel = (sc["sun_azimuth_deg"] - sc["grid_bearing_deg"]) % 360.0
        assert min(abs(rel - sc["sun_azimuth_rel_grid_deg"]), 360 - abs(rel - sc["sun_azimuth_rel_grid_deg"])) < 1e-3
        assert 0.0 <= sc["snow_cover"] <= 1.0 and 0.0 <= sc["greenness"] <= 1.0


def test_same_seed_gives_identical_manifest_and_pixels(dataset, tmp_path):
    again = write_dataset(tmp_path / "again", N_PHOTOS, seed=4, untimed_fraction=0.5)
    assert again.read_bytes() == dataset.read_bytes()
    for r in _rows(dataset):
        a = np.asarray(Image.open(dataset.parent / r["path"]))
        b = np.asarray(Image.open(again.parent / r["path"]))
        assert np.array_equal(a, b)
    other = write_dataset(tmp_path / "other", N_PHOTOS, seed=5, untimed_fraction=0.5)
    assert other.read_bytes() != dataset.read_bytes()


def test_rerun_skips_existing_photos_and_restores_missing_ones(tmp_path):
    manifest = write_dataset(tmp_path / "ds", 12, seed=2)
    photos = sorted((tmp_path / "ds" / "photos").glob("*.jpg"))
    assert len(photos) == 12
    stamps = {p.name: p.stat().st_mtime_ns for p in photos}
    removed = photos[3]
    original = removed.read_bytes()
    removed.unlink()
    manifest_before = manifest.read_bytes()

    assert write_dataset(tmp_path / "ds", 12, seed=2) == manifest
    assert removed.read_bytes() == original
    for p in photos:
        if p != removed:
            assert p.stat().st_mtime_ns == stamps[p.name]
    assert manifest.read_bytes() == manifest_before
    assert not list((tmp_path / "ds").glob(".*.tmp")) and not list((tmp_path / "ds" / "photos").glob(".*.tmp"))


def test_refuses_to_mix_two_datasets_in_one_folder(tmp_path):
    write_dataset(tmp_path / "ds", 5, seed=1)
    with pytest.raises(GtlocError, match="other parameters"):
        write_dataset(tmp_path / "ds", 5, seed=2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_photos": 0},
        {"n_photos": 5, "untimed_fraction": 1.5},
        {"n_photos": 5, "split_fractions": (0.5, 0.5, 0.5)},
        {"n_photos": 5, "quality": 0},
        {"n_photos": 5, "image_size": 4},
    ],
)
def test_bad_arguments_are_refused_before_writing(tmp_path, kwargs):
    with pytest.raises(GtlocError):
        write_dataset(tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()


def test_world_overrides_are_used_and_recorded(tmp_path):
    from gtloc_engine.synth.world import SunWorld, WorldConfig

    write_dataset(tmp_path / "few", 12, seed=3, world={"n_regions": 5})
    params = json.loads((tmp_path / "few" / "world.json").read_text())
    assert params["world"]["n_regions"] == 5
    rows = list(csv.DictReader(open(tmp_path / "few" / "manifest.csv")))
    world = SunWorld(WorldConfig(seed=3, n_regions=5))
    lat_deg = np.array([float(r["lat_deg"]) for r in rows])
    regions = world.region_of(lat_deg, np.array([float(r["lon_deg"]) for r in rows]))
    assert set(regions.tolist()) <= set(range(5))


@pytest.mark.parametrize("world, message", [({"n_regions": 0}, "n_regions"), ({"regions": 5}, "regions")])
def test_bad_world_settings_are_refused(tmp_path, world, message):
    with pytest.raises(GtlocError, match=message):
        write_dataset(tmp_path / "bad", 4, world=world)
