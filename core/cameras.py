"""Cameras: the one place for orbit poses, axis conventions, projection, and ray embeddings.

Conventions (see docs/design.md):
- World: right-handed, y up. Camera-to-world (c2w) poses are stored in the OpenGL convention
  (camera x right, y up, looking along -z).
- The renderer takes the 3DGS triple: poses converted to OpenCV axes (x right, y down, looking
  along +z), ``cam_view = inverse(c2w).T`` (row vectors: ``p_view = [p, 1] @ cam_view``),
  ``cam_view_proj = cam_view @ proj`` and ``cam_pos`` (the camera centre in world space).
- Elevation follows kiui/LGM: degrees in (-90, 90), *negative* looks down from above (+y).
  Azimuth 0 looks from +z towards the origin, 90 from +x.

All functions take and return float32 torch tensors and accept arbitrary leading batch dims
where a shape says ``[..., 4, 4]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _as_tensor(x, dtype=torch.float32) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(dtype)
    return torch.as_tensor(x, dtype=dtype)


def look_at(campos: Tensor, target: Tensor) -> Tensor:
    """OpenGL rotation (columns right, up, backward) of a camera at ``campos`` looking at ``target``.

    campos, target: [..., 3] -> [..., 3, 3]. World up is +y; a camera straight above or below
    the target (degenerate up vector) gets right = +x.
    """
    back = F.normalize(campos - target, dim=-1)  # +z of the camera points away from the target
    up_world = torch.tensor([0.0, 1.0, 0.0], dtype=campos.dtype, device=campos.device).expand_as(back)
    right = torch.linalg.cross(up_world, back, dim=-1)
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    x_axis = torch.tensor([1.0, 0.0, 0.0], dtype=campos.dtype, device=campos.device).expand_as(back)
    right = F.normalize(torch.where(degenerate, x_axis, right), dim=-1)
    up = F.normalize(torch.linalg.cross(back, right, dim=-1), dim=-1)
    return torch.stack([right, up, back], dim=-1)


def orbit_camera(elevation, azimuth, radius=1.5, target=None) -> Tensor:
    """OpenGL camera-to-world pose on a sphere around ``target`` (degrees, kiui/LGM convention).

    elevation, azimuth: floats or tensors of a common shape [...]; returns [..., 4, 4].
    """
    elev = torch.deg2rad(_as_tensor(elevation))
    azim = torch.deg2rad(_as_tensor(azimuth))
    elev, azim = torch.broadcast_tensors(elev, azim)
    radius = _as_tensor(radius)
    target = torch.zeros(3) if target is None else _as_tensor(target)
    campos = torch.stack(
        [
            radius * torch.cos(elev) * torch.sin(azim),
            -radius * torch.sin(elev),
            radius * torch.cos(elev) * torch.cos(azim),
        ],
        dim=-1,
    ) + target  # [..., 3]
    pose = torch.eye(4).expand(*campos.shape[:-1], 4, 4).clone()
    pose[..., :3, :3] = look_at(campos, target.expand_as(campos))
    pose[..., :3, 3] = campos
    return pose


def default_input_poses(elevation: float = 0.0, radius: float = 1.5) -> Tensor:
    """The 4 input cameras of LGM: azimuths 0, 90, 180, 270 at one elevation. -> [4, 4, 4]"""
    return orbit_camera(torch.full((4,), float(elevation)), torch.tensor([0.0, 90.0, 180.0, 270.0]), radius)


def opengl_to_opencv(c2w: Tensor) -> Tensor:
    """Flip the camera's y and z axes (columns 1 and 2). Its own inverse. [..., 4, 4] -> [..., 4, 4]"""
    out = c2w.clone()
    out[..., :3, 1:3] *= -1
    return out


opencv_to_opengl = opengl_to_opencv


def zup_to_yup(c2w: Tensor) -> Tensor:
    """Change the world of a pose from z up (Blender, MVDream) to our y up: the rows (x, y, z) ->
    (x, z, -y). Camera axes are untouched. [..., 4, 4] -> [..., 4, 4]"""
    out = c2w.clone()
    out[..., 1, :] = c2w[..., 2, :]
    out[..., 2, :] = -c2w[..., 1, :]
    return out


def yup_to_zup(c2w: Tensor) -> Tensor:
    """Inverse of :func:`zup_to_yup`: rows (x, y, z) -> (x, -z, y). [..., 4, 4] -> [..., 4, 4]"""
    out = c2w.clone()
    out[..., 1, :] = -c2w[..., 2, :]
    out[..., 2, :] = c2w[..., 1, :]
    return out


def blender_to_opengl(c2w: Tensor) -> Tensor:
    """Blender world (z up) + OpenCV camera axes -> our world (y up) + OpenGL camera axes.

    World (x, y, z) -> (x, z, -y) applied to the pose's rows, then the camera's y and z columns
    are negated. [..., 4, 4] -> [..., 4, 4]
    """
    return opengl_to_opencv(zup_to_yup(c2w))


