"""Distributed batch prediction (gtloc_engine/cluster.py) on a real Dask cluster of two worker processes
with the tiny trained model, into a real PostGIS case (tests/postgis_cluster.py): one worker is killed with SIGKILL
while it holds a chunk, the scheduler retries the chunk on a worker, and the case ends with every photo exactly
once; progress adds up on the driver; `gtloc predict --cluster local:2` from the command line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gtloc_engine.errors import GtlocError
from gtloc_engine.cluster import predict_on_cluster
from gtloc_engine.io.store import open_store

distributed = pytest.importorskip("distributed", reason="the cluster extra (dask[distributed]) is not installed")
psycopg = pytest.importorskip("psycopg", reason="the postgis extra (psycopg 3) is not installed")


def _photos(toy_manifest: Path, folder: Path, n: int) -> list[str]:
    folder.mkdir()
    names = []
    for source in sorted((toy_manifest.parent / "img").glob("*.png"))[:n]:
        shutil.copy(source, folder / source.name)
        names.append(source.name)
    return names


def _params(trained_checkpoint, folder, case, cache_dir) -> dict:
    return {"model": str(trained_checkpoint), "photos": [str(folder)], "out_gpkg": case, "top_k": 2,
            "batch_size": 2, "res_deg": 1.0, "cache_dir": str(cache_dir)}


def _rows(case: str) -> dict[str, int]:
    with psycopg.connect(case) as db:
        return {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("photos", "candidates", "regions", "embeddings", "failures")}


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_retried_and_every_photo_lands_exactly_once(trained_checkpoint, toy_manifest,
                                                                              tmp_path, cache_dir, pg_case):
    names = _photos(toy_manifest, tmp_path / "archive", 24)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, env={"OMP_NUM_THREADS": "1",
                                                                    "GTLOC_CACHE": os.environ["GTLOC_CACHE"]})
    client = distributed.Client(cluster)
    killed: dict = {}
    reports: list[tuple[int, int]] = []
    first_batch = threading.Event()

    def progress(done: int, total: int) -> None:
        reports.append((done, total))
        if done > 0:
            first_batch.set()

    def kill_a_busy_worker() -> None:
        """As soon as the first batch is committed, SIGKILL a worker process that is running a chunk."""
        if not first_batch.wait(timeout=240):
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            busy = [address for address, keys in client.processing().items() if keys]
            if busy:
                pids = client.run(os.getpid, workers=[busy[0]])
                killed.update(address=busy[0], pid=pids[busy[0]], stored=_rows(pg_case)["photos"])
                os.kill(pids[busy[0]], signal.SIGKILL)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    try:
        pids_before = set(client.run(os.getpid).values())
        killer.start()
        summary = predict_on_cluster(_params(trained_checkpoint, tmp_path / "archive", pg_case, cache_dir), client,
                                     chunk_photos=4, progress=progress)
        killer.join(timeout=10)
        pids_after = set(client.run(os.getpid).values())
    finally:
        client.close()
        cluster.close()
    assert killed and killed["pid"] in pids_before and killed["pid"] not in pids_after  # it really died
    assert killed["stored"] < 24  # killed mid-run, with chunks still to do
    rows = _rows(pg_case)
    assert rows == {"photos": 24, "candidates": 48, "regions": rows["regions"], "embeddings": 24, "failures": 0}
    with open_store(pg_case) as store:
        photos = store.photos
        assert sorted(Path(p).name for p in photos) == names  # every photo, each exactly once
        assert set(store.regions) == set(photos) and {len(c) for c in store.candidates.values()} == {2}
    assert (summary.n_photos, summary.n_failed) == (24, 0) and summary.n_done + summary.n_skipped == 24
    assert not summary.cancelled and summary.out_gpkg == pg_case
    assert reports[-1] == (24, 24) and all(total == 24 for _, total in reports)
    assert len(reports) > 4  # per committed batch, from both workers, not per chunk


def test_a_cluster_run_needs_a_postgis_case(trained_checkpoint, toy_manifest, tmp_path, cache_dir):
    _photos(toy_manifest, tmp_path / "archive", 1)
    with pytest.raises(GtlocError, match="PostGIS case") as info:
        predict_on_cluster(_params(trained_checkpoint, tmp_path / "archive", str(tmp_path / "r.gpkg"), cache_dir),
                           "local:1")
    assert "\n" not in str(info.value)
    with pytest.raises(GtlocError, match="local:N"):
        predict_on_cluster(_params(trained_checkpoint, tmp_path / "archive", "postgresql:///x", cache_dir),
                           "local:two")


@pytest.mark.slow
def test_gtloc_predict_cluster_local_2_from_the_command_line(trained_checkpoint, toy_manifest, tmp_path, cache_dir,
                                                             pg_case):
    _photos(toy_manifest, tmp_path / "archive", 6)
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "GTLOC_CACHE": str(cache_dir)}
    args = [sys.executable, "-m", "gtloc_engine.cli", "predict", str(tmp_path / "archive"), "--model",
            str(trained_checkpoint), "--out", pg_case, "--cluster", "local:2", "--top-k", "2", "--res-deg", "1",
            "--batch-size", "2", "--quiet"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert (summary["n_photos"], summary["n_done"], summary["out_gpkg"]) == (6, 6, pg_case)
    assert _rows(pg_case)["photos"] == 6 and _rows(pg_case)["candidates"] == 12
    wrong = subprocess.run([*args[:7], "--out", str(tmp_path / "r.gpkg"), "--cluster", "local:2"],
                           capture_output=True, text=True, timeout=120, env=env, check=False)
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "--cluster" in wrong.stderr
