"""Image I/O and normalisation: the one place that reads, writes and normalises images."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from core.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

# Formats whose extra frames are an animation (GIF, APNG, animated WebP): such a file is refused, not
# read as its first frame. Other multi-frame formats keep their first frame, the image itself: an MPO
# photo's second frame is a preview or a depth map, a TIFF's further pages are thumbnails or layers.
ANIMATION_FORMATS = ("GIF", "PNG", "WEBP")


class ImageReadError(UserError, ValueError):
    """A file that cannot be read as an image; the message names the file and the reason."""


def read_image(source: Union[str, Path, bytes], name: Optional[str] = None) -> np.ndarray:
    """Read an image file, or the bytes of one held in memory, as float32 [H, W, C] in [0, 1]
    (C = 3, or 4 when it has alpha). Bytes are decoded exactly as the file holding them would be.

    Every common PNG/TIFF/JPEG/WebP flavour is scaled by its own bit depth: 8- and 16-bit,
    grayscale (+ alpha), palette (with its transparency), RGB(A), float. A camera's EXIF
    orientation is applied. Raises :class:`ImageReadError` for a missing, truncated or non-image file,
    and for an animation (a GIF, APNG or WebP of several frames): which frame is meant is not ours
    to guess. The message starts with the path, or for bytes with ``name`` (default ``<bytes>``).
    """
    in_memory = isinstance(source, (bytes, bytearray))
    label = (name or "<bytes>") if in_memory else str(Path(source))
    try:
        return _decode(bytes(source) if in_memory else Path(source).read_bytes(), label)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ImageReadError(f"{label}: is a folder, not an image file") from None
    except Exception as e:  # UnidentifiedImageError, truncated data, decompression bomb, ...
        reason = "not an image file Pillow can read" if type(e).__name__ == "UnidentifiedImageError" else f"{type(e).__name__}: {e}"
        raise ImageReadError(f"{label}: cannot read the image ({reason})") from None


def _decode(data: bytes, label: str) -> np.ndarray:
    """An image file's bytes -> float32 [H, W, 3|4] in [0, 1] (see :func:`read_image`)."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        frames = getattr(im, "n_frames", 1)
        if frames > 1 and im.format in ANIMATION_FORMATS:
            raise ImageReadError(
                f"{label}: an animated {im.format} of {frames} frames, not a still image; save the frame "
                "you mean as a PNG and give that"
            )
        im.load()
        if im.format == "PNG" and _png_bit_depth(data) == 16:
            return _read_png16(data, label)
        im = ImageOps.exif_transpose(im)
        return _pil_to_float(im)


def _pil_to_float(im) -> np.ndarray:
    """A loaded PIL image -> float32 [H, W, 3|4] in [0, 1], scaled by the mode's range."""
    if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit grayscale (Pillow reads it as I;16 or I)
        gray = np.asarray(im, dtype=np.float64) / 65535.0
        return np.repeat(np.clip(gray, 0, 1)[..., None], 3, axis=-1).astype(np.float32)
    if im.mode == "F":  # float images are taken to be in [0, 1] already
        return np.repeat(np.clip(np.asarray(im, dtype=np.float32), 0, 1)[..., None], 3, axis=-1)
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    im = im.convert("RGBA" if has_alpha else "RGB")
    return np.asarray(im).astype(np.float32) / 255.0


def _png_bit_depth(data: bytes) -> int:
    """The bit depth of a PNG file's bytes: 8-byte signature, IHDR length and tag, width, height, bit depth."""
    return data[24] if len(data) >= 25 else 8


