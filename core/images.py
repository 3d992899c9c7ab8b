"""Image I/O and normalisation: the one place that reads, writes and normalises images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_image(path) -> np.ndarray:
    """Read an image file as float32 [H, W, C] in [0, 1] (C = 3, or 4 when it has alpha)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
        else:
            im = im.convert("RGB")
        arr = np.asarray(im)
    return arr.astype(np.float32) / 255.0


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


def image_grid(rows: list[Tensor]) -> np.ndarray:
    """Tile rows of images into one picture. Each row: [N, 3, H, W] in [0, 1] (same H, W).
    -> float numpy [rows*H, N*W, 3]"""
    lines = [torch.cat(list(r.detach().float().cpu().clamp(0, 1)), dim=-1) for r in rows]  # [3, H, N*W]
    width = max(l.shape[-1] for l in lines)
    lines = [torch.nn.functional.pad(l, (0, width - l.shape[-1]), value=1.0) for l in lines]
    return torch.cat(lines, dim=-2).permute(1, 2, 0).numpy()
