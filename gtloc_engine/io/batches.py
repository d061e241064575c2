"""Photos -> preprocessed pixel batches, decoded on worker threads; bad photos are reported, never fatal."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from gtloc_engine.errors import BadPhotoError
from gtloc_engine.io.photos import load_photo_rgb


@dataclass
class PixelBatch:
    """`indices` into the input list for the rows of `pixels`; `failures` (index, one-line reason) in this chunk."""

    indices: list[int]
    pixels: torch.Tensor | None
    failures: list[tuple[int, str]]


def _decode(path: Path, preprocess: Callable, draft_px: int) -> torch.Tensor:
    # Decoding JPEGs at a reduced size (draft) is the cheapest speed-up there is; never below the model's input.
    return preprocess(load_photo_rgb(path, draft_size=(draft_px, draft_px)))


def iter_pixel_batches(paths: Sequence[str | Path], preprocess: Callable, *, batch_size: int = 32,
                       workers: int = 2, draft_px: int = 256) -> Iterator[PixelBatch]:
    """Yield batches in input order; a photo that fails to decode lands in `failures` with its reason."""
    paths = [Path(p) for p in paths]

    def job(i: int):
        try:
            return i, _decode(paths[i], preprocess, draft_px), None
        except BadPhotoError as exc:
            return i, None, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(paths), batch_size):
            results = list(pool.map(job, range(start, min(start + batch_size, len(paths)))))
            ok = [(i, t) for i, t, err in results if err is None]
            failures = [(i, err) for i, _, err in results if err is not None]
            pixels = torch.stack([t for _, t in ok]) if ok else None
            yield PixelBatch([i for i, _ in ok], pixels, failures)
