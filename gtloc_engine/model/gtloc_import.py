"""Import the GT-Loc authors' released model (`gtloc.pt`, GitHub dshatwell23/gtloc) as a gtloc checkpoint.

The file is a plain PyTorch state_dict of the authors' `GTLoc` module (src/model/*.py in their repository). It is
read with `torch.load(weights_only=True)`, PyTorch's restricted loader that accepts tensors and plain containers
and refuses any other pickled object, and mapped tensor by tensor, by name and shape:

- `location_encoder.LocEnc{i}.capsule.{0.b,1,3,5}`, `.head.0` -> `location_encoder.rff.branches.{i}.capsule...`,
  `.head.0` (the same slots);
- `time_encoder.TimeEnc{i}.capsule.{0.b,1,4,7}`, `.head.0` -> `time_encoder.rff.branches.{i}.capsule.{0.b,1,3,5}`,
  `.head.0` (their slots 3, 6, 9 are Dropout/Identity and hold nothing);
- `image_encoder.mlp.{0,2}` -> `adapter.mlp.{0,2}`;
- `{img_gps,img_time,gps_time,ig2t,it2g,gt2i}_logit_scale` -> `logit_scales.{...}` (the six heads);
- `gps_queue`, `time_queue` and their pointers: dropped (training state);
- `image_encoder.backbone.*` (an HF CLIPModel, optional): converted to open_clip and stored (model/hf_clip.py).

Branch i of both encoders has sigma 2^(4i), which the Fourier matrices carry (checked). Without a backbone in the
file, the checkpoint references open_clip ('ViT-L-14', 'openai'), the same OpenAI weights as their
openai/clip-vit-large-patch14, as import-geoclip does. A fused head (gps_time, ig2t, it2g, gt2i) counts as trained
when its scale moved away from the initial log(1/0.07); one still at the initial value borrows its fallback's.

The authors' code and weights are CC BY-NC 4.0 (non-commercial use, with attribution). gtloc is MIT and ships
none of their files; the checkpoint's header records the licence and the source file's sha256, and `gtloc info`
shows them.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle  # only for its exception type: torch.load(weights_only=True) raises UnpicklingError
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from gtloc_engine.errors import GtlocError
from gtloc_engine.model.checkpoint import save_checkpoint
from gtloc_engine.model.config import LOGIT_HEADS, preset
from gtloc_engine.model.encoders import check_rff_sigmas
from gtloc_engine.model.gtloc import GTLoc

AUTHORS_SIGMAS = (2.0**0, 2.0**4, 2.0**8)  # their config.py loc_sigma and time_sigma
LICENCE = "CC BY-NC 4.0"
LICENCE_NOTE = ("weights by the GT-Loc authors (Shatwell, Dave, Swetha, Shah; ICCV 2025), licensed CC BY-NC 4.0: "
                "non-commercial use only, with attribution; gtloc's own code is MIT and does not change that")
SOURCE_URL = "https://github.com/dshatwell23/gtloc"
BACKBONE_PREFIX = "image_encoder.backbone."
DROPPED = ("gps_queue", "gps_queue_ptr", "time_queue", "time_queue_ptr")
_ENCODER_KEY = re.compile(r"^(location|time)_encoder\.(LocEnc|TimeEnc)(\d+)\.(capsule|head)\.(\d+)\.(b|weight|bias)$")
# The authors' Sequential slots -> gtloc's (their time capsule has a Dropout/Identity after each ReLU).
_CAPSULE_SLOT = {"location": {0: 0, 1: 1, 3: 3, 5: 5}, "time": {0: 0, 1: 1, 4: 3, 7: 5}}
_ADAPTER_KEY = re.compile(r"^image_encoder\.mlp\.([02])\.(weight|bias)$")
_SCALE_KEYS = {f"{head}_logit_scale": f"logit_scales.{head}" for head in LOGIT_HEADS}
INITIAL_LOGIT_SCALE = math.log(1 / 0.07)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_authors_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The authors' state_dict from `path`, read with weights_only=True; one GtlocError line on any problem."""
    path = Path(path)
    if not path.is_file():
        raise GtlocError(f"GT-Loc model file {path} not found; download it as the authors' README says "
                         "(gdown --id 170wGyCYLSF3DWOvITIAbtN1OkmDlS4v6 -O gtloc.pt) and pass its path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if "Unsupported global" in line), None)
        if reason is None:  # not a refused object: bytes that are no pickle at all
            raise GtlocError(f"GT-Loc model file {path} cannot be read as a PyTorch state_dict (not a pickle); it "
                             "is truncated, corrupt or another format: download it again") from None
        raise GtlocError(f"GT-Loc model file {path} holds more than plain tensors and was refused by the safe "
                         f"loader ({reason[:160]}); gtloc never unpickles code: use the authors' released gtloc.pt"
                         ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        raise GtlocError(f"GT-Loc model file {path} cannot be read as a PyTorch state_dict ({type(exc).__name__}); "
                         "it is truncated, corrupt or another format: download it again") from None
    if isinstance(state, dict) and len(state) == 1 and next(iter(state)) in ("state_dict", "model"):
        state = next(iter(state.values()))  # a training-script wrapper around the state_dict
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise GtlocError(f"GT-Loc model file {path} is not a state_dict (a dict of named tensors); "
                         "pass the authors' gtloc.pt")
    return state


def _head_shapes(cfg, clip_dim: int) -> dict[str, tuple[int, ...]]:
    """gtloc's tensor shapes for everything but the backbone, from the heads alone (no backbone to build)."""
    from torch import nn

    from gtloc_engine.model.encoders import ImageAdapter, LocationEncoder, TimeEncoder

    parts = {"adapter": ImageAdapter(clip_dim, cfg.adapter_hidden_dim or clip_dim, cfg.embed_dim, cfg.feature_norm),
             "location_encoder": LocationEncoder(cfg.location, cfg.embed_dim),
             "time_encoder": TimeEncoder(cfg.time, cfg.embed_dim, cfg.time_input),
             "logit_scales": nn.ParameterDict({h: nn.Parameter(torch.zeros(())) for h in LOGIT_HEADS})}
    return {f"{name}.{k}": tuple(v.shape) for name, module in parts.items() for k, v in module.state_dict().items()}


def _expect(tensor: torch.Tensor, shape: tuple[int, ...], key: str) -> torch.Tensor:
    if tuple(tensor.shape) != shape:
        raise GtlocError(f"GT-Loc model: tensor {key} has shape {tuple(tensor.shape)}, expected {shape}; this is "
                         "not the authors' released architecture")
    if not torch.isfinite(tensor).all():
        raise GtlocError(f"GT-Loc model: tensor {key} holds NaN or infinite values; the file is corrupt")
    return tensor.float()


def authors_to_gtloc(state: dict[str, torch.Tensor], *, load_backbone_weights: bool = False) -> GTLoc:
    """A GTLoc holding the authors' encoders, adapter and six heads (and their CLIP backbone when the state has it).

    Raises GtlocError naming the first missing, unexpected or wrong-shape tensor. `load_backbone_weights=False`
    builds a referenced ('ViT-L-14', 'openai') backbone with random weights: nothing is fetched for an import.
    """
    backbone_state = {k: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    cfg = preset("gtloc-vitl14")
    cfg.location.sigmas = list(AUTHORS_SIGMAS)
    cfg.time.sigmas = list(AUTHORS_SIGMAS)
    cfg.time_input = "angles"
    cfg.feature_norm = "none"  # their MLP takes CLIP features as they are
    conversion = None
    if backbone_state:
        from gtloc_engine.model.hf_clip import hf_clip_to_open_clip

        conversion = hf_clip_to_open_clip(backbone_state, prefix=BACKBONE_PREFIX)
        digest = hashlib.sha256(json.dumps(conversion.model_cfg, sort_keys=True).encode()).hexdigest()[:10]
        cfg.backbone.name = f"gtloc-hf-clip-{digest}"
        cfg.backbone.pretrained = None
        cfg.backbone.trainable = False
        cfg.backbone.open_clip_config = conversion.model_cfg
        cfg.backbone.text_tower = conversion.has_text
    # The adapter's input is the backbone's projected image feature: 768 for the referenced ViT-L/14.
    expected = _head_shapes(cfg, conversion.model_cfg["embed_dim"] if conversion else 768)

    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key in backbone_state or key in DROPPED:
            continue
        if key in _SCALE_KEYS:
            target = _SCALE_KEYS[key]
        elif (m := _ENCODER_KEY.match(key)) is not None:
            kind, prefix, branch, part, slot, leaf = m.groups()
            slots = _CAPSULE_SLOT[kind]
            wrong_prefix = prefix != ("LocEnc" if kind == "location" else "TimeEnc")
            if wrong_prefix or (part == "capsule" and int(slot) not in slots):
                raise GtlocError(f"GT-Loc model: unexpected tensor {key}; this is not the authors' released layout")
            index = slots[int(slot)] if part == "capsule" else int(slot)
            target = f"{kind}_encoder.rff.branches.{branch}.{part}.{index}.{leaf}"
        elif (m := _ADAPTER_KEY.match(key)) is not None:
            target = f"adapter.mlp.{m.group(1)}.{m.group(2)}"
        else:
            raise GtlocError(f"GT-Loc model: unexpected tensor {key}; this is not the authors' released layout "
                             "(a GeoCLIP file goes through `gtloc import-geoclip`)")
        if target not in expected:
            raise GtlocError(f"GT-Loc model: unexpected tensor {key} (no {target} in the paper-size model); "
                             "this is not the authors' released architecture")
        mapped[target] = _expect(tensor, expected[target], key)
    fixed_img_time = "logit_scales.img_time" not in mapped
    if fixed_img_time:  # their GTLoc(temperature=T) keeps img_time as a plain tensor, outside the state_dict
        mapped["logit_scales.img_time"] = torch.tensor(INITIAL_LOGIT_SCALE)
    missing = sorted(set(expected) - mapped.keys())
    if missing:
        raise GtlocError(f"GT-Loc model: tensor {_authors_name(missing[0])} is missing ({len(missing)} of "
                         f"{len(expected)} gtloc tensors have no source); the file is incomplete or not the authors' "
                         "model")
    for kind in ("location", "time"):
        bs = [mapped[f"{kind}_encoder.rff.branches.{i}.capsule.0.b"] for i in range(len(AUTHORS_SIGMAS))]
        check_rff_sigmas(bs, AUTHORS_SIGMAS, f"GT-Loc {kind} encoder")
    # Built only once the file checks out: the paper-size backbone takes seconds to initialise.
    model = GTLoc(cfg, load_backbone_weights=load_backbone_weights and conversion is None)
    model.load_state_dict(mapped, strict=False)
    if conversion is not None:
        conversion.load_into(model.backbone.clip)
    heads = {"location": True, "time": True}
    for head in ("gps_time", "ig2t", "it2g", "gt2i"):
        heads[head] = abs(float(mapped[f"logit_scales.{head}"]) - INITIAL_LOGIT_SCALE) > 1e-6
    model.heads_trained = heads
    return model.eval()


def _authors_name(gtloc_key: str) -> str:
    """The authors' name of a gtloc tensor (for messages about what their file lacks)."""
    scales = {v: k for k, v in _SCALE_KEYS.items()}
    if gtloc_key in scales:
        return scales[gtloc_key]
    m = re.match(r"^(location|time)_encoder\.rff\.branches\.(\d+)\.(capsule|head)\.(\d+)\.(\w+)$", gtloc_key)
    if m is not None:
        kind, branch, part, index, leaf = m.groups()
        slot = {v: k for k, v in _CAPSULE_SLOT[kind].items()}[int(index)] if part == "capsule" else int(index)
        return f"{kind}_encoder.{'LocEnc' if kind == 'location' else 'TimeEnc'}{branch}.{part}.{slot}.{leaf}"
    return gtloc_key.replace("adapter.mlp.", "image_encoder.mlp.")


def import_authors_model(source: str | Path, out: str | Path, *,
                         gallery_latlon_deg: np.ndarray | None = None, gallery_note: str | None = None) -> Path:
    """Write the authors' gtloc.pt at `source` as a gtloc checkpoint at `out` (atomically); returns the path."""
    source = Path(source)
    state = read_authors_state(source)
    model = authors_to_gtloc(state)
    model.gallery_latlon_deg = gallery_latlon_deg
    has_backbone = any(k.startswith(BACKBONE_PREFIX) for k in state)
    scales = {head: round(float(model.logit_scales[head].detach()), 6) for head in LOGIT_HEADS}
    info = {
        "source": "gtloc-authors",
        "source_url": SOURCE_URL,
        "source_file": source.name,
        "source_sha256": _sha256(source),
        "licence": LICENCE,
        "licence_note": LICENCE_NOTE,
        "logit_scales": scales,
        "img_time_scale": ("not in the file (a fixed training temperature): log(1/0.07) is used"
                           if "img_time_logit_scale" not in state else "from the file"),
        "fused_heads_trained": {h: model.heads_trained[h] for h in ("gps_time", "ig2t", "it2g", "gt2i")},
        "dropped": [k for k in DROPPED if k in state],
        "gallery": gallery_note or "none: predict's JSON places use a generic evenly spread gallery "
                                   "(pass --gallery to import one)",
        "backbone": ("the file's frozen HF CLIP (openai/clip-vit-large-patch14 layout) converted to open_clip and "
                     "stored: predicts offline" if has_backbone else
                     "frozen open_clip ViT-L-14 'openai' (= the authors' openai/clip-vit-large-patch14), referenced, "
                     "not stored: fetched once with internet"),
    }
    return save_checkpoint(out, model, info=info)
