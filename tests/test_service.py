"""The engine side of the worker protocol (docs/protocol.md): `gtloc serve --stdio` as a real subprocess."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import test_search

from gtloc_engine import __version__
from gtloc_engine.protocol import PARAMS, PREDICT_STAGES, STAGE_CONSTANTS, STAGE_LOADING_MODEL, STAGE_PHOTOS
from gtloc_engine.service import METHODS, PROTOCOL_VERSION

search_collection = test_search.collection  # fixture: a real results GeoPackage of 20 toy photos
ENV = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}


class WorkerProcess:
    """A worker subprocess with a line reader that never blocks the test forever."""

    def __init__(self, argv: list[str] | None = None):
        argv = argv or [sys.executable, "-m", "gtloc_engine.cli", "serve", "--stdio"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=ENV)
        self.raw_lines: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.raw_lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def send(self, message) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def read(self, timeout: float = 60) -> dict:
        line = self._lines.get(timeout=timeout)
        assert line is not None, f"worker closed stdout; stderr: {self.proc.stderr.read()[-2000:]}"
        return json.loads(line)

    def until_final(self, request_id, timeout: float = 120) -> tuple[list[dict], dict]:
        """Progress lines and the final line (result or error) of one request."""
        progress = []
        while True:
            message = self.read(timeout)
            assert message.get("id") == request_id, message
            if message["type"] == "progress":
                progress.append(message)
            else:
                return progress, message

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.stdin.close()
        return self.proc.wait(timeout=60)


@pytest.fixture
def worker():
    w = WorkerProcess()
    yield w
    if w.proc.poll() is None:
        w.proc.kill()
    w.proc.wait()


def test_hello_comes_first_with_protocol_and_engine_versions(worker):
    hello = worker.read()
    assert hello == {"type": "hello", "protocol": PROTOCOL_VERSION, "engine_version": __version__,
                     "methods": list(METHODS), "params": {m: [p.name for p in rows] for m, rows in PARAMS.items()},
                     "pid": worker.proc.pid}
    assert {"claimed_after", "claimed_before", "pooling", "point_source", "within_layer"} <= set(
        hello["params"]["search"])


def test_info_reports_versions_and_the_photo_suffixes(worker):
    from gtloc_engine.io.photos import PHOTO_SUFFIXES

    worker.read()
    worker.send({"id": "a", "method": "info"})
    _, reply = worker.until_final("a")
    assert reply["type"] == "result"
    assert reply["result"]["protocol"] == PROTOCOL_VERSION and reply["result"]["engine_version"] == __version__
    assert set(reply["result"]["photo_suffixes"]) == PHOTO_SUFFIXES
    assert reply["result"]["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")  # --device auto


def test_serve_computes_on_the_device_it_is_started_with():
    w = WorkerProcess([sys.executable, "-m", "gtloc_engine.cli", "serve", "--stdio", "--device", "cpu"])
    try:
        w.read()
        w.send({"id": "a", "method": "info"})
        assert w.until_final("a")[1]["result"]["device"] == "cpu"
    finally:
        w.proc.kill()
        w.proc.wait()


@pytest.mark.parametrize("line, request_id, code", [
    ("this is not json", None, "bad_request"),
    ("[1, 2, 3]", None, "bad_request"),
    ('{"method": "info"}', None, "bad_request"),
    ('{"id": true, "method": "info"}', None, "bad_request"),
    ('{"id": 5, "method": "info", "params": [1]}', 5, "bad_request"),
    ('{"id": 6, "method": "teleport"}', 6, "unknown_method"),
    ('{"id": 7, "method": "predict", "params": {"photos": "one.jpg", "model": "m", "out_gpkg": "o"}}', 7,
     "bad_request"),
    ('{"id": 8, "method": "predict", "params": {"photos": ["a.jpg"], "model": "m", "out_gpkg": "o", "top_k": 0}}',
     8, "bad_request"),
    (('{"id": 9, "method": "predict", "params": {"photos": ["a.jpg"], "model": "/no/such/model.safetensors", '
      '"out_gpkg": "/tmp/o.gpkg"}}'), 9, "bad_input"),
    ('{"id": 10, "method": "info", "params": {"model": "/no/such/model.safetensors"}}', 10, "bad_input"),
    ('{"id": 11, "method": "info", "params": {"modle": "m.safetensors"}}', 11, "bad_request"),
    ('{"id": 12, "method": "search", "params": {"gpkg": "r.gpkg", "model": "m", "claimed_after": 2024}}', 12,
     "bad_request"),
    ('{"id": 13, "method": "predict", "params": {"photos": ["a.jpg"], "model": "m", "out_gpkg": "o", "res": 1}}', 13,
     "bad_request"),
])
def test_a_bad_request_is_an_error_line_and_the_worker_stays_alive(worker, line, request_id, code):
    worker.read()
    worker.send(line)
    _, reply = worker.until_final(request_id)
    assert reply["type"] == "error" and reply["error"]["code"] == code
    assert reply["error"]["message"] and "\n" not in reply["error"]["message"]
    worker.send({"id": "after", "method": "info"})
    _, reply = worker.until_final("after")
    assert reply["type"] == "result"


def test_a_missing_model_names_the_file(worker):
    worker.read()
    worker.send({"id": 1, "method": "info", "params": {"model": "/no/such/model.safetensors"}})
    _, reply = worker.until_final(1)
    assert "/no/such/model.safetensors" in reply["error"]["message"]


def test_info_on_a_file_that_is_no_checkpoint_says_checkpoint_not_photo(worker, tmp_path):
    """A model that is missing or not a checkpoint is named as a checkpoint (its hash is not read first)."""
    not_a_model = tmp_path / "notes.safetensors"
    not_a_model.write_text("my notes")
    worker.read()
    for i, model in enumerate([tmp_path / "gone.safetensors", not_a_model, tmp_path]):
        worker.send({"id": i, "method": "info", "params": {"model": str(model)}})
        _, reply = worker.until_final(i)
        message = reply["error"]["message"]
        assert reply["error"]["code"] == "bad_input" and message.startswith(f"checkpoint {model}"), message
        assert "photo" not in message


def test_info_reports_the_models_header_and_the_parameters(worker, model_path):
    worker.read()
    worker.send({"id": "m", "method": "info", "params": {"model": str(model_path)}})
    _, reply = worker.until_final("m")
    info = reply["result"]
    assert info["model"]["path"] == str(model_path) and len(info["model"]["sha256"]) == 64
    assert info["model"]["header"]["heads_trained"]["location"] is True
    assert info["params"] == {m: [p.name for p in rows] for m, rows in PARAMS.items()}


def test_a_reused_id_of_a_queued_request_is_refused(worker):
    worker.read()
    # Both lines reach the reader before the first info can finish: the worker is busy importing for it.
    worker.send('{"id": 1, "method": "info", "params": {}}\n{"id": 1, "method": "info"}')
    replies = [worker.read(), worker.read()]
    assert sorted(r["type"] for r in replies) == ["error", "result"]
    assert [r["error"]["code"] for r in replies if r["type"] == "error"] == ["bad_request"]


def test_cancel_of_an_unknown_request_says_so(worker):
    worker.read()
    worker.send({"id": "c", "method": "cancel", "params": {"target": "never-sent"}})
    _, reply = worker.until_final("c")
    assert reply["result"] == {"target": "never-sent", "cancelled": False}


def test_shutdown_replies_and_exits_zero(worker):
    worker.read()
    worker.send({"id": 1, "method": "shutdown"})
    _, reply = worker.until_final(1)
    assert reply == {"id": 1, "type": "result", "result": {"stopping": True}}
    assert worker.proc.wait(timeout=30) == 0


def test_closing_stdin_stops_the_worker(worker):
    worker.read()
    assert worker.close() == 0


def test_stdout_carries_only_protocol_lines_even_when_code_prints(tmp_path):
    script = ("import os, sys\nfrom gtloc_engine.service import serve_stdio\n"
              "import gtloc_engine.service as s\n"
              "orig = s.Worker._do_info\n"
              "def noisy(self, *a):\n"
              "    print('stray print from python')\n"
              "    os.write(1, b'stray bytes on fd 1\\n')\n"
              "    return orig(self, *a)\n"
              "s.Worker._do_info = noisy\n"
              "sys.exit(serve_stdio())\n")
    w = WorkerProcess([sys.executable, "-c", script])
    try:
        w.read()
        w.send({"id": 1, "method": "info"})
        _, reply = w.until_final(1)
        assert reply["type"] == "result"
        assert w.close() == 0
        stderr = w.proc.stderr.read()
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
    assert "stray print from python" in stderr and "stray bytes on fd 1" in stderr
    assert len(w.raw_lines) == 2 and all(json.loads(line) for line in w.raw_lines)


# -- predict through the pipeline -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_path(toy_manifest, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("service_run")
    cmd = [sys.executable, "-m", "gtloc_engine.cli", "train", "--manifest", str(toy_manifest), "--out", str(out),
           "--preset", "tiny", "--epochs", "2", "--batch-size", "64", "--cache-dir", str(cache_dir), "--quiet"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out / "model.safetensors"


@pytest.fixture(scope="module")
def constants_cache(tmp_path_factory):
    """Model constants (gallery and grid embeddings) computed once for this module's model."""
    return tmp_path_factory.mktemp("constants")


