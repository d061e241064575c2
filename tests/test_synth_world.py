"""SunWorld on the real Earth: photos on land around towns, real time zones with DST, regions that tile the land,
and a climate whose seasons depend on latitude and hemisphere."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from gtloc_engine.geo import haversine_km
from gtloc_engine.synth import SunWorld, WorldConfig, climate_at, is_land, solar_position


@pytest.fixture(scope="module")
def world() -> SunWorld:
    return SunWorld(WorldConfig(seed=0))


@pytest.fixture(scope="module")
def samples(world):
    return world.sample(3000, np.random.default_rng(1))


@pytest.fixture(scope="module")
def globe():
    """The package's own land mask (its import decompresses 0.9 GB: once per module)."""
    from global_land_mask import globe

    return globe


# ---- land and towns -----------------------------------------------------------------------------------------


def test_land_mask_is_global_land_masks_own(globe):
    rng = np.random.default_rng(3)
    lat = np.concatenate([rng.uniform(-90, 90, 20000), [90.0, -90.0, 0.0, 0.0, 89.999, -89.999]])
    lon = np.concatenate([rng.uniform(-180, 180, 20000), [180.0, -180.0, 180.0, -180.0, 179.999, -179.999]])
    assert np.array_equal(is_land(lat, lon), globe.is_land(lat, lon))
    share = is_land(lat[:20000], lon[:20000]).mean()
    assert 0.25 < share < 0.40  # ~29% of the globe by area is land (lakes and Antarctica included)
    # A few places everyone knows.
    assert is_land(40.4168, -3.7038) and is_land(-33.8688, 151.2093) and is_land(27.7172, 85.3240)
    assert not is_land(0.0, -30.0) and not is_land(-40.0, -120.0) and not is_land(36.0, 18.0)  # open sea


def test_photos_lie_on_land_in_both_hemispheres(globe, samples):
    assert globe.is_land(samples.lat_deg, samples.lon_deg).all()
    assert (samples.lat_deg > 0).mean() > 0.6 and (samples.lat_deg < 0).mean() > 0.05  # most people live north
    assert np.all(np.abs(samples.lat_deg) <= 90) and np.all(np.abs(samples.lon_deg) <= 180)


def test_photos_are_taken_tens_of_km_from_towns_drawn_by_population(world, samples):
    towns = world.towns
    t = samples.town_index
    dist = haversine_km(np.stack([samples.lat_deg, samples.lon_deg], 1),
                        np.stack([towns.lat_deg[t], towns.lon_deg[t]], 1))
    # Offsets N(0, 20 km) north and east: a Rayleigh distance with median 23.5 km; coastal redraws shorten some.
    assert 15.0 < np.median(dist) < 30.0 and np.quantile(dist, 0.99) < 150.0
    # Big towns get photos in proportion to population ** 0.5.
    p = towns.population.astype(float) ** world.config.population_alpha
    p /= p.sum()
    big = towns.population >= 1_000_000
    expected = p[big].sum()
    observed = big[t].mean()
    sigma = np.sqrt(expected * (1 - expected) / len(t))
    assert abs(observed - expected) < 4 * sigma
    assert observed > 3 * big.mean()  # far more than a town drawn uniformly would give


def test_towns_are_geonames_towns_on_land(world):
    towns = world.towns
    assert len(towns) > 30000 and towns.population.min() >= 15000
    assert is_land(towns.lat_deg, towns.lon_deg).all()
    names = set(towns.name[towns.population > 5_000_000])
    assert {"Tokyo", "Shanghai", "Madrid"} <= names | set(towns.name[towns.population > 3_000_000])


# ---- clocks ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finder():
    from timezonefinder import TimezoneFinder

    return TimezoneFinder()


