"""Turning posed RGBA views into a training sample: the one place shared by every dataset."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from core.augment import grid_distortion, orbit_camera_jitter
from core.cameras import normalize_to_first_view, plucker_embedding, projection_matrix, renderer_cameras
from core.images import composite_white, normalize_imagenet
from core.options import Options


def make_item(rgba: Tensor, c2w: Tensor, opt: Options, rng: Optional[torch.Generator] = None) -> dict:
    """Build a sample from V posed views; the first ``opt.num_input_views`` are the inputs.

    rgba: [V, 4, H, W] in [0, 1]; c2w: [V, 4, 4] OpenGL camera-to-world, object in [-1, 1]^3.
    rng: when given, training augmentations (grid distortion, orbit jitter of input views 2-4)
    are drawn from it with the probabilities of ``opt``; None means no augmentation.
    Returns the dict of DESIGN.md: input [4, 9, h, w], images_output [V, 3, H', W'],
    masks_output [V, 1, H', W'], cam_view / cam_view_proj [V, 4, 4], cam_pos [V, 3].
    """
    n_in = opt.num_input_views
    rgba = rgba.float()
    c2w = normalize_to_first_view(c2w.float(), opt.cam_radius)  # [V, 4, 4]

    images = composite_white(rgba)  # [V, 3, H, W]
    masks = rgba[:, 3:4]  # [V, 1, H, W]

    images_input = _resize(images[:n_in], opt.input_size)  # [4, 3, h, w]
    poses_input = c2w[:n_in].clone()
    if rng is not None:
        if torch.rand((), generator=rng).item() < opt.prob_grid_distortion:
            images_input[1:] = grid_distortion(images_input[1:], generator=rng)
        if torch.rand((), generator=rng).item() < opt.prob_cam_jitter:
            poses_input[1:] = orbit_camera_jitter(poses_input[1:], generator=rng)
    rays = plucker_embedding(poses_input, opt.input_size, opt.input_size, opt.fovy)  # [4, 6, h, w]

    cam_view, cam_view_proj, cam_pos = renderer_cameras(c2w, projection_matrix(opt.fovy, opt.znear, opt.zfar))
    return {
        "input": torch.cat([normalize_imagenet(images_input), rays], dim=1),  # [4, 9, h, w]
        "images_output": _resize(images, opt.output_size),  # [V, 3, H', W']
        "masks_output": _resize(masks, opt.output_size),  # [V, 1, H', W']
        "cam_view": cam_view,
        "cam_view_proj": cam_view_proj,
        "cam_pos": cam_pos,
    }


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x.clone()
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
