"""GeoCLIP import: the checkpoint `gtloc import-geoclip` makes from the installed geoclip package reproduces
geoclip's own location embeddings and gallery ranking, and our photo preprocessing matches geoclip's processor.

geoclip is an optional test dependency (`pip install -e '.[geoclip]'`); the parity tests skip without it, the
bad-input tests do not need it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from gtloc_engine.cli import main as gtloc_main

needs_geoclip = pytest.mark.skipif(importlib.util.find_spec("geoclip") is None,
                                   reason="optional geoclip package not installed (pip install -e '.[geoclip]')")


def geoclip_model_dir() -> Path:
    return Path(next(iter(importlib.util.find_spec("geoclip").submodule_search_locations))) / "model"


@pytest.fixture(scope="module")
def imported_ckpt(tmp_path_factory) -> Path:
    """The real CLI, in a subprocess, on the installed geoclip package."""
    out = tmp_path_factory.mktemp("geoclip_import") / "geoclip.safetensors"
    proc = subprocess.run([sys.executable, "-m", "gtloc_engine.cli", "import-geoclip", "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
                               "GTLOC_CACHE": str(out.parent / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["checkpoint"] == str(out)
    return out


@pytest.fixture(scope="module")
def imported_model(imported_ckpt):
    from gtloc_engine.model.checkpoint import load_checkpoint

    return load_checkpoint(imported_ckpt, load_backbone=False)  # random ViT-L/14: no OpenAI weights here


@pytest.fixture(scope="module")
def geoclip_location_encoder():
    from geoclip import LocationEncoder

    return LocationEncoder().eval()  # geoclip's own class with its released weights


@pytest.fixture(scope="module")
def geoclip_head():
    """GeoCLIP's image MLP and logit scale from its released files, in geoclip's ImageEncoder.mlp layout."""
    weights = geoclip_model_dir() / "weights"
    mlp = torch.nn.Sequential(torch.nn.Linear(768, 768), torch.nn.ReLU(), torch.nn.Linear(768, 512))
    mlp.load_state_dict(torch.load(weights / "image_encoder_mlp_weights.pth", weights_only=True))
    return mlp.eval(), torch.load(weights / "logit_scale_weights.pth", weights_only=True)


def geoclip_gallery() -> torch.Tensor:
    from geoclip.model.misc import load_gps_data

    return load_gps_data(str(geoclip_model_dir() / "gps_gallery" / "coordinates_100K.csv"))


def geoclip_top5(features, gallery, location_encoder, head):
    """GeoCLIP.forward + predict's softmax/topk, on given image features instead of pixels."""
    mlp, logit_scale = head
    with torch.inference_mode():
        image = F.normalize(mlp(features), dim=1)
        location = F.normalize(location_encoder(gallery), dim=1)
        probs = (logit_scale.exp() * image @ location.T).softmax(dim=-1)
        top = torch.topk(probs, 5, dim=1)
    return top.indices.numpy(), top.values.numpy()


def gtloc_top5(model, features, gallery_latlon_deg, cache_dir):
    from gtloc_engine.inference.predictor import Predictor

    predictor = Predictor(model, gallery_latlon_deg=gallery_latlon_deg, cache_dir=cache_dir)
    with torch.inference_mode():
        probs = predictor.location_posterior(model.embed_features(features).numpy())
    order = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    return order, np.take_along_axis(probs, order, axis=1), predictor


def assert_same_predictions(gallery_latlon, ours_idx, ours_p, theirs_idx, theirs_p):
    """Same top-5 places with the same probabilities. Compared as (probability, place) sets, not row numbers:
    the MP-16 gallery holds 5,900 duplicate coordinates, and exact ties (same probability to the last bit)
    are ordered differently by torch.topk and numpy's sort."""
    np.testing.assert_allclose(ours_p, theirs_p, rtol=1e-4, atol=1e-6)

    def canonical(idx, p):
        rows = np.concatenate([np.asarray(p, np.float64)[..., None], gallery_latlon[idx]], axis=-1)
        return np.stack([r[np.lexsort((r[:, 2], r[:, 1], -r[:, 0]))] for r in rows])

    assert np.array_equal(canonical(ours_idx, ours_p)[..., 1:], canonical(theirs_idx, theirs_p)[..., 1:])