@pytest.fixture
def toy_photos(toy_manifest):
    return sorted((toy_manifest.parent / "img").glob("*.png"))


@pytest.mark.slow
def test_predict_sends_progress_then_a_summary_and_writes_the_geopackage(worker, model_path, toy_photos, tmp_path,
                                                                         constants_cache):
    import geopandas as gpd

    photos = [str(p) for p in toy_photos[:2]] + [str(tmp_path / "missing.jpg")]
    out = tmp_path / "pred.gpkg"
    worker.read()
    worker.send({"id": "p", "method": "predict", "params": {
        "model": str(model_path), "photos": photos, "out_gpkg": str(out), "rasters_dir": str(tmp_path / "r"),
        "batch_size": 1, "cache_dir": str(constants_cache)}})
    progress, reply = worker.until_final("p", timeout=300)
    assert reply["type"] == "result", reply
    summary = reply["result"]
    assert summary["n_done"] == 2 and summary["n_failed"] == 1 and not summary["cancelled"]
    assert "missing.jpg" in summary["failures"][0]["path"] and summary["failures"][0]["reason"]
    # Stages in order (the module's constants cache is fresh here: the model's grids are built on this first run).
    stages = [m["stage"] for m in progress]
    assert stages[0] == STAGE_LOADING_MODEL and stages[-1] == STAGE_PHOTOS
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == list(PREDICT_STAGES)
    building = [m for m in progress if m["stage"] == STAGE_CONSTANTS]
    assert building[0]["done"] == 0 and building[-1]["done"] == building[-1]["total"] > 0
    assert all(m["eta_s"] >= 0 for m in building if "eta_s" in m) and any("eta_s" in m for m in building)
    photos_progress = [m for m in progress if m["stage"] == STAGE_PHOTOS]
    assert photos_progress and all(0 <= m["done"] <= m["total"] == 3 for m in photos_progress)
    assert [m["done"] for m in photos_progress] == sorted(m["done"] for m in photos_progress)
    assert sorted(gpd.read_file(out, layer="photos")["path"]) == sorted(photos[:2])
    assert all(Path(r).is_file() for r in summary["rasters"])
    # The same model again: a second run on the same GeoPackage resumes instead of redoing the photos.
    worker.send({"id": "again", "method": "predict", "params": {
        "model": str(model_path), "photos": photos[:2], "out_gpkg": str(out), "cache_dir": str(constants_cache)}})
    progress, reply = worker.until_final("again", timeout=300)
    assert reply["result"]["n_skipped"] == 2 and reply["result"]["n_done"] == 0
    # Model and constants are held by the worker now: no constants stage, the photos at once.
    assert [m["stage"] for m in progress][:2] == [STAGE_LOADING_MODEL, STAGE_PHOTOS]
    assert {m["stage"] for m in progress} == {STAGE_LOADING_MODEL, STAGE_PHOTOS}


