"""gsplat backend: the fused CUDA kernels of the ``gsplat`` library (``gsplat.rasterization``).

Used on CUDA tensors when gsplat's kernels load (``Options.renderer`` = ``auto`` or ``gsplat``).

Availability (:func:`is_available`): "gsplat is available" means its CUDA kernels are loaded,
not only that ``import gsplat`` works. gsplat 1.5.x keeps them in ``gsplat.cuda._backend._C``,
which is either the prebuilt extension ``gsplat.csrc`` of a binary wheel, or a JIT build that
importing ``gsplat.cuda._backend`` compiles with the local CUDA toolkit (several minutes the first
time, cached under torch's extension folder afterwards), or ``None`` with only a printed warning
when neither exists (the first render would then fail deep inside gsplat). So:

* no CUDA device: ``(False, "no CUDA device")``, without importing ``gsplat.cuda._backend``
  (that import alone starts a compile on a machine that has ``nvcc``);
* otherwise import ``gsplat`` and ``gsplat.cuda._backend`` (a note on stderr first when there is
  no prebuilt ``gsplat.csrc``, and the load time when it was slow), then require ``_C`` to hold
  every kernel that :func:`render` reaches (:data:`KERNELS`); any failure is ``(False, reason)``.

The result is cached per process. In a multi-process run call :func:`load_kernels_in_order`
first: the main process loads (or compiles) the kernels before the others, so that concurrent
ranks never compile into the same build folder.

Prebuilt kernels avoid the compile: gsplat publishes wheels with precompiled kernels for some
python / torch / CUDA combinations at https://docs.gsplat.studio/whl (check there which exist);
gsplat's README installs them with, e.g. for torch 2.0 and CUDA 11.8,
``pip install ninja numpy jaxtyping rich`` then
``pip install gsplat --index-url https://docs.gsplat.studio/whl/pt20cu118``. The PyPI wheel
(``py3-none-any``) has no kernels and compiles them on first use.

Conversion: :func:`render` takes the same inputs as the torch backend and converts them:

* ``viewmats = cam_view^T``: our ``cam_view`` is the row-vector world-to-camera matrix in OpenCV
  axes (x right, y down, z forward), gsplat wants the column-vector one in the same axes.
* ``Ks = [[fx, 0, S/2], [0, fy, S/2], [0, 0, 1]]`` (:func:`core.geometry.intrinsics`) with
  ``fx = S / (2 tan(fovx/2))`` and ``tan(fovx/2) = 1 / proj[0, 0]`` (likewise y) of
  ``proj = inverse(cam_view) @ cam_view_proj``. gsplat samples pixel ``x`` at ``x + 0.5`` and the
  3DGS rasterizer samples it at ``x`` with centres at ``((ndc + 1) S - 1) / 2``; a principal point
  of ``S/2`` makes both the same geometry.
* ``render_mode="RGB+D"`` gives ``sum(z alpha T)`` in the last channel (our ``depth``; "ED" would
  divide by alpha), ``backgrounds`` applies to RGB only, ``eps2d=0.3`` is the same +0.3 dilation,
  ``near_plane=0.2`` the same near cull, ``far_plane`` is left at infinity (3DGS has none).

tests/test_gsplat_glue.py checks this conversion on the CPU: it sends exactly these arguments to
gsplat's pure-PyTorch reference (``gsplat.rendering._rasterization``) and compares with the torch
backend. That reference follows the kernels except for its screen-space extent (3.33 sigma per
axis, without the opacity bound), its ``exp`` and the near-plane tie; the GPU test in
tests/test_rasterizer.py compares the real kernels.

How gsplat's rules differ from the 3DGS rasterizer that the published weights were trained with
(the torch backend reproduces the latter; the GPU test measures the gap, PSNR >= 40 dB):

* alpha is clamped to 0.999 instead of 0.99 (fully opaque cores look slightly more opaque);
* a pixel stops when the next transmittance is ``<= 1e-4`` (3DGS: ``< 1e-4``), near cull at
  ``z < near_plane`` (3DGS: ``z <= 0.2``): both only differ on exact ties;
* ``exp`` is the fast ``__expf`` approximation, and NDC has no ``w + 1e-7`` guard;
* the screen-space extent: recent gsplat versions derive per-axis radii from the opacity
  (the ellipse where alpha reaches 1/255, up to 3.33 sigma) rather than 3 sqrt(lambda_max), and
  older ones use ``max(0.01, ...)`` instead of ``max(0.1, ...)`` under the eigenvalue square root.
  The tiles a Gaussian reaches therefore differ slightly: gsplat may render the faint rim
  between 3 and 3.33 sigma where 3DGS's tile range cut it off, and vice versa;
* gradients are gsplat's (e.g. its backward differentiates the 0.999 clamp like 3DGS's does,
  i.e. not at all); ``bg_color`` gets no gradient in either backend.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import time

import torch
from torch import Tensor

from core.geometry import intrinsics
from core.rasterizer.torch_backend import DILATION, NEAR_CULL

BACKEND_MODULE = "gsplat.cuda._backend"  # importing it loads, or JIT-compiles, the kernels
PREBUILT_MODULE = "gsplat.csrc"  # the kernels of a binary wheel
# The entries of gsplat's ``_C`` that render() reaches through ``gsplat.rasterization`` (gsplat
# 1.5.x names, from the ``_make_lazy_cuda_func`` / ``_make_lazy_cuda_obj`` calls of the packed
# projection, tile intersection and rasterization, forward and backward).
KERNELS = (
    "CameraModelType",
    "projection_ewa_3dgs_packed_fwd",
    "projection_ewa_3dgs_packed_bwd",
    "intersect_tile",
    "intersect_offset",
    "rasterize_to_pixels_3dgs_fwd",
    "rasterize_to_pixels_3dgs_bwd",
)
SLOW_LOAD_S = 5.0  # a kernel load slower than this is reported on stderr
COMPILE_NOTE = (
    "gsplat: compiling its CUDA kernels on first use, this takes several minutes (a cached build "
    "only loads); prebuilt wheels avoid it: see README"
)


@functools.lru_cache(maxsize=None)
def is_available() -> tuple[bool, str]:
    """(True, "") when gsplat's CUDA kernels are loaded and complete, else (False, the reason).

    Checked once per process (see the module docstring; :func:`clear_availability_cache`).
    """
    if not torch.cuda.is_available():
        return False, "no CUDA device"  # and gsplat.cuda._backend stays unimported
    try:
        gsplat = importlib.import_module("gsplat")
    except Exception as err:  # ImportError, or a broken install raising at import
        return False, f"cannot import gsplat ({type(err).__name__}: {err})"
    try:
        backend = _load_backend()
    except Exception as err:  # a failed JIT compile (RuntimeError), a bad prebuilt library (ImportError)
        return False, f"gsplat's CUDA kernels did not load ({type(err).__name__}: {err})"
    return _check_kernels(getattr(backend, "_C", None), getattr(gsplat, "__version__", "?"))


def clear_availability_cache() -> None:
    """Forget the cached :func:`is_available` result (for tests)."""
    is_available.cache_clear()


def load_kernels_in_order(accelerator) -> tuple[bool, str]:
    """:func:`is_available` on every process of an ``accelerate.Accelerator``, the main process
    first: a JIT compile then happens once, and the other ranks load its build.

    Two rounds (each a barrier on every rank): the main process alone, then the first process of
    each machine, then the rest, so that a build folder that is not shared across machines is
    also compiled only once per machine. Returns this process's (available, reason).
    """
    with accelerator.main_process_first():
        if accelerator.is_main_process:
            is_available()
    with accelerator.local_main_process_first():
        return is_available()


def _load_backend():
    """Import ``gsplat.cuda._backend`` (may compile), with a note before and the time after."""
    if BACKEND_MODULE not in sys.modules and not _has_prebuilt_kernels():
        print(COMPILE_NOTE, file=sys.stderr, flush=True)
    start = time.perf_counter()
    backend = importlib.import_module(BACKEND_MODULE)
    seconds = time.perf_counter() - start
    if seconds > SLOW_LOAD_S:
        print(f"gsplat: CUDA kernels loaded in {seconds:.0f} s", file=sys.stderr, flush=True)
    return backend


def _has_prebuilt_kernels() -> bool:
    """Whether a binary wheel's ``gsplat.csrc`` exists (found, not imported)."""
    try:
        return importlib.util.find_spec(PREBUILT_MODULE) is not None
    except (ImportError, ValueError):
        return False


