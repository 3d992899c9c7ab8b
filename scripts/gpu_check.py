"""What only a GPU can show, in one command: the CUDA tests, gsplat against the torch rasterizer,
a short bf16 training run of ``big`` with a save and a full-state resume, and fp16 inference.

    python scripts/gpu_check.py                      # one CUDA GPU, about 5-8 minutes
    python scripts/gpu_check.py --dry-run            # the same sequence on the CPU with tiny sizes (a test)
    python scripts/gpu_check.py --skip tests --output gpu_check.json

Stages (each is timed, a failure is recorded and the next stage still runs):

1. ``tests``: ``pytest -m gpu`` (the tests marked for CUDA).
2. ``render``: 16,384 surface Gaussians x 8 views at 256 px (65,536 at 512 px too on a GPU),
   forward and forward+backward, with the torch backend and with gsplat when its kernels load
   (``gsplat_backend.is_available``); PSNR of gsplat's image against the torch backend's.
3. ``train``: ``main.py big`` on synthetic data in bf16 with LPIPS (a random VGG backbone: nothing
   can be downloaded there), EMA, the default renderer (gsplat if its kernels load, else torch),
   a checkpoint half-way, then a second run ``--resume_from latest`` to the end. Step time is
   the median of the second run's steps (``train_log.jsonl``), memory its CUDA peak. Then the
   first half again with ``--compile``: the first step's wait and the compiled step time.
4. ``infer``: ``infer.py`` on an RGBA image with a tiny random ImageDream folder (fp16 on CUDA)
   and the weights the training stage wrote: .ply and turntable .mp4, with ``--offload none``,
   ``model`` and ``sequential`` (seconds and the peak GPU memory each run added; the diffusion
   models are tiny, so the saving shown is LGM's).

Prints a table and writes every figure to ``--output`` (JSON). With ``--dry-run`` everything
runs on the CPU with a micro model and tiny images in about a minute, and the CUDA tests are not
run; ``tests/test_gpu_check.py`` runs it so that the script itself cannot rot while no GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.runtime import configure_cpu_threads  # noqa: E402

configure_cpu_threads()

import torch  # noqa: E402

STAGES = ("tests", "render", "train", "infer")

# The model and data of each mode. GPU: the published 'big' U-Net at its real input size; the
# supervision is kept at 256 px with 6 views so that the synthetic data (ray-cast on the CPU) keeps up.
TRAIN_ARGS = {
    "gpu": ["big", "--batch_size", "4", "--output_size", "256", "--num_views", "6", "--num_workers", "8",
            "--max_steps", "30", "--save_every", "15", "--log_every", "5", "--image_every", "0", "--eval_every", "0",
            "--num_eval_objects", "4", "--lambda_lpips", "1.0", "--ema_decay", "0.999", "--mixed_precision", "bf16",
            "--warmup_steps", "5"],
    "cpu": ["cpu", "--input_size", "32", "--down_channels", "32", "64", "--down_attention", "False", "True",
            "--up_channels", "64", "--up_attention", "True", "--attention_heads", "4", "--splat_size", "16",
            "--output_size", "32", "--num_views", "5", "--batch_size", "2", "--num_train_objects", "8",
            "--num_eval_objects", "2", "--num_workers", "0", "--max_steps", "4", "--save_every", "2",
            "--log_every", "1", "--image_every", "0", "--lambda_lpips", "0.5", "--ema_decay", "0.9",
            "--warmup_steps", "2"],
}
RENDER_CASES = {"gpu": [(16384, 256), (65536, 512)], "cpu": [(2048, 64)]}


# ----------------------------------------------------------------------------- stages
def stage_tests(ctx: dict) -> list[dict]:
    if ctx["dry_run"]:
        return [{"stage": "tests", "what": "pytest -m gpu", "status": "not run (dry run)"}]
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=ctx["timeout"])
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    print("\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:]))
    return [{"stage": "tests", "what": "pytest -m gpu", "status": "passed" if proc.returncode == 0 else "FAILED",
             "summary": tail[0]}]


def stage_render(ctx: dict) -> list[dict]:
    from core.gs import GaussianRenderer
    from core.options import Options
    from core.rasterizer import gsplat_backend
    from scripts.bench_render import bench_cameras, surface_scene

    device = ctx["device"]
    gsplat_ok, why = gsplat_backend.is_available() if device.type == "cuda" else (False, "no CUDA device")
    rows = []
    for n, size in RENDER_CASES[ctx["mode"]]:
        g = surface_scene(n).to(device)[None]
        cams = [c.to(device) for c in bench_cameras()]
        images = {}
        for backend in ("torch", "gsplat"):
            row = {"stage": "render", "what": f"{backend} {n} x 8 views @ {size} px"}
            if backend == "gsplat" and not gsplat_ok:
                rows.append({**row, "status": f"skipped: {why}"})
                continue
            renderer = GaussianRenderer(Options(output_size=size, renderer=backend))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)  # each backend's own peak
            forward = timed(lambda: renderer.render(g, *cams), device)
            images[backend] = forward[1]["image"]

            def step():
                x = g.clone().requires_grad_(True)
                out = renderer.render(x, *cams)
                (out["image"].sum() + out["alpha"].sum()).backward()

            backward = timed(step, device)
            rows.append({**row, "status": "ok", "forward_ms": forward[0] * 1e3, "forward_backward_ms": backward[0] * 1e3,
                         "peak_mem_gb": peak_gb(device)})
        if "gsplat" in images:
            mse = float(((images["gsplat"].float() - images["torch"].float()) ** 2).mean())
            rows[-1]["psnr_vs_torch_db"] = 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item()
    return rows


def stage_train(ctx: dict) -> list[dict]:
    ws = ctx["workdir"] / "train"
    args = TRAIN_ARGS[ctx["mode"]] + ["--workspace", str(ws)]
    steps = int(args[args.index("--max_steps") + 1])
    half = int(args[args.index("--save_every") + 1])
    first = run_main(args[:] + ["--max_steps", str(half)], ctx)
    rows = [{"stage": "train", "what": f"{args[0]}: steps 1-{half}, save", **first}]
    if first["status"] != "ok":
        return rows
    second = run_main(args + ["--resume_from", "latest"], ctx)
    log = [json.loads(line) for line in (ws / "train_log.jsonl").read_text().splitlines()]
    resumed = [r for r in log if r["step"] > half]
    times = [b["time"] - a["time"] for a, b in zip(resumed, resumed[1:])]
    second.update(
        steps_logged=[r["step"] for r in log] == list(range(1, steps + 1)),
        step_s=statistics.median(times) if times else None,
        peak_mem_gb=max((r.get("peak_mem_gb", 0.0) for r in resumed), default=None),
        final_loss=resumed[-1]["loss"] if resumed else None,
        weights=(ws / "model.safetensors").is_file() and (ws / "model_ema.safetensors").is_file(),
    )
    if second["status"] == "ok" and not (second["steps_logged"] and second["weights"]):
        second["status"] = "FAILED: steps or weights missing after the resume"
    rows.append({"stage": "train", "what": f"{args[0]}: resume at {half}, steps {half + 1}-{steps}", **second})
    ctx["weights"] = ws / "model.safetensors"
    ctx["train_args"] = args
    rows.append(compile_row(args, half, ctx))
    return rows


def compile_row(args: list[str], steps: int, ctx: dict) -> dict:
    """The same training with --compile (fresh workspace, no evaluation): the first step's wait
    (compiling) and the median step time, to set beside the eager run's."""
    row = {"stage": "train", "what": f"{args[0]}: --compile, steps 1-{steps}"}
    if ctx["dry_run"]:  # inductor needs a minute on 2 CPU cores for the micro model; tests/test_compile.py covers it
        return {**row, "status": "not run (dry run)"}
    ws = ctx["workdir"] / "train_compile"
    result = run_main(TRAIN_ARGS[ctx["mode"]] + ["--workspace", str(ws), "--max_steps", str(steps), "--compile",
                                                 "--num_eval_objects", "0", "--save_every", "0"], ctx)
    log = [json.loads(line) for line in (ws / "train_log.jsonl").read_text().splitlines()] if result["status"] == "ok" else []
    times = [b["time"] - a["time"] for a, b in zip(log[1:], log[2:])]
    return {**row, **result, "first_step_s": log[0]["time"] if log else None,
            "step_s": statistics.median(times) if times else None,
            "peak_mem_gb": max((r["peak_mem_gb"] for r in log), default=None)}


