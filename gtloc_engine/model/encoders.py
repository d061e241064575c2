"""The location and time encoders (random Fourier features + MLP branches, summed) and the image adapter."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from gtloc_engine.errors import GtlocError
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


def check_rff_sigmas(b_matrices: list[torch.Tensor], expected: tuple[float, ...], what: str) -> list[float]:
    """Per branch, the standard deviation of its Fourier matrix B (the sigma it was drawn with); GtlocError when
    the branches do not have about the expected sigmas (imported weights with other scales need another config)."""
    estimates = [float(b.float().std()) for b in b_matrices]
    if len(estimates) != len(expected) or any(not (0.8 * s < e < 1.25 * s) for s, e in zip(expected, estimates)):
        raise GtlocError(f"{what} has Fourier scales {[round(e, 3) for e in estimates]}, expected about "
                         f"{list(expected)}; this release is not supported")
    return estimates


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

    def forward(self, v: torch.Tensor, branches: Sequence[int] | None = None) -> torch.Tensor:
        """The sum of every branch's output, or of the `branches` given (by index): the sum over all of them is the
        encoding, so a caller may evaluate each branch where its own scale needs it (regional surfaces)."""
        chosen = [self.branches[i] for i in (range(len(self.branches)) if branches is None else branches)]
        out = chosen[0](v)
        for branch in chosen[1:]:
            out = out + branch(v)
        return out


class LocationEncoder(nn.Module):
    """(N, 2) lat/lon degrees -> (N, embed_dim), through GeoCLIP's scaled Equal Earth projection."""

    def __init__(self, cfg: RFFConfig, embed_dim: int, seed: int = 0):
        super().__init__()
        self.rff = RFFEncoder(2, cfg, embed_dim, seed)

    def forward(self, latlon_deg: torch.Tensor, branches: Sequence[int] | None = None) -> torch.Tensor:
        return self.rff(equal_earth(latlon_deg), branches)


# The authors' unit conversions (src/model/time_encoder.py), as Python floats: the float32 operations below
# follow theirs one for one, so the same local time gives the same encoder input bits.
DAY_TO_MONTH = 1 / (365 / 12)
MINUTE_TO_HOUR = 1 / 60
SECOND_TO_HOUR = MINUTE_TO_HOUR / 60


def month_hour_from_fields(fields: torch.Tensor) -> torch.Tensor:
    """(N, 5) local (month, day, hour, minute, second) -> (N, 2) (month position in [0, 12), hour in [0, 24))."""
    fields = fields.float()  # slices, not torch.chunk, whose outputs torch's lazy backend leaves on the host
    month, day, hour, minute, second = (fields[..., i:i + 1] for i in range(5))
    month_d = (month - 1) + (day - 1) * DAY_TO_MONTH
    hour_d = hour + minute * MINUTE_TO_HOUR + second * SECOND_TO_HOUR
    return torch.cat((month_d, hour_d), dim=-1)


def time_angles(month_hour: torch.Tensor) -> torch.Tensor:
    """(N, 2) month position and hour -> the authors' angles (2 pi m / 12 - pi, 2 pi h / 24 - pi) in [-pi, pi)."""
    month_d, hour_d = month_hour[..., :1], month_hour[..., 1:]
    return torch.cat((2 * math.pi * month_d / 12 - math.pi, 2 * math.pi * hour_d / 24 - math.pi), dim=-1)


class TimeEncoder(nn.Module):
    """Times -> (N, embed_dim): from (N, 2) torus coordinates (theta_year, phi_day) in [0, 1), or from (N, 5) local
    calendar fields (forward_fields, the authors' input). Both go through the same angles."""

    def __init__(self, cfg: RFFConfig, embed_dim: int, time_input: str, seed: int = 1):
        super().__init__()
        self.time_input = time_input
        self.rff = RFFEncoder(2 if time_input == "angles" else 4, cfg, embed_dim, seed)

    def forward(self, torus: torch.Tensor) -> torch.Tensor:
        torus = torus.float()
        return self._encode(time_angles(torch.stack((torus[..., 0] * 12, torus[..., 1] * 24), dim=-1)))

    def forward_fields(self, fields: torch.Tensor) -> torch.Tensor:
        return self._encode(time_angles(month_hour_from_fields(fields)))

    def _encode(self, angles: torch.Tensor) -> torch.Tensor:
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
