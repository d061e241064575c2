"""Test inputs made by the ENGINE's Python (run as `<engine python> engine_side.py OUT_DIR`; QGIS's Python has no
engine): a toy photo set, a JPEG whose EXIF claims a known place and time, and a GeoTIFF map. Prints JSON."""

import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import from_origin

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the engine suite's toy-set writer
from conftest import write_toy_set

from gtloc_engine.io.exif import write_jpeg_with_exif

out = Path(sys.argv[1])
manifest = write_toy_set(out / "toy", 160, seed=0)
toy = sorted((out / "toy" / "img").glob("*.png"))
claimed = {"lat_deg": 48.8566, "lon_deg": 2.3522, "local_datetime": "2021-07-14T15:30:00"}
jpeg = write_jpeg_with_exif(Image.open(toy[0]).convert("RGB"), out / "drop" / "claimed.jpg",
                            lat_deg=claimed["lat_deg"], lon_deg=claimed["lon_deg"],
                            local_datetime=dt.datetime.fromisoformat(claimed["local_datetime"]))
geotiff = out / "map.tif"
with rasterio.open(geotiff, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs="EPSG:4326",
                   transform=from_origin(0, 10, 1, 1)) as dst:
    dst.write(np.arange(64, dtype=np.uint8).reshape(1, 8, 8))
plain_tiff = out / "drop" / "plain.tif"
Image.open(toy[1]).convert("RGB").save(plain_tiff)
print(json.dumps({"manifest": str(manifest), "toy_photos": [str(p) for p in toy], "claimed_jpeg": str(jpeg),
                  "claimed": claimed, "geotiff": str(geotiff), "plain_tiff": str(plain_tiff)}))
