"""Pieces of the training run that main.py calls: datasets, EMA, checkpoints, evaluation, images.

main.py keeps the loop itself; everything here is a small function with one job.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from core.datasets.common import sample_generator
from core.errors import UserError, describe_os_error
from core.images import image_grid, unnormalize_imagenet, write_image
from core.metrics import LPIPSUnavailableError, build_lpips, lpips_distance, psnr, ssim
from core.options import Options
from core.outputs import OutputError, share_like_other_outputs, write_atomically
from core.runtime import at_least_fp32, no_autocast

CHECKPOINT_PREFIX = "step_"
COMPLETE_MARKER = "progress.json"
EMA_FILE = "ema.safetensors"


# ---------------------------------------------------------------------------- data
def build_datasets(opt: Options):
    """(train, eval) datasets of ``opt.dataset``."""
    if opt.dataset == "synthetic":
        from core.datasets.synthetic import SyntheticDataset

        return SyntheticDataset(opt, "train"), SyntheticDataset(opt, "eval")
    if opt.dataset == "gobjaverse":
        from core.datasets.gobjaverse import GobjaverseDataset

        return GobjaverseDataset(opt, "train"), GobjaverseDataset(opt, "eval")
    if opt.dataset == "shards":
        from core.datasets.shards import ShardsDataset, ShardsEvalDataset

        return ShardsDataset(opt), ShardsEvalDataset(opt)
    from core.datasets.folder import FolderDataset

    return FolderDataset(opt, "train"), FolderDataset(opt, "eval")


def build_loaders(opt: Options, train_ds, eval_ds, accelerator):
    """(train, eval) DataLoaders whose batches arrive on ``accelerator.device``.

    Map-style training data is shuffled by :class:`EpochSampler` and split across processes by
    Accelerate. Shards (an IterableDataset) split themselves across processes and workers, so
    their loader is only put on the device: Accelerate's own split of an iterable would make every
    process read every shard. Evaluation objects are dealt out by :func:`eval_share` (each object
    on exactly one process, no padding), see :func:`evaluate`.
    """
    from torch.utils.data import DataLoader, IterableDataset

    pin = torch.cuda.is_available()
    share = eval_share(eval_ds, accelerator.process_index, accelerator.num_processes)
    eval_loader = on_device(DataLoader(share, batch_size=opt.batch_size, shuffle=False, num_workers=opt.num_workers,
                                       collate_fn=collate, pin_memory=pin), accelerator)
    if isinstance(train_ds, IterableDataset):
        train_ds.place(accelerator.process_index, accelerator.num_processes)
        accelerator.print(
            f"[data] {train_ds.num_samples} objects in {len(train_ds.shards)} shards; each of {accelerator.num_processes} "
            f"process(es) reads {len(train_ds)} of them per epoch, with {max(1, opt.num_workers)} worker(s)"
        )
        train_loader = DataLoader(train_ds, batch_size=opt.batch_size, num_workers=opt.num_workers, drop_last=True,
                                  collate_fn=collate, pin_memory=pin)
        return on_device(train_loader, accelerator), eval_loader
    sampler = EpochSampler(len(train_ds), opt.seed)
    train_loader = DataLoader(train_ds, batch_size=opt.batch_size, sampler=sampler, num_workers=opt.num_workers,
                              drop_last=True, collate_fn=collate, pin_memory=pin)
    return accelerator.prepare(train_loader), eval_loader


def on_device(loader, accelerator):
    """``loader`` with its batches moved to ``accelerator.device``, not split across processes."""
    from accelerate.data_loader import prepare_data_loader

    return prepare_data_loader(loader, accelerator.device, num_processes=1, process_index=0, put_on_device=True,
                               dispatch_batches=False, rng_types=None)


def eval_share(dataset, rank: int, world: int):
    """The objects process ``rank`` of ``world`` evaluates: indices rank, rank + world, ...

    Accelerate's split would pad every process to the same number of full batches by repeating
    objects (with 8 held-out objects, batch 8 and 8 processes, each process evaluates all 8);
    dealt out like this, each object is evaluated once and :func:`evaluate` gathers the rows.
    """
    from torch.utils.data import Subset

    return Subset(dataset, range(rank, len(dataset), world))


def set_epoch(loader, epoch: int) -> None:
    """Tell the epoch to the training sampler(s) and dataset behind ``loader``, on this process.

    ``loader.set_epoch`` alone is not enough: with 2+ processes Accelerate's
    ``DataLoaderShard.set_epoch`` sets the sharded sampler's epoch and then skips the dataset's (an
    ``elif``), and the loader of ``skip_first_batches`` nests its samplers once more. It is still
    called first, as the loader repeats it with its own epoch counter when iteration starts; then
    every sampler on the chain ``batch_sampler -> batch_sampler -> ... -> sampler`` that has
    ``set_epoch``, and the dataset, get the epoch too.
    """
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    node, seen = getattr(loader, "batch_sampler", None), set()
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        for obj in (node, getattr(node, "sampler", None)):
            if obj is not None and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        node = getattr(node, "batch_sampler", None)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)


def steps_per_epoch(batches: int, accumulation: int) -> int:
    """Optimizer steps in one pass over ``batches`` batches: Accelerate steps every ``accumulation``
    batches and at the end of the loader, so a shorter last group is a step too (ceil)."""
    return max(1, math.ceil(batches / accumulation))


def loader_position(step: int, batches: int, accumulation: int) -> tuple[int, int]:
    """Where optimizer step ``step`` (completed) leaves the data: (epoch, batches of it already used)."""
    epoch, done = divmod(step, steps_per_epoch(batches, accumulation))
    return epoch, done * accumulation


def collate(items: list[dict]) -> dict:
    """Stack tensors, keep lists of strings (uids)."""
    out = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        out[key] = torch.stack(vals) if isinstance(vals[0], Tensor) else vals
    return out


# ---------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of a model's floating-point weights.

    Each average lives where its weight lives (device) in at least float32 (half-precision weights
    are averaged in float32), also after :meth:`load` from a checkpoint, so ``update`` never mixes
    devices or precisions.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.reset(model)

    def reset(self, model: nn.Module) -> None:
        """Start the average at ``model``'s current weights."""
        self.shadow = {k: v.detach().to(_average_dtype(v), copy=True) for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow += (1 - decay) (weight - shadow) for every tensor, in one fused call (a loop of
        hundreds of small kernels on a GPU otherwise)."""
        weights = model.state_dict()
        shadows = list(self.shadow.values())
        torch._foreach_lerp_(shadows, [weights[k].detach().to(v.dtype) for k, v in self.shadow.items()], 1.0 - self.decay)

    def load(self, path, model: nn.Module) -> None:
        """The average saved in ``path`` (safetensors, read on the CPU), placed on the device of
        ``model``'s weights in at least float32."""
        from core.weights import WeightsError

        saved = load_file(str(path))
        like = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        missing = sorted(set(like) - set(saved))
        if missing:
            raise WeightsError(f"{path}: the EMA state lacks {len(missing)} of the model's tensors (e.g. {missing[0]})")
        self.shadow = {k: saved[k].to(device=v.device, dtype=_average_dtype(v)) for k, v in like.items()}

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module):
        """Temporarily put the averaged weights into ``model``."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.shadow}
        model.load_state_dict({k: v.to(backup[k]) for k, v in self.shadow.items()}, strict=False)
        try:
            yield model
        finally:
            model.load_state_dict(backup, strict=False)


def _average_dtype(t: Tensor) -> torch.dtype:
    """float32 for half-precision weights, else the weight's own dtype (float32, float64)."""
    return torch.promote_types(t.dtype, torch.float32)


