"""Do the demo's photos lie on land on QGIS's own world map? A point-in-polygon count of the demo's results.gpkg
(its photos' points, i.e. their EXIF places, and the model's most likely places) and of all its SunWorld photos
against the `countries` layer of QGIS's bundled world map.

    .venv/bin/python bench/check_demo_on_land.py gtloc-demo [/usr/share/qgis/resources/data/world_map.gpkg]
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
from shapely import points

WORLD_MAP = "/usr/share/qgis/resources/data/world_map.gpkg"


def count_in_countries(lat: np.ndarray, lon: np.ndarray, countries: gpd.GeoDataFrame) -> dict:
    pts = gpd.GeoDataFrame(geometry=points(np.stack([lon, lat], axis=1)), crs="EPSG:4326")
    hit = gpd.sjoin(pts, countries[["NAME", "geometry"]] if "NAME" in countries else countries[["geometry"]],
                    how="left", predicate="within")
    inside = ~hit.index_right.isna()
    inside = inside.groupby(level=0).any()
    names = hit["NAME"].dropna().value_counts().head(8).to_dict() if "NAME" in hit else {}
    return {"points": int(len(pts)), "in_a_country": int(inside.sum()), "share": float(inside.mean()),
            "top_countries": names}


def main() -> None:
    demo = Path(sys.argv[1] if len(sys.argv) > 1 else "gtloc-demo")
    world_map = sys.argv[2] if len(sys.argv) > 2 else WORLD_MAP
    countries = gpd.read_file(world_map, layer="countries").to_crs("EPSG:4326")
    photos = gpd.read_file(demo / "results.gpkg", layer="photos")
    rows = list(csv.DictReader(open(demo / "sunworld" / "manifest.csv", encoding="utf-8")))
    out = {
        "results.gpkg photos (their points)": count_in_countries(photos.geometry.y.to_numpy(),
                                                                 photos.geometry.x.to_numpy(), countries),
        "results.gpkg predicted places": count_in_countries(photos["pred_lat_deg"].to_numpy(float),
                                                            photos["pred_lon_deg"].to_numpy(float), countries),
        "all SunWorld photos of the demo": count_in_countries(np.array([float(r["lat_deg"]) for r in rows]),
                                                              np.array([float(r["lon_deg"]) for r in rows]),
                                                              countries),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