def test_clocks_run_in_each_places_iana_zone_with_dst(samples, finder):
    local = samples.local_datetime.astype("datetime64[s]").astype(object)
    dst_seen = 0
    for lat, lon, wall, offset, name in zip(samples.lat_deg[:800], samples.lon_deg[:800], local[:800],
                                            samples.utc_offset_min[:800], samples.zone_name[:800]):
        iana = finder.timezone_at_land(lng=float(lon), lat=float(lat))
        if iana is None:  # open sea by the zone polygons (a coast the land mask counts as land)
            assert name.startswith("nautical")
            continue
        assert name == iana
        assert ZoneInfo(iana).utcoffset(wall) == dt.timedelta(minutes=int(offset))
        january = ZoneInfo(iana).utcoffset(dt.datetime(wall.year, 1, 15, 12))
        july = ZoneInfo(iana).utcoffset(dt.datetime(wall.year, 7, 15, 12))
        dst_seen += dt.timedelta(minutes=int(offset)) != min(january, july)
    assert dst_seen > 40  # summer photos in DST zones are on summer time
    assert np.mean([n.startswith("nautical") for n in samples.zone_name]) < 0.01
    # Real zones, not longitude's: India is +5:30, China +8 all the way west.
    assert set(samples.utc_offset_min[np.char.startswith(samples.zone_name.astype(str), "Asia/Kolkata")]) == {330}
    assert (samples.utc_offset_min != np.round(samples.lon_deg / 15.0) * 60).mean() > 0.3


def test_samples_span_every_month_hour_and_year(samples):
    local = samples.local_datetime
    months = local.astype("datetime64[M]").astype(np.int64) % 12
    hours = (local - local.astype("datetime64[D]")).astype(np.int64) // 3600
    years = local.astype("datetime64[Y]").astype(np.int64) + 1970
    assert set(months) == set(range(12))
    assert set(hours) == set(range(24))
    assert set(years) == set(range(2015, 2024))


def test_more_daylight_than_night_but_some_of_each(samples):
    el = solar_position(samples.lat_deg, samples.lon_deg, samples.local_datetime, samples.utc_offset_min).elevation_deg
    day, twilight, night = (el > 0).mean(), ((el <= 0) & (el > -12)).mean(), (el <= -12).mean()
    assert day > 0.7
    assert 0.02 < twilight < 0.25
    assert 0.005 < night < day / 4


