"""CollectionSearch: one checkpoint's collection in one results GeoPackage, searched by place, time window, photo or
text. It turns a query into query vectors in the joint space, applies the filters, ranks exactly or through the
FAISS index, and shapes the results.

Query vectors:
    place + time  normalize(loc_emb(place) + time_emb(t)), the paper's fusion, for each time t of the window's grid
    place only    loc_emb(place)
    time only     time_emb(t) for each t of the window's grid (time of year and/or time of day, windows may wrap)
    photo         the photo's own image embedding (stored when it is in the collection, else computed)
    photo + time  the query photo's place fused with the window's times (gt2i)
    text          CLIP text features -> the image adapter -> the joint space (the text is read as an image would be)
A window's grid gives several query vectors; a photo's score is the max of its similarities to them (pooling
'max': the photo fits some time in the window) or their mean (pooling 'mean', which equals the similarity to the
mean query vector, so it is one query).

    CollectionSearch(gpkg, model_path).search(query)   -> {'query', 'method', 'results': [...], ...}
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

from gtloc_engine.device import host
from gtloc_engine.errors import GtlocError
from gtloc_engine.inference.search.collection import load_collection
from gtloc_engine.inference.search.filters import filter_rows
from gtloc_engine.inference.search.knn import AnnIndex, exact_top_k
from gtloc_engine.inference.search.query import SearchConfig, SearchQuery
from gtloc_engine.io.photos import file_sha256
from gtloc_engine.io.store import store_target
from gtloc_engine.model.gtloc import GTLoc


class CollectionSearch:
    """Searches the collection that one checkpoint made in one results GeoPackage; reusable across queries."""

    def __init__(self, gpkg: str | os.PathLike, model_path: str | os.PathLike, *,
                 config: SearchConfig = SearchConfig(), model: GTLoc | None = None):
        from gtloc_engine.model.checkpoint import load_checkpoint, read_header

        self.config = config.validate()
        self.gpkg = store_target(gpkg)  # a GeoPackage path, or a PostGIS case's target (text)
        self.model_path = Path(model_path)
        read_header(self.model_path)  # a missing or foreign checkpoint says so (and not that a photo is unreadable)
        self.model_sha256 = file_sha256(self.model_path)
        self.collection = load_collection(self.gpkg, self.model_sha256)  # refuses a foreign model before loading
        self.model = (model if model is not None else load_checkpoint(self.model_path)).eval()
        self._ann: AnnIndex | None = None
        self._place_memo: tuple[SearchQuery, tuple] | None = None

    @property
    def sidecar_path(self) -> Path:
        """Where the FAISS index is kept: next to a GeoPackage; for a PostGIS case, in the local cache
        ($GTLOC_CACHE/search/), one file per case target (its key says which collection it indexes)."""
        if isinstance(self.gpkg, Path):
            return self.gpkg.with_name(self.gpkg.name + ".faiss")
        from gtloc_engine.inference.constants import default_cache_root

        name = hashlib.sha256(self.gpkg.encode()).hexdigest()[:24]
        return default_cache_root() / "search" / f"postgis-{name}.faiss"

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

    @torch.no_grad()
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
            vectors = host(vectors)
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
        return host(self.model.embed_features(features)), notes

    # ------------------------------------------------------------------------------------------ filters, search

    def filter_rows(self, query: SearchQuery) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Indices of the rows that pass the filters (None = all) and each row's distance to the place searched."""
        return filter_rows(self.collection, query, self.config, self.query_place(query)[0])

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


def _none_if_nan(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)
