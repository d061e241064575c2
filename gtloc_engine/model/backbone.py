"""The image backbone: one way to build an open_clip model from a BackboneConfig, and where its weights come from.

Weight sources, in the order they are tried: an open_clip pretrained tag (e.g. ('ViT-L-14', 'openai'), fetched
once into open_clip's cache, so it needs internet the first time), a local weights file path, or None (random
init, seeded, for tests and for backbones trained from scratch). gtloc's own small configs live as JSON in
backbone_configs/, next to open_clip's, so every backbone is built by the same factory.

Speed on CPU (inference with a frozen backbone): callers run it under `torch.no_grad()` in batches (device.py);
open_clip's attention calls `nn.MultiheadAttention(need_weights=False)`, which dispatches to PyTorch's fused
scaled-dot-product attention kernel, so there is nothing to patch there. Two runtime settings, which are not part
of the model (a checkpoint does not change with them): `set_cpu_threads(n)` and `Backbone.set_precision(p)`,
where 'bf16' stores the image tower's weights in bfloat16 (2-2.5x faster per image on CPUs with AVX512-BF16 or
AMX, feature cosine > 0.999 against fp32; slower on CPUs without native bf16). int8 dynamic quantisation is not
offered: torch.ao.quantization is deprecated and only covers the MLP Linear layers here.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

import torch
from torch import nn

from gtloc_engine.errors import GtlocError
from gtloc_engine.model.config import BackboneConfig

_CONFIG_DIR = Path(__file__).with_name("backbone_configs")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
_registered = False
_INLINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_inline_lock = threading.Lock()
_inline_dir: Path | None = None


def _open_clip():
    global _registered
    import open_clip

    if not _registered:
        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True
    return open_clip


def _register_inline_config(open_clip, name: str, model_cfg: dict) -> None:
    """Registers an open_clip model config carried as data (BackboneConfig.open_clip_config) under `name`.

    open_clip's factory only takes configs by name from its registry, and its public way in is
    `add_model_config(path)` of a JSON file named after the model: so the config is written as `<name>.json` into
    a folder of this process (removed at exit) and added. Registering the same config again is a no-op; a
    different config under a name that already exists (an open_clip or gtloc model, or an earlier inline one) is
    refused rather than silently changing that model for the whole process.
    """
    global _inline_dir
    if not isinstance(name, str) or not _INLINE_NAME.fullmatch(name):
        raise GtlocError(f"backbone name {name!r} of an inline open_clip config must be letters, digits, . _ -")
    if not isinstance(model_cfg, dict) or not all(k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise GtlocError(f"backbone {name!r}: open_clip_config must be a dict with embed_dim, vision_cfg and text_cfg")
    try:
        text = json.dumps(model_cfg, indent=1, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise GtlocError(f"backbone {name!r}: open_clip_config is not plain data ({exc})") from None
    wanted = json.loads(text)
    with _inline_lock:
        if name in open_clip.list_models():
            if open_clip.get_model_config(name) == wanted:
                return
            raise GtlocError(f"backbone {name!r} is already an open_clip model with a different config; "
                             "give the inline open_clip_config a name of its own")
        if _inline_dir is None:
            _inline_dir = Path(tempfile.mkdtemp(prefix="gtloc-open-clip-configs-"))
            atexit.register(shutil.rmtree, _inline_dir, ignore_errors=True)
        path = _inline_dir / f"{name}.json"
        path.write_text(text)
        open_clip.add_model_config(path)


def set_cpu_threads(threads: int | None) -> None:
    """Intra-op threads for torch on the CPU; None keeps torch's default (one per physical core)."""
    if threads is None:
        return
    if threads < 1:
        raise GtlocError(f"threads {threads} must be at least 1")
    torch.set_num_threads(threads)


