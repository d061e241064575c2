"""What the plugin reads from a gtloc results GeoPackage: layer, field and value names, in one place.

The plugin's copy of the part of the engine's schema it uses (the engine's definition is
gtloc_engine/io/results_schema.py, written out in docs/geopackage.md); QGIS's Python cannot import the engine, so
tests/test_results_schema.py checks that the two agree. This module imports nothing from QGIS: the engine's tests
read it too.
"""

FORMAT = "gtloc-results"
FORMAT_VERSION = 3  # the newest results format this plugin was written for

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
INCONCLUSIVE = "inconclusive"  # the model's posterior is too diffuse, or the claim's evidence too weak, to judge
VERDICTS = (CONSISTENT, DOUBTFUL, INCONSISTENT, INCONCLUSIVE, NO_CLAIM)

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
PLACE_EVIDENCE = "place_evidence"  # likelihood ratio of the claimed place against the prior
TIME_EVIDENCE = "time_evidence"
CLAIMED_LAT_DEG = "claimed_lat_deg"
CLAIMED_LON_DEG = "claimed_lon_deg"
PRED_LAT_DEG = "pred_lat_deg"
PRED_LON_DEG = "pred_lon_deg"
MAP_TIME = "map_time"  # UTC (GeoPackage DATETIME), null where the photo's UTC offset is unknown
MAP_TIME_LOCAL = "map_time_local"  # local wall clock, ISO text: what the Temporal Controller plays
MAP_TIME_SOURCE = "map_time_source"
TIME_POSTERIOR = "time_posterior"  # JSON, 12 x 24 month x hour probabilities, given what TIME_GIVEN says
TIME_POSTERIOR_IMAGE = "time_posterior_image"  # the same from the image alone, where TIME_POSTERIOR is given a place
TIME_GIVEN = "time_given"
TIME_GIVEN_PLACE = "claimed place"
PLACE_GIVEN = "place_given"
PLACE_GIVEN_IMAGE_TIME = "image+time"
GIVEN_TIME_LOCAL = "given_time_local"
CLAIMED_TIME_LOCAL = "claimed_time_local"
PRED_MONTH = "pred_month"
PRED_MONTH_POS = "pred_month_pos"  # months since Jan 1 00:00, [0, 12)
PRED_HOUR_LOCAL = "pred_hour_local"
TIME_LEVEL = "time_level"
NOTES = "notes"
PLACE_SOURCE = "place_source"  # which tag a claim came from (EXIF GPS, XMP, ...)
TIME_SOURCE = "time_source"
UTC_OFFSET_SOURCE = "utc_offset_source"
CLAIMED_TIME_ZONE = "claimed_time_zone"
SUN_ELEV_DEG = "sun_elev_deg"  # the sun at the claimed place and time
SUN_AZIMUTH_DEG = "sun_azimuth_deg"
SUNRISE_LOCAL = "sunrise_local"
SUNSET_LOCAL = "sunset_local"
LIGHT_REGIME = "light_regime"
SUN_CHECK = "sun_check"
SUN_REGIME_MASS = "sun_regime_mass"
SURFACE_RES_DEG = "surface_res_deg"
THUMBNAIL = "thumbnail"  # a JPEG the engine made, EXIF orientation applied
TIME_PLOT = "time_plot"  # a PNG of the month x hour posterior the engine made
RASTER_GLOBAL = "raster_global"
RASTER_REGIONAL = "raster_regional"  # JSON list of paths

# candidates and regions fields the plugin reads
PROBABILITY = "probability"
LEVEL = "level"
DEFAULT_CREDIBLE_LEVELS = (0.5, 0.9)  # regions.level as the engine writes them by default

# Every field the plugin reads, per layer (checked against the engine's schema)
FIELDS_READ = {
    PHOTOS_LAYER: (PATH, FILE_NAME, SHA256, *VERDICT_FIELDS, PLACE_DIST_KM, PLACE_LEVEL, PLACE_EVIDENCE,
                   TIME_EVIDENCE, CLAIMED_LAT_DEG, CLAIMED_LON_DEG, PRED_LAT_DEG, PRED_LON_DEG, MAP_TIME,
                   MAP_TIME_LOCAL, MAP_TIME_SOURCE, TIME_POSTERIOR, TIME_POSTERIOR_IMAGE, TIME_GIVEN, PLACE_GIVEN,
                   GIVEN_TIME_LOCAL, CLAIMED_TIME_LOCAL, PRED_MONTH, PRED_MONTH_POS, PRED_HOUR_LOCAL, TIME_LEVEL,
                   NOTES, PLACE_SOURCE, TIME_SOURCE, UTC_OFFSET_SOURCE, CLAIMED_TIME_ZONE, SUN_ELEV_DEG,
                   SUN_AZIMUTH_DEG, SUNRISE_LOCAL, SUNSET_LOCAL, LIGHT_REGIME, SUN_CHECK, SUN_REGIME_MASS,
                   SURFACE_RES_DEG, THUMBNAIL, TIME_PLOT, RASTER_GLOBAL, RASTER_REGIONAL),
    CANDIDATES_LAYER: (PROBABILITY,),
    REGIONS_LAYER: (LEVEL,),
}
