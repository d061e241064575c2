"""Geo-temporal search over a photo collection: which photos of a results GeoPackage match a place, a time window,
another photo or a text, ranked by cosine similarity in GT-Loc's joint space.

The collection is the `embeddings` table `gtloc predict --out X.gpkg` writes (one float32 vector per photo bytes and
model), joined by sha256 with the `photos` layer (paths, claimed and predicted places and times). Queries:
    place + time  normalize(loc_emb(place) + time_emb(t)), the paper's fusion, for each time t of the window's grid
    place only    loc_emb(place)
    time only     time_emb(t) for each t of the window's grid (time of year and/or time of day, windows may wrap)
    photo         the photo's own image embedding (stored when it is in the collection, else computed)
    text          CLIP text features -> the image adapter -> the joint space (the text is read as an image would be)
A window's grid gives several query vectors; a photo's score is the max of its similarities to them (pooling
'max': the photo fits some time in the window) or their mean (pooling 'mean', which equals the similarity to the
mean query vector, so it is one query). Filters: the photo's point within radius_km of --near (haversine), inside
a polygon layer, claimed local time inside a range. The photo's point is its claimed place if any, else the
predicted one (`point_source` 'point'), or only the claimed / only the predicted place.

Scale: exact search (all similarities, numpy) up to `exact_max_rows` photos; above, a FAISS IVF-Flat inner-product
index whose nprobe is calibrated at build time until recall@10 against exact search reaches `target_recall`. It is
saved next to the GeoPackage as `<gpkg>.faiss`, keyed by model and the ordered sha256 list of the collection, and
rebuilt when either changes. A filter that leaves at most `exact_max_rows` photos is searched exactly, and so is a
query whose T vectors would make FAISS scan more than `ann_max_relative_scan` collections' worth of rows.

Public surface:
    SearchConfig, TimeWindow, SearchQuery    settings and queries (data); TimeWindow.parse('11-2', '22-3')
    Collection, load_collection(gpkg, model_sha256)   the embeddings and photo fields of one model
    exact_top_k(emb, queries, k, rows)                brute-force cosine top-k, max-pooled over the query vectors
    exact_top_k_batch, recall_at_k, calibration_queries   recall measurements (index calibration, tests, bench)
    AnnIndex.build / .search / .save / .load           the FAISS index and its sidecar file
    inside_polygons(polygon_file, latlon_deg, layer)   the polygon filter
    local_wall_clock(text)                             a claimed-time bound as a naive local datetime
    CollectionSearch(gpkg, model_path).search(query)   everything above -> {'query', 'method', 'results': [...]}
    write_results_gpkg(out, search_output)             layer `search_results`, new file or added atomically
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import shutil
import sqlite3
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from gtloc_engine import __version__
from gtloc_engine.errors import GtlocError
from gtloc_engine.geo import haversine_km, validate_latlon
from gtloc_engine.io.atomic import atomic_write
from gtloc_engine.io.geopackage import EMBEDDINGS_TABLE, check_results_path
from gtloc_engine.io.photos import file_sha256
from gtloc_engine.model.gtloc import GTLoc
from gtloc_engine.timecode import parse_time

POOLINGS = ("max", "mean")
POINT_SOURCES = ("point", "claim", "prediction")
RESULTS_LAYER = "search_results"
_SIDECAR_MAGIC = b"GTLOC-FAISS 1\n"  # then one JSON header line, then faiss.serialize_index bytes
_EXACT_CHUNK_ROWS = 65_536  # rows per matmul in exact search: bounds the (rows x grid) score block's memory


@dataclass(frozen=True)
class SearchConfig:
    """How a collection is searched; the defaults suit collections from a few photos to millions."""

    exact_max_rows: int = 100_000  # above this many photos the FAISS index is used
    # FAISS scans nprobe / nlist of the collection per query vector, one vector at a time; exact search does all T
    # vectors of a time window in one matrix product, which cost ~4 single-vector passes in bench/bench_search.py.
    # So FAISS is used only while T * nprobe / nlist <= this.
    ann_max_relative_scan: float = 4.0
    target_recall: float = 0.97  # nprobe calibration target, above the promised 0.95 recall@10 for margin
    calibration_queries: int = 200
    month_step: float = 0.5  # months between the grid times of a time-of-year window
    hour_step: float = 1.0  # hours between the grid times of a time-of-day window
    pooling: str = "max"
    point_source: str = "point"  # which place of a photo the radius and polygon filters test
    exclude_query_photo: bool = True  # a photo query does not return its own bytes
    seed: int = 0

    def validate(self) -> SearchConfig:
        if self.pooling not in POOLINGS:
            raise GtlocError(f"pooling {self.pooling!r} must be one of {POOLINGS}")
        if self.point_source not in POINT_SOURCES:
            raise GtlocError(f"point_source {self.point_source!r} must be one of {POINT_SOURCES}")
        if not (0.0 < self.month_step <= 12.0 and 0.0 < self.hour_step <= 24.0):
            raise GtlocError(f"month_step {self.month_step} / hour_step {self.hour_step} must be in (0, 12] / (0, 24]")
        return self


@dataclass(frozen=True)
class TimeWindow:
    """A time-of-year x time-of-day window; each part is [start, end) on its circle and wraps when end <= start.

    month_start / month_end are month positions (0 = Jan 1, 12 = the next Jan 1); hour_*_local are local hours.
    The whole year is (0, 12) and the whole day (0, 24).
    """

    month_start: float = 0.0
    month_end: float = 12.0
    hour_start_local: float = 0.0
    hour_end_local: float = 24.0

    @classmethod
    def parse(cls, month: str | None, hour: str | None) -> TimeWindow:
        """'6' (June), '11-2' (Nov 1 to the end of Feb); hours '14' (14:00-15:00), '22-3' (22:00 to 03:00)."""
        m0, m1 = _parse_range(month, "month", 1, 12, inclusive_end=True) if month else (0.0, 12.0)
        h0, h1 = _parse_range(hour, "hour", 0, 23, inclusive_end=False) if hour else (0.0, 24.0)
        return cls(m0, m1, h0, h1)

    @property
    def month_span(self) -> float:
        return _span(self.month_start, self.month_end, 12.0)

    @property
    def hour_span(self) -> float:
        return _span(self.hour_start_local, self.hour_end_local, 24.0)

    def torus_grid(self, month_step: float, hour_step: float) -> np.ndarray:
        """(T, 2) (theta_year, phi_day) at the centres of equal cells covering the window, month-major."""
        months = _circle_grid(self.month_start, self.month_span, month_step, 12.0)
        hours = _circle_grid(self.hour_start_local, self.hour_span, hour_step, 24.0)
        mm, hh = np.meshgrid(months / 12.0, hours / 24.0, indexing="ij")
        return np.stack((mm.ravel(), hh.ravel()), axis=-1)

    def contains(self, month_pos: np.ndarray, hour_local: np.ndarray) -> np.ndarray:
        """True where (month position, local hour) lies inside the window."""
        in_month = (np.asarray(month_pos) - self.month_start) % 12.0 < self.month_span
        in_hour = (np.asarray(hour_local) - self.hour_start_local) % 24.0 < self.hour_span
        return in_month & in_hour

    def describe(self) -> dict:
        return {k: round(v, 4) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class SearchQuery:
    """One search: the query (place and/or time window, or a photo, or a text) and the filters."""

    near_latlon_deg: tuple[float, float] | None = None
    window: TimeWindow | None = None
    like_photo: str | None = None
    text: str | None = None
    radius_km: float | None = None  # filter: the photo's point within this distance of near_latlon_deg
    within: str | None = None  # filter: a polygon file (GeoJSON, GeoPackage, Shapefile ...) read with geopandas
    within_layer: str | None = None  # the layer of `within` to use (default: its first)
    claimed_after: dt.datetime | None = None  # filter: claimed local time >= this (naive, wall clock)
    claimed_before: dt.datetime | None = None  # filter: claimed local time < this
    top_k: int = 10

    @property
    def kind(self) -> str:
        if self.like_photo and self.window is not None and self.near_latlon_deg is None and not self.text:
            return "photo+time"  # the query photo's place at another time (TIGeR's task)
        kinds = [name for name, given in (("photo", self.like_photo), ("text", self.text)) if given]
        if self.near_latlon_deg is not None or self.window is not None:
            kinds.append("place+time" if self.near_latlon_deg is not None and self.window is not None
                         else "place" if self.near_latlon_deg is not None else "time")
        if len(kinds) != 1:
            raise GtlocError("give exactly one query: a place and/or a time window (--near, --month, --hour), "
                             "a photo (--like, optionally with --month/--hour: the same place at another time) or "
                             f"a text (--text); got {kinds or 'none'}")
        return kinds[0]

    def validate(self) -> SearchQuery:
        kind = self.kind
        if self.top_k < 1:
            raise GtlocError(f"top_k {self.top_k} must be at least 1")
        if self.near_latlon_deg is not None:
            validate_latlon(*self.near_latlon_deg, where="--near")
        if self.radius_km is not None and self.near_latlon_deg is None:
            raise GtlocError("--radius-km filters around --near; give --near LAT,LON with it")
        if self.radius_km is not None and not (self.radius_km > 0 and math.isfinite(self.radius_km)):
            raise GtlocError(f"--radius-km {self.radius_km} must be a positive number of km")
        if kind == "text" and not self.text.strip():
            raise GtlocError("--text is empty; give a description such as 'snow at dusk'")
        return self

    def to_json(self) -> dict:
        out = {"kind": self.kind, "top_k": self.top_k}
        for name in ("near_latlon_deg", "like_photo", "text", "radius_km", "within", "within_layer"):
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        if self.window is not None:
            out["window"] = self.window.describe()
        for name in ("claimed_after", "claimed_before"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name).isoformat()
        return out


@dataclass
class Collection:
    """The image embeddings of one model in a results GeoPackage, one row per distinct photo bytes (sha256 order).

    Only bytes that still have a row in `photos` are kept (a changed file leaves its old embedding behind).
    """

    gpkg: Path
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
    """The collection of `model_sha256` in a results GeoPackage; one clear GtlocError when there is none."""
    import pyogrio

    gpkg = Path(gpkg)
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
    by_sha: dict[str, list[dict]] = {}
    for record in photos.sort_values("path").to_dict("records"):
        by_sha.setdefault(record["sha256"], []).append(record)
    kept = [(sha, dim, blob) for sha, dim, blob in rows if sha in by_sha]
    if not kept:
        raise GtlocError(f"'{gpkg}' has embeddings from this checkpoint but none of their photos is in its photos "
                         "layer any more; run gtloc predict on the photos again")
    dims = {dim for _, dim, _ in kept}
    if len(dims) != 1:
        raise GtlocError(f"'{gpkg}' has embeddings of several sizes {sorted(dims)} for one model; it is damaged, "
                         "write the results to a new file")
    emb = np.stack([np.frombuffer(blob, dtype="<f4", count=dim) for _, dim, blob in kept]).astype(np.float32)
    firsts = [by_sha[sha][0] for sha, _, _ in kept]

    def pairs(lat: str, lon: str) -> np.ndarray:
        return np.array([[_float(r[lat]), _float(r[lon])] for r in firsts], dtype=np.float64).reshape(-1, 2)

    return Collection(gpkg, model_sha256, emb, [sha for sha, _, _ in kept],
                      [[r["path"] for r in by_sha[sha]] for sha, _, _ in kept],
                      pairs("claimed_lat_deg", "claimed_lon_deg"), pairs("pred_lat_deg", "pred_lon_deg"),
                      [r["claimed_time_local"] if isinstance(r["claimed_time_local"], str) else None for r in firsts])


def exact_top_k(emb: np.ndarray, queries: np.ndarray, k: int, rows: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Row indices and scores of the k best rows of `emb` (restricted to `rows` when given), best first.

    A row's score is its max cosine similarity over the (T, dim) query vectors (T = 1 for a single query).
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    candidates = np.arange(len(emb)) if rows is None else np.asarray(rows, dtype=np.int64)
    scores = np.empty(len(candidates), dtype=np.float32)
    for start in range(0, len(candidates), _EXACT_CHUNK_ROWS):
        chunk = candidates[start:start + _EXACT_CHUNK_ROWS]
        block = emb[chunk] if rows is not None else emb[start:start + _EXACT_CHUNK_ROWS]
        scores[start:start + len(chunk)] = (block @ queries.T).max(axis=1)
    k = min(k, len(candidates))
    if k == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    top = np.argpartition(-scores, k - 1)[:k]
    order = top[np.lexsort((candidates[top], -scores[top]))]  # ties broken by row: deterministic
    return candidates[order], scores[order]


class AnnIndex:
    """A FAISS IVF-Flat inner-product index over L2-normalised rows, with its calibrated nprobe and its key."""

    def __init__(self, index, nprobe: int, key: dict):
        self.index = index
        self.nprobe = nprobe
        self.key = key  # what it was built from: model, rows, dim, nlist, nprobe, calibrated recall

    @classmethod
    def build(cls, emb: np.ndarray, config: SearchConfig = SearchConfig(), key: dict | None = None) -> AnnIndex:
        """Cluster into nlist ~ sqrt(N) lists, add all rows, then pick the smallest power-of-two nprobe whose
        recall@10 against exact search reaches config.target_recall on calibration queries drawn from the rows."""
        faiss = _faiss()
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        n, dim = emb.shape
        # sqrt(N) lists: ~1000 for 1M rows, so a query scans ~nprobe/1000 of them; k-means wants >= 39 rows per list.
        nlist = int(max(1, min(round(math.sqrt(n)), n // 39)))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = config.seed
        index.cp.max_points_per_centroid = 64  # k-means on <= 64 nlist rows: enough for centroids, fast on 1M
        index.cp.min_points_per_centroid = 1  # nlist above already keeps >= 39 rows per list; no warning on stderr
        index.train(emb)
        index.add(emb)
        queries = calibration_queries(emb, config.calibration_queries, config.seed)
        truth = exact_top_k_batch(emb, queries, 10)
        nprobe, recall = 1, 0.0
        while True:
            index.nprobe = nprobe
            _, found = index.search(queries, 10)
            recall = recall_at_k(truth, found)
            if recall >= config.target_recall or nprobe >= nlist:
                break
            nprobe = min(nprobe * 2, nlist)
        full_key = {**(key or {}), "n_rows": n, "dim": dim, "nlist": nlist, "nprobe": nprobe,
                    "calibrated_recall_at_10": round(recall, 4), "engine_version": __version__}
        return cls(index, nprobe, full_key)

    def search(self, queries: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Like exact_top_k, approximately: each query's top k (among `rows` when given), merged by max score.

        The merge is exact for max pooling: a row in the pooled top k is in the top k of the query it scores best on.
        """
        faiss = _faiss()
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        params = faiss.SearchParametersIVF(nprobe=self.nprobe)
        if rows is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(rows, dtype=np.int64))
            params = faiss.SearchParametersIVF(nprobe=self.nprobe, sel=selector)
        scores, ids = self.index.search(queries, k, params=params)
        valid = ids >= 0
        best: dict[int, float] = {}
        for i, s in zip(ids[valid].tolist(), scores[valid].tolist()):
            if s > best.get(i, -math.inf):
                best[i] = s
        ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:k]
        return (np.array([i for i, _ in ranked], dtype=np.int64), np.array([s for _, s in ranked], dtype=np.float32))

    def save(self, path: str | os.PathLike) -> Path:
        """One file: a magic line, the key as one JSON line, then FAISS's own serialisation (no pickle)."""
        faiss = _faiss()
        blob = faiss.serialize_index(self.index).tobytes()
        header = json.dumps(self.key, sort_keys=True).encode() + b"\n"

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                f.write(_SIDECAR_MAGIC + header)
                f.write(blob)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike, expected_key: dict) -> AnnIndex | None:
        """The saved index when its key matches `expected_key` (every item), else None (stale, foreign, damaged)."""
        faiss = _faiss()
        try:
            with open(path, "rb") as f:
                if f.readline() != _SIDECAR_MAGIC:
                    return None
                key = json.loads(f.readline())
                if any(key.get(name) != value for name, value in expected_key.items()):
                    return None
                index = faiss.deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))
        except (OSError, ValueError, RuntimeError):  # missing, truncated or not ours: rebuild
            return None
        return cls(index, int(key["nprobe"]), key)


