"""SunWorld's renderer: pixels that follow the sun and the season, and the place-dependent time cue: shadows that
fall across the region's street grid at the sun's azimuth minus the grid's bearing."""

from __future__ import annotations

import numpy as np
import pytest

from gtloc_engine.synth import RenderConfig, SunWorld, WorldConfig, render_photo, solar_position, utc_offset_min_for_lon

LUMA = np.array([0.2126, 0.7152, 0.0722])
NO_OBJECTS = RenderConfig(max_objects=0)  # buildings' and trees' own shadows would hide the grid's


@pytest.fixture(scope="module")
def world() -> SunWorld:
    return SunWorld(WorldConfig(seed=0))


def _local_time_at_elevation(lat_deg, lon_deg, date, elevation_deg, *, morning=False):
    """Local clock time on `date` when the sun crosses elevation_deg (afternoon unless morning), to the second."""
    offset = utc_offset_min_for_lon(lon_deg)
    day = np.datetime64(date, "s")
    secs = np.arange(0, 86400, 30)
    sun = solar_position(lat_deg, lon_deg, day + secs.astype("timedelta64[s]"), offset)
    noon = int(np.argmax(sun.elevation_deg))
    half = slice(0, noon + 1) if morning else slice(noon, None)
    idx = np.arange(len(secs))[half][np.argmin(np.abs(sun.elevation_deg[half] - elevation_deg))]
    return day + np.timedelta64(int(secs[idx]), "s"), offset


def _solar_noon(lat_deg, lon_deg, date):
    offset = utc_offset_min_for_lon(lon_deg)
    local = np.datetime64(f"{date}T12:00:00", "s")
    for _ in range(3):  # 4 minutes of clock per degree of hour angle
        hour_angle_deg = float(solar_position(lat_deg, lon_deg, local, offset).hour_angle_deg)
        local = local - np.timedelta64(int(round(hour_angle_deg * 240)), "s")
    return local, offset



# ---- rendering -------------------------------------------------------------------------------------------------


def test_render_returns_uint8_of_any_size_and_is_deterministic(world):
    t, off = _solar_noon(40.0, 10.0, "2019-05-01")
    a, info = render_photo(world, 40.0, 10.0, t, off, np.random.default_rng(3))
    b, _ = render_photo(world, 40.0, 10.0, t, off, np.random.default_rng(3))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    wide, _ = render_photo(world, 40.0, 10.0, t, off, np.random.default_rng(3), size=(48, 96))
    assert wide.shape == (48, 96, 3)
    assert info.sun_elevation_deg == pytest.approx(90 - abs(40.0 - 15.0), abs=1.0)  # early-May declination ~15 deg


@pytest.mark.parametrize(
    "lat_deg, lon_deg, date", [(45.0, 10.0, "2019-06-21"), (-33.0, 151.0, "2021-01-10"), (5.0, -60.0, "2016-02-29")]
)
def test_night_is_much_darker_than_noon_at_the_same_place(world, lat_deg, lon_deg, date):
    noon, off = _solar_noon(lat_deg, lon_deg, date)
    midnight = noon + np.timedelta64(12, "h")
    for seed in range(4):
        day_img, day = render_photo(world, lat_deg, lon_deg, noon, off, np.random.default_rng(seed))
        night_img, night = render_photo(world, lat_deg, lon_deg, midnight, off, np.random.default_rng(seed))
        assert day.sun_elevation_deg > 20 and night.sun_elevation_deg < -18
        assert night_img.mean() < 0.3 * day_img.mean()


def test_twilight_sits_between_night_and_day_in_brightness(world):
    lat, lon, date = 48.0, 11.0, "2020-04-10"
    t_day, off = _local_time_at_elevation(lat, lon, f"{date}", 30.0)
    t_dusk, _ = _local_time_at_elevation(lat, lon, f"{date}", -4.0)
    t_night, _ = _local_time_at_elevation(lat, lon, f"{date}", -30.0)
    def mean_brightness(t):
        images = [render_photo(world, lat, lon, t, off, np.random.default_rng(s), cloud_cover=0.1)[0] for s in range(4)]
        return np.mean([img.mean() for img in images])

    means = [mean_brightness(t) for t in (t_night, t_dusk, t_day)]
    assert means[0] < means[1] < means[2]


