"""Photo files in, upright 8-bit RGB images out; every file is hostile and every failure is a one-line BadPhotoError.

Public surface:
    PHOTO_SUFFIXES      lowercase suffixes a folder scan picks up
    DEFAULT_MAX_PIXELS  the largest width * height decoded unless the caller says otherwise
    check_photo_file    raise BadPhotoError unless the path is a readable, non-empty regular file
    open_photo          open a photo lazily (header only), HEIC included; use it as a context manager
    load_photo_rgb      decode a photo fully to an upright 8-bit RGB image
    file_sha256         hex SHA-256 of a file, streamed
    iter_photo_paths    files and folders -> the photo files to process, in order, without duplicates
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from gtloc_engine.errors import BadPhotoError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "PHOTO_SUFFIXES",
    "check_photo_file",
    "file_sha256",
    "iter_photo_paths",
    "load_photo_rgb",
    "open_photo",
]

PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".heic", ".heif"})
DEFAULT_MAX_PIXELS = 100_000_000

# Only photo formats are opened: Pillow's other plugins (EPS runs Ghostscript, FITS, ...) widen the attack surface
# for no gain. HEIF appears once pillow-heif is registered.
_PHOTO_FORMATS = ("JPEG", "PNG", "TIFF", "WEBP", "BMP", "HEIF")
# Camera JPEGs with a multi-picture index open through the JPEG plugin as "MPO"; both decode with libjpeg.
_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
_HEIF_SUFFIXES = frozenset({".heic", ".heif"})
# ISO-BMFF brands of HEVC-coded HEIF; "mif1" is left out because AVIF shares it and Pillow may read AVIF itself.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"})
# Transparent pixels are shown over mid-grey: neither black nor white, so they bias no encoder towards night or snow.
_ALPHA_BACKGROUND_RGBA = (128, 128, 128, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# EXIF orientation -> the transpose that makes the picture upright (EXIF 2.32, tag 0x0112).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATIONS_SWAPPING_AXES = frozenset({5, 6, 7, 8})
_HASH_CHUNK_BYTES = 1 << 20


def check_photo_file(path: str | os.PathLike) -> None:
    """Raise BadPhotoError unless `path` is a regular file that this process can read and that is not empty."""
    path = Path(path)
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise _bad(path, "does not exist", "check the path and that the drive is mounted") from exc
    except (OSError, ValueError) as exc:
        raise _bad(path, f"cannot be inspected ({_describe(exc)})", "check the path") from exc
    if stat.S_ISDIR(info.st_mode):
        raise _bad(path, "is a folder, not a photo", "pass the photo files or let a folder scan expand it")
    # Opening a FIFO or device would block or read forever.
    if not stat.S_ISREG(info.st_mode):
        raise _bad(path, "is not a regular file (pipe, socket or device)", "pass a photo file")
    if info.st_size == 0:
        raise _bad(path, "is empty (0 bytes)", "copy the photo again from its source")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except PermissionError as exc:
        raise _bad(path, "cannot be read (permission denied)", "give this user read access to it") from exc
    except OSError as exc:
        raise _bad(path, f"cannot be read ({_describe(exc)})", "check the file and the drive") from exc


def open_photo(path: str | os.PathLike) -> Image.Image:
    """Open a photo lazily (header only) after check_photo_file; HEIC needs pillow-heif. Close it (use `with`)."""
    path = Path(path)
    check_photo_file(path)
    if _looks_like_heif(path):
        _register_heif_opener(path)
    try:
        return Image.open(path, formats=_photo_formats_available())
    except Image.UnidentifiedImageError as exc:
        raise _bad(
            path, "is not a photo in a supported format (JPEG, PNG, TIFF, WebP, BMP, HEIC) or its header is corrupt",
            "convert it to JPEG or PNG",
        ) from exc
    # Pillow's format sniffers raise a zoo of types (SyntaxError, struct.error, ...) on hostile headers.
    except Exception as exc:
        raise _decode_error(path, exc) from exc


def load_photo_rgb(
    path: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode a photo fully to an upright (EXIF orientation applied) 8-bit RGB image; BadPhotoError otherwise.

    `max_pixels` bounds width * height as read from the header, before any pixel is decoded. `draft_size`
    (width, height of the upright image) lets JPEGs decode at a reduced scale, never below that size.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    if draft_size is not None:
        draft_size = _checked_draft_size(draft_size)
    path = Path(path)
    with open_photo(path) as img:
        width_px, height_px = img.size
        if width_px * height_px > max_pixels:
            raise _bad(
                path,
                f"is {width_px}x{height_px} = {width_px * height_px} pixels, over the limit of {max_pixels}",
                "downscale it or raise max_pixels if it is trusted",
            )
        try:
            if draft_size is not None and img.format in _JPEG_FORMATS:
                _draft_jpeg(img, draft_size)
            # load() decodes every byte now, so truncated or corrupt data fails here and not later in a model.
            img.load()
        except Exception as exc:  # see open_photo: decoders raise many types on hostile data
            raise _decode_error(path, exc) from exc
        orientation = _exif_orientation(img)
        try:
            rgb = _to_rgb8(img)
        except Exception as exc:
            problem = f"has pixel mode {img.mode} that cannot be made RGB ({_describe(exc)})"
            raise _bad(path, problem, "re-export it as 8-bit RGB") from exc
    transpose = _ORIENTATION_TRANSPOSE.get(orientation)
    return rgb.transpose(transpose) if transpose is not None else rgb


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes, read in chunks so large files cost no memory."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            digest = hashlib.sha256()
            for chunk in iter(lambda: handle.read(_HASH_CHUNK_BYTES), b""):
                digest.update(chunk)
    except (OSError, ValueError) as exc:
        raise _bad(path, f"cannot be read for hashing ({_describe(exc)})", "check the path and read access") from exc
    return digest.hexdigest()


def iter_photo_paths(inputs: Iterable[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """Files as given (any suffix, even missing, so each gets reported); folders -> sorted photo files; no duplicates.

    Folder scans are recursive, match PHOTO_SUFFIXES case-insensitively, and skip hidden names (".git",
    macOS "._IMG.jpg" resource forks, our own temp files). Duplicates are judged by resolved path.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    seen: set[str] = set()
    photo_paths: list[Path] = []
    for raw in inputs:
        given = Path(raw)
        # os.path.isdir, unlike Path.is_dir, answers False instead of raising when a parent folder is unreadable.
        for candidate in _photos_in_folder(given) if os.path.isdir(given) else [given]:
            identity = _identity(candidate)
            if identity not in seen:
                seen.add(identity)
                photo_paths.append(candidate)
    return photo_paths


