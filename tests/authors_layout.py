"""Plain seeded tensors in the GT-Loc authors' checkpoint layout, for testing gtloc's importer of their `gtloc.pt`.

No code, weights or galleries of the authors are here: this module only knows the *names and shapes* of the entries of
their ``GTLoc().state_dict()`` (read from their model code, ``src/model/*.py`` of the GT-Loc repository) and fills
them with values drawn from a fixed ``torch.Generator`` seed. ``tests/fixtures/authors_parity/outputs.npz`` records
what the authors' own code computes with ``authors_state_dict(seed=0)`` (and its ``backbone="tiny"`` variant) loaded
into it, so an importer can be checked against their code without shipping anything of theirs.

Keys, in the order their ``state_dict()`` lists them (all float32 unless said otherwise):

* ``img_gps_logit_scale``, ``img_time_logit_scale``, ``gps_time_logit_scale``, ``ig2t_logit_scale``,
  ``it2g_logit_scale``, ``gt2i_logit_scale``: shape ``[]``; their six CLIP-style log temperatures (initialised by them
  to log(1/0.07) ~ 2.659). Here each gets a DIFFERENT value (2.0, 2.5, 3.0, 3.5, 4.0, 4.5 in that order) so a mix-up
  shows. Their eval never uses them (top-1 is a plain cosine argmax).
* ``gps_queue`` ``[2, 4096]`` (lat, lon in degrees, one column per entry), ``gps_queue_ptr`` ``[1]`` int64,
  ``time_queue`` ``[5, 4096]`` (month, day, hour, minute, second as floats), ``time_queue_ptr`` ``[1]`` int64:
  their training negative queues (buffers), filled the way their constructor fills them; the pointers are 512 and
  1536 here (distinct on purpose).
* ``image_encoder.backbone.*``: only with ``backbone="tiny"``: a Hugging Face ``CLIPModel`` state dict (theirs is
  openai/clip-vit-large-patch14; here a tiny one, see :func:`tiny_clip_config`). The released file may or may not
  carry it.
* ``image_encoder.mlp.0.weight`` ``[768, 768]``, ``.bias`` ``[768]``; ``image_encoder.mlp.2.weight`` ``[512, 768]``,
  ``.bias`` ``[512]``: Linear(768, 768) -> ReLU -> Linear(768, 512) on CLIP's projected 768-d image feature.
* ``location_encoder.LocEnc{i}.*`` for i = 0, 1, 2 (sigma 2**0, 2**4, 2**8):
  ``capsule.0.b`` ``[256, 2]`` (random Fourier feature matrix, N(0, sigma**2); input is their Equal Earth projection
  of (lat, lon) degrees, /180-scaled), ``capsule.{1,3,5}.weight/bias`` (Linear 512->1024, 1024->1024, 1024->1024,
  each followed by ReLU), ``head.0.weight`` ``[512, 1024]`` / ``head.0.bias`` ``[512]``. Their output is the SUM of
  the three capsules' heads.
* ``time_encoder.TimeEnc{i}.*`` for i = 0, 1, 2 (sigma 2**0, 2**4, 2**8): ``capsule.0.b`` ``[256, 2]`` (input: the
  two angles of (month, day) and (hour, minute, second) in [-pi, pi)), ``capsule.{1,4,7}.weight/bias`` (Linear
  512->1024, 1024->1024, 1024->1024; indices 3, 6, 9 are their Dropout/Identity slots, which hold nothing),
  ``head.0.*`` as above; output summed over the three capsules.

Linear weights and biases are uniform in +-1/sqrt(fan_in) (nn.Linear's default init scale), the Fourier matrices
normal with standard deviation sigma, all drawn from one generator seeded with ``seed`` in key order. The tiny
backbone's keys and shapes are transformers' ``CLIPModel(tiny_clip_config()).state_dict()`` (built on the meta
device, so no init runs); its values come from a second generator (seed ``seed + 1_000_003``): Linear / conv weights
N(0, 1/fan_in), LayerNorm weights 1 + N(0, 0.1**2), everything else (biases, class / position / token embeddings)
N(0, 0.02**2), its own ``logit_scale`` log(1/0.07). So the non-backbone tensors are the same with or without it.
"""

from __future__ import annotations

import math

import torch

SIGMAS = (2.0**0, 2.0**4, 2.0**8)
EMBEDDING_DIM = 512
HIDDEN_DIM = 768
CLIP_DIM = 768
CAPSULE_DIM = 1024
QUEUE_SIZE = 4096
LOGIT_SCALE_NAMES = ("img_gps_logit_scale", "img_time_logit_scale", "gps_time_logit_scale",
                     "ig2t_logit_scale", "it2g_logit_scale", "gt2i_logit_scale")
LOGIT_SCALE_VALUES = (2.0, 2.5, 3.0, 3.5, 4.0, 4.5)
GPS_QUEUE_PTR = 512
TIME_QUEUE_PTR = 1536
BACKBONE_SEED_OFFSET = 1_000_003
BACKBONE_PREFIX = "image_encoder.backbone."
# Slots of the capsule Sequentials that hold a Linear (the others are ReLU / Dropout-or-Identity).
LOC_CAPSULE_LINEARS = (1, 3, 5)
TIME_CAPSULE_LINEARS = (1, 4, 7)