def test_predict_given_a_known_time_and_a_bad_one(worker, model_path, toy_photos, tmp_path, constants_cache):
    import geopandas as gpd

    out = tmp_path / "given.gpkg"
    worker.read()
    params = {"model": str(model_path), "photos": [str(toy_photos[0])], "out_gpkg": str(out),
              "cache_dir": str(constants_cache)}
    worker.send({"id": "bad", "method": "predict", "params": {**params, "time": "yesterday at noon"}})
    _, reply = worker.until_final("bad", timeout=300)
    assert reply["type"] == "error" and reply["error"]["code"] == "bad_input" and "yesterday" in reply["error"]["message"]
    worker.send({"id": "t", "method": "predict", "params": {**params, "time": "2021:07:01 12:00:00"}})
    _, reply = worker.until_final("t", timeout=300)
    assert reply["type"] == "result", reply
    rows = gpd.read_file(out, layer="photos")
    assert rows["place_given"].tolist() == ["image+time"] and rows["given_time_local"].tolist() == ["2021-07-01T12:00:00"]


def _cancel(worker, target: str) -> dict:
    """Send `cancel` for `target`; the final lines of both requests by id ('stop' and the target)."""
    worker.send({"id": "stop", "method": "cancel", "params": {"target": target}})
    replies = {}
    while len(replies) < 2:
        message = worker.read(timeout=300)
        if message["type"] != "progress":
            replies[message["id"]] = message
    return replies


