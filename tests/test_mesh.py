"""core/mesh/ and scripts/convert_mesh.py: Gaussians -> closed, textured mesh (.glb / .obj).

References are independent of the code under test: Gaussians are sampled on analytic surfaces
(sphere, box, torus) with known colours, and the mesh is measured against the exact surface
(signed distance functions), its texture against the known colours; the mesh silhouette is
compared with the project's Gaussian renderer; the density grid with a brute-force sum over all
Gaussians; the triangle rasterizer with a brute-force point-in-triangle test.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core import mesh as M
from core.cameras import default_input_poses, projection_matrix, renderer_cameras

trimesh = pytest.importorskip("trimesh")

REPO = Path(__file__).resolve().parents[1]
CONVERT = REPO / "scripts" / "convert_mesh.py"

# Small settings: the whole file runs in well under a minute on 2 cores.
RESOLUTION, FACES, TEXTURE = 192, 8000, 512


def _load_script(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- analytic shapes

RED, BLUE = np.array([0.85, 0.15, 0.15]), np.array([0.15, 0.25, 0.85])
FACE_COLOURS = np.array(
    [[0.9, 0.2, 0.2], [0.2, 0.8, 0.3], [0.2, 0.3, 0.9], [0.9, 0.8, 0.2], [0.8, 0.3, 0.8], [0.2, 0.8, 0.8]]
)
GREEN, ORANGE = np.array([0.2, 0.7, 0.3]), np.array([0.95, 0.55, 0.1])


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


class Sphere:
    """Radius 0.45 around (0.05, -0.03, 0.02); red above y = 0.02, blue below."""

    centre, radius = np.array([0.05, -0.03, 0.02]), 0.45
    size = 2 * radius  # the largest side of the bounding box

    def sample(self, n, rng):
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        return self.centre + self.radius * d, d

    def sdf(self, p):
        return np.linalg.norm(p - self.centre, axis=1) - self.radius

    def colour(self, p):
        return np.where((p[:, 1] > 0.02)[:, None], RED, BLUE)


class Box:
    """Half extents (0.4, 0.3, 0.35), rotated; one colour per face (by the dominant local axis)."""

    half = np.array([0.4, 0.3, 0.35])
    rot = _rotation(3)  # local -> world
    size = None

    def __init__(self):
        corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]) * self.half
        extent = corners @ self.rot.T
        self.size = float((extent.max(0) - extent.min(0)).max())

    def sample(self, n, rng):
        h = self.half
        areas = np.array([h[1] * h[2], h[1] * h[2], h[0] * h[2], h[0] * h[2], h[0] * h[1], h[0] * h[1]])
        face = rng.choice(6, size=n, p=areas / areas.sum())
        axis, sign = face // 2, np.where(face % 2 == 0, 1.0, -1.0)
        p = rng.uniform(-1, 1, size=(n, 3)) * h
        p[np.arange(n), axis] = sign * h[axis]
        normal = np.zeros((n, 3))
        normal[np.arange(n), axis] = sign
        return p @ self.rot.T, normal @ self.rot.T

    def sdf(self, p):
        q = np.abs(p @ self.rot) - self.half
        return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)

    def colour(self, p):
        local = (p @ self.rot) / self.half
        axis = np.abs(local).argmax(axis=1)
        face = 2 * axis + (local[np.arange(len(p)), axis] < 0)
        return FACE_COLOURS[face]


class Torus:
    """Major radius 0.35, minor 0.13, axis tilted; green where local x > 0, orange elsewhere."""

    major, minor = 0.35, 0.13
    rot = _rotation(5)
    size = None

    def __init__(self):
        # bounding box of a tilted torus: extent along world axis i is
        # major * sqrt(1 - a_i^2) + minor, with a_i the axis (local y) component
        axis = self.rot[:, 1]
        self.size = float((2 * (self.major * np.sqrt(1 - axis**2) + self.minor)).max())

    def sample(self, n, rng):
        out = np.empty((0, 3)), np.empty((0, 3))
        while len(out[0]) < n:  # area element (major + minor cos v): rejection sampling
            u, v = rng.uniform(0, 2 * np.pi, size=(2, 2 * n))
            keep = rng.uniform(0, 1, 2 * n) < (self.major + self.minor * np.cos(v)) / (self.major + self.minor)
            u, v = u[keep], v[keep]
            ring = np.stack([np.cos(u), np.zeros_like(u), np.sin(u)], axis=1)
            normal = ring * np.cos(v)[:, None] + np.array([0.0, 1.0, 0.0]) * np.sin(v)[:, None]
            p = self.major * ring + self.minor * normal
            out = np.concatenate([out[0], p @ self.rot.T]), np.concatenate([out[1], normal @ self.rot.T])
        return out[0][:n], out[1][:n]

    def sdf(self, p):
        q = p @ self.rot
        ring = np.hypot(q[:, 0], q[:, 2]) - self.major
        return np.hypot(ring, q[:, 1]) - self.minor

    def colour(self, p):
        return np.where(((p @ self.rot)[:, 0] > 0)[:, None], GREEN, ORANGE)


SHAPES = {"sphere": Sphere, "box": Box, "torus": Torus}


def _quaternion_from_normal(normal: np.ndarray, rng) -> np.ndarray:
    """Unit quaternions (w, x, y, z) turning local z to ``normal`` [N, 3], with a random spin about it."""
    n = normal / np.linalg.norm(normal, axis=1, keepdims=True)
    half = n + np.array([0.0, 0.0, 1.0])  # the half-way vector between z and n
    flip = np.linalg.norm(half, axis=1) < 1e-6
    half[flip] = [1.0, 0.0, 0.0]
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    w = half[:, 2]  # cos of half the angle between z and n: q = (z . h, z x h)
    xyz = np.cross(np.array([0.0, 0.0, 1.0]), half)
    q = np.concatenate([w[:, None], xyz], axis=1)
    spin = rng.uniform(0, np.pi, len(n))  # then a rotation about local z by 2 * spin
    s = np.stack([np.cos(spin), np.zeros_like(spin), np.zeros_like(spin), np.sin(spin)], axis=1)
    w1, x1, y1, z1 = q.T
    w2, x2, y2, z2 = s.T
    return np.stack(
        [w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
         w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2], axis=1,
    )  # fmt: skip


def surface_gaussians(shape, n: int = 24000, seed: int = 0, thickness: float = 0.003) -> torch.Tensor:
    """Flat Gaussians (surfels) on the shape's surface, coloured by its colour function.

    Tangential standard deviations are about the sample spacing (0.8-1.2 x), the normal one
    ``thickness``; opacities 0.8-1. -> [n, 14] float32
    """
    rng = np.random.default_rng(seed)
    points, normals = shape.sample(n, rng)
    spacing = math.sqrt(_area(shape) / n)
    scale = np.stack(
        [spacing * rng.uniform(0.8, 1.2, n), spacing * rng.uniform(0.8, 1.2, n), np.full(n, thickness)], axis=1
    )
    quat = _quaternion_from_normal(normals, rng)
    opacity = rng.uniform(0.8, 1.0, n)
    g = np.concatenate([points, opacity[:, None], scale, quat, shape.colour(points)], axis=1)
    return torch.tensor(g, dtype=torch.float32)


def _area(shape) -> float:
    if isinstance(shape, Sphere):
        return 4 * math.pi * shape.radius**2
    if isinstance(shape, Box):
        h = 2 * shape.half
        return 2 * (h[0] * h[1] + h[1] * h[2] + h[0] * h[2])
    return 4 * math.pi**2 * shape.major * shape.minor


def sample_mesh(vertices: np.ndarray, faces: np.ndarray, n: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area-uniform points on a triangle mesh. -> points [n, 3], face [n], barycentric [n, 3]"""
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    face = rng.choice(len(faces), size=n, p=area / area.sum())
    r1, r2 = np.sqrt(rng.uniform(size=n)), rng.uniform(size=n)
    bary = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], axis=1)
    return (tri[face] * bary[:, :, None]).sum(axis=1), face, bary


