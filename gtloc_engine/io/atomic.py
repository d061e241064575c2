"""Atomic file writes: a hidden temp file in the target's folder, then a rename, so no reader or crash ever
leaves a half-written output (checkpoints, photos, manifests, results)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call write(temp_path), then rename the temp file over `path`; the temp file is removed on any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # No fsync: dataset writers make thousands of these; the rename alone keeps readers from partial files.
        write(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda temp: temp.write_text(text, encoding="utf-8", newline=""))
