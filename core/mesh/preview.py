"""A preview of a :class:`MeshResult`: :func:`render_mesh`, an unlit textured render on the CPU with
the Gaussian renderer's cameras and pixel convention, so that a mesh can be compared with the
Gaussian renders it came from (tests/test_mesh.py compares their silhouettes).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from core.geometry import ndc_to_pixel, perspective_divide
from core.mesh.result import MeshResult
from core.mesh.texture import rasterize_triangles


def render_mesh(result: MeshResult, cam_view_proj: Tensor, size: int, bg=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Unlit textured render of the mesh with the renderer's camera (a preview on the CPU).

    cam_view_proj: [4, 4] as for GaussianRenderer (row vectors, docs/design.md): pixel coordinates
    ``((ndc + 1) * size - 1) / 2``, so pixel (x, y) is seen at integer (x, y) as in the Gaussian
    renders; no near-plane clipping (keep the camera outside the object). Nearest texel,
    perspective-correct UVs, no anti-aliasing. -> rgb [size, size, 3] float32 in [0, 1] over
    ``bg``, alpha [size, size] float32 (0 or 1).
    """
    m = np.asarray(torch.as_tensor(cam_view_proj).double().cpu())  # [4, 4]
    pos = result.vertices.astype(np.float64)
    clip = np.concatenate([pos, np.ones((pos.shape[0], 1))], axis=1) @ m  # [V, 4]
    w = clip[:, 3:4]
    ndc = perspective_divide(clip[:, :3], w)
    pix = ndc_to_pixel(ndc[:, :2], size) + 0.5  # [V, 2] rasterize_triangles puts centres at +0.5
    face, bary = rasterize_triangles(pix[result.faces], size, size, depth=ndc[result.faces, 2])
    covered = face >= 0
    f = face[covered]
    inv_w = 1.0 / w[:, 0]  # perspective-correct interpolation of the UVs
    bw = bary[covered] * inv_w[result.faces[f]]  # [M, 3]
    bw /= bw.sum(axis=1, keepdims=True)
    uv = (result.uv[result.uv_faces[f]] * bw[:, :, None]).sum(axis=1)  # [M, 2]
    t = result.texture.shape[0]
    col = np.clip((uv[:, 0] * t).astype(np.int64), 0, t - 1)
    row = np.clip(((1.0 - uv[:, 1]) * t).astype(np.int64), 0, t - 1)
    rgb = np.empty((size, size, 3), dtype=np.float32)
    rgb[:] = np.asarray(bg, dtype=np.float32)
    rgb[covered] = result.texture[row, col].astype(np.float32) / 255.0
    return rgb, covered.astype(np.float32)
