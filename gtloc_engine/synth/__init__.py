"""SunWorld: a synthetic planet where the truth is known, for training and evaluating GT-Loc end to end on a CPU.

Photos are rendered from physics (the true sun for the place and local time, shadows, season, snow) and from
the look of procedural regions, so a model can learn where and when from pixels alone, and every answer can
be checked.

Public surface:
    solar_position          lat_deg, lon_deg, local wall-clock datetime(s), utc_offset_min -> SolarPosition
    utc_offset_min_for_lon  the nautical time zone, round(lon / 15) hours, in minutes (SunWorld's clocks)
    SunWorld, WorldConfig   the seeded planet: land, regions, climate; SunWorld.sample(n, rng) -> WorldSample
    render_photo            world + place + local time + rng -> (uint8 image, SceneInfo)
    write_dataset           out_dir, n_photos -> manifest.csv (JPEGs with EXIF, world.json beside it)
"""

from gtloc_engine.synth.dataset import MANIFEST_COLUMNS, write_dataset
from gtloc_engine.synth.render import RenderConfig, SceneInfo, render_photo
from gtloc_engine.synth.solar import SolarPosition, solar_position, utc_offset_min_for_lon
from gtloc_engine.synth.world import Climate, SunWorld, WorldConfig, WorldSample, climate_at

__all__ = [
    "MANIFEST_COLUMNS",
    "Climate",
    "RenderConfig",
    "SceneInfo",
    "SolarPosition",
    "SunWorld",
    "WorldConfig",
    "WorldSample",
    "climate_at",
    "render_photo",
    "solar_position",
    "utc_offset_min_for_lon",
    "write_dataset",
]
