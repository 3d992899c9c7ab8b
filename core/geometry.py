"""Gaussian and camera geometry shared by the renderers, the mesh export and the viewer.

One place for the maths that several modules need in exactly the same form:

* a Gaussian's rotation from its quaternion and its 3D covariance ``R S S^T R^T``
  (:func:`quaternion_to_matrix`, :func:`covariance_3d`);
* what a renderer reads from the 3DGS camera matrices (docs/design.md: row vectors,
  ``cam_view_proj = cam_view @ proj``): ``tan(fov/2)`` per axis, the focal lengths in pixels and
  gsplat's pinhole matrix ``K`` (:func:`tan_half_fov`, :func:`focal_length`, :func:`intrinsics`);
* the 3DGS screen mapping: the guarded perspective divide and NDC -> pixel coordinates, pixel
  ``x`` centred at integer ``x`` (:func:`perspective_divide`, :func:`ndc_to_pixel`).

Cameras are *made* in :mod:`core.cameras` (poses, ``projection_matrix``, rays, float32); this
module *reads* any given 3DGS matrices back, in float64, batched, for the rasterizers. It imports
only torch, so the rasterizer backends and the reference renderer depend on nothing else.

Every function keeps the operation order of the code it replaced, so results are bit for bit the
same; the pure-arithmetic ones (:func:`focal_length`, :func:`perspective_divide`,
:func:`ndc_to_pixel`) take torch tensors, numpy arrays or floats alike.
"""

from __future__ import annotations

import torch
from torch import Tensor

W_EPS = 1e-7  # the 3DGS rasterizer divides by w + 1e-7 (no near-plane clipping)


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrices from quaternions (w, x, y, z), normalized here. [..., 4] -> [..., 3, 3]"""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def covariance_3d(scales: Tensor, quats: Tensor, scale_modifier: float = 1.0) -> Tensor:
    """World-space covariances ``R S S^T R^T``, ``S = diag(scales * scale_modifier)``, ``R`` from
    the quaternions (w, x, y, z; normalized here), computed as ``(R S) (R S)^T``.

    scales: [..., 3] (activated, not log); quats: [..., 4] -> [..., 3, 3]
    """
    m = quaternion_to_matrix(quats) * (scales * scale_modifier).unsqueeze(-2)  # R S: column j scaled by s_j
    return m @ m.transpose(-1, -2)


def tan_half_fov(cam_view: Tensor, cam_view_proj: Tensor) -> tuple[Tensor, Tensor]:
    """tan(fovx/2), tan(fovy/2) of each camera from its projection matrix (1/proj[0,0], 1/proj[1,1]).

    proj = inverse(cam_view) @ cam_view_proj, computed in float64. [..., 4, 4] x2 -> [...], [...]
    """
    proj = torch.linalg.inv(cam_view.double()) @ cam_view_proj.double()
    return 1.0 / proj[..., 0, 0], 1.0 / proj[..., 1, 1]


def focal_length(tan_half, size: int):
    """Focal length in pixels of an image ``size`` pixels wide along an axis whose half field of
    view has tangent ``tan_half``: ``size / (2 tan_half)``. Tensor [...] (or float) -> the same."""
    return size / (2.0 * tan_half)


def intrinsics(cam_view: Tensor, cam_view_proj: Tensor, size: int) -> Tensor:
    """Pinhole intrinsics of the 3DGS cameras for a square image of ``size`` pixels, in the
    convention of gsplat / OpenCV (pixel ``x`` sampled at ``x + 0.5``):
    ``[[fx, 0, S/2], [0, fy, S/2], [0, 0, 1]]``. That principal point ``S/2`` is the 3DGS
    rasterizer's ``(S - 1)/2`` of :func:`ndc_to_pixel`, whose pixel ``x`` is sampled at ``x``.
    Built in float64, returned in ``cam_view``'s dtype. [..., 4, 4] x2 -> Ks [..., 3, 3]
    """
    tan_x, tan_y = tan_half_fov(cam_view, cam_view_proj)  # [...] float64
    Ks = torch.zeros(*tan_x.shape, 3, 3, dtype=torch.float64, device=cam_view.device)
    Ks[..., 0, 0] = focal_length(tan_x, size)
    Ks[..., 1, 1] = focal_length(tan_y, size)
    Ks[..., 0, 2] = size / 2.0
    Ks[..., 1, 2] = size / 2.0
    Ks[..., 2, 2] = 1.0
    return Ks.to(cam_view.dtype)


def perspective_divide(xyz, w):
    """Clip-space coordinates to NDC as the 3DGS rasterizer divides: ``xyz / (w + 1e-7)`` (no
    clipping; keep points in front of the camera). xyz: [..., k]; w broadcastable to it, e.g.
    [..., 1] (or a scalar per point) -> [..., k]"""
    return xyz / (w + W_EPS)


def ndc_to_pixel(ndc, size: int):
    """NDC -> pixel coordinates of the 3DGS rasterizer, ``((ndc + 1) S - 1) / 2``: pixel ``x``
    is sampled at integer ``x``, so NDC -1 and 1 are the outer edges of the first and last pixels.
    ndc: [..., k] (x, y, ...) -> [..., k]"""
    return ((ndc + 1.0) * size - 1.0) * 0.5
