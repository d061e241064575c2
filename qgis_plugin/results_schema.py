"""What the plugin reads from a gtloc results GeoPackage: layer, field and value names, in one place.

The plugin's copy of the part of the engine's schema it uses (the engine's definition is
gtloc_engine/io/results_schema.py, written out in docs/geopackage.md); QGIS's Python cannot import the engine, so
tests/test_results_schema.py checks that the two agree. This module imports nothing from QGIS: the engine's tests
read it too.
"""

FORMAT = "gtloc-results"
FORMAT_VERSION = 2  # the newest results format this plugin was written for

# Layers and tables
PHOTOS_LAYER = "photos"
CANDIDATES_LAYER = "candidates"
REGIONS_LAYER = "regions"
FAILURES_TABLE = "failures"

# Verdicts (photos.verdict, place_verdict, time_verdict)
CONSISTENT = "consistent"
DOUBTFUL = "doubtful"
INCONSISTENT = "inconsistent"
NO_CLAIM = "no claim"
VERDICTS = (CONSISTENT, DOUBTFUL, INCONSISTENT, NO_CLAIM)

# photos fields the plugin reads
PATH = "path"
FILE_NAME = "file_name"
SHA256 = "sha256"
VERDICT = "verdict"
PLACE_VERDICT = "place_verdict"
TIME_VERDICT = "time_verdict"
VERDICT_FIELDS = (VERDICT, PLACE_VERDICT, TIME_VERDICT)
PLACE_DIST_KM = "place_dist_km"
PLACE_LEVEL = "place_level"
CLAIMED_LAT_DEG = "claimed_lat_deg"
CLAIMED_LON_DEG = "claimed_lon_deg"
PRED_LAT_DEG = "pred_lat_deg"
PRED_LON_DEG = "pred_lon_deg"
MAP_TIME = "map_time"  # UTC (GeoPackage DATETIME), null where the photo's UTC offset is unknown
MAP_TIME_LOCAL = "map_time_local"  # local wall clock, ISO text: what the Temporal Controller plays
MAP_TIME_SOURCE = "map_time_source"
TIME_POSTERIOR = "time_posterior"  # JSON, 12 x 24 month x hour probabilities
RASTER_GLOBAL = "raster_global"
RASTER_REGIONAL = "raster_regional"  # JSON list of paths

# candidates and regions fields the plugin reads
PROBABILITY = "probability"
LEVEL = "level"
DEFAULT_CREDIBLE_LEVELS = (0.5, 0.9)  # regions.level as the engine writes them by default

# Every field the plugin reads, per layer (checked against the engine's schema)
FIELDS_READ = {
    PHOTOS_LAYER: (PATH, FILE_NAME, SHA256, *VERDICT_FIELDS, PLACE_DIST_KM, PLACE_LEVEL, CLAIMED_LAT_DEG,
                   CLAIMED_LON_DEG, PRED_LAT_DEG, PRED_LON_DEG, MAP_TIME, MAP_TIME_LOCAL, MAP_TIME_SOURCE,
                   TIME_POSTERIOR, RASTER_GLOBAL, RASTER_REGIONAL),
    CANDIDATES_LAYER: (PROBABILITY,),
    REGIONS_LAYER: (LEVEL,),
}