def _read_png16(data: bytes, label: str) -> np.ndarray:
    """A 16-bit PNG at full precision (Pillow keeps only 8 bits of 16-bit colour)."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)  # uint16, BGR(A), or [H, W] gray
    if arr is None:
        raise ImageReadError(f"{label}: cannot decode this 16-bit PNG")
    arr = arr.astype(np.float32) / 65535.0
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=-1)
    if arr.shape[-1] == 2:  # gray + alpha
        return np.concatenate([np.repeat(arr[..., :1], 3, axis=-1), arr[..., 1:]], axis=-1)
    order = [2, 1, 0, 3][: arr.shape[-1]]  # BGR(A) -> RGB(A)
    return np.ascontiguousarray(arr[..., order])


def rgba_tensor(img: np.ndarray) -> Tensor:
    """An image as :func:`read_image` gives it, [H, W, 3|4] -> float32 [4, H, W] (opaque when it has no alpha)."""
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()
    if t.shape[0] == 3:
        t = torch.cat([t, torch.ones_like(t[:1])], dim=0)
    return t


def resample_rgba(rgba: Tensor, size: tuple[int, int], grid: Optional[Tensor] = None) -> Tensor:
    """Resample straight-alpha RGBA with its colour premultiplied by alpha, so that the colours of
    transparent pixels do not bleed into the edges.

    Antialiased bilinear resize to ``size`` (h, w) (none when the image has that size already), then,
    with ``grid`` ([h', w', 2] source positions in [-1, 1], x first), bilinear ``grid_sample``
    (``align_corners=False``, transparent outside the image); then back to straight alpha.
    rgba: [4, H, W] in [0, 1] -> [4, h, w] (or [4, h', w']) in [0, 1], RGB 0 where alpha is 0.
    """
    pre = torch.cat([rgba[:3] * rgba[3:], rgba[3:]], dim=0)[None]  # [1, 4, H, W] premultiplied
    if tuple(pre.shape[-2:]) != tuple(size):
        pre = F.interpolate(pre, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    if grid is not None:
        pre = F.grid_sample(pre, grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)
    alpha = pre[0, 3:].clamp(0, 1)
    rgb = pre[0, :3] / alpha.clamp_min(1e-6) * (alpha > 0)
    return torch.cat([rgb, alpha], dim=0).clamp(0, 1)


def to_uint8(img) -> np.ndarray:
    """float in [0, 1] (numpy or tensor, [..., C] channels last) or uint8 -> uint8 numpy."""
    if isinstance(img, Tensor):
        img = img.detach().float().cpu().numpy()
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_image(path, img) -> None:
    """Write [H, W, C] (C = 1, 3, 4) float in [0, 1] or uint8 as PNG/JPG, creating the folder."""
    from PIL import Image

    arr = to_uint8(img)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    if path.suffix.lower() in (".jpg", ".jpeg") and im.mode == "RGBA":
        im = im.convert("RGB")
    im.save(path)


def composite_white(rgba: Tensor) -> Tensor:
    """RGBA over a white background. [..., 4, H, W] -> [..., 3, H, W]"""
    rgb, a = rgba[..., :3, :, :], rgba[..., 3:4, :, :]
    return rgb * a + (1.0 - a)


def normalize_imagenet(images: Tensor) -> Tensor:
    """ImageNet mean/std normalisation of RGB in [0, 1]. [..., 3, H, W] -> [..., 3, H, W]"""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images - mean) / std


def unnormalize_imagenet(images: Tensor) -> Tensor:
    """Undo :func:`normalize_imagenet`, clamped to [0, 1]. [..., 3, H, W] -> [..., 3, H, W]"""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images * std + mean).clamp(0, 1)


def image_grid(rows: list[Tensor]) -> np.ndarray:
    """Tile rows of images into one picture. Each row: [N, 3, H, W] in [0, 1] (same H, W).
    -> float numpy [rows*H, N*W, 3]"""
    lines = [torch.cat(list(r.detach().float().cpu().clamp(0, 1)), dim=-1) for r in rows]  # [3, H, N*W]
    width = max(l.shape[-1] for l in lines)
    lines = [torch.nn.functional.pad(l, (0, width - l.shape[-1]), value=1.0) for l in lines]
    return torch.cat(lines, dim=-2).permute(1, 2, 0).numpy()