def tiny_clip_config():
    """The tiny transformers CLIPConfig of the ``backbone="tiny"`` variant (projection_dim 768, as their MLP needs)."""
    from transformers import CLIPConfig

    text = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, vocab_size=49408,
                max_position_embeddings=77, intermediate_size=512, hidden_act="quick_gelu", eos_token_id=49407)
    vision = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=32,
                  intermediate_size=512, hidden_act="quick_gelu", num_channels=3)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=CLIP_DIM)


def _uniform(gen: torch.Generator, shape, bound: float) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, dtype=torch.float32) * 2.0 - 1.0) * bound


def _linear(out: dict, gen: torch.Generator, prefix: str, fan_in: int, fan_out: int) -> None:
    bound = 1.0 / math.sqrt(fan_in)
    out[prefix + ".weight"] = _uniform(gen, (fan_out, fan_in), bound)
    out[prefix + ".bias"] = _uniform(gen, (fan_out,), bound)


def _capsules(out: dict, gen: torch.Generator, prefix: str, linear_slots) -> None:
    dims = (EMBEDDING_DIM, CAPSULE_DIM, CAPSULE_DIM, CAPSULE_DIM)
    for i, sigma in enumerate(SIGMAS):
        p = f"{prefix}{i}"
        out[f"{p}.capsule.0.b"] = torch.randn((EMBEDDING_DIM // 2, 2), generator=gen, dtype=torch.float32) * sigma
        for slot, fan_in, fan_out in zip(linear_slots, dims[:-1], dims[1:]):
            _linear(out, gen, f"{p}.capsule.{slot}", fan_in, fan_out)
        _linear(out, gen, f"{p}.head.0", CAPSULE_DIM, EMBEDDING_DIM)


def _tiny_backbone(seed: int) -> dict[str, torch.Tensor]:
    """A tiny CLIPModel's state dict: key list and shapes from transformers, values from a seeded generator."""
    from transformers import CLIPModel

    with torch.device("meta"):
        meta = CLIPModel(tiny_clip_config())
    norm_params, embedding_params = set(), set()
    for name, module in meta.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            norm_params.add(f"{name}.weight")
        elif isinstance(module, torch.nn.Embedding):
            embedding_params.add(f"{name}.weight")
    gen = torch.Generator().manual_seed(seed + BACKBONE_SEED_OFFSET)
    out: dict[str, torch.Tensor] = {}
    for key, t in meta.state_dict().items():
        if not t.is_floating_point():  # (integer buffers such as position ids, if a version keeps them)
            out[key] = torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape)
        elif key == "logit_scale":
            out[key] = torch.tensor(math.log(1 / 0.07), dtype=torch.float32)
        elif key in norm_params:
            out[key] = 1.0 + 0.1 * torch.randn(t.shape, generator=gen, dtype=torch.float32)
        elif t.dim() >= 2 and key not in embedding_params:  # Linear / conv weights: std 1/sqrt(fan_in)
            fan_in = math.prod(t.shape[1:])
            out[key] = torch.randn(t.shape, generator=gen, dtype=torch.float32) / math.sqrt(fan_in)
        else:  # biases, class embedding, position / token embedding tables
            out[key] = 0.02 * torch.randn(t.shape, generator=gen, dtype=torch.float32)
    return out


def authors_state_dict(seed: int = 0, *, backbone: str | None = None) -> dict[str, torch.Tensor]:
    """Seeded tensors with exactly the keys, shapes and order of the authors' ``GTLoc().state_dict()``.

    ``backbone=None``: no ``image_encoder.backbone.*`` keys. ``backbone="tiny"``: also the tiny CLIP backbone of
    :func:`tiny_clip_config` under ``image_encoder.backbone.``.
    """
    if backbone not in (None, "tiny"):
        raise ValueError(f"backbone must be None or 'tiny', not {backbone!r}")
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, value in zip(LOGIT_SCALE_NAMES, LOGIT_SCALE_VALUES):
        out[name] = torch.tensor(value, dtype=torch.float32)
    gps = torch.randn((2, QUEUE_SIZE), generator=gen, dtype=torch.float32)
    out["gps_queue"] = torch.nn.functional.normalize(gps, dim=0) * torch.tensor([[90.0], [180.0]])
    out["gps_queue_ptr"] = torch.tensor([GPS_QUEUE_PTR], dtype=torch.int64)
    times = torch.nn.functional.normalize(torch.randn((5, QUEUE_SIZE), generator=gen, dtype=torch.float32), dim=0)
    scale = torch.tensor([[12.0], [30.0], [24.0], [60.0], [60.0]])
    out["time_queue"] = torch.floor(times * scale) + torch.tensor([[1.0], [1.0], [0.0], [0.0], [0.0]])
    out["time_queue_ptr"] = torch.tensor([TIME_QUEUE_PTR], dtype=torch.int64)
    if backbone == "tiny":
        for key, t in _tiny_backbone(seed).items():
            out[BACKBONE_PREFIX + key] = t
    _linear(out, gen, "image_encoder.mlp.0", CLIP_DIM, HIDDEN_DIM)
    _linear(out, gen, "image_encoder.mlp.2", HIDDEN_DIM, EMBEDDING_DIM)
    _capsules(out, gen, "location_encoder.LocEnc", LOC_CAPSULE_LINEARS)
    _capsules(out, gen, "time_encoder.TimeEnc", TIME_CAPSULE_LINEARS)
    return out
