"""Writers of real small photo files for the tests, good and hostile: noise images, a PNG bomb header, JPEGs with
EXIF planted tag by tag (values the engine's own writer refuses), metadata written by exiftool (the reference
writer: CI installs Debian's libimage-exiftool-perl). Shared by the photo, EXIF, claim-source and pipeline tests."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

GPS = ExifTags.GPS


def noise_image(width_px: int, height_px: int, seed: int = 0) -> Image.Image:
    """Random pixels: they compress badly, so a cut file really loses image data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height_px, width_px, 3), dtype=np.uint8))


def png_claiming_size(path: Path, width_px: int, height_px: int) -> Path:
    """A 1x1 PNG whose header (with a valid CRC) claims another size: a decompression bomb in 70 bytes."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    # IHDR is the first chunk: 8-byte signature, 4-byte length, b"IHDR", width, height, 5 more bytes, CRC.
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width_px, height_px)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def small_image() -> Image.Image:
    return Image.new("RGB", (24, 16), (90, 140, 200))


def save_jpeg_with_raw_exif(path, *, gps: dict | None = None, exif_ifd: dict | None = None) -> None:
    """A JPEG whose EXIF is written tag by tag, to plant values write_jpeg_with_exif would refuse."""
    exif = Image.Exif()
    if gps:
        exif[ExifTags.IFD.GPSInfo] = gps
    if exif_ifd:
        exif[ExifTags.IFD.Exif] = exif_ifd
    small_image().save(path, format="JPEG", exif=exif)


def dms(deg: int, minutes: int, seconds: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    """EXIF degrees, minutes, seconds rationals (seconds to 1/100)."""
    return IFDRational(deg, 1), IFDRational(minutes, 1), IFDRational(round(seconds * 100), 100)


def gps_position(lat_ref, lat_dms, lon_ref, lon_dms) -> dict:
    """An EXIF GPS IFD holding only a position."""
    return {
        GPS.GPSLatitudeRef: lat_ref,
        GPS.GPSLatitude: lat_dms,
        GPS.GPSLongitudeRef: lon_ref,
        GPS.GPSLongitude: lon_dms,
    }


EXIFTOOL = shutil.which("exiftool")


def exiftool_write(path: Path, *assignments: str) -> Path:
    """Write tags into an existing photo with exiftool ('-DateTimeOriginal=...', '-xmp<=sidecar.xmp', ...).

    exiftool refuses bad values with a warning and exit status 0, or writes nothing with status 1: both fail the
    test here, so a case never silently tests a file without the metadata it names. `-TAG#=` writes a raw value
    (zero or blank dates) without exiftool's own checks."""
    proc = subprocess.run([EXIFTOOL, "-q", "-overwrite_original", *assignments, str(path)], capture_output=True,
                          text=True, timeout=60)
    if proc.returncode != 0 or "Warning" in proc.stderr or "Error" in proc.stderr:
        raise AssertionError(f"exiftool {' '.join(assignments)} on {path}: rc {proc.returncode}: {proc.stderr.strip()}")
    return path


def xmp_packet(**properties: str) -> bytes:
    """An XMP packet holding the given properties ('exif_GPSLatitude': '51,30,2.52N', prefix_Name) as attributes
    of one rdf:Description: for values exiftool would normalise or refuse (given to it as a sidecar, -xmp<=)."""
    namespaces = {"exif": "http://ns.adobe.com/exif/1.0/", "xmp": "http://ns.adobe.com/xap/1.0/",
                  "photoshop": "http://ns.adobe.com/photoshop/1.0/"}
    attrs = " ".join(f"{key.replace('_', ':', 1)}='{value}'" for key, value in properties.items())
    xmlns = " ".join(f"xmlns:{prefix}='{uri}'" for prefix, uri in namespaces.items())
    return (f"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>"
            f"<rdf:Description rdf:about='' {xmlns} {attrs}/></rdf:RDF></x:xmpmeta>").encode()
