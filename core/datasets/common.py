"""What every dataset shares: its error base, the seeded generators of its samples, what a shard
stores of one of its objects, and turning posed RGBA views into a training sample."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from core.augment import grid_distortion, orbit_camera_jitter
from core.cameras import model_input, normalize_to_first_view, projection_matrix, renderer_cameras
from core.errors import UserError
from core.images import composite_white
from core.options import Options

SEED_STEP = 1_000_003
"""Multiplier that folds (seed, epoch, index) into one seed in :func:`sample_generator`."""
_MASK64 = 0xFFFFFFFFFFFFFFFF


class DatasetError(UserError, ValueError):
    """Data that cannot be used: a root, a listing, an object or shards (every dataset's errors
    derive from it; entry points report it as a one-screen error)."""


def sample_generator(seed: int, epoch: int, index: Optional[int] = None, salt: Optional[int] = None,
                     hashed: bool = False) -> torch.Generator:
    """The CPU generator of one sample's randomness (view choice, augmentations, shard order).

    Two recipes, each kept as it is so that samples (and shards written before) stay the same:
    ``((seed * SEED_STEP + epoch) * SEED_STEP + index) * 7 + salt``, leaving out the steps of an
    ``index`` or ``salt`` that is None (folder and G-Objaverse samples: salt tells the draws of one
    sample apart; shard order and shard readers); with ``hashed``, a splitmix64 hash of the values
    given (synthetic samples).
    """
    if hashed:
        value = mix_seed(*(v for v in (seed, epoch, index, salt) if v is not None))
    else:
        value = seed * SEED_STEP + epoch
        if index is not None:
            value = value * SEED_STEP + index
        if salt is not None:
            value = value * 7 + salt
    return torch.Generator().manual_seed(value)


def mix_seed(*values: int) -> int:
    """Deterministic 64-bit hash of integers (splitmix64 steps), stable across processes and runs."""
    x = 0x5EED5EED
    for value in values:
        x = ((x ^ (value & _MASK64)) + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        x ^= x >> 31
    return x


@dataclass
class RawFile:
    """One image file of an object as a shard stores it."""

    name: str  # its name in the shard: 000.png (folder), 00012.png (G-Objaverse)
    data: bytes  # the file byte for byte; b"" when the view is unusable or the file cannot be read
    where: str  # what reports call it: its path, or the object and the view
    unusable: bool = False  # the source itself cannot use the view (a bad pose, a missing file)
    unreadable: Optional[str] = None  # why the file could not be read from disk


@dataclass
class RawObject:
    """What a shard stores of one object (a dataset's ``raw_object(index)``): whole views, not a
    finished sample, so that view choice and augmentations stay fresh every epoch."""

    meta: dict  # "source" (folder, gobjaverse, synthetic), "uid", and what the reader needs besides
    arrays: dict[str, np.ndarray]  # stored as <name>.npy: "cams" [N, 4, 4] float32, and more by source
    files: list[RawFile] = field(default_factory=list)


def make_item(rgba: Tensor, c2w: Tensor, opt: Options, rng: Optional[torch.Generator] = None) -> dict:
    """Build a sample from V posed views; the first ``opt.num_input_views`` are the inputs.

    rgba: [V, 4, H, W] in [0, 1]; c2w: [V, 4, 4] OpenGL camera-to-world, object in [-1, 1]^3.
    rng: when given, training augmentations (grid distortion, orbit jitter of input views 2-4)
    are drawn from it with the probabilities of ``opt``; None means no augmentation.
    Returns the dataset item of docs/design.md: input [4, 9, h, w], images_output [V, 3, H', W'],
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

    cam_view, cam_view_proj, cam_pos = renderer_cameras(c2w, projection_matrix(opt.fovy, opt.znear, opt.zfar))
    return {
        "input": model_input(images_input, poses_input, opt.fovy),  # [4, 9, h, w]
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