def test_sun_disc_is_drawn_where_the_geometry_puts_it(world):
    t, off = _local_time_at_elevation(40.0, 10.0, "2019-06-21", 12.0)
    sun = solar_position(40.0, 10.0, t, off)
    img, info = render_photo(world, 40.0, 10.0, t, off, np.random.default_rng(0), size=128,
                             heading_deg=float(sun.azimuth_deg) - 15.0, cloud_cover=0.0)
    row, col = info.sun_pixel_rowcol
    assert col > 64  # the sun is 15 deg to the right of where the camera looks
    r, c = int(row), int(col)
    patch = img[max(r - 2, 0) : r + 3, c - 2 : c + 3].astype(float)
    assert patch.mean() > 230 and patch.mean() > img.mean() + 60  # the brightest thing in the frame
    # Turned away from the sun: no disc in front of the camera.
    _, away = render_photo(world, 40.0, 10.0, t, off, np.random.default_rng(0),
                           heading_deg=float(sun.azimuth_deg) + 180.0)
    assert away.sun_pixel_rowcol is None


def test_shadows_lengthen_as_the_sun_gets_lower(world):
    lat, lon, date = 40.0, -100.0, "2019-06-21"  # countryside (Kansas): trees and low houses
    elevations = [65.0, 45.0, 30.0, 20.0, 10.0]
    fractions = []
    for seed in range(1, 9):
        lengths, fr = [], []
        for el in elevations:
            t, off = _local_time_at_elevation(lat, lon, date, el)
            sun = solar_position(lat, lon, t, off)
            # Facing the sun, shadows point back towards the camera and are never hidden behind their casters.
            _, info = render_photo(world, lat, lon, t, off, np.random.default_rng(seed), cloud_cover=0.0,
                                   heading_deg=float(sun.azimuth_deg))
            if len(info.object_height_m):
                ratio = info.object_shadow_length_m / info.object_height_m
                assert np.allclose(ratio, 1.0 / np.tan(np.deg2rad(info.sun_elevation_deg)))
                assert info.shadow_azimuth_deg == pytest.approx((float(sun.azimuth_deg) + 180.0) % 360.0)
            lengths.append(info.shadow_length_per_height)
            fr.append(info.shadow_ground_fraction)
        assert np.all(np.diff(lengths) > 0)
        fractions.append(fr)
    mean_fraction = np.mean(fractions, axis=0)
    # In the image: more of the ground is in shadow under a low sun than under a high one.
    assert mean_fraction[2] > 1.5 * mean_fraction[0]
    assert mean_fraction[3] > mean_fraction[0]


def test_clouds_dim_the_sun_and_the_shadows(world):
    t, off = _solar_noon(45.0, 10.0, "2019-06-21")
    _, clear = render_photo(world, 45.0, 10.0, t, off, np.random.default_rng(2), cloud_cover=0.0)
    _, overcast = render_photo(world, 45.0, 10.0, t, off, np.random.default_rng(2), cloud_cover=1.0)
    assert clear.direct_sun > 0.95 and overcast.direct_sun < 0.15


def _ground_to_sky_brightness(world, lat_deg, lon_deg, local, offset, seed):
    sun = solar_position(lat_deg, lon_deg, local, offset)
    img, info = render_photo(world, lat_deg, lon_deg, local, offset, np.random.default_rng(seed), cloud_cover=0.2,
                             heading_deg=float(sun.azimuth_deg) + 150.0)
    grey = img.astype(float).mean(axis=-1)
    return grey[-12:].mean() / max(grey[:12].mean(), 1.0), info


@pytest.mark.parametrize(
    "lat_deg, lon_deg, winter, summer",
    [(62.0, 20.0, "2019-01-15", "2019-07-15"), (-62.0, -60.0, "2019-07-15", "2019-01-15")],
)
def test_snow_shows_in_local_winter_only_hemispheres_reversed(world, lat_deg, lon_deg, winter, summer):
    # Same place, same scene and the same sun elevation (winter noon vs a summer morning): only the season differs.
    t_winter, off = _solar_noon(lat_deg, lon_deg, winter)
    el = float(solar_position(lat_deg, lon_deg, t_winter, off).elevation_deg)
    t_summer, _ = _local_time_at_elevation(lat_deg, lon_deg, summer, el, morning=True)
    ratios_w, ratios_s = [], []
    for seed in range(6):
        rw, info_w = _ground_to_sky_brightness(world, lat_deg, lon_deg, t_winter, off, seed)
        rs, info_s = _ground_to_sky_brightness(world, lat_deg, lon_deg, t_summer, off, seed)
        assert info_w.snow_cover > 0.9 and info_s.snow_cover == 0.0
        ratios_w.append(rw)
        ratios_s.append(rs)
    assert np.mean(ratios_w) > np.mean(ratios_s) + 0.1  # snow-covered ground is nearly as bright as the sky


