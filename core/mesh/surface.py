"""Step 4, the surface: marching cubes (scikit-image, Lewiner) on the filled density, facing out,
and the removal of floaters, the connected pieces much smaller than the largest. Between the two,
the pipeline makes the surface a closed manifold (:mod:`core.mesh.repair`).
"""

from __future__ import annotations

import numpy as np


def _marching_cubes(field_: np.ndarray, level: float, origin, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface ``field_ = level``: vertices [V, 3] float64 (world), faces [F, 3] int64, facing out."""
    from skimage.measure import marching_cubes

    verts, tris, _, _ = marching_cubes(field_, level=level, spacing=(voxel,) * 3, allow_degenerate=False)
    verts = verts.astype(np.float64) + np.asarray(origin, dtype=np.float64)
    tris = tris.astype(np.int64)
    if tris.shape[0] and _signed_volume(verts, tris) < 0:
        tris = tris[:, ::-1].copy()  # outward normals, counter-clockwise seen from outside
    return verts, tris



def _signed_volume(verts: np.ndarray, tris: np.ndarray) -> float:
    a, b, c = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)



def _drop_small_components(verts, tris, min_component: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Remove connected pieces whose area is below ``min_component`` x the largest's; drop unused
    vertices. -> (vertices, faces, number of pieces dropped)"""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if tris.shape[0] == 0:
        return verts, tris, 0
    n = verts.shape[0]
    edges = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]]])  # [2F, 2] connects all 3 vertices
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    count, label = connected_components(graph, directed=False)
    face_label = label[tris[:, 0]]
    area = 0.5 * np.linalg.norm(np.cross(verts[tris[:, 1]] - verts[tris[:, 0]], verts[tris[:, 2]] - verts[tris[:, 0]]), axis=1)
    piece_area = np.bincount(face_label, weights=area, minlength=count)
    keep_piece = piece_area >= min_component * piece_area.max()
    keep_piece &= piece_area > 0
    tris = tris[keep_piece[face_label]]
    used = np.zeros(n, dtype=bool)
    used[tris.ravel()] = True
    remap = np.cumsum(used) - 1
    dropped = int((~keep_piece & (np.bincount(label, minlength=count) > 0)).sum())
    return verts[used], remap[tris], dropped
