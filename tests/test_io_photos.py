"""Photo decoding on real small files: every pixel mode to 8-bit RGB, and every hostile file to a one-line error."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from photo_files import noise_image, png_claiming_size
from PIL import ExifTags, Image

from gtloc_engine.errors import BadPhotoError
from gtloc_engine.io.photos import (
    PHOTO_SUFFIXES,
    check_photo_file,
    file_sha256,
    iter_photo_paths,
    load_photo_rgb,
)


def _assert_rgb8(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    assert img.mode == "RGB"
    assert img.size == size
    pixels = np.asarray(img)
    assert pixels.dtype == np.uint8
    return pixels


def _assert_one_line_bad_photo(path: Path, **kwargs) -> str:
    with pytest.raises(BadPhotoError) as info:
        load_photo_rgb(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert path.name in message
    return message


# ------------------------------------------------------------------------------------------- bad files


def test_missing_file_is_reported(tmp_path):
    assert "does not exist" in _assert_one_line_bad_photo(tmp_path / "gone.jpg")


def test_directory_is_reported(tmp_path):
    folder = tmp_path / "album.jpg"
    folder.mkdir()
    assert "folder" in _assert_one_line_bad_photo(folder)


def test_empty_file_is_reported(tmp_path):
    path = tmp_path / "empty.jpg"
    path.touch()
    assert "empty" in _assert_one_line_bad_photo(path)


def test_text_file_named_jpg_is_reported(tmp_path):
    path = tmp_path / "readme.jpg"
    path.write_text("this is not a photo\n" * 20)
    assert "not a photo" in _assert_one_line_bad_photo(path)


def test_truncated_jpeg_is_reported(tmp_path):
    path = tmp_path / "cut.jpg"
    noise_image(128, 96).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _assert_one_line_bad_photo(path)


def test_png_header_claiming_a_huge_size_is_refused_before_decoding(tmp_path):
    path = png_claiming_size(tmp_path / "bomb.png", 60_000, 60_000)
    assert "too large" in _assert_one_line_bad_photo(path)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_warning_raised_as_error_becomes_bad_photo_error(tmp_path):
    # 10_000 x 9_000 is under our default limit but over Pillow's warning threshold (about 89.5 million pixels).
    path = png_claiming_size(tmp_path / "almost_bomb.png", 10_000, 9_000)
    assert "too large" in _assert_one_line_bad_photo(path)


def test_image_over_max_pixels_is_refused(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 80)).save(path)
    message = _assert_one_line_bad_photo(path, max_pixels=7_999)
    assert "100x80" in message and "max_pixels" in message
    _assert_rgb8(load_photo_rgb(path, max_pixels=8_000), (100, 80))


def test_control_characters_in_a_file_name_stay_on_one_line(tmp_path):
    with pytest.raises(BadPhotoError) as info:
        load_photo_rgb(tmp_path / "evil\nname.jpg")
    assert "\n" not in str(info.value)
    assert "evil\\nname.jpg" in str(info.value)


@pytest.mark.skipif(importlib.util.find_spec("pillow_heif") is not None, reason="pillow-heif is installed")
def test_heic_without_pillow_heif_asks_for_it(tmp_path):
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    assert "pip install pillow-heif" in _assert_one_line_bad_photo(path)


def test_check_photo_file_accepts_a_real_photo(tmp_path):
    path = tmp_path / "ok.png"
    Image.new("RGB", (4, 4)).save(path)
    check_photo_file(path)


# ------------------------------------------------------------------------------------------- pixel modes


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path)
    pixels = _assert_rgb8(load_photo_rgb(path), (16, 16))
    red, green, blue = pixels[8, 8].astype(int)
    assert red > 200 and green < 60 and blue < 60


@pytest.mark.parametrize(
    ("suffix", "dtype"), [(".png", np.uint16), (".tif", np.uint16), (".tif", np.int32), (".tif", np.float32)]
)
def test_deep_images_are_stretched_to_their_real_range(tmp_path, suffix, dtype):
    # A 12-bit gradient in a deep container: dividing by 257 (or clipping) would give near-black (or all 255).
    gradient = (np.arange(48 * 32).reshape(32, 48) * 3 % 4096).astype(dtype)
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(gradient).save(path)
    pixels = _assert_rgb8(load_photo_rgb(path), (48, 32))
    assert pixels.min() == 0 and pixels.max() == 255
    assert len(np.unique(pixels)) > 100


def test_palette_png_with_transparency_is_composited_over_grey(tmp_path):
    path = tmp_path / "palette.png"
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 250, 20, 20] + [0, 0, 0] * 254)
    img.putpixel((0, 0), 0)
    img.save(path, transparency=0)
    pixels = _assert_rgb8(load_photo_rgb(path), (8, 8))
    assert tuple(pixels[0, 0]) == (128, 128, 128)
    assert tuple(pixels[4, 4]) == (250, 20, 20)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_over_grey(tmp_path, mode):
    path = tmp_path / f"alpha_{mode}.png"
    rgba = Image.new("RGBA", (8, 8), (255, 255, 255, 255))
    rgba.putpixel((0, 0), (255, 255, 255, 0))
    rgba.convert(mode).save(path)
    pixels = _assert_rgb8(load_photo_rgb(path), (8, 8))
    assert tuple(pixels[0, 0]) == (128, 128, 128)
    assert tuple(pixels[4, 4]) == (255, 255, 255)


@pytest.mark.parametrize(
    ("mode", "suffix"), [("1", ".png"), ("L", ".png"), ("RGB", ".bmp"), ("RGB", ".webp"), ("RGB", ".tiff")]
)
def test_plain_modes_become_rgb(tmp_path, mode, suffix):
    path = tmp_path / f"plain_{mode}{suffix}"
    noise_image(20, 10).convert(mode).save(path)
    _assert_rgb8(load_photo_rgb(path), (20, 10))


def test_non_ascii_file_name_loads(tmp_path):
    path = tmp_path / "фото_été_東京.jpg"
    noise_image(12, 9).save(path)
    _assert_rgb8(load_photo_rgb(path), (12, 9))


# ------------------------------------------------------------------------------------------- orientation, draft


def _jpeg_with_orientation(path: Path, size: tuple[int, int], orientation) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    noise_image(*size).save(path, exif=exif)


def test_orientation_6_rotates_the_image_upright(tmp_path):
    path = tmp_path / "rotated.jpg"
    _jpeg_with_orientation(path, (40, 20), 6)
    _assert_rgb8(load_photo_rgb(path), (20, 40))


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_broken_orientation_is_ignored(tmp_path, orientation):
    path = tmp_path / "odd.jpg"
    _jpeg_with_orientation(path, (40, 20), orientation)
    _assert_rgb8(load_photo_rgb(path), (40, 20))


def test_draft_decodes_smaller_but_never_below_the_request(tmp_path):
    path = tmp_path / "large.jpg"
    noise_image(800, 600).save(path)
    img = load_photo_rgb(path, draft_size=(100, 100))
    assert 100 <= img.width < 800 and 100 <= img.height < 600


def test_draft_size_is_for_the_upright_picture(tmp_path):
    path = tmp_path / "sideways.jpg"
    _jpeg_with_orientation(path, (800, 400), 6)
    img = load_photo_rgb(path, draft_size=(150, 300))
    assert img.width >= 150 and img.height >= 300
    assert img.height > img.width and img.size != (400, 800)


def test_draft_size_is_ignored_for_png(tmp_path):
    path = tmp_path / "flat.png"
    Image.new("RGB", (64, 48)).save(path)
    _assert_rgb8(load_photo_rgb(path, draft_size=(8, 8)), (64, 48))


# ------------------------------------------------------------------------------------------- hashing, scanning


def test_file_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 5000)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_photo_suffixes_are_lowercase_with_dots():
    assert all(suffix.startswith(".") and suffix == suffix.lower() for suffix in PHOTO_SUFFIXES)


def test_iter_photo_paths_expands_folders_and_keeps_input_order(tmp_path):
    album = tmp_path / "album"
    (album / "day2").mkdir(parents=True)
    (album / ".cache").mkdir()
    for relative in ["b.JPG", "a.png", "day2/c.HeIc", "notes.txt", "._b.JPG", ".cache/d.jpg", "day2/e.tiff"]:
        (album / relative).write_bytes(b"x")
    loose = tmp_path / "loose.txt"
    loose.write_text("given explicitly, so kept")
    missing = tmp_path / "missing.jpg"

    paths = iter_photo_paths([loose, album, missing, album / "a.png", str(album)])

    assert paths == [
        loose,
        album / "a.png",
        album / "b.JPG",
        album / "day2" / "c.HeIc",
        album / "day2" / "e.tiff",
        missing,
    ]


def test_iter_photo_paths_drops_the_same_file_reached_two_ways(tmp_path):
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"x")
    assert iter_photo_paths([photo, tmp_path / "." / "p.jpg", tmp_path]) == [photo]


def test_iter_photo_paths_accepts_a_single_path(tmp_path):
    (tmp_path / "p.webp").write_bytes(b"x")
    assert iter_photo_paths(tmp_path) == [tmp_path / "p.webp"]
