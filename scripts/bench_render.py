"""Time and peak memory of the Gaussian renderer backends on scenes shaped like LGM output.

    python scripts/bench_render.py                      # both cases, every backend present
    python scripts/bench_render.py --device cuda --repeats 5
    python scripts/bench_render.py --cases small --threads 1

Scenes: Gaussians sampled on object surfaces (a sphere and a box inside [-0.6, 0.6]^3), three
scales each log-uniform in [0.002, 0.03], random rotations, opacity sigmoid(N(3, 1.5)) (median
0.95, mostly high), random colours; 8 orbit cameras at radius 1.5 (fovy 49.1, znear 0.5,
zfar 2.5) at elevations 15 / -30 alternating, azimuths every 45 degrees.

Cases: 16,384 Gaussians x 8 views at 256 px (forward and forward+backward) and 65,536 x 8 at
512 px. Forward+backward backpropagates sum(image) + sum(alpha) + sum(depth) to all 14 parameters.
Times are the best of ``--repeats`` after one warm-up; peak memory is
``torch.cuda.max_memory_allocated`` on CUDA, and on CPU the growth of the peak RSS
(``resource.getrusage``) of a fresh process that runs just that case, over its RSS once the
scene and cameras are built.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.runtime import configure_cpu_threads  # noqa: E402

configure_cpu_threads()  # before torch loads OpenMP: idle threads sleep on a shared machine

import torch  # noqa: E402

from core.cameras import orbit_camera, projection_matrix, renderer_cameras  # noqa: E402
from core.gs import GaussianRenderer  # noqa: E402
from core.options import Options  # noqa: E402
from core.rasterizer import gsplat_backend  # noqa: E402

CASES = {"small": (16384, 256), "large": (65536, 512)}  # name: (Gaussians, image side)


def surface_scene(n: int, seed: int = 0, scale_range=(0.002, 0.03)) -> torch.Tensor:
    """n activated Gaussians [n, 14] on a sphere and a box surface inside [-0.6, 0.6]^3."""
    gen = torch.Generator().manual_seed(seed)
    n_sphere = n // 2
    n_box = n - n_sphere
    d = torch.randn(n_sphere, 3, generator=gen)
    sphere = d / d.norm(dim=-1, keepdim=True) * 0.35 + torch.tensor([-0.15, 0.1, 0.0])
    face = torch.randint(0, 6, (n_box,), generator=gen)  # axis = face // 2, side = face % 2
    uv = torch.rand(n_box, 2, generator=gen) * 2 - 1
    box = torch.empty(n_box, 3)
    for axis in range(3):
        m = face // 2 == axis
        others = [a for a in range(3) if a != axis]
        box[m, axis] = (face[m] % 2).float() * 2 - 1
        box[m, others[0]], box[m, others[1]] = uv[m, 0], uv[m, 1]
    box = box * 0.25 + torch.tensor([0.25, -0.2, 0.1])
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    scale = torch.exp(torch.rand(n, 3, generator=gen) * (hi - lo) + lo)
    rot = torch.randn(n, 4, generator=gen)
    rot = rot / rot.norm(dim=-1, keepdim=True)
    opacity = torch.sigmoid(torch.randn(n, 1, generator=gen) * 1.5 + 3.0)
    rgb = torch.rand(n, 3, generator=gen)
    return torch.cat([torch.cat([sphere, box]), opacity, scale, rot, rgb], dim=1)


def bench_cameras(views: int = 8, fovy: float = 49.1, znear: float = 0.5, zfar: float = 2.5, radius: float = 1.5):
    """(cam_view, cam_view_proj, cam_pos) of ``views`` orbit cameras, each [1, V, ...]."""
    azimuth = torch.arange(views, dtype=torch.float32) * 360.0 / views
    elevation = torch.tensor([-30.0 if i % 2 else 15.0 for i in range(views)])
    poses = orbit_camera(elevation, azimuth, radius)
    cam_view, cam_view_proj, cam_pos = renderer_cameras(poses, projection_matrix(fovy, znear, zfar))
    return cam_view[None], cam_view_proj[None], cam_pos[None]


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def run_case(backend: str, device: str, n: int, size: int, backward: bool, repeats: int) -> tuple[float, float]:
    """Best time (s) and peak memory (GB) of one case."""
    opt = Options(output_size=size, renderer=backend)
    renderer = GaussianRenderer(opt)
    gaussians = surface_scene(n).to(device)[None]  # [1, N, 14]
    cams = [c.to(device) for c in bench_cameras()]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    rss0 = _peak_rss_gb()
    times = []
    for i in range(repeats + 1):  # the first run warms up
        g = gaussians.clone().requires_grad_(backward)
        sync()
        t0 = time.perf_counter()
        with torch.set_grad_enabled(backward):
            out = renderer.render(g, *cams)
            if backward:
                (out["image"].sum() + out["alpha"].sum() + out["depth"].sum()).backward()
        sync()
        if i > 0:
            times.append(time.perf_counter() - t0)
        del out, g
    mem = torch.cuda.max_memory_allocated() / 1024**3 if device == "cuda" else max(0.0, _peak_rss_gb() - rss0)
    return min(times), mem


def _run_case_in_child(queue, threads, *case):
    if threads:
        torch.set_num_threads(threads)
    queue.put(run_case(*case))


def run_case_isolated(threads: int, *case) -> tuple[float, float]:
    """:func:`run_case` in a fresh process, so that its peak RSS is its own."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run_case_in_child, args=(queue, threads, *case))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (after one warm-up)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--backends", nargs="+", default=None, help="torch and/or gsplat (default: all present)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = args.backends
    if backends is None:
        backends = ["torch"]
        if args.device == "cuda" and gsplat_backend.is_available()[0]:
            backends.append("gsplat")
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'backend':8} {'gaussians':>9} {'views':>5} {'px':>4} {'pass':>9} {'seconds':>8} {'peak GB':>8}")
    for name in args.cases:
        n, size = CASES[name]
        for backend in backends:
            for backward in (False, True):
                case = (backend, args.device, n, size, backward, args.repeats)
                t, mem = run_case(*case) if args.device == "cuda" else run_case_isolated(args.threads, *case)
                pass_name = "fwd+bwd" if backward else "fwd"
                print(f"{backend:8} {n:>9} {8:>5} {size:>4} {pass_name:>9} {t:>8.2f} {mem:>8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