@needs_geoclip
def test_import_records_source_version_and_untrained_time_head(imported_ckpt):
    from safetensors import safe_open

    from gtloc_engine.model.checkpoint import read_header

    header = read_header(imported_ckpt)
    info = header["info"]
    assert info["source"] == "geoclip"
    assert info["geoclip_version"] == importlib.metadata.version("geoclip")
    assert "untrained" in info["time_head"]
    assert header["heads_trained"] == {"location": True, "time": False, "gps_time": False, "ig2t": False, "it2g": False, "gt2i": False}
    assert header["model"]["backbone"] == {"name": "ViT-L-14", "pretrained": "openai", "trainable": False,
                                         "open_clip_config": None, "text_tower": True}
    for name, digest in info["source_files_sha256"].items():
        assert hashlib.sha256((geoclip_model_dir() / name).read_bytes()).hexdigest() == digest
    with safe_open(str(imported_ckpt), framework="pt") as f:
        keys = list(f.keys())
    # The frozen OpenAI backbone is referenced, not copied: only heads, scales and the gallery are stored.
    assert not [k for k in keys if k.startswith("backbone.")]
    assert imported_ckpt.stat().st_size < 100e6


@needs_geoclip
def test_gallery_is_geoclips_100k_places(imported_model):
    assert np.array_equal(imported_model.gallery_latlon_deg.astype(np.float32), geoclip_gallery().numpy())
    assert imported_model.gallery_latlon_deg.shape == (100_000, 2)


@needs_geoclip
def test_location_embeddings_match_geoclip_location_encoder(imported_model, geoclip_location_encoder):
    rng = np.random.default_rng(0)
    edges = [[90, 0], [-90, 0], [0, 180], [0, -180], [89.999, 179.999], [-89.999, -179.999], [0, 0]]
    latlon = np.concatenate([
        np.stack([rng.uniform(-90, 90, 3000), rng.uniform(-180, 180, 3000)], axis=1),
        geoclip_gallery().numpy()[rng.choice(100_000, 1000, replace=False)],
        edges,
    ]).astype(np.float32)
    x = torch.from_numpy(latlon)
    with torch.inference_mode():
        ours_raw = imported_model.location_encoder(x)
        theirs_raw = geoclip_location_encoder(x)
        ours = imported_model.embed_locations(x)
    assert (ours_raw - theirs_raw).abs().max().item() <= 1e-5
    assert (ours - F.normalize(theirs_raw, dim=1)).abs().max().item() <= 1e-5


@needs_geoclip
def test_top5_places_match_geoclip_for_1000_feature_vectors(imported_model, geoclip_location_encoder, geoclip_head,
                                                            tmp_path):
    # A 5000-place slice of the gallery keeps this fast; the full 100K gallery is the slow test below.
    gallery = geoclip_gallery()[np.random.default_rng(1).choice(100_000, 5000, replace=False)]
    features = torch.randn(1000, 768, generator=torch.Generator().manual_seed(2))
    theirs_idx, theirs_p = geoclip_top5(features, gallery, geoclip_location_encoder, geoclip_head)
    ours_idx, ours_p, _ = gtloc_top5(imported_model, features, gallery.numpy().astype(np.float64), tmp_path)
    assert_same_predictions(gallery.numpy(), ours_idx, ours_p, theirs_idx, theirs_p)


@needs_geoclip
@pytest.mark.slow
def test_top5_places_match_geoclip_model_on_full_gallery_and_cache_is_reused(imported_model, tmp_path):
    from geoclip import GeoCLIP

    geoclip = GeoCLIP(from_pretrained=True, clip_pretrained=False).eval()  # its real model, random ViT-L/14
    features = torch.randn(1000, 768, generator=torch.Generator().manual_seed(3))
    theirs_idx, theirs_p = geoclip_top5(features, geoclip.gps_gallery, geoclip.location_encoder,
                                        (geoclip.image_encoder.mlp, geoclip.logit_scale.detach()))
    ours_idx, ours_p, _ = gtloc_top5(imported_model, features, None, tmp_path)
    assert_same_predictions(geoclip.gps_gallery.numpy(), ours_idx, ours_p, theirs_idx, theirs_p)
    cached = list((tmp_path / "constants").glob("*/gallery-*.npy"))
    assert len(cached) == 1
    again, _, _ = gtloc_top5(imported_model, features, None, tmp_path)  # from the disk cache this time
    assert np.array_equal(again, ours_idx)
    assert list((tmp_path / "constants").glob("*/gallery-*.npy")) == cached