@pytest.mark.slow
def test_cancel_stops_a_running_predict_between_batches(worker, model_path, toy_photos, tmp_path, constants_cache):
    photos = [str(p) for p in toy_photos[:60]]
    worker.read()
    worker.send({"id": "long", "method": "predict", "params": {
        "model": str(model_path), "photos": photos, "out_gpkg": str(tmp_path / "c.gpkg"), "batch_size": 1,
        "cache_dir": str(constants_cache)}})
    first = worker.read(timeout=300)
    while first.get("stage") != STAGE_PHOTOS:  # cancel once photos are being predicted
        assert first["type"] == "progress", first
        first = worker.read(timeout=300)
    replies = _cancel(worker, "long")
    assert replies["stop"]["result"] == {"target": "long", "cancelled": True}
    summary = replies["long"]["result"]
    assert summary["cancelled"] and summary["n_done"] < len(photos)
    worker.send({"id": "next", "method": "info"})
    assert worker.until_final("next")[1]["type"] == "result"


def test_cancel_while_a_first_model_builds_its_constants_stops_it_and_leaves_no_partial_file(
        worker, model_path, toy_photos, tmp_path):
    cache = tmp_path / "fresh"
    worker.read()
    worker.send({"id": "first", "method": "predict", "params": {
        "model": str(model_path), "photos": [str(toy_photos[0])], "out_gpkg": str(tmp_path / "c.gpkg"),
        "cache_dir": str(cache), "res_deg": 0.05}})
    message = worker.read(timeout=300)
    while message.get("stage") != STAGE_CONSTANTS:
        message = worker.read(timeout=300)
    replies = _cancel(worker, "first")
    assert replies["stop"]["result"] == {"target": "first", "cancelled": True}
    error = replies["first"]["error"]
    assert error["code"] == "cancelled" and "constants" in error["message"]
    assert not list(cache.rglob("*.tmp")) and not (tmp_path / "c.gpkg").exists()
    worker.send({"id": "next", "method": "info"})
    assert worker.until_final("next")[1]["type"] == "result"


def test_the_worker_module_imports_no_torch():
    """The hello must come fast: the service module itself stays light (torch loads with the first model)."""
    code = "import sys, gtloc_engine.cli, gtloc_engine.service; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=ENV,
                          timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


# -- search over a results GeoPackage ---------------------------------------------------------------------------

def _search(worker, request_id, params: dict) -> dict:
    worker.send({"id": request_id, "method": "search", "params": params})
    progress, reply = worker.until_final(request_id)
    assert not progress
    return reply