# ---------------------------------------------------------------------------- checkpoints
def checkpoint_dirs(workspace) -> list[Path]:
    """Complete full-state checkpoints, oldest first."""
    root = Path(workspace) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        name = d.name
        if d.is_dir() and name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX):].isdigit():
            if (d / COMPLETE_MARKER).is_file():
                found.append((int(name[len(CHECKPOINT_PREFIX):]), d))
    return [d for _, d in sorted(found)]


def resolve_resume_dir(workspace, resume_from: str) -> Path:
    if resume_from == "latest":
        dirs = checkpoint_dirs(workspace)
        if not dirs:
            raise NoCheckpointError(f"--resume_from latest: no complete checkpoint under {Path(workspace) / 'checkpoints'}")
        return dirs[-1]
    d = Path(resume_from)
    if not (d / COMPLETE_MARKER).is_file():
        raise NoCheckpointError(f"--resume_from {d}: not a complete checkpoint folder (no {COMPLETE_MARKER})")
    return d


RUN_OUTPUTS = ("checkpoints", "model.safetensors", "model_ema.safetensors", "train_log.jsonl", "metrics.jsonl",
               "tb", "images", "export")
"""What a training run writes into its workspace (``--overwrite`` removes exactly these)."""


class WorkspaceUsedError(OutputError):
    """A fresh run into a workspace that holds another run; the message says how to go on."""


