"""Step 1, the density: the Gaussians as low-pass filtered kernels (:class:`Kernels`) and their
opacity-weighted sum ``D`` sampled on a grid around them (:func:`density_grid`) or at a few
points (:func:`density_at`); see the package docstring for the formulas.

The grid's box and spacing come from the Gaussians (:func:`_grid_box`). Each kernel is evaluated
in the box of its 3 standard deviations, in memory-bounded chunks; wide kernels go to grids 2x,
4x, ... coarser and are trilinearly upsampled, so that none costs more than
``(2 CAP_RADIUS + 1)^3`` evaluations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.geometry import covariance_3d

CUTOFF_SIGMAS = 3.0  # each Gaussian is evaluated within +-3 standard deviations per axis
FILTER_VOXELS = 0.6  # std of the low-pass filter added to every Gaussian, in voxels
MAX_RADIUS = 8  # voxels; a wider Gaussian goes to a coarser grid (unless that is too coarse for it),
CAP_RADIUS = 16  # ... but never keeps a box of more than this radius, in voxels of its grid
COARSE_SAMPLES = 4.0  # a coarse grid's spacing is at most 1/4 of a Gaussian's smallest std
CHUNK = 1 << 21  # Gaussian-voxel evaluations per step of the density splatting (memory bound)
MIN_VOXEL = 0.5  # the grid is never finer than this fraction of the typical Gaussian size
SURFACE_OPACITY = 0.1  # Gaussians at least this opaque set the grid's bounding box


@dataclass
class Kernels:
    """The filtered Gaussians of the density field (package docstring, step 1), on one device."""

    xyz: Tensor  # [N, 3] centres
    opacity: Tensor  # [N] o' (filtered peak)
    precision: Tensor  # [N, 6] inverse covariance entries xx, yy, zz, xy, xz, yz
    extent: Tensor  # [N, 3] CUTOFF_SIGMAS standard deviations along x, y, z
    rgb: Tensor  # [N, 3]



def _kernels(g: Tensor, voxel: float) -> Kernels:
    """Activated Gaussians [N, 14] -> Kernels with the low-pass filter of a grid of spacing ``voxel``."""
    scale = g[:, 4:7].double().clamp_min(1e-7)  # [N, 3]
    cov = covariance_3d(scale, g[:, 7:11].double())  # [N, 3, 3] R S^2 R^T
    filt = (FILTER_VOXELS * voxel) ** 2
    cov_f = cov + filt * torch.eye(3, dtype=cov.dtype, device=cov.device)
    # det S / det S' from the scales: det S = prod s^2; det S' = det(S + f I) (eigen-values s^2 + f)
    ratio = torch.prod(scale**2 / (scale**2 + filt), dim=1)  # [N]
    prec = torch.linalg.inv(cov_f)  # [N, 3, 3]
    precision = torch.stack(
        [prec[:, 0, 0], prec[:, 1, 1], prec[:, 2, 2], prec[:, 0, 1], prec[:, 0, 2], prec[:, 1, 2]], dim=1
    )  # [N, 6]
    extent = CUTOFF_SIGMAS * torch.diagonal(cov_f, dim1=1, dim2=2).sqrt()  # [N, 3]
    return Kernels(
        xyz=g[:, 0:3].contiguous(),
        opacity=(g[:, 3].double() * ratio.sqrt()).float(),
        precision=precision.float(),
        extent=extent.float(),
        rgb=g[:, 11:14].contiguous(),
    )



def _grid_box(g: Tensor, resolution: int) -> tuple[np.ndarray, float, tuple[int, int, int], float]:
    """Grid around the Gaussians: origin [3] (float64), spacing, points per axis, and the typical
    Gaussian size (the opacity-weighted median of each Gaussian's middle scale: the finest detail
    a sheet of such Gaussians can hold).

    The box holds the centres of the Gaussians with opacity >= SURFACE_OPACITY (all of them when
    none is that opaque: transparent haze far away should not waste resolution) plus a margin of 3
    standard deviations of the widest 5% and two voxels. ``resolution`` points span its longest
    side, unless that makes voxels finer than MIN_VOXEL x the typical size (details below it are
    not in the Gaussians, and a fine grid of a small object only costs time).
    """
    solid = g[g[:, 3] >= SURFACE_OPACITY]
    if solid.shape[0] == 0:
        solid = g
    xyz = solid[:, 0:3].double().cpu()
    scales = solid[:, 4:7].double().cpu().sort(dim=1).values  # [M, 3] ascending
    typical = _weighted_median(scales[:, 1].numpy(), solid[:, 3].double().cpu().numpy())
    widest = scales[:, 2]
    margin = CUTOFF_SIGMAS * (float(torch.quantile(widest, 0.95)) if widest.numel() > 1 else float(widest.max()))
    lo = xyz.amin(dim=0).numpy() - margin
    hi = xyz.amax(dim=0).numpy() + margin
    side = max(float((hi - lo).max()), 1e-3)
    voxel = max(side / (resolution - 5), MIN_VOXEL * typical)  # two voxels of margin on each side, one to spare
    lo = lo - 2 * voxel
    dims = tuple(int(math.ceil((h - l) / voxel)) + 3 for l, h in zip(lo, hi))
    return lo, voxel, dims, typical



def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][min(np.searchsorted(cum, 0.5 * cum[-1]), values.size - 1)])



def density_grid(kernels: Kernels, origin, voxel: float, dims: tuple[int, int, int], chunk: int = CHUNK) -> Tensor:
    """Sample ``D(x) = sum_i o_i' exp(-1/2 m_i(x)^2)`` at ``origin + voxel * (i, j, k)``.

    Each kernel is added within the box of its ``extent`` (3 standard deviations per axis); kernels
    wider than MAX_RADIUS voxels are splatted on a grid coarser by a power of two and trilinearly
    upsampled. Memory: the grid plus about 40 bytes per Gaussian-voxel pair of a chunk.
    origin: [3]; dims: (X, Y, Z) -> [X, Y, Z] float32 on the kernels' device.
    """
    device = kernels.xyz.device
    origin_t = torch.as_tensor(np.asarray(origin, dtype=np.float64), device=device).float()
    out = None
    widest = kernels.extent.amax(dim=1)  # [N]
    sharpest = _smallest_std(kernels)  # [N]

    def level_for(radius: int) -> Tensor:  # the finest level whose box radius is <= radius voxels
        return torch.log2((widest / voxel + 0.5) / radius).clamp_min(0).ceil().long()

    # Coarse enough to bound the cost, fine enough that the sharpest direction spans COARSE_SAMPLES
    # voxels of the coarse grid (else trilinear upsampling flattens the peak), within a cost cap.
    finest_accurate = torch.log2(sharpest / (COARSE_SAMPLES * voxel)).clamp_min(0).floor().long()
    need = torch.maximum(level_for(CAP_RADIUS), torch.minimum(level_for(MAX_RADIUS), finest_accurate))
    coarsest = int(math.floor(math.log2(max(max(dims) - 1, 1)))) - 1  # keep at least 3 points per axis
    need = need.clamp_max(max(coarsest, 0))
    for lvl in sorted(set(need.tolist())):
        sel = (need == lvl).nonzero()[:, 0]
        step = voxel * 2**lvl
        dims_l = tuple(int(math.ceil((d - 1) / 2**lvl)) + 1 for d in dims)
        part = _splat(kernels, sel, origin_t, step, dims_l, chunk)  # [X_l, Y_l, Z_l]
        if lvl > 0:
            part = _upsample(part, dims, 2**lvl)
        out = part if out is None else out.add_(part)
    return out



def _smallest_std(kernels: Kernels) -> Tensor:
    """Smallest standard deviation of each filtered kernel: 1 / sqrt(largest eigenvalue of its
    precision). -> [N]"""
    p = kernels.precision.double()
    mat = torch.stack([p[:, 0], p[:, 3], p[:, 4], p[:, 3], p[:, 1], p[:, 5], p[:, 4], p[:, 5], p[:, 2]], dim=1)
    largest = torch.linalg.eigvalsh(mat.view(-1, 3, 3))[:, -1]
    return largest.clamp_min(1e-30).rsqrt().float()



def _splat(kernels: Kernels, sel: Tensor, origin: Tensor, step: float, dims: tuple[int, int, int], chunk: int) -> Tensor:
    """Add the kernels ``sel`` [M] to a grid of spacing ``step`` and ``dims`` points. -> [X, Y, Z]

    The grid gets an apron of CAP_RADIUS + 1 voxels on each side, so that the box of a kernel whose
    centre is on the grid never leaves it; kernels centred off the grid (rare) are clipped to it,
    and those whose box misses it are skipped."""
    device = kernels.xyz.device
    apron = CAP_RADIUS + 1
    X, Y, Z = (d + 2 * apron for d in dims)
    grid = torch.zeros(X * Y * Z, dtype=torch.float32, device=device)
    xyz = kernels.xyz[sel]  # [M, 3]
    base = torch.round((xyz - origin) / step).long()  # [M, 3] nearest grid point
    radius = torch.ceil(kernels.extent[sel].amax(dim=1) / step + 0.5).long().clamp(1, CAP_RADIUS)  # [M]
    top = torch.tensor(dims, device=device) - 1
    touches = ((base + radius[:, None] >= 0) & (base - radius[:, None] <= top)).all(dim=1)
    centred = ((base >= 0) & (base <= top)).all(dim=1)
    for r in sorted(set(radius[touches].tolist())):
        span = torch.arange(-r, r + 1, device=device)
        off = torch.cartesian_prod(span, span, span)  # [K, 3]
        off_flat = (off[:, 0] * Y + off[:, 1]) * Z + off[:, 2]  # [K]
        off_pos = off.float() * step  # [K, 3]
        per = max(1, chunk // off.shape[0])
        for clip in (False, True):
            members = (touches & (centred != clip) & (radius == r)).nonzero()[:, 0]  # [C] rows of sel
            for s in range(0, members.numel(), per):
                rows = members[s : s + per]
                b = base[rows]  # [C, 3]
                corner = origin + b.float() * step - xyz[rows]  # [C, 3] grid point minus centre
                dx = corner[:, 0:1] + off_pos[None, :, 0]  # [C, K]
                dy = corner[:, 1:2] + off_pos[None, :, 1]
                dz = corner[:, 2:3] + off_pos[None, :, 2]
                p = kernels.precision[sel[rows]]  # [C, 6]
                q = p[:, 0:1] * dx * dx + p[:, 1:2] * dy * dy + p[:, 2:3] * dz * dz
                q += 2.0 * (p[:, 3:4] * dx * dy + p[:, 4:5] * dx * dz + p[:, 5:6] * dy * dz)  # [C, K]
                val = torch.exp(-0.5 * q) * kernels.opacity[sel[rows], None]  # [C, K]
                flat = ((b[:, 0] + apron) * Y + (b[:, 1] + apron)) * Z + (b[:, 2] + apron)  # [C]
                index = flat[:, None] + off_flat[None]  # [C, K]
                if clip:  # only the grid points inside the grid (apron included)
                    at = b[:, None, :] + off[None]  # [C, K, 3]
                    ok = ((at >= -apron) & (at <= top + apron)).all(dim=2)
                    index, val = torch.where(ok, index, 0), torch.where(ok, val, 0.0)
                grid.index_add_(0, index.reshape(-1), val.reshape(-1))
    grid = grid.view(X, Y, Z)[apron : apron + dims[0], apron : apron + dims[1], apron : apron + dims[2]]
    return grid.contiguous()



def _interp_matrix(n_fine: int, n_coarse: int, factor: int, device) -> Tensor:
    """Linear interpolation from a coarse axis (spacing ``factor``) to the fine one. -> [n_fine, n_coarse]"""
    pos = torch.arange(n_fine, dtype=torch.float64, device=device) / factor
    j = pos.floor().long().clamp_max(n_coarse - 1)
    t = (pos - j).float()
    m = torch.zeros(n_fine, n_coarse, device=device)
    rows = torch.arange(n_fine, device=device)
    m[rows, j] += 1.0 - t
    m[rows, (j + 1).clamp_max(n_coarse - 1)] += t
    return m



def _upsample(coarse: Tensor, dims: tuple[int, int, int], factor: int) -> Tensor:
    """Trilinear upsampling of a grid of spacing ``factor`` voxels, as three 1D matrix products.
    [a, b, c] -> [X, Y, Z]"""
    a, b, c = coarse.shape
    mx, my, mz = (_interp_matrix(n, m, factor, coarse.device) for n, m in zip(dims, (a, b, c)))
    out = torch.einsum("xa,abc->xbc", mx, coarse)
    out = torch.einsum("yb,xbc->xyc", my, out)
    return torch.einsum("zc,xyc->xyz", mz, out).contiguous()



def density_at(kernels: Kernels, points: Tensor) -> Tensor:
    """The density ``D`` (package docstring) evaluated exactly at a few points [P, 3] -> [P].

    Kernels up to the 95th percentile of size are found with a k-d tree (within their 3-sigma
    extent), the wider rest are evaluated at every point."""
    from scipy.spatial import cKDTree

    widest = kernels.extent.amax(dim=1)  # [N]
    small_radius = float(torch.quantile(widest.double().cpu(), 0.95)) if widest.numel() > 1 else float(widest[0])
    small = (widest <= small_radius).nonzero()[:, 0]
    large = (widest > small_radius).nonzero()[:, 0]
    out = torch.zeros(points.shape[0], dtype=torch.float64, device=points.device)
    if small.numel():
        tree = cKDTree(kernels.xyz[small].double().cpu().numpy())
        lists = tree.query_ball_point(points.double().cpu().numpy(), r=small_radius)
        point = np.repeat(np.arange(len(lists)), [len(x) for x in lists])
        neighbour = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]) if point.size else point
        point_t = torch.from_numpy(point).to(points.device)
        rows = small[torch.from_numpy(neighbour).to(points.device)]
        out.index_add_(0, point_t, _kernel_values(kernels, rows, points[point_t]).double())
    for s in range(0, large.numel(), 256):
        rows = large[s : s + 256]
        values = _kernel_values(kernels, rows.repeat(points.shape[0]), points.repeat_interleave(rows.numel(), 0))
        out += values.view(points.shape[0], rows.numel()).double().sum(dim=1)
    return out



def _kernel_values(kernels: Kernels, rows: Tensor, points: Tensor) -> Tensor:
    """o_i' exp(-1/2 m_i(p)^2) for kernel ``rows[k]`` at ``points[k]``. rows [K], points [K, 3] -> [K]"""
    d = points - kernels.xyz[rows]  # [K, 3]
    p = kernels.precision[rows]  # [K, 6]
    dx, dy, dz = d.unbind(-1)
    q = p[:, 0] * dx * dx + p[:, 1] * dy * dy + p[:, 2] * dz * dz
    q = q + 2.0 * (p[:, 3] * dx * dy + p[:, 4] * dx * dz + p[:, 5] * dy * dz)
    return kernels.opacity[rows] * torch.exp(-0.5 * q)