def test_search_answers_like_the_engine_and_writes_json_and_a_geopackage_layer(worker, search_collection,
                                                                               trained_checkpoint, tmp_path):
    import geopandas as gpd
    import numpy as np

    from gtloc_engine.inference.search import CollectionSearch, SearchQuery, TimeWindow

    gpkg, truth = search_collection
    worker.read()
    params = {"gpkg": str(gpkg), "model": str(trained_checkpoint), "near": [48.8, 2.3], "radius_km": 20000,
              "month": "11-2", "hour": "22-3", "top_k": 4, "out": str(tmp_path / "hits.gpkg")}
    reply = _search(worker, "s", params)
    assert reply["type"] == "result", reply
    result = reply["result"]
    expected = CollectionSearch(gpkg, trained_checkpoint).search(SearchQuery(
        near_latlon_deg=(48.8, 2.3), radius_km=20000.0, window=TimeWindow.parse("11-2", "22-3"), top_k=4))
    assert result["query"]["kind"] == "place+time" and result["out"] == params["out"]
    assert [r["sha256"] for r in result["results"]] == [r["sha256"] for r in expected["results"]]
    assert np.allclose([r["score"] for r in result["results"]], [r["score"] for r in expected["results"]])
    layer = gpd.read_file(params["out"], layer="search_results")
    assert layer["sha256"].tolist() == [r["sha256"] for r in result["results"]] and layer.crs.to_epsg() == 4326
    # The same worker, a time-only query to JSON: the search object is reused, the answer is the file's content.
    out_json = tmp_path / "hits.json"
    reply = _search(worker, "t", {"gpkg": str(gpkg), "model": str(trained_checkpoint), "month": "6",
                                  "top_k": len(truth), "out": str(out_json)})
    written = json.loads(out_json.read_text())
    assert written["query"]["kind"] == "time" and len(written["results"]) == len(truth)
    assert [r["sha256"] for r in written["results"]] == [r["sha256"] for r in reply["result"]["results"]]


def test_search_errors_are_error_lines_and_the_worker_stays_alive(worker, search_collection, trained_checkpoint,
                                                                  tmp_path):
    from gtloc_engine.model import GTLoc, preset
    from gtloc_engine.model.checkpoint import save_checkpoint

    gpkg, _ = search_collection
    other = save_checkpoint(tmp_path / "other.safetensors", GTLoc(preset("tiny"), seed=1))
    base = {"gpkg": str(gpkg), "model": str(trained_checkpoint)}
    worker.read()
    cases = [({**base, "model": str(other), "near": [48.8, 2.3]}, "bad_input", "holds no embeddings"),
             ({**base, "near": [48.8]}, "bad_request", "'near'"),
             ({**base, "near": [48.8, 2.3], "text": "snow"}, "bad_input", "exactly one query"),
             ({**base, "month": "13"}, "bad_input", "month"),
             ({**base, "text": "snow", "out": str(tmp_path / "hits.csv")}, "bad_request", "hits.csv"),
             ({**base, "gpkg": str(tmp_path / "none.gpkg"), "month": "6"}, "bad_input", "none.gpkg")]
    for i, (params, code, words) in enumerate(cases):
        reply = _search(worker, i, params)
        assert reply["type"] == "error" and reply["error"]["code"] == code, (params, reply)
        assert words in reply["error"]["message"] and "\n" not in reply["error"]["message"]
    reply = _search(worker, "ok", {**base, "near": [48.8, 2.3], "top_k": 2})
    assert reply["type"] == "result" and len(reply["result"]["results"]) == 2


