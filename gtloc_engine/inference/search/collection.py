"""The collection a search runs over, read from a results GeoPackage or a PostGIS case, and the search results
written back as a GeoPackage layer.

The collection is the `embeddings` table `gtloc predict --out X.gpkg` (or `--out postgresql://...`) writes (one
float32 vector per photo bytes and model), joined by sha256 with the `photos` layer (paths, claimed and predicted
places and times). A PostGIS case is read with SELECTs only (io/postgis.read_collection_rows), so a viewer's
read-only role searches it.

    Collection, load_collection(gpkg, model_sha256)   the embeddings and photo fields of one model (gpkg: a
                                                      GeoPackage path or a PostGIS target)
    write_results_gpkg(out, search_output)            layer `search_results`, new file or added atomically
    write_search_output(out, search_output)           .gpkg (write_results_gpkg) or .json, written atomically
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gtloc_engine.errors import GtlocError
from gtloc_engine.io.atomic import atomic_write
from gtloc_engine.io.geopackage import check_is_geopackage, check_results_path
from gtloc_engine.io.results_schema import EMBEDDINGS_TABLE, GPKG_VERSION
from gtloc_engine.io.store import is_database_target, shown_target

RESULTS_LAYER = "search_results"


@dataclass
class Collection:
    """The image embeddings of one model in a results GeoPackage, one row per distinct photo bytes (sha256 order).

    Only bytes that still have a row in `photos` are kept (a changed file leaves its old embedding behind).
    """

    gpkg: Path | str  # a results GeoPackage, or a PostGIS case's target
    model_sha256: str
    emb: np.ndarray  # (N, dim) float32, L2-normalised
    sha256: list[str]
    paths: list[list[str]]  # every photo path with these bytes, sorted
    claimed_latlon_deg: np.ndarray  # (N, 2), NaN where nothing is claimed
    pred_latlon_deg: np.ndarray  # (N, 2), NaN where not predicted
    claimed_time_local: list[str | None]
    rows_sha256: str = field(init=False)  # identifies the ordered collection (the FAISS sidecar's key)

    def __post_init__(self):
        self.rows_sha256 = hashlib.sha256("\n".join(self.sha256).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.sha256)

    def point_latlon_deg(self, source: str) -> np.ndarray:
        """(N, 2) each photo's place for filters: claim, prediction, or 'point' = claim if any else prediction."""
        if source == "claim":
            return self.claimed_latlon_deg
        if source == "prediction":
            return self.pred_latlon_deg
        has_claim = np.isfinite(self.claimed_latlon_deg).all(axis=1)
        return np.where(has_claim[:, None], self.claimed_latlon_deg, self.pred_latlon_deg)

    def row_of(self, sha256: str) -> int | None:
        i = int(np.searchsorted(self.sha256, sha256))
        return i if i < len(self.sha256) and self.sha256[i] == sha256 else None


def load_collection(gpkg: str | os.PathLike, model_sha256: str) -> Collection:
    """The collection of `model_sha256` in a results GeoPackage or a PostGIS case; one clear GtlocError when there
    is none."""
    if is_database_target(gpkg):
        from gtloc_engine.io.postgis import read_collection_rows

        gpkg = os.fspath(gpkg)
        rows, records = read_collection_rows(gpkg, model_sha256)
    else:
        gpkg = Path(gpkg)
        rows, records = _read_gpkg_rows(gpkg, model_sha256)
    shown = shown_target(str(gpkg))
    by_sha: dict[str, list[dict]] = {}
    for record in sorted(records, key=lambda r: r["path"]):
        by_sha.setdefault(record["sha256"], []).append(record)
    kept = [(sha, dim, blob) for sha, dim, blob in rows if sha in by_sha]
    if not kept:
        raise GtlocError(f"'{shown}' has embeddings from this checkpoint but none of their photos is in its photos "
                         "layer any more; run gtloc predict on the photos again")
    dims = {dim for _, dim, _ in kept}
    if len(dims) != 1:
        raise GtlocError(f"'{shown}' has embeddings of several sizes {sorted(dims)} for one model; it is damaged, "
                         "write the results to a new file")
    emb = np.stack([np.frombuffer(blob, dtype="<f4", count=dim) for _, dim, blob in kept]).astype(np.float32)
    firsts = [by_sha[sha][0] for sha, _, _ in kept]

    def pairs(lat: str, lon: str) -> np.ndarray:
        return np.array([[_float(r[lat]), _float(r[lon])] for r in firsts], dtype=np.float64).reshape(-1, 2)

    return Collection(gpkg, model_sha256, emb, [sha for sha, _, _ in kept],
                      [[r["path"] for r in by_sha[sha]] for sha, _, _ in kept],
                      pairs("claimed_lat_deg", "claimed_lon_deg"), pairs("pred_lat_deg", "pred_lon_deg"),
                      [r["claimed_time_local"] if isinstance(r["claimed_time_local"], str) else None for r in firsts])


