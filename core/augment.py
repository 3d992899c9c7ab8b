"""Training augmentations of the input views (LGM): grid distortion and orbit camera jitter.

Both simulate what the multi-view diffusion model feeds the U-Net at inference: views that are not
perfectly consistent with each other (grid distortion) and cameras that are not exactly where the
U-Net is told they are (orbit jitter). ``core.datasets.common.make_item`` applies them to input
views 2-4, each with its probability from ``Options``.

All randomness comes from ``generator`` (the global torch generator when it is None), so an
augmentation is reproducible from a seeded ``torch.Generator``.
"""

from __future__ import annotations

import math
from typing import Optional

import roma
import torch
import torch.nn.functional as F
from torch import Tensor


def grid_distortion(images: Tensor, strength: float = 0.5, generator: Optional[torch.Generator] = None) -> Tensor:
    """Warp each image by a random, smooth, non-uniform grid.

    Per image and per axis, the axis is cut into a random number of cells (8 to 16); the inner grid
    lines are moved by up to ``strength / 2`` of a cell, and the image is resampled so that the
    regular grid lines land on the moved ones (piecewise-linear in x and in y, bilinear
    ``grid_sample`` with ``align_corners=False`` and border padding). ``strength < 1`` keeps the
    warp monotonic; a pixel moves by at most ``strength / 16`` of the image side. ``strength = 0``
    samples every pixel at its own centre and returns the input.

    images: [N, 3, H, W] in [0, 1] -> [N, 3, H, W] in [0, 1]
    """
    n, _, h, w = images.shape
    grids = []
    for _ in range(n):
        src_x = _warp_axis(w, strength, generator)  # [W] normalized source x in [-1, 1]
        src_y = _warp_axis(h, strength, generator)  # [H]
        grid_y, grid_x = torch.meshgrid(src_y, src_x, indexing="ij")  # [H, W] each
        grids.append(torch.stack([grid_x, grid_y], dim=-1))  # [H, W, 2], (x, y) as grid_sample wants
    grid = torch.stack(grids).to(device=images.device, dtype=images.dtype)  # [N, H, W, 2]
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.clamp(0.0, 1.0)


def _warp_axis(size: int, strength: float, generator: Optional[torch.Generator]) -> Tensor:
    """Normalized source coordinates ([size], in [-1, 1]) of the output pixel centres of one axis."""
    device = generator.device if generator is not None else torch.device("cpu")
    cells = int(torch.randint(8, 17, (1,), generator=generator, device=device).item())
    regular = torch.linspace(0.0, 1.0, cells + 1, device=device)  # [cells + 1] grid lines in the source
    jitter = (torch.rand(cells + 1, generator=generator, device=device) - 0.5) * (strength / cells)
    moved = regular + jitter  # where each grid line lands in the output
    moved[0], moved[-1] = 0.0, 1.0
    moved = moved.sort().values  # only matters for strength >= 1
    u = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) / size  # output pixel centres in [0, 1]
    seg = (torch.searchsorted(moved, u, right=True) - 1).clamp(0, cells - 1)  # [size] cell of each pixel
    lo, hi = moved[seg], moved[seg + 1]
    frac = (u - lo) / (hi - lo).clamp_min(1e-8)
    src = regular[seg] + frac * (regular[seg + 1] - regular[seg])  # [size] in [0, 1]
    return (src * 2.0 - 1.0).cpu()


def orbit_camera_jitter(c2w: Tensor, strength: float = 0.1, generator: Optional[torch.Generator] = None) -> Tensor:
    """Rotate each camera pose about the world origin by a small random rotation.

    First a rotation about the camera's own right axis (through the origin) by an angle uniform in
    ``+-strength * pi / 2`` (an elevation change for an orbit camera), then one about the world up
    axis +y by an angle uniform in ``+-strength * pi`` (an azimuth change). Both axes pass through
    the origin, so the distance to the origin is kept; the rotation part stays orthonormal with
    determinant 1, and its change (the angle of ``R_new @ R_old^T``) is at most ``1.5 * strength * pi``.

    c2w: [N, 4, 4] OpenGL camera-to-world -> [N, 4, 4]
    """
    batch = c2w.shape[:-2]
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(*batch, 2, generator=generator, device=device).to(c2w) * 2.0 - 1.0  # [N, 2] in [-1, 1)
    yaw = u[..., 0:1] * (strength * math.pi)  # [N, 1]
    pitch = u[..., 1:2] * (strength * math.pi / 2)  # [N, 1]
    up = torch.tensor([0.0, 1.0, 0.0], dtype=c2w.dtype, device=c2w.device).expand(*batch, 3)  # [N, 3]
    right = F.normalize(c2w[..., :3, 0], dim=-1)  # [N, 3] the camera's x axis in world space
    rot = roma.rotvec_to_rotmat(up * yaw) @ roma.rotvec_to_rotmat(right * pitch)  # [N, 3, 3]
    out = c2w.clone()
    out[..., :3, :3] = rot @ c2w[..., :3, :3]
    out[..., :3, 3] = (rot @ c2w[..., :3, 3:4])[..., 0]
    return out
