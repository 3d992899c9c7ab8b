"""core.images.read_image: every common PNG flavour is scaled by its own bit depth into [0, 1].

The 16-bit files are written byte by byte by a minimal PNG encoder below (an independent
reference: no imaging library is involved in making them).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from core.images import ImageReadError, read_image

PNG_GRAY, PNG_RGB, PNG_GRAY_ALPHA, PNG_RGBA = 0, 2, 4, 6


def write_png(path, arr: np.ndarray, color_type: int) -> None:
    """A PNG from uint8 or uint16 samples [H, W(, C)], no filtering, one IDAT chunk."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    h, w, _ = arr.shape
    depth = 16 if arr.dtype == np.uint16 else 8
    rows = arr.astype(">u2" if depth == 16 else "u1")
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))  # filter type 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def ramp16(h: int = 24, w: int = 40) -> np.ndarray:
    return np.linspace(0, 65535, h * w).round().astype(np.uint16).reshape(h, w)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    g = ramp16()
    write_png(tmp_path / "g16.png", g, PNG_GRAY)
    img = read_image(tmp_path / "g16.png")
    assert img.shape == (24, 40, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img, np.repeat(g[..., None] / 65535.0, 3, -1), atol=1e-6)
    assert abs(img.mean() - 0.5) < 1e-3  # the old reader clipped to 1: mean 0.996


def test_16_bit_rgb_rgba_and_gray_alpha_keep_full_precision(tmp_path):
    g = ramp16()
    rgb = np.stack([g, g // 2, 65535 - g], axis=-1)
    write_png(tmp_path / "rgb16.png", rgb, PNG_RGB)
    np.testing.assert_allclose(read_image(tmp_path / "rgb16.png"), rgb / 65535.0, atol=1e-6)
    rgba = np.concatenate([rgb, (65535 - g)[..., None]], axis=-1)
    write_png(tmp_path / "rgba16.png", rgba, PNG_RGBA)
    np.testing.assert_allclose(read_image(tmp_path / "rgba16.png"), rgba / 65535.0, atol=1e-6)
    ga = np.stack([g, 65535 - g], axis=-1)
    write_png(tmp_path / "ga16.png", ga, PNG_GRAY_ALPHA)
    want = np.concatenate([np.repeat(g[..., None], 3, -1), (65535 - g)[..., None]], axis=-1) / 65535.0
    np.testing.assert_allclose(read_image(tmp_path / "ga16.png"), want, atol=1e-6)


def test_8_bit_gray_gray_alpha_and_palette_with_transparency(tmp_path):
    g8 = (ramp16() >> 8).astype(np.uint8)
    write_png(tmp_path / "g8.png", g8, PNG_GRAY)
    np.testing.assert_allclose(read_image(tmp_path / "g8.png"), np.repeat(g8[..., None], 3, -1) / 255.0, atol=1e-6)
    write_png(tmp_path / "la8.png", np.stack([g8, 255 - g8], -1), PNG_GRAY_ALPHA)
    la = read_image(tmp_path / "la8.png")
    assert la.shape[-1] == 4
    np.testing.assert_allclose(la[..., 3], (255 - g8) / 255.0, atol=1e-6)
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    pal.putpalette([255, 0, 0, 0, 0, 255])
    pal.save(tmp_path / "p.png", transparency=1)  # palette entry 1 (blue) is transparent
    p = read_image(tmp_path / "p.png")
    np.testing.assert_allclose(p[0, 0], (1, 0, 0, 1), atol=1e-6)
    np.testing.assert_allclose(p[0, 1, 3], 0.0, atol=1e-6)


def test_unreadable_files_raise_an_error_naming_them(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageReadError, match="notes.png.*not an image"):
        read_image(tmp_path / "notes.png")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])  # truncated
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")


@pytest.mark.parametrize("suffix, fmt", [(".gif", "GIF"), (".png", "PNG"), (".webp", "WEBP")])
def test_animations_are_refused_not_read_as_their_first_frame(tmp_path, suffix, fmt):
    """GIF, APNG and animated WebP of several frames: which frame is meant is not ours to guess."""
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (40, 200, 120)]
    frames[0].save(tmp_path / f"anim{suffix}", format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(tmp_path / f"anim{suffix}") as im:
        assert im.n_frames == 3  # Pillow wrote a real animation
    with pytest.raises(ImageReadError, match=rf"anim{suffix}: an animated {fmt} of 3 frames.*save the frame"):
        read_image(tmp_path / f"anim{suffix}")
    frames[1].save(tmp_path / f"still{suffix}", format=fmt)  # one frame: an ordinary image
    np.testing.assert_allclose(read_image(tmp_path / f"still{suffix}"), 200 / 255.0, atol=2 / 255)


def test_a_multi_page_tiff_keeps_its_first_page(tmp_path):
    """Other formats' extra frames are not an animation (TIFF pages, an MPO photo's preview)."""
    pages = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (90, 10)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    np.testing.assert_allclose(read_image(tmp_path / "pages.tif"), 90 / 255.0, atol=1e-6)
