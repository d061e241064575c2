"""Nearest neighbours by cosine similarity: exact top-k (numpy, max-pooled over several query vectors) and the FAISS
IVF-Flat index used above SearchConfig.exact_max_rows, with its calibrated nprobe and its sidecar file.

    exact_top_k(emb, queries, k, rows)        brute-force cosine top-k, max-pooled over the query vectors
    exact_top_k_batch, recall_at_k, calibration_queries   recall measurements (index calibration, tests, bench)
    AnnIndex.build / .search / .save / .load   the FAISS index and its sidecar file (`<gpkg>.faiss`)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from gtloc_engine import __version__
from gtloc_engine.errors import GtlocError
from gtloc_engine.inference.search.query import SearchConfig
from gtloc_engine.io.atomic import atomic_write

_SIDECAR_MAGIC = b"GTLOC-FAISS 1\n"  # then one JSON header line, then faiss.serialize_index bytes
_EXACT_CHUNK_ROWS = 65_536  # rows per matmul in exact search: bounds the (rows x grid) score block's memory


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


def _faiss():
    try:
        import faiss
    except ImportError:
        raise GtlocError("collections above the exact-search size need faiss; pip install faiss-cpu") from None
    return faiss