def earlier_run(workspace) -> list[str]:
    """What says that ``workspace`` holds a run: its checkpoints, weights and step log (empty: none)."""
    ws = Path(workspace)
    found = [f"checkpoint {d.name}" for d in checkpoint_dirs(ws)[-1:]]
    found += [name for name in ("model.safetensors", "train_log.jsonl") if (ws / name).is_file()]
    return found


def check_fresh_run(workspace, overwrite: bool) -> list[str]:
    """Before a run without ``--resume_from``: refuse a workspace that holds another run, unless
    ``overwrite``, which removes that run's outputs (:data:`RUN_OUTPUTS`). -> what was removed"""
    ws = Path(workspace)
    found = earlier_run(ws)
    if not found:
        return []
    if not overwrite:
        raise WorkspaceUsedError(
            f"--workspace {ws} holds an earlier run ({', '.join(found)}).\nContinue it with --resume_from latest, "
            f"start over with --overwrite (deletes its checkpoints, weights, logs, images and exports), or give "
            f"another --workspace."
        )
    removed = []
    for name in RUN_OUTPUTS:
        path = ws / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def read_progress(ckpt_dir: Path) -> dict:
    return json.loads((ckpt_dir / COMPLETE_MARKER).read_text())


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be written; the message says which one is intact (exit code 1: the
    run's work up to that checkpoint is safe)."""

    exit_code = 1


class NoCheckpointError(UserError, FileNotFoundError):
    """--resume_from names no complete checkpoint."""


def save_checkpoint(accelerator, workspace, step: int, progress: dict, keep_last: int, ema: Optional[EMA] = None) -> Path:
    """The full training state of ``step`` into ``<workspace>/checkpoints/step_<step>``.

    ``accelerator.save_state`` writes the model (safetensors), optimizer and RNG states (read back
    with ``weights_only=True``); we add ``ema.safetensors`` and ``progress.json`` (step, epoch,
    schedule), so nothing in a checkpoint needs unpickling of arbitrary objects. The learning-rate
    schedule is not stored: it is a function of the step (see :func:`build_scheduler`).

    Everything goes into a temporary folder first, renamed when complete: a crash or a full disk
    mid-save never breaks the latest complete checkpoint (a failed save raises
    :class:`CheckpointError` saying which one is intact). Older checkpoints beyond ``keep_last``
    are then deleted.
    """
    root = Path(workspace) / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    tmp = root / f".{CHECKPOINT_PREFIX}{step}.tmp"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if ema is not None:
                save_file({k: v.contiguous() for k, v in ema.shadow.items()}, str(tmp / EMA_FILE))
            (tmp / COMPLETE_MARKER).write_text(json.dumps(progress))
            share_like_other_outputs(tmp)  # safetensors writes 0600: the team could read the logs but not the weights
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
    except Exception as e:  # a full disk shows as OSError, or as torch's / safetensors' own write errors
        shutil.rmtree(tmp, ignore_errors=True)
        intact = checkpoint_dirs(workspace)
        kept = f"the last complete checkpoint, {intact[-1]}, is intact" if intact else "no earlier complete checkpoint exists"
        raise CheckpointError(
            f"could not save the checkpoint of step {step} in {root}: {describe_os_error(e)}.\n"
            f"The partial save was removed; {kept}.\n"
            f"Free some space (a lower --keep_last keeps fewer checkpoints), then continue with --resume_from latest."
        ) from e
    if accelerator.is_main_process:
        for old in checkpoint_dirs(workspace)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, ckpt_dir: Path, model: nn.Module, ema: Optional[EMA]) -> dict:
    """Restore what :func:`save_checkpoint` wrote (model, optimizer, RNG, EMA) -> its progress dict.

    The model's tensor shapes are checked first, so a checkpoint of another preset is a clear
    :class:`core.weights.WeightsMismatchError`. Pickled objects are never loaded: accelerate reads
    its own files with ``weights_only=True``, nothing else is registered with it, and a folder with
    ``custom_checkpoint_*.pkl`` files (which accelerate unpickles fully) is refused. With EMA on and
    no EMA state saved, the average starts from the restored weights.
    """
    from core.weights import WeightsError, check_shapes

    check_shapes(model, ckpt_dir / "model.safetensors", what=f"--resume_from {ckpt_dir}")
    pickled = sorted(p.name for p in ckpt_dir.glob("custom_checkpoint_*.pkl"))
    if pickled:  # accelerate would unpickle these with weights_only=False: arbitrary code
        raise WeightsError(
            f"--resume_from {ckpt_dir}: it holds pickled objects ({', '.join(pickled)}), which are never loaded "
            f"(unpickling can run any code).\nEarlier versions stored the scheduler and EMA that way: if you trust "
            f"this folder, delete those files and resume again (the schedule is rebuilt from the step; the EMA "
            f"restarts from the weights)."
        )
    try:
        accelerator.load_state(str(ckpt_dir), load_kwargs={"weights_only": True})
    except Exception as e:  # pickled code refused by weights_only, a truncated file, ...
        raise WeightsError(
            f"--resume_from {ckpt_dir}: could not restore the training state ({describe_os_error(e)}).\n"
            f"Files holding pickled code are refused. Resume from another checkpoint, or use --resume "
            f"{ckpt_dir / 'model.safetensors'} to start from its weights only."
        ) from None
    if ema is not None:
        if (ckpt_dir / EMA_FILE).is_file():
            ema.load(ckpt_dir / EMA_FILE, model)  # onto the weights' device: load_file reads to the CPU
        else:
            warnings.warn(f"{ckpt_dir} has no EMA state: the average starts from the restored weights")
            ema.reset(model)
    return read_progress(ckpt_dir)