def _read_gpkg_rows(gpkg: Path, model_sha256: str) -> tuple[list[tuple[str, int, bytes]], list[dict]]:
    """The embeddings of one model (sha256, dim, blob) in sha256 order and every photo record of a GeoPackage."""
    import pyogrio

    if not gpkg.is_file():
        raise GtlocError(f"results GeoPackage '{gpkg}' not found; make it with gtloc predict PHOTOS --model CKPT "
                         f"--out {gpkg.name}")
    check_results_path(gpkg)
    with closing(sqlite3.connect(f"{gpkg.resolve().as_uri()}?mode=ro", uri=True)) as db:
        rows = db.execute(f"SELECT sha256, dim, embedding FROM {EMBEDDINGS_TABLE} WHERE model_sha256 = ? "
                          "ORDER BY sha256", (model_sha256,)).fetchall()
        if not rows:
            models = [m for (m,) in db.execute(f"SELECT DISTINCT model_sha256 FROM {EMBEDDINGS_TABLE}")]
            raise GtlocError(
                f"'{gpkg}' holds no embeddings from this checkpoint (sha256 {model_sha256[:12]}...) but from "
                f"{', '.join(m[:12] + '...' for m in models) or 'no model'}; search with the checkpoint that made "
                "them, or run gtloc predict on the photos with this one first")
    photos = pyogrio.read_dataframe(gpkg, layer="photos", read_geometry=False, columns=[
        "path", "sha256", "claimed_lat_deg", "claimed_lon_deg", "pred_lat_deg", "pred_lon_deg", "claimed_time_local"])
    return rows, photos.to_dict("records")


def write_results_gpkg(out: str | os.PathLike, search_output: dict) -> Path:
    """Write the results as layer `search_results` (Point, EPSG:4326) into `out`: a new GeoPackage (written aside
    and renamed into place), or an existing one, where the layer is replaced in place."""
    import geopandas as gpd
    import pyogrio
    from shapely.geometry import Point

    out = Path(out)
    if out.suffix.lower() != ".gpkg":
        raise GtlocError(f"search results file '{out}' must end in .gpkg (or .json for JSON)")
    if os.path.lexists(out):
        check_is_geopackage(out, "choose another --out name or move that file")
    rows = search_output["results"]
    query_json = json.dumps(search_output["query"], ensure_ascii=False)
    frame = gpd.GeoDataFrame({
        "rank": np.array([r["rank"] for r in rows], dtype=np.int64),
        "score": np.array([r["score"] for r in rows], dtype=np.float64),
        "sha256": [r["sha256"] for r in rows], "path": [r["path"] for r in rows],
        "paths": [json.dumps(r["paths"], ensure_ascii=False) for r in rows],
        "point_source": [r["point_source"] for r in rows],
        "claimed_time_local": [r["claimed_time_local"] for r in rows],
        "dist_km": np.array([np.nan if r["dist_km"] is None else r["dist_km"] for r in rows], dtype=np.float64),
        "query": [query_json] * len(rows),
    }, geometry=[Point(r["lon_deg"], r["lat_deg"]) if r["lat_deg"] is not None else None for r in rows],
        crs="EPSG:4326")

    if out.exists():
        # In place, through GDAL's own transaction and SQLite locks: the results GeoPackage is a live database that a
        # `gtloc predict` (or QGIS) may have open, so it is never copied and renamed over (that would drop their
        # commits and leave a stale -wal beside it). The file keeps its own GeoPackage version.
        pyogrio.write_dataframe(frame, out, layer=RESULTS_LAYER, driver="GPKG", geometry_type="Point",
                                layer_options={"OVERWRITE": "YES"})
        return out

    def write(tmp: Path) -> None:
        building = tmp.with_name(tmp.name + ".gpkg")  # GDAL wants the .gpkg extension
        try:
            # A new file is GeoPackage 1.2, as the results GeoPackage: the engine's GDAL would write 1.4, whose
            # R-tree triggers GDAL 3.6 (QGIS 3.22's) does not know.
            pyogrio.write_dataframe(frame, building, layer=RESULTS_LAYER, driver="GPKG", geometry_type="Point",
                                    dataset_options={"VERSION": GPKG_VERSION})
            os.replace(building, tmp)
        finally:
            building.unlink(missing_ok=True)

    return atomic_write(out, write)


def write_search_output(out: str | os.PathLike, search_output: dict) -> Path:
    """A search's output as `out`: the layer search_results of a GeoPackage (.gpkg) or JSON (.json)."""
    out = Path(out)
    if out.suffix.lower() == ".gpkg":
        return write_results_gpkg(out, search_output)
    text = json.dumps(search_output, indent=2, ensure_ascii=False) + "\n"
    return atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _float(value) -> float:
    return float("nan") if value is None else float(value)
