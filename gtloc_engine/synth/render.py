"""One SunWorld photo: a small RGB image whose sky, sun, shadows and ground follow the true sun, place and season.

A pinhole camera stands camera_height_m above flat ground, facing a random heading (azimuth clockwise from
north). Everything is computed in that camera's frame: per pixel, its azimuth and elevation (sky) or the point
where its ray meets the ground (ground). The cues a model can learn are the physical ones:
- sky brightness and colour from the sun's elevation (day, golden hour, civil/nautical twilight, night), the
  warm glow on the horizon on the sun's side, the sun's disc where azimuth-minus-heading and elevation put it;
- buildings and trees whose shadows on the ground are H / tan(elevation) long and point away from the sun;
  the side of a crown or a facade facing the sun is lit;
- the region's street/field grid on the ground around the camera (it fades into open ground beyond ~20 m), whose
  bearing is fixed per region: low walls along its lines cast shadow bands H / tan(elevation) * |sin| or |cos|
  (sun azimuth - grid bearing) wide on their side away from the sun, next to footways that mark the grid's sides
  (pale on the right of the avenues walking along the bearing, red beyond the cross walls) and are cambered
  (footway_tilt_deg), so each is lit by Lambert's law as the sun stands on its side of the grid or not. The camera
  heading is random, so the sun's direction in the frame says nothing about the hour; the shadows and the footways'
  light *across the grid* give the sun's azimuth minus the grid's bearing, which is the sun's compass direction
  (morning or afternoon) to a model that knows the place;
- the ground's colour from the region's palette, the season's foliage (spring flush, autumn, summer drought,
  tropical wet and dry seasons) and snow, the burning season's smoke haze (world.py's climate);
- the region's buildings, trees and mountains (what the place looks like; the mountains are fixed in azimuth);
and the nuisances that blur them: clouds (which also dim the direct sun, so shadows fade), camera heading and
pitch, exposure, white balance, haze and sensor noise. Street lights and lit windows appear at night in towns.

Speed matters (millions of photos on a CPU): all per-pixel work is vectorised numpy on the whole frame and the
camera geometry is cached per image size; a 64x64 photo takes about 2-3 ms.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from gtloc_engine.solar import solar_position
from gtloc_engine.synth.world import SunWorld

__all__ = ["RenderConfig", "SceneInfo", "render_photo"]


@dataclass(frozen=True)
class RenderConfig:
    """Camera and scene constants shared by every photo of a dataset."""

    hfov_deg: float = 70.0
    camera_height_m: float = 1.6
    pitch_mean_deg: float = 0.0
    pitch_sd_deg: float = 4.0  # people tilt their phones; the horizon moves
    max_objects: int = 10
    object_distance_m: tuple[float, float] = (7.0, 45.0)
    # The real sun is 0.27 deg across: under one pixel at 64 px. Draw it ~8x larger so it can be seen.
    sun_disc_radius_deg: float = 2.2
    max_exposure_gain: float = 4.0  # auto exposure gives up at night: dark scenes stay dark
    target_luminance: float = 0.2
    exposure_sd_ev: float = 0.3
    sensor_noise: float = 0.006
    grid_wall_width_m: float = 0.35  # the grid's low walls, seen from above
    grid_footway_m: float = 1.1  # footway beside each wall, on the grid's positive side
    footway_tilt_deg: float = 30.0  # camber of the footways (see render_photo)
    grid_fade_m: float = 18.0  # the grid is the block around the camera: it fades into open ground beyond ~this

    def __post_init__(self) -> None:
        if not 20.0 <= self.hfov_deg <= 120.0:
            raise ValueError(f"hfov_deg must lie in [20, 120], got {self.hfov_deg}")
        if self.camera_height_m <= 0:
            raise ValueError(f"camera_height_m must be > 0, got {self.camera_height_m}")
        if not 0 <= self.max_objects <= 64:
            raise ValueError(f"max_objects must lie in [0, 64], got {self.max_objects}")


@dataclass(frozen=True)
class SceneInfo:
    """What was drawn, for tests and diagnostics (the truth behind the pixels)."""

    sun_elevation_deg: float
    sun_azimuth_deg: float
    heading_deg: float
    pitch_deg: float
    region_id: int
    cloud_cover: float  # 0 clear .. 1 overcast
    direct_sun: float  # share of direct sunlight reaching the ground (0 when down or behind clouds)
    snow_cover: float
    greenness: float
    exposure_gain: float
    shadow_length_per_height: float  # 1 / tan(sun elevation); inf when the sun is down
    shadow_azimuth_deg: float  # where shadows point: away from the sun
    object_height_m: np.ndarray
    object_shadow_length_m: np.ndarray
    object_is_building: np.ndarray
    shadow_ground_fraction: float  # share of visible ground pixels darkened by a shadow
    sun_pixel_rowcol: tuple[float, float] | None  # where the disc centre projects, if in front of the camera
    grid_bearing_deg: float = 0.0  # the region's avenues, clockwise from north
    sun_azimuth_rel_grid_deg: float = 0.0  # sun azimuth minus grid bearing, in [0, 360): the place-dependent cue
    grid_shadow_length_m: float = 0.0  # wall height / tan(sun elevation); 0 when the sun is down or veiled
    grid_shadow_fraction: float = 0.0  # share of visible ground within grid_fade_m in a wall's shadow
    spring: float = 0.0
    autumn: float = 0.0
    smoke: float = 0.0
    layers: dict | None = None  # with render_photo(return_layers=True): per ground pixel grid coordinates, masks


# ---- fixed noise tiles ---------------------------------------------------------------------------------------
_TILE = 128


def _noise_tile(rng: np.random.Generator, slope: float) -> np.ndarray:
    """Periodic smooth noise in [0, 1] with a 1/f^slope spectrum: tiles without seams, so indices can wrap."""
    white = rng.normal(size=(_TILE, _TILE))
    fy = np.fft.fftfreq(_TILE)[:, None]
    fx = np.fft.fftfreq(_TILE)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    field = np.real(np.fft.ifft2(np.fft.fft2(white) / f**slope))
    field = (field - field.mean()) / field.std()
    # Rank-normalise so a threshold at q covers a share q of the tile (cloud cover, snow patches mean what they say).
    ranks = np.empty(field.size)
    ranks[np.argsort(field, axis=None)] = np.linspace(0.0, 1.0, field.size)
    return ranks.reshape(field.shape)


def _noise_bank() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(20240611)
    clouds = _noise_tile(rng, 1.6)
    ground = _noise_tile(rng, 1.1)
    stars = rng.random((_TILE, _TILE))
    return clouds, ground, stars


_CLOUD_TILE, _GROUND_TILE, _STAR_TILE = _noise_bank()


# ---- colour curves over the sun's elevation (linear RGB, multiplied by the sky luminance) ------------------
_E_LUM = np.array([-18.0, -12.0, -8.0, -6.0, -3.0, 0.0, 3.0, 8.0, 15.0, 30.0, 60.0, 90.0])
_LOG10_LUM = np.array([-3.6, -3.1, -2.4, -2.0, -1.4, -0.85, -0.5, -0.25, -0.1, 0.0, 0.05, 0.08])
_E_ZEN = np.array([-18.0, -8.0, -3.0, 2.0, 10.0, 90.0])
_ZENITH_RGB = np.array(
    [[0.05, 0.07, 0.16], [0.10, 0.14, 0.40], [0.14, 0.22, 0.60],
     [0.15, 0.32, 0.85], [0.12, 0.32, 0.95], [0.10, 0.30, 0.95]]
)
_E_HOR = np.array([-18.0, -8.0, -3.0, 0.0, 4.0, 10.0, 90.0])
_HORIZON_AWAY_RGB = np.array(
    [[0.07, 0.08, 0.14], [0.25, 0.22, 0.40], [0.55, 0.45, 0.60], [0.75, 0.62, 0.70],
     [0.80, 0.78, 0.85], [0.72, 0.82, 0.95], [0.68, 0.80, 0.95]]
)
_E_GLOW = np.array([-18.0, -10.0, -5.0, -2.0, 0.0, 3.0, 8.0, 15.0, 90.0])
_HORIZON_SUN_RGB = np.array(
    [
        [0.07, 0.08, 0.14],
        [0.40, 0.25, 0.25],
        [1.00, 0.45, 0.30],
        [1.20, 0.60, 0.35],
        [1.30, 0.75, 0.45],
        [1.25, 0.85, 0.60],
        [1.00, 0.88, 0.85],
        [0.85, 0.88, 0.95],
        [0.75, 0.85, 0.95],
    ]
)
# Extinction of the direct beam per unit of extra air mass (R, G, B): Rayleigh scattering takes blue first, so a
# low sun is dimmer and redder; the air mass follows Kasten & Young (1989).
_BEAM_TAU = np.array([0.06, 0.10, 0.18])
_SNOW_RGB = np.array([0.86, 0.89, 0.93])
_DRY_GRASS_RGB = np.array([0.46, 0.36, 0.17])
_GREEN_RGB = np.array([0.11, 0.27, 0.05])
_AUTUMN_RGB = np.array([0.50, 0.22, 0.05])
_CONIFER_RGB = np.array([0.05, 0.13, 0.06])
_BARE_RGB = np.array([0.22, 0.18, 0.14])
_TRUNK_RGB = np.array([0.20, 0.14, 0.09])
_PAVED_RGB = np.array([0.30, 0.30, 0.31])
_LAMP_RGB = np.array([1.0, 0.65, 0.30])
_LUMA = np.array([0.2126, 0.7152, 0.0722])
_FRESH_RGB = np.array([0.24, 0.40, 0.07])  # spring's new leaves
_BLOSSOM_RGB = np.array([0.92, 0.72, 0.80])
_SMOKE_RGB = np.array([1.25, 1.0, 0.72])  # relative tint of burning-season haze
_AVENUE_WAY_RGB = np.array([0.78, 0.74, 0.62])  # pale footway right of the avenues (walking along the bearing)
_CROSS_WAY_RGB = np.array([0.55, 0.16, 0.12])  # red footway beyond the cross walls


def _interp_rgb(e: float, knots: np.ndarray, table: np.ndarray) -> np.ndarray:
    return np.array([np.interp(e, knots, table[:, c]) for c in range(3)])


def _beam_rgb(elevation_deg: float) -> np.ndarray:
    e = max(elevation_deg, -0.5)
    air_mass = 1.0 / (np.sin(np.deg2rad(e)) + 0.50572 * (e + 6.07995) ** -1.6364)
    return np.exp(-_BEAM_TAU * (air_mass - 1.0))


def _smoothstep(lo: float, hi: float, x):
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@functools.lru_cache(maxsize=8)
def _camera(height: int, width: int, hfov_deg: float):
    """Per-size constants: focal length (px), column ray slopes, pixel rows, vignetting."""
    f_px = (width / 2.0) / np.tan(np.deg2rad(hfov_deg) / 2.0)
    cols = np.arange(width) + 0.5
    rows = np.arange(height) + 0.5
    x_col = (cols - width / 2.0) / f_px  # tan of the azimuth offset of each column
    yy = (rows[:, None] - height / 2.0) / height
    xx = (cols[None, :] - width / 2.0) / width
    vignette = 1.0 - 0.35 * (xx * xx + yy * yy)
    return f_px, cols, rows, x_col, np.arctan(x_col), np.sqrt(1.0 + x_col * x_col), vignette[..., None]


def _sample_tile(tile: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Nearest-neighbour lookup in a periodic tile at real-valued coordinates (cheap, seamless)."""
    return tile[np.floor(a).astype(np.int64) % _TILE, np.floor(b).astype(np.int64) % _TILE]