def calibration_queries(emb: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Queries like real ones: half stored rows, half normalised midpoints of two random rows (fused queries
    fall between clusters)."""
    rng = np.random.default_rng(seed)
    a = emb[rng.integers(len(emb), size=n)]
    b = emb[rng.integers(len(emb), size=n)]
    mixed = a.copy()
    mixed[n // 2:] = a[n // 2:] + b[n // 2:]
    return np.ascontiguousarray(mixed / np.linalg.norm(mixed, axis=1, keepdims=True).clip(1e-12), dtype=np.float32)


def exact_top_k_batch(emb: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) row indices of each query's own exact top k (no pooling), for recall measurements."""
    out = np.empty((len(queries), min(k, len(emb))), dtype=np.int64)
    for start in range(0, len(queries), 64):
        scores = queries[start:start + 64] @ emb.T
        top = np.argpartition(-scores, out.shape[1] - 1, axis=1)[:, :out.shape[1]]
        out[start:start + 64] = top
    return out


def recall_at_k(truth: np.ndarray, found: np.ndarray) -> float:
    """Mean share of each row of `truth` (exact top k ids) that appears in the same row of `found`."""
    hits = [len(set(t.tolist()) & set(f.tolist())) / len(t) for t, f in zip(truth, found)]
    return float(np.mean(hits)) if hits else 1.0


class CollectionSearch:
    """Searches the collection that one checkpoint made in one results GeoPackage; reusable across queries."""

    def __init__(self, gpkg: str | os.PathLike, model_path: str | os.PathLike, *,
                 config: SearchConfig = SearchConfig(), model: GTLoc | None = None):
        from gtloc_engine.model.checkpoint import load_checkpoint

        self.config = config.validate()
        self.gpkg = Path(gpkg)
        self.model_path = Path(model_path)
        self.model_sha256 = file_sha256(self.model_path)
        self.collection = load_collection(self.gpkg, self.model_sha256)  # refuses a foreign model before loading
        self.model = (model if model is not None else load_checkpoint(self.model_path)).eval()
        self._ann: AnnIndex | None = None
        self._place_memo: tuple[SearchQuery, tuple] | None = None

    @property
    def sidecar_path(self) -> Path:
        return self.gpkg.with_name(self.gpkg.name + ".faiss")

    def ann_index(self) -> AnnIndex:
        """The FAISS index of this collection: loaded from the sidecar when its key matches, else built and saved."""
        if self._ann is None:
            key = {"model_sha256": self.model_sha256, "rows_sha256": self.collection.rows_sha256,
                   "n_rows": len(self.collection), "target_recall": self.config.target_recall}
            self._ann = AnnIndex.load(self.sidecar_path, key)
            if self._ann is None:
                self._ann = AnnIndex.build(self.collection.emb, self.config, key)
                self._ann.save(self.sidecar_path)
        return self._ann

    # ------------------------------------------------------------------------------------------ query vectors

    @torch.inference_mode()
    def query_vectors(self, query: SearchQuery) -> tuple[np.ndarray, list[str]]:
        """(T, dim) float32 query vectors for the query's kind, and notes about how far to trust them."""
        kind, notes, model = query.kind, [], self.model
        if kind in ("place", "place+time", "photo+time"):
            self._require_head("location", kind)
        if kind in ("time", "place+time", "photo+time"):
            self._require_head("time", kind)
        near = self.query_place(query)[0]
        if kind == "photo+time":
            notes.append(self.query_place(query)[1])
        if kind == "photo":
            vectors = self._photo_vector(query.like_photo)[None]
        elif kind == "text":
            vectors, notes = self._text_vector(query.text)
        else:
            vectors = None
            if query.window is not None:
                torus = query.window.torus_grid(self.config.month_step, self.config.hour_step)
                vectors = model.embed_times(torch.as_tensor(torus, dtype=torch.float32))
            if near is not None:
                place = model.embed_locations(torch.tensor([near], dtype=torch.float32))
                vectors = place if vectors is None else model.fuse(place, vectors)  # the gt2i query
            vectors = vectors.numpy()
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.config.pooling == "mean" and len(vectors) > 1:
            vectors = vectors.mean(axis=0, keepdims=True)  # mean of cosines = cosine with the mean vector
        return vectors, notes

    def query_place(self, query: SearchQuery) -> tuple[tuple[float, float] | None, str | None]:
        """The place a query searches (--near, or for photo+time the query photo's) and a note on where it came
        from; computed once per query."""
        if query.kind != "photo+time":
            return query.near_latlon_deg, None
        if self._place_memo is None or self._place_memo[0] is not query:  # query vectors and filters both ask
            self._place_memo = (query, self._photo_place(query.like_photo))
        return self._place_memo[1]

    def _photo_place(self, photo: str) -> tuple[tuple[float, float], str]:
        """The place a photo+time query searches: the photo's point in the collection (its claimed place, else its
        predicted one), else its EXIF claimed place, else the mode of its location surface."""
        row = self.collection.row_of(file_sha256(photo))
        if row is not None:
            lat, lon = self.collection.point_latlon_deg("point")[row]
            if np.isfinite(lat) and np.isfinite(lon):
                return (float(lat), float(lon)), f"same place as the query photo: its point in the collection " \
                                                 f"({lat:.4f}, {lon:.4f})"
        from gtloc_engine.io.exif import read_exif_claims

        claims = read_exif_claims(photo)
        if claims.has_place:
            return (claims.lat_deg, claims.lon_deg), \
                f"same place as the query photo: its EXIF place ({claims.lat_deg:.4f}, {claims.lon_deg:.4f})"
        from gtloc_engine.inference.surfaces import SurfaceMaker, find_candidates

        mode = find_candidates(SurfaceMaker(self.model).global_surface(self._photo_vector(photo)), 1)[0]
        return (mode.lat_deg, mode.lon_deg), \
            f"same place as the query photo: its most likely place ({mode.lat_deg:.4f}, {mode.lon_deg:.4f})"

    def _require_head(self, head: str, kind: str) -> None:
        if not self.model.heads_trained.get(head):
            raise GtlocError(f"checkpoint {self.model_path} has no trained {head} head, so a {kind} query would rank "
                             "by noise; use a checkpoint trained with that head")

    def _photo_vector(self, photo: str) -> np.ndarray:
        row = self.collection.row_of(file_sha256(photo))
        if row is not None:
            return self.collection.emb[row]
        from gtloc_engine.inference.predictor import embed_photos

        emb, ok, failures = embed_photos(self.model, [photo], workers=1)
        if not ok:
            raise GtlocError(failures[0][1] if failures else f"photo {photo} could not be embedded")
        return emb[0]

    def _text_vector(self, text: str) -> tuple[np.ndarray, list[str]]:
        backbone = self.model.backbone
        if not backbone.cfg.text_tower:
            raise GtlocError(f"checkpoint {self.model_path}'s backbone came without its text tower (a vision-only "
                             "import), so it cannot embed a text; search by place, time or photo instead")
        try:
            logging.disable(logging.INFO)  # open_clip logs each tokenizer lookup at INFO through the root logger
            try:
                tokens = backbone.tokenize([text])
            finally:
                logging.disable(logging.NOTSET)
            features = backbone.encode_text(tokens).float()
        except (AttributeError, NotImplementedError, RuntimeError) as exc:
            raise GtlocError(f"checkpoint {self.model_path}'s backbone {backbone.cfg.name!r} has no usable text "
                             f"tower ({type(exc).__name__}); text search needs a CLIP backbone with its text encoder"
                             ) from None
        if features.shape[-1] != backbone.feature_dim:
            raise GtlocError(f"checkpoint {self.model_path}'s text features have {features.shape[-1]} values, its "
                             f"image features {backbone.feature_dim}; text search needs a CLIP whose towers match")
        notes = []
        cfg = backbone.cfg
        if cfg.pretrained is None or cfg.trainable:
            # Text and image towers only share a space when they were trained together (pretrained CLIP, frozen).
            notes.append(f"backbone {cfg.name!r} is not a frozen pretrained CLIP: its text tower was never aligned "
                         "with its image tower, so text results are not meaningful")
        return self.model.embed_features(features).numpy(), notes

    # ------------------------------------------------------------------------------------------ filters, search

    def filter_rows(self, query: SearchQuery) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Indices of the rows that pass the filters (None = all) and each row's distance to --near in km."""
        col = self.collection
        keep = np.ones(len(col), dtype=bool)
        points = col.point_latlon_deg(self.config.point_source)
        dist_km = None
        near = self.query_place(query)[0]
        if near is not None:
            dist_km = haversine_km(np.array(near), points)  # NaN where the photo has no place
        if query.radius_km is not None:
            keep &= np.nan_to_num(dist_km, nan=np.inf) <= query.radius_km
        if query.within is not None:
            keep &= inside_polygons(query.within, points, layer=query.within_layer)
        if query.claimed_after is not None or query.claimed_before is not None:
            keep &= _claimed_in_range(col.claimed_time_local, query.claimed_after, query.claimed_before)
        if query.kind in ("photo", "photo+time") and self.config.exclude_query_photo:
            row = col.row_of(file_sha256(query.like_photo))
            if row is not None:
                keep[row] = False
        return (None if keep.all() else np.flatnonzero(keep)), dist_km

    def search(self, query: SearchQuery) -> dict:
        """{'query', 'method' ('exact' or 'faiss'), 'n_photos', 'n_candidates', 'notes', 'results': [...]}."""
        query = query.validate()
        vectors, notes = self.query_vectors(query)
        rows, dist_km = self.filter_rows(query)
        n_candidates = len(self.collection) if rows is None else len(rows)
        exact = n_candidates <= self.config.exact_max_rows
        if not exact:
            ann = self.ann_index()
            exact = len(vectors) * ann.nprobe / ann.key["nlist"] > self.config.ann_max_relative_scan
        if n_candidates == 0:
            found, scores = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        elif exact:
            found, scores = exact_top_k(self.collection.emb, vectors, query.top_k, rows)
        else:
            found, scores = self.ann_index().search(vectors, query.top_k, rows)
        return {"query": query.to_json(), "gpkg": str(self.gpkg), "model_sha256": self.model_sha256,
                "method": "exact" if exact else "faiss", "n_photos": len(self.collection),
                "n_candidates": n_candidates, "notes": notes,
                "results": [self._result(rank, int(i), float(s), dist_km)
                            for rank, (i, s) in enumerate(zip(found, scores), start=1)]}

    def _result(self, rank: int, i: int, score: float, dist_km: np.ndarray | None) -> dict:
        col = self.collection
        lat, lon = col.point_latlon_deg(self.config.point_source)[i]
        has_claim = bool(np.isfinite(col.claimed_latlon_deg[i]).all())
        source = self.config.point_source if self.config.point_source != "point" else (
            "claim" if has_claim else "prediction")
        return {"rank": rank, "score": round(score, 6), "sha256": col.sha256[i], "path": col.paths[i][0],
                "paths": col.paths[i], "lat_deg": _none_if_nan(lat), "lon_deg": _none_if_nan(lon),
                "point_source": source, "claimed_time_local": col.claimed_time_local[i],
                "dist_km": None if dist_km is None else _none_if_nan(round(float(dist_km[i]), 3))}


def inside_polygons(polygon_file: str | os.PathLike, latlon_deg: np.ndarray, *, layer: str | None = None
                    ) -> np.ndarray:
    """True where a (lat, lon) point lies inside (or on the edge of) any polygon of the file's layer (default:
    the first), in EPSG:4326."""
    import geopandas as gpd
    import shapely

    try:
        frame = gpd.read_file(polygon_file, layer=layer)
    except Exception as exc:  # noqa: BLE001  (missing file, unknown format, corrupt: one line for all)
        raise GtlocError(f"polygon file {polygon_file} cannot be read ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}); give a GeoJSON, GeoPackage or Shapefile "
                         "with polygons") from None
    if frame.crs is not None and not frame.crs.equals("EPSG:4326"):
        frame = frame.to_crs("EPSG:4326")
    polygons = [g for g in frame.geometry if g is not None and g.geom_type in ("Polygon", "MultiPolygon")]
    if not polygons:
        raise GtlocError(f"polygon file {polygon_file} has no polygons; give a file whose features are polygons")
    area = shapely.union_all(polygons)
    lat, lon = latlon_deg[:, 0], latlon_deg[:, 1]
    finite = np.isfinite(lat) & np.isfinite(lon)
    inside = np.zeros(len(latlon_deg), dtype=bool)
    inside[finite] = shapely.intersects_xy(area, lon[finite], lat[finite])  # x = lon, y = lat
    return inside


def write_results_gpkg(out: str | os.PathLike, search_output: dict) -> Path:
    """Write the results as layer `search_results` (Point, EPSG:4326) into `out`: a new GeoPackage, or a copy of
    the existing one with the layer replaced, renamed over it (so readers never see a half-written file)."""
    import geopandas as gpd
    import pyogrio
    from shapely.geometry import Point

    out = Path(out)
    if out.suffix.lower() != ".gpkg":
        raise GtlocError(f"search results file '{out}' must end in .gpkg (or .json for JSON)")
    if os.path.lexists(out):
        _check_geopackage(out)
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

    def write(tmp: Path) -> None:
        building = tmp.with_name(tmp.name + ".gpkg")  # GDAL wants the .gpkg extension
        try:
            if out.exists():
                shutil.copyfile(out, building)
            pyogrio.write_dataframe(frame, building, layer=RESULTS_LAYER, driver="GPKG", geometry_type="Point",
                                    layer_options={"OVERWRITE": "YES"})
            os.replace(building, tmp)
        finally:
            building.unlink(missing_ok=True)

    return atomic_write(out, write)


# ---------------------------------------------------------------------------------------------- helpers


def _check_geopackage(path: Path) -> None:
    """GtlocError unless `path` is a GeoPackage (SQLite with gpkg_contents): never overwrite another file."""
    refuse = f"'{path}' exists and is not a GeoPackage; choose another --out name or move that file"
    if not path.is_file():
        raise GtlocError(refuse)
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            db.execute("SELECT count(*) FROM gpkg_contents").fetchone()
    except sqlite3.Error:
        raise GtlocError(refuse) from None


def _faiss():
    try:
        import faiss
    except ImportError:
        raise GtlocError("collections above the exact-search size need faiss; pip install faiss-cpu") from None
    return faiss


def _parse_range(text: str, what: str, low: int, high: int, *, inclusive_end: bool) -> tuple[float, float]:
    """'A' or 'A-B' (integers in [low, high]) -> (start, end) positions on the circle."""
    parts = text.replace(" ", "").split("-")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or any(not low <= v <= high for v in values):
        raise GtlocError(f"{what} {text!r} must be N or A-B with whole numbers in [{low}, {high}], e.g. "
                         + ("'6' or '11-2' (Nov to Feb)" if what == "month" else "'14' or '22-3' (22:00 to 03:00)"))
    first, last = values[0], values[-1]
    if what == "month":  # month numbers are 1-based and both ends are whole months
        return float(first - 1), float(last if inclusive_end else last - 1)
    end = last + 1 if len(values) == 1 else last  # '14' is the hour 14:00-15:00; '22-3' ends at 03:00
    return float(first), float(end % 24)


def _span(start: float, end: float, period: float) -> float:
    span = (end - start) % period
    return period if span == 0 else span  # start == end means the whole circle


def _circle_grid(start: float, span: float, step: float, period: float) -> np.ndarray:
    n = max(1, math.ceil(span / step - 1e-9))
    return (start + (np.arange(n) + 0.5) * span / n) % period


def _claimed_in_range(times: list[str | None], after: dt.datetime | None, before: dt.datetime | None) -> np.ndarray:
    """True where a claimed local time exists and lies in [after, before); wall clocks compared, offsets ignored."""
    out = np.zeros(len(times), dtype=bool)
    for i, text in enumerate(times):
        if not text:
            continue
        wall = local_wall_clock(text)
        out[i] = (after is None or wall >= after) and (before is None or wall < before)
    return out


def local_wall_clock(text: str) -> dt.datetime:
    """A time string (ISO 8601 or EXIF) as a naive local wall clock, whole seconds; its UTC offset is dropped."""
    t = parse_time(text)
    return dt.datetime(t.year, t.month, t.day, t.hour, t.minute, int(t.second))


def _float(value) -> float:
    return float("nan") if value is None else float(value)


def _none_if_nan(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)
