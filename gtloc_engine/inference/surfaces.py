"""Likelihood surfaces: the location posterior of one photo as probability mass per lat/lon cell.

Normalisation. The model scores a place x as s(x) = logit_scale(img_gps) * cos(image_emb, location_emb(x)). exp(s) is
read as a density per unit area, so a cell's mass is exp(s(cell centre)) x (the cell's area on the sphere),
normalised so that the cells of the whole globe sum to 1. Cells are regular in degrees (EPSG:4326), so they
shrink towards the poles: area = R^2 * dlon * (sin(lat_north) - sin(lat_south)). `log_norm` is the log of that
global sum in steradians; a regional surface uses the same one, so its masses are the global posterior's mass in
its cells (they sum to less than 1). Cells are ranked by density (mass / area), never by mass, so small
high-latitude cells are not penalised (credible regions, credible_level, modes).

Cost per photo (everything after the image embedding); the location encoder runs only where stated:
- Global surface: a cached coarse grid (default 0.5 deg, 259,200 cells; 530 MB float32 at D=512, computed
  once per model by constants.py) gives scores by one matvec; they are upsampled bicubically (longitudes wrap,
  latitudes clamp at the poles) to the requested resolution (default 0.25, down to 0.05 deg); then the
  densest coarse cells, within a budget of `refine_points` encoder evaluations, are re-scored exactly at the
  fine cell centres. A resolution coarser than the cache's (1, 2 deg: a multiple of it) sums blocks of cached
  cells' masses, so every resolution is read from the same cached grid. A 0.25 deg cache (1.04M cells) would cost
  2.1 GB on disk and ~0.4 s of memory traffic per photo at D=512, for detail the regional surfaces give better.
- Claim check (`score_place`): the place's credible level and evidence are computed on the cached grid itself
  (`grid_surface`: exact scores at every cell centre, no interpolation), with the location encoder evaluated at the
  place exactly and normalised by the grid's log_norm: density_per_km2 = exp(score - log_norm) / R^2, comparable
  to every cell's. The level is then the mass of the grid cells denser than the place, which does not depend on
  the requested resolution at all (measured before: the claimed point's own 1 deg vs 0.25 deg cell gave levels
  0.996 vs 0.618 for one trained tiny-model photo). Measured against exact scores on a 0.1 deg grid, the cached
  0.5 deg grid's levels are within 0.01 for the tiny test models (the bicubic 0.25 deg surface, by contrast, is
  off by up to 0.2 for mid-range levels: interpolation smooths the scores the exact claim is compared with).
  One matvec over the cache per photo with a place claim, none when the photo's global surface was just drawn
  (its cached-grid scores are kept for the last batch of queries).
- Regional surfaces (~1 km cells): one window per mode, centred on the mode's cell, `regional_half_km` (50 km)
  each way, or 1.5 global cells if that is more (so that the window holds the mode's cell and its neighbours,
  where the continuous peak lies): 2 * 50 + 1 = 101 rows of cell_km / 111.19 deg at the default 0.25 deg, and
  as many columns as cover the same km at the mode's latitude (at most 4x the rows, near the poles). Rows past
  +-90 deg are clipped. Windows are kept
  contiguous across the antimeridian (east may exceed 180 or west fall below -180; GIS software draws them
  there) and the encoder sees wrapped longitudes. The encoder is evaluated on a lattice and the scores are
  interpolated bicubically to the cells; the lattice takes `samples_per_period` (4) samples per shortest Fourier
  period (1 / the largest row norm of B, in Equal Earth units: ~14 x 19 km at the equator for GeoCLIP's sigma
  2^8) along each axis, converted to km through the local Jacobian of the projection (denser at high latitudes,
  where Equal Earth stretches longitudes). The encoder is a sum of branches, one per sigma, so each coarser branch
  runs on a lattice of its own period (`branch_samples_per_period`, 32: GeoCLIP's sigma 2^4 branch on 11 x 13
  points a window at 48 N, against 24 x 27 for sigma 2^8; sigma 2^0 on 4 x 4) and its 512-d outputs are
  interpolated to the window's lattice before the sum is normalised (not across the antimeridian, where Equal
  Earth's x jumps). The finest branch is not
  band-limited at its period: its ReLUs put structure below the lattice's spacing, and with GeoCLIP's logit scale
  (39.7) that is large. So the `regional_refine_cells` (256) highest-scoring cells of each window are then scored
  exactly: the finest branch through the encoder, the coarser ones interpolated from their own lattices (within
  0.01 of the full encoder's score, tested). Measured against every cell through the encoder (GeoCLIP's released
  encoder, 16 noisy place queries, 48 windows of 1 km cells at the default 0.25 deg; bench/bench_regional.py): the
  lattice alone was 15% off in L1 of the mass (median; 97% at worst, a window's mass up to 92% off, the top cell
  more than a cell off in 10 of 48 windows); with the 256 exact cells, 8.3% (14% at worst, each window's mass
  within 1.7%, the top cell within one), in 0.17 s a photo for 3 windows instead of 0.22.
  `regional_sample_km <= cell_km` evaluates every cell (6.3 s a photo for GeoCLIP on 2 CPU cores).
- Modes (`find_candidates`): greedy non-maximum suppression on density: the densest cell, then the densest cell
  farther than 2 * radius_km from every chosen one, and so on. A candidate's probability is the mass within
  radius_km of it (discs do not overlap, so probabilities sum to at most 1).

Public surface:
    PLACE_HEADS, SPHERE_AREA_KM2
    SurfaceConfig        how surfaces are computed (data)
    SurfaceMaker         global_surface(s), grid_surface, regional_surfaces, scores_at, score_place
    PlaceScore           a place's credible level, density, evidence against the uniform prior, region area
    Candidate            a mode: rank, place, probability within radius_km
    find_candidates      top-k modes of a surface
    credible_level       mass of the cells denser than a place (its cell's density or an exact one)
    credible_area_km2    area of the smallest credible region of a given mass
    upsample_scores, branch_fourier_periods, equal_earth_units_per_km
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gtloc_engine.errors import GtlocError
from gtloc_engine.geo import (
    EARTH_RADIUS_KM, KM_PER_DEG_LAT, Surface, equal_earth, global_centres_latlon, grid_rows, haversine_km, row_area_sr,
    wrap_lon_deg,
)
from gtloc_engine.inference.constants import ENCODE_CHUNK, cached_location_embeddings, model_key
from gtloc_engine.device import host, on_device
from gtloc_engine.model.gtloc import GTLoc

PLACE_HEADS = ("img_gps", "it2g")  # the heads whose keys are places: a surface can be drawn for either
SPHERE_AREA_KM2 = 4.0 * math.pi * EARTH_RADIUS_KM**2  # 510.1 million km2: the uniform prior's support


@dataclass
class SurfaceConfig:
    """How surfaces are computed; every field trades speed against detail (see the module docstring)."""

    coarse_res_deg: float = 0.5  # cached grid; must be a multiple of the global resolution
    refine_points: int = 512  # exact encoder evaluations per photo on the global grid (0: interpolation only)
    regional_half_km: float = 50.0  # regional window: this far each way from the mode
    samples_per_period: float = 4.0  # regional lattice: encoder evaluations per shortest Fourier period
    regional_sample_km: float | None = None  # fixed lattice spacing instead (<= cell_km: every cell exactly)
    branch_lattices: bool = True  # regional: each coarser Fourier branch on a lattice for its own period
    branch_samples_per_period: float = 32.0  # that lattice's evaluations per the branch's shortest period
    regional_refine_cells: int = 256  # regional: exact encoder evaluations at each window's densest cells
    candidate_radius_km: float = 100.0  # a candidate's probability is the mass within this radius

    def validate(self) -> SurfaceConfig:
        if not (0 < self.coarse_res_deg <= 10) or self.refine_points < 0 or self.regional_half_km <= 0 \
                or self.candidate_radius_km <= 0 or self.samples_per_period <= 0 \
                or self.branch_samples_per_period <= 0 or self.regional_refine_cells < 0 \
                or (self.regional_sample_km is not None and self.regional_sample_km <= 0):
            raise GtlocError(f"surface config {self} has a non-positive size; use positive resolutions and radii")
        return self


@dataclass(frozen=True)
class PlaceScore:
    """How a place fares in a photo's location posterior, computed on the cached grid (SurfaceMaker.score_place).

    level: mass of the grid cells denser than the place (its credible level); density_per_km2: the posterior
    density at the place itself; evidence: that density over the uniform prior's (1 / the sphere's area), i.e.
    p(place | image) / p(place), the likelihood ratio of the place against a place drawn uniformly on the globe;
    region_area_km2: area of the smallest region_level credible region; res_deg: the grid's cell size."""

    level: float
    density_per_km2: float
    evidence: float
    region_level: float
    region_area_km2: float
    res_deg: float


