"""What the mesh export returns, :class:`MeshResult`, and the error it raises, :class:`MeshError`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.errors import UserError


class MeshError(UserError, ValueError):
    """Bad input to the mesh export, or nothing to extract; the message says what to change."""



@dataclass
class MeshResult:
    """A closed triangle mesh with a UV atlas and a baked colour texture (world units, y up).

    ``vertices``/``faces`` are the watertight surface (shared vertices); the UV atlas splits vertices
    along its seams, so it has its own vertex list: UV vertex ``k`` sits at
    ``vertices[uv_vertex[k]]`` and face ``f`` is ``uv_faces[f]`` in it (same face order).
    """

    vertices: np.ndarray  # [V, 3] float32
    faces: np.ndarray  # [F, 3] int64, counter-clockwise seen from outside
    uv_vertex: np.ndarray  # [U] int64 index into vertices
    uv: np.ndarray  # [U, 2] float32 in [0, 1], origin at the bottom left (OpenGL, OBJ, trimesh)
    uv_faces: np.ndarray  # [F, 3] int64 index into uv
    texture: np.ndarray  # [T, T, 3] uint8, row 0 is the top of the image (v = 1)
    info: dict = field(default_factory=dict)  # grid, level, counts, seconds per step

    def surface_normals(self) -> np.ndarray:
        """Area-weighted unit normals of the closed surface, per surface vertex. -> [V, 3] float64"""
        v, f = self.vertices.astype(np.float64), self.faces
        face_n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # [F, 3], |n| = 2 area
        normals = np.zeros_like(v)
        for k in range(3):
            np.add.at(normals, f[:, k], face_n)
        return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-20)

    def vertex_normals(self) -> np.ndarray:
        """Area-weighted unit normals of the closed surface, per UV vertex. -> [U, 3] float32"""
        return self.surface_normals()[self.uv_vertex].astype(np.float32)

    def vertex_colours(self) -> np.ndarray:
        """The texture's colour at each surface vertex: bilinear at the UV of one of its UV copies
        (copies along a seam show the same surface point). -> [V, 3] uint8"""
        t = self.texture.astype(np.float64)
        size_v, size_u = t.shape[:2]
        first = np.full(len(self.vertices), -1, dtype=np.int64)
        first[self.uv_vertex[::-1]] = np.arange(len(self.uv_vertex))[::-1]  # the first UV copy of each vertex
        uv = self.uv[np.maximum(first, 0)].astype(np.float64)
        x = np.clip(uv[:, 0] * size_u - 0.5, 0, size_u - 1)  # texel centres at (k + 0.5) / size
        y = np.clip((1.0 - uv[:, 1]) * size_v - 0.5, 0, size_v - 1)  # row 0 is v = 1
        x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
        x1, y1 = np.minimum(x0 + 1, size_u - 1), np.minimum(y0 + 1, size_v - 1)
        fx, fy = (x - x0)[:, None], (y - y0)[:, None]
        rgb = (t[y0, x0] * (1 - fx) + t[y0, x1] * fx) * (1 - fy) + (t[y1, x0] * (1 - fx) + t[y1, x1] * fx) * fy
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)

    def to_trimesh(self, merge_seams: bool = False):
        """A ``trimesh.Trimesh`` with UV-split vertices, smooth normals and a PBR material whose base
        colour is the texture (metallic 0, roughness 1). ``merge_seams``: the watertight surface
        itself, one vertex per point, with smooth normals and colours per vertex (no UV, no texture)."""
        import trimesh
        from PIL import Image

        if merge_seams:
            return trimesh.Trimesh(
                vertices=self.vertices, faces=self.faces, vertex_normals=self.surface_normals().astype(np.float32),
                vertex_colors=self.vertex_colours(), process=False,
            )  # fmt: skip

        material = trimesh.visual.material.PBRMaterial(
            name="gaussians",
            baseColorTexture=Image.fromarray(self.texture),
            metallicFactor=0.0,
            roughnessFactor=1.0,
        )
        return trimesh.Trimesh(
            vertices=self.vertices[self.uv_vertex],
            faces=self.uv_faces,
            vertex_normals=self.vertex_normals(),
            visual=trimesh.visual.TextureVisuals(uv=self.uv, material=material),
            process=False,
        )