def _looks_like_path(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith((".bin", ".pt", ".pth", ".safetensors"))


class Backbone(nn.Module):
    """An open_clip CLIP model used for its image tower (and its text tower for text queries)."""

    def __init__(self, cfg: BackboneConfig, *, load_weights: bool = True, seed: int = 0):
        super().__init__()
        open_clip = _open_clip()
        self.cfg = cfg
        if cfg.open_clip_config is not None:
            _register_inline_config(open_clip, cfg.name, cfg.open_clip_config)
        if cfg.name not in open_clip.list_models():
            raise GtlocError(f"backbone {cfg.name!r} is not an open_clip model; see open_clip.list_models()")
        pretrained = cfg.pretrained if load_weights else None
        if pretrained and _looks_like_path(pretrained) and not Path(pretrained).is_file():
            raise GtlocError(f"backbone weights file {pretrained} not found; give an existing file or an open_clip tag")
        # Random init must be reproducible: the same seed gives the same frozen random backbone everywhere.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                # open_clip warns on every random init and the hub logs each failed try; our error says it once.
                logging.disable(logging.ERROR)
                model, _, preprocess = open_clip.create_model_and_transforms(cfg.name, pretrained=pretrained)
            except GtlocError:
                raise
            except Exception as exc:  # noqa: BLE001  (network, hub, file format: all end in one actionable line)
                raise GtlocError(
                    f"cannot load backbone {cfg.name!r} weights {pretrained!r}: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''} -- fetch them once with internet access, "
                    "or pass a local weights file"
                ) from None
            finally:
                logging.disable(logging.NOTSET)
        self.clip = model
        self.preprocess = self._single_crop = preprocess
        self.feature_dim = int(model.visual.output_dim)
        size = getattr(model.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.precision = "fp32"
        self.set_trainable(cfg.trainable)

    def set_precision(self, precision: str) -> Backbone:
        """'fp32' or 'bf16' weights for the image tower (inference only; features come back as float32)."""
        if precision not in PRECISIONS:
            raise GtlocError(f"precision {precision!r} must be one of {sorted(PRECISIONS)}")
        if precision != "fp32" and self.cfg.trainable:
            raise GtlocError(f"precision {precision!r} is for inference with a frozen backbone; this one trains")
        if self.precision != "fp32" and precision != self.precision:
            # The fp32 weights were rounded away: going back would silently keep bf16 values in fp32 tensors.
            raise GtlocError(f"backbone is already in {self.precision}; load the checkpoint again for {precision}")
        self.clip.visual.to(PRECISIONS[precision])
        self.precision = precision
        return self

    def set_tencrop(self, tencrop: bool) -> Backbone:
        """Inference preprocessing as the authors' evaluation: resize the short side to 256/224 of the input size,
        then ten crops (corners, centre and their mirror images), stacked as (10, 3, H, W) per photo; embed_images
        averages the crops' cosines. False restores the single centre crop."""
        if tencrop == (self.preprocess is not self._single_crop):
            return self
        if not tencrop:
            self.preprocess = self._single_crop
            return self
        from torchvision import transforms as T

        single = self._single_crop.transforms
        normalize = next(t for t in single if isinstance(t, T.Normalize))
        per_crop = T.Compose([T.ToTensor(), normalize])
        size = self.image_size
        self.preprocess = T.Compose([
            T.Resize(round(size * 256 / 224), interpolation=T.InterpolationMode.BICUBIC), T.TenCrop(size),
            T.Lambda(lambda crops: torch.stack([per_crop(c.convert("RGB")) for c in crops])),
        ])
        return self

    def set_trainable(self, trainable: bool) -> None:
        for p in self.clip.parameters():
            p.requires_grad_(trainable)
        if not trainable:
            self.clip.eval()

    def train(self, mode: bool = True) -> Backbone:
        # A frozen backbone stays in eval mode (dropout, batch norm) even when the heads train.
        super().train(mode and self.cfg.trainable)
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.precision == "fp32":
            return self.clip.encode_image(pixels)
        return self.clip.encode_image(pixels.to(PRECISIONS[self.precision])).float()

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return _open_clip().get_tokenizer(self.cfg.name)(texts)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens.to(next(self.clip.parameters()).device))

    def fingerprint(self) -> str:
        """Identifies the backbone's weights and preprocessing, for the feature cache key."""
        h = hashlib.sha256()
        h.update(f"{self.cfg.name}|{self.preprocess}".encode())
        if self.cfg.open_clip_config is not None:  # an inline config may differ in settings that carry no weights
            h.update(json.dumps(self.cfg.open_clip_config, sort_keys=True).encode())
        if self.precision != "fp32":  # reduced-precision features are close to fp32 ones, not equal
            h.update(f"precision:{self.precision}".encode())
        pretrained = self.cfg.pretrained
        if pretrained and not _looks_like_path(pretrained) and not self.cfg.trainable:
            h.update(f"tag:{pretrained}".encode())
        else:
            # Local files and random or trained weights: hash the actual tensors, whatever their source.
            for key, tensor in sorted(self.clip.state_dict().items()):
                h.update(key.encode())
                raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # any dtype, bf16 too
                h.update(raw.numpy().tobytes())
        return h.hexdigest()[:24]
