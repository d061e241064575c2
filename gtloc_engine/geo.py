"""Geodesy the model and the metrics share: GeoCLIP's scaled Equal Earth projection and haversine distance.

Every array of places here is (..., 2) in (lat_deg, lon_deg) order, as GeoCLIP and EXIF give them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

EARTH_RADIUS_KM = 6371.0
# Equal Earth polynomial coefficients (Savric, Patterson, Jenny 2018) and GeoCLIP's scale to roughly [-1, 1].
EE_A1, EE_A2, EE_A3, EE_A4 = 1.340264, -0.081106, 0.000893, 0.003796
EE_SF = 66.50336
EE_SCALE = EE_SF / 180.0


def equal_earth(latlon_deg: torch.Tensor) -> torch.Tensor:
    """(N, 2) lat/lon degrees -> (N, 2) scaled Equal Earth (x, y), exactly as GeoCLIP's location encoder sees it.

    The float operations follow GeoCLIP's `equal_earth_projection` one for one (same constants, same powers,
    same order): its sigma = 2^8 Fourier branch multiplies the projection by ~2 pi 256 |B|, so a one-ulp
    difference here becomes ~1e-4 in the embedding, and imported GeoCLIP weights must see the same bits.
    """
    lat = torch.deg2rad(latlon_deg[..., 0])
    lon = torch.deg2rad(latlon_deg[..., 1])
    sqrt3 = torch.sqrt(torch.tensor(3.0, dtype=lat.dtype, device=lat.device))
    theta = torch.asin((sqrt3 / 2) * torch.sin(lat))
    denom = 3 * (9 * EE_A4 * theta**8 + 7 * EE_A3 * theta**6 + 3 * EE_A2 * theta**2 + EE_A1)
    x = (2 * sqrt3 * lon * torch.cos(theta)) / denom
    y = EE_A4 * theta**9 + EE_A3 * theta**7 + EE_A2 * theta**3 + EE_A1 * theta
    return (torch.stack((x, y), dim=-1) * EE_SF) / 180


def haversine_km(a_latlon_deg: np.ndarray, b_latlon_deg: np.ndarray) -> np.ndarray:
    """Great-circle distance in km between (..., 2) lat/lon arrays, broadcasting (R = 6371 km)."""
    a = np.radians(np.asarray(a_latlon_deg, dtype=np.float64))
    b = np.radians(np.asarray(b_latlon_deg, dtype=np.float64))
    dlat = b[..., 0] - a[..., 0]
    dlon = b[..., 1] - a[..., 1]
    h = np.sin(dlat / 2) ** 2 + np.cos(a[..., 0]) * np.cos(b[..., 0]) * np.sin(dlon / 2) ** 2
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def validate_latlon(lat_deg: float, lon_deg: float, where: str) -> None:
    """Raise GtlocError naming `where` when a place is not a finite lat in [-90, 90] and lon in [-180, 180]."""
    from gtloc_engine.errors import GtlocError

    if not (math.isfinite(lat_deg) and math.isfinite(lon_deg)) or abs(lat_deg) > 90.0 or abs(lon_deg) > 180.0:
        raise GtlocError(
            f"{where}: place ({lat_deg}, {lon_deg}) is not a valid lat_deg in [-90, 90], lon_deg in [-180, 180]")


def fibonacci_sphere_latlon(n: int) -> np.ndarray:
    """(n, 2) lat/lon degrees spread evenly over the sphere: a gallery when a model ships none of its own."""
    i = np.arange(n, dtype=np.float64) + 0.5
    lat = np.degrees(np.arcsin(1.0 - 2.0 * i / n))
    lon = (np.degrees(np.pi * (1.0 + 5.0**0.5) * i) + 180.0) % 360.0 - 180.0
    return np.stack((lat, lon), axis=-1)
