"""Training end to end on the learnable toy set: it learns, resumes exactly, caches features, runs on 2 ranks."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from gtloc_engine.errors import GtlocError
from gtloc_engine.model import load_checkpoint, preset
from gtloc_engine.training.trainer import MODEL_FILE, TrainConfig, Trainer, parameter_checksum

CHANCE_ACC_200KM = 100.0 / 8  # 8 toy places, far apart


def toy_config(out_dir, manifest, cache_dir, **kw):
    base = dict(out_dir=str(out_dir), model=preset("tiny").to_dict(), manifest=str(manifest), epochs=50,
                batch_size=64, lr=1e-3, loc_queue=128, time_queue=128, warmup_steps=10,
                # The toy set encodes time exactly, so a sharp TML target suits it; with the default 0.2 the target's
                # own entropy (~4.9 of at most 5.3 nats here) leaves too little loss to see fall.
                tau_delta=0.05,
                cache_dir=str(cache_dir), progress=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(toy_manifest, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    history = Trainer(toy_config(out, toy_manifest, cache_dir)).run()
    return out, history


def test_training_lowers_the_loss(trained):
    _, history = trained
    assert len(history) == 50 and history[-1]["step"] == 300
    assert history[-1]["loss_loc"] < 0.5 * history[0]["loss_loc"]
    assert history[-1]["loss_time"] < 0.85 * history[0]["loss_time"]


def test_trained_model_beats_chance_on_place_and_time(trained):
    last = trained[1][-1]
    assert last["val_acc_200km"] > 3 * CHANCE_ACC_200KM
    assert last["val_month_err"] < 2.0  # chance: 3 months
    assert last["val_hour_err"] < 4.5  # chance: 6 hours
    assert last["val_geotemporal_r@10"] > 2 * (100 * 10 / 48)  # 48 validation photos


def test_run_folder_holds_checkpoint_state_and_history(trained):
    out, history = trained
    model = load_checkpoint(out / MODEL_FILE)
    assert model.heads_trained == {"location": True, "time": True, "gps_time": False, "ig2t": False, "it2g": False, "gt2i": False}
    assert model.gallery_latlon_deg.shape[1] == 2 and len(model.gallery_latlon_deg) == 432
    lines = (out / "history.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(1, 51))
    assert json.loads((out / "train_config.json").read_text())["epochs"] == 50


def test_resume_continues_exactly(toy_manifest, cache_dir, tmp_path):
    straight = Trainer(toy_config(tmp_path / "a", toy_manifest, cache_dir, epochs=3))
    straight.run()
    Trainer(toy_config(tmp_path / "b", toy_manifest, cache_dir, epochs=3, stop_after_epochs=2)).run()
    resumed = Trainer(toy_config(tmp_path / "b", toy_manifest, cache_dir, epochs=3))
    history = resumed.run()
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert parameter_checksum(resumed.model) == parameter_checksum(straight.model)


def test_feature_cache_is_reused_and_matches_the_backbone(toy_manifest, tmp_path):
    import torch

    from gtloc_engine.io.photos import load_photo_rgb
    from gtloc_engine.model import GTLoc
    from gtloc_engine.training.feature_cache import FeatureCache
    from gtloc_engine.records import read_manifest

    paths = [r.path for r in read_manifest(toy_manifest)][:20]
    model = GTLoc(preset("tiny"))
    cache = FeatureCache(model.backbone, tmp_path)
    feats, failures = cache.features(paths, progress=False)
    assert not failures
    shards = sorted(cache.dir.glob("shard-*"))
    again, _ = FeatureCache(GTLoc(preset("tiny")).backbone, tmp_path).features(paths, progress=False)
    assert sorted(cache.dir.glob("shard-*")) == shards  # nothing recomputed
    with torch.no_grad():
        direct = model.backbone(torch.stack([model.backbone.preprocess(load_photo_rgb(p)) for p in paths[:4]]))
    torch.testing.assert_close(again.get(np.arange(4)), direct, atol=1e-5, rtol=1e-5)
    # Another backbone (another seed) gets another cache folder.
    assert FeatureCache(GTLoc(preset("tiny"), seed=9).backbone, tmp_path).dir != cache.dir


def _manifest_with(tmp_path, toy_manifest, edit):
    lines = toy_manifest.read_text().splitlines()
    root = toy_manifest.parent
    out = [lines[0]]
    for i, line in enumerate(lines[1:]):
        path, lat, lon, ts = line.split(",")
        out.append(",".join(edit(i, str(root / path), lat, lon, ts)))
    m = tmp_path / "m.csv"
    m.write_text("\n".join(out) + "\n")
    return m


def test_untimed_photos_train_location_only(toy_manifest, cache_dir, tmp_path):
    m = _manifest_with(tmp_path, toy_manifest, lambda i, p, la, lo, ts: (p, la, lo, ts if i % 3 == 0 else ""))
    history = Trainer(toy_config(tmp_path / "r", m, cache_dir, epochs=2)).run()
    assert "loss_time" in history[-1] and "loss_loc" in history[-1]
    m2 = _manifest_with(tmp_path, toy_manifest, lambda i, p, la, lo, ts: (p, la, lo, ""))
    trainer = Trainer(toy_config(tmp_path / "r2", m2, cache_dir, epochs=1))
    trainer.run()
    assert trainer.model.heads_trained == {"location": True, "time": False, "gps_time": False, "ig2t": False, "it2g": False, "gt2i": False}


def test_unreadable_photos_are_skipped_not_fatal(toy_manifest, cache_dir, tmp_path, caplog):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")

    def edit(i, p, la, lo, ts):
        return (str(bad) if i == 0 else str(tmp_path / "missing.jpg") if i == 1 else p, la, lo, ts)

    trainer = Trainer(toy_config(tmp_path / "r", _manifest_with(tmp_path, toy_manifest, edit), cache_dir, epochs=1))
    trainer.run()
    assert len(trainer.train_idx) + len(trainer.val_idx) == 478
    assert sum("broken.png" in r.message for r in caplog.records) == 1
    assert sum("missing.jpg" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("row,message", [
    ("a.png,95,0,", "lat_deg"), ("a.png,x,0,", "not a number"), ("a.png,1,2,2021:13:01 00:00:00", "line 2"),
])
def test_bad_manifest_rows_name_the_line(tmp_path, row, message):
    m = tmp_path / "m.csv"
    m.write_text("path,lat_deg,lon_deg,timestamp\n" + row + "\n")
    with pytest.raises(GtlocError, match=message):
        Trainer(toy_config(tmp_path / "r", m, tmp_path))


@pytest.mark.slow
def test_two_rank_training_stays_in_sync(toy_manifest, cache_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    config = tmp_path / "train.json"  # small queues: the loss is comparable across epochs once they are full
    config.write_text(json.dumps({"loc_queue": 64, "time_queue": 64, "warmup_steps": 5}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "gtloc_engine.cli", "train", "--manifest", str(toy_manifest), "--out", str(tmp_path / "ddp"),
           "--preset", "tiny", "--epochs", "3", "--batch-size", "64", "--lr", "1e-3",
           "--cache-dir", str(cache_dir), "--config", str(config), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sums = re.findall(r"rank (\d)/2 parameter checksum (\w+) after epoch 3", proc.stderr)
    assert sorted(r for r, _ in sums) == ["0", "1"]
    assert len({s for _, s in sums}) == 1
    model = load_checkpoint(tmp_path / "ddp" / MODEL_FILE)
    assert parameter_checksum(model) == sums[0][1]
    history = [json.loads(x) for x in (tmp_path / "ddp" / "history.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 3 * (432 // 64)  # global batch 64 = 2 ranks x 32
    assert history[-1]["loss_loc"] < history[0]["loss_loc"]


def test_trainable_backbone_trains_and_travels_in_the_checkpoint(toy_manifest, tmp_path):
    from gtloc_engine.model import GTLoc

    model_cfg = preset("tiny", backbone={"name": "gtloc-tiny-vit", "pretrained": None, "trainable": True})
    trainer = Trainer(toy_config(tmp_path / "ft", toy_manifest, tmp_path / "cache", epochs=2,
                                 model=model_cfg.to_dict()))
    history = trainer.run()
    assert np.isfinite(history[-1]["loss"])
    initial = GTLoc(model_cfg, seed=0).backbone.fingerprint()
    loaded = load_checkpoint(tmp_path / "ft" / MODEL_FILE)
    assert loaded.backbone.fingerprint() == trainer.model.backbone.fingerprint() != initial
    assert not (tmp_path / "cache").exists()  # a training backbone has nothing to cache


def test_training_from_a_photo_folder_reads_place_and_time_from_exif(tmp_path, caplog):
    from PIL import Image

    from gtloc_engine.io.exif import write_jpeg_with_exif
    from gtloc_engine.synth import write_dataset
    from gtloc_engine.records import read_manifest, scan_photo_folder

    manifest = write_dataset(tmp_path / "sw", 40, seed=1, untimed_fraction=0.5)
    Image.new("RGB", (16, 16)).save(tmp_path / "sw" / "photos" / "no_exif.jpg")
    write_jpeg_with_exif(Image.new("RGB", (16, 16)), tmp_path / "sw" / "photos" / "time_only.jpg",
                         local_datetime=__import__("datetime").datetime(2020, 1, 1, 12))
    from_exif = {r.path.name: r for r in scan_photo_folder(tmp_path / "sw" / "photos")}
    from_manifest = {r.path.name: r for r in read_manifest(manifest)}
    assert set(from_exif) == set(from_manifest)  # the two photos without GPS are skipped
    assert "2 photos" in caplog.text
    for name, r in from_manifest.items():
        e = from_exif[name]
        assert abs(e.lat_deg - r.lat_deg) < 1e-5 and abs(e.lon_deg - r.lon_deg) < 1e-5
        assert (e.torus is None) == (r.torus is None)
        if r.torus is not None:
            assert np.allclose(e.torus, r.torus, atol=1e-6)
    cfg = toy_config(tmp_path / "run", None, tmp_path / "cache", epochs=1, batch_size=8)
    cfg.manifest, cfg.photo_dir = None, str(tmp_path / "sw" / "photos")
    history = Trainer(cfg).run()
    assert np.isfinite(history[-1]["loss_loc"]) and np.isfinite(history[-1]["loss_time"])
