"""On-disk, memory-mapped cache of frozen-backbone features, keyed by backbone + preprocessing + file content.

Layout: CACHE_ROOT/<backbone fingerprint>/shard-NNNNNN.npy (float32 rows) with shard-NNNNNN.keys (one sha256 of
the photo file per row). A shard's .keys file is renamed into place last, so a shard without it is unfinished
and ignored; an interrupted run keeps every finished shard and resumes from there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gtloc_engine.io.batches import iter_pixel_batches
from gtloc_engine.io.photos import file_sha256
from gtloc_engine.model.backbone import Backbone
from gtloc_engine.io.atomic import atomic_write

log = logging.getLogger(__name__)

SHARD_ROWS = 4096


def default_cache_root() -> Path:
    return Path(os.environ.get("GTLOC_CACHE", Path.home() / ".cache" / "gtloc")) / "features"


class CachedFeatures:
    """Rows of features for a list of photos, gathered from memory-mapped shards."""

    def __init__(self, shards: list[np.ndarray], where: np.ndarray):
        self.shards = shards
        self.where = where  # (N, 2): shard index, row; -1 for photos that could not be read

    @property
    def valid(self) -> np.ndarray:
        return self.where[:, 0] >= 0

    def get(self, indices: np.ndarray) -> torch.Tensor:
        where = self.where[np.asarray(indices)]
        dim = self.shards[0].shape[1]
        out = np.empty((len(where), dim), dtype=np.float32)
        for s in np.unique(where[:, 0]):
            mask = where[:, 0] == s
            out[mask] = self.shards[s][where[mask, 1]]
        return torch.from_numpy(out)


class FeatureCache:
    """The cache folder of one backbone; `features(paths)` computes what is missing and maps the rest."""

    def __init__(self, backbone: Backbone, root: str | Path | None = None):
        self.backbone = backbone
        self.dir = Path(root or default_cache_root()) / backbone.fingerprint()
        self.dir.mkdir(parents=True, exist_ok=True)

    def _load_index(self) -> tuple[list[np.ndarray], dict[str, tuple[int, int]]]:
        shards, index = [], {}
        for keys_file in sorted(self.dir.glob("shard-*.keys")):
            array = np.load(keys_file.with_suffix(".npy"), mmap_mode="r")
            keys = keys_file.read_text().split()
            if len(keys) != len(array):
                log.warning("feature cache shard %s is inconsistent and is ignored", keys_file)
                continue
            for row, key in enumerate(keys):
                index.setdefault(key, (len(shards), row))
            shards.append(array)
        return shards, index

    def _write_shard(self, rows: list[np.ndarray], keys: list[str]) -> None:
        n = len(list(self.dir.glob("shard-*.keys")))
        stem = self.dir / f"shard-{n:06d}-{os.getpid()}"
        array = np.stack(rows).astype(np.float32)

        def write_npy(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # np.save(path) would append '.npy' to the temp name
                np.save(f, array)

        atomic_write(stem.with_suffix(".npy"), write_npy)
        atomic_write(stem.with_suffix(".keys"), lambda tmp: tmp.write_text("\n".join(keys) + "\n"))

    @torch.inference_mode()
    def features(self, paths: Sequence[str | Path], *, batch_size: int = 64, workers: int = 2,
                 progress: bool = True) -> tuple[CachedFeatures, list[tuple[int, str]]]:
        """Features for every path (in order) and the (index, reason) of photos that could not be read."""
        failures: list[tuple[int, str]] = []
        hashes: list[str | None] = []
        for i, p in enumerate(paths):
            try:
                hashes.append(file_sha256(p))
            except Exception as exc:  # unreadable file: reported per photo, the rest go on
                hashes.append(None)
                failures.append((i, f"{p}: cannot read file ({exc})"))
        _, index = self._load_index()
        todo = sorted({h: i for i, h in enumerate(hashes) if h is not None and h not in index}.values())
        if todo:
            self.backbone.eval()
            rows, keys = [], []
            bar = tqdm(total=len(todo), desc="backbone features", unit="photo", disable=not progress)
            for batch in iter_pixel_batches([paths[i] for i in todo], self.backbone.preprocess,
                                            batch_size=batch_size, workers=workers,
                                            draft_px=self.backbone.image_size):
                if batch.pixels is not None:
                    feats = self.backbone(batch.pixels).float().numpy()
                    rows.extend(feats)
                    keys.extend(hashes[todo[j]] for j in batch.indices)
                failures.extend((todo[j], reason) for j, reason in batch.failures)
                bar.update(len(batch.indices) + len(batch.failures))
                if len(rows) >= SHARD_ROWS:
                    self._write_shard(rows, keys)
                    rows, keys = [], []
            if rows:
                self._write_shard(rows, keys)
            bar.close()
        shards, index = self._load_index()
        where = np.array([index.get(h, (-1, -1)) if h else (-1, -1) for h in hashes], dtype=np.int64).reshape(-1, 2)
        return CachedFeatures(shards, where), failures
