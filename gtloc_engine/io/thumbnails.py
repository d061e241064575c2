"""Pictures for the QGIS form and map tips, written next to a results GeoPackage: a thumbnail of each photo and a
small plot of its month x hour time posterior.

Layout: `<case>.gpkg` -> `<case>_thumbs/<sha256>.jpg` (the photo, upright, longest side THUMB_MAX_PX) and
`<case>_thumbs/<sha256>_<model_sha256[:12]>_time.png` (TIME_PLOT_SIZE_PX). Every file is written atomically
(io/atomic: temp file + rename), so QGIS never shows half a picture. A thumbnail is named by the photo's bytes
alone and reused when it exists (copies and re-runs of the same bytes share it); a time plot depends on the model
and is rewritten whenever its photo is computed again.

Thumbnails are decoded by io/photos.load_photo_rgb, the engine's one decoder of untrusted photos: header-only
open of the photo formats alone, a pixel limit before decoding, JPEG draft decoding at the smallest scale that
still covers THUMB_MAX_PX, and the EXIF orientation applied (the same transposes as PIL.ImageOps.exif_transpose,
in one place). Nothing of the photo's metadata is copied into the thumbnail.

The time plot: rows are months (January on top), columns local hours (00 on the left), each cell coloured on
viridis (perceptual, readable in grey and by most colour-blind readers; the same stops as the plugin's time dock)
by a value the caller gives: the pipeline gives 1 - the cell's credible level, so the 50% region is the bright
half of the scale and everything outside the 90% region is dark, however peaked the posterior (a share of the
peak would leave all but one cell dark); a ring (#ff2a6d) on the claimed time, a white cross on the most likely
one, and two caption lines below.

Public surface:
    THUMB_MAX_PX, TIME_PLOT_SIZE_PX, VIRIDIS
    thumbnails_dir(results_path)            the folder next to a results GeoPackage
    write_thumbnail(photo, out)             the upright JPEG thumbnail, reused if `out` exists; its path
    render_time_plot(shade, claim, mode, caption)   a PIL image of a month x hour grid of values in [0, 1]
    write_time_plot(out, shade, claim, mode, caption)  that image as a PNG, written atomically; its path
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gtloc_engine.io.atomic import atomic_write
from gtloc_engine.io.photos import load_photo_rgb

THUMB_MAX_PX = 256
THUMB_JPEG_QUALITY = 85
TIME_PLOT_SIZE_PX = (240, 120)  # width, height: the cells in 240 x 96 px, two caption lines below
_CAPTION_PX = 24
VIRIDIS = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725")
CLAIM_RGB, MODE_RGB, BACKGROUND_RGB = (255, 42, 109), (255, 255, 255), (24, 24, 24)


def thumbnails_dir(results_path: str | os.PathLike) -> Path:
    """`<case>_thumbs` beside `<case>.gpkg`, as an absolute path (QGIS resolves a stored path from its own working
    folder, not the GeoPackage's)."""
    path = Path(os.path.abspath(results_path))
    return path.with_name(f"{path.stem}_thumbs")


def write_thumbnail(photo: str | os.PathLike, out: str | os.PathLike) -> Path:
    """The photo, upright and at most THUMB_MAX_PX on its longest side, as a JPEG at `out`; an existing `out` is
    kept (it is named by the photo's bytes). BadPhotoError (one line) for a photo that cannot be decoded."""
    out = Path(out)
    if out.is_file():
        return out
    image = load_photo_rgb(photo, draft_size=(THUMB_MAX_PX, THUMB_MAX_PX))
    image.thumbnail((THUMB_MAX_PX, THUMB_MAX_PX), Image.Resampling.LANCZOS)
    return atomic_write(out, lambda temp: image.save(temp, format="JPEG", quality=THUMB_JPEG_QUALITY))


def _viridis(level: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours of levels in [0, 1], linearly between the VIRIDIS stops."""
    stops = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in VIRIDIS], dtype=np.float64)
    x = np.clip(level, 0.0, 1.0) * (len(VIRIDIS) - 1)
    i = np.minimum(x.astype(int), len(VIRIDIS) - 2)
    t = (x - i)[..., None]
    return np.rint(stops[i] * (1 - t) + stops[i + 1] * t).astype(np.uint8)


def render_time_plot(shade: np.ndarray, claim: tuple[float, float] | None, mode: tuple[float, float] | None,
                     caption: str) -> Image.Image:
    """A month x hour grid of values in [0, 1] (any (months, hours) bins starting Jan 1 00:00; the caller's choice
    of what to show, e.g. 1 - each cell's credible level) as a TIME_PLOT_SIZE_PX RGB image on viridis; `claim` and
    `mode` are (month position in [0, 12), local hour in [0, 24)) or None; `caption`: up to two lines."""
    shade = np.asarray(shade, dtype=np.float64)
    width, height = TIME_PLOT_SIZE_PX
    plot_h = height - _CAPTION_PX
    # Pixel -> bin (nearest): every bin covers whole pixels or a share of them, so no bin is dropped.
    rows = (np.arange(plot_h) * shade.shape[0]) // plot_h
    cols = (np.arange(width) * shade.shape[1]) // width
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = BACKGROUND_RGB
    canvas[:plot_h] = _viridis(shade[np.ix_(rows, cols)])
    image = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(image)

    def xy(month_pos: float, hour: float) -> tuple[float, float]:
        return (hour % 24.0) / 24.0 * width, (month_pos % 12.0) / 12.0 * plot_h

    if mode is not None:
        x, y = xy(*mode)
        draw.line((x - 4, y - 4, x + 4, y + 4), fill=MODE_RGB, width=2)
        draw.line((x - 4, y + 4, x + 4, y - 4), fill=MODE_RGB, width=2)
    if claim is not None:
        x, y = xy(*claim)
        draw.ellipse((x - 5, y - 5, x + 5, y + 5), outline=CLAIM_RGB, width=2)
    font = ImageFont.load_default()
    for i, line in enumerate(caption.splitlines()[:2]):  # two lines of the default 11 px font fit the caption strip
        while line and draw.textlength(line, font=font) > width - 6:
            line = line[:-2] + "…"
        draw.text((3, plot_h + 1 + 11 * i), line, fill=(230, 230, 230), font=font)
    return image


def write_time_plot(out: str | os.PathLike, shade: np.ndarray, claim: tuple[float, float] | None,
                    mode: tuple[float, float] | None, caption: str) -> Path:
    """render_time_plot(...) as a PNG at `out`, written atomically (replacing an older plot); its path."""
    image = render_time_plot(shade, claim, mode, caption)
    return atomic_write(Path(out), lambda temp: image.save(temp, format="PNG", optimize=True))
