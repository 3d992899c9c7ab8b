"""Step 7, the texture: each texel's surface point takes the kernel-weighted colour of its ``KNN``
nearest Gaussians (the colour the density field carries there); texels outside every chart take
the colour of the nearest texel inside one, so that bilinear filtering and mipmaps show no seams.
Texels are found on the surface with :func:`rasterize_triangles`, a plain 2D triangle rasterizer
(also used by :func:`core.mesh.preview.render_mesh`).
"""

from __future__ import annotations

import numpy as np
import torch

from core.mesh.density import Kernels

KNN = 8  # Gaussians per texel for the colour
TEXEL_CHUNK = 1 << 16  # texels per step of the colour query


def rasterize_triangles(
    tri: np.ndarray, width: int, height: int, depth: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Which triangle covers each pixel centre, and where: a plain 2D rasterizer.

    tri: [F, 3, 2] vertex positions in pixels (x right, y down; pixel (i, j) covers
    [j, j + 1] x [i, i + 1], centre (j + 0.5, i + 0.5)); depth: optional [F, 3] per vertex (linear
    in screen space, e.g. NDC z): where triangles overlap, the smallest interpolated depth wins
    (without it, any one of them). Returns face [H, W] int64 (-1 where no triangle covers the
    centre) and barycentric [H, W, 3] float32 (screen space).
    """
    tri = np.asarray(tri, dtype=np.float64)
    lo = np.maximum(np.floor(tri.min(axis=1) - 0.5).astype(np.int64), 0)  # [F, 2] first pixel that may be inside
    hi = np.minimum(np.ceil(tri.max(axis=1) - 0.5).astype(np.int64), [width - 1, height - 1])
    size = np.maximum(hi - lo + 1, 0).max(axis=1)  # [F] side of a square window over the box
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])  # [F] 2x signed
    valid = (np.abs(area) > 1e-12) & (size > 0)
    hits = []  # per chunk: pixel [h], face [h], barycentric [h, 3], depth [h]
    for s in np.unique(size[valid]):
        members = np.nonzero(valid & (size == s))[0]
        oy, ox = np.divmod(np.arange(s * s), s)  # [K] window offsets
        per = max(1, (1 << 20) // (s * s))
        for start in range(0, members.size, per):
            m = members[start : start + per]  # [C]
            px = lo[m, 0, None] + ox[None]  # [C, K]
            py = lo[m, 1, None] + oy[None]
            cx, cy = px + 0.5, py + 0.5
            # barycentric coordinates of the pixel centres: edge functions over twice the area
            w0 = ((b[m, 0, None] - cx) * (c[m, 1, None] - cy) - (b[m, 1, None] - cy) * (c[m, 0, None] - cx)) / area[m, None]
            w1 = ((c[m, 0, None] - cx) * (a[m, 1, None] - cy) - (c[m, 1, None] - cy) * (a[m, 0, None] - cx)) / area[m, None]
            w2 = 1.0 - w0 - w1
            ok = (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9) & (px <= hi[m, 0, None]) & (py <= hi[m, 1, None])
            r, k = np.nonzero(ok)
            w = np.stack([w0[r, k], w1[r, k], w2[r, k]], axis=1)  # [h, 3]
            z = (w * depth[m[r]]).sum(axis=1) if depth is not None else np.zeros(len(r))
            hits.append((py[r, k] * width + px[r, k], m[r], w, z))
    face = np.full(height * width, -1, dtype=np.int64)
    bary = np.zeros((height * width, 3), dtype=np.float32)
    if hits:
        pixel, fid, w, z = (np.concatenate(parts) for parts in zip(*hits))
        order = np.lexsort((z, pixel))  # by pixel, nearest first
        pixel = pixel[order]
        first = np.concatenate([[True], pixel[1:] != pixel[:-1]])
        face[pixel[first]] = fid[order][first]
        bary[pixel[first]] = w[order][first]
    return face.reshape(height, width), bary.reshape(height, width, 3)



def _bake_texture(verts, tris, uv, uv_faces, kernels: Kernels, size: int) -> np.ndarray:
    """The colour field at every texel's surface point. -> [size, size, 3] uint8 (row 0 = v = 1)"""
    from scipy.ndimage import distance_transform_edt
    from scipy.spatial import cKDTree

    pix = np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], axis=1)  # [U, 2] pixels, y down
    face, bary = rasterize_triangles(pix[uv_faces], size, size)  # [T, T], [T, T, 3]
    covered = face >= 0
    f = face[covered]  # [M]
    w = bary[covered].astype(np.float64)  # [M, 3]
    points = (verts[tris[f]] * w[:, :, None]).sum(axis=1)  # [M, 3] surface points of the texels

    device = kernels.xyz.device
    tree = cKDTree(kernels.xyz.double().cpu().numpy())
    k = min(KNN, kernels.xyz.shape[0])
    rgb = np.empty((points.shape[0], 3), dtype=np.float32)
    log_o = kernels.opacity.clamp_min(1e-30).log()  # [N]
    for s in range(0, points.shape[0], TEXEL_CHUNK):
        p = points[s : s + TEXEL_CHUNK]
        _, nn = tree.query(p, k=k, workers=-1)  # [C, k]
        nn = torch.from_numpy(np.asarray(nn, dtype=np.int64).reshape(len(p), k)).to(device)
        d = torch.from_numpy(p).float().to(device)[:, None, :] - kernels.xyz[nn]  # [C, k, 3]
        pr = kernels.precision[nn]  # [C, k, 6]
        dx, dy, dz = d.unbind(-1)
        q = pr[..., 0] * dx * dx + pr[..., 1] * dy * dy + pr[..., 2] * dz * dz
        q = q + 2.0 * (pr[..., 3] * dx * dy + pr[..., 4] * dx * dz + pr[..., 5] * dy * dz)  # [C, k]
        weight = torch.softmax(log_o[nn] - 0.5 * q, dim=1)  # [C, k]
        rgb[s : s + len(p)] = (weight[..., None] * kernels.rgb[nn]).sum(dim=1).clamp(0, 1).cpu().numpy()

    image = np.zeros((size, size, 3), dtype=np.float32)
    image[covered] = rgb
    if covered.any() and not covered.all():
        _, (iy, ix) = distance_transform_edt(~covered, return_indices=True)
        image = image[iy, ix]  # every empty texel takes its nearest covered texel's colour
    return (image * 255.0 + 0.5).astype(np.uint8)
