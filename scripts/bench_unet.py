"""Forward time and peak memory of the LGM U-Net (batch 1 = 4 views); with --compile, eager vs torch.compile.

    python scripts/bench_unet.py                       # tiny and big, fp32 on CPU (+ bf16/fp16 on CUDA)
    python scripts/bench_unet.py --presets tiny --repeats 5
    python scripts/bench_unet.py --compile             # the cpu preset: eager vs compiled U-Net (~1.5 min on 2 cores)
    python scripts/bench_unet.py --compile --presets cpu tiny --batch 8 1    # tiny: several minutes more

--compile times ``forward_gaussians`` twice, for a model as it is and for a copy with the same
weights whose U-Net is compiled (``core.models.compile_unet``): inference (eval mode, no grad) and
training (train mode, forward + backward of a squared-output loss; rendering and the optimizer are
left out, they are the same either way). The two models run in alternation, so that load from
other processes slows both alike; the best of --repeats runs is reported. "compile" is the first
call of the compiled model minus an eager call: what a run waits before its first step (plus the
compiler's start-up, printed once), with an empty inductor cache (--warm-cache reuses the kernels
of earlier runs: far shorter). The largest difference between compiled and eager outputs and
gradients (relative to the largest gradient) shows that results stay within float tolerance.
On CUDA it runs in fp32 and bf16 autocast instead of on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import resource
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.runtime import configure_cpu_threads  # noqa: E402

configure_cpu_threads()  # before torch loads OpenMP: idle threads sleep on a shared machine

import torch  # noqa: E402

from core.models import LGM, compile_unet, unet_input_channels  # noqa: E402
from core.options import config_defaults, replace  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def bench(preset: str, device: str, dtype: torch.dtype, repeats: int, size: int) -> tuple[float, float]:
    opt = config_defaults[preset]
    model = LGM(opt).to(device).eval()
    rays = model.prepare_default_rays(device)  # [4, 6, H, W]
    if size != opt.input_size:
        raise SystemExit(f"--size {size} differs from preset input_size {opt.input_size}")
    images = torch.cat([torch.randn(4, 3, size, size, device=device), rays], dim=1)[None]  # [1, 4, 9, H, W]
    autocast = torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32)
    times = []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode(), autocast:
        for i in range(repeats + 1):  # first run warms up
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.forward_gaussians(images)
            if device == "cuda":
                torch.cuda.synchronize()
            if i > 0:
                times.append(time.perf_counter() - t0)
    mem = torch.cuda.max_memory_allocated() / 1024**3 if device == "cuda" else peak_rss_gb()
    return min(times), mem


# ---------------------------------------------------------------------- --compile: eager vs compiled
def object_views(opt, batch: int, device: str) -> torch.Tensor:
    """A plausible model input: ``batch`` objects (a noise square on white) seen by the 4 default cameras."""
    from core.cameras import default_input_poses, model_input

    s = opt.input_size
    g = torch.Generator().manual_seed(0)
    rgb = torch.ones(batch * 4, 3, s, s)
    rgb[..., s // 4: 3 * s // 4, s // 4: 3 * s // 4] = torch.rand(batch * 4, 3, s // 2, s // 2, generator=g)
    poses = default_input_poses(0.0, opt.cam_radius).repeat(batch, 1, 1)
    return model_input(rgb, poses, opt.fovy).view(batch, 4, 9, s, s).to(device)


def timed(fn, device: str) -> tuple[float, object]:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def compare(opt, device: str, dtype: torch.dtype, batch: int, repeats: int, train: bool) -> dict:
    """Eager vs compiled U-Net for one preset's options: inference forward, or training forward + backward."""
    torch.manual_seed(0)
    eager = LGM(opt, lpips_pretrained=False).to(device).train(train)
    compiled = compile_unet(copy.deepcopy(eager))
    x = object_views(opt, batch, device)
    autocast = torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32)

    def run(model):
        with autocast, torch.set_grad_enabled(train):
            g = model.forward_gaussians(x)
            if train:
                model.zero_grad(set_to_none=True)
                g.float().square().mean().backward()
        return g.detach().float()

    t_eager, out_eager = timed(lambda: run(eager), device)  # eager warm-up (allocator, oneDNN primitives)
    t_first, out_comp = timed(lambda: run(compiled), device)
    grads = [(p.grad, q.grad) for p, q in zip(eager.parameters(), compiled.parameters())] if train else []
    best_eager, best_comp = float("inf"), float("inf")
    for _ in range(repeats):  # in alternation: other processes' load reaches both alike
        best_eager = min(best_eager, timed(lambda: run(eager), device)[0])
        best_comp = min(best_comp, timed(lambda: run(compiled), device)[0])
    out = {
        "compile": max(t_first - t_eager, 0.0), "eager": best_eager, "compiled": best_comp,
        "out_diff": (out_comp - out_eager).abs().max().item(),
    }
    if train:
        scale = max(a.abs().max().item() for a, _ in grads)
        out["grad_diff"] = max((a - b).abs().max().item() for a, b in grads) / max(scale, 1e-30)
    return out


