"""The mesh export from start to end: :func:`gaussians_to_mesh` checks its input, runs the seven
steps of the package docstring in order (timing each) and returns a :class:`MeshResult`.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor

from core.mesh.atlas import _uv_atlas
from core.mesh.density import _grid_box, _kernels, density_grid
from core.mesh.inside import SEAL_SCALES, _fill_inside
from core.mesh.level import _surface_level
from core.mesh.repair import _repair
from core.mesh.result import MeshError, MeshResult
from core.mesh.simplify import SMOOTH_ITERATIONS, _decimate, _smooth
from core.mesh.surface import _drop_small_components, _marching_cubes
from core.mesh.texture import _bake_texture

# Defaults of gaussians_to_mesh (and scripts/convert_mesh.py), chosen for the big preset's 65,536
# Gaussians: under 30 s and 2 GB on 2 CPU cores (scripts/bench_mesh.py).
DEFAULT_RESOLUTION = 256
DEFAULT_THRESHOLD = 0.35
DEFAULT_FACES = 30_000
DEFAULT_TEXTURE_SIZE = 1024
DEFAULT_MIN_COMPONENT = 0.02

MIN_OPACITY = 1.0 / 255.0  # Gaussians below this never show in a render (docs/design.md) and are ignored


def gaussians_to_mesh(
    gaussians: Tensor,
    resolution: int = DEFAULT_RESOLUTION,
    threshold: float = DEFAULT_THRESHOLD,
    faces: int = DEFAULT_FACES,
    texture_size: int = DEFAULT_TEXTURE_SIZE,
    min_component: float = DEFAULT_MIN_COMPONENT,
    progress: bool = False,
) -> MeshResult:
    """Extract a closed, textured mesh from activated Gaussians (see the package docstring).

    gaussians: [N, 14] or [1, N, 14] (xyz, opacity, scale, quaternion wxyz, rgb), any device.
    resolution: grid points along the longest side of the Gaussians' bounding box (fewer when
    that would make voxels finer than half the typical Gaussian size).
    threshold: the surface level as a fraction of the typical density at the Gaussians' centres;
    lower is fatter (and seals more holes), higher thinner. faces: at most this many triangles.
    texture_size: side of the square texture in texels. min_component: connected pieces with less
    than this fraction of the largest piece's area are dropped. progress: a tqdm bar over the steps.
    Raises MeshError when the input is unusable or holds no surface at that level.
    """
    _check_arguments(resolution, threshold, faces, texture_size, min_component)
    g = checked_gaussians(gaussians)  # [N, 14] float32
    steps = ["density", "level", "inside", "marching cubes", "decimate", "uv atlas", "texture"]  # info["seconds"]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(steps), desc="mesh", unit="step", leave=False)
        bar.set_postfix_str(steps[0])
    info: dict = {"gaussians": int(g.shape[0]), "seconds": {}}
    clock = time.perf_counter()

    def step_done(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        info["seconds"][name] = round(now - clock, 3)
        clock = now
        if bar is not None:
            following = steps.index(name) + 1
            bar.set_postfix_str(steps[following] if following < len(steps) else "done", refresh=False)
            bar.update(1)

    try:
        g = g[g[:, 3] >= MIN_OPACITY]
        if g.shape[0] == 0:
            raise MeshError(
                f"every one of the {info['gaussians']} Gaussians is transparent (opacity < 1/255), so there is no "
                "surface to extract. Check that the input is a reconstructed object (the .ply that infer.py "
                "writes) and that a PLY stores opacities as logits, as 3DGS PLY files do."
            )
        origin, voxel, dims, typical = _grid_box(g, resolution)
        kernels = _kernels(g, voxel)
        density = density_grid(kernels, origin, voxel, dims)  # [X, Y, Z] on g's device
        density = density.cpu().numpy()
        info.update(grid=list(dims), voxel=voxel, origin=origin.tolist(), typical_scale=typical, used_gaussians=int(g.shape[0]))
        step_done("density")

        level, reference = _surface_level(density, kernels, threshold)
        info.update(level=level, reference_density=reference)
        peak = float(density.max())
        if peak <= level:
            raise MeshError(
                f"no surface above the threshold: the Gaussians' density peaks at {peak / reference:.3g} x its "
                f"typical value at their centres, below the threshold {threshold} (--threshold). Use a threshold "
                f"below {0.9 * peak / reference:.2g}; the default is {DEFAULT_THRESHOLD}."
            )
        step_done("level")

        seal = max(1, int(round(SEAL_SCALES * typical / voxel)))
        field_, pad = _fill_inside(density, level, seal)
        del density
        step_done("inside")

        verts, tris = _marching_cubes(field_, level, origin - pad * voxel, voxel)
        del field_
        verts, tris = _repair(verts, tris)
        info["marching_cubes_faces"] = int(tris.shape[0])
        verts, tris, dropped = _drop_small_components(verts, tris, min_component)
        info["dropped_components"] = dropped
        if tris.shape[0] == 0:
            raise MeshError(
                f"no surface above the threshold {threshold} (--threshold): marching cubes found none. "
                f"Lower the threshold (default {DEFAULT_THRESHOLD}) or raise the resolution (--resolution)."
            )
        step_done("marching cubes")

        verts, tris = _decimate(verts, tris, faces)
        verts = _smooth(verts, tris, SMOOTH_ITERATIONS)
        verts, tris, _ = _drop_small_components(verts, tris, min_component)  # bits pinched off by the repair
        step_done("decimate")  # and smooth

        uv_vertex, uv_faces, uv = _uv_atlas(verts, tris, texture_size)
        step_done("uv atlas")

        texture = _bake_texture(verts, tris, uv, uv_faces, kernels, texture_size)
        step_done("texture")
    finally:
        if bar is not None:
            bar.close()
    info.update(vertices=int(verts.shape[0]), faces=int(tris.shape[0]), texture_size=texture_size)
    info["seconds"]["total"] = round(sum(info["seconds"].values()), 3)
    return MeshResult(
        vertices=verts.astype(np.float32), faces=tris.astype(np.int64), uv_vertex=uv_vertex.astype(np.int64),
        uv=uv.astype(np.float32), uv_faces=uv_faces.astype(np.int64), texture=texture, info=info,
    )  # fmt: skip



def _check_arguments(resolution, threshold, faces, texture_size, min_component) -> None:
    problems = []
    if not (isinstance(resolution, int) and 16 <= resolution <= 512):
        problems.append(
            f"resolution must be an integer in [16, 512] (grid points along the longest side; the grid and its "
            f"work arrays take about 20 bytes per point), got {resolution!r}"
        )
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        problems.append(f"threshold must be a positive number (a fraction of the density at the centres), got {threshold!r}")
    if not (isinstance(faces, int) and faces >= 100):
        problems.append(f"faces must be an integer >= 100, got {faces!r}")
    if not (isinstance(texture_size, int) and 16 <= texture_size <= 8192):
        problems.append(f"texture_size must be an integer in [16, 8192], got {texture_size!r}")
    if not (isinstance(min_component, (int, float)) and 0 <= min_component <= 1):
        problems.append(f"min_component must be in [0, 1], got {min_component!r}")
    if problems:
        raise MeshError("; ".join(problems))



def checked_gaussians(gaussians) -> Tensor:
    """[N, 14] or [1, N, 14] finite floats -> [N, 14] float32 (same device)."""
    if not isinstance(gaussians, Tensor):
        raise MeshError(f"gaussians must be a torch.Tensor [N, 14], got {type(gaussians).__name__}")
    if gaussians.dim() == 3 and gaussians.shape[0] == 1:
        gaussians = gaussians[0]
    if gaussians.dim() != 2 or gaussians.shape[1] != 14:
        raise MeshError(
            f"gaussians must have shape [N, 14] (xyz, opacity, scale xyz, quaternion wxyz, rgb), got {list(gaussians.shape)}"
        )
    if gaussians.shape[0] == 0:
        raise MeshError("no Gaussians: the input is empty (0 Gaussians), so there is no surface to extract")
    g = gaussians.detach().float()
    if not bool(torch.isfinite(g).all()):
        bad = int((~torch.isfinite(g)).any(dim=1).sum())
        raise MeshError(f"{bad} of {g.shape[0]} Gaussians hold NaN or inf values; the input is corrupt")
    return g
