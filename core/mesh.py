"""Gaussians -> density grid -> mesh -> UV texture: a textured mesh (.glb / .obj) on any device.

:func:`gaussians_to_mesh` turns activated Gaussians ``[N, 14]`` (DESIGN.md) into a closed,
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

Coordinates are the project's world (y up, DESIGN.md), which is also glTF's: an object seen by the
azimuth-0 camera faces +z, glTF's front.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from core.rasterizer.torch_backend import quaternion_to_matrix

# Defaults of gaussians_to_mesh (and scripts/convert_mesh.py), chosen for the big preset's 65,536
# Gaussians: under 30 s and 2 GB on 2 CPU cores (scripts/bench_mesh.py).
DEFAULT_RESOLUTION = 256
DEFAULT_THRESHOLD = 0.35
DEFAULT_FACES = 30_000
DEFAULT_TEXTURE_SIZE = 1024
DEFAULT_MIN_COMPONENT = 0.02

MIN_OPACITY = 1.0 / 255.0  # Gaussians below this never show in a render (DESIGN.md) and are ignored
CUTOFF_SIGMAS = 3.0  # each Gaussian is evaluated within +-3 standard deviations per axis
FILTER_VOXELS = 0.6  # std of the low-pass filter added to every Gaussian, in voxels
MAX_RADIUS = 8  # voxels; a wider Gaussian goes to a coarser grid (unless that is too coarse for it),
CAP_RADIUS = 16  # ... but never keeps a box of more than this radius, in voxels of its grid
COARSE_SAMPLES = 4.0  # a coarse grid's spacing is at most 1/4 of a Gaussian's smallest std
CHUNK = 1 << 21  # Gaussian-voxel evaluations per step of the density splatting (memory bound)
MIN_VOXEL = 0.5  # the grid is never finer than this fraction of the typical Gaussian size
SEAL_SCALES = 1.0  # holes in the shell up to about twice this many typical Gaussian sizes are sealed,
SEAL_LEVEL = 0.5  # ... and so are holes where the density stays above this fraction of the level
SMOOTH_ITERATIONS = 5  # Taubin smoothing after the decimation (each a lambda and a mu step)
KNN = 8  # Gaussians per texel for the colour
TEXEL_CHUNK = 1 << 16  # texels per step of the colour query
REFERENCE_SAMPLES = 2048  # centres at which the reference density is evaluated
SURFACE_OPACITY = 0.1  # Gaussians at least this opaque set the grid's bounding box


class MeshError(ValueError):
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


# ------------------------------------------------------------------------------------ entry point


def gaussians_to_mesh(
    gaussians: Tensor,
    resolution: int = DEFAULT_RESOLUTION,
    threshold: float = DEFAULT_THRESHOLD,
    faces: int = DEFAULT_FACES,
    texture_size: int = DEFAULT_TEXTURE_SIZE,
    min_component: float = DEFAULT_MIN_COMPONENT,
    progress: bool = False,
) -> MeshResult:
    """Extract a closed, textured mesh from activated Gaussians (see the module docstring).

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


