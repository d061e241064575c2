"""The six similarity heads: checkpoints carry them, old checkpoints still load, each query uses its own head,
gtloc's trainer learns the fused ones, and the authors' time input is reproduced bit for bit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gtloc_engine.errors import GtlocError
from gtloc_engine.model.checkpoint import load_checkpoint, save_checkpoint
from gtloc_engine.model.config import LOGIT_HEADS
from gtloc_engine.timecode import time_fields


def _set_scales(model, values: dict[str, float]) -> None:
    with torch.no_grad():
        for head, value in values.items():
            model.logit_scales[head].fill_(value)


def test_a_model_has_the_six_heads_of_the_authors(tiny_model):
    assert sorted(k for k in tiny_model.state_dict() if k.startswith("logit_scales.")) == sorted(
        f"logit_scales.{h}" for h in LOGIT_HEADS)
    assert all(float(tiny_model.logit_scales[h]) == pytest.approx(math.log(1 / 0.07)) for h in LOGIT_HEADS)


def test_an_untrained_fused_head_borrows_its_fallbacks_scale(tiny_model):
    _set_scales(tiny_model, {"img_gps": 3.0, "img_time": 2.0, "ig2t": 4.0, "it2g": 1.0, "gt2i": 1.5})
    tiny_model.heads_trained = {**tiny_model.heads_trained, "location": True, "time": True}
    assert float(tiny_model.logit_scale("ig2t")) == pytest.approx(math.exp(2.0))  # img_time's
    assert float(tiny_model.logit_scale("it2g")) == pytest.approx(math.exp(3.0))  # img_gps's
    tiny_model.heads_trained.update(ig2t=True, it2g=True)
    assert float(tiny_model.logit_scale("ig2t")) == pytest.approx(math.exp(4.0))
    assert float(tiny_model.logit_scale("it2g")) == pytest.approx(math.exp(1.0))


def test_logit_scale_is_clamped_as_in_training(tiny_model):
    _set_scales(tiny_model, {"img_gps": 10.0})
    assert float(tiny_model.logit_scale("img_gps")) == 100.0
    with pytest.raises(KeyError):
        tiny_model.logit_scale("img_text")


def test_version_1_checkpoint_loads_with_its_two_scales(tiny_model, tmp_path):
    """A checkpoint written before the six heads (logit_scale_loc / logit_scale_time, format 1) still loads, and
    its fused queries behave as before: they use the image-time and image-place scales."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    _set_scales(tiny_model, {"img_gps": 3.25, "img_time": 2.75})
    path = save_checkpoint(tmp_path / "v2.safetensors", tiny_model)
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["gtloc"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["logit_scale_loc"] = tensors.pop("logit_scales.img_gps")
    tensors["logit_scale_time"] = tensors.pop("logit_scales.img_time")
    for head in ("gps_time", "ig2t", "it2g", "gt2i"):
        del tensors[f"logit_scales.{head}"]
    header.update(format_version=1, heads_trained={"location": True, "time": True})
    old = tmp_path / "v1.safetensors"
    save_file(tensors, str(old), metadata={"gtloc": json.dumps(header)})

    model = load_checkpoint(old)
    assert float(model.logit_scales["img_gps"]) == pytest.approx(3.25)
    assert float(model.logit_scales["img_time"]) == pytest.approx(2.75)
    assert not model.heads_trained["ig2t"] and model.head_ready("ig2t")
    assert float(model.logit_scale("ig2t")) == pytest.approx(math.exp(2.75))
    assert float(model.logit_scale("gt2i")) == pytest.approx(math.exp(2.75))
    assert float(model.logit_scale("it2g")) == pytest.approx(math.exp(3.25))


def test_time_fields_follow_the_authors_float32_operations(tiny_model):
    """The authors' angles (month-1 + (day-1)/(365/12), hour + min/60 + s/3600, each 2 pi x / period - pi), written
    out here in float32 in their order, equal gtloc's encoder input bit for bit."""
    from gtloc_engine.model.encoders import month_hour_from_fields, time_angles

    rows = time_fields(["2021-01-01T00:00:00", "2021-12-31T23:59:59", "2024-02-29T12:34:56.5",
                        "2019:07:14 18:30:00", "2020-06-15T06:07:08+05:45"])
    t = torch.as_tensor(rows, dtype=torch.float32)
    month, day, hour, minute, second = (t[:, i:i + 1] for i in range(5))
    month_d = (month - 1) + (day - 1) * (1 / (365 / 12))
    hour_d = hour + minute * (1 / 60) + second * ((1 / 60) / 60)
    expected = torch.cat((2 * math.pi * month_d / 12 - math.pi, 2 * math.pi * hour_d / 24 - math.pi), dim=1)
    got = time_angles(month_hour_from_fields(t))
    assert torch.equal(got, expected)
    assert rows[4].tolist() == [6, 15, 6, 7, 8]  # the local wall clock, not UTC
    # The torus route (grids, training) reaches the same angles up to float rounding.
    from gtloc_engine.timecode import torus_coords

    torus = torch.as_tensor(torus_coords(["2021-12-31T23:59:59"]), dtype=torch.float32)
    with torch.no_grad():
        a = tiny_model.embed_times(torus)
        b = tiny_model.embed_time_fields(torch.as_tensor(rows[1:2], dtype=torch.float32))
    assert float((a * b).sum()) > 0.999


@pytest.fixture(scope="module")
def composed_run(toy_manifest, cache_dir, tmp_path_factory):
    from gtloc_engine.model import preset
    from gtloc_engine.training.trainer import MODEL_FILE, TrainConfig, Trainer

    out = tmp_path_factory.mktemp("composed")
    history = Trainer(TrainConfig(out_dir=str(out), model=preset("tiny").to_dict(), manifest=str(toy_manifest),
                                  epochs=3, batch_size=64, lr=1e-3, loc_queue=128, time_queue=128, warmup_steps=5,
                                  composed_weight=0.5, gps_time_weight=0.25, cache_dir=str(cache_dir),
                                  progress=False)).run()
    return out / MODEL_FILE, history


def test_composed_losses_train_the_fused_heads(composed_run):
    path, history = composed_run
    for part in ("loss_loc", "loss_time", "loss_ig2t", "loss_it2g", "loss_gt2i", "loss_gps_time"):
        assert all(math.isfinite(h[part]) for h in history), part
    model = load_checkpoint(path)
    assert all(model.heads_trained[h] for h in ("location", "time", "ig2t", "it2g", "gt2i", "gps_time"))
    moved = {h: abs(float(model.logit_scales[h]) - math.log(1 / 0.07)) for h in LOGIT_HEADS}
    assert all(v > 1e-4 for v in moved.values()), moved  # every head's own scale was learned


def test_without_composed_losses_the_fused_heads_stay_untrained(trained_checkpoint):
    model = load_checkpoint(trained_checkpoint)
    assert model.heads_trained["location"] and model.heads_trained["time"]
    assert not any(model.heads_trained[h] for h in ("ig2t", "it2g", "gt2i", "gps_time"))
    for head in ("ig2t", "it2g", "gt2i", "gps_time"):
        assert float(model.logit_scales[head]) == pytest.approx(math.log(1 / 0.07))


def test_negative_composed_weight_is_refused(toy_manifest, tmp_path):
    from gtloc_engine.training.trainer import TrainConfig

    with pytest.raises(GtlocError, match="composed_weight"):
        TrainConfig(out_dir=str(tmp_path), manifest=str(toy_manifest), composed_weight=-1).validate()


# ---------------------------------------------------------------------------------------------- each query, its head


def test_where_given_when_uses_the_it2g_head(trained_checkpoint, cache_dir):
    from gtloc_engine.inference.predictor import Predictor

    model = load_checkpoint(trained_checkpoint)
    predictor = Predictor(model, cache_dir=cache_dir)
    image = torch.nn.functional.normalize(torch.randn(1, model.cfg.embed_dim,
                                                      generator=torch.Generator().manual_seed(1)), dim=-1)
    t = predictor.given_time_embedding("2021-07-01T12:00")
    probs = predictor.location_posterior(image.numpy(), t)[0]
    with torch.no_grad():
        logits = model.logit_scale("it2g") * model.fuse(image[0], t) @ predictor.gallery_emb.T
    assert np.allclose(probs, torch.softmax(logits, 0).numpy(), atol=1e-6)
    assert not np.allclose(probs, predictor.location_posterior(image.numpy())[0])  # the time changes the answer
    winter = predictor.location_posterior(image.numpy(), predictor.given_time_embedding("2021-01-01T03:00"))[0]
    assert not np.allclose(probs, winter)


def test_where_given_when_needs_both_heads(tiny_model, tmp_path, cache_dir):
    from gtloc_engine.inference.predictor import Predictor

    tiny_model.heads_trained = {**tiny_model.heads_trained, "location": True, "time": False}
    with pytest.raises(GtlocError, match="it2g"):
        Predictor(tiny_model, gallery_latlon_deg=np.array([[0.0, 0.0]]), cache=False).given_time_embedding(
            "2021-07-01T12:00")


def test_a_bad_known_time_is_one_clear_error(trained_checkpoint, cache_dir):
    from gtloc_engine.inference.predictor import Predictor

    predictor = Predictor(load_checkpoint(trained_checkpoint), cache_dir=cache_dir)
    with pytest.raises(GtlocError, match="2021-13-01"):
        predictor.given_time_embedding("2021-13-01T12:00")


def test_pipeline_where_given_when_writes_its_condition_and_resumes_by_it(trained_checkpoint, cache_dir,
                                                                             toy_manifest, tmp_path):
    from gtloc_engine.inference.pipeline import PhotoPipeline, PipelineConfig
    from gtloc_engine.io.geopackage import ResultsStore

    photos = sorted((toy_manifest.parent / "img").glob("*.png"))[:2]
    pipeline = PhotoPipeline(trained_checkpoint, top_k=2, cache_dir=cache_dir,
                             config=PipelineConfig(global_res_deg=1.0))
    out = tmp_path / "r.gpkg"
    plain = pipeline.run(photos, out)
    rows = ResultsStore.open(out).photos
    assert {r["place_given"] for r in rows.values()} == {"image"}
    before = {k: (r["pred_lat_deg"], r["pred_lon_deg"], r["top1_prob"]) for k, r in rows.items()}

    given = pipeline.run(photos, out, given_time="2021:07:01 12:00:00")
    assert plain.n_done == 2 and given.n_done == 2 and given.n_skipped == 0  # another condition: recomputed
    rows = ResultsStore.open(out).photos
    assert {r["place_given"] for r in rows.values()} == {"image+time"}
    assert {r["given_time_local"] for r in rows.values()} == {"2021-07-01T12:00:00"}
    after = {k: (r["pred_lat_deg"], r["pred_lon_deg"], r["top1_prob"]) for k, r in rows.items()}
    assert after != before
    again = pipeline.run(photos, out, given_time="2021-07-01T12:00")
    assert again.n_skipped == 2 and again.n_done == 0  # the same known time resumes


# ---------------------------------------------------------------------------------------------- galleries, ten-crop


def test_time_gallery_posterior_lives_only_where_the_gallery_has_times(trained_checkpoint, cache_dir):
    from gtloc_engine.inference.predictor import HOUR_BINS, Predictor

    rng = np.random.default_rng(0)
    gallery = np.stack([rng.integers(1, 13, 300), rng.integers(1, 29, 300), rng.integers(4, 23, 300),
                        rng.integers(0, 60, 300), rng.integers(0, 60, 300)], axis=1)  # hours 4-22, as cvt.npy
    model = load_checkpoint(trained_checkpoint)
    predictor = Predictor(model, time_gallery_fields=gallery, cache_dir=cache_dir)
    image = torch.nn.functional.normalize(torch.randn(3, model.cfg.embed_dim,
                                                      generator=torch.Generator().manual_seed(2)), dim=-1).numpy()
    grids = predictor.time_posterior(image)
    assert np.allclose(grids.sum(axis=(1, 2)), 1.0, atol=1e-5)
    night = grids[:, :, : 4 * HOUR_BINS // 24].sum() + grids[:, :, 23 * HOUR_BINS // 24:].sum()
    assert night == 0.0  # a gallery without night times never predicts night
    top = predictor.gallery_top1_times(image)
    best = (image @ predictor.time_emb.numpy().T).argmax(axis=1)
    f = gallery[best]
    assert np.allclose(top[:, 1], f[:, 2] + f[:, 3] / 60 + f[:, 4] / 3600)


def test_ten_crop_embedding_is_the_mean_of_the_crops_unit_embeddings(tiny_model):
    from PIL import Image

    tiny_model.eval()
    tiny_model.backbone.set_tencrop(True)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    crops = tiny_model.backbone.preprocess(photo)
    assert crops.shape == (10, 3, 64, 64)
    with torch.no_grad():
        mean = tiny_model.embed_images(crops[None])[0]
        each = tiny_model.embed_images(crops)
    assert torch.allclose(mean, each.mean(0), atol=1e-6)
    assert float(mean.norm()) < 1.0  # not renormalised: dot products are the crops' mean cosine
    assert not torch.equal(crops[0], crops[5])  # a crop and its mirror image differ
    tiny_model.backbone.set_tencrop(False)
    assert tiny_model.backbone.preprocess(photo).shape == (3, 64, 64)


@pytest.mark.parametrize("content, suffix, message", [
    ("LAT,LON\n1,2\n91,0\n", ".csv", "not lat"),
    ("x,y\n1,2\n", ".csv", "header"),
    ("LAT,LON\n1,two\n", ".csv", "not two numbers"),
    (None, ".npy", "shape"),
    ("LAT,LON\n1,2\n", ".txt", ".npy or .csv"),
])
def test_bad_place_galleries_are_one_clear_error(tmp_path, content, suffix, message):
    from gtloc_engine.io.galleries import read_place_gallery

    path = tmp_path / f"g{suffix}"
    if content is None:
        np.save(path, np.zeros((4, 3)))
    else:
        path.write_text(content)
    with pytest.raises(GtlocError, match=message):
        read_place_gallery(path)


def test_place_galleries_read_npy_and_csv(tmp_path):
    from gtloc_engine.io.galleries import read_place_gallery

    np.save(tmp_path / "g.npy", np.array([[48.85, 2.35], [-33.9, 151.2]], dtype=np.float32))
    (tmp_path / "g.csv").write_text("lat_deg,lon_deg\n48.85,2.35\n-33.9,151.2\n")
    a, b = read_place_gallery(tmp_path / "g.npy"), read_place_gallery(tmp_path / "g.csv")
    assert a.shape == b.shape == (2, 2) and np.allclose(a, b, atol=1e-5)


def test_time_galleries_are_checked_row_by_row(tmp_path):
    from gtloc_engine.io.galleries import read_time_gallery

    np.save(tmp_path / "t.npy", np.array([[7, 14, 18, 30, 0], [13, 1, 0, 0, 0]], dtype=np.int32))
    with pytest.raises(GtlocError, match="row 1"):
        read_time_gallery(tmp_path / "t.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(GtlocError, match="not a readable numeric"):
        read_time_gallery(tmp_path / "obj.npy")
