"""Hugging Face CLIP weights converted into gtloc's open_clip backbone give the same features as transformers."""

import re

import pytest
import torch
import torch.nn.functional as F

from gtloc_engine.errors import GtlocError
from gtloc_engine.model.backbone import Backbone
from gtloc_engine.model.config import BackboneConfig
from gtloc_engine.model.hf_clip import PLACEHOLDER_TEXT_CFG, hf_clip_to_open_clip

transformers = pytest.importorskip("transformers")

PREFIX = "image_encoder.backbone."
TINY_VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                   patch_size=8, image_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
# eos_token_id 49407 is open_clip's end-of-text id: HF pools the first EOS token, open_clip the argmax id, the same.
TINY_TEXT = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                 vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                 eos_token_id=49407)


def _jitter(model: torch.nn.Module, seed: int) -> None:
    """Random offsets on every weight, so zero biases and unit norms cannot hide a mix-up of q, k, v or of a bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)


@pytest.fixture(scope="module")
def hf_clip():
    torch.manual_seed(7)
    cfg = transformers.CLIPConfig(text_config=TINY_TEXT, vision_config=TINY_VISION, projection_dim=64)
    model = transformers.CLIPModel(cfg).eval()
    _jitter(model, 7)
    return model


def _pooled(out) -> torch.Tensor:
    # transformers 5 returns a BaseModelOutputWithPooling from get_*_features (the projected features in
    # pooler_output); transformers 4 returned the tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _cosine_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((1 - F.cosine_similarity(a, b, dim=-1)).abs().max())


def _backbone(name: str, conv) -> Backbone:
    backbone = Backbone(BackboneConfig(name=name, pretrained=None, trainable=False, open_clip_config=conv.model_cfg))
    conv.load_into(backbone.clip)
    return backbone


def test_config_is_inferred_from_the_tensor_shapes(hf_clip):
    conv = hf_clip_to_open_clip(hf_clip.state_dict())
    assert conv.model_cfg == {
        "embed_dim": 64, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8, "head_width": 64,
                       "mlp_ratio": 4.0},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
    }
    assert conv.has_text and conv.source_keys == len(hf_clip.state_dict())


def test_converted_model_gives_the_same_image_and_text_features(hf_clip):
    # As in the GT-Loc checkpoint: the backbone under a prefix, next to tensors that are not the backbone's.
    state = {PREFIX + k: v for k, v in hf_clip.state_dict().items()}
    state["image_encoder.mlp.0.weight"] = torch.zeros(3, 3)
    state[PREFIX + "vision_model.embeddings.position_ids"] = torch.arange(17)[None]  # older HF files carry it
    conv = hf_clip_to_open_clip(state, prefix=PREFIX)
    backbone = _backbone("gtloc-test-hf-clip-tiny", conv)  # load_into loads strictly: every tensor is used

    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = backbone.tokenize(["a photo of a cat", "a rainy street in Paris at dusk", ""])
    with torch.inference_mode():
        ours_img, hf_img = backbone(pixels), _pooled(hf_clip.get_image_features(pixel_values=pixels))
        ours_txt, hf_txt = backbone.encode_text(tokens), _pooled(hf_clip.get_text_features(input_ids=tokens))
    assert _cosine_distance(ours_img, hf_img) < 1e-4
    assert _cosine_distance(ours_txt, hf_txt) < 1e-4
    torch.testing.assert_close(ours_img, hf_img, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours_txt, hf_txt, atol=1e-4, rtol=1e-4)


def test_vision_only_file_gets_a_placeholder_text_tower():
    torch.manual_seed(8)
    hf = transformers.CLIPVisionModelWithProjection(
        transformers.CLIPVisionConfig(**TINY_VISION, projection_dim=64)).eval()
    _jitter(hf, 8)
    conv = hf_clip_to_open_clip(hf.state_dict())
    assert not conv.has_text and conv.model_cfg["text_cfg"] == PLACEHOLDER_TEXT_CFG
    assert not any(k.startswith(("transformer.", "token_embedding", "text_projection")) for k in conv.state_dict)
    backbone = _backbone("gtloc-test-hf-clip-tiny-vision", conv)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        torch.testing.assert_close(backbone(pixels), hf(pixel_values=pixels).image_embeds, atol=1e-4, rtol=1e-4)


def _broken(hf_clip, change):
    state = {PREFIX + k: v for k, v in hf_clip.state_dict().items()}
    change(state)
    with pytest.raises(GtlocError) as info:
        hf_clip_to_open_clip(state, prefix=PREFIX)
    message = str(info.value)
    assert "\n" not in message and message.startswith("HF CLIP backbone:")
    return message


def test_missing_tensor_is_named(hf_clip):
    name = PREFIX + "vision_model.encoder.layers.1.mlp.fc1.weight"
    message = _broken(hf_clip, lambda s: s.pop(name))
    assert re.search(rf"tensor {re.escape(name)} is missing", message)


def test_wrong_shape_tensor_is_named(hf_clip):
    name = PREFIX + "text_model.encoder.layers.0.self_attn.k_proj.bias"
    message = _broken(hf_clip, lambda s: s.__setitem__(name, torch.zeros(64)))
    assert name in message and "(64,)" in message and "(128,)" in message


def test_unexpected_vision_tensor_is_named(hf_clip):
    name = PREFIX + "vision_model.encoder.layers.0.self_attn.rel_pos_bias"
    message = _broken(hf_clip, lambda s: s.__setitem__(name, torch.zeros(2)))
    assert f"tensor {name} is unexpected" in message


def test_position_count_must_fit_a_square_patch_grid(hf_clip):
    name = PREFIX + "vision_model.embeddings.position_embedding.weight"
    message = _broken(hf_clip, lambda s: s.__setitem__(name, s[name][:12]))
    assert name in message and "(12, 128)" in message


def test_inline_config_cannot_redefine_an_existing_backbone(hf_clip):
    conv = hf_clip_to_open_clip(hf_clip.state_dict())
    with pytest.raises(GtlocError, match="already an open_clip model with a different config"):
        Backbone(BackboneConfig(name="ViT-L-14", pretrained=None, open_clip_config=conv.model_cfg))


def _open_clip_visual_to_hf(visual: dict) -> dict:
    """The inverse of hf_clip_to_open_clip for the vision tower, written independently of it."""
    hf = {
        "vision_model.embeddings.class_embedding": visual["class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": visual["conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": visual["positional_embedding"],
        "visual_projection.weight": visual["proj"].t().contiguous(),
    }
    for oc, name in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for p in ("weight", "bias"):
            hf[f"vision_model.{name}.{p}"] = visual[f"{oc}.{p}"]
    layers = 1 + max(int(k.split(".")[2]) for k in visual if k.startswith("transformer.resblocks."))
    for i in range(layers):
        oc, h = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        for p in ("weight", "bias"):
            for part, proj in zip(visual[f"{oc}attn.in_proj_{p}"].chunk(3), ("q", "k", "v")):
                hf[f"{h}self_attn.{proj}_proj.{p}"] = part
            for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                hf[f"{h}{theirs}.{p}"] = visual[f"{oc}{ours}.{p}"]
    return hf


@pytest.mark.slow
def test_vit_l14_round_trip_through_the_hf_layout():
    import open_clip

    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    # 1. open_clip's ViT-L/14 (QuickGELU, as OpenAI's), random weights; keep only its image tower's tensors.
    torch.manual_seed(9)
    original = open_clip.create_model("ViT-L-14-quickgelu", pretrained=None).eval()
    _jitter(original.visual, 9)
    with torch.inference_mode():
        reference = original.encode_image(pixels)
    visual = {k: v.detach().clone() for k, v in original.visual.state_dict().items()}
    del original

    # 2. The same weights in transformers' layout of openai/clip-vit-large-patch14 (vision config, no download).
    hf_cfg = transformers.CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
        image_size=224, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5, num_channels=3)
    hf = transformers.CLIPVisionModelWithProjection(hf_cfg).eval()
    hf.load_state_dict(_open_clip_visual_to_hf(visual), strict=True)
    del visual
    with torch.inference_mode():
        hf_features = hf(pixel_values=pixels).image_embeds
    assert _cosine_distance(hf_features, reference) < 1e-4
    state = {PREFIX + k: v for k, v in hf.state_dict().items()}
    del hf

    # 3. Back through the converter into gtloc's backbone factory.
    conv = hf_clip_to_open_clip(state, prefix=PREFIX)
    del state
    assert conv.model_cfg["vision_cfg"] == {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14,
                                            "head_width": 64, "mlp_ratio": 4.0}
    assert conv.model_cfg["embed_dim"] == 768 and not conv.has_text
    backbone = _backbone("gtloc-test-hf-clip-vit-l-14", conv)
    del conv
    with torch.inference_mode():
        ours = backbone(pixels)
    assert _cosine_distance(ours, reference) < 1e-4
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
