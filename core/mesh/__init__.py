"""Gaussians -> density grid -> mesh -> UV texture: a textured mesh (.glb / .obj) on any device.

:func:`gaussians_to_mesh` turns activated Gaussians ``[N, 14]`` (docs/design.md) into a closed,
textured triangle mesh; :func:`save_mesh` writes it as a binary glTF (``.glb``, texture embedded)
or a Wavefront ``.obj`` with its ``.mtl`` and ``.png``. Nothing here needs CUDA: the density and
colour queries run in PyTorch on the Gaussians' device, the rest on the CPU. The steps:

1. **Density.** ``D(x) = sum_i o_i' exp(-1/2 (x - mu_i)^T S_i'^-1 (x - mu_i))``, opacity-weighted
   Gaussian kernels with ``S_i' = R_i diag(s_i^2) R_i^T + (0.6 h)^2 I`` and
   ``o_i' = o_i sqrt(det S_i / det S_i')``: a low-pass filter of the grid spacing ``h`` (as in
   Mip-Splatting's 3D filter), so that Gaussians thinner than a voxel do not alias. ``D`` is sampled
   on a regular grid around the Gaussians with ``resolution`` points along its longest side (but
   no finer than half the typical Gaussian size). Each Gaussian is evaluated in the box of +-3
   standard deviations around its centre, in chunks of at most ``CHUNK`` Gaussian-voxel pairs
   (memory-bounded); a Gaussian wider than ``MAX_RADIUS`` voxels is evaluated on a grid 2x, 4x, ...
   coarser and trilinearly upsampled (unless its thinnest direction would then span fewer than
   ``COARSE_SAMPLES`` voxels), so that none costs more than ``(2 CAP_RADIUS + 1)^3`` evaluations.
2. **Level.** The surface is ``D = threshold * D_ref``, with ``D_ref`` the opacity-weighted median
   of ``D`` at the Gaussians' centres: the density of the sheet of Gaussians that forms the surface.
   A relative level behaves the same for 16,384 or 65,536 Gaussians, thin or thick. For a sheet
   whose density across it has standard deviation ``s``, the surface lies
   ``s sqrt(2 ln(1 / threshold))`` outside the Gaussians' centres (1.45 s at the default 0.35),
   close to where the Gaussian renders' silhouettes are.
3. **Inside.** Feed-forward Gaussians form a shell (the surfaces seen by the input views), so ``D``
   is small again inside the object. Voxels enclosed by the shell are set above the level, so
   that only the outer surface is extracted; holes in the shell up to about twice the typical
   Gaussian size, or where the density stays above half the level, are sealed for this. (Where
   the shell has larger gaps, e.g. surfaces no input view saw, the result is a closed thin skin.)
4. **Marching cubes** (scikit-image, Lewiner), then a repair pass that guarantees a closed
   manifold; connected pieces with less than ``min_component`` x the area of the largest are
   dropped (floaters).
5. **Decimation** to at most ``faces`` triangles (fast-simplification, quadric error metric; its
   rare non-manifold spots are repaired), then ``SMOOTH_ITERATIONS`` of Taubin smoothing, which
   removes the bumps of a lumpy sheet of Gaussians without shrinking the surface.
6. **UV atlas** (xatlas), one square texture of ``texture_size`` texels.
7. **Texture.** Each texel's surface point takes the kernel-weighted colour of its ``KNN`` nearest
   Gaussians (weights ``o_i' exp(-1/2 m_i^2)``, normalised: the colour the density field carries
   there); texels outside every chart take the colour of the nearest texel inside one, so bilinear
   filtering and mipmaps show no seams.

Coordinates are the project's world (y up, docs/design.md), which is also glTF's: an object seen by the
azimuth-0 camera faces +z, glTF's front.

The package, one file per step (each with its step's details and constants):

==============  =====================================================================
``pipeline``    :func:`gaussians_to_mesh` (the seven steps in order), input checks, defaults
``result``      :class:`MeshResult` (the mesh, its UV atlas and texture), :class:`MeshError`
``density``     1. the filtered kernels and the density grid (:func:`density_grid`, :func:`density_at`)
``level``       2. the surface level
``inside``      3. the shell's inside filled
``surface``     4. marching cubes and the removal of small pieces
``repair``      4-5. the closed-manifold repair (also after decimation), :func:`is_closed_manifold`
``simplify``    5. decimation and Taubin smoothing
``atlas``       6. the UV atlas
``texture``     7. texture baking, with the 2D triangle rasterizer :func:`rasterize_triangles`
``export``      :func:`save_mesh`: ``.glb`` / ``.obj`` files, optionally with merged seams
``preview``     :func:`render_mesh`: an unlit CPU render with the renderer's cameras (for checks)
==============  =====================================================================

Every name that ``core.mesh`` offered as one module is still importable from ``core.mesh``.
"""

from core.mesh.density import (
    CAP_RADIUS,
    CHUNK,
    COARSE_SAMPLES,
    CUTOFF_SIGMAS,
    FILTER_VOXELS,
    MAX_RADIUS,
    MIN_VOXEL,
    SURFACE_OPACITY,
    Kernels,
    density_at,
    density_grid,
)
from core.mesh.export import save_mesh
from core.mesh.inside import SEAL_LEVEL, SEAL_SCALES
from core.mesh.level import REFERENCE_SAMPLES
from core.mesh.pipeline import (
    DEFAULT_FACES,
    DEFAULT_MIN_COMPONENT,
    DEFAULT_RESOLUTION,
    DEFAULT_TEXTURE_SIZE,
    DEFAULT_THRESHOLD,
    MIN_OPACITY,
    checked_gaussians,
    gaussians_to_mesh,
)
from core.mesh.preview import render_mesh
from core.mesh.repair import is_closed_manifold
from core.mesh.result import MeshError, MeshResult
from core.mesh.simplify import SMOOTH_ITERATIONS
from core.mesh.texture import KNN, TEXEL_CHUNK, rasterize_triangles

# Private helpers that tests/test_mesh.py reaches as core.mesh._kernels and core.mesh._repair.
from core.mesh.density import _kernels  # noqa: F401
from core.mesh.repair import _repair  # noqa: F401

__all__ = [
    "CAP_RADIUS", "CHUNK", "COARSE_SAMPLES", "CUTOFF_SIGMAS", "DEFAULT_FACES", "DEFAULT_MIN_COMPONENT",
    "DEFAULT_RESOLUTION", "DEFAULT_TEXTURE_SIZE", "DEFAULT_THRESHOLD", "FILTER_VOXELS", "KNN", "MAX_RADIUS",
    "MIN_OPACITY", "MIN_VOXEL", "REFERENCE_SAMPLES", "SEAL_LEVEL", "SEAL_SCALES", "SMOOTH_ITERATIONS",
    "SURFACE_OPACITY", "TEXEL_CHUNK", "Kernels", "MeshError", "MeshResult", "checked_gaussians", "density_at",
    "density_grid", "gaussians_to_mesh", "is_closed_manifold", "rasterize_triangles", "render_mesh", "save_mesh",
]  # fmt: skip
