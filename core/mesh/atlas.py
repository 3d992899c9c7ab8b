"""Step 6, the UV atlas: xatlas charts of the surface, packed into one square texture."""

from __future__ import annotations

import numpy as np

from core.mesh.result import MeshError


def _uv_atlas(verts: np.ndarray, tris: np.ndarray, texture_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas charts packed for a square texture. -> (uv_vertex [U], uv_faces [F, 3], uv [U, 2] in [0, 1])"""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(verts.astype(np.float32), tris.astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = texture_size
    pack.padding = 2
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:
        raise MeshError(f"the UV atlas needed {atlas.atlas_count} textures; raise --texture-size or lower --faces")
    uv_vertex, uv_faces, uv = atlas[0]
    return uv_vertex.astype(np.int64), uv_faces.astype(np.int64), uv.astype(np.float32)
