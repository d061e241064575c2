"""Write a SunWorld dataset: JPEGs with real EXIF, a manifest CSV and the world's parameters, all from one seed.

Layout of out_dir:
    photos/000000.jpg ...   rendered photos; EXIF carries GPS position and altitude, and (for timed photos)
                            DateTimeOriginal (the local wall clock of the place's IANA zone, DST included) +
                            OffsetTimeOriginal (that zone's offset then) + GPS UTC date and time
    manifest.csv            path,lat_deg,lon_deg,timestamp,split (path relative to out_dir; timestamp ISO 8601
                            local wall clock with its offset, empty for untimed photos)
    scenes.csv              the truth behind each photo, for oracles and diagnostics: its town, IANA zone (or
                            'nautical ...'), UTC offset and UTC time, region, the sun's elevation and azimuth, the
                            region's grid bearing and the sun's azimuth relative to it (also for untimed photos)
    world.json              seed and every parameter (and the packaged data's versions), enough to regenerate
                            the same files

Every photo's pixels depend only on (seed, its index) and the parameters, so a re-run into the same folder skips
photos already there and still produces a byte-identical manifest. Untimed photos (only in the train split, like
MP-16 where most photos carry no usable time) are rendered at their true time but written without one.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from gtloc_engine.errors import GtlocError
from gtloc_engine.io.atomic import atomic_write_text
from gtloc_engine.io.exif import write_jpeg_with_exif
from gtloc_engine.solar import local_to_utc, solar_position
from gtloc_engine.synth.render import RenderConfig, render_photo
from gtloc_engine.synth.world import SunWorld, WorldConfig

__all__ = ["write_dataset", "read_scenes", "MANIFEST_COLUMNS", "SCENE_COLUMNS"]

MANIFEST_COLUMNS = ("path", "lat_deg", "lon_deg", "timestamp", "split")
SCENE_COLUMNS = ("path", "town", "country", "zone", "utc_offset_min", "utc_time", "region_id", "sun_elevation_deg",
                 "sun_azimuth_deg", "grid_bearing_deg", "sun_azimuth_rel_grid_deg", "snow_cover", "greenness", "spring",
                 "autumn", "rain", "smoke")
_CLIMATE_COLUMNS = ("snow_cover", "greenness", "spring", "autumn", "rain", "smoke")
_FORMAT = "sunworld-dataset/2"
# Stream labels for np.random.default_rng([seed, stream, ...]): independent streams per purpose and per photo.
_STREAM_SAMPLES, _STREAM_SPLITS, _STREAM_PHOTO = 1, 2, 3
# The manifest's precision; EXIF stores 1e-4 arcsec (3e-8 deg), so the two agree to the digits written here.
_LATLON_DECIMALS = 6


def _check_arguments(n_photos, image_size, untimed_fraction, split_fractions, quality) -> tuple[float, float, float]:
    if isinstance(n_photos, bool) or not isinstance(n_photos, (int, np.integer)) or n_photos < 1:
        raise GtlocError(f"n_photos must be a positive int, got {n_photos!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not 8 <= image_size <= 4096:
        raise GtlocError(f"image_size must be an int in 8..4096, got {image_size!r}")
    if not 0.0 <= float(untimed_fraction) <= 1.0:
        raise GtlocError(f"untimed_fraction must lie in [0, 1], got {untimed_fraction!r}")
    fractions = tuple(float(f) for f in split_fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise GtlocError(
            "split_fractions must be three non-negative (train, val, test) shares summing to 1, "
            f"got {split_fractions!r}"
        )
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise GtlocError(f"quality must be an int in 1..100, got {quality!r}")
    return fractions


def _assign_splits(n: int, fractions: tuple[float, float, float], untimed_fraction: float, seed: int):
    """Split label per photo, and which train photos lose their timestamp (a share of the train split)."""
    rng = np.random.default_rng([seed, _STREAM_SPLITS])
    n_val = int(round(n * fractions[1]))
    n_test = int(round(n * fractions[2]))
    n_val = min(n_val, n)
    n_test = min(n_test, n - n_val)
    order = rng.permutation(n)
    split = np.full(n, "train", dtype=object)
    split[order[:n_val]] = "val"
    split[order[n_val : n_val + n_test]] = "test"
    train = np.sort(order[n_val + n_test :])
    untimed = np.zeros(n, dtype=bool)
    untimed[rng.choice(train, size=int(round(len(train) * untimed_fraction)), replace=False)] = True
    return split, untimed


def _parameters(seed, n_photos, image_size, untimed_fraction, fractions, quality, world: SunWorld) -> dict:
    return {
        "format": _FORMAT,
        "seed": int(seed),
        "n_photos": int(n_photos),
        "image_size": int(image_size),
        "untimed_fraction": float(untimed_fraction),
        "untimed_share_of": "train",
        "split_fractions": list(fractions),
        "jpeg_quality": int(quality),
        "world": world.to_dict(),
        "render": asdict(RenderConfig()),
    }


def write_dataset(
    out_dir,
    n_photos: int,
    *,
    seed: int = 0,
    image_size: int = 64,
    untimed_fraction: float = 0.0,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    quality: int = 90,
    world: dict | None = None,
) -> Path:
    """Render n_photos SunWorld photos with EXIF into out_dir; returns the path of manifest.csv.

    untimed_fraction is the share of the train split written without a timestamp (val and test keep theirs).
    A re-run with the same arguments skips photos already written; different arguments into a folder that
    holds another dataset raise GtlocError instead of mixing the two. `world` overrides WorldConfig fields
    (e.g. {"n_regions": 24}: fewer, more distinct regions make place learnable from a small dataset).
    """
    fractions = _check_arguments(n_photos, image_size, untimed_fraction, split_fractions, quality)
    out = Path(out_dir)
    photos = out / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    try:
        world_config = WorldConfig(**{**(world or {}), "seed": int(seed)})
    except (TypeError, ValueError) as exc:
        raise GtlocError(f"bad SunWorld world settings {world!r}: {exc}") from None
    world = SunWorld(world_config)
    params = _parameters(seed, n_photos, image_size, untimed_fraction, fractions, quality, world)
    params_text = json.dumps(params, indent=2, sort_keys=True) + "\n"
    world_json = out / "world.json"
    if world_json.exists():
        try:
            previous = json.loads(world_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise GtlocError(f"{world_json} is unreadable ({exc}); write into an empty folder") from None
        if previous != json.loads(params_text):
            raise GtlocError(
                f"{out} already holds a SunWorld dataset made with other parameters (see {world_json}); "
                "write into a new folder"
            )
    atomic_write_text(world_json, params_text)

    samples = world.sample(int(n_photos), np.random.default_rng([int(seed), _STREAM_SAMPLES]))
    split, untimed = _assign_splits(int(n_photos), fractions, float(untimed_fraction), int(seed))
    lat_all = np.round(samples.lat_deg, _LATLON_DECIMALS)
    lon_all = np.round(samples.lon_deg, _LATLON_DECIMALS)
    render_config = RenderConfig()
    sun = solar_position(lat_all, lon_all, samples.local_datetime, samples.utc_offset_min)
    utc = local_to_utc(samples.local_datetime, samples.utc_offset_min)
    bearing = world.regions.grid_bearing_deg[samples.region_id]
    climate = world.climate(lat_all, samples.local_datetime, samples.region_id)
    scenes = io.StringIO()
    scene_writer = csv.writer(scenes, lineterminator="\n")
    scene_writer.writerow(SCENE_COLUMNS)

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for i in range(int(n_photos)):
        rel = f"photos/{i:06d}.jpg"
        lat, lon = float(lat_all[i]), float(lon_all[i])
        local: dt.datetime = samples.local_datetime[i].astype("datetime64[s]").item()
        offset_min = int(samples.utc_offset_min[i])
        path = out / rel
        if not path.exists():
            rng = np.random.default_rng([int(seed), _STREAM_PHOTO, i])
            pixels, _ = render_photo(
                world, lat, lon, samples.local_datetime[i], offset_min, rng, size=int(image_size), config=render_config
            )
            write_jpeg_with_exif(
                Image.fromarray(pixels),
                path,
                lat_deg=lat,
                lon_deg=lon,
                alt_m=round(float(samples.alt_m[i]), 1),
                local_datetime=None if untimed[i] else local,
                utc_offset_min=None if untimed[i] else offset_min,
                quality=int(quality),
            )
        stamp = "" if untimed[i] else local.replace(tzinfo=dt.timezone(dt.timedelta(minutes=offset_min))).isoformat()
        writer.writerow([rel, f"{lat:.{_LATLON_DECIMALS}f}", f"{lon:.{_LATLON_DECIMALS}f}", stamp, split[i]])
        town = int(samples.town_index[i])
        scene_writer.writerow([
            rel, world.towns.name[town], world.towns.country[town], samples.zone_name[i], offset_min,
            str(utc[i]) + "Z", int(samples.region_id[i]), f"{sun.elevation_deg[i]:.4f}", f"{sun.azimuth_deg[i]:.4f}",
            f"{bearing[i]:.4f}", f"{np.mod(sun.azimuth_deg[i] - bearing[i], 360.0):.4f}",
            *(f"{float(getattr(climate, c)[i]):.4f}" for c in _CLIMATE_COLUMNS)])
    atomic_write_text(out / "scenes.csv", scenes.getvalue())
    manifest = out / "manifest.csv"
    atomic_write_text(manifest, buffer.getvalue())
    return manifest


def read_scenes(dataset_dir) -> dict[str, dict]:
    """scenes.csv of a dataset as {path relative to the dataset: row}, numbers parsed."""
    path = Path(dataset_dir) / "scenes.csv"
    if not path.is_file():
        raise GtlocError(f"{path} not found: a SunWorld dataset written by this version has one")
    out = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            for key in ("utc_offset_min", "region_id"):
                row[key] = int(row[key])
            for key in ("sun_elevation_deg", "sun_azimuth_deg", "grid_bearing_deg", "sun_azimuth_rel_grid_deg",
                        *_CLIMATE_COLUMNS):
                row[key] = float(row[key])
            out[row["path"]] = row
    return out