def build_scheduler(optimizer, opt: Options, total_steps: int, step: int = 0):
    """OneCycleLR over ``total_steps`` (warm-up ``opt.warmup_steps``, at most 30%), set to ``step``.

    The schedule is a function of the step alone, so a resumed run rebuilds it rather than loading
    it: resuming with another ``--max_steps`` (or ``--lr``, ``--warmup_steps``) continues on the
    curve of the new settings at the resumed step, as if the run had been planned that way.
    """
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=opt.lr, total_steps=total_steps + 1,
        pct_start=min(max(opt.warmup_steps, 2) / (total_steps + 1), 0.3),  # a 1-step warm-up divides by zero in torch
    )
    if step > 0:  # jump to ``step``: OneCycleLR computes each value from its step count alone
        scheduler.last_epoch = step - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "step() before optimizer.step()": intended here
            scheduler.step()
    return scheduler


def truncate_logs(workspace, step: int) -> None:
    """Drop the rows of steps after ``step`` from the workspace's jsonl logs (a resumed run
    replays them; keeping both would log those steps twice)."""
    for name in ("train_log.jsonl", "metrics.jsonl"):
        path = Path(workspace) / name
        if not path.is_file():
            continue
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line).get("step", 0) <= step]
        if len(kept) != len(rows):
            write_atomically(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))


def export_weights(model: nn.Module, ema: Optional[EMA], workspace) -> None:
    """``model.safetensors`` (and ``model_ema.safetensors``) for inference, written atomically,
    with the options that build the model in their metadata (:func:`core.models.weights_metadata`):
    ``infer.py --resume workspace/model.safetensors`` needs no ``--preset``."""
    from core.models import weights_metadata

    metadata = weights_metadata(model.opt)
    ws = Path(workspace)
    ws.mkdir(parents=True, exist_ok=True)
    tensors = {"model.safetensors": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}}
    if ema is not None:
        tensors["model_ema.safetensors"] = {k: v.cpu().contiguous() for k, v in ema.shadow.items()}
    for name, sd in tensors.items():
        write_atomically(ws / name, lambda tmp: save_file(sd, str(tmp), metadata=metadata))