def chamfer(vertices, faces, shape, rng, n: int = 20000) -> tuple[float, float]:
    """Symmetric Chamfer distance (mean of both directions) and the 99th percentile of the
    mesh -> surface distance. Mesh -> surface is exact (|SDF|); surface -> mesh is measured to
    400,000 points sampled on the mesh (overestimates by about their spacing, ~0.001)."""
    from scipy.spatial import cKDTree

    on_mesh, _, _ = sample_mesh(vertices, faces, n, rng)
    to_surface = np.abs(shape.sdf(on_mesh))
    dense, _, _ = sample_mesh(vertices, faces, 400_000, rng)
    on_surface, _ = shape.sample(n, rng)
    to_mesh, _ = cKDTree(dense).query(on_surface, workers=-1)
    return 0.5 * (to_surface.mean() + to_mesh.mean()), float(np.quantile(to_surface, 0.99))


@pytest.fixture(scope="module", params=list(SHAPES))
def shape_mesh(request, tmp_path_factory):
    """(shape, MeshResult, path of the saved .glb) for each analytic shape."""
    shape = SHAPES[request.param]()
    gaussians = surface_gaussians(shape)
    result = M.gaussians_to_mesh(gaussians, resolution=RESOLUTION, faces=FACES, texture_size=TEXTURE)
    path = tmp_path_factory.mktemp("mesh") / f"{request.param}.glb"
    M.save_mesh(result, path)
    return shape, result, path


