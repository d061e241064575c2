"""Model constants: embeddings of fixed point sets (GPS gallery, surface grids, time grid), computed once per model
and cached on disk, so that a photo costs one matmul against them instead of a location-encoder pass.

Layout: `<cache_root>/constants/<model_key>/<name>-<points_sha256>.npy`, float32 (N, D), where cache_root is
`cache_dir` when given, else `$GTLOC_CACHE`, else `~/.cache/gtloc` (the feature cache's root, too).

- `model_key(model)`: sha256 over the location and time encoders' tensors (weights and the fixed random Fourier
  matrices) plus the model config JSON and this module's format tag. Retraining, another seed or another config
  gives another key; the image side (backbone, adapter, logit scales) does not enter, because these embeddings
  do not depend on it.
- The points' sha256 is over their float64 bytes and shape, so the same name with other points never collides.
- Files are written atomically (temp file + rename) and read with `np.load(mmap_mode="r", allow_pickle=False)`:
  nothing is unpickled, big grids are paged in lazily and shared between processes through the page cache.
- Building a set for the first time can take a while (a 0.5 deg grid is 259,200 location-encoder points: tens of
  seconds for paper-size encoders on a laptop CPU). `reporting(callback)` makes every build inside the `with`
  report `callback(ConstantsProgress)` after each chunk, so the CLI and the QGIS plugin can say what is happening
  and how long it will take.
- A file that cannot be read, or whose shape or dtype is wrong (truncated, corrupt header, another writer's
  garbage), is logged and recomputed; bit flips inside the data are not detected (no checksum: hashing a
  1-2 GB grid on every load would cost more than the matmul it serves).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gtloc_engine.device import host
from gtloc_engine.errors import GtlocError
from gtloc_engine.io.atomic import atomic_write
from gtloc_engine.model.gtloc import GTLoc

log = logging.getLogger(__name__)

# Bump when the meaning of a cached embedding changes (v2: time angles computed in the authors' float order).
FORMAT_TAG = "gtloc-constants-v2"
ENCODE_CHUNK = 8192  # points per encoder call: bounds activation memory (~32 MB per 1024-wide layer)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")

# model -> (tensor versions, key): hashing ~75 MB of paper-size encoders costs ~0.1 s, so memoise it and
# recompute only when a tensor was modified in place (optimizer steps and load_state_dict bump _version).
_KEY_MEMO: weakref.WeakKeyDictionary[GTLoc, tuple[tuple, str]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ConstantsProgress:
    """One step of building a constants set: `done` of `total` points of set `name`; `eta_s` the seconds left at
    the rate so far (None before the first chunk is timed)."""

    name: str
    done: int
    total: int
    eta_s: float | None


# The callback of the innermost `reporting` block of this thread (a ContextVar: worker threads do not share it).
_REPORT: ContextVar[Callable[[ConstantsProgress], None] | None] = ContextVar("gtloc_constants_report", default=None)


@contextmanager
def reporting(callback: Callable[[ConstantsProgress], None]) -> Iterator[None]:
    """Every constants set built (not read from the cache) inside the block reports its progress to `callback`."""
    token = _REPORT.set(callback)
    try:
        yield
    finally:
        _REPORT.reset(token)


def default_cache_root() -> Path:
    return Path(os.environ.get("GTLOC_CACHE", Path.home() / ".cache" / "gtloc"))


def _encoder_tensors(model: GTLoc) -> list[tuple[str, torch.Tensor]]:
    tensors = [(f"location_encoder.{k}", v) for k, v in model.location_encoder.state_dict(keep_vars=True).items()]
    tensors += [(f"time_encoder.{k}", v) for k, v in model.time_encoder.state_dict(keep_vars=True).items()]
    return sorted(tensors)


def model_key(model: GTLoc) -> str:
    """sha256 (hex) over the location/time encoder tensors, the model config JSON and the cache format tag."""
    tensors = _encoder_tensors(model)
    versions = tuple((name, t.data_ptr(), t._version) for name, t in tensors)
    memo = _KEY_MEMO.get(model)
    if memo is not None and memo[0] == versions:
        return memo[1]
    h = hashlib.sha256()
    h.update(FORMAT_TAG.encode())
    h.update(json.dumps(model.cfg.to_dict(), sort_keys=True).encode())
    for name, t in tensors:
        data = t.detach().cpu().contiguous()
        h.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    key = h.hexdigest()
    _KEY_MEMO[model] = (versions, key)
    return key


def _points_sha256(points: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(points.shape).encode())
    h.update(np.ascontiguousarray(points, dtype=np.float64).tobytes())
    return h.hexdigest()


def _checked_points(points: np.ndarray, what: str, width: int = 2) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != width or not np.all(np.isfinite(points)):
        raise GtlocError(f"{what}: expected a finite (N, {width}) array, got shape {points.shape}; "
                         f"pass (N, {width}) numbers")
    return points


def _cached(model: GTLoc, points: np.ndarray, name: str, cache_dir: str | Path | None,
            encode: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    if not _NAME_RE.match(name):
        raise GtlocError(f"constants cache: name {name!r} must be 1-80 characters of letters, digits, '_', '.', '-'")
    dim = model.cfg.embed_dim
    path = (Path(cache_dir) if cache_dir is not None else default_cache_root()) / "constants" / model_key(model) / \
        f"{name}-{_points_sha256(points)}.npy"
    if path.is_file():
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if array.shape == (len(points), dim) and array.dtype == np.float32:
                return array
            log.warning("constants cache %s has shape %s %s, expected (%d, %d) float32; recomputing",
                        path, array.shape, array.dtype, len(points), dim)
        except (ValueError, OSError, EOFError) as exc:
            log.warning("constants cache %s is unreadable (%s); recomputing", path, exc)

    report = _REPORT.get()

    def write(tmp: Path) -> None:
        # Filled chunk by chunk into a memory-mapped .npy: a 1M-point grid never sits in memory twice.
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(points), dim))
        started = time.monotonic()
        if report is not None:
            report(ConstantsProgress(name, 0, len(points), None))
        with torch.no_grad():  # the encoders move each chunk to the model's device (gtloc_engine/device.py)
            for i in range(0, len(points), ENCODE_CHUNK):
                chunk = torch.as_tensor(points[i:i + ENCODE_CHUNK], dtype=torch.float32)
                out[i:i + ENCODE_CHUNK] = host(encode(chunk).float())
                if report is not None:
                    done = min(i + ENCODE_CHUNK, len(points))
                    rate = done / max(time.monotonic() - started, 1e-9)
                    report(ConstantsProgress(name, done, len(points), (len(points) - done) / rate))
        out.flush()
        del out

    was_training = model.training
    model.eval()
    try:
        atomic_write(path, write)
    finally:
        model.train(was_training)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def cached_location_embeddings(model: GTLoc, latlon_deg: np.ndarray, *, name: str,
                               cache_dir: str | Path | None = None) -> np.ndarray:
    """(N, D) float32 L2-normalised location embeddings of (N, 2) lat/lon degrees, from the disk cache or computed."""
    points = _checked_points(latlon_deg, f"location points {name!r}")
    return _cached(model, points, name, cache_dir, model.embed_locations)


def cached_time_embeddings(model: GTLoc, torus: np.ndarray, *, name: str,
                           cache_dir: str | Path | None = None) -> np.ndarray:
    """(N, D) float32 L2-normalised time embeddings of (N, 2) torus points (theta_year, phi_day)."""
    points = _checked_points(torus, f"time points {name!r}")
    return _cached(model, points, name, cache_dir, model.embed_times)


def cached_time_field_embeddings(model: GTLoc, fields: np.ndarray, *, name: str,
                                 cache_dir: str | Path | None = None) -> np.ndarray:
    """(N, D) float32 L2-normalised time embeddings of (N, 5) local (month, day, hour, minute, second) rows, the
    authors' time-gallery format (GTLoc.embed_time_fields)."""
    points = _checked_points(fields, f"time gallery {name!r}", width=5)
    return _cached(model, points, name, cache_dir, model.embed_time_fields)
