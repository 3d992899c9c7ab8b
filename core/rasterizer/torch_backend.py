"""Pure-PyTorch Gaussian rasterizer with the semantics of the 3DGS CUDA rasterizer (any device).

The tiled, exact backend: it renders what the published LGM weights were trained with ("What the
rasterizer computes" in docs/design.md), batched and tiled for speed, and is differentiable
w.r.t. all 14 Gaussian parameters. The plain, slow renderer it is tested against, pixel by pixel and
gradient by gradient, is :mod:`core.rasterizer.reference`. Quaternions, covariances, focal
lengths and the NDC -> pixel mapping come from :mod:`core.geometry`.

Pipeline, batched over the ``I = B * V`` images (no Python loop over images or views):

1. :func:`project_gaussians` (plain differentiable torch ops): view-space point and near cull
   (``t.z <= 0.2``), NDC ``/ (w + 1e-7)`` and pixel ``((ndc + 1) * S - 1) / 2``, EWA 2D covariance
   with the Jacobian's ``t.x/t.z``, ``t.y/t.z`` clamped to +-1.3 tan(fov/2), +0.3 dilation, conic,
   radius ``ceil(3 sqrt(lambda_max))`` and the 16x16 tile range. Each Gaussian gets the pixel
   box where it may be evaluated: its tile range, intersected with the box of the ellipse where
   ``opacity * exp(power) >= 1/255`` (outside it every pixel is skipped by the alpha rule, so the
   intersection changes nothing, see docs/design.md) and with the image.
2. :func:`rasterize` composites front to back in a custom ``torch.autograd.Function``:

   * Visible (image, Gaussian) pairs are sorted by (image, view-space depth, index), the order
     of the CUDA rasterizer's stable radix sort, and cut into depth slabs processed in order.
   * Planning a slab: a hierarchy (64 px super tiles -> 16 px tiles -> 4x4 px micro tiles)
     expands every Gaussian into the micro tiles that meet both its pixel box and, row of tiles
     by row of tiles, the x span of its alpha >= 1/255 ellipse. Each level is a dense
     ``[children, items]`` mask and ``nonzero()``; as the items are already depth-sorted, the
     rows (Gaussian, micro tile) come out grouped by micro tile and depth-sorted inside a group
     without any sort over pairs. Memory and time grow with the number of these rows (16 pixels
     each, about 2x the pixel-Gaussian intersections), not with tiles x the most crowded tile.
   * Occlusion culling, exact under the transmittance stop: a pixel that stopped accepts no later
     Gaussian, so a Gaussian whose box only covers finished micro tiles (a summed-area table),
     and any finished micro tile, are dropped before later slabs are planned.
   * Compositing: groups are sorted by length and processed in chunks padded to
     ``[groups, length, 16 pixels]``. Transmittance after each row is ``T0 * cumprod(1 - alpha)``
     along the group (T0 from the previous slabs); a row is accepted while that stays
     ``>= 1e-4``, which equals the CUDA rule "stop before the Gaussian that would bring T below
     1e-4" because T never increases. ``power`` for the 16 pixels of a row is a quadratic in the
     pixel offsets, evaluated as one matrix product.
   * Backward recomputes every chunk front to back from the saved plans (8 bytes per row plus
     the groups) and uses ``dL/dalpha_i = T_i e_i - (K - E_i) / (1 - alpha_i)`` with
     ``e_i = g_rgb . c_i + g_depth z_i``, ``E_i`` the inclusive prefix sum of ``e_j alpha_j T_j``
     and ``K = g_rgb . C + g_depth D - g_alpha T_final`` from the forward outputs; it chains to
     centre, conic, opacity, colour and depth per row, and autograd takes it from there through
     the projection.

Differences from the CUDA code, all at rounding level: the order of floating-point operations
(``alpha = sum(alpha_i T_i)`` and ``T_final = 1 - alpha`` use the telescoping identity, T is a
cumulative product), the "skip if power > 0" rule is implied (the conic is positive definite,
so only rounding could make power positive), and the backward is the exact gradient of the
forward (the CUDA backward ignores the 0.99 clamp when differentiating alpha). A Gaussian culled
by any rule gets zero gradient from that view; ``bg_color`` gets no gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from core.geometry import covariance_3d, focal_length, ndc_to_pixel, perspective_divide, tan_half_fov

TILE = 16  # CUDA tile side (pixels)
NEAR_CULL = 0.2  # view-space z at or below which a Gaussian is culled
JACOBIAN_CLAMP = 1.3  # t.x/t.z and t.y/t.z are clamped to +-1.3 tan(fov/2) in the Jacobian
DILATION = 0.3  # added to the diagonal of the 2D covariance
ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4  # a pixel stops before a Gaussian that would bring transmittance below this

POWER_FLOOR = -25.0  # exp(-25) * 1 < 1/255: clamping power here never changes a pixel
MICRO = 4  # micro tile side (pixels): one row of the compositing buffers is 4x4 pixels
SUPER = 64  # super tile side (pixels), the first level of the expansion hierarchy
CHUNK_ROWS = 16384  # rows (x 16 pixels) per compositing chunk (CPU: fits the caches of a small CPU)
SLAB_GAUSSIANS = 12288  # visible (image, Gaussian) pairs per depth slab, roughly (CPU)
CHUNK_ROWS_GPU = 262144  # on GPUs: 16x fewer kernel launches and host syncs; about 0.3 GB of buffers per chunk
SLAB_GAUSSIANS_GPU = 262144  # on GPUs: up to 64 slabs still come from 16M visible pairs


def plan_sizes(device) -> tuple[int, int]:
    """(slab_size, chunk_rows) for rendering on ``device``. Both are performance knobs only: the
    image and its gradients do not depend on them (tests/test_rasterizer.py). A 2-core CPU wants
    small chunks that stay in cache; a GPU wants few, large launches (each slab and chunk costs
    a few host syncs: ``nonzero``, ``tolist``)."""
    if torch.device(device).type == "cpu":
        return SLAB_GAUSSIANS, CHUNK_ROWS
    return SLAB_GAUSSIANS_GPU, CHUNK_ROWS_GPU


@dataclass
class Projected:
    """Screen-space Gaussians of ``I = B * V`` images; all tensors are ``[I, N, ...]``."""

    xy: Tensor  # [I, N, 2] pixel coordinates of the centres (differentiable)
    conic: Tensor  # [I, N, 3] inverse 2D covariance (A, B, C): power = -(A dx^2 + C dy^2)/2 - B dx dy
    depth: Tensor  # [I, N] view-space z (differentiable)
    opacity: Tensor  # [I, N] (differentiable)
    rgb: Tensor  # [I, N, 3] (differentiable)
    box: Tensor  # [I, N, 4] int64 inclusive pixel box x0, x1, y0, y1 (no grad)
    visible: Tensor  # [I, N] bool: passed every cull rule
    radius: Tensor  # [I, N] float: the 3-sigma radius of the CUDA code (0 when culled)


def project_gaussians(
    gaussians: Tensor, cam_view: Tensor, cam_view_proj: Tensor, size: int, scale_modifier: float = 1.0
) -> Projected:
    """Project activated Gaussians into every view, with the cull rules of the CUDA rasterizer.

    gaussians: [B, N, 14]; cam_view, cam_view_proj: [B, V, 4, 4]; size: image side S.
    Returns a :class:`Projected` over the ``B * V`` images.
    """
    B, N, _ = gaussians.shape
    V = cam_view.shape[1]
    dtype = gaussians.dtype
    means, opacity = gaussians[..., 0:3], gaussians[..., 3]  # [B, N, 3], [B, N]
    scales, quats, rgb = gaussians[..., 4:7], gaussians[..., 7:11], gaussians[..., 11:14]  # [B, N, 3 | 4 | 3]

    hom = torch.cat([means, torch.ones_like(means[..., :1])], dim=-1)  # [B, N, 4]
    t = torch.einsum("bnk,bvkl->bvnl", hom, cam_view)  # [B, V, N, 4] view space (row vectors)
    clip = torch.einsum("bnk,bvkl->bvnl", hom, cam_view_proj)  # [B, V, N, 4]
    tz = t[..., 2]  # [B, V, N]
    in_front = tz > NEAR_CULL
    one = torch.ones((), dtype=dtype, device=gaussians.device)
    tz_safe = torch.where(in_front, tz, one)  # culled entries must not create inf/NaN gradients
    w_safe = torch.where(in_front, clip[..., 3], one)
    ndc = perspective_divide(clip[..., :2], w_safe.unsqueeze(-1))  # [B, V, N, 2]
    xy = ndc_to_pixel(ndc, size)  # [B, V, N, 2] pixel coordinates

    tan_x, tan_y = tan_half_fov(cam_view, cam_view_proj)  # [B, V] float64
    focal_x = focal_length(tan_x, size).to(dtype)[..., None]  # [B, V, 1]
    focal_y = focal_length(tan_y, size).to(dtype)[..., None]
    lim_x = (JACOBIAN_CLAMP * tan_x).to(dtype)[..., None]
    lim_y = (JACOBIAN_CLAMP * tan_y).to(dtype)[..., None]
    tx = torch.maximum(torch.minimum(t[..., 0] / tz_safe, lim_x), -lim_x) * tz_safe  # [B, V, N]
    ty = torch.maximum(torch.minimum(t[..., 1] / tz_safe, lim_y), -lim_y) * tz_safe
    zero = torch.zeros_like(tz_safe)
    jac = torch.stack(
        [focal_x / tz_safe, zero, -focal_x * tx / (tz_safe * tz_safe),
         zero, focal_y / tz_safe, -focal_y * ty / (tz_safe * tz_safe)],
        dim=-1,
    ).reshape(B, V, N, 2, 3)  # fmt: skip

    cov3d = covariance_3d(scales, quats, scale_modifier)  # [B, N, 3, 3] R S S^T R^T
    w2c = cam_view[..., :3, :3].transpose(-1, -2)  # [B, V, 3, 3] world -> camera rotation (column vectors)
    tmat = jac @ w2c.unsqueeze(2)  # [B, V, N, 2, 3]
    cov2d = tmat @ cov3d.unsqueeze(1) @ tmat.transpose(-1, -2)  # [B, V, N, 2, 2]
    ca = cov2d[..., 0, 0] + DILATION
    cb = cov2d[..., 0, 1]
    cc = cov2d[..., 1, 1] + DILATION
    det = ca * cc - cb * cb
    # det == 0 is the CUDA skip; det < 0 cannot happen with the dilation (only through overflow).
    det_ok = det > 0
    det_safe = torch.where(det_ok, det, one)
    conic = torch.stack([cc / det_safe, -cb / det_safe, ca / det_safe], dim=-1)  # [B, V, N, 3]

    with torch.no_grad():
        mid = 0.5 * (ca + cc)
        lam = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.1))
        radius = torch.ceil(3.0 * torch.sqrt(lam))  # [B, V, N]
        n_tiles = (size + TILE - 1) // TILE
        cx, cy = xy[..., 0], xy[..., 1]
        # int() truncates toward zero, then both ends are clamped to [0, n_tiles].
        tile_x0 = torch.trunc((cx - radius) / TILE).clamp(0, n_tiles)
        tile_x1 = torch.trunc((cx + radius + TILE - 1) / TILE).clamp(0, n_tiles)
        tile_y0 = torch.trunc((cy - radius) / TILE).clamp(0, n_tiles)
        tile_y1 = torch.trunc((cy + radius + TILE - 1) / TILE).clamp(0, n_tiles)
        # Box of the ellipse where opacity * exp(power) >= 1/255, from the conic as evaluated
        # (float64, with the margin of _ellipse_q); an indefinite conic keeps the tile range.
        op = opacity.detach().unsqueeze(1).expand_as(tz)
        a64, b64, c64 = conic.detach().to(torch.float64).unbind(-1)
        det_c = a64 * c64 - b64 * b64
        q = _ellipse_q(op.to(torch.float64))
        bounded = (det_c > 0) & (a64 > 0) & (c64 > 0)
        det_c = torch.where(bounded, det_c, torch.ones_like(det_c))
        ext_x = torch.where(bounded, torch.sqrt(torch.clamp(q * c64 / det_c, min=0.0)), math.inf) + 0.01
        ext_y = torch.where(bounded, torch.sqrt(torch.clamp(q * a64 / det_c, min=0.0)), math.inf) + 0.01
        cx64, cy64 = cx.to(torch.float64), cy.to(torch.float64)
        lo_x = torch.maximum(torch.ceil(cx64 - ext_x), tile_x0 * TILE).clamp(0, size)
        hi_x = torch.minimum(torch.floor(cx64 + ext_x), tile_x1 * TILE - 1).clamp(-1, size - 1)
        lo_y = torch.maximum(torch.ceil(cy64 - ext_y), tile_y0 * TILE).clamp(0, size)
        hi_y = torch.minimum(torch.floor(cy64 + ext_y), tile_y1 * TILE - 1).clamp(-1, size - 1)
        visible = in_front & det_ok & (op >= ALPHA_MIN) & (lo_x <= hi_x) & (lo_y <= hi_y)
        visible &= (tile_x1 > tile_x0) & (tile_y1 > tile_y0)
        box = torch.stack([lo_x, hi_x, lo_y, hi_y], dim=-1).long()  # [B, V, N, 4]
        radius = torch.where(visible, radius, torch.zeros_like(radius))

    I = B * V
    return Projected(
        xy=xy.reshape(I, N, 2),
        conic=conic.reshape(I, N, 3),
        depth=tz.reshape(I, N),
        opacity=opacity.unsqueeze(1).expand(B, V, N).reshape(I, N),
        rgb=rgb.unsqueeze(1).expand(B, V, N, 3).reshape(I, N, 3),
        box=box.reshape(I, N, 4),
        visible=visible.reshape(I, N),
        radius=radius.reshape(I, N),
    )


# --------------------------------------------------------------------------- planning


@dataclass
class _Frame:
    """Static description of a render: image count, padded size, micro-tile counts."""

    n_images: int  # I
    size: int  # S
    padded: int  # P: S rounded up to a multiple of SUPER
    n_micro: int  # micro tiles per image side (P / 4)
    n_super: int  # super tiles per image side (P / 64)

    @property
    def n_tiles(self) -> int:  # M: micro tiles over all images
        return self.n_images * self.n_micro * self.n_micro


@dataclass
class _Plan:
    """Rows (Gaussian, micro tile) of one depth slab, grouped by micro tile, depth order inside.

    Groups are sorted by row count (descending); a chunk pads its groups to its longest one.
    """

    row_gauss: Tensor  # [R + 1] int64 column of each row in the slab's parameters; the last is a dummy
    group_tile: Tensor  # [G] int64 flat micro tile id (image, my, mx)
    group_start: Tensor  # [G] int64 first row of each group
    group_count: Tensor  # [G] int64 rows of each group
    chunks: list  # [(group0, group1, padded_length)]


def _ellipse_q(opacity: Tensor) -> Tensor:
    """q with alpha >= 1/255 only inside {d: A dx^2 + 2B dx dy + C dy^2 <= q}: 2 ln(255 opacity),
    enlarged a little so that rounding in the per-pixel evaluation cannot escape it. float64."""
    return 2.0 * torch.log(torch.clamp(opacity * 255.0, min=1e-30)) * 1.002 + 2e-3


def _ellipse_table(params: Tensor) -> Tensor:
    """Per Gaussian, the ellipse where its alpha can reach 1/255, in the form the planner uses.

    The ellipse is {d: A dx^2 + 2B dx dy + C dy^2 <= q}, d = centre - pixel, with the conic
    (A, B, C) exactly as the compositing evaluates it and q = 2 ln(255 opacity), enlarged by a
    small margin (pixels outside it are skipped by the alpha rule anyway, so a larger ellipse
    only costs time). Solving for dx at a given dy = v: dx in -k1 v +- sqrt(k2 - k3 v^2).

    params: [10, n] (cx, cy, A, B, C, opacity, ...) -> [8, n] float32 (float64 for float64 params) rows cx, cy, k1, k2, k3,
    v_ext (half height), v_left (dy of the leftmost point; the rightmost is at -v_left), unused.
    Constants are derived in float64. A conic that rounding left indefinite, or a centre too far
    off screen for float32 spans, gets an unbounded ellipse (no culling beyond the pixel box).
    """
    p = params.detach().to(torch.float64)
    cx, cy, ca, cb, cc, op = p[0], p[1], p[2], p[3], p[4], p[5]
    q = _ellipse_q(op)
    det = ca * cc - cb * cb
    bounded = (det > 0) & (ca > 0) & (cc > 0) & (cx.abs() < 1e5) & (cy.abs() < 1e5)
    safe = lambda x: torch.where(bounded, x, torch.ones_like(x))  # noqa: E731
    ca, cc, det = safe(ca), safe(cc), safe(det)
    inf = torch.full_like(cx, math.inf)
    zero = torch.zeros_like(cx)
    rows = [
        torch.where(bounded, cx, zero),
        torch.where(bounded, cy, zero),
        torch.where(bounded, cb / ca, zero),
        torch.where(bounded, q / ca, inf),
        torch.where(bounded, det / (ca * ca), zero),
        torch.where(bounded, torch.sqrt(torch.clamp(q * ca / det, min=0.0)), inf),
        torch.where(bounded, torch.sqrt(torch.clamp(q * cc / det, min=0.0)) * cb / cc, zero),
        zero,
    ]
    return torch.stack(rows).to(torch.promote_types(params.dtype, torch.float32))  # float64 renders plan in float64


def _ellipse_x_span(g: Tensor, y0: Tensor, height: int, margin: float = 0.02) -> tuple[Tensor, Tensor, Tensor]:
    """x range of each ellipse (see :func:`_ellipse_table`) within the pixel rows
    [y0, y0 + height - 1] taken as a continuous band, widened by ``margin`` pixels.

    g: [8, n] ellipse table rows of the items; y0: [k, n] int -> x_lo, x_hi [k, n] float32 and
    ``hit`` [k, n] bool (the band meets the ellipse).
    """
    cx, cy, k1, k2, k3, v_ext, v_left = g[0], g[1], g[2], g[3], g[4], g[5], g[6]
    v_top = cy - y0.to(g.dtype)  # the band in v = cy - y is [v_top - (height - 1), v_top]
    v_hi = torch.minimum(v_top, v_ext)
    v_lo = torch.maximum(v_top - (height - 1), -v_ext)
    hit = v_lo <= v_hi
    # u = dx is convex-bounded: its minimum over the band is at v_left clamped to the band.
    v1 = torch.minimum(torch.maximum(v_left, v_lo), v_hi)
    v2 = torch.minimum(torch.maximum(-v_left, v_lo), v_hi)
    u_min = -k1 * v1 - torch.sqrt(torch.clamp(k2 - k3 * v1 * v1, min=0.0))
    u_max = -k1 * v2 + torch.sqrt(torch.clamp(k2 - k3 * v2 * v2, min=0.0))
    return cx - u_max - margin, cx - u_min + margin, hit


def _children(gid, nx, ny, box, geo, branch: int, child: int):
    """Children (``child`` px, ``branch`` per axis) of nodes (nx, ny) that each item can reach.

    gid, nx, ny: [n] int64 (Gaussian column, node coordinates); box: [4, n_gauss] inclusive pixel
    boxes; geo: [8, n_gauss] ellipses (see :func:`_ellipse_table`). A child is kept when it meets
    the box and, per row of children, the ellipse's x span. Returns (item, ux, uy) [R] ordered
    by (uy, ux, item) and the first child's coordinates (ax0, ay0) [n] of every item: items
    sorted by (image, depth) give children grouped by node and depth-sorted inside.
    """
    b = box.index_select(1, gid)  # [4, n] x0, x1, y0, y1
    u = torch.arange(branch, device=gid.device).unsqueeze(1)  # [branch, 1]
    ax = branch * nx.unsqueeze(0) + u  # [branch, n] absolute child coordinates
    ay = branch * ny.unsqueeze(0) + u
    x_lo, x_hi, hit = _ellipse_x_span(geo.index_select(1, gid), ay * child, child)  # [branch (y), n]
    lo = torch.maximum(torch.floor(x_lo.clamp(-child, 1e9) / child).long(), torch.div(b[0], child, rounding_mode="floor"))
    hi = torch.minimum(torch.floor(x_hi.clamp(-child, 1e9) / child).long(), torch.div(b[1], child, rounding_mode="floor"))
    row_ok = (ay >= torch.div(b[2], child, rounding_mode="floor")) & (ay <= torch.div(b[3], child, rounding_mode="floor"))
    row_ok &= hit
    mask = (ax.unsqueeze(0) >= lo.unsqueeze(1)) & (ax.unsqueeze(0) <= hi.unsqueeze(1))  # [branch (y), branch (x), n]
    mask &= row_ok.unsqueeze(1)
    uy, ux, item = mask.nonzero().unbind(1)
    return item, ux, uy, ax[0], ay[0]


def _expand_level(gid, img, nx, ny, box, geo, branch: int, child: int):
    """(Gaussian, image, node) items -> the same for their children, see :func:`_children`."""
    item, ux, uy, ax0, ay0 = _children(gid, nx, ny, box, geo, branch, child)
    pick = lambda x: x.index_select(0, item)  # noqa: E731
    return pick(gid), pick(img), pick(ax0) + ux, pick(ay0) + uy


def _plan_slab(frame: _Frame, box: Tensor, img: Tensor, geo: Tensor, live_micro: Tensor, chunk_rows: int) -> _Plan:
    """Plan one slab. box: [4, n] inclusive pixel boxes, img: [n], geo: [8, n] (see
    :func:`_ellipse_table`); items sorted by (image, depth).

    live_micro: [I, P/4, P/4] bool, micro tiles holding a pixel that can still accept a Gaussian.
    """
    device = box.device
    n = img.numel()
    m = frame.n_micro
    # Gaussian level: drop those whose box only covers finished micro tiles (summed-area table).
    sat = torch.zeros(frame.n_images, m + 1, m + 1, dtype=torch.int32, device=device)
    sat[:, 1:, 1:] = live_micro.to(torch.int32).cumsum(1).cumsum(2)
    sat = sat.reshape(-1)
    base = img * ((m + 1) * (m + 1))
    x0, x1 = torch.div(box[0], MICRO, rounding_mode="floor"), torch.div(box[1], MICRO, rounding_mode="floor") + 1
    y0, y1 = torch.div(box[2], MICRO, rounding_mode="floor"), torch.div(box[3], MICRO, rounding_mode="floor") + 1
    count = (
        sat.index_select(0, base + y1 * (m + 1) + x1)
        - sat.index_select(0, base + y0 * (m + 1) + x1)
        - sat.index_select(0, base + y1 * (m + 1) + x0)
        + sat.index_select(0, base + y0 * (m + 1) + x0)
    )
    gid = (count > 0).nonzero().squeeze(1)
    g_img = img.index_select(0, gid)
    zeros = torch.zeros_like(gid)
    # Super tiles -> tiles -> micro tiles, each meeting box and ellipse; then drop finished micro tiles.
    gid, g_img, nx, ny = _expand_level(gid, g_img, zeros, zeros, box, geo, frame.n_super, SUPER)
    gid, g_img, nx, ny = _expand_level(gid, g_img, nx, ny, box, geo, SUPER // TILE, TILE)
    item, ux, uy, ax0, ay0 = _children(gid, nx, ny, box, geo, TILE // MICRO, MICRO)
    row_gauss = gid.index_select(0, item)
    tile_id = ((g_img * m + ay0) * m + ax0).index_select(0, item) + uy * m + ux  # [R] flat micro tile id
    keep = live_micro.reshape(-1).index_select(0, tile_id).nonzero().squeeze(1)
    row_gauss, tile_id = row_gauss.index_select(0, keep), tile_id.index_select(0, keep)

    group_tile, counts = torch.unique_consecutive(tile_id, return_counts=True)
    group_start = counts.cumsum(0) - counts
    order = torch.sort(counts, descending=True).indices
    group_tile, group_start, counts = group_tile[order], group_start[order], counts[order]
    row_gauss = torch.cat([row_gauss, torch.full((1,), n, dtype=row_gauss.dtype, device=device)])

    # Chunks of about chunk_rows padded rows; a chunk also ends where group lengths fall below
    # 80% of its first (longest) group, which bounds the padding.
    chunks, g0, n_groups = [], 0, counts.numel()
    lengths = counts.tolist()
    while g0 < n_groups:
        length = lengths[g0]
        g1 = min(n_groups, g0 + max(1, chunk_rows // length))
        floor = int(0.8 * length)  # counts are descending: find the first group shorter than 80%
        if lengths[g1 - 1] < floor:
            g1 = g0 + int(torch.searchsorted(-counts[g0:g1], -floor, right=True))
        chunks.append((g0, g1, length))
        g0 = g1
    return _Plan(row_gauss, group_tile, group_start, counts, chunks)


# --------------------------------------------------------------------------- compositing


def _basis(device, dtype) -> Tensor:
    """[6, 16]: 1, kx, ky, kx^2, ky^2, kx*ky for the 16 pixels (kx, ky) of a micro tile."""
    k = torch.arange(MICRO * MICRO, device=device)
    kx, ky = (k % MICRO).to(dtype), (k // MICRO).to(dtype)
    return torch.stack([torch.ones_like(kx), kx, ky, kx * kx, ky * ky, kx * ky])


def _alpha_floor(dtype) -> float:
    """The largest value below 1/255 in ``dtype``: ``threshold(x, floor)`` keeps exactly x >= 1/255."""
    return torch.nextafter(torch.tensor(ALPHA_MIN, dtype=dtype), torch.tensor(0.0, dtype=dtype)).item()


def _eval_chunk(params: Tensor, plan: _Plan, chunk, t0: Tensor, frame: _Frame, basis: Tensor, grad: bool) -> dict:
    """Evaluate one chunk of groups. params: [n + 1, 10] (cx, cy, A, B, C, opacity, z, r, g, b;
    the last row is a transparent dummy); t0: [Gc, 16] transmittance before this slab.

    Returns [Gc, L, ...] tensors: per row parameters and, per pixel, the weight ``alpha * T`` of
    accepted entries (and what the backward pass needs when ``grad``).
    """
    g0, g1, length = chunk
    n_groups = g1 - g0
    device, dtype = params.device, params.dtype
    steps = torch.arange(length, device=device)
    rows = plan.group_start[g0:g1].unsqueeze(1) + steps  # [Gc, L]
    rows = torch.where(steps < plan.group_count[g0:g1].unsqueeze(1), rows, plan.row_gauss.numel() - 1)
    cols = plan.row_gauss.index_select(0, rows.reshape(-1))  # [Gc * L]
    pr = params.index_select(0, cols).t().reshape(10, n_groups, length)  # [10, Gc, L] (strided view)
    tiles = plan.group_tile[g0:g1]
    within = tiles % (frame.n_micro * frame.n_micro)
    ox = ((within % frame.n_micro) * MICRO).to(dtype).unsqueeze(1)  # [Gc, 1] micro tile origin
    oy = ((within // frame.n_micro) * MICRO).to(dtype).unsqueeze(1)
    dx0, dy0 = pr[0] - ox, pr[1] - oy  # [Gc, L] centre minus the micro tile's first pixel
    ca, cb, cc, op = pr[2], pr[3], pr[4], pr[5]
    # power at pixel (ox + kx, oy + ky), d = (dx0 - kx, dy0 - ky), is a quadratic in (kx, ky).
    coef = torch.stack(
        [
            -0.5 * (ca * dx0 * dx0 + cc * dy0 * dy0) - cb * dx0 * dy0,
            ca * dx0 + cb * dy0,
            cc * dy0 + cb * dx0,
            -0.5 * ca,
            -0.5 * cc,
            -cb,
        ]
    ).reshape(6, -1)  # [6, Gc * L]
    # "Skip if power > 0" never fires: the conic is positive definite, so power <= 0 up to rounding.
    # Below POWER_FLOOR alpha < 1/255 for any opacity <= 1, so clamping there changes nothing (and
    # keeps exp off its slow underflow path).
    gauss = torch.exp_((coef.t() @ basis).clamp_(min=POWER_FLOOR)).reshape(n_groups, length, -1)  # [Gc, L, 16]
    raw = gauss * op.unsqueeze(-1)
    alpha = torch.nn.functional.threshold(raw, _alpha_floor(dtype), 0.0).clamp_(max=ALPHA_MAX)  # skip < 1/255
    one_minus = 1.0 - alpha
    t0 = t0.unsqueeze(1)  # [Gc, 1, 16]
    t_incl = torch.cumprod(one_minus, dim=1).mul_(t0)  # T after each row
    accepted = torch.ge(t_incl, T_MIN, out=torch.empty_like(t_incl))  # 1.0 / 0.0: the stop rule
    t_excl = torch.cat([t0, t_incl[:, :-1]], dim=1)  # T before each row
    w = (t_excl - t_incl).mul_(accepted)  # alpha * T for accepted entries, else 0
    out = dict(tiles=tiles, cols=cols, pr=pr, w=w, t_end=t_incl[:, -1])
    if grad:
        # d alpha / d raw is 1 where the alpha was neither skipped nor clamped.
        live = torch.gt(alpha, 0.0, out=torch.empty_like(alpha)).mul_(accepted)
        live.mul_(torch.le(raw, ALPHA_MAX, out=raw))
        out.update(dx0=dx0, dy0=dy0, gauss_live=gauss.mul_(live), one_minus=one_minus, t_excl=t_excl)
    return out


def _weighted_sums(w: Tensor, ys: Tensor) -> Tensor:
    """sum_l w[g, l, k] * ys[g, l, c]: w [Gc, L, 16], ys [Gc, L, C] -> [Gc, 16, C].

    A batched matmul, except for short groups where its per-matrix overhead dominates."""
    length = w.shape[1]
    if length == 1:
        return w[:, 0, :, None] * ys[:, 0, None, :]
    if length <= 4:
        return torch.stack([(w * ys[..., c : c + 1]).sum(1) for c in range(ys.shape[-1])], dim=-1)
    return torch.bmm(w.transpose(1, 2), ys)


def _pixel_sums(w: Tensor, gp: Tensor) -> Tensor:
    """sum_k w[g, l, k] * gp[c, g, k]: w [Gc, L, 16], gp [C, Gc, 16] -> [C, Gc, L]."""
    if w.shape[1] <= 4:
        return torch.stack([(w * gp[c].unsqueeze(1)).sum(-1) for c in range(gp.shape[0])])
    return torch.bmm(w, gp.permute(1, 2, 0)).permute(2, 0, 1)


def _to_image(x: Tensor, frame: _Frame) -> Tensor:
    """Micro-tile layout [M, 16, ...] -> image layout [I, P, P, ...]."""
    m, rest = frame.n_micro, x.shape[2:]
    x = x.reshape(frame.n_images, m, m, MICRO, MICRO, *rest)  # [I, my, mx, py, px, ...]
    x = x.transpose(2, 3)  # [I, my, py, mx, px, ...]
    return x.reshape(frame.n_images, frame.padded, frame.padded, *rest)


def _from_image(x: Tensor, frame: _Frame) -> Tensor:
    """Image layout [I, S, S, ...] -> micro-tile layout [M, 16, ...] (zero padded to P)."""
    pad = frame.padded - frame.size
    if pad:
        x = torch.nn.functional.pad(x.movedim((1, 2), (-2, -1)), (0, pad, 0, pad)).movedim((-2, -1), (1, 2))
    m, rest = frame.n_micro, x.shape[3:]
    x = x.reshape(frame.n_images, m, MICRO, m, MICRO, *rest).transpose(2, 3)  # [I, my, mx, py, px, ...]
    return x.reshape(frame.n_tiles, MICRO * MICRO, *rest)


def _slabs(img: Tensor, n_images: int, slab_size: int) -> list[Tensor]:
    """Cut Gaussians sorted by (image, depth) into depth slabs (each a position list, still sorted)."""
    total = img.numel()
    n_slabs = max(1, min(64, round(total / slab_size)))
    if n_slabs == 1:
        return [torch.arange(total, device=img.device)]
    counts = torch.bincount(img, minlength=n_images)
    first = counts.cumsum(0) - counts
    rank = torch.arange(total, device=img.device) - first[img]
    slab = rank * n_slabs // counts[img]
    order = torch.sort(slab, stable=True).indices
    sizes = torch.bincount(slab, minlength=n_slabs).tolist()
    return [s for s in torch.split(order, sizes) if s.numel()]


def _with_dummy(params: Tensor) -> Tensor:
    """[10, n] -> [n + 1, 10]: rows gather fast; the last row is a transparent dummy for padding."""
    return torch.cat([params, torch.zeros_like(params[:, :1])], dim=1).t().contiguous()


class _Composite(torch.autograd.Function):
    """Front-to-back compositing of depth-sorted screen-space Gaussians; see the module docstring."""

    @staticmethod
    def forward(ctx, params, bg, img, box, geo, slabs, frame, chunk_rows):
        # params: [10, n] sorted by (image, depth); bg: [I, 3]; img: [n]; box: [4, n]; geo: [8, n]
        dtype, device = params.dtype, params.device
        M = frame.n_tiles
        trans = torch.ones(M, MICRO * MICRO, dtype=dtype, device=device)  # [M, 16] transmittance
        accum = torch.zeros(M, MICRO * MICRO, 5, dtype=dtype, device=device)  # r, g, b, depth, alpha
        basis = _basis(device, dtype)
        keep_plans = ctx.needs_input_grad[0]
        plans = []
        live_micro = torch.ones(M, dtype=torch.bool, device=device)  # micro tiles with a pixel still open
        for slab in slabs:
            live_3d = live_micro.reshape(frame.n_images, frame.n_micro, frame.n_micro)
            plan = _plan_slab(frame, box[:, slab], img[slab], geo[:, slab], live_3d, chunk_rows)
            sp = _with_dummy(params[:, slab])  # [n_slab + 1, 10]
            for chunk in plan.chunks:
                tiles = plan.group_tile[chunk[0] : chunk[1]]
                ev = _eval_chunk(sp, plan, chunk, trans.index_select(0, tiles), frame, basis, grad=False)
                pr = ev["pr"]
                ys = torch.stack([pr[7], pr[8], pr[9], pr[6], torch.ones_like(pr[6])], dim=-1)  # [Gc, L, 5]
                accum.index_add_(0, tiles, _weighted_sums(ev["w"], ys))  # [Gc, 16, 5]
                trans.index_copy_(0, tiles, ev["t_end"])
                live_micro.index_copy_(0, tiles, (ev["t_end"] >= T_MIN).any(1))
            if keep_plans:
                plans.append(plan)
        out = _to_image(accum, frame)[:, : frame.size, : frame.size]  # [I, S, S, 5]
        alpha = out[..., 4]
        image = out[..., :3] + (1.0 - alpha).unsqueeze(-1) * bg[:, None, None, :]
        image = image.permute(0, 3, 1, 2).contiguous()  # [I, 3, S, S]
        depth = out[..., 3].unsqueeze(1).contiguous()  # [I, 1, S, S]
        alpha = alpha.unsqueeze(1).contiguous()
        if keep_plans:
            ctx.save_for_backward(params, image, alpha, depth)
            ctx.plans, ctx.slabs, ctx.frame = plans, slabs, frame
        return image, alpha, depth

    @staticmethod
    def backward(ctx, g_image, g_alpha, g_depth):
        params, image, alpha, depth = ctx.saved_tensors
        frame, plans, slabs = ctx.frame, ctx.plans, ctx.slabs
        dtype, device = params.dtype, params.device
        g_image = torch.zeros_like(image) if g_image is None else g_image
        g_alpha = torch.zeros_like(alpha) if g_alpha is None else g_alpha
        g_depth = torch.zeros_like(depth) if g_depth is None else g_depth
        # K = g_rgb . C + g_depth D - g_alpha T_final per pixel (C includes the background).
        k_pix = (g_image * image).sum(1) + (g_depth * depth - g_alpha * (1.0 - alpha))[:, 0]  # [I, S, S]
        pix = torch.cat([g_image, g_depth, k_pix.unsqueeze(1)], dim=1).permute(0, 2, 3, 1)  # [I, S, S, 5]
        pix = _from_image(pix.to(dtype), frame).permute(2, 0, 1).contiguous()  # [5, M, 16]
        M = frame.n_tiles
        trans = torch.ones(M, MICRO * MICRO, dtype=dtype, device=device)
        e_run = torch.zeros(M, MICRO * MICRO, dtype=dtype, device=device)  # prefix of e * alpha * T
        basis_t = _basis(device, dtype).t().contiguous()  # [16, 6]
        grad = torch.zeros(10, params.shape[1], dtype=dtype, device=device)  # [10, n]
        for slab, plan in zip(slabs, plans):
            sp = _with_dummy(params[:, slab])
            g_slab = torch.zeros(10, sp.shape[0], dtype=dtype, device=device)  # [10, n_slab + 1]
            for chunk in plan.chunks:
                tiles = plan.group_tile[chunk[0] : chunk[1]]
                ev = _eval_chunk(sp, plan, chunk, trans.index_select(0, tiles), frame, basis_t.t(), grad=True)
                pr, w = ev["pr"], ev["w"]  # [10, Gc, L], [Gc, L, 16]
                gp = pix.index_select(1, tiles)  # [5, Gc, 16]: g_r, g_g, g_b, g_depth, K
                ys = (pr[7], pr[8], pr[9], pr[6])  # r, g, b, z: [Gc, L] each
                e = ys[0].unsqueeze(-1) * gp[0].unsqueeze(1)  # [Gc, L, 16]: g_rgb . c + g_depth z
                for c in range(1, 4):
                    e.addcmul_(ys[c].unsqueeze(-1), gp[c].unsqueeze(1))
                e_incl = torch.cumsum(e * w, dim=1).add_(e_run.index_select(0, tiles).unsqueeze(1))
                # dL/dalpha = T e - (K - E) / (1 - alpha); times d alpha / d raw * d raw / d opacity
                d_alpha = (gp[4].unsqueeze(1) - e_incl).div_(ev["one_minus"]).neg_().addcmul_(ev["t_excl"], e)
                g_op = d_alpha.mul_(ev["gauss_live"])  # dL/d(opacity) per pixel
                mom = (g_op.reshape(-1, MICRO * MICRO) @ basis_t).t().reshape(6, *g_op.shape[:2])  # [6, Gc, L]
                # sums over pixels of g_op * (1, kx, ky, kx^2, ky^2, kx ky)
                col = _pixel_sums(w, gp[:4])  # [4, Gc, L]: sums over pixels of w * (g_r, g_g, g_b, g_depth)
                dx0, dy0 = ev["dx0"], ev["dy0"]
                ca, cb, cc, op = pr[2], pr[3], pr[4], pr[5]
                # dL/dpower = op * g_op; power depends on dx = dx0 - kx, dy = dy0 - ky.
                s_dx = op * (dx0 * mom[0] - mom[1])  # sum of dL/dpower * dx
                s_dy = op * (dy0 * mom[0] - mom[2])
                s_dxx = op * (dx0 * dx0 * mom[0] - 2.0 * dx0 * mom[1] + mom[3])
                s_dyy = op * (dy0 * dy0 * mom[0] - 2.0 * dy0 * mom[2] + mom[4])
                s_dxy = op * (dx0 * dy0 * mom[0] - dx0 * mom[2] - dy0 * mom[1] + mom[5])
                rows_grad = torch.stack(
                    [
                        -(ca * s_dx + cb * s_dy),  # cx
                        -(cb * s_dx + cc * s_dy),  # cy
                        -0.5 * s_dxx,  # A
                        -s_dxy,  # B
                        -0.5 * s_dyy,  # C
                        mom[0],  # opacity
                        col[3],  # z
                        col[0],  # r
                        col[1],  # g
                        col[2],  # b
                    ]
                )  # [10, Gc, L]
                g_slab.index_add_(1, ev["cols"], rows_grad.reshape(10, -1))
                trans.index_copy_(0, tiles, ev["t_end"])
                e_run.index_copy_(0, tiles, e_incl[:, -1])
            grad[:, slab] = g_slab[:, :-1]
        return grad, None, None, None, None, None, None, None


def rasterize(proj: Projected, size: int, bg: Tensor, slab_size: int = SLAB_GAUSSIANS, chunk_rows: int = CHUNK_ROWS):
    """Composite projected Gaussians front to back.

    proj: from :func:`project_gaussians` over I images; bg: [I, 3] background colour.
    Returns image [I, 3, S, S], alpha [I, 1, S, S], depth [I, 1, S, S].
    """
    I, N = proj.visible.shape
    flat = proj.visible.reshape(-1).nonzero().squeeze(1)  # [n] visible (image, Gaussian) pairs
    img = flat // N
    z = proj.depth.detach().reshape(-1).index_select(0, flat)
    order = torch.sort(z, stable=True).indices  # depth, ties by index ...
    order = order.index_select(0, torch.sort(img.index_select(0, order), stable=True).indices)  # ... per image
    flat, img = flat.index_select(0, order), img.index_select(0, order)
    params = torch.cat(
        [
            proj.xy.reshape(-1, 2).index_select(0, flat),
            proj.conic.reshape(-1, 3).index_select(0, flat),
            proj.opacity.reshape(-1, 1).index_select(0, flat),
            proj.depth.reshape(-1, 1).index_select(0, flat),
            proj.rgb.reshape(-1, 3).index_select(0, flat),
        ],
        dim=1,
    ).t()  # [10, n]: cx, cy, A, B, C, opacity, z, r, g, b
    box = proj.box.reshape(-1, 4).index_select(0, flat).t().contiguous()  # [4, n]
    geo = _ellipse_table(params)  # [8, n]
    padded = -(-size // SUPER) * SUPER
    frame = _Frame(n_images=I, size=size, padded=padded, n_micro=padded // MICRO, n_super=padded // SUPER)
    slabs = _slabs(img, I, slab_size)
    bg = bg.to(params.dtype).detach()
    return _Composite.apply(params.contiguous(), bg, img, box, geo, slabs, frame, chunk_rows)


def render(
    gaussians: Tensor, cam_view: Tensor, cam_view_proj: Tensor, size: int, bg: Tensor, scale_modifier: float = 1.0
) -> dict:
    """gaussians [B, N, 14], cam_view / cam_view_proj [B, V, 4, 4], bg [B, V, 3] ->
    dict(image [B, V, 3, S, S], alpha [B, V, 1, S, S], depth [B, V, 1, S, S])."""
    B, V = cam_view.shape[:2]
    proj = project_gaussians(gaussians, cam_view, cam_view_proj, size, scale_modifier)
    image, alpha, depth = rasterize(proj, size, bg.reshape(B * V, 3), *plan_sizes(gaussians.device))
    return dict(
        image=image.reshape(B, V, 3, size, size),
        alpha=alpha.reshape(B, V, 1, size, size),
        depth=depth.reshape(B, V, 1, size, size),
    )