# ----------------------------------------------------------------------------- analytic shapes: tests


def test_mesh_is_closed_and_oriented(shape_mesh):
    shape, result, _ = shape_mesh
    mesh = trimesh.Trimesh(result.vertices, result.faces, process=False)
    assert M.is_closed_manifold(result.faces)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # normals point outwards
    assert len(mesh.split(only_watertight=False)) == 1
    expected_genus = 1 if isinstance(shape, Torus) else 0
    assert mesh.euler_number == 2 - 2 * expected_genus
    assert result.faces.shape[0] <= FACES


def test_chamfer_distance_to_the_true_surface(shape_mesh):
    shape, result, _ = shape_mesh
    mean, p99 = chamfer(result.vertices.astype(np.float64), result.faces, shape, np.random.default_rng(1))
    print(f"\n{type(shape).__name__}: Chamfer {mean:.4f} = {100 * mean / shape.size:.2f}% of {shape.size:.2f}, p99 {p99:.4f}")
    assert mean <= 0.01 * shape.size
    assert p99 <= 0.03 * shape.size  # no spikes or left-over inner walls


def test_texture_colours_match_the_known_colours(shape_mesh):
    """Points sampled on the mesh loaded back from the .glb: the texture colour at their UV
    against the known colour of the nearest point of the true surface."""
    shape, result, path = shape_mesh
    loaded = trimesh.load(str(path), force="mesh", process=False)
    texture = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"), dtype=np.float64) / 255.0
    assert texture.shape == (TEXTURE, TEXTURE, 3)
    vertices = np.asarray(loaded.vertices)
    points, face, bary = sample_mesh(vertices, np.asarray(loaded.faces), 20000, np.random.default_rng(2))
    uv = (np.asarray(loaded.visual.uv)[np.asarray(loaded.faces)[face]] * bary[:, :, None]).sum(axis=1)
    col = np.clip((uv[:, 0] * TEXTURE).astype(int), 0, TEXTURE - 1)
    row = np.clip(((1 - uv[:, 1]) * TEXTURE).astype(int), 0, TEXTURE - 1)
    found = texture[row, col]
    # the nearest surface point: step back along the SDF gradient (numerical)
    eps = 1e-4
    grad = np.stack([(shape.sdf(points + eps * e) - shape.sdf(points - eps * e)) / (2 * eps) for e in np.eye(3)], 1)
    nearest = points - shape.sdf(points)[:, None] * grad
    error = np.abs(found - shape.colour(nearest)).mean()
    print(f"\n{type(shape).__name__}: mean colour error {255 * error:.2f}/255")
    assert error <= 10 / 255


def test_glb_round_trip(shape_mesh):
    _, result, path = shape_mesh
    loaded = trimesh.load(str(path), force="mesh", process=False)
    assert len(loaded.faces) == len(result.faces)
    assert np.allclose(np.asarray(loaded.vertices), result.vertices[result.uv_vertex], atol=1e-6)
    assert np.allclose(np.asarray(loaded.visual.uv), result.uv, atol=1e-6)
    image = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"))
    assert np.array_equal(image, result.texture)
    merged = loaded.copy()
    merged.merge_vertices(merge_tex=True, merge_norm=True)  # UV seams split vertices in the file
    assert merged.is_watertight


