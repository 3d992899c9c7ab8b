"""Seconds per training step and peak memory, on an idle machine and beside a busy process.

    python scripts/bench_train.py                  # the cpu preset on CPU (+ big at batch 1 on CUDA)
    python scripts/bench_train.py --presets cpu --steps 5 --no-contention

Steps run the real loss (MSE + LPIPS when the preset uses it, with a random LPIPS backbone here so
no download is needed) on synthetic data, with AdamW; the first step is a warm-up and not timed.
On the CPU each preset is timed twice: alone, then while one other process keeps a core busy
(what a shared machine looks like); the ratio should stay near 2 (about 2.5 at most), not the
several-fold slowdown of spinning OpenMP threads.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.runtime import configure_cpu_threads  # noqa: E402

configure_cpu_threads()  # before torch loads OpenMP, as every entry point does

import torch  # noqa: E402

from core.datasets.synthetic import SyntheticDataset  # noqa: E402
from core.models import LGM  # noqa: E402
from core.options import config_defaults, replace  # noqa: E402
from core.training import collate  # noqa: E402


def bench(preset: str, device: str, batch_size: int, steps: int, bf16: bool) -> tuple[float, float]:
    opt = replace(config_defaults[preset], batch_size=batch_size)
    model = LGM(opt, lpips_pretrained=False).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05, betas=(0.9, 0.95))
    ds = SyntheticDataset(opt, "train")
    batch = collate([ds[i] for i in range(batch_size)])
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    if device == "cuda":
        mem = torch.cuda.max_memory_allocated() / 1024**3
    else:
        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return sum(times) / len(times), mem


def busy_loop() -> None:
    """A competing process: keeps one core busy until terminated."""
    x = 0
    while True:
        x += 1


def main() -> None:
    import multiprocessing

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=None, help="default: cpu on CPU, plus big on CUDA")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--no-contention", action="store_true", help="skip the timing beside a busy process")
    args = ap.parse_args()
    runs = [("cpu", "cpu", config_defaults["cpu"].batch_size, False)]
    if torch.cuda.is_available():
        runs += [("big", "cuda", 1, True)]
    if args.presets:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        runs = [(p, dev, config_defaults[p].batch_size if p == "cpu" else 1, dev == "cuda") for p in args.presets]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"{'preset':7} {'device':6} {'batch':>5} {'dtype':6} {'s/step':>8} {'peak mem GB':>12}  {'beside a busy process':>22}")
    for preset, device, bs, bf16 in runs:
        t, mem = bench(preset, device, bs, args.steps, bf16)
        kind = "cuda peak" if device == "cuda" else "peak RSS"
        line = f"{preset:7} {device:6} {bs:5d} {'bf16' if bf16 else 'fp32':6} {t:8.3f} {mem:9.2f} ({kind})"
        if device == "cpu" and not args.no_contention:
            rival = multiprocessing.get_context("spawn").Process(target=busy_loop, daemon=True)
            rival.start()
            try:
                t_busy, _ = bench(preset, device, bs, args.steps, bf16)
            finally:
                rival.terminate()
                rival.join()
            line += f"  {t_busy:8.3f} s/step ({t_busy / t:.2f}x)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