def test_search_takes_the_filters_and_settings_of_the_cli(worker, search_collection, trained_checkpoint, tmp_path):
    """within + within_layer, pooling, point_source, claimed_after/claimed_before reach the engine: the worker answers
    as CollectionSearch does with the same query and settings."""
    import datetime as dt

    import geopandas as gpd
    import numpy as np
    from shapely.geometry import Polygon

    from gtloc_engine.inference.search import CollectionSearch, SearchConfig, SearchQuery, TimeWindow

    gpkg, truth = search_collection
    areas = tmp_path / "areas.gpkg"  # its first layer holds no photo: only the named layer finds some
    gpd.GeoDataFrame(geometry=[Polygon([(0, 0), (1, 0), (1, 1)])], crs="EPSG:4326").to_file(areas, layer="empty")
    gpd.GeoDataFrame(geometry=[Polygon([(150, -35), (153, -35), (153, -32), (150, -32)]),
                               Polygon([(138, 34), (141, 34), (141, 37), (138, 37)])], crs="EPSG:4326").to_file(
        areas, layer="sydney_tokyo")
    base = {"gpkg": str(gpkg), "model": str(trained_checkpoint), "top_k": len(truth)}
    worker.read()
    reply = _search(worker, "w", {**base, "month": "3-8", "within": str(areas), "within_layer": "sydney_tokyo",
                                  "pooling": "mean", "point_source": "prediction"})
    assert reply["type"] == "result", reply
    got = reply["result"]
    expected = CollectionSearch(gpkg, trained_checkpoint, config=SearchConfig(pooling="mean",
                                                                              point_source="prediction")).search(
        SearchQuery(window=TimeWindow.parse("3-8", None), within=str(areas), within_layer="sydney_tokyo",
                    top_k=len(truth)))
    assert [r["sha256"] for r in got["results"]] == [r["sha256"] for r in expected["results"]]
    assert np.allclose([r["score"] for r in got["results"]], [r["score"] for r in expected["results"]])
    assert got["results"] and {r["point_source"] for r in got["results"]} == {"prediction"}
    max_pooled = _search(worker, "m", {**base, "month": "3-8", "within": str(areas), "within_layer": "sydney_tokyo"})
    assert [r["score"] for r in max_pooled["result"]["results"]] != [r["score"] for r in got["results"]]
    after, before = dt.datetime(2021, 3, 1), dt.datetime(2021, 9, 1)
    reply = _search(worker, "c", {**base, "near": [0.0, 0.0], "claimed_after": "2021-03-01T00:00",
                                  "claimed_before": "2021:09:01 00:00:00"})
    in_range = {name for name, info in truth.items() if info["claims"] and after <= info["time"] < before}
    assert {Path(r["path"]).name for r in reply["result"]["results"]} == in_range and 0 < len(in_range) < len(truth)
    assert reply["result"]["query"]["claimed_before"] == "2021-09-01T00:00:00"


def test_predict_takes_the_cell_size_the_time_gallery_and_ten_crops(worker, model_path, toy_photos, tmp_path,
                                                                   constants_cache):
    import sqlite3

    import numpy as np
    import rasterio

    photo = str(toy_photos[5])
    gallery = tmp_path / "times.npy"  # two times to choose from: July 1 at noon, January 15 at 06:30
    np.save(gallery, np.array([[7, 1, 12, 0, 0], [1, 15, 6, 30, 0]], dtype=np.int32))
    runs = {"plain": {}, "coarse": {"res_deg": 2}, "gallery": {"time_gallery": str(gallery)},
            "tencrop": {"tencrop": True}}
    worker.read()
    rows = {}
    for name, extra in runs.items():
        out = tmp_path / f"{name}.gpkg"
        worker.send({"id": name, "method": "predict", "params": {
            "model": str(model_path), "photos": [photo], "out_gpkg": str(out), "rasters_dir": str(tmp_path / name),
            "cache_dir": str(constants_cache), **extra}})
        _, reply = worker.until_final(name, timeout=300)
        assert reply["type"] == "result" and reply["result"]["n_done"] == 1, reply
        with sqlite3.connect(out) as db:
            rows[name] = db.execute("SELECT p.pred_month, p.pred_hour_local, e.embedding FROM photos p "
                                    "JOIN embeddings e USING (sha256)").fetchone()
        db.close()
        [global_tif] = (tmp_path / name).glob("*_global.tif")
        with rasterio.open(global_tif) as raster:
            assert raster.res == ((2.0, 2.0) if name == "coarse" else (0.25, 0.25)), name
    assert (rows["gallery"][0], round(rows["gallery"][1])) in ((7, 12), (1, 6), (1, 7))  # (a circular mean hour)
    assert rows["tencrop"][2] != rows["plain"][2] and rows["coarse"][2] == rows["plain"][2]


# -- the shadow locus ---------------------------------------------------------------------------------------------