def test_texture_is_stored_in_the_obj_too(shape_mesh, tmp_path):
    _, result, _ = shape_mesh
    written = M.save_mesh(result, tmp_path / "model.obj")
    assert [p.name for p in written] == ["model.obj", "model.mtl", "model.png"]
    assert "map_Kd model.png" in (tmp_path / "model.mtl").read_text()
    loaded = trimesh.load(str(tmp_path / "model.obj"), force="mesh", process=False)
    image = np.asarray(loaded.visual.material.image.convert("RGB"))
    assert np.array_equal(image, result.texture)
    assert len(loaded.faces) == len(result.faces)


def test_merged_seams_are_watertight_where_the_textured_file_is_not(shape_mesh, tmp_path):
    """The UV atlas splits vertices along its seams, so the textured .glb is open there for a tool
    that does not merge them; --merge-seams writes the closed surface itself, coloured per vertex."""
    shape, result, path = shape_mesh
    textured = trimesh.load(str(path), force="mesh")  # trimesh merges equal vertices, but not across UVs
    assert not textured.is_watertight
    written = M.save_mesh(result, tmp_path / "print.glb", merge_seams=True)
    assert written == [tmp_path / "print.glb"]
    merged = trimesh.load(str(tmp_path / "print.glb"), force="mesh", process=False)
    assert merged.is_watertight and merged.is_winding_consistent and merged.volume > 0
    assert len(merged.vertices) == len(result.vertices) and len(merged.faces) == len(result.faces)
    colours = np.asarray(merged.visual.vertex_colors)[:, :3] / 255.0
    error = np.abs(colours - shape.colour(np.asarray(merged.vertices))).mean()
    print(f"\n{type(shape).__name__}: mean vertex colour error {255 * error:.2f}/255")
    assert error <= 12 / 255
    written = M.save_mesh(result, tmp_path / "print.obj", merge_seams=True)  # one file: no texture
    assert written == [tmp_path / "print.obj"] and not (tmp_path / "print.png").exists()
    assert trimesh.load(str(tmp_path / "print.obj"), force="mesh", process=False).is_watertight


# ----------------------------------------------------------------------------- exact references


def test_one_gaussian_gives_its_ellipsoid():
    """A single Gaussian's surface is the ellipsoid m^2 = 2 ln(1 / threshold) of its filtered
    covariance S + (0.6 h)^2 I (the density there is threshold x its peak, the centre's density)."""
    from scipy.spatial.transform import Rotation

    quat_xyzw = Rotation.from_euler("xyz", [30, -50, 70], degrees=True).as_quat()
    scale = np.array([0.1, 0.08, 0.065])  # mildly anisotropic: a wrong rotation shows as +-20% in m
    g = torch.tensor([[0.1, -0.05, 0.2, 0.8, *scale, quat_xyzw[3], *quat_xyzw[:3], 0.3, 0.6, 0.9]], dtype=torch.float32)
    result = M.gaussians_to_mesh(g, resolution=96, faces=4000, texture_size=128, threshold=0.35)
    h = result.info["voxel"]
    rot = Rotation.from_quat(quat_xyzw).as_matrix()  # scipy: an independent quaternion convention check
    cov = rot @ np.diag(scale**2) @ rot.T + (M.FILTER_VOXELS * h) ** 2 * np.eye(3)
    d = result.vertices.astype(np.float64) - g[0, :3].numpy()
    m = np.sqrt(np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d))
    expected = math.sqrt(2 * math.log(1 / 0.35))
    assert abs(np.median(m) / expected - 1) < 0.01
    assert np.abs(m / expected - 1).max() < 0.04
    assert np.allclose(result.texture.reshape(-1, 3).mean(0), [0.3 * 255, 0.6 * 255, 0.9 * 255], atol=1.0)
    assert M.is_closed_manifold(result.faces)