class StopRequest:
    """Catches SIGTERM and SIGINT so the loop can save the current step before stopping.

    ``received`` is the name of the first signal (None until one arrives); the loop checks it
    after each step. A second SIGINT raises KeyboardInterrupt at once (for an impatient Ctrl-C).
    ``exit_code`` follows the shell convention, 128 + the signal number.
    """

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self):
        import signal
        import threading

        self.received: Optional[str] = None
        self.exit_code = 0
        self._previous = {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for name in self.SIGNALS:
                self._previous[name] = signal.signal(getattr(signal, name), self._handle)

    def _handle(self, signum, frame) -> None:
        import signal

        name = signal.Signals(signum).name
        if self.received is not None and name == "SIGINT":
            raise KeyboardInterrupt
        if self.received is None:
            self.received, self.exit_code = name, 128 + signum
            print(f"\n[train] {name} received: saving a checkpoint after this step, then stopping", flush=True)

    def restore(self) -> None:
        import signal

        for name, handler in self._previous.items():
            signal.signal(getattr(signal, name), handler)
        self._previous = {}


# ---------------------------------------------------------------------------- evaluation
def try_build_lpips(device) -> Optional[nn.Module]:
    """The LPIPS network with its pretrained backbone, or None (with a warning) when unavailable."""
    try:
        return build_lpips(pretrained_backbone=True).to(device)
    except LPIPSUnavailableError as e:
        warnings.warn(f"LPIPS is skipped in evaluation: {str(e).splitlines()[0]}")
        return None


METRIC_KEYS = ("psnr", "ssim", "lpips", "psnr_blank")


@torch.no_grad()
def score_batch(model, data: dict, opt: Options, lpips_net: Optional[nn.Module]) -> tuple[Tensor, Tensor]:
    """Reconstruct each object from its input views and score its other views.

    Returns metrics [B, 4] (psnr, ssim, lpips or NaN, psnr of a blank white prediction; each the
    mean over the object's novel views) and the rendered novel views [B, V-4, 3, H, W]. The model
    runs in the caller's precision (training evaluates under its bf16 autocast, as the loss was
    computed); rendering and every metric run in fp32, autocast off.
    """
    n_in = opt.num_input_views
    gaussians = model.forward_gaussians(data["input"])  # [B, N, 14]
    with no_autocast(gaussians.device):
        out = model.gs.render(at_least_fp32(gaussians), data["cam_view"], data["cam_view_proj"], data["cam_pos"])
        pred = at_least_fp32(out["image"][:, n_in:])  # [B, V-4, 3, H, W]
        gt = at_least_fp32(data["images_output"][:, n_in:])
        if lpips_net is not None:
            lp = lpips_distance(lpips_net, pred.flatten(0, 1), gt.flatten(0, 1)).view(pred.shape[:2]).mean(1)
        else:
            lp = torch.full(pred.shape[:1], float("nan"), device=pred.device)
        metrics = torch.stack(
            [
                psnr(pred, gt, per_image=True).mean(1),
                ssim(pred, gt, per_image=True).mean(1),
                lp,
                psnr(torch.ones_like(gt), gt, per_image=True).mean(1),
            ],
            dim=1,
        )
    return metrics, pred


def metric_row(m: Tensor) -> dict:
    """[4] metrics -> {name: float or None (NaN, e.g. LPIPS without its backbone)}"""
    return {k: (None if math.isnan(v) else v) for k, v in zip(METRIC_KEYS, m.tolist())}


def summarize(rows: list[dict]) -> dict:
    """Means over objects (None for a metric no object has) plus the rows themselves."""
    summary = {}
    for key in METRIC_KEYS:
        vals = [r[key] for r in rows if r[key] is not None]
        summary[key] = sum(vals) / len(vals) if vals else None
    summary["num_objects"] = len(rows)
    summary["objects"] = rows
    return summary


@torch.no_grad()
def evaluate(model, loader, opt: Options, lpips_net: Optional[nn.Module], accelerator=None) -> dict:
    """Scores of held-out objects (see :func:`score_batch`), averaged over objects.

    With an ``accelerator`` each process scores its own share of the objects (:func:`eval_share`)
    and the rows of all processes are gathered, in dataset order, each object once.
    """
    rows = []
    share = loader.dataset
    indices = list(share.indices) if hasattr(share, "indices") else list(range(len(share)))
    for data in loader:
        metrics, _ = score_batch(model, data, opt, lpips_net)  # [B, 4]
        for m, uid in zip(metrics, data.get("uid", [None] * len(metrics))):
            row = metric_row(m)
            if uid is not None:
                row["uid"] = uid
            rows.append((indices[len(rows)], row))
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        rows = gather_object(rows)  # every process's list, concatenated
    return summarize([row for _, row in sorted(rows, key=lambda r: r[0])])


# ---------------------------------------------------------------------------- images and logs
def input_rgb(inputs: Tensor) -> Tensor:
    """Undo the ImageNet normalisation of the input views. [..., 9, H, W] -> [..., 3, H, W] in [0, 1]"""
    return unnormalize_imagenet(inputs[..., :3, :, :].float())


def save_image_grid(path, data: dict, out: dict):
    """Rows: input views | ground-truth views | predicted views of the first object. -> [H, W, 3] array"""
    grid = image_grid([input_rgb(data["input"][0]), data["images_output"][0], out["images_pred"][0]])
    write_image(path, grid)
    return grid


WANDB_HOST = "api.wandb.ai"
TRACKERS = {"tensorboard": ("tensorboard",), "wandb": ("wandb",), "all": ("tensorboard", "wandb"), "none": ()}


class TrackerError(UserError):
    """A tracker that cannot be used (the package is missing); the message says what to install."""


def build_trackers(report_to: str, workspace, purge_step: Optional[int] = None) -> tuple[list, list[str]]:
    """The experiment trackers of ``--report_to`` for ``accelerate.Accelerator(log_with=...)`` and
    notes to print. TensorBoard writes ``<workspace>/tb`` (``purge_step``: a resumed run drops the
    replayed steps' events). W&B runs into ``<workspace>/wandb``, offline when the network or a
    login is missing (decided here, in seconds, so ``wandb.init`` never waits on the network)."""
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    ws, trackers, notes = Path(workspace), [], []
    if "tensorboard" in TRACKERS[report_to]:
        trackers.append(TensorBoardTracker("tb", str(ws), **({"purge_step": purge_step} if purge_step else {})))
    if "wandb" in TRACKERS[report_to]:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise TrackerError("--report_to wandb needs the wandb package: pip install wandb") from None
        why = wandb_offline_reason()
        if why and os.environ.get("WANDB_MODE") is None:
            os.environ["WANDB_MODE"] = "offline"
        if os.environ.get("WANDB_MODE") == "offline":
            notes.append(f"[wandb] offline ({why or 'WANDB_MODE=offline'}): the run is kept in {ws / 'wandb'}; "
                         f"upload it later with `wandb sync {ws / 'wandb'}/offline-run-*`")
        trackers.append(WandBTracker("lgm", name=ws.resolve().name, dir=str(ws)))
    return trackers, notes


def wandb_offline_reason() -> Optional[str]:
    """Why W&B cannot log online now (offline mode, no network, no login), or None."""
    from core import hub

    blocked = hub.download_blocker(WANDB_HOST)
    if blocked:
        return blocked
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    logged_in = os.environ.get("WANDB_API_KEY") or (netrc.is_file() and WANDB_HOST in netrc.read_text(errors="ignore"))
    return None if logged_in else "not logged in to W&B (wandb login, or WANDB_API_KEY)"


def log_image(accelerator, tag: str, grid, step: int) -> None:
    """An image grid [H, W, 3] (uint8 or float) to every tracker that shows images."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.tracker.add_image(tag, grid, step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Image(grid)}, step=step)


def append_jsonl(path, record: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of this process so far: CUDA's allocated peak on a GPU, else the peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def memory_gb(device: torch.device) -> str:
    return f"{peak_memory_gb(device):.2f} GB ({'cuda peak' if device.type == 'cuda' else 'peak RSS'})"


@torch.no_grad()
def weight_fingerprint(model: nn.Module) -> Tensor:
    """(sum, sum of squares) of all parameters, accumulated in float64, one parameter at a time:
    data-parallel replicas that agree bit for bit give equal fingerprints. Needs memory for a
    float64 copy of the largest parameter, not of the model (3 GB for ``big``). -> [2] float64"""
    total = torch.zeros(2, dtype=torch.float64, device=next(model.parameters()).device)
    for p in model.parameters():
        q = p.detach().double()
        total += torch.stack([q.sum(), q.square().sum()])
    return total


class EpochSampler(torch.utils.data.Sampler):
    """A shuffled order of ``n`` indices that depends only on (seed, epoch): identical on every
    process and after a resume, so the data position can be restored by skipping batches."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = sample_generator(self.seed, self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n
