"""SunWorld's planet: seeded continents, regions with their own look, a latitude-driven climate, and photo sampling.

Everything here is a pure function of WorldConfig.seed, so a dataset can be regenerated from its world.json.
Land is smooth random noise on the unit sphere thresholded at the quantile that leaves `land_fraction` of the
surface dry, so continents have coasts and oceans carry no photos. Regions are Voronoi cells around seed points
on land; each draws a palette, a ground texture, a building style and trees, so that a place has an appearance
a model can learn to recognise. The climate depends on latitude, altitude and the local season only, so snow,
foliage and season follow the same rules a real photo does (southern seasons reversed, no snow in the tropics).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from gtloc_engine.synth.solar import day_of_year, solar_position, utc_offset_min_for_lon

__all__ = ["WorldConfig", "RegionTable", "Climate", "WorldSample", "SunWorld", "climate_at"]

# Linear-RGB albedos the regions draw from; jittered per region so no two regions share a colour exactly.
_SOIL_RGB = np.array(
    [
        [0.62, 0.50, 0.34],  # sand
        [0.30, 0.23, 0.16],  # dark loam
        [0.52, 0.28, 0.17],  # laterite
        [0.42, 0.41, 0.39],  # grey rock
        [0.55, 0.47, 0.40],  # loess
        [0.36, 0.33, 0.24],  # dry steppe
    ]
)
_WALL_RGB = np.array(
    [
        [0.85, 0.83, 0.78],  # white stucco
        [0.55, 0.24, 0.17],  # red brick
        [0.74, 0.64, 0.48],  # beige sandstone
        [0.52, 0.52, 0.52],  # concrete
        [0.55, 0.68, 0.80],  # pastel blue
        [0.86, 0.62, 0.60],  # pastel pink
        [0.88, 0.78, 0.45],  # ochre
        [0.36, 0.26, 0.18],  # dark timber
        [0.40, 0.55, 0.45],  # green paint
    ]
)


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines one SunWorld; the same config always builds the same world."""

    seed: int = 0
    land_fraction: float = 0.30
    n_regions: int = 300
    continent_wavenumber: float = 3.5  # spatial frequency of the continent noise on the unit sphere
    coast_wavenumber: float = 8.0  # finer noise that roughens the coastlines
    n_noise_waves: int = 64
    year_first: int = 2015
    year_last: int = 2023
    polar_acceptance: float = 0.35  # few people photograph above 60 deg: keep this share of those places
    # Photo-taking by local clock hour: a daytime bump plus a floor, then thinned by how dark it is outside.
    hour_peak_local: float = 13.5
    hour_spread_h: float = 3.8
    hour_uniform_share: float = 0.25
    twilight_acceptance: float = 0.7  # sun between -6 and 0 deg
    dusk_acceptance: float = 0.5  # sun between -12 and -6 deg
    night_acceptance: float = 0.3  # sun below -12 deg

    def __post_init__(self) -> None:
        if not 0.05 <= self.land_fraction <= 0.95:
            raise ValueError(f"land_fraction must lie in [0.05, 0.95], got {self.land_fraction}")
        if self.n_regions < 1:
            raise ValueError(f"n_regions must be >= 1, got {self.n_regions}")
        if self.year_last < self.year_first:
            raise ValueError(f"year_last {self.year_last} is before year_first {self.year_first}")
        for f in ("polar_acceptance", "twilight_acceptance", "dusk_acceptance", "night_acceptance"):
            if not 0.0 < getattr(self, f) <= 1.0:
                raise ValueError(f"{f} must lie in (0, 1], got {getattr(self, f)}")

    @classmethod
    def from_dict(cls, d: dict) -> WorldConfig:
        """Rebuild a config from to_dict() output (world.json); unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown WorldConfig keys {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class RegionTable:
    """Per-region appearance, one row per region; colours are linear-RGB albedos in [0, 1]."""

    centre_xyz: np.ndarray  # (R, 3) unit vectors of the Voronoi seeds
    centre_lat_deg: np.ndarray
    centre_lon_deg: np.ndarray
    soil_rgb: np.ndarray  # (R, 2, 3) two soil colours the ground texture mixes
    vegetation_cover: np.ndarray  # share of the ground under plants, before the season
    aridity: np.ndarray  # 0 wet .. 1 desert: dulls foliage
    texture_scale_m: np.ndarray  # size of the ground pattern
    texture_contrast: np.ndarray
    urban: np.ndarray  # 0 countryside .. 1 city: buildings vs trees, street lights at night
    objects_per_photo: np.ndarray  # mean number of buildings/trees in view
    building_height_m: np.ndarray  # (R, 2) low, high
    building_width_m: np.ndarray  # (R, 2) low, high
    wall_rgb: np.ndarray  # (R, 2, 3) two wall colours of the local style
    window_rows_m: np.ndarray  # storey height: vertical window spacing
    conifer_share: np.ndarray  # conifers (cones) vs broadleaf (round crowns)
    tree_height_m: np.ndarray  # (R, 2)
    horizon_amp_deg: np.ndarray  # height of the distant mountains
    horizon_phase: np.ndarray  # (R, 3) phases of the mountain profile (fixed in azimuth: heading shows it)
    alt_m: np.ndarray

    def __len__(self) -> int:
        return len(self.alt_m)


@dataclass(frozen=True)
class Climate:
    """Season-dependent ground state at given places and dates."""

    temperature_c: np.ndarray  # smooth climatological daily mean
    snow_cover: np.ndarray  # 0..1
    greenness: np.ndarray  # 0 bare/dormant .. 1 full leaf
    autumn: np.ndarray  # 0..1 strength of autumn colouring


@dataclass(frozen=True)
class WorldSample:
    """n photo captures: where (on land) and when (local wall clock with its UTC offset)."""

    lat_deg: np.ndarray
    lon_deg: np.ndarray
    alt_m: np.ndarray
    region_id: np.ndarray
    local_datetime: np.ndarray  # datetime64[s], naive local wall-clock time
    utc_offset_min: np.ndarray  # int64 minutes east of UTC (nautical zone of lon_deg)

    def __len__(self) -> int:
        return len(self.lat_deg)


def _lat_lon_to_xyz(lat_deg, lon_deg) -> np.ndarray:
    lat = np.deg2rad(np.asarray(lat_deg, dtype=np.float64))
    lon = np.deg2rad(np.asarray(lon_deg, dtype=np.float64))
    c = np.cos(lat)
    return np.stack([c * np.cos(lon), c * np.sin(lon), np.sin(lat)], axis=-1)


def _xyz_to_lat_lon(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lat = np.rad2deg(np.arcsin(np.clip(xyz[..., 2], -1.0, 1.0)))
    lon = np.rad2deg(np.arctan2(xyz[..., 1], xyz[..., 0]))
    return lat, lon


def _uniform_sphere(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _fibonacci_sphere(n: int) -> np.ndarray:
    """n nearly equal-area points: the land quantile must be measured by area, not by lat/lon grid cells."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = np.pi * (1.0 + 5**0.5) * i
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def climate_at(lat_deg, day_of_year_, alt_m=0.0, aridity=0.0) -> Climate:
    """Climatology at latitudes, days of year (1..366), altitudes and aridities (arrays broadcast)."""
    lat = np.asarray(lat_deg, dtype=np.float64)
    doy = np.asarray(day_of_year_, dtype=np.float64)
    abs_lat = np.abs(lat)
    # Annual mean falls with latitude and the seasonal swing grows with it (continental-ish numbers: 27 C at the
    # equator, 0 C at 60 deg; +-14 C at 45 deg). Altitude cools by 4 C/km, a dry lapse rate tempered so that
    # tropical highlands (alt <= 2.5 km) never freeze: the tropics stay snow-free.
    mean_c = 27.0 - 0.0075 * abs_lat**2 - 0.004 * np.asarray(alt_m, dtype=np.float64)
    swing_c = 0.32 * abs_lat
    # Temperature peaks ~4 weeks after the solstice (thermal lag): day 200 in the north, day 17 in the south.
    season = np.cos(2.0 * np.pi * (doy - 200.0) / 365.25)
    hemisphere = np.where(lat >= 0.0, 1.0, -1.0)
    temperature_c = mean_c + swing_c * hemisphere * season
    snow_cover = np.clip((1.0 - temperature_c) / 6.0, 0.0, 1.0)
    greenness = np.clip((temperature_c - 4.0) / 10.0, 0.0, 1.0) * (1.0 - 0.7 * np.asarray(aridity))
    # Leaves turn while it is cooling (after the warm peak) through roughly 3..15 C.
    cooling = np.sin(2.0 * np.pi * (doy - 200.0) / 365.25) * hemisphere > 0.0
    autumn = np.clip(1.0 - np.abs(temperature_c - 9.0) / 7.0, 0.0, 1.0) * cooling * np.clip(swing_c / 8.0, 0.0, 1.0)
    return Climate(temperature_c=temperature_c, snow_cover=snow_cover, greenness=greenness, autumn=autumn)


