"""The embedded synthetic dataset: procedurally generated objects, ray-cast analytically.

Needs no files. An object is a union of 1-4 primitives (spheres, boxes with sharp or rounded
edges, capped cylinders, tori) with random sizes, positions, orientations, colours and simple
patterns (solid, stripes, checker, two-tone by height), all inside a ball of radius 0.6 so that
every orbit camera at ``cam_radius`` 1.5 sees the whole object. Views are rendered by exact
ray-primitive intersection (closed form for spheres, boxes and cylinders; sphere tracing of the
exact signed distance for rounded boxes and tori), shaded with a fixed world-space light
(Lambertian key + fill + ambient), with 2x2 supersampling along the silhouette (soft alpha).
Objects and cameras are deterministic per (seed, split, index); the eval split is held out.

Nothing here uses the Gaussian renderer: these images are ground truth for it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np
import roma
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from core.cameras import get_rays, orbit_camera
from core.datasets.common import RawObject, make_item, sample_generator
from core.options import Options

KINDS = ("sphere", "box", "cylinder", "torus")
PATTERNS = ("solid", "stripes", "checker", "two_tone")

# Fixed world-space lighting (y up): a key light from the upper front right, a weak fill from the
# lower back left, and ambient. Fixed in the world, so every view of an object agrees.
KEY_LIGHT = (0.45, 0.8, 0.55)
KEY_WEIGHT = 0.6
FILL_LIGHT = (-0.5, -0.35, -0.6)
FILL_WEIGHT = 0.2
AMBIENT = 0.3

OBJECT_BOUND = 0.6
"""Radius of the ball holding every object. From a camera at distance 1.5 it spans a half-angle of
asin(0.6 / 1.5) = 23.6 degrees, inside the 24.55-degree half field of view of fovy 49.1."""


def _vec(x, n: int = 3) -> Tensor:
    t = torch.as_tensor(x, dtype=torch.float32).clone()
    if t.shape != (n,):
        raise ValueError(f"expected {n} numbers, got shape {tuple(t.shape)}")
    return t


@dataclass
class Primitive:
    """One solid. Shapes live in a local frame (``x_world = rotation @ x_local + center``).

    size per kind: sphere ``(radius, -, -)``; box ``(half x, half y, half z)``; cylinder
    ``(radius, half height, -)`` along local y; torus ``(major radius, minor radius, -)`` around
    local y. Sequences are converted to float32 tensors.
    """

    kind: str
    center: Tensor = (0.0, 0.0, 0.0)  # [3] world position
    size: Tensor = (0.3, 0.3, 0.3)  # [3] see above
    rotation: Optional[Tensor] = None  # [3, 3] local -> world (identity when None)
    rounding: float = 0.0  # box only: radius of the rounded edges (< the smallest half extent)
    color: Tensor = (0.8, 0.3, 0.2)  # [3] RGB in [0, 1]
    color2: Tensor = (0.2, 0.3, 0.8)  # [3] second colour of the patterns
    pattern: str = "solid"  # one of PATTERNS
    frequency: float = 6.0  # stripes / checker: bands per unit length (local frame)
    stripe_axis: Tensor = (0.0, 1.0, 0.0)  # [3] stripes: local direction across the bands
    split_height: float = 0.0  # two_tone: world y above which ``color`` is used, below ``color2``

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown primitive kind {self.kind!r}; expected one of {KINDS}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown pattern {self.pattern!r}; expected one of {PATTERNS}")
        self.center, self.size = _vec(self.center), _vec(self.size)
        self.color, self.color2 = _vec(self.color), _vec(self.color2)
        self.stripe_axis = F.normalize(_vec(self.stripe_axis), dim=0)
        self.rotation = torch.eye(3) if self.rotation is None else torch.as_tensor(self.rotation, dtype=torch.float32)
        smallest = float(self.size.min())
        if self.kind == "box" and not 0.0 <= self.rounding < smallest:
            raise ValueError(f"box rounding {self.rounding} must be in [0, the smallest half extent {smallest})")

    def bounding_radius(self) -> float:
        """Radius of a ball around ``center`` that holds the primitive."""
        s = self.size
        if self.kind == "sphere":
            return float(s[0])
        if self.kind == "box":
            return float(s.norm())
        if self.kind == "cylinder":
            return float(s[:2].norm())
        return float(s[0] + s[1])  # torus


@dataclass
class ObjectSpec:
    """An object: the union of its primitives."""

    primitives: list[Primitive] = field(default_factory=list)


# ---------------------------------------------------------------------------------- sampling


def _uniform(g: torch.Generator, lo: float, hi: float, n: Optional[int] = None):
    u = torch.rand(() if n is None else (n,), generator=g)
    v = lo + (hi - lo) * u
    return float(v) if n is None else v


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi)."""
    return int(torch.randint(lo, hi, (1,), generator=g).item())


