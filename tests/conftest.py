"""Shared fixtures: a learnable toy photo set (place -> colours, time -> brightness and tint), a tiny model."""

from __future__ import annotations

import atexit
import csv
import datetime as dt
import itertools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Model constants and feature caches written by tests (and their subprocesses) go to a throwaway folder, never
# into the user's ~/.cache/gtloc.
_TEST_CACHE = tempfile.mkdtemp(prefix="gtloc-test-cache-")
os.environ["GTLOC_CACHE"] = _TEST_CACHE
atexit.register(shutil.rmtree, _TEST_CACHE, ignore_errors=True)

TOY_PLACES_LATLON = np.array([[48.8, 2.3], [-33.9, 151.2], [40.7, -74.0], [35.7, 139.7],
                              [-23.5, -46.6], [55.7, 37.6], [1.3, 103.8], [-1.3, 36.8]])


def write_toy_set(folder: Path, n: int, seed: int) -> Path:
    """Photos whose top half is a place's colour and bottom half encodes month and hour; returns the manifest."""
    rng = np.random.default_rng(seed)
    colours = np.random.default_rng(123).uniform(0, 1, (len(TOY_PLACES_LATLON), 3))
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        k = rng.integers(len(TOY_PLACES_LATLON))
        lat, lon = TOY_PLACES_LATLON[k] + rng.normal(0, 0.3, 2)
        month, day, hour, minute = rng.integers(1, 13), rng.integers(1, 29), rng.integers(0, 24), rng.integers(0, 60)
        h = (hour + minute / 60) / 24 * 2 * np.pi
        m = (month - 1) / 12 * 2 * np.pi
        img = np.zeros((32, 32, 3))
        img[:16] = colours[k]
        img[16:, :16] = [0.5 + 0.5 * np.cos(h), 0.5 + 0.5 * np.sin(h), 0.5]
        img[16:, 16:] = [0.5, 0.5 + 0.5 * np.cos(m), 0.5 + 0.5 * np.sin(m)]
        img += rng.normal(0, 0.02, img.shape)
        name = f"img/{i:04d}.png"
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / name)
        rows.append([name, f"{lat:.5f}", f"{lon:.5f}", dt.datetime(2021, month, day, hour, minute).isoformat()])
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "lat_deg", "lon_deg", "timestamp"])
        writer.writerows(rows)
    return manifest


@pytest.fixture(scope="session")
def toy_manifest(tmp_path_factory) -> Path:
    return write_toy_set(tmp_path_factory.mktemp("toy"), 480, seed=0)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("feature_cache")


@pytest.fixture
def tiny_model():
    from gtloc_engine.model import GTLoc, preset

    return GTLoc(preset("tiny"), seed=0)


@pytest.fixture(scope="session")
def trained_checkpoint(toy_manifest, cache_dir, tmp_path_factory) -> Path:
    """A tiny model trained 30 epochs on the toy set (~6 s): both heads trained, confident about places."""
    from gtloc_engine.model import preset
    from gtloc_engine.training.trainer import MODEL_FILE, TrainConfig, Trainer

    out = tmp_path_factory.mktemp("trained_tiny")
    Trainer(TrainConfig(out_dir=str(out), model=preset("tiny").to_dict(), manifest=str(toy_manifest), epochs=30,
                        batch_size=64, lr=1e-3, loc_queue=128, time_queue=128, warmup_steps=10,
                        cache_dir=str(cache_dir), progress=False)).run()
    return out / MODEL_FILE


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL 15 + PostGIS server on a private unix socket (tests/postgis_cluster.py); the tests
    that use it are skipped, with the reason, where PostgreSQL or PostGIS is not installed."""
    from postgis_cluster import running_server

    yield from running_server()


@pytest.fixture
def pg_case(pg_server, request) -> str:
    """A new database with PostGIS and no tables: a PostGIS case target (postgresql://...?host=SOCKET)."""
    name = f"case{next(_CASE_NUMBERS)}_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:40]
    return pg_server.create_database(name)


_CASE_NUMBERS = itertools.count(1)
