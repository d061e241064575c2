"""Geodesy the model, the metrics, the rasters and the regions share: GeoCLIP's scaled Equal Earth projection,
haversine distance, and north-up lat/lon grids (cell areas on the sphere, global grids, Surface: mass per cell).

Every array of places here is (..., 2) in (lat_deg, lon_deg) order, as GeoCLIP and EXIF give them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from affine import Affine

from gtloc_engine.errors import GtlocError

EARTH_RADIUS_KM = 6371.0
KM_PER_DEG_LAT = math.pi * EARTH_RADIUS_KM / 180.0  # 111.19 km on the mean sphere
SURFACE_KINDS = ("global", "regional")
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
    if not (math.isfinite(lat_deg) and math.isfinite(lon_deg)) or abs(lat_deg) > 90.0 or abs(lon_deg) > 180.0:
        raise GtlocError(
            f"{where}: place ({lat_deg}, {lon_deg}) is not a valid lat_deg in [-90, 90], lon_deg in [-180, 180]")


def fibonacci_sphere_latlon(n: int) -> np.ndarray:
    """(n, 2) lat/lon degrees spread evenly over the sphere: a gallery when a model ships none of its own."""
    i = np.arange(n, dtype=np.float64) + 0.5
    lat = np.degrees(np.arcsin(1.0 - 2.0 * i / n))
    lon = (np.degrees(np.pi * (1.0 + 5.0**0.5) * i) + 180.0) % 360.0 - 180.0
    return np.stack((lat, lon), axis=-1)


def wrap_lon_deg(lon_deg):
    """Longitude(s) wrapped to [-180, 180)."""
    return (np.asarray(lon_deg, dtype=np.float64) + 180.0) % 360.0 - 180.0


def row_area_sr(north_deg: float, res_deg: float, n_rows: int) -> np.ndarray:
    """(n_rows,) solid angle of one res_deg x res_deg cell in each row, rows from north_deg southwards."""
    edges = np.radians(np.clip(north_deg - np.arange(n_rows + 1) * res_deg, -90.0, 90.0))
    return np.radians(res_deg) * (np.sin(edges[:-1]) - np.sin(edges[1:]))


def grid_rows(res_deg: float, what: str) -> int:
    """Rows of a global grid at res_deg (180 / res_deg); resolutions must tile the globe exactly."""
    rows = 180.0 / res_deg if res_deg > 0 else 0.0
    if rows < 1 or abs(rows - round(rows)) > 1e-6:
        raise GtlocError(f"{what} {res_deg} deg does not tile the globe; use e.g. 1, 0.5, 0.25, 0.1 or 0.05")
    return round(rows)


def global_centres_latlon(res_deg: float) -> np.ndarray:
    """(H * W, 2) lat/lon cell centres of the global grid at res_deg, row-major from the north-west."""
    h, w = round(180.0 / res_deg), round(360.0 / res_deg)
    lat = 90.0 - (np.arange(h) + 0.5) * res_deg
    lon = -180.0 + (np.arange(w) + 0.5) * res_deg
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    return np.stack((la.ravel(), lo.ravel()), axis=-1)


@dataclass
class Surface:
    """Probability mass per cell on a north-up lat/lon grid (EPSG:4326), row 0 at `north_deg`, col 0 at `west_deg`."""

    mass_per_cell: np.ndarray  # (H, W) float32
    west_deg: float
    north_deg: float
    res_deg: float
    kind: str  # 'global' | 'regional'
    model_key: str = ""
    log_norm: float = math.nan  # log of sum over the globe of exp(score) * cell area (sr); shared by regional ones
    tags: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mass_per_cell.shape)

    @property
    def transform(self) -> Affine:
        return Affine.translation(self.west_deg, self.north_deg) @ Affine.scale(self.res_deg, -self.res_deg)

    @property
    def bounds_deg(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in degrees."""
        h, w = self.shape
        return (self.west_deg, self.north_deg - h * self.res_deg, self.west_deg + w * self.res_deg, self.north_deg)

    @property
    def lat_centres_deg(self) -> np.ndarray:
        return self.north_deg - (np.arange(self.shape[0]) + 0.5) * self.res_deg

    @property
    def lon_centres_deg(self) -> np.ndarray:
        return self.west_deg + (np.arange(self.shape[1]) + 0.5) * self.res_deg

    @property
    def cell_area_km2(self) -> np.ndarray:
        """(H, 1) area of each row's cells on the sphere of radius EARTH_RADIUS_KM."""
        return row_area_sr(self.north_deg, self.res_deg, self.shape[0])[:, None] * EARTH_RADIUS_KM**2

    @property
    def density_per_km2(self) -> np.ndarray:
        """(H, W) float32 probability per km2: the quantity cells are ranked by."""
        return (self.mass_per_cell / self.cell_area_km2).astype(np.float32)

    @property
    def total_mass(self) -> float:
        return float(self.mass_per_cell.sum(dtype=np.float64))

    def cell_index(self, lat_deg: float, lon_deg: float) -> tuple[int, int] | None:
        """(row, col) of the cell holding the place (longitudes tried modulo 360), or None outside the surface."""
        h, w = self.shape
        row = math.floor((self.north_deg - lat_deg) / self.res_deg)
        if lat_deg == self.north_deg - h * self.res_deg:
            row = h - 1  # the southern edge belongs to the last row (the south pole of a global grid)
        if not 0 <= row < h:
            return None
        for shift in (0.0, 360.0, -360.0):
            col = math.floor((lon_deg + shift - self.west_deg) / self.res_deg)
            if col == w and abs(lon_deg + shift - (self.west_deg + w * self.res_deg)) < 1e-9:
                col = w - 1  # the eastern edge (+180 on a global grid) belongs to the last column
            if 0 <= col < w:
                return row, col
        return None

    def peak_latlon_deg(self) -> tuple[float, float]:
        """Centre of the densest cell, longitude wrapped to [-180, 180)."""
        row, col = np.unravel_index(int(np.argmax(self.density_per_km2)), self.shape)
        return float(self.lat_centres_deg[row]), float(wrap_lon_deg(self.lon_centres_deg[col]))
