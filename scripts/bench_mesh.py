"""Benchmark of the mesh export on a model-sized input: seconds and peak memory of
``scripts/convert_mesh.py`` on 65,536 Gaussians (the ``big`` preset's 4 x 128^2), as a user runs it.

    python scripts/bench_mesh.py                                        # big: 4 x 128^2 Gaussians
    python scripts/bench_mesh.py --splat-size 64 --threads 2 --object 3  # 16,384 Gaussians, another object

The input stands in for an LGM reconstruction of one of the embedded synthetic objects: one
Gaussian per pixel of the 4 default input views (``--splat-size`` pixels square), placed where the
pixel's ray hits the object (ray-cast exactly, ``core.datasets.synthetic``) with a little depth
noise, about a pixel's footprint wide, coloured with the lit object colour the views show; pixels
of the background get transparent Gaussians behind the object, as LGM's do, and a few small
clusters of opaque floaters are scattered around it. The PLY goes through
``scripts/convert_mesh.py`` in a child process (imports included); its wall time and peak RSS
(``getrusage`` of the child) are printed, with the time of each step.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.runtime import configure_cpu_threads  # noqa: E402

configure_cpu_threads()  # before torch loads OpenMP: idle threads sleep on a shared machine

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from core.cameras import default_input_poses, get_rays  # noqa: E402
from core.datasets.synthetic import OBJECT_BOUND, cast_rays, sample_object, shade  # noqa: E402
from core.options import Options  # noqa: E402


def lgm_like_gaussians(object_seed: int = 0, splat_size: int = 128, floaters: int = 6, seed: int = 0):
    """Pixel-aligned Gaussians of a synthetic object, the way a well-trained LGM lays them out.

    -> (gaussians [4 * splat_size^2, 14] float32, the object's ObjectSpec). Deterministic.
    """
    opt = Options()
    g = torch.Generator().manual_seed(seed)
    spec = sample_object(torch.Generator().manual_seed(object_seed), OBJECT_BOUND)
    c2w = default_input_poses(0.0, opt.cam_radius)  # [4, 4, 4]
    rays_o, rays_d = get_rays(c2w, splat_size, splat_size, opt.fovy)  # [4, S, S, 3]
    o, d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)  # [N, 3]
    n = o.shape[0]
    t, prim = cast_rays(spec, o, d)
    rgb = shade(spec, o, d, t, prim)  # [N, 3], white on misses
    hit = prim >= 0
    pixel = 2.0 * math.tan(math.radians(opt.fovy) / 2) / splat_size  # footprint per unit of depth

    depth = torch.where(hit, t, opt.cam_radius + 0.3 + 0.5 * torch.rand(n, generator=g))
    depth = depth + torch.where(hit, 0.002 * torch.randn(n, generator=g), torch.zeros(n))
    xyz = (o + depth[:, None] * d).clamp(-1, 1)
    size = depth * pixel  # [N]
    scale = size[:, None] * (0.35 + 0.35 * torch.rand(n, 3, generator=g))  # [N, 3] anisotropic
    rot = F.normalize(torch.randn(n, 4, generator=g), dim=1)
    opacity = torch.where(hit, 0.75 + 0.25 * torch.rand(n, generator=g), 0.004 * torch.rand(n, generator=g))
    gaussians = torch.cat([xyz, opacity[:, None], scale, rot, rgb], dim=1)

    # floaters: clusters of 24 opaque Gaussians hovering near the object, taking background rows
    background = (~hit).nonzero()[:, 0]
    for k in range(min(floaters, background.numel() // 24)):
        rows = background[k * 24 : (k + 1) * 24]
        centre = F.normalize(torch.randn(3, generator=g), dim=0) * (OBJECT_BOUND + 0.15)
        gaussians[rows, 0:3] = centre + 0.01 * torch.randn(24, 3, generator=g)
        gaussians[rows, 3] = 0.9
        gaussians[rows, 4:7] = 0.006
        gaussians[rows, 11:14] = torch.rand(3, generator=g)
    return gaussians.float(), spec


@dataclass
class BenchArgs:
    splat_size: int = 128
    """Gaussians per view side: 128 is the big preset (4 x 128^2 = 65,536 Gaussians)."""
    object: int = 0
    """Seed of the synthetic object."""
    floaters: int = 6
    """Clusters of opaque floaters around the object (they widen the grid's box)."""
    threads: int = 2
    """torch threads of the conversion (OMP_NUM_THREADS)."""
    resolution: int = 0
    """Grid resolution to pass to convert_mesh.py (0: its default)."""
    faces: int = 0
    """Face count to pass to convert_mesh.py (0: its default)."""
    keep: str = ""
    """Folder to keep the PLY and the .glb in (default: a temporary folder)."""


def main() -> int:
    import tyro

    from core.gs import save_ply

    args = tyro.cli(BenchArgs, description=__doc__)
    gaussians, _ = lgm_like_gaussians(args.object, args.splat_size, floaters=args.floaters)
    with tempfile.TemporaryDirectory(prefix="bench_mesh_") as scratch:
        folder = Path(args.keep) if args.keep else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        ply, glb = folder / "model.ply", folder / "model.glb"
        save_ply(gaussians, ply)
        cmd = [sys.executable, str(Path(__file__).resolve().parent / "convert_mesh.py"), str(ply), "--output", str(glb)]
        cmd += ["--device", "cpu", "--info-json", str(folder / "info.json")]
        if args.resolution:
            cmd += ["--resolution", str(args.resolution)]
        if args.faces:
            cmd += ["--faces", str(args.faces)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OMP_WAIT_POLICY": "PASSIVE"}
        start = time.perf_counter()
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if run.returncode != 0:
            print(run.stderr, file=sys.stderr)
            return run.returncode
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        info = json.loads((folder / "info.json").read_text())
    peak_gb = usage.ru_maxrss / 1024**2  # kB on Linux
    steps = ", ".join(f"{k} {v:.2f}" for k, v in info["seconds"].items() if k != "total")
    load = os.getloadavg()[0]
    print(f"convert_mesh.py on {gaussians.shape[0]:,} Gaussians ({args.threads} threads): {seconds:.1f} s wall "
          f"({usage.ru_utime + usage.ru_stime:.1f} s CPU), peak RSS {peak_gb:.2f} GB; load average {load:.1f}")  # fmt: skip
    print(f"  grid {info['grid']}, {info['faces']:,} faces, {info['vertices']:,} vertices, texture "
          f"{info['texture_size']}^2; steps (s): {steps}")  # fmt: skip
    if args.keep:
        print(f"  files in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
