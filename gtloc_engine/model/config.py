"""Model configuration as data: dataclasses that round-trip through JSON and are validated once, at the boundary."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from gtloc_engine.errors import GtlocError

TIME_INPUTS = ("angles", "circle")
# The six similarity heads of the authors' model, each a learnable logit scale (temperature) of one query:
# image-place, image-time, place-time, and the fused queries image+place -> time (ig2t), image+time -> place (it2g)
# and place+time -> image (gt2i). Order = the authors' parameter order.
LOGIT_HEADS = ("img_gps", "img_time", "gps_time", "ig2t", "it2g", "gt2i")
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp on exp(logit scale)
FEATURE_NORMS = ("none", "batchnorm")


@dataclass
class BackboneConfig:
    """Which open_clip image backbone to use and whether it trains.

    `pretrained` is an open_clip tag ('openai', ...), a path to a local weights file, or None for random init.
    `open_clip_config` is an open_clip model config carried as data (e.g. in a checkpoint, see model/hf_clip.py);
    when set, `name` is registered with it instead of looked up among open_clip's and gtloc's configs.
    """

    name: str = "ViT-L-14"
    pretrained: str | None = "openai"
    trainable: bool = False
    open_clip_config: dict | None = None
    # False when the weights came without a text tower (a vision-only import): text queries are refused.
    text_tower: bool = True


@dataclass
class RFFConfig:
    """Random-Fourier-feature branches (one per sigma) whose MLP outputs are summed, as in GeoCLIP."""

    sigmas: list[float] = field(default_factory=lambda: [2.0**0, 2.0**4, 2.0**8])
    rff_dim: int = 256  # B is (rff_dim, input_dim); features are [cos, sin] -> 2 * rff_dim
    hidden_dim: int = 1024
    hidden_layers: int = 3


@dataclass
class ModelConfig:
    """Sizes of the three encoders and of the shared embedding space."""

    embed_dim: int = 512
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    adapter_hidden_dim: int | None = None  # None: the backbone's own feature size (768 for ViT-L/14), as GeoCLIP
    location: RFFConfig = field(default_factory=RFFConfig)
    time: RFFConfig = field(default_factory=RFFConfig)
    # 'angles': (2 pi theta - pi, 2 pi phi - pi) as the authors' code; 'circle': (cos, sin) of both angles,
    # which makes the time encoder exactly periodic (Dec 31 and Jan 1 map to the same input neighbourhood).
    time_input: str = "angles"
    logit_scale_init: float = math.log(1.0 / 0.07)
    # 'batchnorm' standardises backbone features before the adapter (needed for random / from-scratch backbones,
    # see model/encoders.py ImageAdapter); 'none' feeds them as they are (CLIP, GeoCLIP).
    feature_norm: str = "none"

    def validate(self) -> "ModelConfig":
        if self.embed_dim <= 0:
            raise GtlocError(f"model config: embed_dim {self.embed_dim} must be positive")
        if self.time_input not in TIME_INPUTS:
            raise GtlocError(f"model config: time_input {self.time_input!r} must be one of {TIME_INPUTS}")
        for name, rff in (("location", self.location), ("time", self.time)):
            if not rff.sigmas or any(not (s > 0) for s in rff.sigmas):
                raise GtlocError(
                    f"model config: {name}.sigmas {rff.sigmas} must be a non-empty list of positive numbers")
            if rff.rff_dim <= 0 or rff.hidden_dim <= 0 or rff.hidden_layers < 1:
                raise GtlocError(f"model config: {name} sizes {rff} must be positive (hidden_layers >= 1)")
        if self.feature_norm not in FEATURE_NORMS:
            raise GtlocError(f"model config: feature_norm {self.feature_norm!r} must be one of {FEATURE_NORMS}")
        if not self.backbone.name:
            raise GtlocError("model config: backbone.name is empty")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        try:
            data = dict(data)
            data["backbone"] = BackboneConfig(**data.get("backbone", {}))
            data["location"] = RFFConfig(**data.get("location", {}))
            data["time"] = RFFConfig(**data.get("time", {}))
            return cls(**data).validate()
        except TypeError as exc:
            raise GtlocError(f"model config has an unknown or missing field ({exc})") from None


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's model: frozen CLIP ViT-L/14 (OpenAI), GeoCLIP-sized location and time encoders.
    "gtloc-vitl14": {},
    # Seconds-fast model for tests: a random tiny ViT, small MLPs.
    "tiny": {
        "embed_dim": 64,
        "feature_norm": "batchnorm",
        "backbone": {"name": "gtloc-tiny-vit", "pretrained": None, "trainable": False},
        "location": {"rff_dim": 64, "hidden_dim": 128, "hidden_layers": 2},
        "time": {"rff_dim": 64, "hidden_dim": 128, "hidden_layers": 2},
    },
    # The offline demo and synthetic benchmarks: a small CNN trained from scratch with the heads.
    "small": {
        "embed_dim": 128,
        "feature_norm": "batchnorm",
        "backbone": {"name": "gtloc-small-resnet", "pretrained": None, "trainable": True},
        "location": {"rff_dim": 128, "hidden_dim": 256, "hidden_layers": 2},
        "time": {"rff_dim": 128, "hidden_dim": 256, "hidden_layers": 2},
    },
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named starting configuration, with top-level fields overridden."""
    if name not in PRESETS:
        raise GtlocError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    data = {**PRESETS[name], **overrides}
    return ModelConfig.from_dict(data)
