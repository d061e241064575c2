"""Checkpoints: one .safetensors file, tensors plus a JSON header ('gtloc' metadata). Nothing is unpickled.

The header holds the model config (backbone, sizes, sigmas), which heads are trained, versions and a free
'info' dict (training summary). The RFF matrices are buffers, so they are tensors in the file. A frozen
pretrained backbone is referenced by name and tag, not copied; random or trained backbones are stored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gtloc_engine import __version__
from gtloc_engine.errors import CheckpointError, GtlocError
from gtloc_engine.io.atomic import atomic_write
from gtloc_engine.model.config import ModelConfig
from gtloc_engine.model.gtloc import GTLoc

FORMAT = "gtloc-checkpoint"
FORMAT_VERSION = 2  # bump on any change that an older reader would misread
GALLERY_KEY = "gallery.latlon_deg"
# Version 1 had two logit scales; version 2 has the six heads (model/config.py LOGIT_HEADS).
V1_SCALE_NAMES = {"logit_scale_loc": "logit_scales.img_gps", "logit_scale_time": "logit_scales.img_time"}


def model_tensors(model: GTLoc) -> dict[str, torch.Tensor]:
    tensors = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if model.backbone_in_checkpoint or not k.startswith("backbone.")
    }
    if model.gallery_latlon_deg is not None:
        tensors[GALLERY_KEY] = torch.as_tensor(np.asarray(model.gallery_latlon_deg, dtype=np.float32))
    return tensors


def save_checkpoint(path: str | Path, model: GTLoc, info: dict[str, Any] | None = None) -> Path:
    """Write the model to `path` atomically; returns the path."""
    from safetensors.torch import save_file

    import open_clip

    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "engine_version": __version__,
        "torch_version": torch.__version__,
        "open_clip_version": open_clip.__version__,
        "model": model.cfg.to_dict(),
        "heads_trained": dict(model.heads_trained),
        "backbone_in_checkpoint": model.backbone_in_checkpoint,
        "info": info or {},
    }
    tensors = model_tensors(model)
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"gtloc": json.dumps(header)}))
    return path


def read_header(path: str | Path) -> dict[str, Any]:
    """The checkpoint's JSON header, validated; raises CheckpointError with one line on any problem."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass an existing .safetensors file made by gtloc")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is not a readable safetensors file ({type(exc).__name__}); it may be corrupt or "
            "truncated: re-download or re-train it"
        ) from None
    if "gtloc" not in metadata:
        raise CheckpointError(f"checkpoint {path} is a safetensors file but not a gtloc checkpoint (no 'gtloc' header)")
    try:
        header = json.loads(metadata["gtloc"])
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint {path} has a corrupt 'gtloc' header (invalid JSON)") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {header.get('format')!r}, expected {FORMAT!r}")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r} (written by gtloc {header.get('engine_version')}); "
            f"this engine ({__version__}) reads versions 1..{FORMAT_VERSION}: upgrade gtloc-engine"
        )
    for key in ("model", "heads_trained"):
        if key not in header:
            raise CheckpointError(f"checkpoint {path} header lacks {key!r}; it is incomplete")
    return header


def load_checkpoint(path: str | Path, *, load_backbone: bool = True, device: str | torch.device | None = None
                    ) -> GTLoc:
    """Rebuild a GTLoc from a checkpoint. `load_backbone=False` skips fetching pretrained backbone weights.
    `device`: where the model will compute ('auto', 'cpu', 'cuda[:N]' or a torch.device; None: the process's
    default, gtloc_engine/device.py)."""
    from safetensors.torch import load_file

    from gtloc_engine.device import default_device, resolve_device

    target = device if isinstance(device, torch.device) else default_device() if device is None \
        else resolve_device(device)  # before the load: an absent GPU should cost no time

    path = Path(path)
    header = read_header(path)
    try:
        cfg = ModelConfig.from_dict(header["model"])
    except GtlocError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} tensors cannot be read ({type(exc).__name__}); it may be corrupt") from None
    stored_backbone = bool(header.get("backbone_in_checkpoint"))
    # A stored backbone is overwritten from the file, so there is nothing to download for it.
    model = GTLoc(cfg, load_backbone_weights=load_backbone and not stored_backbone)
    gallery = tensors.pop(GALLERY_KEY, None)
    if header["format_version"] == 1:
        tensors = _upgrade_v1(tensors, model)
    expected = model.state_dict()
    wanted = {k for k in expected if stored_backbone or not k.startswith("backbone.")}
    missing = sorted(wanted - tensors.keys())
    unexpected = sorted(tensors.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not match its own config: missing {missing[:4]}{'...' if len(missing) > 4 else ''}"
            f" unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}; it is incomplete or was edited"
        )
    for key, tensor in tensors.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"checkpoint {path}: tensor {key} has shape {tuple(tensor.shape)}, config implies "
                f"{tuple(expected[key].shape)}"
            )
    model.load_state_dict(tensors, strict=False)
    model.heads_trained.update({k: bool(v) for k, v in header["heads_trained"].items()})
    model.gallery_latlon_deg = None if gallery is None else gallery.numpy().astype(np.float64)
    model.eval()
    return model.to(target)


def _upgrade_v1(tensors: dict[str, torch.Tensor], model: GTLoc) -> dict[str, torch.Tensor]:
    """A version-1 checkpoint's two scales under their version-2 names; the four fused heads keep their initial
    scale and stay marked untrained, so they borrow their fallback's (GTLoc.logit_scale): the old behaviour."""
    out = {V1_SCALE_NAMES.get(k, k): v for k, v in tensors.items()}
    for key, value in model.state_dict().items():
        if key.startswith("logit_scales.") and key not in out:
            out[key] = value.detach().clone()
    return out
