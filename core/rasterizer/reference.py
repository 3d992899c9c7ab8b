"""The reference 3DGS renderer: plain, slow and obviously correct (the pattern of gsplat's
``_torch_impl``). Tests only; nothing in the pipeline renders with it.

Written from the rasterizer semantics alone ("What the rasterizer computes" in docs/design.md,
the rules of the 3DGS CUDA rasterizer), one image at a time:

* each Gaussian is projected on its own with scalar maths: near cull at view-space ``z <= 0.2``,
  NDC ``/ (w + 1e-7)``, pixel ``((ndc + 1) S - 1) / 2``, EWA 2D covariance with the Jacobian's
  ``t.x/t.z``, ``t.y/t.z`` clamped to +-1.3 tan(fov/2), +0.3 on the diagonal, skipped when the
  determinant is 0, radius ``ceil(3 sqrt(lambda_max))`` with ``max(0.1, ...)`` under the root,
  and the range of 16x16 tiles it touches (skipped when empty);
* the Gaussians are sorted by (view-space depth, index), the order of the CUDA radix sort;
* every Gaussian is evaluated at every pixel of its tiles, front to back, with the transmittance
  updated pixel by pixel as the CUDA kernel does: ``alpha = min(0.99, opacity exp(power))``,
  skipped when ``power > 0`` or ``alpha < 1/255``, and a pixel stops before the Gaussian that
  would bring its transmittance below ``1e-4``.

Autograd through it gives the reference gradients.

Why it stays independent of :mod:`core.rasterizer.torch_backend`: it is what that backend is
tested against (tests/test_rasterizer.py: pixels to 1e-5 in float32, 1e-10 in float64, gradients
in float64), so it shares none of its projection, culling, tiling, sorting or compositing code;
a mistake there would otherwise be copied into the reference and go unseen. What it does share
is :mod:`core.geometry`, the conventions both must follow in the very same form (the quaternion
and covariance ``R S S^T R^T``, ``tan(fov/2)`` and focal lengths from the 3DGS matrices, the
``w + 1e-7`` divide and the NDC -> pixel mapping); those are checked on their own against
independent maths (scipy's rotations in tests/test_mesh.py, a hand-made rotation in
tests/test_viewer.py, the analytic footprint and hand-projected centre in tests/test_rasterizer.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from core.geometry import covariance_3d, focal_length, ndc_to_pixel, perspective_divide, tan_half_fov


def brute_force_view(g: Tensor, view: Tensor, view_proj: Tensor, size: int, bg: Tensor, stats=None):
    """Render one view. g: [N, 14] activated Gaussians; view, view_proj: [4, 4] row-vector
    matrices; bg: [3]. Returns image [3, S, S], alpha [S, S], depth [S, S] (differentiable).
    ``stats`` (a dict) receives counts of what the rules did."""
    dt = g.dtype
    tan_x, tan_y = (float(t) for t in tan_half_fov(view, view_proj))
    fx, fy = focal_length(tan_x, size), focal_length(tan_y, size)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=dt), torch.arange(size, dtype=dt), indexing="ij")
    n_tiles = (size + 15) // 16
    tile_x, tile_y = xs.long() // 16, ys.long() // 16
    splats = []
    for i in range(g.shape[0]):
        p, opacity, s, q, rgb = g[i, 0:3], g[i, 3], g[i, 4:7], g[i, 7:11], g[i, 11:14]
        hom = torch.cat([p, p.new_ones(1)])
        t = hom @ view
        if not t[2].item() > 0.2:  # near cull
            continue
        clip = hom @ view_proj
        ndc = perspective_divide(clip[:3], clip[3])
        px, py = ndc_to_pixel(ndc[:2], size).unbind()
        cov3d = covariance_3d(s, q)  # [3, 3]
        tz = t[2]
        tx = torch.clamp(t[0] / tz, -1.3 * tan_x, 1.3 * tan_x) * tz
        ty = torch.clamp(t[1] / tz, -1.3 * tan_y, 1.3 * tan_y) * tz
        zero = tz * 0
        jac = torch.stack(
            [torch.stack([fx / tz, zero, -fx * tx / (tz * tz)]), torch.stack([zero, fy / tz, -fy * ty / (tz * tz)])]
        )
        w2c = view[:3, :3].T  # column-vector rotation world -> camera
        cov = jac @ w2c @ cov3d @ w2c.T @ jac.T
        a, b, c = cov[0, 0] + 0.3, cov[0, 1], cov[1, 1] + 0.3
        det = a * c - b * b
        if det.item() == 0:
            continue
        mid = 0.5 * (a + c).item()
        root = math.sqrt(max(0.1, mid * mid - det.item()))
        radius = math.ceil(3 * math.sqrt(max(mid + root, mid - root)))
        cx, cy = px.item(), py.item()
        rect_x = (min(n_tiles, max(0, int((cx - radius) / 16))), min(n_tiles, max(0, int((cx + radius + 15) / 16))))
        rect_y = (min(n_tiles, max(0, int((cy - radius) / 16))), min(n_tiles, max(0, int((cy + radius + 15) / 16))))
        if (rect_x[1] - rect_x[0]) * (rect_y[1] - rect_y[0]) == 0:
            continue
        in_rect = (tile_x >= rect_x[0]) & (tile_x < rect_x[1]) & (tile_y >= rect_y[0]) & (tile_y < rect_y[1])
        splats.append((tz.item(), i, px, py, (c / det, -b / det, a / det), opacity, rgb, tz, in_rect))
    splats.sort(key=lambda item: (item[0], item[1]))  # depth, ties by index

    T = torch.ones(size, size, dtype=dt)
    color = torch.zeros(3, size, size, dtype=dt)
    depth = torch.zeros(size, size, dtype=dt)
    done = torch.zeros(size, size, dtype=torch.bool)
    for _, _, px, py, (ca, cb, cc), opacity, rgb, tz, in_rect in splats:
        dx, dy = px - xs, py - ys
        power = -0.5 * (ca * dx * dx + cc * dy * dy) - cb * dx * dy
        alpha = torch.clamp(opacity * torch.exp(power), max=0.99)
        valid = in_rect & ~done & (power <= 0) & (alpha >= 1.0 / 255.0)
        test_T = T * (1 - alpha)
        stop = valid & (test_T < 1e-4)
        done = done | stop
        take = valid & ~stop
        weight = torch.where(take, alpha * T, torch.zeros_like(T))
        color = color + rgb[:, None, None] * weight
        depth = depth + tz * weight
        T = torch.where(take, test_T, T)
    if stats is not None:
        stats["stopped_pixels"] = stats.get("stopped_pixels", 0) + int(done.sum())
        stats["splats"] = stats.get("splats", 0) + len(splats)
    return color + T * bg[:, None, None], 1 - T, depth


def brute_force(g, cam_view, cam_view_proj, size, bg, stats=None):
    """g [N, 14], cam_view / cam_view_proj [V, 4, 4] -> image [V, 3, S, S], alpha, depth [V, 1, S, S]."""
    outs = [brute_force_view(g, cam_view[v], cam_view_proj[v], size, bg, stats) for v in range(cam_view.shape[0])]
    return (
        torch.stack([o[0] for o in outs]),
        torch.stack([o[1] for o in outs])[:, None],
        torch.stack([o[2] for o in outs])[:, None],
    )
