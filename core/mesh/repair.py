"""The closed-manifold repair of steps 4 and 5: after marching cubes and after decimation, the
surface is made closed (watertight), consistently oriented and manifold (:func:`_repair`), which
:func:`is_closed_manifold` checks. Works on half-edge keys with numpy; the few holes are filled in
plain Python.
"""

from __future__ import annotations

import numpy as np


def _half_edge_keys(tris: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directed edges a -> b of every face corner (face f, corner k: from tris[f, k] to
    tris[f, k + 1]) as int64 keys, and the keys of their reverses. -> ([3F], [3F])"""
    n = int(tris.max()) + 1
    a, b = tris.astype(np.int64), np.roll(tris, -1, axis=1).astype(np.int64)
    return (a * n + b).ravel(), (b * n + a).ravel()



def is_closed_manifold(tris: np.ndarray) -> bool:
    """Every directed edge is used once and its reverse once: the surface is closed (watertight),
    consistently oriented, and each edge has exactly two faces. tris: [F, 3]"""
    if tris.shape[0] == 0:
        return False
    key, reverse = _half_edge_keys(tris)
    key = np.sort(key)
    return bool((key[1:] != key[:-1]).all()) and bool(_contains(key, reverse).all())



def _contains(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Membership by binary search (numpy's hash-based isin / unique are slow on millions of
    int64). sorted_keys: [K] ascending; queries: [Q] -> bool [Q]"""
    at = np.minimum(np.searchsorted(sorted_keys, queries), sorted_keys.size - 1)
    return sorted_keys[at] == queries



def _group_sizes(*columns: np.ndarray) -> np.ndarray:
    """For each row, how many rows hold the same values in all ``columns`` (each [R]). -> [R]"""
    order = np.lexsort(columns[::-1])
    rows = np.stack([c[order] for c in columns], axis=1)  # [R, C] sorted
    starts = np.concatenate([[True], (rows[1:] != rows[:-1]).any(axis=1)])
    group = np.cumsum(starts) - 1
    sizes = np.bincount(group)
    out = np.empty(order.size, dtype=np.int64)
    out[order] = sizes[group]
    return out



def _repair(verts: np.ndarray, tris: np.ndarray, rounds: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Make a nearly closed mesh a closed manifold, changing as little as possible.

    Drops degenerate faces and every copy of a repeated face (back-to-back pairs), removes the faces
    around edges that more than two faces share, closes each hole this leaves (or had) with a fan
    around its centroid, and gives each fan of faces around a vertex its own vertex (two sheets that
    touch at a point become two vertices at one position). Unused vertices go. The result is closed
    whenever the holes are simple loops; check with :func:`is_closed_manifold`.
    """
    verts = np.asarray(verts, dtype=np.float64)
    tris = np.asarray(tris, dtype=np.int64)
    for _ in range(rounds):
        tris = tris[(tris[:, 0] != tris[:, 1]) & (tris[:, 1] != tris[:, 2]) & (tris[:, 0] != tris[:, 2])]
        ordered = np.sort(tris, axis=1)
        tris = tris[_group_sizes(ordered[:, 0], ordered[:, 1], ordered[:, 2]) == 1]
        if tris.shape[0] == 0 or is_closed_manifold(tris):
            break
        n = verts.shape[0]
        a, b = tris.ravel(), np.roll(tris, -1, axis=1).ravel()  # [3F] directed edges a -> b
        undirected = np.minimum(a, b) * n + np.maximum(a, b)
        crowded = (_group_sizes(undirected) > 2).reshape(-1, 3).any(axis=1)  # faces on a shared edge
        tris = tris[~crowded]
        verts, tris = _fill_holes(verts, tris)
    if tris.shape[0] and is_closed_manifold(tris):
        return _split_pinched(verts, tris)
    used = np.zeros(verts.shape[0], dtype=bool)
    used[tris.ravel()] = True
    remap = np.cumsum(used) - 1
    return verts[used], remap[tris]



def _fill_holes(verts: np.ndarray, tris: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Close every hole with a fan of triangles around the centroid of its boundary, oriented like
    the faces around it. The open edges (whose reverse no face has) are split into simple loops
    (no vertex twice), so holes that touch at a vertex get a fan each. Holes are few and small here,
    so plain Python is fast enough."""
    if tris.shape[0] == 0:
        return verts, tris
    key, reverse = _half_edge_keys(tris)
    open_ = ~_contains(np.sort(key), reverse)  # [3F] directed edges a -> b whose reverse no face has
    if not open_.any():
        return verts, tris
    starts = tris.ravel()[open_].tolist()
    ends = np.roll(tris, -1, axis=1).ravel()[open_].tolist()
    successors: dict[int, list[int]] = {}
    for a, b in zip(starts, ends):
        successors.setdefault(a, []).append(b)
    loops = []
    for first in list(successors):
        while successors[first]:
            path, where = [first], {first: 0}
            while path:
                nxt = successors.get(path[-1])
                if not nxt:
                    break  # not a closed boundary (cannot happen on an oriented surface); leave it
                w = nxt.pop()
                if w in where:  # a simple loop closes: path[where[w]:] -> w
                    i = where[w]
                    loops.append(path[i:])
                    for x in path[i + 1 :]:
                        del where[x]
                    path = path[: i + 1]
                    if i == 0 and not successors[first]:
                        break
                else:
                    where[w] = len(path)
                    path.append(w)
    new_faces, centres = [], []
    for loop in loops:
        c = verts.shape[0] + len(centres)
        centres.append(verts[loop].mean(axis=0))
        ring = np.asarray(loop, dtype=np.int64)
        new_faces.append(np.stack([np.roll(ring, -1), ring, np.full_like(ring, c)], axis=1))  # b, a, centre
    if not loops:
        return verts, tris
    return np.concatenate([verts, np.asarray(centres)]), np.concatenate([tris, *new_faces])



def _split_pinched(verts: np.ndarray, tris: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One vertex per fan of faces around each vertex of a closed manifold mesh (pinch points,
    where fans only touch, are split into several vertices at one position)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    # Corners (face f, corner k) = 3 f + k. The directed edge at corner k runs a -> b; its reverse
    # b -> a at corner 3 g + j belongs to face g, whose corner at a is 3 g + (j + 1) % 3: the
    # two corners at a are neighbours in a's fan.
    key, reverse = _half_edge_keys(tris)
    order = np.argsort(key)
    opposite = order[np.searchsorted(key[order], reverse)]  # [3F] corner of the reverse edge
    corner = np.arange(key.size)
    partner = (opposite // 3) * 3 + (opposite % 3 + 1) % 3
    graph = coo_matrix((np.ones(corner.size, dtype=np.int8), (corner, partner)), shape=(corner.size,) * 2)
    count, fan = connected_components(graph, directed=False)  # one new vertex per fan
    old = np.zeros(count, dtype=np.int64)
    old[fan] = tris.ravel()
    return verts[old], fan.reshape(-1, 3).astype(np.int64)