def stage_infer(ctx: dict) -> list[dict]:
    import numpy as np

    import infer
    from core.images import write_image
    from core.mvdiffusion.tiny import save_tiny_pipeline
    from core.options import config_defaults, replace

    row = {"stage": "infer", "what": "image -> tiny ImageDream -> LGM -> .ply + .mp4"}
    if "weights" not in ctx:
        return [{**row, "status": "skipped: no weights from the train stage"}]
    args = ctx["train_args"]
    if ctx["mode"] == "gpu":
        preset = "big"
    else:  # the micro model of the dry run, registered as a preset for infer.py
        import tyro

        from core.options import AllConfigs

        opt = tyro.cli(AllConfigs, args=args[: args.index("--max_steps")])
        preset = "gpu_check_micro"
        config_defaults[preset] = replace(opt, renderer="torch")
    folder = save_tiny_pipeline(ctx["workdir"] / "imagedream", imagedream=True)
    yy, xx = np.mgrid[0:128, 0:128]
    rgba = np.zeros((128, 128, 4), np.float32)
    rgba[..., 0], rgba[..., 2], rgba[..., 3] = 0.9, 0.3, (((yy - 64) / 40.0) ** 2 + ((xx - 64) / 30.0) ** 2 <= 1)
    write_image(ctx["workdir"] / "object.png", rgba)

    def argv(mode: str, out: Path) -> list:
        return [ctx["workdir"] / "object.png", "--preset", preset, "--resume", ctx["weights"], "--mv_model", folder,
                "--steps", "2", "--workspace", out, "--video_frames", "8", "--offload", mode]

    dtype = "fp16" if ctx["device"].type == "cuda" else "fp32"
    infer.measure_run(argv("none", ctx["workdir"] / "infer_warmup"))  # CUDA libraries' one-time buffers
    rows = []
    for mode in ("none", "model", "sequential"):  # low-memory inference: peak GPU memory of each mode
        out = ctx["workdir"] / ("infer" if mode == "none" else f"infer_{mode}")
        seconds, peak = infer.measure_run(argv(mode, out))
        files = sorted(p.name for p in out.glob("*"))
        ok = "object.ply" in files and "object.mp4" in files
        rows.append({**row, "what": f"{row['what']}, --offload {mode}", "status": "ok" if ok else f"FAILED (files {files})",
                     "seconds": seconds, "peak_mem_gb": peak, "dtype": dtype})
    return rows


