"""Hugging Face CLIP weights -> an open_clip CLIP model: the GT-Loc authors' frozen backbone, loaded offline.

The authors' checkpoint carries its frozen image backbone as a Hugging Face `transformers.CLIPModel` (the
openai/clip-vit-large-patch14 layout: `vision_model.*`, `visual_projection.weight`, optionally `text_model.*`,
`text_projection.weight`, `logit_scale`), often under a prefix such as `image_encoder.backbone.`.
`hf_clip_to_open_clip` renames and reshapes those tensors into an open_clip `CLIP` state dict and derives the
matching open_clip model config from the tensor shapes, so the backbone is built by gtloc's one backbone factory
(`Backbone`, with `BackboneConfig.open_clip_config` set to the derived config) and gets the same feature cache,
bf16 option and preprocessing as every other backbone. We convert rather than run `transformers` at inference:
one factory instead of two, and `transformers` stays an optional dependency (the tests use it to check the
conversion; nothing here imports it).

The two implementations compute the same function: both are pre-LayerNorm ViTs with a class token, QuickGELU
MLPs (OpenAI's CLIPs; `quick_gelu: True` in the config), LayerNorm eps 1e-5, the class token's LayerNorm'd state
projected without bias, and for text a causal transformer pooled at the end-of-text token (open_clip takes the
argmax of the token ids, which is the EOT id 49407; HF takes the first `eos_token_id`, the same token for
tokenised text). Preprocessing is open_clip's OpenAI one (bicubic resize of the short side to 224, centre crop,
CLIP mean/std), which is what HF's CLIPImageProcessor does for these models.

Mapping (HF -> open_clip; per layer i, `L` = `vision_model.encoder.layers.i.` -> `visual.transformer.resblocks.i.`,
and `text_model.encoder.layers.i.` -> `transformer.resblocks.i.` for the text tower):

    vision_model.embeddings.class_embedding        -> visual.class_embedding
    vision_model.embeddings.patch_embedding.weight -> visual.conv1.weight
    vision_model.embeddings.position_embedding.weight -> visual.positional_embedding
    vision_model.pre_layrnorm.*                    -> visual.ln_pre.*
    L self_attn.{q,k,v}_proj.{weight,bias}         -> attn.in_proj_{weight,bias} (q, k, v concatenated on dim 0)
    L self_attn.out_proj.*                         -> attn.out_proj.*
    L layer_norm1.* / layer_norm2.*                -> ln_1.* / ln_2.*
    L mlp.fc1.* / mlp.fc2.*                        -> mlp.c_fc.* / mlp.c_proj.*
    vision_model.post_layernorm.*                  -> visual.ln_post.*
    visual_projection.weight  (out, in)            -> visual.proj (in, out), transposed
    text_model.embeddings.token_embedding.weight   -> token_embedding.weight
    text_model.embeddings.position_embedding.weight -> positional_embedding
    text_model.final_layer_norm.*                  -> ln_final.*
    text_projection.weight    (out, in)            -> text_projection (in, out), transposed
    logit_scale                                    -> logit_scale

`*.position_ids` buffers (in older HF files) are ignored. Keys outside `prefix` are not looked at; every key under
it must be used, so a file of another architecture fails loudly instead of loading half its weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from gtloc_engine.errors import GtlocError

_WHAT = "HF CLIP backbone"
_NOT_CLIP = "the file is truncated or not a CLIP ViT"
# A placeholder text tower for files without one: the caller builds it seeded random and refuses text queries.
PLACEHOLDER_TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}
DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's (and open_clip's) initial value, for files without one


@dataclass
class HFConversion:
    """An open_clip model config and the state dict to load into the `CLIP` built from it.

    `state_dict` holds every tensor of that model except, when `has_text` is False, the placeholder text tower's.
    `logit_scale` is the file's, or CLIP's initial log(1/0.07) when the file has none (gtloc uses its own scales).
    `source_keys` counts the tensors read from the HF state dict (without the ignored `position_ids` buffers).
    """

    model_cfg: dict
    state_dict: dict[str, Tensor]
    has_text: bool
    source_keys: int

    def load_into(self, clip: torch.nn.Module) -> None:
        """Load into an open_clip CLIP built from `model_cfg`: strictly, or without a text tower all but its weights."""
        try:
            result = clip.load_state_dict(self.state_dict, strict=self.has_text)
        except RuntimeError as exc:  # torch lists every mismatch on many lines; one is enough to act on
            detail = " ".join(str(exc).split())[:300]
            raise GtlocError(f"{_WHAT}: the open_clip model does not match the converted weights "
                             f"(build it from HFConversion.model_cfg): {detail}") from None
        if not self.has_text:
            image_side = [k for k in result.missing_keys if k.startswith("visual.") or k == "logit_scale"]
            if image_side or result.unexpected_keys:
                bad = (image_side or result.unexpected_keys)[0]
                raise GtlocError(f"{_WHAT}: the open_clip model does not match the converted weights at {bad}; "
                                 "build it from HFConversion.model_cfg")


class _Reader:
    """Takes tensors out of the HF state dict by their un-prefixed name, checking each shape."""

    def __init__(self, state: Mapping[str, Tensor], prefix: str):
        self.prefix = prefix
        self.left: dict[str, Tensor] = {}
        for key, value in state.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):]
            if name.endswith("position_ids"):
                continue
            if not isinstance(value, Tensor):
                raise GtlocError(f"{_WHAT}: {key} is a {type(value).__name__}, not a tensor; {_NOT_CLIP}")
            self.left[name] = value
        self.count = len(self.left)

    def has(self, start: str) -> bool:
        return any(k.startswith(start) for k in self.left)

    def fail(self, name: str, problem: str) -> GtlocError:
        return GtlocError(f"{_WHAT}: tensor {self.prefix}{name} {problem}")

    def take(self, name: str, shape: tuple[int, ...] | None = None, ndim: int | None = None) -> Tensor:
        if name not in self.left:
            raise self.fail(name, f"is missing; {_NOT_CLIP}")
        t = self.left.pop(name)
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise self.fail(name, f"has shape {tuple(t.shape)}, expected {tuple(shape)}; {_NOT_CLIP}")
        if ndim is not None and t.dim() != ndim:
            raise self.fail(name, f"has shape {tuple(t.shape)}, expected {ndim} dimensions; {_NOT_CLIP}")
        return t

    def layer_count(self, start: str) -> int:
        """1 + the highest i of `start{i}.`; a gap in the numbering shows up later as a missing tensor."""
        found = [int(k[len(start):].split(".", 1)[0]) for k in self.left
                 if k.startswith(start) and k[len(start):].split(".", 1)[0].isdigit()]
        return max(found) + 1 if found else 0

    def finish(self) -> None:
        if self.left:
            extra = sorted(self.left)
            more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
            raise self.fail(extra[0], f"is unexpected{more}; the file is not an OpenAI-style CLIP ViT "
                                      "(another architecture, or a different prefix)")


def _heads(r: _Reader, name: str, width: int, head_dim: int) -> int:
    if head_dim <= 0 or width % head_dim:
        raise r.fail(name, f"has width {width}, not a multiple of the head width {head_dim}")
    return width // head_dim


def _transformer(r: _Reader, src: str, dst: str, width: int, out: dict[str, Tensor]) -> tuple[int, int]:
    """Converts the resblocks `src{i}.` -> `dst{i}.`; returns (layers, MLP hidden width)."""
    layers = r.layer_count(src)
    if layers == 0:
        raise r.fail(f"{src}0.self_attn.q_proj.weight", f"is missing; {_NOT_CLIP}")
    fc1 = f"{src}0.mlp.fc1.weight"
    hidden = int(r.left[fc1].shape[0]) if fc1 in r.left and r.left[fc1].dim() == 2 else 4 * width
    if int(width * (hidden / width)) != hidden:  # open_clip rebuilds the MLP width as int(width * mlp_ratio)
        raise r.fail(fc1, f"has MLP width {hidden}, which open_clip cannot express as width {width} x a ratio")
    for i in range(layers):
        s, d = f"{src}{i}.", f"{dst}{i}."
        a = s + "self_attn."
        qkv_w = [r.take(f"{a}{p}_proj.weight", (width, width)) for p in "qkv"]
        qkv_b = [r.take(f"{a}{p}_proj.bias", (width,)) for p in "qkv"]
        out[d + "attn.in_proj_weight"] = torch.cat(qkv_w, 0)
        out[d + "attn.in_proj_bias"] = torch.cat(qkv_b, 0)
        out[d + "attn.out_proj.weight"] = r.take(a + "out_proj.weight", (width, width))
        out[d + "attn.out_proj.bias"] = r.take(a + "out_proj.bias", (width,))
        for hf, oc in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2")):
            out[f"{d}{oc}.weight"] = r.take(f"{s}{hf}.weight", (width,))
            out[f"{d}{oc}.bias"] = r.take(f"{s}{hf}.bias", (width,))
        out[d + "mlp.c_fc.weight"] = r.take(s + "mlp.fc1.weight", (hidden, width))
        out[d + "mlp.c_fc.bias"] = r.take(s + "mlp.fc1.bias", (hidden,))
        out[d + "mlp.c_proj.weight"] = r.take(s + "mlp.fc2.weight", (width, hidden))
        out[d + "mlp.c_proj.bias"] = r.take(s + "mlp.fc2.bias", (width,))
    return layers, hidden


def _layer_norm(r: _Reader, src: str, dst: str, width: int, out: dict[str, Tensor]) -> None:
    out[dst + ".weight"] = r.take(src + ".weight", (width,))
    out[dst + ".bias"] = r.take(src + ".bias", (width,))


def hf_clip_to_open_clip(state: Mapping[str, Tensor], *, prefix: str = "", head_dim: int = 64) -> HFConversion:
    """Convert a Hugging Face CLIPModel (or CLIPVisionModelWithProjection) state dict into open_clip's layout.

    `state` holds the HF tensors under `prefix` (e.g. 'image_encoder.backbone.' in the GT-Loc checkpoint; other
    keys are ignored). Every size is inferred from the tensor shapes, since an HF state dict carries no config:
    widths, layer counts, MLP ratio, patch size, image size (sqrt(positions - 1) x patch), context length, vocab
    and embedding size. Only the number of attention heads cannot be seen in the shapes: it is width / `head_dim`,
    and all OpenAI CLIPs (ViT-B/32, B/16, L/14, L/14-336, and their text towers) use head width 64.

    Without `text_model.*` tensors, `has_text` is False and `model_cfg` gets a minimal placeholder text tower
    (PLACEHOLDER_TEXT_CFG) whose weights are not in `state_dict`. A missing, unexpected or wrong-shape tensor, or
    shapes that do not fit together, raise GtlocError naming the tensor.
    """
    r = _Reader(state, prefix)
    if not r.has("vision_model."):
        raise GtlocError(f"{_WHAT}: no tensors under {prefix + 'vision_model.'!r} ({r.count} under {prefix!r}); "
                         "give the prefix of the HF CLIPModel inside the checkpoint")
    out: dict[str, Tensor] = {}

    # Vision tower.
    v, e = "vision_model.", "vision_model.embeddings."
    cls = r.take(e + "class_embedding", ndim=1)
    width = int(cls.shape[0])
    out["visual.class_embedding"] = cls
    conv = r.take(e + "patch_embedding.weight", ndim=4)
    if conv.shape[0] != width or conv.shape[1] != 3 or conv.shape[2] != conv.shape[3]:
        raise r.fail(e + "patch_embedding.weight", f"has shape {tuple(conv.shape)}, expected ({width}, 3, p, p)")
    patch = int(conv.shape[2])
    out["visual.conv1.weight"] = conv
    pos = r.take(e + "position_embedding.weight", ndim=2)
    grid = math.isqrt(max(int(pos.shape[0]) - 1, 0))
    if pos.shape[1] != width or grid < 1 or grid * grid + 1 != pos.shape[0]:
        raise r.fail(e + "position_embedding.weight",
                     f"has shape {tuple(pos.shape)}, expected ((image_size / {patch})^2 + 1, {width}): "
                     "one position per patch of a square grid plus the class token")
    out["visual.positional_embedding"] = pos
    _layer_norm(r, v + "pre_layrnorm", "visual.ln_pre", width, out)
    heads = _heads(r, e + "class_embedding", width, head_dim)
    layers, hidden = _transformer(r, v + "encoder.layers.", "visual.transformer.resblocks.", width, out)
    _layer_norm(r, v + "post_layernorm", "visual.ln_post", width, out)
    proj = r.take("visual_projection.weight", ndim=2)
    if proj.shape[1] != width:
        raise r.fail("visual_projection.weight", f"has shape {tuple(proj.shape)}, expected (embed_dim, {width})")
    embed_dim = int(proj.shape[0])
    out["visual.proj"] = proj.t().contiguous()
    vision_cfg = {"image_size": grid * patch, "layers": layers, "width": width, "patch_size": patch,
                  "head_width": width // heads, "mlp_ratio": hidden / width}

    # Text tower.
    has_text = r.has("text_model.") or r.has("text_projection.")
    if has_text:
        t, e = "text_model.", "text_model.embeddings."
        tok = r.take(e + "token_embedding.weight", ndim=2)
        vocab, twidth = (int(s) for s in tok.shape)
        out["token_embedding.weight"] = tok
        tpos = r.take(e + "position_embedding.weight", ndim=2)
        if tpos.shape[1] != twidth:
            raise r.fail(e + "position_embedding.weight",
                         f"has shape {tuple(tpos.shape)}, expected (context_length, {twidth})")
        out["positional_embedding"] = tpos
        theads = _heads(r, e + "token_embedding.weight", twidth, head_dim)
        tlayers, thidden = _transformer(r, t + "encoder.layers.", "transformer.resblocks.", twidth, out)
        _layer_norm(r, t + "final_layer_norm", "ln_final", twidth, out)
        out["text_projection"] = r.take("text_projection.weight", (embed_dim, twidth)).t().contiguous()
        text_cfg = {"context_length": int(tpos.shape[0]), "vocab_size": vocab, "width": twidth,
                    "heads": theads, "layers": tlayers}
        if thidden != 4 * twidth:
            text_cfg["mlp_ratio"] = thidden / twidth
    else:
        text_cfg = dict(PLACEHOLDER_TEXT_CFG)

    if "logit_scale" in r.left:
        scale = r.take("logit_scale")
        if scale.numel() != 1:
            raise r.fail("logit_scale", f"has shape {tuple(scale.shape)}, expected a scalar; {_NOT_CLIP}")
        out["logit_scale"] = scale.reshape(())
    else:
        out["logit_scale"] = torch.tensor(DEFAULT_LOGIT_SCALE)
    r.finish()

    model_cfg = {"embed_dim": embed_dim, "quick_gelu": True, "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    return HFConversion(model_cfg=model_cfg, state_dict=out, has_text=has_text, source_keys=r.count)