def _brute_force_density(g: torch.Tensor, points: np.ndarray, voxel: float) -> np.ndarray:
    """Sum over every Gaussian at every point, float64, no cutoff, covariances from scipy."""
    from scipy.spatial.transform import Rotation

    g = g.double().numpy()
    quat = g[:, 7:11] / np.linalg.norm(g[:, 7:11], axis=1, keepdims=True)
    rot = Rotation.from_quat(quat[:, [1, 2, 3, 0]]).as_matrix()  # [N, 3, 3]
    filt = (M.FILTER_VOXELS * voxel) ** 2
    cov = rot @ (g[:, 4:7, None] ** 2 * np.eye(3)) @ rot.transpose(0, 2, 1) + filt * np.eye(3)
    peak = g[:, 3] * np.sqrt(np.prod(g[:, 4:7] ** 2, axis=1) / np.linalg.det(cov))
    prec = np.linalg.inv(cov)
    out = np.zeros(len(points))
    for i in range(len(g)):
        d = points - g[i, :3]
        out += peak[i] * np.exp(-0.5 * np.einsum("ni,ij,nj->n", d, prec[i], d))
    return out


def test_density_grid_matches_brute_force():
    """Small Gaussians (evaluated on the grid itself) are exact but for their 3-sigma boxes; wide
    ones go through coarser grids and trilinear upsampling; some are centred off the grid."""
    rng = np.random.default_rng(0)
    n = 60
    xyz = rng.uniform(-0.45, 0.45, size=(n, 3))
    xyz[:4] = [[0.6, 0.0, 0.0], [-0.55, 0.3, 0.1], [0.0, 0.62, -0.2], [0.1, 0.1, 0.7]]  # off the grid
    scale = rng.uniform(0.01, 0.04, size=(n, 3))
    scale[4:10] = rng.uniform(0.1, 0.25, size=(6, 3))  # wider than MAX_RADIUS voxels
    quat = rng.normal(size=(n, 4))
    g = np.concatenate([xyz, rng.uniform(0.3, 1.0, (n, 1)), scale, quat, rng.uniform(0, 1, (n, 3))], axis=1)
    g = torch.tensor(g, dtype=torch.float32)
    voxel, dims = 0.025, (37, 33, 35)
    origin = np.array([-0.45, -0.4, -0.42])
    idx = np.stack(np.meshgrid(*[np.arange(d) for d in dims], indexing="ij"), axis=-1).reshape(-1, 3)
    points = origin + voxel * idx
    small = torch.ones(n, dtype=torch.bool)
    small[4:10] = False
    for subset, max_error, mean_error in ((small, 0.001, 1e-5), (torch.ones(n, dtype=torch.bool), 0.04, 0.002)):
        grid = M.density_grid(M._kernels(g[subset], voxel), origin, voxel, dims).numpy()
        assert grid.shape == dims
        reference = _brute_force_density(g[subset], points, voxel).reshape(dims)
        error = np.abs(grid - reference) / reference.max()
        assert error.max() <= max_error and error.mean() <= mean_error, (error.max(), error.mean())


def test_rasterize_triangles_matches_brute_force():
    rng = np.random.default_rng(3)
    width, height, n = 37, 29, 40
    tri = rng.uniform(-5, [width + 5, height + 5], size=(n, 3, 2))
    tri[:8] = rng.uniform(0, [width, height], size=(8, 1, 2)) + rng.uniform(-1.5, 1.5, size=(8, 3, 2))  # tiny ones
    depth = rng.uniform(0, 1, size=(n, 3))
    face, bary = M.rasterize_triangles(tri, width, height, depth=depth)
    ys, xs = np.mgrid[0:height, 0:width]
    centre = np.stack([xs + 0.5, ys + 0.5], axis=-1).reshape(-1, 2)  # [P, 2]
    best = np.full(len(centre), np.inf)
    expected = np.full(len(centre), -1)
    for f in range(n):  # barycentrics by solving the 2x2 system per triangle
        a, b, c = tri[f]
        mat = np.stack([b - a, c - a], axis=1)
        if abs(np.linalg.det(mat)) < 1e-9:
            continue
        uv = np.linalg.solve(mat, (centre - a).T).T  # [P, 2]
        w = np.stack([1 - uv.sum(1), uv[:, 0], uv[:, 1]], axis=1)
        inside = (w >= -1e-9).all(axis=1)
        z = w @ depth[f]
        better = inside & (z < best)
        best[better], expected[better] = z[better], f
    assert np.array_equal(face.reshape(-1), expected)
    covered = expected >= 0
    assert covered.sum() > 100
    got_w = bary.reshape(-1, 3)[covered]
    assert np.allclose(got_w.sum(1), 1, atol=1e-5)
    points = (tri[expected[covered]] * got_w[:, :, None]).sum(1)
    assert np.allclose(points, centre[covered], atol=1e-4)


