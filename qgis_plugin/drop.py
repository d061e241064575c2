"""Photos dropped on QGIS go to gtloc instead of opening as rasters; georeferenced images still open as maps.

    PHOTO_SUFFIXES          what counts as a photo (JPEG, PNG, TIFF, WebP, BMP, HEIC/HEIF: what the engine reads)
    is_photo(path)          a photo file, not a georeferenced raster (GeoTIFF, JPEG with a world file)
    PhotoDropHandler        QgsCustomDropHandler: collects the photos of one drop into one batch
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qgis.core import QgsRasterLayer
from qgis.gui import QgsCustomDropHandler
from qgis.PyQt.QtCore import QTimer

# What the engine decodes (its `info` reports photo_suffixes; tests/qgis holds the two equal).
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".heic", ".heif"})
_WORLD_FILE_SUFFIXES = {".jpg": (".jgw", ".jpgw", ".wld"), ".jpeg": (".jgw", ".jpegw", ".wld"),
                        ".png": (".pgw", ".pngw", ".wld"), ".tif": (".tfw", ".tifw", ".wld"),
                        ".tiff": (".tfw", ".tiffw", ".wld"), ".bmp": (".bpw", ".bmpw", ".wld")}


def is_photo(path: str | Path) -> bool:
    """True for a photo file; False for other files and for images that are maps (a CRS or a world file)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PHOTO_SUFFIXES or not path.is_file():
        return False
    if any(path.with_suffix(s).exists() or path.with_suffix(s.upper()).exists()
           for s in _WORLD_FILE_SUFFIXES.get(suffix, ())):
        return False
    if suffix in (".tif", ".tiff"):
        # A GeoTIFF is a map the user wants to open: only plain TIFF photos (no CRS) come to gtloc.
        raster = QgsRasterLayer(str(path), "probe", "gdal")
        return not (raster.isValid() and raster.crs().isValid())
    return True


class PhotoDropHandler(QgsCustomDropHandler):
    """QGIS calls handleFileDrop once per dropped file; photos of one drop are handed on together."""

    def __init__(self, on_photos: Callable[[list[str]], None]):
        super().__init__()
        self._on_photos = on_photos
        self._batch: list[str] = []

    def handleFileDrop(self, file: str) -> bool:
        if not is_photo(file):
            return False
        if not self._batch:
            QTimer.singleShot(0, self.flush)  # runs once this drop's files have all been offered
        self._batch.append(file)
        return True

    def flush(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            self._on_photos(batch)
