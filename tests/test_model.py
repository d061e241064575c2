"""Encoders, the GTLoc module and checkpoints (safetensors + JSON header)."""

import json
import math

import pytest
import torch

from gtloc_engine.errors import CheckpointError, GtlocError
from gtloc_engine.model import GTLoc, ModelConfig, load_checkpoint, preset, read_header, save_checkpoint
from gtloc_engine.model.encoders import GaussianFourierFeatures


def test_embeddings_are_unit_vectors_of_the_configured_size(tiny_model):
    places = torch.tensor([[48.85, 2.35], [-33.9, 151.2]])
    times = torch.tensor([[0.1, 0.5], [0.9, 0.99]])
    pixels = torch.randn(2, 3, 64, 64)
    for emb in (tiny_model.embed_locations(places), tiny_model.embed_times(times), tiny_model.embed_images(pixels)):
        assert emb.shape == (2, 64)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))


def test_rff_features_follow_the_formula():
    enc = GaussianFourierFeatures(sigma=4.0, input_dim=2, rff_dim=8)
    v = torch.tensor([[0.3, -0.2]])
    vp = 2 * math.pi * v @ enc.b.T
    torch.testing.assert_close(enc(v), torch.cat((torch.cos(vp), torch.sin(vp)), -1))
    assert "b" in dict(enc.named_buffers()) and not list(enc.parameters())


def test_location_encoder_has_one_summed_branch_per_sigma():
    cfg = preset("tiny")
    cfg.location.sigmas = [1.0, 16.0, 256.0, 4096.0]
    model = GTLoc(cfg)
    assert len(model.location_encoder.rff.branches) == 4
    sigmas = [float(b.capsule[0].b.std()) for b in model.location_encoder.rff.branches]
    assert sigmas == sorted(sigmas) and sigmas[-1] > 1000


def test_circle_time_input_is_exactly_periodic():
    model = GTLoc(preset("tiny", time_input="circle"))
    a = model.embed_times(torch.tensor([[0.0, 0.25]]))
    b = model.embed_times(torch.tensor([[1.0, 1.25]]))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_frozen_backbone_gets_no_gradients(tiny_model):
    emb = tiny_model.embed_images(torch.randn(2, 3, 64, 64))
    emb.sum().backward()
    assert all(p.grad is None for p in tiny_model.backbone.parameters())
    assert all(p.grad is not None for p in tiny_model.adapter.parameters())


def test_trainable_backbone_gets_gradients():
    model = GTLoc(preset("tiny", backbone={"name": "gtloc-tiny-vit", "pretrained": None, "trainable": True}))
    model.train()
    model.embed_images(torch.randn(2, 3, 64, 64)).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_same_seed_gives_the_same_random_backbone():
    a, b = GTLoc(preset("tiny"), seed=3), GTLoc(preset("tiny"), seed=3)
    assert a.backbone.fingerprint() == b.backbone.fingerprint()
    assert GTLoc(preset("tiny"), seed=4).backbone.fingerprint() != a.backbone.fingerprint()


def test_checkpoint_round_trip_gives_identical_embeddings(tiny_model, tmp_path):
    tiny_model.heads_trained = {**tiny_model.heads_trained, "location": True, "time": False, "ig2t": True}
    tiny_model.gallery_latlon_deg = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).numpy()
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model, {"note": "test"})
    loaded = load_checkpoint(path)
    tiny_model.eval()
    pixels, places, times = torch.randn(3, 3, 64, 64), torch.tensor([[10.0, 20.0]]), torch.tensor([[0.3, 0.7]])
    with torch.no_grad():
        assert torch.equal(tiny_model.embed_images(pixels), loaded.embed_images(pixels))
        assert torch.equal(tiny_model.embed_locations(places), loaded.embed_locations(places))
        assert torch.equal(tiny_model.embed_times(times), loaded.embed_times(times))
    assert loaded.heads_trained == tiny_model.heads_trained
    assert loaded.gallery_latlon_deg.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    header = read_header(path)
    assert header["model"]["location"]["sigmas"] == [1.0, 16.0, 256.0]
    assert header["info"] == {"note": "test"} and header["backbone_in_checkpoint"] is True


