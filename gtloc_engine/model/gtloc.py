"""GTLoc: three encoders into one L2-normalised embedding space, with six learnable logit scales (the heads)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gtloc_engine.model.backbone import Backbone
from gtloc_engine.model.config import LOGIT_HEADS, MAX_LOGIT_SCALE, ModelConfig
from gtloc_engine.model.encoders import ImageAdapter, LocationEncoder, TimeEncoder

# A fused head whose own scale was never learned borrows the scale of the alignment it builds on: the behaviour of
# checkpoints made before the six heads existed, where time given place used the image-time scale.
HEAD_FALLBACK = {"ig2t": "img_time", "gt2i": "img_time", "it2g": "img_gps", "gps_time": None}
# The encoder alignments each head needs trained before its answers mean anything.
HEAD_NEEDS = {"img_gps": ("location",), "img_time": ("time",), "gps_time": ("location", "time"),
              "ig2t": ("location", "time"), "it2g": ("location", "time"), "gt2i": ("location", "time")}


class GTLoc(nn.Module):
    """Image (backbone -> adapter), location and time encoders sharing one space.

    `heads_trained` records which alignments were learned: 'location' (image-place, the img_gps head), 'time'
    (image-time, img_time) and, for the fused heads, whether their own logit scale was trained ('gps_time', 'ig2t',
    'it2g', 'gt2i'); predictions from an untrained alignment are refused rather than printed as noise.
    `gallery_latlon_deg` is the model's own GPS gallery (e.g. its training places), used for location posteriors;
    None means "use a generic one".
    """

    def __init__(self, cfg: ModelConfig, *, load_backbone_weights: bool = True, seed: int = 0):
        super().__init__()
        self.cfg = cfg.validate()
        self.backbone = Backbone(cfg.backbone, load_weights=load_backbone_weights, seed=seed)
        feat = self.backbone.feature_dim
        self.adapter = ImageAdapter(feat, cfg.adapter_hidden_dim or feat, cfg.embed_dim, cfg.feature_norm)
        self.location_encoder = LocationEncoder(cfg.location, cfg.embed_dim, seed=seed)
        self.time_encoder = TimeEncoder(cfg.time, cfg.embed_dim, cfg.time_input, seed=seed + 1)
        self.logit_scales = nn.ParameterDict(
            {head: nn.Parameter(torch.tensor(float(cfg.logit_scale_init))) for head in LOGIT_HEADS})
        self.heads_trained: dict[str, bool] = {"location": False, "time": False, **dict.fromkeys(HEAD_FALLBACK, False)}
        self.gallery_latlon_deg: np.ndarray | None = None

    @property
    def device(self) -> torch.device:
        """Where the model computes (gtloc_engine/device.py): its encoders move their inputs here."""
        return self.logit_scales["img_gps"].device

    @property
    def backbone_in_checkpoint(self) -> bool:
        """Backbone weights travel in the checkpoint unless they are a pretrained source used frozen."""
        b = self.cfg.backbone
        return b.trainable or b.pretrained is None

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Backbone features (N, feature_dim); no graph is kept when the backbone is frozen."""
        pixels = pixels.to(self.device)
        if self.cfg.backbone.trainable and torch.is_grad_enabled():
            return self.backbone(pixels)
        with torch.no_grad():
            return self.backbone(pixels)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.adapter(features.to(self.device)), dim=-1)

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) pixels -> unit embeddings; (N, crops, 3, H, W) (ten-crop) -> the mean of the crops' unit
        embeddings, not renormalised: its dot product with a unit key is the crops' mean cosine, the authors'
        ten-crop score."""
        if pixels.ndim == 5:
            n, crops = pixels.shape[:2]
            emb = self.embed_features(self.image_features(pixels.flatten(0, 1)))
            return emb.reshape(n, crops, -1).mean(dim=1)
        return self.embed_features(self.image_features(pixels))

    def embed_locations(self, latlon_deg: torch.Tensor) -> torch.Tensor:
        return self.unit_location_embeddings(self.location_branches(latlon_deg))

    def location_branches(self, latlon_deg: torch.Tensor, branches: Sequence[int] | None = None) -> torch.Tensor:
        """The sum of some (None: all) location-encoder branches' outputs, not normalised, on the model's device."""
        return self.location_encoder(latlon_deg.to(self.device), branches)

    @staticmethod
    def unit_location_embeddings(branch_sum: torch.Tensor) -> torch.Tensor:
        """embed_locations from the sum of every branch's output (LocationEncoder(..., branches=...) in parts)."""
        return F.normalize(branch_sum, dim=-1)

    def embed_times(self, torus: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.time_encoder(torus.to(self.device)), dim=-1)

    def embed_time_fields(self, fields: torch.Tensor) -> torch.Tensor:
        """(N, 5) local (month, day, hour, minute, second) -> unit time embeddings, exactly the authors' input."""
        return F.normalize(self.time_encoder.forward_fields(fields.to(self.device)), dim=-1)

    @staticmethod
    def fuse(a_emb: torch.Tensor, b_emb: torch.Tensor) -> torch.Tensor:
        """A two-modality query (place + time, image + place, image + time): the sum of the two unit vectors,
        renormalised (shapes broadcast). The paper's fusion for geo-temporal retrieval, used by every fused head."""
        return F.normalize(a_emb + b_emb, dim=-1)

    def logit_scale(self, head: str) -> torch.Tensor:
        """exp(logit scale) of one of the six heads, clamped as in training (one place for the clamp).

        A fused head whose scale was never trained uses its fallback's (HEAD_FALLBACK); gps_time has none.
        """
        if head not in self.logit_scales:
            raise KeyError(f"unknown head {head!r}; heads are {LOGIT_HEADS}")
        fallback = HEAD_FALLBACK.get(head)
        if fallback is not None and not self.heads_trained.get(head):
            head = fallback
        return self.logit_scales[head].exp().clamp(max=MAX_LOGIT_SCALE)

    def head_ready(self, head: str) -> bool:
        """Whether the encoder alignments a head's query relies on were trained."""
        return all(self.heads_trained.get(need) for need in HEAD_NEEDS[head])

    def head_parameters(self) -> list[nn.Parameter]:
        """Everything trainable except the backbone (which has its own learning rate when it trains)."""
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]