def test_repair_makes_a_closed_manifold():
    """A closed box plus the faults decimation leaves: a back-to-back face pair (a fin) and a
    second box sharing one edge with the first (four faces on that edge)."""
    box = trimesh.creation.box(extents=(1, 1, 1))
    other = trimesh.creation.box(extents=(1, 1, 1))
    other.apply_translation([1, 1, 0])  # touches the first along the edge x = y = 0.5
    merged = trimesh.util.concatenate([box, other])
    merged.merge_vertices()
    verts, faces = np.asarray(merged.vertices, dtype=np.float64), np.asarray(merged.faces)
    fin = np.array([[0, 1, 2], [2, 1, 0]]) + 0
    faces = np.concatenate([faces, fin])
    assert not M.is_closed_manifold(faces)
    fixed_v, fixed_f = M._repair(verts, faces)
    assert M.is_closed_manifold(fixed_f)
    mesh = trimesh.Trimesh(fixed_v, fixed_f, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    # both boxes kept; the faces around the shared edge were replaced by fans over the holes
    assert 1.6 < mesh.volume <= 2.0 + 1e-9


def test_floaters_are_dropped():
    sphere = Sphere()
    gaussians = surface_gaussians(sphere, n=12000)
    rng = np.random.default_rng(4)
    blob = torch.tensor(np.concatenate([
        np.array([0.75, 0.7, 0.0]) + 0.01 * rng.normal(size=(30, 3)), np.full((30, 1), 0.9), np.full((30, 3), 0.01),
        np.tile([1.0, 0, 0, 0], (30, 1)), np.tile([0.1, 0.9, 0.1], (30, 1)),
    ], axis=1), dtype=torch.float32)  # fmt: skip
    result = M.gaussians_to_mesh(torch.cat([gaussians, blob]), resolution=96, faces=3000, texture_size=128)
    assert result.info["dropped_components"] >= 1
    assert np.abs(sphere.sdf(result.vertices.astype(np.float64))).max() < 0.05
    kept = M.gaussians_to_mesh(torch.cat([gaussians, blob]), resolution=96, faces=3000, texture_size=128, min_component=0)
    assert np.linalg.norm(kept.vertices - [0.75, 0.7, 0.0], axis=1).min() < 0.05  # the blob is a surface


# ----------------------------------------------------------------------------- synthetic objects


@pytest.mark.parametrize("object_seed", [0, 1, 2])
def test_silhouette_matches_the_gaussian_render(object_seed):
    """LGM-like Gaussians of synthetic objects (scripts/bench_mesh.py, no floaters): the mesh seen
    from each input camera covers what the Gaussian renderer draws (alpha > 0.5), IoU >= 0.9."""
    from core.gs import GaussianRenderer
    from core.options import Options, replace

    bench = _load_script("bench_mesh")
    gaussians, _ = bench.lgm_like_gaussians(object_seed, splat_size=64, floaters=0)
    result = M.gaussians_to_mesh(gaussians, resolution=128, faces=FACES, texture_size=256)
    opt = replace(Options(), output_size=256, renderer="torch")
    poses = default_input_poses(0.0, opt.cam_radius)  # [4, 4, 4]
    cam_view, cam_view_proj, cam_pos = renderer_cameras(poses, projection_matrix(opt.fovy, opt.znear, opt.zfar))
    with torch.no_grad():
        alpha = GaussianRenderer(opt).render(gaussians[None], cam_view[None], cam_view_proj[None], cam_pos[None])["alpha"]
    for view in range(4):
        _, mesh_alpha = M.render_mesh(result, cam_view_proj[view], opt.output_size)
        ours, theirs = mesh_alpha > 0.5, alpha[0, view, 0].numpy() > 0.5
        iou = (ours & theirs).sum() / (ours | theirs).sum()
        print(f"\nobject {object_seed} view {view}: IoU {iou:.3f}")
        assert iou >= 0.9


# ----------------------------------------------------------------------------- bad input


def _sphere_gaussians(n: int = 3000) -> torch.Tensor:
    return surface_gaussians(Sphere(), n=n)


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: torch.zeros(0, 14), "no Gaussians"),
        (lambda: torch.zeros(5, 13), r"shape \[N, 14\]"),
        (lambda: _sphere_gaussians().numpy(), "torch.Tensor"),
        (lambda: _sphere_gaussians().index_fill(1, torch.tensor([0]), float("nan")), "NaN"),
        (lambda: _sphere_gaussians().index_fill(1, torch.tensor([3]), 0.001), "transparent"),
    ],
)
def test_unusable_gaussians_are_refused(make, words):
    with pytest.raises(M.MeshError, match=words):
        M.gaussians_to_mesh(make(), resolution=64, faces=1000, texture_size=64)


