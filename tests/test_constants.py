"""The model-constants cache: computed once per model, read back from disk, keyed by model and points, robust to
corrupt files. Encoder calls are counted with real forward hooks on the real encoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gtloc_engine.errors import GtlocError
from gtloc_engine.geo import fibonacci_sphere_latlon
from gtloc_engine.inference.constants import (
    ENCODE_CHUNK,
    cached_location_embeddings,
    cached_time_embeddings,
    model_key,
    reporting,
)
from gtloc_engine.inference.predictor import time_grid_torus
from gtloc_engine.model import GTLoc, preset

POINTS_LATLON = fibonacci_sphere_latlon(3000)


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def same_weights(model: GTLoc) -> GTLoc:
    twin = GTLoc(model.cfg, seed=0)
    twin.load_state_dict(model.state_dict())
    return twin


def cache_files(root) -> list:
    return sorted((root / "constants").rglob("*.npy"))


def test_location_embeddings_match_the_encoder(tiny_model, tmp_path):
    cached = cached_location_embeddings(tiny_model, POINTS_LATLON, name="grid", cache_dir=tmp_path)
    with torch.inference_mode():
        direct = tiny_model.embed_locations(torch.as_tensor(POINTS_LATLON, dtype=torch.float32)).numpy()
    assert cached.shape == (len(POINTS_LATLON), tiny_model.cfg.embed_dim) and cached.dtype == np.float32
    np.testing.assert_allclose(cached, direct, atol=1e-6)


def test_second_call_reads_the_disk_cache_without_encoding(tmp_path):
    model = GTLoc(preset("tiny"), seed=0)
    calls = count_calls(model.location_encoder)
    first = np.array(cached_location_embeddings(model, POINTS_LATLON, name="grid", cache_dir=tmp_path))
    assert calls[0] > 0
    files = cache_files(tmp_path)
    assert len(files) == 1 and files[0].parent.name == model_key(model)

    # A separately built model with the same weights: only the file can serve it.
    twin = same_weights(model)
    twin_calls = count_calls(twin.location_encoder)
    second = cached_location_embeddings(twin, POINTS_LATLON, name="grid", cache_dir=tmp_path)
    assert twin_calls[0] == 0
    assert isinstance(second, np.memmap)  # served from the file, not recomputed
    np.testing.assert_array_equal(first, second)
    assert cache_files(tmp_path) == files


def test_time_embeddings_are_cached_too(tiny_model, tmp_path):
    torus = time_grid_torus(12, 24)
    calls = count_calls(tiny_model.time_encoder)
    first = np.array(cached_time_embeddings(tiny_model, torus, name="time-grid", cache_dir=tmp_path))
    n_first = calls[0]
    second = cached_time_embeddings(tiny_model, torus, name="time-grid", cache_dir=tmp_path)
    assert n_first > 0 and calls[0] == n_first
    with torch.inference_mode():
        direct = tiny_model.embed_times(torch.as_tensor(torus, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(second, direct, atol=1e-6)
    np.testing.assert_array_equal(first, second)


def test_different_models_get_different_keys():
    base = GTLoc(preset("tiny"), seed=0)
    assert model_key(base) == model_key(same_weights(base))
    assert model_key(base) != model_key(GTLoc(preset("tiny"), seed=1))
    assert model_key(base) != model_key(GTLoc(preset("tiny", time_input="circle"), seed=0))


def test_key_follows_in_place_weight_updates(tiny_model):
    before = model_key(tiny_model)
    with torch.no_grad():
        tiny_model.location_encoder.rff.branches[0].head[0].bias.add_(0.01)
    assert model_key(tiny_model) != before


def test_image_side_does_not_change_the_key(tiny_model):
    before = model_key(tiny_model)
    with torch.no_grad():
        tiny_model.adapter.mlp[0].weight.mul_(2.0)
        tiny_model.logit_scales["img_gps"].add_(1.0)
    assert model_key(tiny_model) == before


def test_other_points_under_the_same_name_get_their_own_file(tiny_model, tmp_path):
    a = cached_location_embeddings(tiny_model, POINTS_LATLON[:100], name="grid", cache_dir=tmp_path)
    b = cached_location_embeddings(tiny_model, POINTS_LATLON[100:300], name="grid", cache_dir=tmp_path)
    assert a.shape[0] == 100 and b.shape[0] == 200
    assert len(cache_files(tmp_path)) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape"])
def test_corrupt_cache_file_is_recomputed(tiny_model, tmp_path, damage):
    good = np.array(cached_location_embeddings(tiny_model, POINTS_LATLON, name="grid", cache_dir=tmp_path))
    (path,) = cache_files(tmp_path)
    if damage == "garbage":
        path.write_bytes(b"not a numpy file at all" * 10)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        np.save(path, np.zeros((5, 3), np.float32))
    calls = count_calls(tiny_model.location_encoder)
    again = cached_location_embeddings(tiny_model, POINTS_LATLON, name="grid", cache_dir=tmp_path)
    assert calls[0] > 0
    np.testing.assert_array_equal(again, good)
    # ...and the repaired file serves the next call.
    n = calls[0]
    cached_location_embeddings(tiny_model, POINTS_LATLON, name="grid", cache_dir=tmp_path)
    assert calls[0] == n


def test_gtloc_cache_environment_variable_is_the_default_root(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("GTLOC_CACHE", str(tmp_path))
    cached_location_embeddings(tiny_model, POINTS_LATLON[:10], name="env", cache_dir=None)
    (path,) = cache_files(tmp_path)
    assert path.name.startswith("env-")


@pytest.mark.parametrize("name", ["", "../escape", "a/b", "x" * 81])
def test_unsafe_names_are_refused(tiny_model, tmp_path, name):
    with pytest.raises(GtlocError, match="name"):
        cached_location_embeddings(tiny_model, POINTS_LATLON[:3], name=name, cache_dir=tmp_path)


@pytest.mark.parametrize("points", [np.zeros((4, 3)), np.zeros(4), np.array([[0.0, np.nan]])])
def test_bad_point_arrays_are_refused(tiny_model, tmp_path, points):
    with pytest.raises(GtlocError, match=r"\(N, 2\)"):
        cached_location_embeddings(tiny_model, points, name="bad", cache_dir=tmp_path)


def test_a_build_reports_its_progress_chunk_by_chunk_and_a_cached_read_reports_nothing(tiny_model, tmp_path):
    points = fibonacci_sphere_latlon(2 * ENCODE_CHUNK + 100)
    steps = []
    with reporting(steps.append):
        cached_location_embeddings(tiny_model, points, name="grid", cache_dir=tmp_path)
    assert [(s.name, s.done, s.total) for s in steps] == [
        ("grid", 0, len(points)), ("grid", ENCODE_CHUNK, len(points)), ("grid", 2 * ENCODE_CHUNK, len(points)),
        ("grid", len(points), len(points))]
    assert steps[0].eta_s is None and all(s.eta_s >= 0 for s in steps[1:]) and steps[-1].eta_s == 0
    steps.clear()
    with reporting(steps.append):
        cached_location_embeddings(tiny_model, points, name="grid", cache_dir=tmp_path)
    assert steps == []
    cached_location_embeddings(tiny_model, points[:50], name="other", cache_dir=tmp_path)  # outside: no reports
    assert steps == []


def test_a_report_that_raises_stops_the_build_and_leaves_no_file(tiny_model, tmp_path):
    points = fibonacci_sphere_latlon(2 * ENCODE_CHUNK)

    def stop_after_first_chunk(step):
        if step.done >= ENCODE_CHUNK:
            raise KeyboardInterrupt("cancelled")

    with reporting(stop_after_first_chunk), pytest.raises(KeyboardInterrupt):
        cached_location_embeddings(tiny_model, points, name="grid", cache_dir=tmp_path)
    assert list(tmp_path.rglob("*")) == [p for p in tmp_path.rglob("*") if p.is_dir()]  # no file, not even a .tmp
    assert cache_files(tmp_path) == []
