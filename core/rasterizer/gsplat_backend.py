"""gsplat backend: the fused CUDA kernels of the ``gsplat`` library (``gsplat.rasterization``).

Used on CUDA tensors when ``gsplat`` is importable (``Options.renderer`` = ``auto`` or ``gsplat``).
It takes the same inputs as the torch backend and converts them:

* ``viewmats = cam_view^T``: our ``cam_view`` is the row-vector world-to-camera matrix in OpenCV
  axes (x right, y down, z forward), gsplat wants the column-vector one in the same axes.
* ``Ks = [[fx, 0, S/2], [0, fy, S/2], [0, 0, 1]]`` with ``fx = S / (2 tan(fovx/2))`` and
  ``tan(fovx/2) = 1 / proj[0, 0]`` (likewise y) of ``proj = inverse(cam_view) @ cam_view_proj``.
  gsplat samples pixel ``x`` at ``x + 0.5`` and the 3DGS rasterizer samples it at ``x`` with
  centres at ``((ndc + 1) S - 1) / 2``; a principal point of ``S/2`` makes both the same geometry.
* ``render_mode="RGB+D"`` gives ``sum(z alpha T)`` in the last channel (our ``depth``; "ED" would
  divide by alpha), ``backgrounds`` applies to RGB only, ``eps2d=0.3`` is the same +0.3 dilation,
  ``near_plane=0.2`` the same near cull, ``far_plane`` is left at infinity (3DGS has none).

How gsplat's rules differ from the 3DGS rasterizer that the published weights were trained with
(the torch backend reproduces the latter; the GPU test measures the gap, PSNR >= 40 dB):

* alpha is clamped to 0.999 instead of 0.99 (fully opaque cores look slightly more opaque);
* a pixel stops when the next transmittance is ``<= 1e-4`` (3DGS: ``< 1e-4``), near cull at
  ``z < near_plane`` (3DGS: ``z <= 0.2``): both only differ on exact ties;
* ``exp`` is the fast ``__expf`` approximation, and NDC has no ``w + 1e-7`` guard;
* the screen-space extent: recent gsplat versions derive per-axis radii from the opacity
  (the ellipse where alpha reaches 1/255, up to 3.33 sigma) rather than 3 sqrt(lambda_max), and
  older ones use ``max(0.01, ...)`` instead of ``max(0.1, ...)`` under the eigenvalue square root.
  The tiles a Gaussian reaches therefore differ slightly: gsplat may render the faint rim
  between 3 and 3.33 sigma where 3DGS's tile range cut it off, and vice versa;
* gradients are gsplat's (e.g. its backward differentiates the 0.999 clamp like 3DGS's does,
  i.e. not at all); ``bg_color`` gets no gradient in either backend.
"""

from __future__ import annotations

import functools
import importlib

import torch
from torch import Tensor

from core.rasterizer.torch_backend import NEAR_CULL, DILATION, tan_half_fov


@functools.lru_cache(maxsize=None)
def is_available() -> tuple[bool, str]:
    """(True, "") when ``import gsplat`` works, else (False, the reason). Checked once."""
    try:
        importlib.import_module("gsplat")
    except Exception as err:  # ImportError, or a broken CUDA build raising at import
        return False, f"{type(err).__name__}: {err}"
    return True, ""


def intrinsics(cam_view: Tensor, cam_view_proj: Tensor, size: int) -> Tensor:
    """Pinhole intrinsics of the 3DGS cameras. [..., 4, 4] x2 -> Ks [..., 3, 3]"""
    tan_x, tan_y = tan_half_fov(cam_view, cam_view_proj)  # [...] float64
    Ks = torch.zeros(*tan_x.shape, 3, 3, dtype=torch.float64, device=cam_view.device)
    Ks[..., 0, 0] = size / (2.0 * tan_x)
    Ks[..., 1, 1] = size / (2.0 * tan_y)
    Ks[..., 0, 2] = size / 2.0
    Ks[..., 1, 2] = size / 2.0
    Ks[..., 2, 2] = 1.0
    return Ks.to(cam_view.dtype)


def render(
    gaussians: Tensor, cam_view: Tensor, cam_view_proj: Tensor, size: int, bg: Tensor, scale_modifier: float = 1.0
) -> dict:
    """gaussians [B, N, 14], cam_view / cam_view_proj [B, V, 4, 4], bg [B, V, 3] ->
    dict(image [B, V, 3, S, S], alpha [B, V, 1, S, S], depth [B, V, 1, S, S])."""
    from gsplat import rasterization

    out_dtype = gaussians.dtype  # gsplat's kernels are float32
    gaussians, cam_view, cam_view_proj, bg = gaussians.float(), cam_view.float(), cam_view_proj.float(), bg.float()
    B, V = cam_view.shape[:2]
    viewmats = cam_view.transpose(-1, -2)  # [B, V, 4, 4] column-vector world -> camera (OpenCV)
    Ks = intrinsics(cam_view, cam_view_proj, size)  # [B, V, 3, 3]
    images, alphas, depths = [], [], []
    for b in range(B):  # one call renders all V views of an object
        g = gaussians[b]  # [N, 14]
        colors, alpha, _ = rasterization(
            means=g[:, 0:3].contiguous(),
            quats=g[:, 7:11].contiguous(),
            scales=(g[:, 4:7] * scale_modifier).contiguous(),
            opacities=g[:, 3].contiguous(),
            colors=g[:, 11:14].contiguous(),
            viewmats=viewmats[b].contiguous(),
            Ks=Ks[b].contiguous(),
            width=size,
            height=size,
            near_plane=NEAR_CULL,
            eps2d=DILATION,
            backgrounds=bg[b].contiguous(),  # [V, 3]
            render_mode="RGB+D",
            rasterize_mode="classic",
        )  # colors [V, S, S, 4], alpha [V, S, S, 1]
        images.append(colors[..., :3].permute(0, 3, 1, 2))
        depths.append(colors[..., 3:].permute(0, 3, 1, 2))
        alphas.append(alpha.permute(0, 3, 1, 2))
    out = dict(image=torch.stack(images), alpha=torch.stack(alphas), depth=torch.stack(depths))
    return {k: v.to(out_dtype) for k, v in out.items()}