def _hsv_to_rgb(h: float, s: float, v: float) -> Tensor:
    k = (torch.tensor([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def _random_color(g: torch.Generator, hue: Optional[float] = None) -> Tensor:
    """A saturated, not too bright colour (never close to the white background)."""
    h = _uniform(g, 0.0, 1.0) if hue is None else hue % 1.0
    return _hsv_to_rgb(h, _uniform(g, 0.4, 0.9), _uniform(g, 0.5, 0.95))


def sample_object(generator: torch.Generator, bound: float = OBJECT_BOUND) -> ObjectSpec:
    """A random union of 1-4 primitives inside the ball of radius ``bound``, drawn only from ``generator``."""
    g = generator
    prims = []
    for _ in range(_randint(g, 1, 5)):
        kind = KINDS[_randint(g, 0, len(KINDS))]
        rounding = 0.0
        if kind == "sphere":
            size = (_uniform(g, 0.15, 0.38), 0.0, 0.0)
        elif kind == "box":
            size = _uniform(g, 0.1, 0.32, 3)
            if _uniform(g, 0.0, 1.0) < 0.5:
                rounding = _uniform(g, 0.2, 0.6) * float(size.min())
        elif kind == "cylinder":
            size = (_uniform(g, 0.08, 0.28), _uniform(g, 0.1, 0.38), 0.0)
        else:
            major = _uniform(g, 0.16, 0.34)
            size = (major, _uniform(g, 0.04, min(0.12, 0.5 * major)), 0.0)
        quat = F.normalize(torch.randn(4, generator=g), dim=0)  # uniform random rotation (x, y, z, w)
        prim = Primitive(kind, size=size, rotation=roma.unitquat_to_rotmat(quat), rounding=rounding)
        # Shrink oversized primitives to fit the ball, then place the centre so that it stays inside.
        radius = prim.bounding_radius()
        if radius > bound:
            prim.size = prim.size * (bound / radius)
            prim.rounding *= bound / radius
            radius = bound
        max_offset = max(0.0, min(bound - radius, 0.3))
        direction = F.normalize(torch.randn(3, generator=g), dim=0)
        prim.center = direction * (max_offset * _uniform(g, 0.0, 1.0) ** (1.0 / 3.0))
        prim.color = _random_color(g)
        prim.color2 = _random_color(g, hue=_uniform(g, 0.0, 1.0))
        prim.pattern = PATTERNS[_randint(g, 0, len(PATTERNS))]
        prim.frequency = _uniform(g, 5.0, 12.0)
        prim.stripe_axis = F.normalize(torch.randn(3, generator=g), dim=0)
        prim.split_height = float(prim.center[1]) + _uniform(g, -0.5, 0.5) * radius
        prims.append(prim)
    return ObjectSpec(prims)


def sample_cameras(generator: torch.Generator, num_views: int, radius: float, train: bool = True) -> Tensor:
    """Orbit cameras: 4 input views at azimuths az0 + 0/90/180/270 and elevation elev0 (training:
    az0 uniform, elev0 in [-20, 20]; eval: both 0), then ``num_views - 4`` supervision views at
    random orbit positions (elevation in [-30, 30], any azimuth). -> c2w [num_views, 4, 4] OpenGL
    """
    g = generator
    elev0, az0 = (_uniform(g, -20.0, 20.0), _uniform(g, 0.0, 360.0)) if train else (0.0, 0.0)
    elev = torch.cat([torch.full((4,), elev0), _uniform(g, -30.0, 30.0, num_views - 4)])  # [V]
    azim = torch.cat([az0 + torch.tensor([0.0, 90.0, 180.0, 270.0]), _uniform(g, 0.0, 360.0, num_views - 4)])  # [V]
    return orbit_camera(elev, azim, radius)


# ---------------------------------------------------------------------------------- ray casting
# Inside this section vectors are stored as [3, M] (one row per coordinate): elementwise ops then
# run along long contiguous rows, several times faster on a CPU than on [M, 3] tensors.


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread (restored after). An item is built from many small
    ops, for which a second thread costs more than it gains, and far more on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """[3, M], [3, M] -> [M]"""
    return torch.addcmul(torch.addcmul(a[0] * b[0], a[1], b[1]), a[2], b[2])


def _normalize(a: Tensor) -> Tensor:
    """[3, M] -> [3, M] unit columns"""
    return a / _dot(a, a).sqrt().clamp_min(1e-12)


def _rows(x: Tensor) -> Tensor:
    """[..., 3] -> [3, M] contiguous (much faster than ``.T.contiguous()``)."""
    return torch.stack(x.reshape(-1, 3).float().unbind(1))


def _safe_div(num: Tensor, den: Tensor, eps: float = 1e-9) -> Tensor:
    return num / torch.where(den.abs() < eps, torch.full_like(den, eps), den)


def _sdf_round_box(p: Tensor, half: Tensor, rounding: float) -> Tensor:
    """Exact signed distance to a box with rounded edges. p: [3, M] local -> [M]"""
    q = p.abs() - (half - rounding)[:, None]  # [3, M]
    out = q.clamp_min(0.0)
    return _dot(out, out).sqrt() + q.amax(0).clamp_max(0.0) - rounding


def _sdf_torus(p: Tensor, major: float, minor: float) -> Tensor:
    """Exact signed distance to a torus around the local y axis. p: [3, M] local -> [M]"""
    ring = torch.hypot(p[0], p[2]) - major  # [M] distance from the tube's centre circle, in the xz plane
    return torch.hypot(ring, p[1]) - minor


def _sphere_trace(
    sdf: Callable[[Tensor], Tensor], o: Tensor, d: Tensor, t: Tensor, t_end: Tensor, tol: float, iters: int = 32
) -> Tensor:
    """March ``t`` along rays o + t d by the exact distance ``sdf`` from ``t`` to ``t_end``.

    o, d: [3, M]; t, t_end: [M] -> t of the first hit [M] (inf for a miss). A ray hits when it
    comes within ``max(1e-4, tol * t)`` of the surface (``tol``: an angle, a fraction of a pixel).
    Steps never overshoot the surface because ``sdf`` is exact; only the rays still marching are
    evaluated. Rays still marching after ``iters`` steps graze the surface: they count as hits
    when within ``4 * tol * t`` of it.
    """
    t_last = torch.full_like(t, math.inf)  # [M] latest t of each ray
    is_hit = torch.zeros_like(t, dtype=torch.bool)  # [M]
    idx = (t <= t_end).nonzero()[:, 0]  # [A] rays still marching
    state = torch.cat([o, d, t[None], t_end[None]]).index_select(1, idx)  # [8, A]: o, d, t, t_end
    dist = torch.full((idx.numel(),), math.inf)
    for _ in range(iters):
        if idx.numel() == 0:
            break
        t = state[6]  # a view: ``t += dist`` below advances the rays in ``state``
        dist = sdf(torch.addcmul(state[0:3], state[3:6], state[6:7]))  # [A]
        hit = dist < (t * tol).clamp_min(1e-4)
        t_last.index_copy_(0, idx, t)
        is_hit.index_copy_(0, idx, hit)
        t += dist
        keep = (~hit & (t <= state[7])).nonzero()[:, 0]
        idx, state, dist = idx.index_select(0, keep), state.index_select(1, keep), dist.index_select(0, keep)
    is_hit.index_copy_(0, idx, dist < 4.0 * tol * state[6])  # the grazing rays left after ``iters`` steps
    t_last.index_copy_(0, idx, state[6])
    return torch.where(is_hit, t_last, math.inf)


# Intersections in the primitive's local frame. o, d: [3, M] (d unit); (t_in, t_out): [M], where
# the rays cross the primitive's bounding ball (computed by ``_cast``, all rays do cross it);
# tol: see ``_sphere_trace``. Each returns t [M] of the first hit, inf where a ray misses.


def _hit_sphere(prim: Primitive, o: Tensor, d: Tensor, t_in: Tensor, t_out: Tensor, tol: float) -> Tensor:
    return torch.where(t_in > 0, t_in, math.inf)  # the bounding ball is the sphere itself


def _hit_box(prim: Primitive, o: Tensor, d: Tensor, t_in: Tensor, t_out: Tensor, tol: float) -> Tensor:
    # slabs |x_i| <= half_i: the ray is inside slab i for t in (-o_i -+ half_i) / d_i
    inv = 1.0 / torch.where(d.abs() < 1e-9, 1e-9, d)  # [3, M]
    middle, spread = -o * inv, prim.size[:, None] * inv.abs()
    t_in = (middle - spread).amax(0)  # [M]
    t_out = (middle + spread).amin(0)
    hit = (t_in <= t_out) & (t_in > 0)
    if prim.rounding <= 0:
        return torch.where(hit, t_in, math.inf)
    # The sharp box is the rounded box's bounding box: march from its entry to its exit.
    t_in = torch.where(hit, t_in, t_out + 1.0)
    return _sphere_trace(lambda p: _sdf_round_box(p, prim.size, prim.rounding), o, d, t_in, t_out, tol)


def _hit_cylinder(prim: Primitive, o: Tensor, d: Tensor, t_in: Tensor, t_out: Tensor, tol: float) -> Tensor:
    radius, half_h = float(prim.size[0]), float(prim.size[1])
    # side: (ox + t dx)^2 + (oz + t dz)^2 = r^2 with |oy + t dy| <= h
    a = d[0] ** 2 + d[2] ** 2
    b = o[0] * d[0] + o[2] * d[2]
    c = o[0] ** 2 + o[2] ** 2 - radius**2
    disc = b * b - a * c
    t_side = _safe_div(-b - disc.clamp_min(0.0).sqrt(), a)
    side_ok = (disc >= 0) & (a > 1e-12) & (t_side > 0) & ((o[1] + t_side * d[1]).abs() <= half_h)
    # the cap facing the ray: y = +h for rays going down, y = -h for rays going up
    t_cap = _safe_div(-torch.sign(d[1]) * half_h - o[1], d[1])
    cap_ok = (t_cap > 0) & ((o[0] + t_cap * d[0]) ** 2 + (o[2] + t_cap * d[2]) ** 2 <= radius**2)
    return torch.minimum(torch.where(side_ok, t_side, math.inf), torch.where(cap_ok, t_cap, math.inf))


def _hit_torus(prim: Primitive, o: Tensor, d: Tensor, t_in: Tensor, t_out: Tensor, tol: float) -> Tensor:
    major, minor = float(prim.size[0]), float(prim.size[1])
    # the bounding ball has radius major + minor; also clip to the slab |y| <= minor that holds the tube
    ty1, ty2 = _safe_div(-minor - o[1], d[1]), _safe_div(minor - o[1], d[1])
    t_in = torch.maximum(t_in, torch.minimum(ty1, ty2)).clamp_min(0.0)
    t_out = torch.minimum(t_out, torch.maximum(ty1, ty2))
    return _sphere_trace(lambda p: _sdf_torus(p, major, minor), o, d, t_in, t_out, tol)


_HIT = {"sphere": _hit_sphere, "box": _hit_box, "cylinder": _hit_cylinder, "torus": _hit_torus}


def cast_rays(spec: ObjectSpec, rays_o: Tensor, rays_d: Tensor, tol: float = 0.0) -> tuple[Tensor, Tensor]:
    """First hit of each ray with the union of the primitives.

    rays_o, rays_d: [N, 3] world (d unit) -> t [N] (distance along the ray, inf on a miss) and the
    index of the primitive hit [N] (long, -1 on a miss). Spheres, sharp boxes and cylinders are
    intersected in closed form; rounded boxes and tori are sphere-traced, a ray counting as a hit
    within ``max(1e-4, tol * t)`` of their surface (``tol`` ~ a fraction of a pixel's angle).
    """
    return _cast(spec, _rows(rays_o), _rows(rays_d), tol)


def _cast(spec: ObjectSpec, o: Tensor, d: Tensor, tol: float) -> tuple[Tensor, Tensor]:
    """:func:`cast_rays` on [3, N] rays; each primitive only sees the rays that cross its bounding ball."""
    n = o.shape[1]
    t_best = torch.full((n,), math.inf)
    prim_id = torch.full((n,), -1, dtype=torch.long)
    o_dot_d, o_dot_o = _dot(o, d), _dot(o, o)  # [N] each, shared by the bounding-ball tests
    for k, prim in enumerate(spec.primitives):
        # bounding ball: |o - c + t d|^2 = r^2, expanded so that each primitive costs two mat-vecs
        c, radius = prim.center, prim.bounding_radius()
        b = o_dot_d - c @ d  # [N] (o - c) . d
        disc = b * b - (o_dot_o - 2.0 * (c @ o) + float(c @ c) - radius * radius)
        root = disc.clamp_min(0.0).sqrt()
        t_in, t_out = -b - root, root - b
        idx = ((disc > 0) & (t_out > 0) & (t_in < t_best)).nonzero()[:, 0]  # [M] rays that may hit it first
        if idx.numel() == 0:
            continue
        to_local = prim.rotation.T  # world -> local
        o_local = to_local @ (o.index_select(1, idx) - c[:, None])  # [3, M]
        d_local = to_local @ d.index_select(1, idx)
        t = _HIT[prim.kind](prim, o_local, d_local, t_in.index_select(0, idx), t_out.index_select(0, idx), tol)  # [M]
        closer = t < t_best.index_select(0, idx)
        idx = idx[closer]
        t_best.index_copy_(0, idx, t[closer])
        prim_id.index_fill_(0, idx, k)
    return t_best, prim_id


def _normal_local(prim: Primitive, p: Tensor) -> Tensor:
    """Outward unit normal at surface points p: [3, M] local -> [3, M] local."""
    if prim.kind == "sphere":
        return _normalize(p)
    if prim.kind == "box":
        q = p.abs() - (prim.size - prim.rounding)[:, None]  # [3, M]
        face = (q == q.amax(0)).float() * torch.sign(p)  # flat faces: the axis of the largest q
        if prim.rounding <= 0:
            return face
        corner = torch.sign(p) * q.clamp_min(0.0)  # rounded edges and corners
        on_round = _dot(corner, corner) > 1e-12
        return torch.where(on_round[None], _normalize(corner), face)
    zero = torch.zeros_like(p[0])
    if prim.kind == "cylinder":
        radial = torch.hypot(p[0], p[2]) - prim.size[0]
        axial = p[1].abs() - prim.size[1]
        cap = torch.stack([zero, torch.sign(p[1]), zero])
        side = _normalize(torch.stack([p[0], zero, p[2]]))
        return torch.where((axial > radial)[None], cap, side)
    # torus: away from the nearest point of the tube's centre circle
    ring = _normalize(torch.stack([p[0], zero, p[2]])) * prim.size[0]
    return _normalize(p - ring)


def _albedo(prim: Primitive, p_local: Tensor, p_world: Tensor) -> Tensor:
    """Pattern colour at surface points. p_local, p_world: [3, M] -> [3, M]"""
    if prim.pattern == "solid":
        first = torch.ones(p_local.shape[1], dtype=torch.bool)
    elif prim.pattern == "stripes":
        first = torch.floor(prim.frequency * (prim.stripe_axis @ p_local)).remainder(2) < 0.5
    elif prim.pattern == "checker":
        first = torch.floor(prim.frequency * p_local).sum(0).remainder(2) < 0.5
    else:  # two_tone
        first = p_world[1] > prim.split_height
    return torch.where(first[None], prim.color[:, None], prim.color2[:, None])


def shade(spec: ObjectSpec, rays_o: Tensor, rays_d: Tensor, t: Tensor, prim_id: Tensor) -> Tensor:
    """Lambertian colour of the hits of :func:`cast_rays`; white where a ray missed.

    rays_o, rays_d: [N, 3]; t, prim_id: [N] -> rgb [N, 3] in [0, 1]
    """
    return _shade(spec, _rows(rays_o), _rows(rays_d), t, prim_id).T


def _shade(spec: ObjectSpec, o: Tensor, d: Tensor, t: Tensor, prim_id: Tensor) -> Tensor:
    """:func:`shade` on [3, N] rays -> [3, N]"""
    rgb = torch.ones(3, o.shape[1])
    key = F.normalize(torch.tensor(KEY_LIGHT), dim=0)
    fill = F.normalize(torch.tensor(FILL_LIGHT), dim=0)
    hits = (prim_id >= 0).nonzero()[:, 0]  # [K]
    hit_prim = prim_id.index_select(0, hits)
    for k, prim in enumerate(spec.primitives):
        idx = hits[hit_prim == k]  # [M]
        if idx.numel() == 0:
            continue
        p_world = torch.addcmul(o.index_select(1, idx), d.index_select(1, idx), t.index_select(0, idx)[None])  # [3, M]
        p_local = prim.rotation.T @ (p_world - prim.center[:, None])
        normal = prim.rotation @ _normal_local(prim, p_local)  # [3, M] world
        light = AMBIENT + KEY_WEIGHT * (key @ normal).clamp_min(0.0) + FILL_WEIGHT * (fill @ normal).clamp_min(0.0)
        rgb.index_copy_(1, idx, (_albedo(prim, p_local, p_world) * light.clamp_max(1.0)).clamp(0.0, 1.0))
    return rgb


def render_object(spec: ObjectSpec, c2w: Tensor, size: int, fovy: float, supersample: bool = True) -> Tensor:
    """Ray-cast an object at the project's cameras (square, vertical fov ``fovy`` degrees).

    Rays through the pixel centres come from :func:`core.cameras.get_rays`. With ``supersample``,
    the pixels along the silhouette (where hit and miss meet within the 3x3 neighbourhood) are
    re-cast with 2x2 rays at offsets +-1/4 pixel and averaged, which gives soft alpha edges
    (edges inside the object, between primitives or pattern cells, stay aliased). RGB is straight
    (not premultiplied), white where alpha is 0. Runs on one intra-op thread (see ``_one_thread``).

    c2w: [V, 4, 4] OpenGL camera-to-world -> rgba [V, 4, size, size] in [0, 1]
    """
    with _one_thread():
        return _render(spec, c2w.float().cpu(), size, fovy, supersample)


def _render(spec: ObjectSpec, c2w: Tensor, size: int, fovy: float, supersample: bool) -> Tensor:
    v = c2w.shape[0]
    rays_o, rays_d = get_rays(c2w, size, size, fovy)  # [V, H, W, 3] each
    o, d = _rows(rays_o), _rows(rays_d)  # [3, N] each, N = V * H * W
    tol = 0.1 * 2.0 * math.tan(math.radians(fovy) / 2) / size  # a tenth of a pixel, in radians
    t, prim_id = _cast(spec, o, d, tol)
    rgb = _shade(spec, o, d, t, prim_id)  # [3, N]
    alpha = (prim_id >= 0).float()  # [N]

    if supersample and size >= 2:
        eidx = _edge_pixels(prim_id.view(v, size, size) >= 0).view(-1).nonzero()[:, 0]  # [E]
        if eidx.numel() > 0:
            so = o.index_select(1, eidx).repeat_interleave(4, dim=1)  # [3, 4E]
            sd = _subpixel_dirs(c2w, d, eidx, size)  # [3, 4E]
            st, sid = _cast(spec, so, sd, tol / 2)
            hit = (sid >= 0).float().view(-1, 4)  # [E, 4]
            cover = hit.mean(1)  # [E]
            premult = (_shade(spec, so, sd, st, sid).view(3, -1, 4) * hit).mean(2)  # [3, E]
            rgb.index_copy_(1, eidx, torch.where(cover > 0, premult / cover.clamp_min(1e-6), 1.0))
            alpha.index_copy_(0, eidx, cover)

    rgba = torch.cat([rgb, alpha[None]])  # [4, N]
    return rgba.view(4, v, size, size).transpose(0, 1).contiguous()  # [V, 4, H, W]


def _edge_pixels(ids: Tensor) -> Tensor:
    """Pixels whose 3x3 neighbourhood holds another value. ids: [V, H, W] (any dtype) -> bool [V, H, W]"""
    edge = torch.zeros_like(ids, dtype=torch.bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # each neighbour pair once
        h, w = ids.shape[1] - dy, ids.shape[2] - abs(dx)
        a = ids[:, :h, max(0, -dx) : max(0, -dx) + w]  # [V, h, w]
        b = ids[:, dy : dy + h, max(0, dx) : max(0, dx) + w]
        differ = a != b
        edge[:, :h, max(0, -dx) : max(0, -dx) + w] |= differ
        edge[:, dy : dy + h, max(0, dx) : max(0, dx) + w] |= differ
    return edge


def _subpixel_dirs(c2w: Tensor, d: Tensor, eidx: Tensor, size: int) -> Tensor:
    """Unit directions through the 4 points at +-1/4 pixel around the centres of pixels ``eidx``.

    Derived from the pixel-centre rays of :func:`get_rays` (so the intrinsics live in one place):
    scaled to a unit component along the viewing direction, ray directions are affine in the
    pixel coordinates, with per-view steps read off neighbouring pixels.
    c2w: [V, 4, 4]; d: [3, N] pixel-centre directions (N = V * size^2); eidx: [E] -> [3, 4E]
    """
    v = c2w.shape[0]
    forward = -c2w[:, :3, 2].T  # [3, V] OpenGL cameras look along -z
    corner = d.view(3, v, size, size)[:, :, :2, :2]  # [3, V, 2, 2]
    corner = corner / (corner * forward[:, :, None, None]).sum(0)  # unit component along forward
    step_x = corner[:, :, 0, 1] - corner[:, :, 0, 0]  # [3, V] one pixel to the right
    step_y = corner[:, :, 1, 0] - corner[:, :, 0, 0]  # [3, V] one pixel down
    view = eidx // (size * size)  # [E]
    de = d.index_select(1, eidx)  # [3, E]
    de = de / _dot(de, forward.index_select(1, view))
    dx = torch.tensor([-0.25, 0.25, -0.25, 0.25])  # [4] sub-pixel offsets, in pixels
    dy = torch.tensor([-0.25, -0.25, 0.25, 0.25])
    sub = de[:, :, None] + dx * step_x.index_select(1, view)[:, :, None] + dy * step_y.index_select(1, view)[:, :, None]
    return _normalize(sub.reshape(3, -1))  # [3, 4E], the 4 samples of a pixel adjacent


# ---------------------------------------------------------------------------------- dataset

_MASK32 = 0xFFFFFFFF


def _object_seed(seed: int, split: str, index: int) -> int:
    """Seed of object ``index`` of ``split``. torch's CPU generator keeps only the low 32 bits of a
    seed, so these are made distinct: for a given ``seed``, train (even) and eval (odd) never share one."""
    return (2 * index + (1 if split == "eval" else 0) + seed * 0x9E3779B1) & _MASK32


class SyntheticDataset(Dataset):
    """Procedural objects rendered on the fly; no files needed (``--dataset synthetic``).

    Item ``index`` of a split is always the same object seen from the same cameras (seeded by
    ``opt.seed``, the split and the index); eval objects come from a disjoint seed space. Training
    augmentations of the input views depend on (``opt.seed``, epoch, index): call
    :meth:`set_epoch` at the start of every epoch (before iterating the DataLoader, whose workers
    get a copy of the dataset). Views are rendered at ``max(opt.input_size, opt.output_size)`` and
    turned into a sample by ``make_item``, on one intra-op thread (as DataLoader workers do).
    """

    def __init__(self, opt: Options, split: str = "train"):
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        self.opt = opt
        self.split = split
        self.epoch = 0
        self.size = max(opt.input_size, opt.output_size)
        # keep the object in view of the orbit cameras even for a narrower fov or a closer camera
        self.bound = min(OBJECT_BOUND, 0.97 * opt.cam_radius * math.sin(math.radians(opt.fovy) / 2))

    def __len__(self) -> int:
        return self.opt.num_train_objects if self.split == "train" else self.opt.num_eval_objects

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def object_and_cameras(self, index: int) -> tuple[ObjectSpec, Tensor]:
        """The object of item ``index`` and its cameras (c2w [num_views, 4, 4] OpenGL)."""
        g = torch.Generator().manual_seed(_object_seed(self.opt.seed, self.split, index))
        spec = sample_object(g, self.bound)
        c2w = sample_cameras(g, self.opt.num_views, self.opt.cam_radius, train=self.split == "train")
        return spec, c2w

    def uid(self, index: int) -> str:
        return f"synthetic-{self.split}-{index:06d}"

    def __getitem__(self, index: int) -> dict:
        index = int(index) % len(self)
        with _one_thread():
            spec, c2w = self.object_and_cameras(index)
            rgba = render_object(spec, c2w, self.size, self.opt.fovy)  # [V, 4, S, S]
            return self.make(rgba, c2w, index, self.uid(index))

    def make(self, rgba: Tensor, c2w: Tensor, index: int, uid: str) -> dict:
        """The sample of item ``index`` from its rendered views (rgba [V, 4, S, S], c2w [V, 4, 4]):
        training augmentations seeded by (seed, epoch, index), on one intra-op thread. Used by
        ``__getitem__`` and by the shards reader (views rendered into shards)."""
        rng = sample_generator(self.opt.seed, self.epoch, index, hashed=True) if self.split == "train" else None
        with _one_thread():
            item = make_item(rgba, c2w, self.opt, rng)
        item["uid"] = uid
        return item

    def raw_object(self, index: int) -> RawObject:
        """Item ``index`` as a shard stores it: its views rendered (rgba [V, 4, S, S]) and its cameras."""
        spec, c2w = self.object_and_cameras(index)
        rgba = render_object(spec, c2w, self.size, self.opt.fovy)  # [V, 4, S, S]
        meta = dict(source="synthetic", uid=self.uid(index), fovy=self.opt.fovy)
        return RawObject(meta, {"cams": c2w.numpy().astype(np.float32), "rgba": rgba.numpy()})