def render_photo(
    world: SunWorld,
    lat_deg: float,
    lon_deg: float,
    local_datetime,
    utc_offset_min: int,
    rng: np.random.Generator,
    *,
    size: int | tuple[int, int] = 64,
    config: RenderConfig | None = None,
    heading_deg: float | None = None,
    cloud_cover: float | None = None,
    return_layers: bool = False,
) -> tuple[np.ndarray, SceneInfo]:
    """Render one photo taken at (lat_deg, lon_deg) at a local wall-clock time; returns (uint8 HxWx3, SceneInfo).

    All random choices (heading, objects, clouds, exposure, noise) come from rng in a fixed order that does
    not depend on the time, so one rng seed at one place renders the same scene under different suns.
    heading_deg and cloud_cover, when given, override the drawn values. return_layers adds the ground's grid
    coordinates and masks to SceneInfo.layers (tests and diagnostics).
    """
    cfg = config if config is not None else RenderConfig()
    height, width = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if height < 8 or width < 8:
        raise ValueError(f"image size must be at least 8x8, got {height}x{width}")
    f_px, cols, rows, x_col, az_off, ray_norm, vignette = _camera(height, width, float(cfg.hfov_deg))

    # ---- the truth ----
    sun = solar_position(lat_deg, lon_deg, local_datetime, utc_offset_min)
    sun_el = float(sun.elevation_deg)
    sun_az = float(sun.azimuth_deg)
    region = int(world.region_of(lat_deg, lon_deg))
    reg = world.regions
    clim = world.climate(lat_deg, local_datetime, region)
    snow = float(clim.snow_cover)
    green = float(clim.greenness)
    autumn = float(clim.autumn)
    spring = float(clim.spring)
    smoke = float(clim.smoke)

    # ---- every random draw, in a fixed order ----
    k_max = cfg.max_objects
    drawn_heading = rng.uniform(0.0, 360.0)
    pitch_deg = float(np.clip(rng.normal(cfg.pitch_mean_deg, cfg.pitch_sd_deg), -10.0, 10.0))
    cover_kind = rng.random()
    cover_draw = rng.random()
    cloud_off = rng.uniform(0.0, _TILE, 2)
    ground_off = rng.uniform(0.0, _TILE, 2)
    visibility_m = float(np.exp(rng.uniform(np.log(600.0), np.log(8000.0))))
    visibility_m *= 1.0 - 0.8 * smoke  # burning-season smoke
    exposure_ev = rng.normal(0.0, cfg.exposure_sd_ev)
    white_balance = np.exp(rng.normal(0.0, 0.03, 3))
    n_obj = min(int(rng.poisson(reg.objects_per_photo[region])), k_max)
    u_obj = rng.random((7, k_max))
    wall_pick = rng.integers(0, 2, k_max)
    noise = rng.standard_normal((height, width, 3))
    grid_off = rng.random(2)  # where the camera stands within a cell of the grid

    heading = float(drawn_heading if heading_deg is None else heading_deg) % 360.0
    if cloud_cover is None:
        # A third of photos clear, most partly cloudy, a fifth overcast.
        if cover_kind < 0.35:
            cover = 0.1 * cover_draw
        elif cover_kind < 0.8:
            cover = 0.1 + 0.6 * cover_draw
        else:
            cover = 0.7 + 0.3 * cover_draw
    else:
        cover = float(np.clip(cloud_cover, 0.0, 1.0))

    # ---- light ----
    lum = 10.0 ** np.interp(sun_el, _E_LUM, _LOG10_LUM)
    zenith_rgb = _interp_rgb(sun_el, _E_ZEN, _ZENITH_RGB)
    away_rgb = _interp_rgb(sun_el, _E_HOR, _HORIZON_AWAY_RGB)
    toward_rgb = _interp_rgb(sun_el, _E_GLOW, _HORIZON_SUN_RGB)
    sun_rgb = _beam_rgb(sun_el)  # direct sunlight, 1 at the zenith
    sin_el = np.sin(np.deg2rad(sun_el))
    cos_el = np.cos(np.deg2rad(sun_el))
    direct = float(_smoothstep(-0.5, 2.0, sun_el) * (1.0 - 0.93 * cover**1.3) * (1.0 - 0.3 * smoke))
    direct_irr = sun_rgb * max(sin_el, 0.0) * direct * 1.1
    ambient_irr = lum * (0.5 * away_rgb + 0.5 * zenith_rgb) * 0.55
    night = float(1.0 - _smoothstep(-8.0, -1.0, sun_el))
    urban = float(reg.urban[region])

    # Sun in the camera frame (forward, right, up) and shadows' unit direction on the ground (away from the sun).
    d_az = np.deg2rad(sun_az - heading)
    s_fwd, s_right, s_up = cos_el * np.cos(d_az), cos_el * np.sin(d_az), sin_el
    shadow_dir = np.array([-np.cos(d_az), -np.sin(d_az)])

    # ---- per-pixel rays: the horizon is a row boundary, so sky and ground are separate row blocks ----
    v_h = height / 2.0 + f_px * np.tan(np.deg2rad(pitch_deg))  # the horizon row (pitch up lowers it)
    n_sky = int(np.clip(np.ceil(v_h - 0.5), 0, height))  # rows whose centre lies above the horizon
    az_px = np.deg2rad(heading) + az_off  # (W,) azimuth of each column
    cos_daz = np.cos(az_px - np.deg2rad(sun_az))  # (W,)
    sun_side = ((1.0 + cos_daz) / 2.0) ** 2
    horizon_rgb = away_rgb[None, :] * (1.0 - sun_side[:, None]) + toward_rgb[None, :] * sun_side[:, None]  # (W, 3)
    if smoke > 0.0:  # a brown pall near the horizon
        horizon_rgb = horizon_rgb * (1.0 - 0.5 * smoke) + _SMOKE_RGB * (0.5 * smoke * horizon_rgb.mean(axis=1,
                                                                                                keepdims=True))
    horizon_lum = lum * horizon_rgb
    img = np.empty((height, width, 3))

    # ---- sky ----
    y_sky = (v_h - rows[:n_sky]) / f_px
    el_sky = np.arctan2(y_sky[:, None], ray_norm[None, :])  # (S, W) radians above the horizon
    cos_gamma = np.sin(el_sky) * sin_el + np.cos(el_sky) * (cos_el * cos_daz)[None, :]
    gamma = np.arccos(np.clip(cos_gamma, -1.0, 1.0))  # angle to the sun
    w_h = np.exp(el_sky / -0.22)[..., None]
    sky = lum * zenith_rgb * (1.0 - w_h) + horizon_lum[None, :, :] * w_h
    # Stars: a fixed field in (azimuth, elevation), visible only when the sky is dark and clear.
    star_vis = float(_smoothstep(-10.0, -16.0, sun_el)) * (1.0 - cover)
    if star_vis > 0.0:
        stars = _sample_tile(_STAR_TILE, el_sky * 60.0, (az_px * 60.0)[None, :]) > 0.985
        sky = sky + (stars * (0.02 * star_vis))[..., None]
    # Clouds: noise on a flat cloud layer seen in perspective; cover sets the share of the layer that is cloud.
    reach = 9.0 / (np.tan(el_sky) + 0.06)
    cloud_noise = _sample_tile(_CLOUD_TILE, reach * np.cos(az_px) + cloud_off[0], reach * np.sin(az_px) + cloud_off[1])
    cloud = _smoothstep(1.0 - cover - 0.12, 1.0 - cover + 0.12, cloud_noise)
    warm = float(np.interp(sun_el, [-10.0, -4.0, 0.0, 5.0, 12.0], [0.2, 1.0, 1.0, 0.5, 0.0]))
    cloud_tint = 1.0 + (toward_rgb / max(toward_rgb.max(), 1e-6) - 1.0) * (0.7 * warm * sun_side)[:, None]  # (W, 3)
    cloud_rgb = lum * (0.55 + 0.4 * (1.0 - cover)) * cloud_tint[None, :, :] + urban * night * 0.004 * _LAMP_RGB
    sky = sky + (cloud_rgb - sky) * cloud[..., None]
    # The sun: aureole and disc, hidden by the clouds in front of it.
    sun_vis = float(_smoothstep(-3.0, 1.0, sun_el))
    if sun_vis > 0.0:
        r_disc = np.deg2rad(cfg.sun_disc_radius_deg)
        glow = 0.5 * np.exp(gamma / -0.15) + 2.0 * np.exp(gamma / -0.04) + 40.0 * (gamma < r_disc)
        disc_rgb = sun_rgb / max(float(sun_rgb.max()), 1e-6)  # the disc stays visible as the beam fades
        sky = sky + (glow * (1.0 - 0.95 * cloud) * (sun_vis * lum))[..., None] * disc_rgb
    # Distant mountains, fixed in azimuth (their profile belongs to the region, the heading turns it).
    amp = reg.horizon_amp_deg[region]
    if amp > 0.2 and n_sky > 0:
        p = reg.horizon_phase[region]
        ridge_deg = amp * (
            0.55 + 0.25 * np.sin(2 * az_px + p[0]) + 0.12 * np.sin(5 * az_px + p[1]) + 0.08 * np.sin(13 * az_px + p[2])
        )
        ridge = np.deg2rad(ridge_deg)[None, :]
        mountain = el_sky < ridge
        lit = direct_irr * 0.6 + ambient_irr
        cap = _smoothstep(0.55, 0.9, el_sky / np.maximum(ridge, 1e-6))[..., None] * min(1.0, snow + amp / 12.0)
        rock_rgb = np.array([0.16, 0.17, 0.18]) * lit * (1.0 - cap) + _SNOW_RGB * lit * cap
        sky = np.where(mountain[..., None], rock_rgb * 0.45 + horizon_lum[None, :, :] * 0.55, sky)
    img[:n_sky] = sky

    # ---- ground: where each pixel's ray meets the ground, in metres forward/right of the camera ----
    y_ground = (v_h - rows[n_sky:]) / f_px
    z_row = np.minimum(cfg.camera_height_m / np.maximum(-y_ground, 1e-4), 5000.0)[:, None]  # (G, 1)
    gx = z_row * x_col[None, :]  # (G, W)
    ch, sh = np.cos(np.deg2rad(heading)), np.sin(np.deg2rad(heading))
    scale = reg.texture_scale_m[region]
    east_m = z_row * sh + gx * ch  # (G, W) metres east and north of the camera
    north_m = z_row * ch - gx * sh
    east = east_m / scale
    north = north_m / scale
    fade = np.exp(z_row / (-30.0 * scale))
    tex = (0.5 + (_sample_tile(_GROUND_TILE, east + ground_off[0], north + ground_off[1]) - 0.5) * fade)[..., None]
    patch = _sample_tile(_GROUND_TILE, east / 9.0 + ground_off[1], north / 9.0 + ground_off[0])[..., None]
    soil = reg.soil_rgb[region]
    contrast = reg.texture_contrast[region]
    albedo = (soil[0] + (soil[1] - soil[0]) * tex) * (1.0 + contrast * (tex - 0.5))
    veg_rgb = _DRY_GRASS_RGB * (1.0 - green) + _GREEN_RGB * green
    veg_rgb = veg_rgb * (1.0 - 0.7 * autumn) + _AUTUMN_RGB * (0.7 * autumn)
    veg_rgb = veg_rgb * (1.0 - 0.6 * spring) + _FRESH_RGB * (0.6 * spring)
    veg = np.clip((patch - (1.0 - reg.vegetation_cover[region])) * 4.0 + 0.5, 0.0, 1.0)
    albedo = albedo + (veg_rgb * (0.8 + 0.4 * tex) - albedo) * veg
    if urban > 0.3:
        paved = np.clip((0.6 * urban - patch) * 5.0 + 0.5, 0.0, 1.0)
        albedo = albedo + (_PAVED_RGB - albedo) * paved
    # The region's street/field grid: a along the avenues (the grid bearing), c across them (bearing + 90).
    bearing = float(reg.grid_bearing_deg[region])
    rel = np.deg2rad(sun_az - bearing)
    sb, cb = np.sin(np.deg2rad(bearing)), np.cos(np.deg2rad(bearing))
    lc, la = (float(v) for v in reg.grid_spacing_m[region])
    tw, fw = cfg.grid_wall_width_m, cfg.grid_footway_m
    grid_a = east_m * sb + north_m * cb + grid_off[0] * la
    grid_c = east_m * cb - north_m * sb + grid_off[1] * lc
    a_mod, c_mod = np.mod(grid_a, la), np.mod(grid_c, lc)
    near = 1.0 - _smoothstep(0.7 * cfg.grid_fade_m, 1.2 * cfg.grid_fade_m, z_row)  # (G, 1): 1 near, 0 beyond the block
    is_wall = (c_mod < tw) | (a_mod < tw)
    is_avenue_way = ~is_wall & (c_mod < tw + fw)  # right of each avenue wall, walking along the bearing
    is_cross_way = ~is_wall & ~is_avenue_way & (a_mod < tw + fw)  # beyond each cross wall
    w_wall, w_avenue, w_cross = near * is_wall, near * is_avenue_way, near * is_cross_way
    kerb = reg.kerb_rgb[region]
    albedo = (albedo * (1.0 - w_wall - w_avenue - w_cross)[..., None] + kerb * w_wall[..., None]
              + _AVENUE_WAY_RGB * w_avenue[..., None] + _CROSS_WAY_RGB * w_cross[..., None])
    # Wall shadows: a ground point is shaded when, walking towards the sun, it meets a wall within the shadow's
    # reach (wall height / tan elevation) times the sun's component across that wall; wall tops stay lit.
    grid_shade = np.zeros((height - n_sky, width))
    grid_shadow_len = 0.0
    if direct > 0.0 and sun_el > 0.5 and n_sky < height:
        grid_shadow_len = float(min(reg.grid_wall_height_m[region] / np.tan(np.deg2rad(sun_el)), 200.0))

        def band(coord_mod, period, component):
            ahead = np.mod(-coord_mod, period) if component >= 0 else np.mod(coord_mod - tw, period)
            reach = grid_shadow_len * abs(component)
            return np.clip((reach - ahead) / (0.04 + 0.01 * reach) + 0.5, 0.0, 1.0)

        shade_c = band(c_mod, lc, float(np.sin(rel)))  # avenue walls: the sun's component across them
        shade_a = band(a_mod, la, float(np.cos(rel)))  # cross walls: its component along the avenues
        grid_shade = near * np.maximum(shade_c, shade_a) * ~is_wall
    # The footways are cambered: each slopes down away from its wall by footway_tilt_deg, the avenues' towards +c,
    # the cross ways' towards +a, so the direct sun on them goes with the sun's side of the grid (Lambert).
    tilt = np.deg2rad(cfg.footway_tilt_deg)
    sin_e = max(float(np.sin(np.deg2rad(sun_el))), 1e-3)
    cos_e = float(np.cos(np.deg2rad(sun_el)))
    lit_avenue = max(np.sin(tilt) * cos_e * float(np.sin(rel)) + np.cos(tilt) * sin_e, 0.0) / sin_e
    lit_cross = max(np.sin(tilt) * cos_e * float(np.cos(rel)) + np.cos(tilt) * sin_e, 0.0) / sin_e
    direct_gain = 1.0 + w_avenue * (min(lit_avenue, 4.0) - 1.0) + w_cross * (min(lit_cross, 4.0) - 1.0)
    if snow > 0.0:
        snow_mask = np.clip((snow * 1.3 - 1.0 + 0.5 * tex + 0.5 * patch) * 5.0, 0.0, 1.0)
        snow_mask = snow_mask * (1.0 - 0.5 * (near * is_wall))[..., None]  # wall tops shed some snow
        albedo = albedo + (_SNOW_RGB - albedo) * snow_mask
    haze = (1.0 - np.exp(z_row / -visibility_m))[..., None]  # (G, 1, 1)

    # ---- objects: placement in the camera frame, drawn far to near ----
    kinds = np.zeros(0, dtype=np.int64)
    heights = np.zeros(0)
    shadow_len = np.zeros(0)
    shade = np.zeros((height - n_sky, width))
    obj_pix = None
    if n_obj > 0:
        u = u_obj[:, :n_obj]
        z0 = cfg.object_distance_m[0] + (cfg.object_distance_m[1] - cfg.object_distance_m[0]) * u[0] ** 1.5
        x0 = (u[1] * 2.0 - 1.0) * z0 * (width / 2.0 / f_px) * 1.1
        building = u[2] < 0.05 + 0.9 * urban
        conifer = ~building & (u[3] < reg.conifer_share[region])
        bh = reg.building_height_m[region]
        th = reg.tree_height_m[region]
        bw = reg.building_width_m[region]
        heights = np.where(building, bh[0] + (bh[1] - bh[0]) * u[4], th[0] + (th[1] - th[0]) * u[4])
        radius = np.where(building, (bw[0] + (bw[1] - bw[0]) * u[5]) / 2.0, heights * np.where(conifer, 0.22, 0.32))
        trunk_h = np.where(building, 0.0, heights * np.where(conifer, 0.12, 0.35))
        order = np.argsort(-z0)
        z0, x0, building, conifer, heights, radius, trunk_h = (
            a[order] for a in (z0, x0, building, conifer, heights, radius, trunk_h)
        )
        kinds = np.where(building, 0, np.where(conifer, 1, 2))
        wall = reg.wall_rgb[region][wall_pick[:n_obj][order]] * (0.9 + 0.2 * u[6][order])[:, None]

        # Shadows: the footprint swept H / tan(elevation) away from the sun, a capsule on the ground. A tree's
        # crown shadow starts trunk_h / tan(elevation) out; nearer the base only its thin trunk shades the ground.
        shadow_len = np.minimum(heights / np.tan(np.deg2rad(sun_el)), 400.0) if sun_el > 0.5 else np.zeros(n_obj)
        if direct > 0.0 and sun_el > 0.5 and n_sky < height:
            crown_start = (np.where(building, 0.0, trunk_h / heights) * shadow_len)[:, None, None]
            seg_len = np.maximum(shadow_len, 1e-6)[:, None, None]
            wz = z_row[None] - z0[:, None, None]  # (k, G, 1)
            wx = gx[None] - x0[:, None, None]  # (k, G, W)
            t = np.clip(wz * shadow_dir[0] + wx * shadow_dir[1], 0.0, seg_len)  # metres along the shadow
            dz = wz - t * shadow_dir[0]
            dx = wx - t * shadow_dir[1]
            r_body = np.where(building, radius * 1.1, radius * 0.9)[:, None, None]
            r_sh = np.where(t >= crown_start, r_body, 0.2)
            soft = (0.05 * radius + 0.01 * shadow_len + 0.05)[:, None, None]
            shade = np.clip((r_sh - np.sqrt(dz * dz + dx * dx)) / soft + 0.5, 0.0, 1.0).max(axis=0)

        # Screen-space silhouettes: per object and row, the half-width in pixels of what covers it.
        u0 = width / 2.0 + f_px * x0 / z0
        vb = v_h + f_px * cfg.camera_height_m / z0
        vt = v_h - f_px * (heights - cfg.camera_height_m) / z0
        v_crown_bottom = vb - f_px * trunk_h / z0
        hw = f_px * radius / z0
        rr = rows[None, :]
        t_body = (rr - vt[:, None]) / np.maximum(v_crown_bottom - vt, 1e-6)[:, None]  # 0 at top, 1 at crown base
        inside = (t_body >= 0.0) & (t_body <= 1.0)
        ellipse = np.sqrt(np.clip(1.0 - (2.0 * t_body - 1.0) ** 2, 0.0, 1.0))
        profile = np.where(building[:, None], 1.0, np.where(conifer[:, None], t_body, ellipse))
        body_hw = np.where(inside, profile * hw[:, None], -1.0)
        in_trunk = (rr > v_crown_bottom[:, None]) & (rr < vb[:, None]) & ~building[:, None]
        trunk_hw = np.where(in_trunk, np.maximum(f_px * 0.18 / z0, 0.5)[:, None], -1.0)
        du = cols[None, :] - u0[:, None]  # (k, W)
        cover_mask = np.abs(du)[:, None, :] < np.maximum(body_hw, trunk_hw)[:, :, None]  # (k, H, W)
        top = n_obj - 1 - np.argmax(cover_mask[::-1], axis=0)  # the nearest object covering each pixel
        pix = np.nonzero(cover_mask.any(axis=0))
        if len(pix[0]):
            k = top[pix]
            r_p, c_p = pix[0] + 0.5, pix[1] + 0.5
            du_p = du[k, pix[1]]
            is_trunk = np.abs(du_p) >= body_hw[k, pix[0]]
            bld = building[k]
            # Surface normal in the camera frame (right, up, towards camera): facades face the camera, crowns bulge.
            nx = np.where(bld, 0.0, np.clip(du_p / np.maximum(hw[k], 1e-6), -1.0, 1.0))
            ny = np.where(bld, 0.0, np.clip(1.0 - 2.0 * t_body[k, pix[0]], -1.0, 1.0) * 0.8)
            nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.0, 1.0))
            lambert = np.clip(nx * s_right + ny * s_up - nz * s_fwd, 0.0, None)
            irr = lambert[:, None] * (sun_rgb * direct * 1.1) + ambient_irr * 0.6
            broadleaf_rgb = veg_rgb * (0.4 + 0.6 * green) + _BARE_RGB * (0.6 - 0.6 * green)
            crown_rgb = np.where(conifer[k][:, None], _CONIFER_RGB, broadleaf_rgb)
            crown_rgb = crown_rgb * (1.0 - 0.6 * snow) + _SNOW_RGB * (0.6 * snow)
            if spring > 0.0:  # blossom on broadleaf crowns while the leaves come out
                fleck = np.mod(np.sin(pix[0] * 12.9898 + pix[1] * 78.233 + k * 3.7) * 43758.5453, 1.0)
                bloom = (fleck < 0.35 * spring) & ~conifer[k]
                crown_rgb = np.where(bloom[:, None], _BLOSSOM_RGB, crown_rgb)
            rgb = np.where(bld[:, None], wall[k], np.where(is_trunk[:, None], _TRUNK_RGB, crown_rgb)) * irr
            # Windows on facades: dark glass by day, some lit at night.
            lx = (c_p - (u0[k] - hw[k])) * z0[k] / f_px
            ly = (vb[k] - r_p) * z0[k] / f_px
            storey = reg.window_rows_m[region]
            lx_m, ly_m = np.mod(lx, 2.6), np.mod(ly, storey)
            win = bld & (lx_m > 0.8) & (lx_m < 1.9) & (ly_m > 1.0) & (ly_m < 2.2) & (ly > 1.0)
            cell = np.floor(lx / 2.6) * 12.9898 + np.floor(ly / storey) * 78.233 + k * 3.7
            lit = (np.mod(np.sin(cell) * 43758.5453, 1.0) < 0.45) & win
            rgb = np.where(win[:, None], lum * away_rgb * 0.25, rgb) + (lit * night * 0.05)[:, None] * _LAMP_RGB
            obj_haze = (1.0 - np.exp(-z0[k] / visibility_m))[:, None]
            obj_pix = pix
            obj_rgb = rgb + (horizon_lum[pix[1]] - rgb) * obj_haze

    # ---- ground lighting and haze, then the objects on top ----
    lamps = (urban * night * 0.008) * np.exp(z_row / -60.0)[..., None] * _LAMP_RGB
    shade_all = np.maximum(shade, grid_shade)
    ground = albedo * (direct_irr * (direct_gain * (1.0 - shade_all))[..., None] + ambient_irr) + lamps
    img[n_sky:] = ground + (horizon_lum[None, :, :] - ground) * haze
    ground_pixels = np.ones((height - n_sky, width), dtype=bool)
    if obj_pix is not None:
        img[obj_pix] = obj_rgb
        on_ground = obj_pix[0] >= n_sky
        ground_pixels[obj_pix[0][on_ground] - n_sky, obj_pix[1][on_ground]] = False
    n_ground = int(ground_pixels.sum())
    shadow_fraction = float((shade[ground_pixels] > 0.5).sum() / n_ground) if n_ground else 0.0
    near_ground = ground_pixels & (z_row < cfg.grid_fade_m)
    n_near = int(near_ground.sum())
    grid_fraction = float((grid_shade[near_ground] > 0.5).sum() / n_near) if n_near else 0.0

    # ---- camera: auto exposure (limited), white balance, tone curve, vignetting, noise ----
    metered = float(np.minimum(img, 1.5).reshape(-1, 3).mean(axis=0) @ _LUMA)
    gain = float(np.clip(cfg.target_luminance / max(metered, 1e-6), 0.4, cfg.max_exposure_gain) * 2.0**exposure_ev)
    x = img * (gain * white_balance) * vignette
    x = 1.0 - np.exp(-1.6 * x)  # soft shoulder: the sun saturates, highlights roll off
    x = np.sqrt(np.clip(x * 1.004 - 0.004, 0.0, 1.0))  # black level, then a gamma-2 display curve
    x = x + noise * (cfg.sensor_noise * (1.0 + 2.0 * gain / cfg.max_exposure_gain))
    image = np.clip(x * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)

    sun_pixel = None
    if np.cos(d_az) > 0.05:
        sun_row = v_h - f_px * np.tan(np.deg2rad(sun_el)) / np.cos(d_az)
        sun_pixel = (float(sun_row), float(width / 2.0 + f_px * np.tan(d_az)))
    info = SceneInfo(
        sun_elevation_deg=sun_el,
        sun_azimuth_deg=sun_az,
        heading_deg=heading,
        pitch_deg=pitch_deg,
        region_id=region,
        cloud_cover=float(cover),
        direct_sun=direct,
        snow_cover=snow,
        greenness=green,
        exposure_gain=gain,
        shadow_length_per_height=float(1.0 / np.tan(np.deg2rad(sun_el))) if sun_el > 0 else float("inf"),
        shadow_azimuth_deg=(sun_az + 180.0) % 360.0,
        object_height_m=heights,
        object_shadow_length_m=shadow_len,
        object_is_building=kinds == 0,
        shadow_ground_fraction=shadow_fraction,
        sun_pixel_rowcol=sun_pixel,
        grid_bearing_deg=bearing,
        sun_azimuth_rel_grid_deg=float(np.mod(sun_az - bearing, 360.0)),
        grid_shadow_length_m=grid_shadow_len,
        grid_shadow_fraction=grid_fraction,
        spring=spring,
        autumn=autumn,
        smoke=smoke,
        layers=None if not return_layers else {
            "first_ground_row": n_sky,
            "distance_m": np.broadcast_to(z_row, (height - n_sky, width)).copy(),
            "grid_a_m": grid_a, "grid_c_m": grid_c,
            "grid_spacing_m": (lc, la), "wall_width_m": tw,
            "is_wall": is_wall, "is_avenue_way": is_avenue_way, "is_cross_way": is_cross_way,
            "grid_shade": grid_shade, "object_shade": shade, "ground_visible": ground_pixels,
        },
    )
    return image, info