def test_sampling_is_deterministic_for_a_seed(world):
    a = SunWorld(WorldConfig(seed=0)).sample(200, np.random.default_rng(5))
    b = world.sample(200, np.random.default_rng(5))
    for field in ("lat_deg", "lon_deg", "local_datetime", "utc_offset_min", "region_id", "zone_name", "town_index"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    other = SunWorld(WorldConfig(seed=1))
    assert not np.array_equal(other.regions.centre_lat_deg, world.regions.centre_lat_deg)


# ---- regions ---------------------------------------------------------------------------------------------------


def test_regions_tile_the_land_where_people_are(world, samples):
    reg = world.regions
    assert is_land(reg.centre_lat_deg, reg.centre_lon_deg).all()
    assert np.array_equal(samples.region_id, world.region_of(samples.lat_deg, samples.lon_deg))
    counts = np.bincount(samples.region_id, minlength=len(reg))
    assert (counts > 0).mean() > 0.95  # k-means of the photo distribution: nearly every region has photos
    assert counts.max() < 40 * np.median(counts[counts > 0])
    # The region of a place is that of its nearest seed (Voronoi by great-circle distance).
    d = haversine_km(np.stack([samples.lat_deg, samples.lon_deg], 1)[:, None, :],
                     np.stack([reg.centre_lat_deg, reg.centre_lon_deg], 1)[None, :, :])
    assert np.array_equal(np.argmin(d, axis=1), samples.region_id)


def test_few_regions_each_hold_a_share_of_photos_and_their_own_grid():
    w = SunWorld(WorldConfig(seed=0, n_regions=24))
    s = w.sample(2000, np.random.default_rng(2))
    counts = np.bincount(s.region_id, minlength=24)
    assert counts.min() > 0.15 * 2000 / 24
    bearing = w.regions.grid_bearing_deg
    assert np.all((0 <= bearing) & (bearing < 360)) and len(np.unique(bearing)) == 24
    # Bearings cover the compass (uniform on the circle): the mean resultant length is small.
    assert np.hypot(np.cos(np.deg2rad(bearing)).mean(), np.sin(np.deg2rad(bearing)).mean()) < 0.5


# ---- climate: the same month looks different at 60N, 0 and 40S -------------------------------------------------

JAN, APR, JUL, OCT = 15, 105, 196, 288


def test_tropics_never_snow():
    lat = np.linspace(-23.4, 23.4, 47)[:, None, None]
    doy = np.arange(1, 367)[None, :, None]
    alt = np.array([0.0, 1000.0, 2500.0])[None, None, :]
    assert climate_at(lat, doy, alt).snow_cover.max() == 0.0


@pytest.mark.parametrize("lat_deg", [50.0, 62.0, 70.0])
def test_snow_in_local_winter_not_summer_and_hemispheres_reversed(lat_deg):
    north_winter, north_summer = climate_at(lat_deg, JAN), climate_at(lat_deg, JUL)
    south_winter, south_summer = climate_at(-lat_deg, JUL), climate_at(-lat_deg, JAN)
    assert north_winter.snow_cover > 0.5 and south_winter.snow_cover > 0.5
    assert north_summer.snow_cover == 0.0 and south_summer.snow_cover == 0.0
    assert north_summer.greenness > north_winter.greenness
    for doy in (1, 100, 200, 300):  # mirror images half a year apart
        n, s = climate_at(lat_deg, doy), climate_at(-lat_deg, doy + 365.25 / 2)
        assert float(n.temperature_c) == pytest.approx(float(s.temperature_c), abs=1e-9)
        assert float(n.greenness) == pytest.approx(float(s.greenness), abs=1e-9)


def test_snow_season_lengthens_with_latitude():
    doy = np.arange(1, 366)
    days = [int((climate_at(lat, doy).snow_cover > 0.5).sum()) for lat in (45.0, 55.0, 65.0)]
    assert 0 < days[0] < days[1] < days[2]


def test_same_month_differs_at_60n_the_equator_and_40s():
    for month, doy in (("January", JAN), ("July", JUL)):
        n60, eq, s40 = climate_at(60.0, doy), climate_at(0.0, doy), climate_at(-40.0, doy)
        assert eq.snow_cover == 0.0 and eq.rain < 0.1, month  # the equator's dry seasons: January and July
        if month == "January":
            assert n60.snow_cover > 0.9 and n60.greenness == 0.0
            assert s40.snow_cover == 0.0 and s40.greenness > 0.9  # southern summer
        else:
            assert n60.snow_cover == 0.0 and n60.greenness > 0.9
            assert s40.greenness < 0.1  # southern winter: dormant
    # The equator has two wet seasons, after each equinox.
    assert climate_at(0.0, APR + 15).rain > 0.8 and climate_at(0.0, OCT + 10).rain > 0.8


def test_tropical_rains_follow_the_sun_and_smoke_comes_before_them():
    assert climate_at(15.0, 225).rain > 0.5 and climate_at(15.0, 45).rain < 0.05  # monsoon: June to September
    assert climate_at(-15.0, 45).rain > 0.5 and climate_at(-15.0, 225).rain < 0.05  # reversed in the south
    assert climate_at(15.0, 250).greenness > climate_at(15.0, 60).greenness + 0.3
    # Burning season: before the rains (late March at 15N), not after them (November).
    assert climate_at(15.0, 86).smoke > 0.5 and climate_at(15.0, 320).smoke < 0.05
    assert climate_at(-15.0, 268).smoke > 0.5 and climate_at(-15.0, 135).smoke < 0.05
    assert climate_at(50.0, np.arange(1, 366)).smoke.max() == 0.0 and climate_at(50.0, 200).rain == 0.0


def test_spring_and_autumn_are_told_apart_and_reversed_in_the_south():
    assert climate_at(48.0, 115).spring > 0.5 and climate_at(48.0, 115).autumn == 0.0  # late April
    assert climate_at(48.0, 292).autumn > 0.5 and climate_at(48.0, 292).spring == 0.0  # late October
    assert climate_at(-48.0, 297).spring > 0.5 and climate_at(-48.0, 110).autumn > 0.5
    assert climate_at(5.0, np.arange(1, 366)).spring.max() == 0.0  # no temperate seasons at the equator


def test_summer_dry_regions_brown_in_high_summer():
    wet, dry = climate_at(37.0, JUL + 10, summer_dry=0.0), climate_at(37.0, JUL + 10, summer_dry=1.0)
    assert wet.greenness > 0.9 and dry.greenness < wet.greenness - 0.3
    assert climate_at(37.0, APR, summer_dry=1.0).greenness == pytest.approx(float(climate_at(37.0, APR).greenness))