def test_frozen_pretrained_backbone_is_referenced_not_copied(tmp_path):
    cfg = preset("tiny", backbone={"name": "gtloc-tiny-vit", "pretrained": "openai", "trainable": False})
    model = GTLoc(cfg, load_backbone_weights=False)
    path = save_checkpoint(tmp_path / "ref.safetensors", model)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert not any(k.startswith("backbone.") for k in f.keys())
    # Loading without fetching the backbone works offline (e.g. for `gtloc info` or gallery work).
    assert load_checkpoint(path, load_backbone=False).cfg.backbone.pretrained == "openai"


def test_missing_pretrained_weights_give_one_actionable_line(tmp_path):
    cfg = preset("tiny", backbone={"name": "gtloc-tiny-vit", "pretrained": str(tmp_path / "nope.pt"),
                                   "trainable": False})
    with pytest.raises(GtlocError, match="not found"):
        GTLoc(cfg)


def _corrupt(path, how):
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"\x00garbage" * 10)
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_gives_a_clear_error(tiny_model, tmp_path, how):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    _corrupt(path, how)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def _rewrite(path, tensors_edit=None, header_edit=None):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header = json.loads(meta["gtloc"])
    if tensors_edit:
        tensors_edit(tensors)
    if header_edit:
        header_edit(header)
    save_file(tensors, str(path), metadata={"gtloc": json.dumps(header)})


def test_checkpoint_missing_a_tensor_names_it(tiny_model, tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    _rewrite(path, tensors_edit=lambda t: t.pop("logit_scales.img_time"))
    with pytest.raises(CheckpointError, match="logit_scales.img_time"):
        load_checkpoint(path)


def test_checkpoint_from_a_newer_format_is_refused(tiny_model, tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    _rewrite(path, header_edit=lambda h: h.update(format_version=99, engine_version="9.0"))
    with pytest.raises(CheckpointError, match="upgrade"):
        load_checkpoint(path)


def test_checkpoint_with_a_wrong_shape_is_refused(tiny_model, tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    _rewrite(path, header_edit=lambda h: h["model"].update(embed_dim=32))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(path)


def test_plain_safetensors_is_not_a_gtloc_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a gtloc checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")


def test_config_rejects_bad_values():
    with pytest.raises(GtlocError, match="time_input"):
        preset("tiny", time_input="spiral")
    with pytest.raises(GtlocError, match="sigmas"):
        ModelConfig.from_dict({"location": {"sigmas": []}})
    with pytest.raises(GtlocError, match="unknown"):
        ModelConfig.from_dict({"embed_dims": 3})
    with pytest.raises(GtlocError, match="feature_norm"):
        preset("tiny", feature_norm="layer")


def test_feature_norm_separates_near_identical_backbone_features():
    """A random backbone gives almost the same feature vector for every photo; standardising spreads them out."""
    torch.manual_seed(0)
    common = torch.randn(1, 32)
    features = common + 1e-3 * torch.randn(256, 32)  # cosine ~0.9999 between any two photos
    spread = {}
    for norm in ("none", "batchnorm"):
        model = GTLoc(preset("tiny", feature_norm=norm), seed=0)
        model.adapter = type(model.adapter)(32, 64, model.cfg.embed_dim, norm)
        model.train()
        emb = model.embed_features(features)
        spread[norm] = (emb @ emb.T).mean().item()
    assert spread["none"] > 0.99
    assert spread["batchnorm"] < 0.5


def test_feature_norm_statistics_travel_in_the_checkpoint(tmp_path):
    model = GTLoc(preset("tiny"), seed=0)
    model.train()
    model.embed_features(5.0 + torch.randn(64, model.backbone.feature_dim))  # updates the running statistics
    save_checkpoint(tmp_path / "m.safetensors", model, {})
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert torch.equal(loaded.adapter.norm.running_mean, model.adapter.norm.running_mean)
    assert 0.4 < loaded.adapter.norm.running_mean.mean() < 0.6  # one batch moves it 1/10 of the way to 5
    x = torch.randn(4, model.backbone.feature_dim)
    torch.testing.assert_close(loaded.eval().embed_features(x), model.eval().embed_features(x))
