"""Speed settings that must not change answers: the bf16 backbone path (features stay within cosine 0.99 of
fp32), CPU threads, and the Predictor's gallery embeddings read back from the disk cache instead of re-encoded.
No timings here: those live in bench/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gtloc_engine.errors import GtlocError
from gtloc_engine.geo import fibonacci_sphere_latlon
from gtloc_engine.inference.predictor import Predictor
from gtloc_engine.io.batches import iter_pixel_batches
from gtloc_engine.model import GTLoc, preset
from gtloc_engine.model.backbone import Backbone, set_cpu_threads
from gtloc_engine.model.config import BackboneConfig


def toy_pixels(toy_manifest, backbone, n=16) -> torch.Tensor:
    photos = sorted((toy_manifest.parent / "img").glob("*.png"))[:n]
    return next(iter_pixel_batches(photos, backbone.preprocess, batch_size=n, draft_px=backbone.image_size)).pixels


def features(backbone, pixels) -> torch.Tensor:
    with torch.inference_mode():
        return backbone(pixels)


def test_bf16_backbone_features_keep_cosine_099_with_fp32(toy_manifest):
    fp32 = GTLoc(preset("tiny"), seed=0).backbone
    bf16 = GTLoc(preset("tiny"), seed=0).backbone.set_precision("bf16")
    pixels = toy_pixels(toy_manifest, fp32)
    a, b = features(fp32, pixels), features(bf16, pixels)
    assert b.dtype == torch.float32  # callers (adapter, caches) keep seeing float32
    assert not torch.equal(a, b)  # it really ran in reduced precision
    assert F.cosine_similarity(a, b, dim=1).min().item() >= 0.99


def test_bf16_embeddings_feed_the_same_predictor(toy_manifest, tmp_path):
    model = GTLoc(preset("tiny"), seed=0)
    pixels = toy_pixels(toy_manifest, model.backbone)
    with torch.inference_mode():
        emb32 = model.embed_images(pixels)
        model.backbone.set_precision("bf16")
        emb16 = model.embed_images(pixels)
    assert F.cosine_similarity(emb32, emb16, dim=1).min().item() >= 0.99
    predictor = Predictor(model, gallery_latlon_deg=fibonacci_sphere_latlon(500), cache_dir=tmp_path)
    probs = predictor.location_posterior(emb16.numpy())
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_bf16_changes_the_feature_cache_fingerprint():
    a = GTLoc(preset("tiny"), seed=0).backbone
    b = GTLoc(preset("tiny"), seed=0).backbone
    assert a.fingerprint() == b.fingerprint()
    b.set_precision("bf16")
    assert a.fingerprint() != b.fingerprint()  # bf16 features must never be served as fp32 ones


def test_precision_errors_are_one_clear_line():
    backbone = GTLoc(preset("tiny"), seed=0).backbone
    with pytest.raises(GtlocError, match="must be one of"):
        backbone.set_precision("int4")
    backbone.set_precision("bf16")
    backbone.set_precision("bf16")  # same precision again: nothing to do
    with pytest.raises(GtlocError, match="load the checkpoint again"):
        backbone.set_precision("fp32")
    trainable = Backbone(BackboneConfig(name="gtloc-tiny-vit", pretrained=None, trainable=True))
    with pytest.raises(GtlocError, match="frozen backbone"):
        trainable.set_precision("bf16")


def test_cpu_threads_setting():
    before = torch.get_num_threads()
    try:
        set_cpu_threads(1)
        assert torch.get_num_threads() == 1
        set_cpu_threads(None)  # keeps the current setting
        assert torch.get_num_threads() == 1
        with pytest.raises(GtlocError, match="at least 1"):
            set_cpu_threads(0)
    finally:
        torch.set_num_threads(before)


def test_predictor_reads_gallery_embeddings_from_disk_the_second_time(tiny_model, tmp_path):
    calls = [0]
    tiny_model.location_encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    gallery = fibonacci_sphere_latlon(3000)
    first = Predictor(tiny_model, gallery_latlon_deg=gallery, cache_dir=tmp_path)
    assert calls[0] == 0  # the gallery is encoded on first use only (eval), not for every predictor
    first_emb = first.gallery_emb
    encoded = calls[0]
    assert encoded >= 1 and len(list((tmp_path / "constants").rglob("gallery-*.npy"))) == 1
    second = Predictor(tiny_model, gallery_latlon_deg=gallery, cache_dir=tmp_path)
    assert torch.equal(first_emb, second.gallery_emb) and torch.equal(first.time_emb, second.time_emb)
    assert calls[0] == encoded  # no location-encoder pass: read from disk
    in_memory = Predictor(tiny_model, gallery_latlon_deg=gallery, cache=False)
    torch.testing.assert_close(in_memory.gallery_emb, first.gallery_emb, rtol=0, atol=1e-6)
    torch.testing.assert_close(in_memory.time_emb, first.time_emb, rtol=0, atol=1e-6)


def test_cli_predict_with_bf16_and_one_thread(trained_checkpoint, toy_manifest, tmp_path):
    photos = sorted((toy_manifest.parent / "img").glob("*.png"))[:3]
    proc = subprocess.run([sys.executable, "-m", "gtloc_engine.cli", "predict", *map(str, photos), "--model",
                           str(trained_checkpoint), "--precision", "bf16", "--threads", "1", "--top-k", "2"],
                          check=False, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "GTLOC_CACHE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["photo"] for r in results] == [str(p) for p in photos]
    assert all(len(r["places"]) == 2 and 1 <= r["time"]["month"] <= 12 for r in results)


@pytest.mark.slow
def test_bf16_vit_l14_feature_keeps_cosine_099_with_fp32(toy_manifest):
    backbone = Backbone(BackboneConfig(name="ViT-L-14", pretrained="openai"), load_weights=False)  # random init
    pixels = toy_pixels(toy_manifest, backbone, n=1)
    a = features(backbone, pixels)
    b = features(backbone.set_precision("bf16"), pixels)
    assert F.cosine_similarity(a, b, dim=1).min().item() >= 0.99