@dataclass
class Candidate:
    """A mode of the posterior: rank (1 = best), cell centre, and the mass within radius_km of it."""

    rank: int
    lat_deg: float
    lon_deg: float
    probability: float
    radius_km: float

    def to_json(self) -> dict:
        return {"rank": self.rank, "lat_deg": round(self.lat_deg, 6), "lon_deg": round(self.lon_deg, 6),
                "probability": self.probability, "radius_km": self.radius_km}


def upsample_scores(coarse: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic upsampling of a global (H, W) field by an integer factor, wrapping in longitude, clamped at the poles
    (float32, on the field's device)."""
    coarse = coarse.float()
    if factor == 1:
        return coarse
    pad = 2  # bicubic reaches two samples each way
    padded = torch.cat((coarse[:, -pad:], coarse, coarse[:, :pad]), dim=1)
    padded = torch.cat((padded[:1].expand(pad, -1), padded, padded[-1:].expand(pad, -1)), dim=0)
    up = F.interpolate(padded[None, None], scale_factor=factor, mode="bicubic", align_corners=False)[0, 0]
    return up[pad * factor:-pad * factor, pad * factor:-pad * factor]


def branch_fourier_periods(model: GTLoc) -> list[float]:
    """Per branch of the location encoder, the shortest period of its Fourier features (1 / the largest row norm of
    its B), in the encoder's (scaled Equal Earth) input units."""
    return [1.0 / float(branch.capsule[0].b.norm(dim=1).max()) for branch in model.location_encoder.rff.branches]


def equal_earth_units_per_km(lat_deg: float, lon_deg: float) -> tuple[float, float]:
    """How far the encoder's input moves per km north and per km east at a place (finite differences)."""
    d_deg = 1e-3
    pts = torch.tensor([[lat_deg, lon_deg], [lat_deg + d_deg, lon_deg], [lat_deg, lon_deg + d_deg]],
                       dtype=torch.float64)
    pts[:, 0].clamp_(-90.0 + d_deg, 90.0 - d_deg)
    ee = equal_earth(pts)
    km_east = d_deg * KM_PER_DEG_LAT * max(math.cos(math.radians(lat_deg)), 1e-3)
    return float((ee[1] - ee[0]).norm()) / (d_deg * KM_PER_DEG_LAT), float((ee[2] - ee[0]).norm()) / km_east


def find_candidates(surface: Surface, k: int = 5, *, radius_km: float = 100.0) -> list[Candidate]:
    """Up to k modes by density, at least 2 * radius_km apart, each with the mass within radius_km."""
    density = surface.density_per_km2.ravel()
    n_pool = min(density.size, max(20_000, 50 * k))
    pool = np.argpartition(-density, n_pool - 1)[:n_pool] if n_pool < density.size else np.arange(density.size)
    pool = pool[np.argsort(-density[pool], kind="stable")]
    lat_c, lon_c = surface.lat_centres_deg, surface.lon_centres_deg
    rows, cols = np.unravel_index(pool, surface.shape)
    pool_latlon = np.stack((lat_c[rows], lon_c[cols]), axis=-1)
    alive = np.ones(len(pool), bool)
    out: list[Candidate] = []
    while len(out) < k and alive.any():
        i = int(np.argmax(alive))
        centre = pool_latlon[i]
        alive &= haversine_km(pool_latlon, centre) > 2.0 * radius_km
        # Only the rows within radius_km of the centre can hold cells of its disc.
        band = np.abs(lat_c - centre[0]) <= radius_km / KM_PER_DEG_LAT + surface.res_deg
        la, lo = np.meshgrid(lat_c[band], lon_c, indexing="ij")
        in_disc = haversine_km(np.stack((la, lo), axis=-1), centre) <= radius_km
        prob = float(surface.mass_per_cell[band][in_disc].sum(dtype=np.float64))
        out.append(Candidate(len(out) + 1, float(centre[0]), float(wrap_lon_deg(centre[1])), prob, radius_km))
    return out


def credible_level(surface: Surface, lat_deg: float, lon_deg: float, *, density_per_km2: float | None = None
                   ) -> float:
    """Mass of the cells denser than the place: the mass of the smallest credible region that contains it (the
    place is inside the 90% region iff this is < 0.9). The place's density is `density_per_km2` where the caller
    evaluated it exactly (SurfaceMaker.score_place), else its cell's. 1.0 for a place outside the surface."""
    cell = surface.cell_index(lat_deg, lon_deg)
    if cell is None:
        return 1.0
    density = surface.density_per_km2
    threshold = density[cell] if density_per_km2 is None else np.float32(density_per_km2)
    return float(surface.mass_per_cell[density > threshold].sum(dtype=np.float64))


def credible_area_km2(surface: Surface, level: float) -> float:
    """Area of the smallest credible region of mass `level`: the densest cells, taken until their mass reaches it
    (the cells whose credible level is below `level`)."""
    density = surface.density_per_km2.ravel()
    order = np.argsort(-density, kind="stable")
    mass_before = np.cumsum(surface.mass_per_cell.ravel()[order], dtype=np.float64)
    mass_before -= surface.mass_per_cell.ravel()[order]
    area = np.broadcast_to(surface.cell_area_km2, surface.shape).ravel()[order]
    return float(area[mass_before < level].sum(dtype=np.float64))


@dataclass(frozen=True)
class _RegionalWindow:
    """A regional surface's cells (shape, north-west corner, cell size) and the lattice its encoder scores are taken
    on (lattice_latlon_deg: lattice_shape points, row-major)."""

    lattice_latlon_deg: np.ndarray
    lattice_shape: tuple[int, int]
    shape: tuple[int, int]
    west_deg: float
    north_deg: float
    res_deg: float
    # (branch, points, shape) per Fourier branch evaluated on a coarser lattice of its own, spanning the same
    # corners; its outputs are interpolated to lattice_shape. The other branches run on the lattice itself.
    branch_lattices: tuple[tuple[int, np.ndarray, tuple[int, int]], ...] = ()


def _cubic_if(rows: int, cols: int) -> str:
    """Bicubic interpolation where a lattice has the 4 x 4 points it needs, else bilinear."""
    return "bicubic" if min(rows, cols) >= 4 else "bilinear"


def _by_own_branches(windows: list[_RegionalWindow], only=None) -> dict[tuple[int, ...], list[int]]:
    """Window indices (those in `only`, if given) grouped by which branches run on lattices of their own: each
    group's other branches go through the encoder in one call."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, w in enumerate(windows):
        if only is None or k in only:
            groups.setdefault(tuple(b for b, _, _ in w.branch_lattices), []).append(k)
    return groups


def _row_slices(tensor: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """torch.split(tensor, sizes) as plain slices: on torch's lazy backend (the tests' second device) split's
    outputs come back on the host after an eager fallback (torch 2.14), where slices stay on the device."""
    ends = np.cumsum(sizes)
    return [tensor[end - size:end] for size, end in zip(sizes, ends.tolist())]


def _normalised(log_mass: torch.Tensor, west_deg: float, north_deg: float, res_deg: float, model_key: str) -> Surface:
    """A global Surface from unnormalised float64 log masses (score + log cell area), normalised on their device:
    masses sum to 1, log_norm kept."""
    log_norm = float(torch.logsumexp(log_mass.ravel(), dim=0))
    mass = host(torch.exp(log_mass - log_norm).float())
    return Surface(mass, west_deg, north_deg, res_deg, "global", model_key, log_norm)


class SurfaceMaker:
    """Builds global and regional surfaces for image embeddings of one model; grid embeddings are model constants."""

    def __init__(self, model: GTLoc, *, global_res_deg: float = 0.25, cache_dir=None,
                 config: SurfaceConfig | None = None):
        self.model = model.eval()
        self.device = model.device  # the encoder, grid matmul, upsampling, normalisation (device.py)
        self.config = (config or SurfaceConfig()).validate()
        fine_rows = grid_rows(global_res_deg, "global resolution")
        coarse_res_deg = self.config.coarse_res_deg
        coarse_rows = grid_rows(coarse_res_deg, "cached grid resolution")
        if fine_rows % coarse_rows and coarse_rows % fine_rows:
            raise GtlocError(f"global resolution {global_res_deg} deg must divide the cached grid's "
                             f"{coarse_res_deg:g} deg or be a multiple of it; use e.g. 0.05, 0.1, 0.25, 0.5, 1 or 2")
        self.global_res_deg = global_res_deg
        self.coarse_res_deg = coarse_res_deg
        self.factor = max(1, fine_rows // coarse_rows)  # > 1: upsampled (and refined) from the cached grid
        self.block = max(1, coarse_rows // fine_rows)  # > 1: blocks of cached cells summed into one global cell
        self.model_key = model_key(model)
        # Per head: img_gps scores an image against places; it2g a fused image + time query (where given when).
        self.scales = {head: float(model.logit_scale(head).detach()) for head in PLACE_HEADS}
        self.coarse_shape = (coarse_rows, 2 * coarse_rows)
        self.coarse_emb = cached_location_embeddings(model, global_centres_latlon(coarse_res_deg),
                                                     name=f"grid-{coarse_res_deg:g}deg", cache_dir=cache_dir)
        # On the CPU the memory-mapped grid is read in place (shared between processes through the page cache);
        # on another device it is copied there once (through a writable host copy: torch refuses read-only memory).
        self._coarse_emb_on_device = None if self.device.type == "cpu" else on_device(np.array(self.coarse_emb),
                                                                                     self.device)
        self.coarse_row_log_area = on_device(np.log(row_area_sr(90.0, coarse_res_deg, coarse_rows)), self.device,
                                             torch.float64)
        self.fine_row_log_area = on_device(np.log(row_area_sr(90.0, global_res_deg, fine_rows)), self.device,
                                           torch.float64)
        self.branch_periods = branch_fourier_periods(model)
        self.fourier_period = min(self.branch_periods)
        # The continuous peak near a mode lies in the mode's global cell or a neighbour: cover 1.5 cells each way.
        self.regional_half_km = max(self.config.regional_half_km, 1.5 * global_res_deg * KM_PER_DEG_LAT)
        # The cached grid's scores of the last global_surfaces batch, per (head, query bytes): the claim check
        # (grid_surface) of the same photo reads them instead of a second pass over the 530 MB grid.
        self._coarse_scores: dict[tuple[str, bytes], torch.Tensor] = {}

    def _query(self, image_emb: np.ndarray) -> np.ndarray:
        q = np.asarray(image_emb, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.model.cfg.embed_dim or not np.all(np.isfinite(q)):
            raise GtlocError(f"image embedding has shape {q.shape} or non-finite values; expected "
                             f"({self.model.cfg.embed_dim},) from the same model")
        return q / max(float(np.linalg.norm(q)), 1e-12)

    def _query_on_device(self, image_emb: np.ndarray) -> torch.Tensor:
        return on_device(self._query(image_emb), self.device)

    def scores_at(self, image_emb: np.ndarray, latlon_deg: np.ndarray, head: str = "img_gps") -> np.ndarray:
        """(N,) exact scores (logit scale x cosine) at places, running the location encoder (longitudes wrapped)."""
        return host(self._scores_at(self._query_on_device(image_emb), latlon_deg, head))

    @torch.no_grad()
    def _scores_at(self, q: torch.Tensor, latlon_deg: np.ndarray, head: str) -> torch.Tensor:
        """scores_at for a unit query on the device; the scores stay there."""
        out = [self.model.unit_location_embeddings(chunk) @ q for chunk in self._branch_sums(latlon_deg, None)]
        return self.scales[head] * torch.cat(out) if out else torch.zeros(0, device=self.device)

    def _branch_sums(self, latlon_deg: np.ndarray, branches: list[int] | None) -> Iterator[torch.Tensor]:
        """Chunks of (N, D) sums of some (None: all) location-encoder branches' outputs, not normalised (longitudes
        wrapped), on the device, one at a time: ENCODE_CHUNK points an encoder call bound its activations, and a
        caller that reduces each chunk never holds them all (1M points x 512 floats would be 2 GB)."""
        pts = np.asarray(latlon_deg, dtype=np.float64).reshape(-1, 2).copy()
        pts[:, 1] = wrap_lon_deg(pts[:, 1])
        return (self.model.location_branches(on_device(pts[i:i + ENCODE_CHUNK], self.device), branches)
                for i in range(0, len(pts), ENCODE_CHUNK))

    def _branch_sum(self, latlon_deg: np.ndarray, branches: list[int]) -> torch.Tensor:
        return torch.cat(list(self._branch_sums(latlon_deg, branches)))

    @torch.no_grad()
    def _lattice_parts(self, image_emb: np.ndarray, windows: list[_RegionalWindow],
                       head: str) -> list[tuple[np.ndarray, list[torch.Tensor]]]:
        """Each window's scores on its lattice, with the encoder run once for all windows: the branches with a
        lattice of their own (window.branch_lattices) on that, interpolated to the window's lattice, the others on
        it; and per window those branches' outputs on their lattices, as (1, D, rows, cols) grids."""
        q = self._query_on_device(image_emb)
        out: list = [None] * len(windows)
        for own, members in _by_own_branches(windows).items():
            rest = [b for b in range(len(self.branch_periods)) if b not in own]
            sizes = [len(windows[k].lattice_latlon_deg) for k in members]
            total = self._branch_sum(np.concatenate([windows[k].lattice_latlon_deg for k in members]), rest)
            parts = _row_slices(total, sizes)
            grids: list[list[torch.Tensor]] = [[] for _ in members]
            for j, b in enumerate(own):
                coarse = self._branch_sum(np.concatenate([windows[k].branch_lattices[j][1] for k in members]), [b])
                for i, (k, values) in enumerate(zip(members, _row_slices(
                        coarse, [len(windows[k].branch_lattices[j][1]) for k in members]))):
                    (mr, mc), (m_rows, m_cols) = windows[k].branch_lattices[j][2], windows[k].lattice_shape
                    grid = values.T.reshape(1, -1, mr, mc)  # (1, D, rows, cols): channels interpolate as one
                    grids[i].append(grid)
                    up = F.interpolate(grid, size=(m_rows, m_cols), mode=_cubic_if(mr, mc), align_corners=True)
                    parts[i] = parts[i] + up[0].reshape(up.shape[1], -1).T
            for i, (k, branch_sum) in enumerate(zip(members, parts)):
                scores = host(self.scales[head] * (self.model.unit_location_embeddings(branch_sum) @ q))
                out[k] = (scores, grids[i])
        return out

    def global_surface(self, image_emb: np.ndarray, head: str = "img_gps") -> Surface:
        """The whole globe at global_res_deg; masses sum to 1. `image_emb` is the query of `head`: an image
        embedding (img_gps) or a fused image + time embedding (it2g, GTLoc.fuse)."""
        return self.global_surfaces(np.asarray(image_emb).reshape(1, -1), head)[0]

    @torch.no_grad()
    def global_surfaces(self, image_embs: np.ndarray, head: str = "img_gps") -> list[Surface]:
        """global_surface for (N, D) queries: one pass over the cached grid for the whole batch."""
        qs = np.stack([self._query(e) for e in np.asarray(image_embs)]) if len(image_embs) else None
        if qs is None:
            return []
        coarse = self.scales[head] * self._grid_scores(qs)  # (cells, N): the grid is read once
        columns = [coarse[:, i].reshape(self.coarse_shape) for i in range(len(qs))]
        self._coarse_scores = {(head, q.tobytes()): column for q, column in zip(qs, columns)}
        return [self._global_from_coarse(on_device(q, self.device), column, head) for q, column in zip(qs, columns)]

    def _grid_scores(self, qs: np.ndarray) -> torch.Tensor:
        """(cells, N) cosines of the cached grid's embeddings with (N, D) unit queries, on the device."""
        if self._coarse_emb_on_device is None:
            return torch.from_numpy(np.asarray(self.coarse_emb) @ qs.T)
        return self._coarse_emb_on_device @ on_device(qs.T, self.device)

    @torch.no_grad()
    def grid_surface(self, image_emb: np.ndarray, head: str = "img_gps") -> Surface:
        """The whole globe on the cached grid (coarse_res_deg), every cell scored exactly at its centre; masses sum
        to 1. Whatever global_res_deg is, this is the same surface: the claim check integrates on it."""
        q = self._query(image_emb)
        coarse = self._coarse_scores.get((head, q.tobytes()))
        if coarse is None:
            coarse = (self.scales[head] * self._grid_scores(q[None])).reshape(self.coarse_shape)
        return _normalised(coarse.double() + self.coarse_row_log_area[:, None], -180.0, 90.0,
                           self.coarse_res_deg, self.model_key)

    def score_place(self, image_emb: np.ndarray, lat_deg: float, lon_deg: float, *, head: str = "img_gps",
                    region_level: float = 0.9) -> PlaceScore:
        """The claim check's numbers for one place (see PlaceScore): the encoder evaluated at the place itself,
        against grid_surface's cells and normalisation, so that none of them depends on global_res_deg."""
        grid = self.grid_surface(image_emb, head)
        score = float(self.scores_at(image_emb, np.array([[lat_deg, lon_deg]]), head)[0])
        # exp(score) is a density per steradian up to the grid's normaliser (module docstring).
        density_per_km2 = math.exp(score - grid.log_norm) / EARTH_RADIUS_KM**2
        return PlaceScore(
            level=credible_level(grid, lat_deg, lon_deg, density_per_km2=density_per_km2),
            density_per_km2=density_per_km2,
            evidence=density_per_km2 * SPHERE_AREA_KM2,  # over the uniform prior's 1 / (4 pi R^2) per km2
            region_level=region_level,
            region_area_km2=credible_area_km2(grid, region_level),
            res_deg=self.coarse_res_deg,
        )

    def _global_from_coarse(self, q: torch.Tensor, coarse: torch.Tensor, head: str) -> Surface:
        """The global surface of unit query q from its (H, W) cached-grid scores, both on the device."""
        if self.block > 1:  # a coarser grid than the cache's: each cell's mass is the sum of its cached cells'
            b, (hc, wc) = self.block, self.coarse_shape
            log_mass = coarse.double() + self.coarse_row_log_area[:, None]
            block_log_mass = torch.logsumexp(log_mass.reshape(hc // b, b, wc // b, b), dim=(1, 3))
            return _normalised(block_log_mass, -180.0, 90.0, self.global_res_deg, self.model_key)
        scores = upsample_scores(coarse, self.factor)
        f = self.factor
        if f > 1 and self.config.refine_points >= f * f:
            scores = self._refine(q, scores, head)
        return _normalised(scores.double() + self.fine_row_log_area[:, None], -180.0, 90.0,
                           self.global_res_deg, self.model_key)

    def _refine(self, q: torch.Tensor, scores: torch.Tensor, head: str) -> torch.Tensor:
        """Exact scores at the fine cells of the densest coarse cells, as many as refine_points allows."""
        f, (hc, wc) = self.factor, self.coarse_shape
        log_mass = scores + self.fine_row_log_area[:, None].float()
        block_log_mass = torch.logsumexp(log_mass.reshape(hc, f, wc, f), dim=(1, 3))
        block_log_density = block_log_mass - self.coarse_row_log_area[:, None].float()
        n_blocks = min(self.config.refine_points // (f * f), hc * wc)
        blocks = host(torch.topk(block_log_density.ravel(), n_blocks).indices)
        br, bc = np.unravel_index(blocks, (hc, wc))
        sub = np.arange(f)
        rows = (br[:, None, None] * f + sub[None, :, None]).repeat(f, axis=2).ravel()
        cols = (bc[:, None, None] * f + sub[None, None, :]).repeat(f, axis=1).ravel()
        res = self.global_res_deg
        latlon = np.stack((90.0 - (rows + 0.5) * res, -180.0 + (cols + 0.5) * res), axis=-1)
        scores = scores.clone()
        scores[on_device(rows, self.device, torch.long), on_device(cols, self.device, torch.long)] = \
            self._scores_at(q, latlon, head)
        return scores

    def regional_surfaces(self, image_emb: np.ndarray, global_surface: Surface, *, n_modes: int = 3,
                          cell_km: float = 1.0, head: str = "img_gps") -> list[Surface]:
        """One ~cell_km raster around each of the top n_modes modes of the global surface (see module docstring)."""
        if global_surface.kind != "global" or not math.isfinite(global_surface.log_norm):
            raise GtlocError("regional surfaces need the global surface of the same photo (with its log_norm)")
        if cell_km <= 0:
            raise GtlocError(f"regional cell size {cell_km} km must be positive")
        modes = find_candidates(global_surface, n_modes, radius_km=self.config.candidate_radius_km)
        windows = [self._regional_window(m.lat_deg, m.lon_deg, cell_km) for m in modes]
        # One encoder call for every window's lattice: larger batches run the encoder's matmuls faster.
        parts = self._lattice_parts(image_emb, windows, head)
        cells = [self.cell_scores(w, lattice) for w, (lattice, _) in zip(windows, parts)]
        self._refine_regional(image_emb, windows, [grids for _, grids in parts], cells, head)
        return [self._regional_surface(w, scores, global_surface.log_norm) for w, scores in zip(windows, cells)]

    @torch.no_grad()
    def _refine_regional(self, image_emb: np.ndarray, windows: list[_RegionalWindow],
                         grids: list[list[torch.Tensor]], cells: list[np.ndarray], head: str) -> None:
        """Exact scores, in place, at each window's regional_refine_cells highest-scoring (densest) cells: the
        lattice misses what the finest branch's ReLUs put below its spacing (module docstring). The branches with a
        lattice of their own are smooth there: their outputs are interpolated at the cells (`grids`), so only the
        others run through the encoder, in one call per set of branches."""
        n = self.config.regional_refine_cells
        q = self._query_on_device(image_emb)
        picks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for k, (w, scores) in enumerate(zip(windows, cells)):
            if n > 0 and scores.size > n and w.lattice_shape != w.shape:  # else nothing to refine, or exact already
                picks[k] = np.unravel_index(np.argpartition(-scores.ravel(), n - 1)[:n], scores.shape)
        for own, members in _by_own_branches(windows, picks).items():
            rest = [b for b in range(len(self.branch_periods)) if b not in own]
            points = [np.stack((windows[k].north_deg - (picks[k][0] + 0.5) * windows[k].res_deg,
                                windows[k].west_deg + (picks[k][1] + 0.5) * windows[k].res_deg), axis=-1)
                      for k in members]
            total = self._branch_sum(np.concatenate(points), rest)
            for k, branch_sum in zip(members, _row_slices(total, [len(p) for p in points])):
                rows, cols = picks[k]
                (n_rows, n_cols) = windows[k].shape
                # Every lattice spans the first to the last cell centre: grid_sample's -1 and +1 (align_corners).
                at = on_device(np.stack((2.0 * cols / max(n_cols - 1, 1) - 1.0,
                                         2.0 * rows / max(n_rows - 1, 1) - 1.0), axis=-1), self.device)
                for grid in grids[k]:
                    sampled = F.grid_sample(grid, at[None, None], mode=_cubic_if(*grid.shape[-2:]),
                                            padding_mode="border", align_corners=True)  # (1, D, 1, N)
                    branch_sum = branch_sum + sampled[0, :, 0].T
                cells[k][rows, cols] = host(self.scales[head] * (self.model.unit_location_embeddings(branch_sum) @ q))

    def regional_steps_km(self, lat_deg: float, lon_deg: float, period: float | None = None) -> tuple[float, float]:
        """Regional lattice spacing (north-south, east-west) in km at a place, for the shortest Fourier period or
        for `period` (a coarser branch's)."""
        if self.config.regional_sample_km is not None:
            return self.config.regional_sample_km, self.config.regional_sample_km
        per_km_north, per_km_east = equal_earth_units_per_km(lat_deg, lon_deg)
        step = self.fourier_period / self.config.samples_per_period if period is None \
            else period / self.config.branch_samples_per_period
        return step / per_km_north, step / per_km_east

    def _regional_window(self, lat_deg: float, lon_deg: float, cell_km: float) -> _RegionalWindow:
        res = cell_km / KM_PER_DEG_LAT
        half = max(1, round(self.regional_half_km / cell_km))
        n = 2 * half + 1
        coslat = max(math.cos(math.radians(lat_deg)), 0.25)  # at most 4x the columns near the poles
        half_cols = max(1, round(half / coslat))
        n_cols = 2 * half_cols + 1
        north = min(90.0, lat_deg + n / 2 * res)
        south = max(-90.0, lat_deg - n / 2 * res)
        n_rows = max(1, math.ceil((north - south) / res - 1e-9))
        west = lon_deg - n_cols / 2 * res
        lat_c = north - (np.arange(n_rows) + 0.5) * res
        lon_c = west + (np.arange(n_cols) + 0.5) * res
        # The encoder on a lattice (ends on the first and last cell centres), then bicubic interpolation.
        col_km = cell_km * math.cos(math.radians(lat_deg))

        def lattice_shape(period: float | None) -> tuple[int, int]:
            row_step_km, col_step_km = self.regional_steps_km(lat_deg, lon_deg, period)
            return (min(n_rows, math.ceil((n_rows - 1) * cell_km / row_step_km) + 1),
                    min(n_cols, math.ceil((n_cols - 1) * col_km / col_step_km) + 1))

        def lattice(shape: tuple[int, int]) -> np.ndarray:
            la, lo = np.meshgrid(np.linspace(lat_c[0], lat_c[-1], shape[0]), np.linspace(lon_c[0], lon_c[-1], shape[1]),
                                 indexing="ij")
            return np.stack((la.ravel(), lo.ravel()), axis=-1)

        m_rows, m_cols = lattice_shape(None)
        exact = self.config.regional_sample_km is not None and self.config.regional_sample_km <= cell_km
        if exact:
            m_rows, m_cols = n_rows, n_cols
        own: list[tuple[int, np.ndarray, tuple[int, int]]] = []
        # A coarser branch on its own lattice (its period sets it, as the shortest one sets the window's): at least
        # 4 x 4 points, for bicubic interpolation, and only where that is 4x fewer points. Not across the
        # antimeridian, where Equal Earth's x jumps and the encoder's output with it.
        if self.config.branch_lattices and self.config.regional_sample_km is None and -180.0 <= west \
                and west + n_cols * res <= 180.0:
            for b, period in enumerate(self.branch_periods):
                r, c = lattice_shape(period)
                shape = (min(m_rows, max(4, r)), min(m_cols, max(4, c)))
                if 4 * shape[0] * shape[1] <= m_rows * m_cols:
                    own.append((b, lattice(shape), shape))
        return _RegionalWindow(lattice((m_rows, m_cols)), (m_rows, m_cols), (n_rows, n_cols), west, north, res,
                               tuple(own))

    @staticmethod
    def cell_scores(window: _RegionalWindow, lattice_scores: np.ndarray) -> np.ndarray:
        """(rows, cols) scores at the window's cells from its lattice's (bicubic where the lattice is coarser)."""
        (m_rows, m_cols), (n_rows, n_cols) = window.lattice_shape, window.shape
        lattice = lattice_scores.reshape(m_rows, m_cols)
        if (m_rows, m_cols) == (n_rows, n_cols):
            return lattice.copy()
        return F.interpolate(torch.from_numpy(lattice)[None, None], size=(n_rows, n_cols),
                             mode=_cubic_if(m_rows, m_cols), align_corners=True)[0, 0].numpy()

    def _regional_surface(self, window: _RegionalWindow, scores: np.ndarray, log_norm: float) -> Surface:
        """The window's surface from its cells' scores, normalised as the global surface (module docstring)."""
        west, north, res = window.west_deg, window.north_deg, window.res_deg
        log_mass = scores.astype(np.float64) + np.log(row_area_sr(north, res, scores.shape[0]))[:, None] - log_norm
        return Surface(np.exp(log_mass).astype(np.float32), west, north, res, "regional", self.model_key, log_norm)
