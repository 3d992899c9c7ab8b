"""Forward time and peak memory of the LGM U-Net (batch 1 = 4 views).

    python scripts/bench_unet.py                       # tiny and big, fp32 on CPU (+ bf16/fp16 on CUDA)
    python scripts/bench_unet.py --presets tiny --repeats 5
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.runtime import configure_cpu_threads  # noqa: E402

configure_cpu_threads()  # before torch loads OpenMP: idle threads sleep on a shared machine

import torch  # noqa: E402

from core.models import LGM  # noqa: E402
from core.options import config_defaults  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "big"], choices=sorted(config_defaults))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    runs = [("cpu", torch.float32)]
    if torch.cuda.is_available():
        runs += [("cuda", torch.float32), ("cuda", torch.bfloat16), ("cuda", torch.float16)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'preset':8} {'device':6} {'dtype':9} {'forward s':>10} {'peak mem GB':>12}")
    for preset in args.presets:
        for device, dtype in runs:
            t, mem = bench(preset, device, dtype, args.repeats, config_defaults[preset].input_size)
            kind = "peak RSS" if device == "cpu" else "cuda peak"
            print(f"{preset:8} {device:6} {str(dtype).split('.')[-1]:9} {t:10.3f} {mem:9.2f} ({kind})", flush=True)


if __name__ == "__main__":
    main()