@needs_geoclip
def test_predictions_say_time_head_not_trained(imported_model, tmp_path):
    from gtloc_engine.inference.predictor import Predictor

    # Places are surface modes; a 2-degree surface keeps the paper-size encoder's grid small here.
    predictor = Predictor(imported_model, cache_dir=tmp_path, global_res_deg=2.0)
    with torch.inference_mode():
        emb = imported_model.embed_features(torch.randn(2, 768)).numpy()
    for pred in predictor.predict_embeddings(emb, top_k=5):
        assert pred["time"] is None
        assert pred["notes"] == ["time head not trained"]
        assert len(pred["places"]) == 5


@needs_geoclip
def test_preprocessing_matches_geoclip_clip_processor_on_real_photos(imported_model, tmp_path):
    from transformers import CLIPImageProcessor

    from gtloc_engine.io.batches import iter_pixel_batches

    # geoclip's processor without the hub: CLIPImageProcessor's defaults are openai/clip-vit-large-patch14's
    # preprocessor_config (shortest edge 224 bicubic, centre crop 224, OpenAI mean/std).
    processor = CLIPImageProcessor()
    preprocess = imported_model.backbone.preprocess
    kauai = geoclip_model_dir().parent / "images" / "Kauai.png"  # a real photo shipped with geoclip, 512 x 504

    def theirs(path):
        with Image.open(path) as im:
            return processor(images=im.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    def ours_full(path):
        with Image.open(path) as im:
            return preprocess(im.convert("RGB"))

    # 504 -> 224 makes the width 227: an odd 3-pixel crop margin, which torchvision rounds up (left 2) and
    # transformers floors (left 1). Apart from that one-column shift the tensors agree.
    a, b = ours_full(kauai), theirs(kauai)
    assert a.shape == b.shape == (3, 224, 224)
    assert (a[:, :, :-1] - b[:, :, 1:]).abs().max().item() < 0.05

    # Even margins (1600 x 1200 -> 298 x 224): same pixels, up to resampling rounding.
    jpeg = tmp_path / "kauai_1600.jpg"
    with Image.open(kauai) as im:
        im.convert("RGB").resize((1600, 1200), Image.BICUBIC).save(jpeg, quality=95)
    assert (ours_full(jpeg) - theirs(jpeg)).abs().max().item() < 0.05

    # gtloc's own photo path decodes JPEGs at reduced size (draft) before the same transform: close, not equal.
    batch = next(iter_pixel_batches([jpeg], preprocess, draft_px=imported_model.backbone.image_size))
    fast = batch.pixels[0]
    assert F.cosine_similarity(fast.flatten(), theirs(jpeg).flatten(), dim=0).item() > 0.998
    assert (fast - theirs(jpeg)).abs().mean().item() < 0.03


def _call_cli(*args) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = gtloc_main([str(a) for a in args])
    return rc, err.getvalue()


def test_import_from_folder_without_weights_is_one_clear_error(tmp_path):
    rc, err = _call_cli("import-geoclip", "--out", tmp_path / "x.safetensors", "--geoclip-dir", tmp_path)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("gtloc: error:") and "not found" in err
    assert not (tmp_path / "x.safetensors").exists()


class _NotATensor:
    pass


def test_import_refuses_pickled_objects_and_garbage(tmp_path):
    weights = tmp_path / "geoclip_model" / "weights"
    weights.mkdir(parents=True)
    torch.save({"LocEnc0.head.0.weight": _NotATensor()}, weights / "location_encoder_weights.pth")
    (weights / "image_encoder_mlp_weights.pth").write_bytes(b"not a torch file")
    torch.save(torch.tensor(3.0), weights / "logit_scale_weights.pth")
    rc, err = _call_cli("import-geoclip", "--out", tmp_path / "x.safetensors", "--geoclip-dir", weights.parent)
    assert rc == 2
    assert "location_encoder_weights.pth cannot be read as plain tensors" in err and err.count("\n") == 1
    assert not (tmp_path / "x.safetensors").exists()


@needs_geoclip
def test_import_rejects_a_gallery_with_invalid_places(tmp_path):
    from gtloc_engine.errors import GtlocError
    from gtloc_engine.model.geoclip_import import read_geoclip_release

    copy = tmp_path / "model"
    shutil.copytree(geoclip_model_dir() / "weights", copy / "weights")
    (copy / "gps_gallery").mkdir()
    (copy / "gps_gallery" / "coordinates_100K.csv").write_text("LAT,LON\n10.0,20.0\n95.0,20.0\n")
    with pytest.raises(GtlocError, match="1 of 2 rows are not valid"):
        read_geoclip_release(copy)