def test_the_tropical_wet_season_is_greener_than_the_dry_one(world):
    # Photo places between 8 and 20 deg from the equator: the wet season is August in the north, February south.
    s = world.sample(600, np.random.default_rng(21))
    pick = np.flatnonzero((np.abs(s.lat_deg) > 8) & (np.abs(s.lat_deg) < 20))[:24]
    assert len(pick) == 24

    def greenness(i, date):
        t, off = _solar_noon(s.lat_deg[i], s.lon_deg[i], date)
        img, _ = render_photo(world, s.lat_deg[i], s.lon_deg[i], t, off, np.random.default_rng(int(i)), cloud_cover=0.2)
        g = img[-20:].reshape(-1, 3).astype(float)
        return np.mean(g[:, 1] / np.maximum(g.sum(axis=1), 1.0))

    wet = [greenness(i, "2019-08-20" if s.lat_deg[i] > 0 else "2019-02-15") for i in pick]
    dry = [greenness(i, "2019-02-15" if s.lat_deg[i] > 0 else "2019-08-20") for i in pick]
    assert np.mean(np.array(wet) > np.array(dry)) > 0.8 and np.mean(wet) > np.mean(dry) + 0.004


# ---- the street grid: where shadows fall across it -------------------------------------------------------------


def _shadow_agreement(layers: dict, shadow_length_m: float, theta_deg: float) -> float:
    """Share of near, plain ground pixels whose drawn wall shadow agrees with an independent ray march: from the pixel
    towards direction theta (0 = along the avenues, 90 = across them to the right) for shadow_length_m, shaded iff
    the path meets a wall ([0, wall width) modulo the spacing, on either axis)."""
    lc, la = layers["grid_spacing_m"]
    tw = layers["wall_width_m"]
    use = (layers["distance_m"] < 7.0) & layers["ground_visible"] & ~layers["is_wall"] & (layers["object_shade"] < 0.05)
    assert use.sum() > 200
    a, c = layers["grid_a_m"][use], layers["grid_c_m"][use]
    drawn = layers["grid_shade"][use] > 0.5
    steps = np.linspace(0.02, shadow_length_m, 80)
    th = np.deg2rad(theta_deg)
    pa = a[:, None] + steps[None, :] * np.cos(th)
    pc = c[:, None] + steps[None, :] * np.sin(th)
    hit = ((np.mod(pa, la) < tw) | (np.mod(pc, lc) < tw)).any(axis=1)
    return float(np.mean(hit == drawn))


def _recover_rel_azimuth(layers: dict, shadow_length_m: float) -> tuple[float, float]:
    """The direction towards the sun relative to the grid that best explains the drawn wall shadows (independent of
    the renderer's formula, see _shadow_agreement); returns (theta in degrees, agreement)."""
    coarse = np.arange(0.0, 360.0, 3.0)
    scores = np.array([_shadow_agreement(layers, shadow_length_m, t) for t in coarse])
    fine = coarse[np.argmax(scores)] + np.arange(-3.0, 3.01, 0.25)
    fine_scores = np.array([_shadow_agreement(layers, shadow_length_m, t) for t in fine])
    return float(fine[np.argmax(fine_scores)] % 360.0), float(fine_scores.max())


def _angle_diff(a, b):
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _sunny_scenes(world, n, seed):
    """Random photo captures with the sun between 25 and 60 deg, rendered at random headings under a clear sky.
    (Lower, the shadows of neighbouring walls can meet and put the whole block in shade: that shadow cue saturates,
    while the footways' camber still shows the sun's side.)"""
    rng = np.random.default_rng(seed)
    s = world.sample(8 * n, rng)
    el = solar_position(s.lat_deg, s.lon_deg, s.local_datetime, s.utc_offset_min).elevation_deg
    keep = np.flatnonzero((el > 25.0) & (el < 60.0))[:n]
    assert len(keep) == n
    for i in keep:
        img, info = render_photo(world, s.lat_deg[i], s.lon_deg[i], s.local_datetime[i], int(s.utc_offset_min[i]),
                                 np.random.default_rng([seed, int(i)]), cloud_cover=0.0, return_layers=True,
                                 config=NO_OBJECTS)
        yield s, i, img, info


def test_grid_shadows_fall_at_the_sun_azimuth_minus_the_grid_bearing(world):
    errors = []
    for s, i, _, info in _sunny_scenes(world, 30, seed=11):
        assert info.grid_bearing_deg == pytest.approx(float(world.regions.grid_bearing_deg[s.region_id[i]]))
        assert info.sun_azimuth_rel_grid_deg == pytest.approx((info.sun_azimuth_deg - info.grid_bearing_deg) % 360)
        wall_h = float(world.regions.grid_wall_height_m[s.region_id[i]])
        assert info.grid_shadow_length_m == pytest.approx(wall_h / np.tan(np.deg2rad(info.sun_elevation_deg)))
        theta, agree = _recover_rel_azimuth(info.layers, info.grid_shadow_length_m)
        assert agree > 0.95
        errors.append(_angle_diff(theta, info.sun_azimuth_rel_grid_deg))
        # With the place's grid bearing, the shadows give the sun's compass direction.
        assert _angle_diff(theta + info.grid_bearing_deg, info.sun_azimuth_deg) == pytest.approx(errors[-1], abs=1e-6)
    errors = np.array(errors)
    assert np.median(errors) < 2.0 and np.quantile(errors, 0.9) < 5.0, np.round(errors, 1)