# ----------------------------------------------------------------------------- helpers
def timed(fn, device, repeats: int = 3):
    """(best seconds of ``repeats`` after a warm-up, the last result)."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device) -> float:
    from core.training import peak_memory_gb

    return peak_memory_gb(device)


def run_main(args: list[str], ctx: dict) -> dict:
    """``main.py ARGS`` in a fresh process whose LPIPS has a random backbone. -> {status, seconds}"""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--as-main", *args], cwd=ctx["workdir"], env=env,
                          capture_output=True, text=True, timeout=ctx["timeout"])
    out = proc.stdout + proc.stderr
    (ctx["workdir"] / "train_output.txt").open("a").write(out)
    if proc.returncode != 0:
        print(out[-4000:])
    return {"status": "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})", "seconds": time.perf_counter() - start}


def main_with_random_lpips(argv: list[str]) -> int:
    """main.py, with LPIPS built on a random VGG backbone (the GPU machine cannot download it)."""
    from core import metrics, models

    def random_backbone(pretrained_backbone: bool = True):
        return metrics.build_lpips(pretrained_backbone=False)

    models.build_lpips = random_backbone
    sys.argv = ["main.py", *argv]
    import main

    return main.main()


def print_table(rows: list[dict]) -> None:
    keys = ("status", "seconds", "step_s", "first_step_s", "forward_ms", "forward_backward_ms", "psnr_vs_torch_db",
            "peak_mem_gb")
    print(f"\n{'stage':<7} {'what':<46} " + " ".join(f"{k:>19}" for k in keys))
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k)
            cells.append(f"{v:>19.3f}" if isinstance(v, float) else f"{str(v if v is not None else ''):>19.19}")
        print(f"{r['stage']:<7} {r['what']:<46.46} " + " ".join(cells))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--as-main"]:
        return main_with_random_lpips(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same sequence on the CPU with tiny sizes")
    parser.add_argument("--skip", nargs="*", default=[], choices=STAGES, help="stages to leave out")
    parser.add_argument("--output", default="gpu_check.json", help="JSON file of every figure")
    parser.add_argument("--workdir", default=None, help="folder for runs and outputs (default: a temporary one)")
    parser.add_argument("--timeout", type=int, default=480, help="seconds allowed to each subprocess")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device; use --dry-run to run the sequence on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        ctx = {"dry_run": args.dry_run, "mode": "cpu" if args.dry_run else "gpu", "device": device,
               "workdir": workdir, "timeout": args.timeout}
        info = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__,
                "dry_run": args.dry_run}
        rows = []
        for name in STAGES:
            if name in args.skip:
                continue
            print(f"[gpu_check] {name} ...", flush=True)
            start = time.perf_counter()
            try:
                rows += globals()[f"stage_{name}"](ctx)
            except Exception as e:  # record and go on: one broken stage must not hide the others
                traceback.print_exc()
                rows.append({"stage": name, "what": "(stage)", "status": f"FAILED: {type(e).__name__}: {e}"})
            print(f"[gpu_check] {name} done in {time.perf_counter() - start:.1f} s", flush=True)
    print_table(rows)
    Path(args.output).write_text(json.dumps({**info, "rows": rows}, indent=2, default=str))
    print(f"\nfigures: {args.output}")
    failed = [r for r in rows if str(r.get("status", "")).startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
