"""The `gtloc` command line, run as a real subprocess: train, predict (with bad photos in the batch), embed, info."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def gtloc(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "gtloc_engine.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                                           "HOME": str(Path.home())})


@pytest.fixture(scope="module")
def model_path(toy_manifest, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_run")
    proc = gtloc("train", "--manifest", toy_manifest, "--out", out, "--preset", "tiny", "--epochs", "3",
                 "--batch-size", "64", "--cache-dir", cache_dir, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["epoch"] == 3
    return out / "model.safetensors"


@pytest.fixture
def photo_batch(toy_manifest, tmp_path):
    good = sorted((toy_manifest.parent / "img").glob("*.png"))[:3]
    jpeg = tmp_path / "fine.jpg"
    Image.open(good[0]).convert("RGB").save(jpeg, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg.read_bytes()[:200])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a photo")
    return {"good": [*good, jpeg], "bad": [truncated, empty, text, tmp_path / "missing.jpg"]}


def test_predict_reports_each_bad_photo_in_one_line_and_still_predicts_the_rest(model_path, photo_batch):
    photos = [photo_batch["good"][0], *photo_batch["bad"], *photo_batch["good"][1:]]
    proc = gtloc("predict", *photos, "--model", model_path, "--top-k", "3")
    assert proc.returncode == 1
    results = json.loads(proc.stdout)
    assert [r["photo"] for r in results] == [str(p) for p in photos]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gtloc: error:")]
    assert len(errors) == len(photo_batch["bad"])
    for bad in photo_batch["bad"]:
        assert sum(bad.name in line for line in errors) == 1
    for r in results:
        if Path(r["photo"]) in photo_batch["good"]:
            assert len(r["places"]) == 3
            assert abs(sum(p["probability"] for p in r["places"])) <= 1.0 + 1e-6
            # Surface modes (densest first), each with its mass within radius_km: disjoint discs, so the sum <= 1.
            assert [p["rank"] for p in r["places"]] == [1, 2, 3] and all(p["radius_km"] == 100 for p in r["places"])
            assert 1 <= r["time"]["month"] <= 12 and 0 <= r["time"]["hour_local"] < 24
            assert r["time"]["hour_spread"] > 0
        else:
            assert "error" in r and "places" not in r


def test_predict_all_good_exits_zero_and_writes_the_file(model_path, photo_batch, tmp_path):
    out = tmp_path / "pred.json"
    proc = gtloc("predict", *photo_batch["good"], "--model", model_path, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(out.read_text())) == len(photo_batch["good"])


def test_predict_given_a_known_time_changes_the_places_and_says_so(model_path, photo_batch, tmp_path):
    good = photo_batch["good"][:2]
    plain = json.loads(gtloc("predict", *good, "--model", model_path).stdout)
    proc = gtloc("predict", *good, "--model", model_path, "--time", "2021-07-01T12:00")
    assert proc.returncode == 0, proc.stderr
    given = json.loads(proc.stdout)
    assert all(r["place_given"] == "image+time" for r in given)
    assert any("it2g" in note for note in given[0]["notes"])  # trained without the composed losses: says so
    assert [r["places"] for r in given] != [r["places"] for r in plain]
    bad = gtloc("predict", *good, "--model", model_path, "--time", "2021-02-30T12:00")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "2021-02-30" in bad.stderr


def test_predict_with_a_time_gallery_and_ten_crops(model_path, photo_batch, tmp_path):
    gallery = tmp_path / "times.npy"
    np.save(gallery, np.array([[7, 1, 12, 0, 0], [1, 15, 6, 30, 0]], dtype=np.int32))
    proc = gtloc("predict", *photo_batch["good"][:2], "--model", model_path, "--time-gallery", gallery, "--tencrop")
    assert proc.returncode == 0, proc.stderr
    for r in json.loads(proc.stdout):  # only two times to choose from: July 1 noon or January 15 06:30
        assert (r["time"]["month"], round(r["time"]["hour_local"])) in ((7, 12), (1, 7), (1, 6))


def test_predict_with_a_broken_checkpoint_is_one_line_exit_2(photo_batch, tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 100)
    proc = gtloc("predict", *photo_batch["good"], "--model", bad)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "broken.safetensors" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_embed_writes_photos_places_and_times_without_pickles(model_path, photo_batch, tmp_path):
    out = tmp_path / "emb.npz"
    proc = gtloc("embed", *photo_batch["good"], photo_batch["bad"][1], "--model", model_path,
                 "--place", "48.85,2.35", "--place=-33.9,151.2", "--time", "2021-06-01T12:00:00", "--out", out)
    assert proc.returncode == 1  # the empty file
    with np.load(out, allow_pickle=False) as data:
        assert data["image_emb"].shape == (len(photo_batch["good"]), 64)
        np.testing.assert_allclose(np.linalg.norm(data["place_emb"], axis=1), 1.0, rtol=1e-5)
        assert data["time_emb"].shape == (1, 64) and len(data["image_sha256"][0]) == 64


def test_info_prints_config_heads_and_hash(model_path):
    proc = gtloc("info", model_path)
    assert proc.returncode == 0
    info = json.loads(proc.stdout)
    assert info["heads_trained"] == {"location": True, "time": True, "gps_time": False, "ig2t": False, "it2g": False,
                                     "gt2i": False}
    assert info["model"]["backbone"]["name"] == "gtloc-tiny-vit"
    assert len(info["file"]["sha256"]) == 64 and info["info"]["epoch"] == 3


@pytest.mark.parametrize("args,needle", [
    (["info", "/nonexistent/m.safetensors"], "not found"),
    # predict, search and info parameters are read by gtloc_engine/protocol.py, before any file is opened
    (["predict", "a.jpg", "--model", "m.safetensors", "--top-k", "0"], "'top_k' of predict must be a positive"),
    (["predict", "a.jpg", "--model", "m.safetensors", "--res-deg", "0"], "res_deg 0.0 must be a cell size"),
    (["predict", "a.jpg", "--model", "m.safetensors", "--rasters", "r"], "need a results GeoPackage"),
    (["search", "r.gpkg", "--model", "m.safetensors", "--near", "1,2", "--pooling", "median"], "pooling 'median'"),
    (["search", "r.gpkg", "--model", "m.safetensors", "--near", "1,2", "--point-source", "exif"], "point_source"),
    (["search", "r.gpkg", "--model", "m.safetensors", "--near", "1,2", "--claimed-after", "2024"], "'2024'"),
    (["search", "r.gpkg", "--model", "m.safetensors", "--near", "1,2", "--out", "hits.csv"], "hits.csv"),
    (["train", "--manifest", "/nonexistent.csv", "--out", "/tmp/x", "--preset", "tiny"], "nonexistent.csv"),
    (["train", "--manifest", "/dev/null", "--out", "/tmp/x", "--preset", "nope"], "preset"),
])
def test_usage_errors_are_one_line_exit_2(args, needle):
    proc = gtloc(*args)
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_predict_says_when_a_first_run_builds_the_models_constants_and_not_when_they_are_cached(model_path,
                                                                                             photo_batch, tmp_path):
    def predict(out, cache, *extra):
        return subprocess.run([sys.executable, "-m", "gtloc_engine.cli", "predict", str(photo_batch["good"][0]),
                               "--model", str(model_path), "--out", str(tmp_path / out), *extra],
                              capture_output=True, text=True, timeout=300,
                              env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
                                   "GTLOC_CACHE": str(tmp_path / cache)})

    first = predict("a.gpkg", "c")
    assert first.returncode == 0, first.stderr
    lines = [line for line in first.stderr.splitlines() if "building model constants" in line]
    assert lines and "(first time for this model)" in lines[0] and "points" in lines[0]
    assert any("s left" in line for line in lines)
    again = predict("b.gpkg", "c")
    assert again.returncode == 0, again.stderr
    assert "building model constants" not in again.stderr
    quiet = predict("q.gpkg", "q", "--quiet")
    assert quiet.returncode == 0 and "building model constants" not in quiet.stderr
