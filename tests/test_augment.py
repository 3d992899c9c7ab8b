"""Augmentations of the input views: grid distortion and orbit camera jitter (core/augment.py)."""

import math

import pytest
import torch

from core.augment import grid_distortion, orbit_camera_jitter
from core.cameras import orbit_camera


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ramps(n: int, h: int, w: int) -> torch.Tensor:
    """Images whose channel 0 is the x of each pixel centre and channel 1 its y, both in (0, 1). -> [n, 3, h, w]"""
    x = ((torch.arange(w) + 0.5) / w).expand(h, w)
    y = ((torch.arange(h) + 0.5) / h)[:, None].expand(h, w)
    return torch.stack([x, y, torch.full((h, w), 0.5)]).expand(n, 3, h, w).clone()


# ------------------------------------------------------------------------------ grid distortion


def test_grid_distortion_keeps_shape_dtype_and_range():
    images = torch.rand(3, 3, 40, 56, generator=_gen(0))
    out = grid_distortion(images, strength=0.5, generator=_gen(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not torch.allclose(out, images, atol=1e-3)  # it does distort


def test_grid_distortion_is_reproducible_from_the_generator():
    images = torch.rand(2, 3, 32, 32, generator=_gen(0))
    a = grid_distortion(images, generator=_gen(7))
    b = grid_distortion(images, generator=_gen(7))
    c = grid_distortion(images, generator=_gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_grid_distortion_with_zero_strength_returns_the_input():
    images = torch.rand(3, 3, 33, 47, generator=_gen(0))
    out = grid_distortion(images, strength=0.0, generator=_gen(1))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


@pytest.mark.parametrize("strength", [0.25, 0.5, 0.9])
def test_grid_distortion_moves_pixels_by_at_most_strength_over_16_and_never_folds(strength):
    h, w = 48, 64
    out = grid_distortion(_ramps(4, h, w), strength=strength, generator=_gen(3))
    src_x, src_y = out[:, 0], out[:, 1]  # where each output pixel was sampled from, in [0, 1]
    own = _ramps(1, h, w)[0]
    shift_x, shift_y = (src_x - own[0]).abs(), (src_y - own[1]).abs()
    bound = strength / 16  # grid lines move by at most strength / 2 of a cell of >= 1/16 of the side
    assert shift_x.max() <= bound + 1e-5 and shift_y.max() <= bound + 1e-5
    assert max(shift_x.max(), shift_y.max()) > 0.3 * bound  # and it is not the identity
    # monotonic warp: sampling positions keep their order along each axis
    assert (src_x[..., 1:] - src_x[..., :-1]).min() >= -1e-6
    assert (src_y[..., 1:, :] - src_y[..., :-1, :]).min() >= -1e-6


# ------------------------------------------------------------------------------ camera jitter


def _orbit_poses(n: int = 64) -> torch.Tensor:
    g = _gen(0)
    elevation = torch.rand(n, generator=g) * 60 - 30
    azimuth = torch.rand(n, generator=g) * 360
    return orbit_camera(elevation, azimuth, 1.5)  # [n, 4, 4]


def _rotation_angle(r: torch.Tensor) -> torch.Tensor:
    """Angle of rotation matrices [..., 3, 3] (radians)."""
    cos = ((r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.acos(cos)


def test_orbit_jitter_keeps_valid_poses_at_the_same_distance():
    poses = _orbit_poses()
    out = orbit_camera_jitter(poses, strength=0.1, generator=_gen(1))
    assert out.shape == poses.shape and out.dtype == poses.dtype
    rot = out[:, :3, :3].double()
    identity = torch.eye(3, dtype=torch.float64).expand_as(rot)
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), identity, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(len(rot), dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, :3, 3].norm(dim=-1), poses[:, :3, 3].norm(dim=-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, 3], poses[:, 3])  # last row stays [0, 0, 0, 1]
    # rotations about axes through the origin: an orbit camera still looks at the origin
    torch.testing.assert_close(out[:, :3, 2], out[:, :3, 3] / 1.5, atol=1e-5, rtol=0)


@pytest.mark.parametrize("strength", [0.05, 0.1, 0.2])
def test_orbit_jitter_magnitude_is_bounded_by_strength(strength):
    poses = _orbit_poses(256)
    out = orbit_camera_jitter(poses, strength=strength, generator=_gen(2))
    angle = _rotation_angle(out[:, :3, :3].double() @ poses[:, :3, :3].double().transpose(-1, -2))
    assert angle.max() <= 1.5 * strength * math.pi + 1e-4
    assert angle.max() > 0.6 * strength * math.pi  # the whole range is used
    # for orbit cameras the two rotations are an elevation change (about the camera's right axis,
    # up to strength * pi / 2) and an azimuth change (about world up, up to strength * pi)
    def elev_azim(p):
        pos = p[:, :3, 3].double()
        return torch.asin(pos[:, 1] / pos.norm(dim=-1)), torch.atan2(pos[:, 0], pos[:, 2])

    (e0, a0), (e1, a1) = elev_azim(poses), elev_azim(out)
    d_azim = torch.remainder(a1 - a0 + math.pi, 2 * math.pi) - math.pi
    assert (e1 - e0).abs().max() <= strength * math.pi / 2 + 1e-4
    assert d_azim.abs().max() <= strength * math.pi + 1e-4
    assert (e1 - e0).abs().max() > 0.8 * strength * math.pi / 2
    assert d_azim.abs().max() > 0.8 * strength * math.pi


def test_orbit_jitter_is_reproducible_and_zero_strength_is_identity():
    poses = _orbit_poses(8)
    a = orbit_camera_jitter(poses, generator=_gen(5))
    b = orbit_camera_jitter(poses, generator=_gen(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, orbit_camera_jitter(poses, generator=_gen(6)))
    torch.testing.assert_close(orbit_camera_jitter(poses, strength=0.0, generator=_gen(5)), poses, atol=1e-6, rtol=0)
