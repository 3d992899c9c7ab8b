"""Turntable videos and other renders of a finished set of Gaussians."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from core.cameras import orbit_camera, projection_matrix, renderer_cameras
from core.images import to_uint8
from core.options import Options


@torch.no_grad()
def render_turntable(
    renderer, gaussians: Tensor, opt: Options, num_frames: int = 180, elevation: float = 0.0, chunk: int = 8,
    progress: bool = False, size: Optional[int] = None,
) -> np.ndarray:
    """A 360-degree orbit around the object at ``opt.cam_radius``.

    gaussians: [1, N, 14] -> uint8 frames [F, H, W, 3], white background. Rendered at the
    renderer's resolution (H = W = opt.output_size) and, when ``size`` is larger, enlarged to it
    bilinearly: a model trained on small views then shows what it learned, not the gaps between
    its Gaussians that a finer render than its training views reveals.
    """
    azimuths = torch.arange(num_frames, dtype=torch.float32) * (360.0 / num_frames)
    poses = orbit_camera(torch.full_like(azimuths, elevation), azimuths, opt.cam_radius)  # [F, 4, 4]
    cam_view, cam_view_proj, cam_pos = renderer_cameras(poses, projection_matrix(opt.fovy, opt.znear, opt.zfar))
    device = gaussians.device
    frames = []
    starts = range(0, num_frames, chunk)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="turntable", unit="chunk", leave=False)
    for s in starts:
        sl = slice(s, s + chunk)
        out = renderer.render(
            gaussians.float(), cam_view[None, sl].to(device), cam_view_proj[None, sl].to(device), cam_pos[None, sl].to(device),
            bg_color=torch.ones(3, device=device),
        )
        image = out["image"][0]  # [f, 3, H, W]
        if size is not None and size > image.shape[-1]:
            image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
        frames.append(to_uint8(image.permute(0, 2, 3, 1)))  # [f, H, W, 3]
    return np.concatenate(frames, axis=0)


def write_video(path, frames: np.ndarray, fps: int = 30) -> None:
    """frames: uint8 [F, H, W, 3] -> an H.264 .mp4 (imageio-ffmpeg)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(str(path), list(frames), fps=fps, quality=8, macro_block_size=1)
