"""SunWorld's planet and renderer: land, sampling, climate, and pixels that follow the sun and the season."""

from __future__ import annotations

import numpy as np
import pytest

from gtloc_engine.synth import SunWorld, WorldConfig, climate_at, render_photo, solar_position, utc_offset_min_for_lon


@pytest.fixture(scope="module")
def world() -> SunWorld:
    return SunWorld(WorldConfig(seed=0))


@pytest.fixture(scope="module")
def samples(world):
    return world.sample(3000, np.random.default_rng(1))


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


# ---- the planet ----------------------------------------------------------------------------------------------


def test_land_covers_about_the_configured_share_of_the_surface(world):
    v = np.random.default_rng(2).normal(size=(20000, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    lat, lon = np.degrees(np.arcsin(v[:, 2])), np.degrees(np.arctan2(v[:, 1], v[:, 0]))
    share = world.is_land(lat, lon).mean()
    assert 0.27 < share < 0.33
    # Land comes in continents, not salt-and-pepper: neighbours 1 deg apart mostly agree.
    land = world.is_land(lat, lon)
    assert (land == world.is_land(np.clip(lat + 1.0, -90, 90), lon)).mean() > 0.95


def test_samples_lie_on_land_in_both_hemispheres(world, samples):
    assert world.is_land(samples.lat_deg, samples.lon_deg).all()
    assert (samples.lat_deg > 0).mean() > 0.2 and (samples.lat_deg < 0).mean() > 0.2
    assert np.all(np.abs(samples.lat_deg) <= 90) and np.all(np.abs(samples.lon_deg) <= 180)
    assert np.array_equal(samples.region_id, world.region_of(samples.lat_deg, samples.lon_deg))
    assert len(np.unique(samples.region_id)) > 150  # hundreds of regions, all in use


def test_sampling_is_deterministic_for_a_seed(world):
    a = SunWorld(WorldConfig(seed=0)).sample(200, np.random.default_rng(5))
    b = world.sample(200, np.random.default_rng(5))
    for field in ("lat_deg", "lon_deg", "local_datetime", "utc_offset_min", "region_id"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    other = SunWorld(WorldConfig(seed=1))
    assert not np.array_equal(other.regions.centre_lat_deg, world.regions.centre_lat_deg)


def test_samples_span_every_month_hour_and_year_with_clocks_from_longitude(samples):
    local = samples.local_datetime
    months = local.astype("datetime64[M]").astype(np.int64) % 12
    hours = (local - local.astype("datetime64[D]")).astype(np.int64) // 3600
    years = local.astype("datetime64[Y]").astype(np.int64) + 1970
    assert set(months) == set(range(12))
    assert set(hours) == set(range(24))
    assert set(years) == set(range(2015, 2024))
    assert np.array_equal(samples.utc_offset_min, utc_offset_min_for_lon(samples.lon_deg))


def test_more_daylight_than_night_but_some_of_each(samples):
    el = solar_position(samples.lat_deg, samples.lon_deg, samples.local_datetime, samples.utc_offset_min).elevation_deg
    day, twilight, night = (el > 0).mean(), ((el <= 0) & (el > -12)).mean(), (el <= -12).mean()
    assert day > 0.7
    assert 0.02 < twilight < 0.25
    assert 0.005 < night < day / 4


# ---- climate --------------------------------------------------------------------------------------------------


def test_tropics_never_snow():
    lat = np.linspace(-23.4, 23.4, 47)[:, None, None]
    doy = np.arange(1, 367)[None, :, None]
    alt = np.array([0.0, 1000.0, 2500.0])[None, None, :]
    assert climate_at(lat, doy, alt).snow_cover.max() == 0.0


@pytest.mark.parametrize("lat_deg", [50.0, 62.0, 70.0])
def test_snow_in_local_winter_not_summer_and_hemispheres_reversed(lat_deg):
    january, july = 15, 196
    north_winter, north_summer = climate_at(lat_deg, january), climate_at(lat_deg, july)
    south_winter, south_summer = climate_at(-lat_deg, july), climate_at(-lat_deg, january)
    assert north_winter.snow_cover > 0.5 and south_winter.snow_cover > 0.5
    assert north_summer.snow_cover == 0.0 and south_summer.snow_cover == 0.0
    assert north_summer.greenness > north_winter.greenness
    # Mirror images half a year apart.
    for doy in (1, 100, 200, 300):
        n, s = climate_at(lat_deg, doy), climate_at(-lat_deg, doy + 365.25 / 2)
        assert float(n.temperature_c) == pytest.approx(float(s.temperature_c), abs=1e-9)


def test_autumn_colours_come_after_summer_not_in_spring():
    assert climate_at(48.0, 290).autumn > 0.3 > climate_at(48.0, 110).autumn
    assert climate_at(-48.0, 110).autumn > 0.3 > climate_at(-48.0, 290).autumn


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
    lat, lon, date = 45.0, 10.0, "2019-06-21"
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
    assert mean_fraction[2] > 2.0 * mean_fraction[0]
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
    assert np.mean(ratios_w) > np.mean(ratios_s) + 0.2  # snow-covered ground is nearly as bright as the sky