def test_a_wrong_sun_direction_does_not_explain_the_shadows(world):
    # The fit above is discriminating: a sun turned by 90 or 180 deg explains the drawn shadows far worse.
    for _, _, _, info in _sunny_scenes(world, 6, seed=12):
        rel, length = info.sun_azimuth_rel_grid_deg, info.grid_shadow_length_m
        right = _shadow_agreement(info.layers, length, rel)
        assert right > 0.95
        for turn in (90.0, 180.0, 270.0):
            assert _shadow_agreement(info.layers, length, rel + turn) < right - 0.05


def test_camera_heading_turns_the_frame_but_not_the_cue(world):
    lat, lon, off = 48.85, 2.35, 120
    t = np.datetime64("2019-06-21T09:30:00")
    infos = []
    for heading in (0.0, 95.0, 200.0, 310.0):
        _, info = render_photo(world, lat, lon, t, off, np.random.default_rng(4), cloud_cover=0.0,
                               heading_deg=heading, return_layers=True, config=NO_OBJECTS)
        infos.append(info)
    thetas = [_recover_rel_azimuth(i.layers, i.grid_shadow_length_m)[0] for i in infos]
    for theta in thetas:
        assert _angle_diff(theta, infos[0].sun_azimuth_rel_grid_deg) < 4.0
    # Where the sun is in the frame changes with the heading (what the cue does not depend on).
    in_frame = [(i.sun_azimuth_deg - i.heading_deg) % 360 for i in infos]
    assert len({round(x) for x in in_frame}) == 4


def test_morning_and_afternoon_at_equal_sun_elevation_cast_different_grid_shadows(world):
    # The old SunWorld's blind spot: the same elevation before and after noon. The grid tells them apart.
    lat, lon, date = 40.4168, -3.7038, "2021-05-10"
    offset = 120  # Madrid, CEST
    day = np.datetime64(date, "s")
    secs = np.arange(0, 86400, 30)
    el = solar_position(lat, lon, day + secs.astype("timedelta64[s]"), offset).elevation_deg
    noon = int(np.argmax(el))
    t_am = day + np.timedelta64(int(secs[np.argmin(np.abs(el[:noon] - 30.0))]), "s")
    t_pm = day + np.timedelta64(int(secs[noon + np.argmin(np.abs(el[noon:] - 30.0))]), "s")
    _, am = render_photo(world, lat, lon, t_am, offset, np.random.default_rng(1), cloud_cover=0.0, return_layers=True,
                         config=NO_OBJECTS)
    _, pm = render_photo(world, lat, lon, t_pm, offset, np.random.default_rng(1), cloud_cover=0.0, return_layers=True,
                         config=NO_OBJECTS)
    assert am.sun_elevation_deg == pytest.approx(pm.sun_elevation_deg, abs=0.3)
    theta_am, _ = _recover_rel_azimuth(am.layers, am.grid_shadow_length_m)
    theta_pm, _ = _recover_rel_azimuth(pm.layers, pm.grid_shadow_length_m)
    assert _angle_diff(theta_am, theta_pm) > 90.0  # the sun moved from east to west across the grid
    assert _angle_diff(theta_am + am.grid_bearing_deg, am.sun_azimuth_deg) < 4.0
    assert _angle_diff(theta_pm + pm.grid_bearing_deg, pm.sun_azimuth_deg) < 4.0


def test_wall_shadows_darken_the_pixels(world):
    ratios = []
    for _, _, img, info in _sunny_scenes(world, 12, seed=13):
        lay = info.layers
        rows = slice(lay["first_ground_row"], img.shape[0])
        luma = (img[rows].astype(float) / 255.0) ** 2 @ LUMA  # undo the display gamma, roughly
        plain = (lay["distance_m"] < 7.0) & lay["ground_visible"] & ~lay["is_wall"] & ~lay["is_avenue_way"] \
            & ~lay["is_cross_way"] & (lay["object_shade"] < 0.05)
        shaded, lit = plain & (lay["grid_shade"] > 0.95), plain & (lay["grid_shade"] < 0.05)
        if shaded.sum() >= 10 and lit.sum() >= 10:
            ratios.append(luma[shaded].mean() / luma[lit].mean())
    assert len(ratios) >= 6 and np.median(ratios) < 0.6, np.round(ratios, 2)