def opengl_to_blender(c2w: Tensor) -> Tensor:
    """Inverse of :func:`blender_to_opengl`. [..., 4, 4] -> [..., 4, 4]"""
    return yup_to_zup(opengl_to_opencv(c2w))


def projection_matrix(fovy: float, znear: float, zfar: float) -> Tensor:
    """The 3DGS projection in row-vector form (``clip = [p_view, 1] @ proj``), fovy in degrees. -> [4, 4]"""
    tan_half = math.tan(math.radians(fovy) / 2)
    proj = torch.zeros(4, 4)
    proj[0, 0] = 1.0 / tan_half
    proj[1, 1] = 1.0 / tan_half
    proj[2, 2] = (zfar + znear) / (zfar - znear)
    proj[3, 2] = -(zfar * znear) / (zfar - znear)
    proj[2, 3] = 1.0
    return proj


def renderer_cameras(c2w: Tensor, proj: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """OpenGL poses -> the renderer's (cam_view, cam_view_proj, cam_pos).

    c2w: [..., 4, 4] OpenGL camera-to-world; proj: [4, 4] from :func:`projection_matrix`.
    Returns cam_view [..., 4, 4], cam_view_proj [..., 4, 4], cam_pos [..., 3].
    """
    c2w_cv = opengl_to_opencv(c2w.float())
    cam_view = torch.linalg.inv(c2w_cv).transpose(-1, -2)
    cam_view_proj = cam_view @ proj.to(cam_view)
    cam_pos = c2w[..., :3, 3].float().clone()
    return cam_view, cam_view_proj, cam_pos


def get_rays(c2w: Tensor, h: int, w: int, fovy: float) -> tuple[Tensor, Tensor]:
    """World-space rays through pixel centres of an OpenGL camera.

    Pixel (i, j) (row i, column j) is sampled at its centre (j + 0.5, i + 0.5); the principal
    point is the image centre. c2w: [..., 4, 4] -> rays_o, rays_d (unit): [..., h, w, 3].
    """
    focal = h * 0.5 / math.tan(math.radians(fovy) / 2)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=c2w.device),
        torch.arange(w, dtype=torch.float32, device=c2w.device),
        indexing="ij",
    )
    dirs = torch.stack(
        [(xs + 0.5 - w * 0.5) / focal, -(ys + 0.5 - h * 0.5) / focal, -torch.ones_like(xs)], dim=-1
    )  # [h, w, 3] in OpenGL camera axes
    rot_t = c2w[..., None, :3, :3].float().transpose(-1, -2)  # [..., 1, 3, 3]
    rays_d = F.normalize(dirs @ rot_t, dim=-1)  # [..., h, w, 3], row vectors: d_world = R d_cam
    rays_o = c2w[..., None, None, :3, 3].float().expand_as(rays_d)
    return rays_o, rays_d


def plucker_embedding(c2w: Tensor, h: int, w: int, fovy: float) -> Tensor:
    """Pluecker ray embedding [o x d, d] per pixel, channels first. c2w: [..., 4, 4] -> [..., 6, h, w]"""
    rays_o, rays_d = get_rays(c2w, h, w, fovy)
    emb = torch.cat([torch.linalg.cross(rays_o, rays_d, dim=-1), rays_d], dim=-1)  # [..., h, w, 6]
    return emb.movedim(-1, -3).contiguous()


def model_input(images: Tensor, c2w: Tensor, fovy: float) -> Tensor:
    """What LGM reads per input view (docs/design.md): ImageNet-normalised RGB, then the Pluecker
    rays of the view's camera. The one builder, used by the datasets and by generation.

    images: [V, 3, h, w] in [0, 1]; c2w: [V, 4, 4] OpenGL (rays are computed on its device, then
    moved to the images') -> [V, 9, h, w]
    """
    from core.images import normalize_imagenet

    rays = plucker_embedding(c2w, images.shape[-2], images.shape[-1], fovy).to(images)
    return torch.cat([normalize_imagenet(images), rays], dim=1)


def normalize_to_first_view(c2w: Tensor, radius: float = 1.5) -> Tensor:
    """Rigidly move all poses so that the first becomes the canonical pose (identity rotation at
    (0, 0, radius), i.e. ``orbit_camera(0, 0, radius)``). Relative poses are kept.

    c2w: [V, 4, 4] OpenGL -> [V, 4, 4]
    """
    canonical = torch.eye(4, dtype=c2w.dtype, device=c2w.device)
    canonical[2, 3] = radius
    transform = canonical @ torch.linalg.inv(c2w[0])
    return transform.unsqueeze(0) @ c2w


def scale_to_radius(c2w: Tensor, radius: float = 1.5) -> Tensor:
    """Scale the scene so that the cameras' median distance from the origin becomes ``radius``
    (datasets rendered at another distance then match the model's cameras; a uniform scale keeps
    every image valid). c2w: [V, 4, 4] -> a scaled copy [V, 4, 4]"""
    out = c2w.clone()
    dist = out[:, :3, 3].norm(dim=-1).median()
    out[:, :3, 3] *= radius / dist.clamp_min(1e-6)
    return out