def _check_kernels(kernels, version: str) -> tuple[bool, str]:
    """(True, "") when ``kernels`` (gsplat's ``_C``) has every entry of :data:`KERNELS`."""
    if kernels is None:
        return False, (
            f"gsplat {version} has no CUDA kernels (gsplat.cuda._backend._C is None: no prebuilt "
            "gsplat.csrc and no CUDA toolkit to compile them); install a prebuilt wheel, see README"
        )
    missing = [name for name in KERNELS if not hasattr(kernels, name)]
    if missing:
        return False, (
            f"gsplat {version}'s CUDA kernels lack {', '.join(missing)} "
            "(this backend calls the gsplat 1.5.x kernels)"
        )
    return True, ""


def render(
    gaussians: Tensor, cam_view: Tensor, cam_view_proj: Tensor, size: int, bg: Tensor, scale_modifier: float = 1.0
) -> dict:
    """gaussians [B, N, 14], cam_view / cam_view_proj [B, V, 4, 4], bg [B, V, 3] ->
    dict(image [B, V, 3, S, S], alpha [B, V, 1, S, S], depth [B, V, 1, S, S])."""
    from gsplat import rasterization

    out_dtype = gaussians.dtype  # gsplat's kernels are float32
    gaussians, cam_view, cam_view_proj, bg = gaussians.float(), cam_view.float(), cam_view_proj.float(), bg.float()
    viewmats = cam_view.transpose(-1, -2)  # [B, V, 4, 4] column-vector world -> camera (OpenCV)
    Ks = intrinsics(cam_view, cam_view_proj, size)  # [B, V, 3, 3]
    colors, alpha, _ = rasterization(  # one call for the whole batch: gsplat takes leading batch dims
        means=gaussians[..., 0:3].contiguous(),  # [B, N, 3]
        quats=gaussians[..., 7:11].contiguous(),
        scales=(gaussians[..., 4:7] * scale_modifier).contiguous(),
        opacities=gaussians[..., 3].contiguous(),  # [B, N]
        colors=gaussians[..., 11:14].contiguous(),
        viewmats=viewmats.contiguous(),
        Ks=Ks.contiguous(),
        width=size,
        height=size,
        near_plane=NEAR_CULL,
        eps2d=DILATION,
        backgrounds=bg.contiguous(),  # [B, V, 3]
        render_mode="RGB+D",
        rasterize_mode="classic",
    )  # colors [B, V, S, S, 4], alpha [B, V, S, S, 1]
    out = dict(image=colors[..., :3], depth=colors[..., 3:], alpha=alpha)
    out = {k: v.permute(0, 1, 4, 2, 3) for k, v in out.items()}  # [B, V, C, S, S]
    return {k: v.to(out_dtype) for k, v in out.items()}