def test_shadow_sends_progress_then_writes_the_locus_fused_with_a_photos_posterior(worker, model_path, toy_photos,
                                                                                  tmp_path, constants_cache):
    import numpy as np
    import rasterio

    out = tmp_path / "shadow"
    worker.read()
    worker.send({"id": "s", "method": "shadow", "params": {
        "measurements": [{"height_m": 2.0, "length_m": 3.5, "time": "2021-07-01T15:00", "time_sigma_min": 4.0},
                         {"elev_deg": 12.0, "time": "2021-07-01T19:00Z", "bearing_deg": 95.0}],
        "photo": str(toy_photos[0]), "model": str(model_path), "res_deg": 2.0, "top_k": 2,
        "cache_dir": str(constants_cache), "out_dir": str(out)}})
    progress, reply = worker.until_final("s", timeout=300)
    assert reply["type"] == "result", reply
    summary = reply["result"]
    assert {m["stage"] for m in progress} == {"shadow locus"}
    assert [m["done"] for m in progress] == list(range(1, progress[-1]["total"] + 1))  # bins, then the fusion
    assert progress[-1]["total"] == sum(m["time_bins"] for m in summary["measurements"]) + 1
    with rasterio.open(summary["fused_tif"]) as src:
        fused = src.read(1)
        assert src.crs.to_epsg() == 4326 and fused.shape == (90, 180)
    row, col = np.unravel_index(np.argmax(fused / np.cos(np.radians(89.0 - 2.0 * np.arange(90)))[:, None]),
                                fused.shape)
    assert summary["fused"]["peak_lat_deg"] == pytest.approx(89.0 - 2.0 * row)
    assert summary["fused"]["peak_lon_deg"] == pytest.approx(-179.0 + 2.0 * col)
    assert len(summary["locus"]["candidates"]) == 2 and Path(summary["gpkg"]).is_file()
    assert summary["posterior"].startswith(str(toy_photos[0]))


def test_shadow_with_a_posterior_raster_and_its_errors(worker, tmp_path):
    import numpy as np

    from gtloc_engine.geo import Surface
    from gtloc_engine.io.rasters import write_surface_geotiff

    flat = write_surface_geotiff(tmp_path / "flat_global.tif", Surface(
        np.full((36, 72), 1.0 / (36 * 72), np.float32), -180.0, 90.0, 5.0, "global"))
    one = {"elev_deg": 30.0, "time": "2024-03-20T12:00Z"}
    worker.read()
    worker.send({"id": "p", "method": "shadow", "params": {"measurements": [one], "posterior": str(flat),
                                                            "out_dir": str(tmp_path / "p")}})
    _, reply = worker.until_final("p")
    assert reply["type"] == "result", reply
    assert reply["result"]["res_deg"] == 5.0 and reply["result"]["fused_tif"]  # the locus took the raster's grid
    cases = [({"measurements": [{**one, "height_m": 3.0}]}, "bad_input", "not both"),
             ({"measurements": [{**one, "elev_deg": -1.0}]}, "bad_input", "elev_deg -1.0 is out of range"),
             ({"measurements": [{**one, "time": "the 5th"}]}, "bad_input", "'the 5th'"),
             ({"measurements": [{**one, "bearing": 3.0}]}, "bad_request", "no parameter 'bearing'"),
             ({"measurements": [{**one, "elev_deg": "30"}]}, "bad_request", "'elev_deg'"),
             ({"measurements": one}, "bad_request", "'measurements'"),
             ({"measurements": [one], "posterior": str(flat), "res_deg": 1.0}, "bad_input", "leave res_deg out"),
             ({"measurements": [one], "posterior": str(tmp_path / "none.tif")}, "bad_input", "none.tif")]
    for i, (params, code, words) in enumerate(cases):
        worker.send({"id": i, "method": "shadow", "params": {"out_dir": str(tmp_path / f"e{i}"), **params}})
        _, reply = worker.until_final(i)
        assert reply["type"] == "error" and reply["error"]["code"] == code, (params, reply)
        assert words in reply["error"]["message"] and "\n" not in reply["error"]["message"]
        assert not (tmp_path / f"e{i}").exists()


def test_a_cancelled_shadow_ends_with_a_cancelled_error_and_writes_nothing(worker, tmp_path):
    worker.read()
    worker.send({"id": "long", "method": "shadow", "params": {
        "measurements": [{"elev_deg": 30.0, "time": "2024-03-20T12:00", "time_sigma_min": 60.0}],
        "out_dir": str(tmp_path / "c")}})
    first = worker.read(timeout=300)
    assert first["type"] == "progress" and first["total"] == 48, first
    worker.send({"id": "stop", "method": "cancel", "params": {"target": "long"}})
    replies = {}
    while len(replies) < 2:
        message = worker.read(timeout=300)
        if message["type"] != "progress":
            replies[message["id"]] = message
    assert replies["stop"]["result"] == {"target": "long", "cancelled": True}
    assert replies["long"]["type"] == "error" and replies["long"]["error"]["code"] == "cancelled"
    assert not (tmp_path / "c").exists()