def fresh_inductor_cache():
    """An empty, temporary inductor cache for the compile times of a first run (a private torch API)."""
    import torch._inductor.utils as inductor_utils

    fresh = getattr(inductor_utils, "fresh_cache", None) or getattr(inductor_utils, "fresh_inductor_cache", None)
    if fresh is None:
        print("note: this torch has no fresh inductor cache; compile times may reuse earlier runs' kernels")
        return contextlib.nullcontext()
    return fresh()


def main_compile(args, runs) -> None:
    presets = args.presets or ["cpu"]
    batches = args.batch or [1]
    if len(batches) not in (1, len(presets)):
        raise SystemExit(f"--batch takes one size, or one per preset ({len(presets)})")
    batches = batches * len(presets) if len(batches) == 1 else batches
    cache = "inductor cache kept (--warm-cache)" if args.warm_cache else "empty inductor cache per pass"
    if args.grad_checkpoint:
        cache += "; --grad-checkpoint"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; forward_gaussians, eager vs U-Net compiled; "
          f"best of {args.repeats}; {cache}")
    print("note: on a shared machine (a few cores, other jobs running) timings vary: compare the ratios within one run")
    with contextlib.nullcontext() if args.warm_cache else fresh_inductor_cache():
        t0 = time.perf_counter()
        torch.compile(lambda t: torch.sin(t) + 1)(torch.randn(8))  # imports, compiler checks: once per process
        print(f"compiler start-up (once per process, before the first model compiles): {time.perf_counter() - t0:.1f} s")
    print(f"{'preset':7} {'device':6} {'dtype':8} {'batch':>5} {'pass':8} {'compile s':>9} {'eager s':>8} {'compiled s':>10} "
          f"{'speed-up':>8} {'max|out diff|':>13} {'max|grad diff|/max|grad|':>24}")
    for preset, batch in zip(presets, batches):
        opt = replace(config_defaults[preset], grad_checkpoint=args.grad_checkpoint)
        for device, dtype in runs:
            for train in (False, True):
                with contextlib.nullcontext() if args.warm_cache else fresh_inductor_cache():
                    r = compare(opt, device, dtype, batch, args.repeats, train)
                grad = f"{r['grad_diff']:24.1e}" if train else f"{'-':>24}"
                print(f"{preset:7} {device:6} {str(dtype).split('.')[-1]:8} {batch:5d} {'fwd+bwd' if train else 'forward':8} "
                      f"{r['compile']:9.1f} {r['eager']:8.4f} {r['compiled']:10.4f} {r['eager'] / r['compiled']:7.2f}x "
                      f"{r['out_diff']:13.1e} {grad}", flush=True)
                torch._dynamo.reset()  # the next model compiles from scratch, within the recompile limit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=None, choices=sorted(config_defaults),
                    help="default: tiny and big; cpu with --compile")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--compile", action="store_true", help="eager vs torch.compile'd U-Net, forward and forward+backward")
    ap.add_argument("--batch", type=int, nargs="+", default=None,
                    help="--compile: objects per batch (4 views each), one for all presets or one per preset (default 1)")
    ap.add_argument("--warm-cache", action="store_true", help="--compile: reuse kernels compiled by earlier runs")
    ap.add_argument("--grad-checkpoint", action="store_true", help="--compile: with activation checkpointing (training)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    runs = [("cpu", torch.float32)]
    if args.compile:
        if torch.cuda.is_available():
            runs = [("cuda", torch.float32), ("cuda", torch.bfloat16)]  # a GPU user's question; the CPU one is slow
        return main_compile(args, runs)
    if torch.cuda.is_available():
        runs += [("cuda", torch.float32), ("cuda", torch.bfloat16), ("cuda", torch.float16)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'preset':8} {'device':6} {'dtype':9} {'forward s':>10} {'peak mem GB':>12}")
    for preset in args.presets or ["tiny", "big"]:
        for device, dtype in runs:
            t, mem = bench(preset, device, dtype, args.repeats, config_defaults[preset].input_size)
            kind = "peak RSS" if device == "cpu" else "cuda peak"
            print(f"{preset:8} {device:6} {str(dtype).split('.')[-1]:9} {t:10.3f} {mem:9.2f} ({kind})", flush=True)


if __name__ == "__main__":
    main()
