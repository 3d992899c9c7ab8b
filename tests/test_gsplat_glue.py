"""The gsplat glue on the CPU, and what "gsplat is available" means.

Without a GPU, the conversion in ``core.rasterizer.gsplat_backend.render`` (cameras to
``viewmats`` / ``Ks``, backgrounds, render mode, near plane, dilation) is proven against gsplat's
own pure-PyTorch reference of its pipeline, ``gsplat.rendering._rasterization`` (projection, tile
intersection and compositing from ``gsplat/cuda/_torch_impl.py``): the name the backend calls,
``gsplat.rasterization``, is replaced by a thin function that forwards the backend's keyword
arguments unchanged to that reference, and the result is compared with the torch backend (the
3DGS semantics) on the same scene.

In gsplat 1.5.3 that reference still calls a few CUDA-only helpers. They are replaced here by
CPU versions written for this test from their documented semantics (gsplat's docstrings and the
rules of its kernels, nerfacc's documentation):

* ``gsplat.cuda._wrapper.rasterize_to_indices_in_range`` (kernel ``rasterize_to_indices_3dgs``):
  :func:`indices_in_range`;
* ``nerfacc.render_weight_from_alpha`` and ``nerfacc.accumulate_along_rays`` (nerfacc is not a
  dependency; a stand-in module holds :func:`weights_from_alpha` and :func:`accumulate_per_ray`);
* ``isect_tiles`` / ``isect_offset_encode`` as imported by ``gsplat.rendering`` are routed to
  gsplat's own torch versions ``_isect_tiles`` / ``_isect_offset_encode`` (thin adapters).

``gsplat.cuda._backend`` is never imported: importing it JIT-compiles gsplat's CUDA kernels when
``nvcc`` exists. While the reference runs, a stand-in module sits in its place and fails loudly on
any use, so a CUDA call that was not replaced cannot go unnoticed.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
import types
from contextlib import contextmanager
from typing import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

gsplat = pytest.importorskip("gsplat")

import gsplat.cuda._torch_impl as gsplat_torch_impl  # noqa: E402
import gsplat.cuda._wrapper as gsplat_wrapper  # noqa: E402
import gsplat.rendering as gsplat_rendering  # noqa: E402

from core.cameras import orbit_camera, projection_matrix, renderer_cameras  # noqa: E402
from core.rasterizer import gsplat_backend, torch_backend  # noqa: E402

BACKEND = "gsplat.cuda._backend"
FOVY, NEAR, FAR, RADIUS = 49.1, 0.5, 2.5, 1.5
SIZE = 96
ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat skips a Gaussian at a pixel below this alpha
ALPHA_CLAMP = 0.999  # gsplat's alpha clamp
T_STOP = 1e-4  # gsplat stops a pixel before the Gaussian that brings T to <= this


# ----------------------------------------------------------------------------- CPU ports


def indices_in_range(
    range_start: int,
    range_end: int,
    transmittances: Tensor,
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    image_width: int,
    image_height: int,
    tile_size: int,
    isect_offsets: Tensor,
    flatten_ids: Tensor,
    tiles_per_chunk: int = 32,
) -> tuple[Tensor, Tensor, Tensor]:
    """CPU ``rasterize_to_indices_in_range``: the (Gaussian, pixel, image) triples that composite.

    transmittances [..., H, W]; means2d [..., N, 2]; conics [..., N, 3] (A, B, C with
    sigma = (A dx^2 + C dy^2) / 2 + B dx dy); opacities [..., N]; isect_offsets [..., th, tw]
    (first intersection of each tile); flatten_ids [n_isects] (image * N + Gaussian, depth-sorted
    within each tile). Each tile looks at its intersections in blocks of ``tile_size**2``, blocks
    ``[range_start, range_end)``. A pixel (sampled at its centre, x + 0.5) takes a Gaussian when
    ``sigma >= 0`` and ``alpha = min(0.999, opacity exp(-sigma)) >= 1/255``, unless the
    transmittance after it would be ``<= 1e-4``: then the pixel stops. Starts from the given
    transmittances. Returns gaussian_ids (in [0, N)), pixel_ids (row-major), image_ids, all
    [M] int64, grouped by (image, pixel) in that order and front to back within a pixel.
    """
    n_gauss = means2d.shape[-2]
    height, width = image_height, image_width
    n_tiles_y, n_tiles_x = isect_offsets.shape[-2:]
    block = tile_size * tile_size
    starts = isect_offsets.reshape(-1).long()  # [T] over all images
    ends = torch.cat([starts[1:], torch.tensor([flatten_ids.numel()])])
    first = torch.minimum(starts + range_start * block, ends)
    last = torch.minimum(starts + range_end * block, ends)
    means = means2d.reshape(-1, 2)  # [I * N, 2]
    conic = conics.reshape(-1, 3)
    opacity = opacities.reshape(-1)
    trans = transmittances.reshape(-1, height, width)  # [I, H, W]
    flat_ids = flatten_ids.long()
    found = []  # (global pixel id, Gaussian flat id) per chunk of tiles
    for t0 in range(0, starts.numel(), tiles_per_chunk):
        tiles = torch.arange(t0, min(t0 + tiles_per_chunk, starts.numel()))
        count = last[tiles] - first[tiles]  # [t]
        k_max = int(count.max())
        if k_max <= 0:
            continue
        k = torch.arange(k_max)
        listed = k < count[:, None]  # [t, K]
        ids = flat_ids[(first[tiles, None] + k).clamp(max=max(flat_ids.numel() - 1, 0))]  # [t, K]
        image, px, py = _tile_pixels(tiles, n_tiles_x, n_tiles_y, tile_size)  # [t], [t, P], [t, P]
        inside = (px < width) & (py < height)
        dx = means[ids, 0][:, None, :] - (px.to(means.dtype) + 0.5)[..., None]  # [t, P, K]
        dy = means[ids, 1][:, None, :] - (py.to(means.dtype) + 0.5)[..., None]
        a, b, c = (conic[ids, j][:, None, :] for j in range(3))
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = torch.clamp(opacity[ids][:, None, :] * torch.exp(-sigma), max=ALPHA_CLAMP)
        hit = listed[:, None, :] & inside[..., None] & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
        t_start = trans[image[:, None], py.clamp(max=height - 1), px.clamp(max=width - 1)]  # [t, P]
        factors = torch.where(hit, 1.0 - alpha, torch.ones_like(alpha))
        # T after each candidate, multiplied in compositing order from the starting T
        t_after = torch.cumprod(torch.cat([t_start[..., None], factors], dim=-1), dim=-1)[..., 1:]
        take = hit & (t_after > T_STOP)  # T never increases: once a take fails, all later ones do
        tile_i, pix_i, k_i = take.nonzero(as_tuple=True)
        pixel = (image[tile_i] * height + py[tile_i, pix_i]) * width + px[tile_i, pix_i]
        found.append((pixel, ids[tile_i, k_i]))
    if not found:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty, empty
    pixel = torch.cat([p for p, _ in found])
    gauss = torch.cat([g for _, g in found])
    pixel, order = torch.sort(pixel, stable=True)  # group by pixel, keeping front-to-back order
    gauss = gauss[order]
    return gauss % n_gauss, pixel % (height * width), pixel // (height * width)


def _tile_pixels(tiles: Tensor, n_tiles_x: int, n_tiles_y: int, tile_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Image index [t] and pixel x, y [t, tile_size**2] (row-major inside the tile) of flat tile ids."""
    image = tiles // (n_tiles_x * n_tiles_y)
    tile_y = (tiles // n_tiles_x) % n_tiles_y
    tile_x = tiles % n_tiles_x
    local = torch.arange(tile_size * tile_size)
    px = tile_x[:, None] * tile_size + local % tile_size
    py = tile_y[:, None] * tile_size + local // tile_size
    return image, px, py


def exclusive_product_per_ray(values: Tensor, ray_indices: Tensor) -> Tensor:
    """prod_{j < i, same ray} values_j for each sample i (1 for a ray's first sample).

    values, ray_indices: [M]; the samples of a ray must be adjacent and in order. -> [M]
    """
    if values.numel() == 0:
        return torch.ones_like(values)
    new_ray = torch.ones_like(ray_indices, dtype=torch.bool)
    new_ray[1:] = ray_indices[1:] != ray_indices[:-1]
    run = torch.cumsum(new_ray.long(), 0) - 1  # [M] which run of equal ray indices
    run_start = new_ray.nonzero().squeeze(1)  # [R]
    assert run_start.numel() == torch.unique(ray_indices).numel(), "samples of a ray must be adjacent"
    position = torch.arange(values.numel()) - run_start[run]  # [M] place inside the ray
    table = torch.ones(run_start.numel(), int(position.max()) + 2, dtype=values.dtype)
    table[run, position + 1] = values  # [R, 1 + longest ray], a leading 1 per ray
    return torch.cumprod(table, dim=1)[run, position]


def weights_from_alpha(
    alphas: Tensor,
    packed_info: Tensor | None = None,
    ray_indices: Tensor | None = None,
    n_rays: int | None = None,
    prefix_trans: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """CPU ``nerfacc.render_weight_from_alpha`` for flattened samples: transmittance
    T_i = prod_{j < i} (1 - alpha_j) along each ray and weight w_i = T_i alpha_i. alphas,
    ray_indices: [M] -> weights [M], transmittance [M]. Only the form gsplat uses."""
    assert packed_info is None and prefix_trans is None and ray_indices is not None
    trans = exclusive_product_per_ray(1.0 - alphas, ray_indices)
    return trans * alphas, trans


def accumulate_per_ray(
    weights: Tensor, values: Tensor | None = None, ray_indices: Tensor | None = None, n_rays: int | None = None
) -> Tensor:
    """CPU ``nerfacc.accumulate_along_rays`` for flattened samples: sum of ``weights * values``
    (of ``weights`` when values is None) per ray. weights [M], values [M, D] -> [n_rays, D or 1]."""
    assert ray_indices is not None and n_rays is not None and weights.dim() == 1
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros(n_rays, src.shape[-1], dtype=src.dtype)
    return out.index_add_(0, ray_indices, src)


def isect_tiles_torch(
    means2d: Tensor,
    radii: Tensor,
    depths: Tensor,
    tile_size: int,
    tile_width: int,
    tile_height: int,
    sort: bool = True,
    segmented: bool = False,  # selects the CUDA sort algorithm only
    packed: bool = False,
    n_images: int | None = None,
    image_ids: Tensor | None = None,
    gaussian_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``isect_tiles`` with ``isect_tiles``'s signature, computed by gsplat's ``_isect_tiles``."""
    assert not packed and image_ids is None and gaussian_ids is None  # what _rasterization passes
    assert n_images in (None, math.prod(means2d.shape[:-2]))
    return gsplat_torch_impl._isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, sort=sort)


def isect_offset_encode_torch(isect_ids: Tensor, n_images: int, tile_width: int, tile_height: int) -> Tensor:
    """``isect_offset_encode`` computed by gsplat's ``_isect_offset_encode``."""
    return gsplat_torch_impl._isect_offset_encode(isect_ids, n_images, tile_width, tile_height)


class _NoCudaBackend(types.ModuleType):
    """Stands in for ``gsplat.cuda._backend``: every lookup of a kernel fails loudly."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(f"a CUDA-only gsplat function was reached ({BACKEND}.{name}); give it a CPU port")


@contextmanager
def cpu_reference(corrupt: Callable[[dict], dict] | None = None) -> Iterator[list]:
    """Route ``gsplat.rasterization`` to gsplat's torch reference with the CPU ports in place.

    Yields the list of keyword-argument dicts the backend passed (one per call). ``corrupt`` (for
    the sensitivity check) may change a copy of them before they reach the reference.
    """
    accepted = inspect.signature(gsplat_rendering._rasterization).parameters
    calls: list[dict] = []

    def rasterization(**kwargs):
        # The reference takes every keyword the backend passes (rasterize_mode included: it
        # implements "classic" and "antialiased"), so all of them are forwarded unchanged.
        unknown = sorted(set(kwargs) - set(accepted))
        assert not unknown, f"gsplat's torch reference does not take {unknown}"
        calls.append(kwargs)
        return gsplat_rendering._rasterization(**(corrupt(dict(kwargs)) if corrupt else kwargs))

    with pytest.MonkeyPatch.context() as m:
        fake_nerfacc = types.ModuleType("nerfacc")
        fake_nerfacc.render_weight_from_alpha = weights_from_alpha
        fake_nerfacc.accumulate_along_rays = accumulate_per_ray
        m.setitem(sys.modules, "nerfacc", fake_nerfacc)
        m.setitem(sys.modules, BACKEND, _NoCudaBackend(BACKEND))
        m.setattr(gsplat_wrapper, "rasterize_to_indices_in_range", indices_in_range)
        m.setattr(gsplat_rendering, "isect_tiles", isect_tiles_torch)
        m.setattr(gsplat_rendering, "isect_offset_encode", isect_offset_encode_torch)
        m.setattr(gsplat, "rasterization", rasterization)
        yield calls


# ----------------------------------------------------------------------------- scene


def quaternion_product(p: Tensor, q: Tensor) -> Tensor:
    """Hamilton product of (w, x, y, z) quaternions. [..., 4] x2 -> [..., 4]"""
    pw, pv = p[..., :1], p[..., 1:]
    qw, qv = q[..., :1], q[..., 1:]
    w = pw * qw - (pv * qv).sum(-1, keepdim=True)
    v = pw * qv + qw * pv + torch.linalg.cross(pv, qv, dim=-1)
    return torch.cat([w, v], dim=-1)


def surface_object(seed: int, n: int) -> Tensor:
    """LGM-like Gaussians on an ellipsoid's surface. -> [n, 14] (xyz, opacity, scale, wxyz, rgb)

    Flat splats (two tangent scales 0.008-0.03, 0.005 along the normal) turned to the surface
    normal with a random spin, colours in [0, 1], opacities over the whole range with a cluster
    near 1 (where gsplat's 0.999 clamp and 3DGS's 0.99 differ) and some below 1/255.
    """
    gen = torch.Generator().manual_seed(seed)
    axes = 0.3 + 0.15 * torch.rand(3, generator=gen)
    direction = F.normalize(torch.randn(2 * n, 3, generator=gen), dim=-1)
    direction = direction[direction[:, 2] > -0.99][:n]  # the z -> normal turn below is undefined at -z
    means = direction * axes
    normal = F.normalize(direction / axes, dim=-1)  # ellipsoid normal
    to_normal = F.normalize(torch.stack([1 + normal[:, 2], -normal[:, 1], normal[:, 0], torch.zeros(n)], -1), dim=-1)
    spin = torch.rand(n, generator=gen) * math.pi  # half angle
    spin_q = torch.stack([torch.cos(spin), torch.zeros(n), torch.zeros(n), torch.sin(spin)], -1)
    quats = quaternion_product(to_normal, spin_q)
    scales = torch.cat([0.008 + 0.022 * torch.rand(n, 2, generator=gen), torch.full((n, 1), 0.005)], -1)
    opacity = torch.rand(n, generator=gen)
    opaque = torch.rand(n, generator=gen) < 0.4
    opacity = torch.where(opaque, 0.99 + 0.01 * torch.rand(n, generator=gen), opacity)
    rgb = torch.rand(n, 3, generator=gen)
    return torch.cat([means, opacity[:, None], scales, quats, rgb], dim=-1)


def scene_cameras(elevations: list[list[float]], azimuths: list[list[float]]) -> tuple[Tensor, Tensor]:
    """Orbit cameras per object. [B][V] degrees -> cam_view, cam_view_proj [B, V, 4, 4]"""
    c2w = orbit_camera(torch.tensor(elevations), torch.tensor(azimuths), RADIUS)  # [B, V, 4, 4]
    cam_view, cam_view_proj, _ = renderer_cameras(c2w, projection_matrix(FOVY, NEAR, FAR))
    return cam_view, cam_view_proj


def psnr(a: Tensor, b: Tensor, peak: float = 1.0) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return 10 * math.log10(peak * peak / max(mse, 1e-20))


def half_pixel_off(kwargs: dict) -> dict:
    """The classic slip: principal point (S - 1) / 2, as if pixel centres were at integers."""
    Ks = kwargs["Ks"].clone()
    Ks[..., :2, 2] -= 0.5
    return {**kwargs, "Ks": Ks}


def untransposed_viewmats(kwargs: dict) -> dict:
    """Our row-vector ``cam_view`` passed as gsplat's column-vector ``viewmats``."""
    return {**kwargs, "viewmats": kwargs["viewmats"].transpose(-1, -2).contiguous()}


# Parameters of gsplat.rasterization that the torch reference lacks, with the defaults under which
# they leave the pixels alone (packed, sparse_grad, absgrad, segmented: memory layout, gradients
# or sort strategy; the rest: off). The backend passes none of them.
REFERENCE_LACKS = dict(
    radius_clip=0.0,
    packed=True,
    sparse_grad=False,
    absgrad=False,
    distributed=False,
    camera_model="pinhole",
    segmented=False,
    covars=None,
    with_ut=False,
    with_eval3d=False,
    radial_coeffs=None,
    tangential_coeffs=None,
    thin_prism_coeffs=None,
    ftheta_coeffs=None,
    viewmats_rs=None,
)


def check_reference_is_the_public_call(passed: dict) -> None:
    """What the backend left at a default means the same in gsplat.rasterization (the CUDA entry
    point) and in its torch reference ``_rasterization``."""
    public = inspect.signature(gsplat_rendering.rasterization).parameters
    reference = inspect.signature(gsplat_rendering._rasterization).parameters
    for name, param in public.items():
        if name in passed:
            continue
        if name in reference:
            assert reference[name].default == param.default, name
        elif name == "rolling_shutter":
            assert param.default == gsplat_wrapper.RollingShutterType.GLOBAL
        else:
            assert name in REFERENCE_LACKS and param.default == REFERENCE_LACKS[name], name
    assert set(reference) - set(public) == {"batch_per_iter"}  # a loop length of the reference only


# ----------------------------------------------------------------------------- tests: the glue


def test_gsplat_glue_matches_the_torch_backend_on_cpu():
    B, V, n = 2, 3, 3000
    gaussians = torch.stack([surface_object(1, n), surface_object(2, n)])  # [B, N, 14]
    cam_view, cam_view_proj = scene_cameras(
        [[-20.0, 10.0, 35.0], [0.0, -40.0, 15.0]], [[0.0, 120.0, 250.0], [45.0, 170.0, 300.0]]
    )
    bg = 0.1 + 0.8 * torch.rand(B, V, 3, generator=torch.Generator().manual_seed(0))  # per view, not white
    ref = torch_backend.render(gaussians, cam_view, cam_view_proj, SIZE, bg)
    assert 0.15 < float(ref["alpha"].mean()) < 0.6 and float(ref["alpha"].max()) > 0.99  # a real scene

    backend_was_loaded = BACKEND in sys.modules
    with cpu_reference() as calls:
        out = gsplat_backend.render(gaussians, cam_view, cam_view_proj, SIZE, bg)
        assert isinstance(sys.modules[BACKEND], _NoCudaBackend)
    assert (BACKEND in sys.modules) == backend_was_loaded  # never imported (that would compile)
    assert len(calls) == 1 and calls[0]["viewmats"].shape == (B, V, 4, 4)  # one call for the batch
    check_reference_is_the_public_call(calls[0])
    with cpu_reference():  # the batched call renders what one call per object renders
        alone = [gsplat_backend.render(gaussians[b : b + 1], cam_view[b : b + 1], cam_view_proj[b : b + 1], SIZE,
                                       bg[b : b + 1]) for b in range(B)]
    for key in ("image", "alpha", "depth"):
        torch.testing.assert_close(out[key], torch.cat([a[key] for a in alone]), atol=1e-5, rtol=0)

    for key in ("image", "alpha", "depth"):
        assert out[key].shape == ref[key].shape and out[key].dtype == ref[key].dtype, key
    # Measured (gsplat 1.5.3, 96 px): image 73.2 dB, alpha 70.1 dB, depth 71.5 dB (peak: the
    # farthest depth). The residue is gsplat's 0.999 alpha clamp and 3.33-sigma tile extent against
    # 3DGS's 0.99 and 3 sqrt(lambda_max); 40 dB is the bar of the GPU test and leaves room for
    # scenes where those rules matter more. A half-pixel or transposed-matrix slip lands at 30 dB
    # or far lower (below).
    depth_peak = float(ref["depth"].max())
    assert psnr(out["image"], ref["image"]) >= 40.0
    assert psnr(out["alpha"], ref["alpha"]) >= 40.0
    assert psnr(out["depth"], ref["depth"], depth_peak) >= 40.0

    # The comparison sees the glue: one wrong conversion, everything else unchanged, fails it.
    for corrupt in (half_pixel_off, untransposed_viewmats):
        with cpu_reference(corrupt):
            bad = gsplat_backend.render(gaussians, cam_view, cam_view_proj, SIZE, bg)
        assert psnr(bad["image"], ref["image"]) < 35.0, corrupt.__name__
        assert psnr(bad["alpha"], ref["alpha"]) < 35.0, corrupt.__name__
        assert psnr(bad["depth"], ref["depth"], depth_peak) < 35.0, corrupt.__name__


def test_cpu_ports_follow_their_documented_semantics():
    # nerfacc's documented example for render_weight_from_alpha with flattened samples
    alphas = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
    rays = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    weights, trans = weights_from_alpha(alphas, ray_indices=rays, n_rays=3)
    assert torch.allclose(trans, torch.tensor([1.0, 0.6, 0.12, 1.0, 0.2, 1.0, 1.0]))
    assert torch.allclose(weights, torch.tensor([0.4, 0.48, 0.012, 0.8, 0.02, 0.0, 0.9]))
    sums = accumulate_per_ray(weights, torch.ones(7, 2), ray_indices=rays, n_rays=4)
    assert torch.allclose(sums[:, 0], torch.tensor([0.892, 0.82, 0.9, 0.0]))
    assert torch.allclose(accumulate_per_ray(weights, None, ray_indices=rays, n_rays=4), sums[:, :1])

    # rasterize_to_indices: three Gaussians on the centre of pixel (3, 2) of a 16 x 16 image, front
    # to back. The first clamps to alpha 0.999 (T -> 1e-3), the second would bring T to 5e-5 <= 1e-4:
    # the pixel stops and the third is never taken. A faint one (alpha < 1/255) is skipped.
    means = torch.tensor([[[3.5, 2.5], [3.5, 2.5], [3.5, 2.5], [9.5, 9.5]]])  # [1, 4, 2]
    conics = torch.tensor([[[4.0, 0.0, 4.0]] * 4])  # sigma = 2 (dx^2 + dy^2): about one pixel wide
    opacities = torch.tensor([[1.0, 0.95, 0.5, 0.003]])
    offsets = torch.zeros(1, 1, 1, dtype=torch.int32)
    flat = torch.tensor([0, 1, 2, 3], dtype=torch.int32)  # already depth-sorted
    trans0 = torch.ones(1, 16, 16)
    g, pix, img = indices_in_range(0, 1, trans0, means, conics, opacities, 16, 16, 16, offsets, flat)
    at_pixel = g[pix == 2 * 16 + 3]
    assert at_pixel.tolist() == [0] and (img == 0).all() and not (g == 3).any()
    assert torch.equal(pix, torch.sort(pix, stable=True).values)  # grouped by pixel
    # a neighbour where alpha stays small takes all three, front to back
    assert g[pix == 2 * 16 + 4].tolist() == [0, 1, 2]
    # blocks past the tile's list give nothing; a pixel already at T = 1e-4 takes nothing
    assert indices_in_range(1, 2, trans0, means, conics, opacities, 16, 16, 16, offsets, flat)[0].numel() == 0
    done = torch.full((1, 16, 16), 1e-4)
    assert indices_in_range(0, 1, done, means, conics, opacities, 16, 16, 16, offsets, flat)[0].numel() == 0


# ----------------------------------------------------------------------------- tests: availability


class _FakeBackendFinder:
    """A meta-path finder that serves ``gsplat.cuda._backend`` as a module with the given ``_C``,
    or raises ``error`` while importing it (a failed compile)."""

    def __init__(self, kernels=None, error: Exception | None = None):
        self.kernels, self.error = kernels, error

    def find_spec(self, name: str, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name == BACKEND else None

    def create_module(self, spec):
        return None  # the default module

    def exec_module(self, module) -> None:
        if self.error is not None:
            raise self.error
        module._C = self.kernels


def complete_kernels(missing: tuple[str, ...] = ()) -> types.SimpleNamespace:
    """A stand-in for gsplat's ``_C`` with every kernel render() needs, but ``missing``."""
    return types.SimpleNamespace(**{name: object() for name in gsplat_backend.KERNELS if name not in missing})


@pytest.fixture
def fresh_availability(monkeypatch):
    """No cached result, no ``gsplat.cuda._backend`` in sys.modules (nor as an attribute of
    ``gsplat.cuda``); all restored afterwards, also what an import during the test adds."""
    monkeypatch.setitem(sys.modules, BACKEND, None)  # records the original entry (or its absence)
    monkeypatch.delitem(sys.modules, BACKEND)
    monkeypatch.setattr(gsplat.cuda, "_backend", None, raising=False)  # likewise for the attribute
    monkeypatch.delattr(gsplat.cuda, "_backend")
    gsplat_backend.clear_availability_cache()
    yield monkeypatch
    gsplat_backend.clear_availability_cache()


def test_without_cuda_gsplat_is_unavailable_and_its_kernels_stay_unimported(fresh_availability):
    fresh_availability.setattr(torch.cuda, "is_available", lambda: False)
    assert gsplat_backend.is_available() == (False, "no CUDA device")
    assert BACKEND not in sys.modules  # importing it would start a JIT compile where nvcc exists


def test_gsplat_without_kernels_is_unavailable(fresh_availability):
    fresh_availability.setattr(torch.cuda, "is_available", lambda: True)
    fresh_availability.setitem(sys.modules, BACKEND, types.SimpleNamespace(_C=None))
    available, reason = gsplat_backend.is_available()
    assert not available and "kernels" in reason and "None" in reason


def test_gsplat_with_complete_kernels_is_available(fresh_availability):
    fresh_availability.setattr(torch.cuda, "is_available", lambda: True)
    fresh_availability.setitem(sys.modules, BACKEND, types.SimpleNamespace(_C=complete_kernels()))
    assert gsplat_backend.is_available() == (True, "")
    # cached: a later change is not seen until the cache is cleared
    fresh_availability.setitem(sys.modules, BACKEND, types.SimpleNamespace(_C=complete_kernels(("intersect_tile",))))
    assert gsplat_backend.is_available() == (True, "")
    gsplat_backend.clear_availability_cache()
    available, reason = gsplat_backend.is_available()
    assert not available and "intersect_tile" in reason


@pytest.mark.parametrize("prebuilt", [False, True])
def test_a_failed_kernel_load_is_unavailable(fresh_availability, capsys, prebuilt):
    fresh_availability.setattr(torch.cuda, "is_available", lambda: True)
    fresh_availability.setattr(gsplat_backend, "_has_prebuilt_kernels", lambda: prebuilt)
    finder = _FakeBackendFinder(error=RuntimeError("Error building extension 'gsplat_cuda'"))
    fresh_availability.setattr(sys, "meta_path", [finder, *sys.meta_path])
    available, reason = gsplat_backend.is_available()
    assert not available and "did not load" in reason and "gsplat_cuda" in reason
    noted = "compiling its CUDA kernels on first use" in capsys.readouterr().err
    assert noted == (not prebuilt)  # the compile note only where no prebuilt gsplat.csrc exists


def test_kernels_loaded_through_the_import_system_are_checked(fresh_availability, capsys):
    fresh_availability.setattr(torch.cuda, "is_available", lambda: True)
    fresh_availability.setattr(gsplat_backend, "SLOW_LOAD_S", -1.0)  # report every load time
    fresh_availability.setattr(sys, "meta_path", [_FakeBackendFinder(kernels=complete_kernels()), *sys.meta_path])
    assert gsplat_backend.is_available() == (True, "")
    assert isinstance(sys.modules[BACKEND]._C, types.SimpleNamespace)  # removed again by the fixture
    assert "gsplat: CUDA kernels loaded in" in capsys.readouterr().err


class _RecordingAccelerator:
    """The two context managers of ``accelerate.Accelerator`` that load_kernels_in_order uses,
    recording when they are entered and left."""

    def __init__(self, is_main_process: bool, events: list):
        self.is_main_process, self.events = is_main_process, events

    @contextmanager
    def main_process_first(self):
        self.events.append("enter main_process_first")
        yield
        self.events.append("leave main_process_first")

    @contextmanager
    def local_main_process_first(self):
        self.events.append("enter local_main_process_first")
        yield
        self.events.append("leave local_main_process_first")


@pytest.mark.parametrize("is_main", [True, False])
def test_load_kernels_in_order_checks_on_the_main_process_first(monkeypatch, is_main):
    events: list[str] = []

    def check() -> tuple[bool, str]:
        events.append("check")
        return False, "no CUDA device"

    monkeypatch.setattr(gsplat_backend, "is_available", check)
    assert gsplat_backend.load_kernels_in_order(_RecordingAccelerator(is_main, events)) == (False, "no CUDA device")
    first_round = ["enter main_process_first", *(["check"] if is_main else []), "leave main_process_first"]
    second_round = ["enter local_main_process_first", "check", "leave local_main_process_first"]
    assert events == first_round + second_round
