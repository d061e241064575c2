"""GTLoc: three encoders into one L2-normalised embedding space, with learnable logit scales."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gtloc_engine.model.backbone import Backbone
from gtloc_engine.model.config import ModelConfig
from gtloc_engine.model.encoders import ImageAdapter, LocationEncoder, TimeEncoder


class GTLoc(nn.Module):
    """Image (backbone -> adapter), location and time encoders sharing one space.

    `heads_trained` records which alignments were learned ('location', 'time'), so predictions from an untrained
    head are refused rather than printed as noise. `gallery_latlon_deg` is the model's own GPS gallery (e.g. its
    training places), used for location posteriors; None means "use a generic one".
    """

    def __init__(self, cfg: ModelConfig, *, load_backbone_weights: bool = True, seed: int = 0):
        super().__init__()
        self.cfg = cfg.validate()
        self.backbone = Backbone(cfg.backbone, load_weights=load_backbone_weights, seed=seed)
        feat = self.backbone.feature_dim
        self.adapter = ImageAdapter(feat, cfg.adapter_hidden_dim or feat, cfg.embed_dim, cfg.feature_norm)
        self.location_encoder = LocationEncoder(cfg.location, cfg.embed_dim, seed=seed)
        self.time_encoder = TimeEncoder(cfg.time, cfg.embed_dim, cfg.time_input, seed=seed + 1)
        self.logit_scale_loc = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))
        self.logit_scale_time = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))
        self.heads_trained: dict[str, bool] = {"location": False, "time": False}
        self.gallery_latlon_deg: np.ndarray | None = None

    @property
    def backbone_in_checkpoint(self) -> bool:
        """Backbone weights travel in the checkpoint unless they are a pretrained source used frozen."""
        b = self.cfg.backbone
        return b.trainable or b.pretrained is None

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Backbone features (N, feature_dim); no graph is kept when the backbone is frozen."""
        if self.cfg.backbone.trainable and torch.is_grad_enabled():
            return self.backbone(pixels)
        with torch.no_grad():
            return self.backbone(pixels)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.adapter(features), dim=-1)

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.image_features(pixels))

    def embed_locations(self, latlon_deg: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.location_encoder(latlon_deg), dim=-1)

    def embed_times(self, torus: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.time_encoder(torus), dim=-1)

    @staticmethod
    def fuse_place_time(place_emb: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        """The paper's place + time query: the sum of the two unit vectors, renormalised (shapes broadcast)."""
        return F.normalize(place_emb + time_emb, dim=-1)

    def head_parameters(self) -> list[nn.Parameter]:
        """Everything trainable except the backbone (which has its own learning rate when it trains)."""
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]
