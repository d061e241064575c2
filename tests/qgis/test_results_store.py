"""The results GeoPackage read by QGIS while the engine writes it: a photos layer open in real QGIS (QgsVectorLayer,
the OGR provider over QGIS 3.22's GDAL) sees, after a reload, the rows a real `gtloc predict` subprocess commits
into the same file batch by batch; QGIS reloading and reading the whole layer all the while neither fails nor makes
the engine fail; the finished file passes GDAL's validate_gpkg.py. A layer QGIS opened between runs reads nothing
once the next run has switched the file back to WAL, until it is reloaded, and the engine says so."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import pytest
from conftest import ENGINE_GTLOC
from qgis.core import Qgis, QgsApplication, QgsVectorLayer

VALIDATOR = Path("/usr/lib/python3/dist-packages/osgeo_utils/samples/validate_gpkg.py")
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _predict(folder: Path, out: Path, model: Path, *extra) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.Popen([str(ENGINE_GTLOC), "predict", str(folder), "--model", str(model), "--out", str(out),
                             "--top-k", "2", "--res-deg", "1", "--quiet", *map(str, extra)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _journal(path: Path) -> str:
    """The file's journal mode as its header records it (byte 18: 1 rollback, 2 WAL), read without SQLite."""
    with open(path, "rb") as f:
        return {1: "rollback", 2: "wal"}[f.read(20)[18]]


def _count(layer: QgsVectorLayer) -> int:
    """Reload the layer from the file (as QGIS does on a refresh) and count the features it now reads."""
    layer.dataProvider().reloadData()
    layer.reload()
    return sum(1 for _ in layer.getFeatures())


@pytest.mark.slow
def test_a_layer_open_in_qgis_shows_the_rows_a_running_predict_commits(model_path, engine_files, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    toy = [Path(p) for p in engine_files["toy_photos"][:100]]
    for photo in toy[:4]:
        shutil.copy(photo, folder / photo.name)
    out = tmp_path / "results.gpkg"
    first = _predict(folder, out, model_path)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]

    photos = QgsVectorLayer(f"{out}|layername=photos", "photos", "ogr")
    candidates = QgsVectorLayer(f"{out}|layername=candidates", "candidates", "ogr")
    assert photos.isValid() and candidates.isValid()
    assert photos.featureCount() == 4 and _count(photos) == 4 and _count(candidates) == 8
    # The engine left the file in WAL; QGIS, opening it alone, set it back to the rollback journal (and reads it
    # without locks).
    assert _journal(out) == "rollback"

    for photo in toy[4:]:
        shutil.copy(photo, folder / photo.name)
    run = _predict(folder, out, model_path, "--batch-size", "2")  # one commit per 2 photos
    deadline = time.monotonic() + 300
    while _journal(out) != "wal" and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _journal(out) == "wal"  # the engine makes it WAL again when it opens it, before any photo
    # The layers' lockless connection cannot read a WAL file (SQLite: 'unable to open database file'): no rows until
    # QGIS reopens the file, as a reload does (layer.reload(), what F5 calls); the two layers share that connection.
    assert sum(1 for _ in photos.getFeatures()) == 0 and sum(1 for _ in candidates.getFeatures()) == 0
    photos.reload()
    assert sum(1 for _ in photos.getFeatures()) >= 4 and sum(1 for _ in candidates.getFeatures()) >= 8

    problems = []  # anything QGIS logs as a warning or worse while it reads the file being written

    def on_message(message, tag, level):
        if level >= Qgis.Warning:
            problems.append(f"{tag}: {message}")

    log = QgsApplication.messageLog()
    log.messageReceived.connect(on_message)
    try:
        counts = []
        deadline = time.monotonic() + 300
        while run.poll() is None and time.monotonic() < deadline:
            counts.append((_count(photos), _count(candidates)))
            QgsApplication.processEvents()
            time.sleep(0.05)
        stdout, stderr = run.communicate(timeout=60)
    finally:
        log.messageReceived.disconnect(on_message)
    assert run.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert (summary["n_skipped"], summary["n_done"], summary["n_failed"]) == (4, 96, 0)
    # ... and the engine said so, in one line
    assert [line for line in stderr.splitlines() if "rollback-journal" in line and "reload (F5)" in line], stderr

    photo_counts = [n for n, _ in counts]
    assert any(4 < n < 100 for n in photo_counts), f"QGIS never saw rows arrive during the run: {photo_counts}"
    assert photo_counts == sorted(photo_counts), f"rows went away: {counts}; QGIS logged {problems}"  # only ever more
    assert all(n_candidates >= 2 * n for n, n_candidates in counts)  # a photo's candidates come with it
    assert _count(photos) == 100 and photos.featureCount() == 100 and _count(candidates) == 200
    assert len({f["path"] for f in photos.getFeatures()}) == 100
    assert problems == []
    # QGIS still has the file open, so SQLite keeps its -wal and -shm files; the engine checkpointed every commit
    # into the .gpkg when it finished: the .gpkg alone holds all 100 photos, and nothing else was left behind (but
    # the pictures' folder for the form, results_thumbs/, without temp files).
    assert {p.name for p in tmp_path.iterdir()} <= {"photos", "results.gpkg", "results.gpkg-wal", "results.gpkg-shm",
                                                    "results_thumbs"}
    assert not [p for p in (tmp_path / "results_thumbs").iterdir() if p.name.startswith(".")]
    assert not (tmp_path / "results.gpkg-wal").exists() or (tmp_path / "results.gpkg-wal").stat().st_size == 0
    alone = tmp_path / "copy" / "results.gpkg"
    alone.parent.mkdir()
    alone.write_bytes(out.read_bytes())
    with closing(sqlite3.connect(alone)) as db:
        assert db.execute("SELECT count(*) FROM photos").fetchone()[0] == 100
    if VALIDATOR.is_file() and SYSTEM_PYTHON.is_file():
        check = subprocess.run([str(SYSTEM_PYTHON), str(VALIDATOR), "-k", "--extra", str(out)], capture_output=True,
                               text=True, timeout=300, check=False)
        assert check.returncode == 0 and check.stdout + check.stderr == ""
