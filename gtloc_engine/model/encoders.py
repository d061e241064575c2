"""The location and time encoders (random Fourier features + MLP branches, summed) and the image adapter."""

from __future__ import annotations

import math

import torch
from torch import nn

from gtloc_engine.geo import equal_earth
from gtloc_engine.model.config import RFFConfig


class GaussianFourierFeatures(nn.Module):
    """gamma(v) = [cos(2 pi B v), sin(2 pi B v)] with a fixed B ~ N(0, sigma^2), kept in the checkpoint."""

    def __init__(self, sigma: float, input_dim: int, rff_dim: int, generator: torch.Generator | None = None):
        super().__init__()
        # A buffer, not a parameter: B is never trained, but must travel with the weights to reproduce embeddings.
        self.register_buffer("b", torch.randn(rff_dim, input_dim, generator=generator) * sigma)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        vp = 2.0 * math.pi * v @ self.b.T
        return torch.cat((torch.cos(vp), torch.sin(vp)), dim=-1)


class RFFBranch(nn.Module):
    """One sigma: Fourier features -> MLP (ReLU) -> linear head to the embedding size (GeoCLIP's capsule)."""

    def __init__(self, sigma: float, input_dim: int, cfg: RFFConfig, embed_dim: int, generator: torch.Generator | None):
        super().__init__()
        layers: list[nn.Module] = [GaussianFourierFeatures(sigma, input_dim, cfg.rff_dim, generator)]
        width = 2 * cfg.rff_dim
        for _ in range(cfg.hidden_layers):
            layers += [nn.Linear(width, cfg.hidden_dim), nn.ReLU()]
            width = cfg.hidden_dim
        self.capsule = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(width, embed_dim))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.head(self.capsule(v))


class RFFEncoder(nn.Module):
    """Sum of RFF branches over several sigmas: coarse and fine scales in one embedding."""

    def __init__(self, input_dim: int, cfg: RFFConfig, embed_dim: int, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.branches = nn.ModuleList(RFFBranch(s, input_dim, cfg, embed_dim, generator) for s in cfg.sigmas)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](v)
        for branch in self.branches[1:]:
            out = out + branch(v)
        return out


class LocationEncoder(nn.Module):
    """(N, 2) lat/lon degrees -> (N, embed_dim), through GeoCLIP's scaled Equal Earth projection."""

    def __init__(self, cfg: RFFConfig, embed_dim: int, seed: int = 0):
        super().__init__()
        self.rff = RFFEncoder(2, cfg, embed_dim, seed)

    def forward(self, latlon_deg: torch.Tensor) -> torch.Tensor:
        return self.rff(equal_earth(latlon_deg))


class TimeEncoder(nn.Module):
    """(N, 2) torus coordinates (theta_year, phi_day) in [0, 1) -> (N, embed_dim)."""

    def __init__(self, cfg: RFFConfig, embed_dim: int, time_input: str, seed: int = 1):
        super().__init__()
        self.time_input = time_input
        self.rff = RFFEncoder(2 if time_input == "angles" else 4, cfg, embed_dim, seed)

    def forward(self, torus: torch.Tensor) -> torch.Tensor:
        angles = 2.0 * math.pi * torus - math.pi
        if self.time_input == "circle":
            angles = torch.cat((torch.cos(angles), torch.sin(angles)), dim=-1)
        return self.rff(angles)


class ImageAdapter(nn.Module):
    """Trainable head on backbone features: Linear(d, h) - ReLU - Linear(h, embed_dim), as GeoCLIP's MLP.

    feature_norm 'batchnorm' standardises each feature over the training photos first (BatchNorm1d without affine
    parameters; running statistics at inference). A randomly initialised backbone gives features that are almost
    the same vector for every photo (cosine ~0.9997 on SunWorld): without standardisation the adapter sees a
    near-constant input and training collapses to uniform similarities. CLIP features need none (GeoCLIP uses none).
    """

    def __init__(self, feature_dim: int, hidden_dim: int, embed_dim: int, feature_norm: str = "none"):
        super().__init__()
        # eps far below the ~1e-7 feature variance of a random backbone, so it does not swamp it
        batchnorm = feature_norm == "batchnorm"
        self.norm = nn.BatchNorm1d(feature_dim, eps=1e-8, affine=False) if batchnorm else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, embed_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(features))