def save_mesh(result: MeshResult, path, merge_seams: bool = False) -> list[Path]:
    """Write ``result`` by the suffix of ``path``: ``.glb`` (binary glTF 2.0, texture embedded) or
    ``.obj`` (plus ``<stem>.mtl`` and ``<stem>.png`` beside it). Creates the folder. Returns the
    files written.

    The texture's UV atlas splits vertices along its seams, so the file's triangles are watertight
    only once those are merged (by position). ``merge_seams`` writes the watertight surface itself,
    one vertex per point, with a colour per vertex instead of the texture (3D printing, tools that
    check watertightness); an ``.obj`` is then one file (``v x y z r g b``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".glb", ".obj"):
        raise MeshError(f"{path}: unknown mesh format {path.suffix!r}; use .glb (texture embedded) or .obj")
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh = result.to_trimesh(merge_seams=merge_seams)
    if suffix == ".glb":
        mesh.export(str(path), file_type="glb")
        return [path]
    from trimesh.exchange.obj import export_obj

    if merge_seams:
        text = export_obj(mesh, include_normals=True, include_color=True, include_texture=False)
        path.write_text(text[0] if isinstance(text, tuple) else text)
        return [path]

    mtl, png = path.with_suffix(".mtl"), path.with_suffix(".png")
    text = export_obj(mesh, include_normals=True, include_texture=True, write_texture=False, mtl_name=mtl.name)
    if isinstance(text, tuple):
        text = text[0]
    path.write_text(text)
    # Our own material: white diffuse times the texture (trimesh's PBR conversion writes Kd 0.4,
    # which viewers that follow the MTL spec multiply the texture by), no specular.
    mtl.write_text(
        "# colours baked from 3D Gaussians (core/mesh.py)\n"
        "newmtl gaussians\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nNs 1\nd 1\nillum 1\n"
        f"map_Ka {png.name}\nmap_Kd {png.name}\n"
    )
    from PIL import Image

    Image.fromarray(result.texture).save(png)
    return [path, mtl, png]


# ------------------------------------------------------------------------------------ checks


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


# ------------------------------------------------------------------------------------ density


@dataclass
class Kernels:
    """The filtered Gaussians of the density field (module docstring, step 1), on one device."""

    xyz: Tensor  # [N, 3] centres
    opacity: Tensor  # [N] o' (filtered peak)
    precision: Tensor  # [N, 6] inverse covariance entries xx, yy, zz, xy, xz, yz
    extent: Tensor  # [N, 3] CUTOFF_SIGMAS standard deviations along x, y, z
    rgb: Tensor  # [N, 3]


def _kernels(g: Tensor, voxel: float) -> Kernels:
    """Activated Gaussians [N, 14] -> Kernels with the low-pass filter of a grid of spacing ``voxel``."""
    rot = quaternion_to_matrix(g[:, 7:11].double())  # [N, 3, 3]
    scale = g[:, 4:7].double().clamp_min(1e-7)  # [N, 3]
    cov = (rot * scale[:, None, :] ** 2) @ rot.transpose(1, 2)  # [N, 3, 3] R S^2 R^T
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


def _surface_level(density: np.ndarray, kernels: Kernels, threshold: float) -> tuple[float, float]:
    """(level, reference): reference = opacity-weighted median of the density at the Gaussians'
    centres, estimated exactly (not from the grid, which flattens peaks) at up to REFERENCE_SAMPLES
    centres drawn with probability proportional to opacity (seeded: the same input gives the same
    mesh)."""
    n = kernels.xyz.shape[0]
    weights = kernels.opacity.double().cpu().numpy()
    rng = np.random.default_rng(0)
    if n > REFERENCE_SAMPLES:
        rows = np.sort(rng.choice(n, size=REFERENCE_SAMPLES, replace=True, p=weights / weights.sum()))
        weights = np.ones(rows.size)
    else:
        rows = np.arange(n)
    at_centres = density_at(kernels, kernels.xyz[torch.from_numpy(rows).to(kernels.xyz.device)])
    reference = _weighted_median(at_centres.double().cpu().numpy(), weights)
    if not reference > 0:
        reference = float(density.max())
    return threshold * reference, reference


def density_at(kernels: Kernels, points: Tensor) -> Tensor:
    """The density ``D`` (module docstring) evaluated exactly at a few points [P, 3] -> [P].

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


# ------------------------------------------------------------------------------------ surface


def _fill_inside(density: np.ndarray, level: float, seal: int) -> tuple[np.ndarray, int]:
    """Set the voxels enclosed by the surface above ``level`` (module docstring, step 3).

    density: [X, Y, Z] -> (padded field [X + 2p, Y + 2p, Z + 2p] float32, p): the padding is below
    the level, so the surface is closed at the border of the grid."""
    from scipy import ndimage

    pad = seal + 1
    field_ = np.pad(density.astype(np.float32, copy=False), pad, mode="constant", constant_values=0.0)
    occupied = field_ > level
    cross = ndimage.generate_binary_structure(3, 1)
    # The outside: flood-filled from the border through the space that is empty even at a lower
    # level (SEAL_LEVEL x level) grown by ``seal`` voxels, which seals thin spots and holes of the
    # sheet of Gaussians; then grown back towards the surface (geodesically, never through it).
    sealed = ndimage.binary_dilation(field_ > SEAL_LEVEL * level, structure=cross, iterations=seal)
    labels, _ = ndimage.label(~sealed, structure=cross)
    outside = labels == labels[0, 0, 0]  # the padding is empty and connected
    del labels, sealed
    outside = ndimage.binary_dilation(outside, structure=cross, iterations=seal + 2, mask=~occupied)
    inside = ~outside & ~occupied
    field_[inside] = 2.0 * level
    return field_, pad


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


# ------------------------------------------------------------------------------------ texture


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


def render_mesh(result: MeshResult, cam_view_proj: Tensor, size: int, bg=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Unlit textured render of the mesh with the renderer's camera (a preview on the CPU).

    cam_view_proj: [4, 4] as for GaussianRenderer (row vectors, DESIGN.md): pixel coordinates
    ``((ndc + 1) * size - 1) / 2``, so pixel (x, y) is seen at integer (x, y) as in the Gaussian
    renders; no near-plane clipping (keep the camera outside the object). Nearest texel,
    perspective-correct UVs, no anti-aliasing. -> rgb [size, size, 3] float32 in [0, 1] over
    ``bg``, alpha [size, size] float32 (0 or 1).
    """
    m = np.asarray(torch.as_tensor(cam_view_proj).double().cpu())  # [4, 4]
    pos = result.vertices.astype(np.float64)
    clip = np.concatenate([pos, np.ones((pos.shape[0], 1))], axis=1) @ m  # [V, 4]
    w = clip[:, 3:4]
    ndc = clip[:, :3] / (w + 1e-7)
    pix = ((ndc[:, :2] + 1.0) * size - 1.0) / 2.0 + 0.5  # [V, 2] rasterize_triangles puts centres at +0.5
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
