"""Step 5, simplification: quadric decimation to at most ``faces`` triangles (fast-simplification;
its rare non-manifold spots are repaired), then Taubin smoothing, which removes the bumps of a
lumpy sheet of Gaussians without shrinking the surface.
"""

from __future__ import annotations

import numpy as np

from core.mesh.repair import _repair, is_closed_manifold

SMOOTH_ITERATIONS = 5  # Taubin smoothing after the decimation (each a lambda and a mu step)


def _decimate(verts: np.ndarray, tris: np.ndarray, faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation to at most ``faces`` triangles (no-op when already below), kept closed.

    The quadric collapses can leave back-to-back face pairs ("fins") and vertices where two fans
    touch; :func:`_repair` removes both. Should a result still not be a closed manifold, a less
    aggressive pass is tried, and failing that the mesh is kept as it was."""
    if tris.shape[0] <= faces:
        return verts, tris
    import fast_simplification

    for aggressiveness in (7.0, 3.0):
        v, f = fast_simplification.simplify(
            verts.astype(np.float32), tris.astype(np.int32), target_count=faces, agg=aggressiveness
        )
        v, f = _repair(np.asarray(v, dtype=np.float64), np.asarray(f, dtype=np.int64))
        if f.shape[0] and is_closed_manifold(f):
            return v, f
    return verts, tris



def _smooth(verts: np.ndarray, tris: np.ndarray, iterations: int, lam: float = 0.5, mu: float = -0.53) -> np.ndarray:
    """Taubin smoothing (lambda | mu): alternately moves every vertex by ``lam`` and ``mu`` times
    the offset to the mean of its neighbours. Removes the bumps that a lumpy sheet of Gaussians
    leaves in the surface (and that decimation keeps as "features") without shrinking it much."""
    from scipy.sparse import coo_matrix, diags

    if iterations <= 0 or tris.shape[0] == 0:
        return verts
    n = verts.shape[0]
    a = tris.ravel()
    b = np.roll(tris, -1, axis=1).ravel()  # each edge of a closed manifold once per direction
    adjacency = coo_matrix((np.ones(a.size), (a, b)), shape=(n, n)).tocsr()
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    mean_of_neighbours = diags(1.0 / np.maximum(degree, 1)) @ adjacency  # [V, V]
    v = verts.astype(np.float64, copy=True)
    for _ in range(iterations):
        for factor in (lam, mu):
            v += factor * (mean_of_neighbours @ v - v)
    return v
