"""Train LGM: the explicit Accelerate loop.

    python main.py cpu --max_steps 440 --export_objects 2             # 2-core CPU, synthetic data
    accelerate launch --config_file acc_configs/gpu8.yaml main.py big --dataset folder --data_root DATA
    python main.py big --resume_from latest                            # continue a stopped run

The story of a run, top to bottom: options -> Accelerator -> model, data, optimizer, schedule ->
(resume) -> loop (forward, backward, clip, step, EMA, logs, images, eval, checkpoints) -> final
checkpoint, weights for inference, evaluation and exports of held-out objects.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

from core.runtime import configure_cpu_threads

configure_cpu_threads()  # before torch loads OpenMP: idle threads sleep, so a busy machine does not stall us

import torch  # noqa: E402


def main() -> int:
    """Parse the options (tyro shows bad ones as one screen, exit code 2) and train; errors a person
    can act on are shown the same way (core.errors), a full disk says which checkpoint is intact."""
    import tyro

    from core.errors import run
    from core.options import AllConfigs

    opt = tyro.cli(AllConfigs)
    return run(lambda: train(opt), "main.py", disk_full_note=lambda: intact_checkpoint_note(opt.workspace),
               interrupt_note="the latest complete checkpoint is kept; continue with --resume_from latest")


def intact_checkpoint_note(workspace) -> str:
    from core.training import checkpoint_dirs

    latest = checkpoint_dirs(workspace)
    if not latest:
        return "No checkpoint was saved yet."
    return f"The last complete checkpoint, {latest[-1]}, is intact: free some space and continue with --resume_from latest."


def train(opt) -> int:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm

    from core import training as T
    from core.errors import show
    from core.metrics import LPIPSUnavailableError
    from core.models import LGM
    from core.outputs import OutputError, WorkspaceLock, prepare_output_dir
    from core.weights import load_weights

    # the checkpoint to continue, found before anything is created (nothing to continue: no new folder)
    ckpt = T.resolve_resume_dir(Path(opt.workspace).expanduser(), opt.resume_from) if opt.resume_from else None
    ws = prepare_output_dir(opt.workspace, "--workspace")
    start_step = T.read_progress(ckpt)["step"] if ckpt is not None else 0
    trackers, tracker_notes = T.build_trackers(opt.report_to, ws, purge_step=start_step + 1 if start_step else None)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # several CPU processes then talk over gloo
        mixed_precision=opt.mixed_precision if torch.cuda.is_available() else "no",
        gradient_accumulation_steps=opt.gradient_accumulation_steps,
        log_with=trackers or None,  # --report_to
        project_dir=str(ws),
    )
    main_proc = accelerator.is_main_process
    say = accelerator.print

    def refuse(message: str, code: int = 2) -> int:
        """Stop every process with ``code``; the main process shows why (as core.errors does)."""
        if main_proc:
            show(message, "main.py")
        return code
    set_seed(opt.seed)

    # ------------------------------------------------------------------ one run per workspace
    # The main process locks the workspace for as long as it runs (released by the OS when it ends,
    # however it ends) and refuses a fresh run over an earlier one unless --overwrite.
    problem = ""
    if main_proc:
        try:
            lock = WorkspaceLock(ws).acquire()  # noqa: F841 (held until this process ends)
            if not opt.resume_from:
                removed = T.check_fresh_run(ws, opt.overwrite)
                if removed:
                    say(f"[workspace] --overwrite: removed the earlier run's {', '.join(removed)} from {ws}")
        except OutputError as e:
            problem = str(e)
    if bool(accelerator.gather(torch.tensor([problem != ""], device=accelerator.device)).any()):
        return refuse(problem)
    if accelerator.device.type == "cuda" and opt.renderer != "torch":  # load (or compile) gsplat's kernels, main process first
        from core.rasterizer import gsplat_backend

        ok, why = gsplat_backend.load_kernels_in_order(accelerator)
        if not ok and opt.renderer == "gsplat":
            return refuse(f"--renderer gsplat, but gsplat cannot be used: {why}")
        say("[render] gsplat's CUDA kernels loaded" if ok else f"[render] gsplat unavailable ({why}): the pure-PyTorch rasterizer renders")

    # ------------------------------------------------------------------ model
    model = LGM(opt)
    if opt.resume:
        report = load_weights(model, opt.resume, strict=False)
        say(f"[resume] weights from {opt.resume}{describe_resume_weights(opt)}: {report.summary()}")
    if opt.lambda_lpips > 0:
        try:
            _ = model.lpips  # fail now, not at the first step
        except LPIPSUnavailableError as e:
            return refuse(str(e))
    if opt.compile:  # in place, before accelerator.prepare: weight names stay unet.* / conv.*
        from core.models import compile_unet

        compile_unet(model)
        say("[compile] torch.compile of the U-Net: the first step waits while it compiles (on a GPU typically tens of "
            "seconds to minutes), the first evaluation and a new batch size compile once more")

    # ------------------------------------------------------------------ data
    train_ds, eval_ds = T.build_datasets(opt)
    train_loader, eval_loader = T.build_loaders(opt, train_ds, eval_ds, accelerator)  # on the device, split across processes
    if len(train_loader) == 0:
        return refuse(f"{len(train_ds)} training objects is fewer than one batch of {opt.batch_size}; lower --batch_size")

    # ------------------------------------------------------------------ optimizer and schedule
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay, betas=(0.9, 0.95))
    model, optimizer = accelerator.prepare(model, optimizer)
    steps_per_epoch = T.steps_per_epoch(len(train_loader), opt.gradient_accumulation_steps)
    total_steps = opt.max_steps if opt.max_steps is not None else opt.num_epochs * steps_per_epoch
    raw_model = accelerator.unwrap_model(model)
    ema = T.EMA(raw_model, opt.ema_decay) if opt.ema_decay > 0 else None

    # ------------------------------------------------------------------ resume the full state
    global_step = 0
    if ckpt is not None:
        progress = T.load_checkpoint(accelerator, ckpt, raw_model, ema)
        global_step = progress["step"]
        planned = progress.get("total_steps", total_steps)
        change = f"; schedule re-planned for {total_steps} steps (was {planned})" if planned != total_steps else ""
        say(f"[resume_from] {ckpt}: continuing at step {global_step}{change}")
        if main_proc:
            T.truncate_logs(ws, global_step)  # steps after the checkpoint are replayed: log them once
    scheduler = T.build_scheduler(optimizer, opt, total_steps, global_step)  # a function of the step: never loaded

    for note in tracker_notes:
        say(note)
    accelerator.init_trackers("lgm", config={k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(opt).items()})
    say(
        f"[train] {sum(p.numel() for p in raw_model.parameters()) / 1e6:.1f}M parameters, {len(train_ds)} train / "
        f"{len(eval_ds)} eval objects, {accelerator.num_processes} process(es) on {accelerator.device}, "
        f"{steps_per_epoch} steps per epoch, {total_steps} steps, workspace {ws}"
    )
    # One LPIPS network per run, on the device: the loss's (it follows the model), else one for evaluation.
    lpips_eval = raw_model.lpips if opt.lambda_lpips > 0 else T.try_build_lpips(accelerator.device)
    if len(eval_ds) == 0:
        say("[eval] no held-out objects (--num_eval_objects 0): evaluation is skipped")

    evals: dict[int, Optional[dict]] = {}  # step -> results of the evaluations run so far

    def run_eval(step: int) -> Optional[dict]:
        if len(eval_ds) == 0:
            evals[step] = None
            return None
        model.eval()
        with ema.applied_to(raw_model) if ema is not None else contextlib.nullcontext():
            with accelerator.autocast():  # the training precision (bf16 on GPUs); metrics in fp32 (score_batch)
                res = T.evaluate(raw_model, eval_loader, opt, lpips_eval, accelerator)
        model.train()
        evals[step] = res
        if main_proc:
            T.append_jsonl(ws / "metrics.jsonl", {"step": step, **res})
            accelerator.log({f"eval/{k}": v for k, v in res.items() if isinstance(v, float)}, step=step)
            lp = f"{res['lpips']:.4f}" if res["lpips"] is not None else "n/a (no VGG backbone offline)"
            if res["psnr"] is None:
                say(f"[eval] step {step}: no held-out object could be scored")
                return res
            say(
                f"[eval] step {step}: PSNR {res['psnr']:.2f} dB (blank white {res['psnr_blank']:.2f} dB), "
                f"SSIM {res['ssim']:.4f}, LPIPS {lp} on {res['num_objects']} held-out objects"
            )
        return res

    def save(step: int, epoch: int) -> None:
        T.save_checkpoint(accelerator, ws, step, {"step": step, "epoch": epoch, "total_steps": total_steps}, opt.keep_last, ema)
        if main_proc:
            T.export_weights(raw_model, ema, ws)

    # SIGTERM (schedulers, before preemption) or Ctrl-C: finish the step, save it, stop. A second Ctrl-C stops at once.
    stop_signal = T.StopRequest()

    # ------------------------------------------------------------------ the loop
    model.train()
    epoch, skip = T.loader_position(global_step, len(train_loader), opt.gradient_accumulation_steps)
    t0, last_log, nonfinite, last_saved = time.time(), time.time(), 0, global_step
    pbar = tqdm(total=total_steps, initial=global_step, disable=not main_proc, desc="train", dynamic_ncols=True)
    stop, signalled = global_step >= total_steps, False
    while not stop:
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        T.set_epoch(loader, epoch)  # the sampler's order and the dataset's augmentations, on every process
        skip = 0
        for data in loader:
            with accelerator.accumulate(model):
                out = model(data, step_ratio=global_step / total_steps)
                loss = out["loss"]
                finite = bool(accelerator.gather(torch.isfinite(loss.detach()).reshape(1)).all())
                if not finite:
                    nonfinite += 1
                    optimizer.zero_grad()
                    warnings.warn(f"step {global_step}: non-finite loss ({loss.item()}), step skipped")
                    if nonfinite >= opt.max_nonfinite_steps:
                        return refuse(f"{nonfinite} non-finite losses in a row; lower --lr or check the data", 3)
                    continue
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients and opt.gradient_clip > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), opt.gradient_clip)
                optimizer.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue

            # -------------------------------------------------- one optimizer step done
            nonfinite = 0
            scheduler.step()
            global_step += 1
            if ema is not None:
                ema.update(raw_model)
            loss_v = accelerator.reduce(loss.detach(), "mean").item()
            psnr_v = accelerator.reduce(out["psnr"].detach(), "mean").item()
            lr = scheduler.get_last_lr()[0]
            if main_proc:
                scalars = {"train/loss": loss_v, "train/psnr": psnr_v, "train/lr": lr}
                scalars.update({f"train/{k}": v.item() for k, v in out.items() if k.startswith("loss_")})
                if grad_norm is not None:
                    scalars["train/grad_norm"] = float(grad_norm)
                accelerator.log(scalars, step=global_step)
                T.append_jsonl(ws / "train_log.jsonl", {"step": global_step, **{k.split("/")[1]: v for k, v in scalars.items()},
                                                        "time": round(time.time() - t0, 3),
                                                        "peak_mem_gb": round(T.peak_memory_gb(accelerator.device), 3)})
                pbar.set_postfix(loss=f"{loss_v:.4f}", psnr=f"{psnr_v:.2f}", lr=f"{lr:.2e}")
                pbar.update(1)
                if global_step % opt.log_every == 0:
                    rate = opt.log_every / max(time.time() - last_log, 1e-9)
                    last_log = time.time()
                    pbar.write(
                        f"[step {global_step}/{total_steps}] epoch {epoch} loss {loss_v:.5f} psnr {psnr_v:.2f} "
                        f"lr {lr:.2e} {rate:.2f} it/s mem {T.memory_gb(accelerator.device)}"
                    )
                if opt.image_every and global_step % opt.image_every == 0:
                    grid = T.save_image_grid(ws / "images" / f"train_{global_step:07d}.jpg", data, out)
                    T.log_image(accelerator, "train/inputs_gt_pred", grid, global_step)
            if opt.eval_every and global_step % opt.eval_every == 0:
                run_eval(global_step)
            if opt.save_every and global_step % opt.save_every == 0:
                save(global_step, epoch)
                last_saved = global_step
            out_of_time = opt.max_minutes is not None and (time.time() - t0) > opt.max_minutes * 60
            flags = accelerator.gather(torch.tensor([[out_of_time, stop_signal.received is not None]], device=accelerator.device))
            out_of_time, signalled = (bool(f) for f in flags.any(0))  # every process stops at the same step
            if global_step >= total_steps or out_of_time or signalled:
                if out_of_time:
                    say(f"[train] --max_minutes {opt.max_minutes} reached at step {global_step}")
                stop = True
                break
        else:
            epoch += 1
    pbar.close()

    # ------------------------------------------------------------------ the end
    if last_saved != global_step:
        save(global_step, epoch)
    stop_signal.restore()
    if signalled:
        say(f"[train] stopped by {stop_signal.received or 'a signal'} at step {global_step}: checkpoint saved; "
            f"continue with --resume_from latest")
        accelerator.end_training()
        return stop_signal.exit_code
    say(f"[train] {global_step} steps in {(time.time() - t0) / 60:.1f} min; weights: {ws / 'model.safetensors'}")
    if accelerator.num_processes > 1:  # data-parallel replicas must agree bit for bit
        sums = accelerator.gather(T.weight_fingerprint(raw_model).reshape(1, 2))
        same = bool((sums == sums[0]).all())
        say(f"[train] {'identical' if same else 'DIFFERENT'} weights on {accelerator.num_processes} processes")
    res = evals[global_step] if global_step in evals else run_eval(global_step)
    if main_proc and opt.export_objects > 0 and len(eval_ds) > 0:
        export_objects(raw_model, ema, eval_ds, opt, ws / "export")
    if main_proc and res is not None and res["psnr"] is not None:
        print(
            f"\nheld-out PSNR {res['psnr']:.2f} dB vs blank-white prediction {res['psnr_blank']:.2f} dB "
            f"({res['psnr'] - res['psnr_blank']:+.2f} dB); metrics: {ws / 'metrics.jsonl'}"
        )
    accelerator.end_training()
    return 0


def describe_resume_weights(opt) -> str:
    """' (trained as 'cpu', with other model options: ...)' for --resume weights that store their options."""
    from core.models import model_options, option_differences, stored_options

    stored = stored_options(opt.resume)
    if stored is None:
        return ""
    name, options = stored
    differ = option_differences(options, model_options(opt), "now")
    return f" (trained as '{name}'" + (f", with other model options: {', '.join(differ)})" if differ else ")")


@torch.no_grad()
def export_objects(model, ema, dataset, opt, out_dir: Path) -> None:
    """Reconstruct held-out objects from their 4 input views: .ply, turntable .mp4, the input views
    as ``<uid>_mv.png`` (try them with ``infer.py --views``) and ``<uid>.jpg`` (inputs | truth | prediction)."""
    from core import training as T
    from core.generation import ExportSettings, export_outputs
    from core.images import image_grid, write_image

    model.eval()
    device = next(model.parameters()).device
    with ema.applied_to(model) if ema is not None else contextlib.nullcontext():
        for i in range(min(opt.export_objects, len(dataset))):
            data = T.collate([dataset[i]])
            data = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in data.items()}
            name = data["uid"][0]
            gaussians = model.forward_gaussians(data["input"])  # [1, N, 14]
            views = data["images_output"][0, : opt.num_input_views].permute(0, 2, 3, 1).cpu().numpy()  # [4, H, W, 3]
            files = export_outputs(model, gaussians, views, out_dir / name, ExportSettings(video_frames=opt.video_frames), progress=False)
            pred = model.gs.render(gaussians, data["cam_view"], data["cam_view_proj"], data["cam_pos"])["image"]
            write_image(out_dir / f"{name}.jpg", image_grid([T.input_rgb(data["input"][0]), data["images_output"][0], pred[0]]))
            print(f"[export] {', '.join(str(f) for f in files.values())}, {out_dir / name}.jpg (inputs | truth | prediction)")


if __name__ == "__main__":
    sys.exit(main())
