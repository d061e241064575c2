"""Labelled photos (where, and if known when) from a CSV manifest or a folder of photos' EXIF, and their splits:
what training trains on and evaluation scores.

Manifest columns: `path` (relative to the manifest's folder or absolute), `lat_deg`, `lon_deg`, `timestamp`
(ISO 8601, EXIF 'YYYY:MM:DD HH:MM:SS' or Unix seconds; may be empty: that photo trains the location loss only),
optional `utc_offset_min` (turns Unix seconds into local time; else the place's IANA zone at that instant is used,
DST included, and at open sea, where no zone exists, the nautical zone of its longitude, counted in the log) and
optional `split` (train / val / test).
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gtloc_engine.errors import GtlocError
from gtloc_engine.geo import validate_latlon
from gtloc_engine.timecode import parse_time
from gtloc_engine.timezones import zone_at

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Record:
    """One labelled photo: where (lat_deg, lon_deg) and, if known, when (torus theta_year, phi_day)."""

    path: Path
    lat_deg: float
    lon_deg: float
    torus: tuple[float, float] | None
    split: str | None = None


def _float(value: str, what: str, where: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise GtlocError(f"{where}: {what} {value!r} is not a number") from None
    if not math.isfinite(out):
        raise GtlocError(f"{where}: {what} {value!r} is not finite")
    return out


def read_manifest(csv_path: str | Path) -> list[Record]:
    """Read and validate a manifest; an error names the file, the row and the bad value."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise GtlocError(f"manifest {csv_path} not found; give a CSV with columns path,lat_deg,lon_deg,timestamp")
    records: list[Record] = []
    at_sea = 0  # rows whose Unix time took the nautical zone
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"path", "lat_deg", "lon_deg"} - set(reader.fieldnames or [])
        if missing:
            raise GtlocError(f"manifest {csv_path} lacks columns {sorted(missing)}; it has {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            where = f"manifest {csv_path} line {line}"
            lat = _float(row["lat_deg"], "lat_deg", where)
            lon = _float(row["lon_deg"], "lon_deg", where)
            validate_latlon(lat, lon, where)
            stamp = (row.get("timestamp") or "").strip()
            torus = None
            if stamp:
                offset = (row.get("utc_offset_min") or "").strip()
                value: str | float = stamp
                try:
                    value = float(stamp)  # Unix seconds
                except ValueError:
                    pass
                try:
                    offset_min = int(offset) if offset else None
                    if offset_min is None and isinstance(value, float):  # UTC: the place's clock then
                        zone = zone_at(lat, lon)
                        offset_min, at_sea = zone.offset_min(value), at_sea + zone.nautical
                    local = parse_time(value, utc_offset_min=offset_min)
                except (GtlocError, ValueError) as exc:
                    raise GtlocError(f"{where}: {exc}") from None
                torus = (local.theta_year, local.phi_day)
            split = (row.get("split") or "").strip() or None
            if split is not None and split not in SPLITS:
                raise GtlocError(f"{where}: split {split!r} must be one of {SPLITS}")
            path = Path(row["path"])
            records.append(Record(path if path.is_absolute() else csv_path.parent / path, lat, lon, torus, split))
    if not records:
        raise GtlocError(f"manifest {csv_path} has no rows")
    if at_sea:
        log.warning("manifest %s: %d Unix times at open sea, where no IANA zone exists, were made local with the "
                    "nautical zone of their longitude", csv_path, at_sea)
    return records


def scan_photo_folder(folder: str | Path) -> list[Record]:
    """Records from photos that claim a GPS place (EXIF or XMP, io/exif.py); photos without one are skipped and
    counted in the log."""
    from gtloc_engine.io.exif import read_exif_claims
    from gtloc_engine.io.photos import iter_photo_paths

    folder = Path(folder)
    if not folder.is_dir():
        raise GtlocError(f"photo folder {folder} not found or not a folder")
    records, skipped = [], 0
    for path in iter_photo_paths([folder]):
        claims = read_exif_claims(path)
        if not claims.has_place:
            skipped += 1
            continue
        torus = None
        if claims.has_time:
            local = parse_time(claims.local_datetime)
            torus = (local.theta_year, local.phi_day)
        records.append(Record(path, claims.lat_deg, claims.lon_deg, torus))
    if skipped:
        log.warning("%d photos in %s have no EXIF or XMP GPS place and were skipped", skipped, folder)
    if not records:
        raise GtlocError(f"photo folder {folder} has no photos with an EXIF or XMP GPS place to train on")
    return records


def split_records(records: list[Record], val_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Train / validation lists: the manifest's split column when present, else a seeded random split."""
    if any(r.split for r in records):
        return [r for r in records if r.split in (None, "train")], [r for r in records if r.split == "val"]
    order = np.random.default_rng(seed).permutation(len(records))
    n_val = int(round(val_fraction * len(records)))
    val_idx = set(order[:n_val].tolist())
    return ([r for i, r in enumerate(records) if i not in val_idx], [r for i, r in enumerate(records) if i in val_idx])