def test_no_surface_above_the_threshold():
    with pytest.raises(M.MeshError, match="no surface above the threshold") as info:
        M.gaussians_to_mesh(_sphere_gaussians(), resolution=64, faces=1000, texture_size=64, threshold=50.0)
    assert "Use a threshold below" in str(info.value)


@pytest.mark.parametrize(
    "kwargs", [dict(resolution=8), dict(threshold=0.0), dict(faces=10), dict(texture_size=10), dict(min_component=2)]
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(M.MeshError):
        M.gaussians_to_mesh(_sphere_gaussians(), **kwargs)


def test_save_mesh_refuses_unknown_formats(tmp_path):
    result = M.gaussians_to_mesh(_sphere_gaussians(), resolution=48, faces=500, texture_size=64)
    with pytest.raises(M.MeshError, match=".glb"):
        M.save_mesh(result, tmp_path / "model.stl")


# ----------------------------------------------------------------------------- the command line


def _convert(argv: list[str], capsys) -> tuple[int, str, str]:
    """scripts/convert_mesh.py's main() in this process (fast); -> (exit code, stdout, stderr)."""
    convert = _load_script("convert_mesh")
    old = sys.argv
    sys.argv = ["convert_mesh.py", *map(str, argv)]
    try:
        code = convert.main()
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def sphere_ply(tmp_path_factory) -> Path:
    from core.gs import save_ply

    path = tmp_path_factory.mktemp("ply") / "sphere.ply"
    save_ply(_sphere_gaussians(6000), path)
    return path


def _bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    from core.gs import save_ply

    empty = folder / "empty.ply"
    save_ply(torch.zeros(0, 14), empty)
    mesh_ply = folder / "mesh.ply"
    trimesh.creation.box().export(str(mesh_ply))  # a PLY that holds a mesh, not Gaussians
    garbage = folder / "garbage.ply"
    garbage.write_bytes(b"ply\nformat binary_little_endian 1.0\nthis is not a header")
    return {
        "empty": (empty, "no Gaussians"),
        "mesh": (mesh_ply, "not a 3D Gaussian splatting PLY"),
        "garbage": (garbage, "cannot read it as a PLY file"),
        "missing": (folder / "missing.ply", "no such file"),
    }


@pytest.mark.parametrize("case", ["empty", "mesh", "garbage", "missing"])
def test_cli_bad_input_exits_2_with_one_screen(case, tmp_path, capsys):
    path, words = _bad_inputs(tmp_path)[case]
    code, out, err = _convert([path, "--output", tmp_path / "out.glb"], capsys)
    assert code == 2
    assert words in err and str(path.name) in err
    assert "Traceback" not in err and len(err.splitlines()) < 25
    assert not (tmp_path / "out.glb").exists()


def test_cli_no_surface_and_bad_suffix_exit_2(sphere_ply, tmp_path, capsys):
    code, _, err = _convert([sphere_ply, "--output", tmp_path / "a.glb", "--threshold", "100"], capsys)
    assert code == 2 and "no surface above the threshold" in err
    code, _, err = _convert([sphere_ply, "--output", tmp_path / "a.fbx"], capsys)
    assert code == 2 and ".glb or .obj" in err


def test_cli_writes_obj_mtl_png(sphere_ply, tmp_path, capsys):
    info = tmp_path / "info.json"
    args = [sphere_ply, "--output", tmp_path / "out" / "sphere.obj", "--resolution", "96", "--faces", "3000"]
    code, out, err = _convert([*args, "--texture-size", "256", "--info-json", info], capsys)
    assert code == 0, err
    assert "wrote" in out and "sphere.obj" in out and "(+ sphere.mtl, sphere.png)" in out
    for name in ("sphere.obj", "sphere.mtl", "sphere.png"):
        assert (tmp_path / "out" / name).is_file()
    loaded = trimesh.load(str(tmp_path / "out" / "sphere.obj"), force="mesh", process=False)
    assert loaded.visual.material.image.size == (256, 256)
    import json

    stats = json.loads(info.read_text())
    assert stats["faces"] == len(loaded.faces) <= 3000 and stats["gaussians"] == 6000


def test_cli_process_default_output_name(sphere_ply, tmp_path):
    """The real command line (a child process): default output <input>.glb, exit code 0."""
    import shutil

    source = tmp_path / "model.ply"
    shutil.copy(sphere_ply, source)
    run = subprocess.run(
        [sys.executable, str(CONVERT), str(source), "--resolution", "64", "--faces", "1000", "--texture-size", "64"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "model.glb").is_file() and "model.glb" in run.stdout


def test_cli_merge_seams_writes_a_watertight_mesh(sphere_ply, tmp_path, capsys):
    args = [sphere_ply, "--resolution", "64", "--faces", "1000", "--texture-size", "64"]
    code, out, err = _convert([*args, "--output", tmp_path / "print.glb", "--merge-seams"], capsys)
    assert code == 0, err
    assert "seams merged (watertight)" in out
    assert trimesh.load(str(tmp_path / "print.glb"), force="mesh").is_watertight


@pytest.fixture
def no_mesh_work(monkeypatch):
    """The mesh must not be computed: the output is checked first."""
    _load_script("convert_mesh")

    def refuse(*a, **k):
        raise AssertionError("the mesh was computed before the output was checked")

    monkeypatch.setattr(M, "gaussians_to_mesh", refuse)


def test_cli_output_under_a_file_exits_2_before_any_work(sphere_ply, tmp_path, capsys, no_mesh_work):
    """An output path under a file fails for every user, root included."""
    (tmp_path / "a_file").write_text("")
    for flag, target in (("--output", tmp_path / "a_file" / "mesh.glb"), ("--info-json", tmp_path / "a_file" / "info.json")):
        extra = [] if flag == "--output" else ["--output", tmp_path / "ok" / "mesh.glb"]
        code, _, err = _convert([sphere_ply, flag, target, *extra], capsys)
        assert code == 2, err
        assert flag in err and str(target) in err and "is a file" in err
        assert "Traceback" not in err and len(err.splitlines()) < 10


def test_cli_unwritable_folder_exits_2_before_any_work(sphere_ply, tmp_path, capsys, no_mesh_work):
    import os
    import stat

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)  # 0o500
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user (root?) may write into a 0o500 folder")
        code, _, err = _convert([sphere_ply, "--output", locked / "mesh.glb"], capsys)
    finally:
        locked.chmod(stat.S_IRWXU)
    assert code == 2, err
    assert "--output" in err and str(locked / "mesh.glb") in err and "permission denied" in err
    assert not (locked / "mesh.glb").exists()


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
def test_cuda_matches_cpu():
    """The density grid and the texture colours run on the Gaussians' device: same mesh on CUDA."""
    shape = Sphere()
    gaussians = surface_gaussians(shape, n=12000)
    voxel, dims, origin = 0.01, (100, 100, 100), np.full(3, -0.5)
    cpu = M.density_grid(M._kernels(gaussians, voxel), origin, voxel, dims)
    gpu = M.density_grid(M._kernels(gaussians.cuda(), voxel), origin, voxel, dims)
    assert gpu.is_cuda
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4 * float(cpu.max()))
    a = M.gaussians_to_mesh(gaussians, resolution=96, faces=3000, texture_size=256)
    b = M.gaussians_to_mesh(gaussians.cuda(), resolution=96, faces=3000, texture_size=256)
    assert M.is_closed_manifold(b.faces)
    assert abs(len(a.faces) - len(b.faces)) <= 0.02 * len(a.faces)
    mean, _ = chamfer(b.vertices.astype(np.float64), b.faces, shape, np.random.default_rng(0))
    assert mean <= 0.01 * shape.size
    assert np.abs(a.texture.astype(float).mean((0, 1)) - b.texture.astype(float).mean((0, 1))).max() < 2.0