# ---------------------------------------------------------------------------------------------- helpers


def _photos_in_folder(folder: Path) -> list[Path]:
    found: list[Path] = []
    # followlinks=False: a symlink loop in a photo library must not hang the scan.
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        found.extend(
            Path(dirpath, name)
            for name in filenames
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in PHOTO_SUFFIXES
        )
    return sorted(found)


def _identity(path: Path) -> str:
    try:
        return os.path.normcase(os.path.realpath(path))
    except (OSError, ValueError):
        return os.path.normcase(os.path.abspath(path))


def _looks_like_heif(path: Path) -> bool:
    if path.suffix.lower() in _HEIF_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def _register_heif_opener(path: Path) -> None:
    try:
        _register_heif_opener_once()
    except ImportError as exc:
        problem, fix = "is a HEIC/HEIF photo and pillow-heif is not installed", "run `pip install pillow-heif`"
        raise _bad(path, problem, fix) from exc
    except Exception as exc:
        problem, fix = f"needs pillow-heif, which failed to load ({_describe(exc)})", "reinstall pillow-heif"
        raise _bad(path, problem, fix) from exc


@functools.cache
def _register_heif_opener_once() -> None:
    """Import pillow-heif only when a HEIC shows up: it is optional and slow to import; failures are retried."""
    import pillow_heif

    pillow_heif.register_heif_opener()


def _photo_formats_available() -> tuple[str, ...]:
    """The photo formats this Pillow build can open; Image.open raises KeyError for unregistered names."""
    Image.init()
    return tuple(name for name in _PHOTO_FORMATS if name in Image.OPEN)


def _checked_draft_size(draft_size: tuple[int, int]) -> tuple[int, int]:
    try:
        width_px, height_px = draft_size
    except (TypeError, ValueError):
        raise ValueError(f"draft_size must be (width, height) in pixels, got {draft_size!r}") from None
    for value in (width_px, height_px):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"draft_size must be two positive ints (width, height), got {draft_size!r}")
    return width_px, height_px


def _draft_jpeg(img: Image.Image, draft_size: tuple[int, int]) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale; Pillow picks the smallest scale still >= the request."""
    width_px, height_px = draft_size
    # draft_size is for the upright picture; the stored pixels are sideways for orientations 5-8.
    if _exif_orientation(img) in _ORIENTATIONS_SWAPPING_AXES:
        width_px, height_px = height_px, width_px
    img.draft("RGB", (width_px, height_px))


def _exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation 1-8; 1 (as stored) when the tag is missing, broken or out of range."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # a broken EXIF block must not cost the photo its pixels
        return 1
    if isinstance(value, int) and not isinstance(value, bool) and value in _ORIENTATION_TRANSPOSE:
        return value
    return 1


def _to_rgb8(img: Image.Image) -> Image.Image:
    """A new 8-bit RGB image from any Pillow mode: deep data stretched, alpha composited over mid-grey."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _stretch_to_rgb8(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _ALPHA_BACKGROUND_RGBA)
        return Image.alpha_composite(background, rgba).convert("RGB")
    # Covers RGB (a copy, so the caller may close the source), 1, L, P, CMYK, YCbCr, RGBX.
    return img.convert("RGB")


def _stretch_to_rgb8(img: Image.Image) -> Image.Image:
    """Map the data's own min..max to 0..255: a 12-bit sensor in a 16-bit file would otherwise look black."""
    values = np.asarray(img).astype(np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        return Image.new("RGB", img.size, _ALPHA_BACKGROUND_RGBA[:3])
    low, high = float(values[finite].min()), float(values[finite].max())
    # NaN/inf (float TIFFs) show as the darkest value; a flat image (high == low) comes out black.
    values = np.where(finite, values, low)
    scale = 255.0 / (high - low) if high > low else 0.0
    grey = np.clip(np.rint((values - low) * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _decode_error(path: Path, exc: BaseException) -> BadPhotoError:
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return _bad(path, f"is too large to decode safely ({_describe(exc)})", "downscale it before use")
    return _bad(path, f"is truncated or corrupt ({_describe(exc)})", "copy it again or re-export it")


def _bad(path: Path, problem: str, fix: str) -> BadPhotoError:
    return BadPhotoError(_one_line(f"photo '{path}' {problem}; {fix}"))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _one_line(text: str) -> str:
    """Escape newlines and other control characters (hostile file names, decoder messages) but keep accents."""
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)