class SunWorld:
    """A seeded planet: land mask, regions with styles, climate, and a sampler of photo captures."""

    def __init__(self, config: WorldConfig | None = None) -> None:
        self.config = config if config is not None else WorldConfig()
        rng = np.random.default_rng([self.config.seed, 0x5A11])
        self._waves = self._draw_noise(rng)
        grid = _fibonacci_sphere(40_000)
        self._land_threshold = float(np.quantile(self._noise(grid), 1.0 - self.config.land_fraction))
        self.regions = self._draw_regions(rng)

    # ---- land -------------------------------------------------------------------------------------------
    def _draw_noise(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cfg = self.config
        n_coarse = cfg.n_noise_waves // 2
        n_fine = cfg.n_noise_waves - n_coarse
        freq = np.concatenate(
            [
                rng.normal(size=(n_coarse, 3)) * cfg.continent_wavenumber,
                rng.normal(size=(n_fine, 3)) * cfg.coast_wavenumber,
            ]
        )
        amp = np.concatenate([np.ones(n_coarse), np.full(n_fine, 0.25)])
        phase = rng.uniform(0.0, 2.0 * np.pi, size=cfg.n_noise_waves)
        return freq, amp, phase

    def _noise(self, xyz: np.ndarray) -> np.ndarray:
        freq, amp, phase = self._waves
        return np.cos(xyz @ freq.T + phase) @ amp

    def is_land(self, lat_deg, lon_deg) -> np.ndarray:
        """True where (lat_deg, lon_deg) is dry land."""
        xyz = _lat_lon_to_xyz(lat_deg, lon_deg)
        return self._noise(xyz.reshape(-1, 3)).reshape(xyz.shape[:-1]) > self._land_threshold

    def _sample_land_xyz(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out, have = [], 0
        while have < n:
            batch = _uniform_sphere(max(64, int((n - have) * 4.5)), rng)
            keep = self._noise(batch) > self._land_threshold
            polar = np.abs(batch[:, 2]) > np.sin(np.deg2rad(60.0))
            keep &= ~polar | (rng.random(len(batch)) < self.config.polar_acceptance)
            out.append(batch[keep])
            have += int(keep.sum())
        return np.concatenate(out)[:n]

    def sample_places(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n places on land, uniform by area except thinned above 60 deg; returns (lat_deg, lon_deg)."""
        return _xyz_to_lat_lon(self._sample_land_xyz(n, rng))

    # ---- regions ------------------------------------------------------------------------------------------
    def _draw_regions(self, rng: np.random.Generator) -> RegionTable:
        r = self.config.n_regions
        centre = self._sample_land_xyz(r, rng)
        lat, lon = _xyz_to_lat_lon(centre)
        abs_lat = np.abs(lat)
        # Deserts cluster under the subtropical highs (~25 deg), as on Earth.
        arid_mean = 0.15 + 0.55 * np.exp(-(((abs_lat - 25.0) / 10.0) ** 2))
        aridity = np.clip(arid_mean + rng.normal(0.0, 0.15, r), 0.0, 1.0)
        soil_idx = rng.integers(0, len(_SOIL_RGB), size=(r, 2))
        soil = np.clip(_SOIL_RGB[soil_idx] * rng.uniform(0.8, 1.2, size=(r, 2, 1)), 0.02, 0.95)
        urban = rng.beta(0.7, 1.3, r)
        b_low = 3.0 + 12.0 * urban * rng.random(r)
        b_high = b_low * (1.3 + 4.0 * urban * rng.random(r))
        w_low = rng.uniform(4.0, 10.0, r)
        w_high = w_low * rng.uniform(1.2, 2.5, r)
        wall_idx = rng.integers(0, len(_WALL_RGB), size=(r, 2))
        wall = np.clip(_WALL_RGB[wall_idx] * rng.uniform(0.85, 1.15, size=(r, 2, 3)), 0.02, 0.95)
        t_low = rng.uniform(3.0, 8.0, r)
        horizon_amp = 10.0 * rng.beta(0.8, 2.5, r)
        alt = np.clip(20.0 + 220.0 * horizon_amp * rng.uniform(0.3, 1.0, r), 0.0, 2500.0)
        conifer = np.clip((abs_lat - 35.0) / 20.0, 0.0, 0.85) + 0.1 * rng.random(r) + alt / 5000.0
        return RegionTable(
            centre_xyz=centre,
            centre_lat_deg=lat,
            centre_lon_deg=lon,
            soil_rgb=soil,
            vegetation_cover=(1.0 - aridity) * rng.uniform(0.4, 1.0, r),
            aridity=aridity,
            texture_scale_m=rng.uniform(0.4, 3.0, r),
            texture_contrast=rng.uniform(0.1, 0.45, r),
            urban=urban,
            objects_per_photo=rng.uniform(1.5, 8.0, r),
            building_height_m=np.stack([b_low, b_high], axis=1),
            building_width_m=np.stack([w_low, w_high], axis=1),
            wall_rgb=wall,
            window_rows_m=rng.uniform(2.8, 4.0, r),
            conifer_share=np.clip(conifer, 0.0, 1.0),
            tree_height_m=np.stack([t_low, t_low * rng.uniform(1.3, 2.5, r)], axis=1),
            horizon_amp_deg=horizon_amp,
            horizon_phase=rng.uniform(0.0, 2.0 * np.pi, size=(r, 3)),
            alt_m=alt,
        )

    def region_of(self, lat_deg, lon_deg) -> np.ndarray:
        """Index of the region (Voronoi cell of the nearest seed by great-circle distance) at each place."""
        xyz = _lat_lon_to_xyz(lat_deg, lon_deg)
        flat = xyz.reshape(-1, 3)
        out = np.empty(len(flat), dtype=np.int64)
        for start in range(0, len(flat), 8192):  # bounds memory at 8192 x n_regions
            out[start : start + 8192] = np.argmax(flat[start : start + 8192] @ self.regions.centre_xyz.T, axis=1)
        return out.reshape(xyz.shape[:-1])

    def climate(self, lat_deg, local_datetime, region_id) -> Climate:
        """Climate at places on their local dates; region_id supplies altitude and aridity."""
        doy, _, _ = day_of_year(np.asarray(local_datetime, dtype="datetime64[s]"))
        rid = np.asarray(region_id)
        return climate_at(lat_deg, doy, self.regions.alt_m[rid], self.regions.aridity[rid])

    # ---- captures --------------------------------------------------------------------------------------------
    def _draw_local_datetimes(self, n: int, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        first = np.datetime64(f"{cfg.year_first}-01-01", "D")
        n_days = int((np.datetime64(f"{cfg.year_last + 1}-01-01", "D") - first).astype(np.int64))
        day = first + rng.integers(0, n_days, n).astype("timedelta64[D]")
        hour = np.mod(rng.normal(cfg.hour_peak_local, cfg.hour_spread_h, n), 24.0)
        uniform = rng.random(n) < cfg.hour_uniform_share
        hour[uniform] = rng.uniform(0.0, 24.0, int(uniform.sum()))
        sec = np.minimum(np.floor(hour * 3600.0), 86399).astype(np.int64)
        return day.astype("datetime64[s]") + sec.astype("timedelta64[s]")

    def sample(self, n: int, rng: np.random.Generator) -> WorldSample:
        """n captures on land across all dates of year_first..year_last; hours favour daylight, with some
        twilight and night shots (time zones: utc_offset_min_for_lon)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        cfg = self.config
        parts: list[tuple[np.ndarray, ...]] = [
            (np.zeros(0), np.zeros(0), np.zeros(0, dtype="datetime64[s]"), np.zeros(0, dtype=np.int64))
        ]
        have = 0
        while have < n:
            m = max(64, int((n - have) * 1.6))
            lat, lon = self.sample_places(m, rng)
            local = self._draw_local_datetimes(m, rng)
            offset = utc_offset_min_for_lon(lon)
            elev = solar_position(lat, lon, local, offset).elevation_deg
            accept_p = np.select(
                [elev > 0.0, elev > -6.0, elev > -12.0],
                [1.0, cfg.twilight_acceptance, cfg.dusk_acceptance],
                cfg.night_acceptance,
            )
            keep = rng.random(m) < accept_p
            parts.append((lat[keep], lon[keep], local[keep], offset[keep]))
            have += int(keep.sum())
        lat, lon, local, offset = (np.concatenate([p[i] for p in parts])[:n] for i in range(4))
        region = self.region_of(lat, lon)
        return WorldSample(
            lat_deg=lat,
            lon_deg=lon,
            alt_m=self.regions.alt_m[region],
            region_id=region,
            local_datetime=local.astype("datetime64[s]"),
            utc_offset_min=np.asarray(offset, dtype=np.int64),
        )

    def to_dict(self) -> dict:
        """What world.json records: the config (which rebuilds the world) and a few derived facts."""
        return {
            "config": self.config.to_dict(),
            "land_threshold": self._land_threshold,
            "n_regions": len(self.regions),
        }
