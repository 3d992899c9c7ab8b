"""Pieces of the training run that main.py calls: datasets, EMA, checkpoints, evaluation, images.

main.py keeps the loop itself; everything here is a small function with one job.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from core.images import IMAGENET_MEAN, IMAGENET_STD, image_grid, write_image
from core.metrics import LPIPSUnavailableError, build_lpips, lpips_distance, psnr, ssim
from core.options import Options

CHECKPOINT_PREFIX = "step_"
COMPLETE_MARKER = "progress.json"


# ---------------------------------------------------------------------------- data
def build_datasets(opt: Options):
    """(train, eval) datasets of ``opt.dataset``."""
    if opt.dataset == "synthetic":
        from core.datasets.synthetic import SyntheticDataset

        return SyntheticDataset(opt, "train"), SyntheticDataset(opt, "eval")
    from core.datasets.folder import FolderDataset

    return FolderDataset(opt, "train"), FolderDataset(opt, "eval")


def collate(items: list[dict]) -> dict:
    """Stack tensors, keep lists of strings (uids)."""
    out = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        out[key] = torch.stack(vals) if isinstance(vals[0], Tensor) else vals
    return out


# ---------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of a model's floating-point weights (kept in fp32)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module):
        """Temporarily put the averaged weights into ``model``."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.shadow}
        model.load_state_dict({k: v.to(backup[k]) for k, v in self.shadow.items()}, strict=False)
        try:
            yield model
        finally:
            model.load_state_dict(backup, strict=False)


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
            raise FileNotFoundError(f"--resume_from latest: no complete checkpoint under {Path(workspace) / 'checkpoints'}")
        return dirs[-1]
    d = Path(resume_from)
    if not (d / COMPLETE_MARKER).is_file():
        raise FileNotFoundError(f"--resume_from {d}: not a complete checkpoint folder (no {COMPLETE_MARKER})")
    return d


def read_progress(ckpt_dir: Path) -> dict:
    return json.loads((ckpt_dir / COMPLETE_MARKER).read_text())


def save_checkpoint(accelerator, workspace, step: int, progress: dict, keep_last: int) -> Path:
    """accelerator.save_state into a temporary folder, then an atomic rename; prune old ones.

    A crash mid-save leaves only a ``.tmp`` folder, which is ignored and later replaced, so the
    latest complete checkpoint is never broken.
    """
    root = Path(workspace) / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    tmp = root / f".{CHECKPOINT_PREFIX}{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / COMPLETE_MARKER).write_text(json.dumps(progress))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoint_dirs(workspace)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def export_weights(model: nn.Module, ema: Optional[EMA], workspace) -> None:
    """``model.safetensors`` (and ``model_ema.safetensors``) for inference, written atomically."""
    ws = Path(workspace)
    ws.mkdir(parents=True, exist_ok=True)
    tensors = {"model.safetensors": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}}
    if ema is not None:
        tensors["model_ema.safetensors"] = {k: v.cpu().contiguous() for k, v in ema.shadow.items()}
    for name, sd in tensors.items():
        tmp = ws / f".{name}.tmp"
        save_file(sd, str(tmp))
        tmp.replace(ws / name)


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
    mean over the object's novel views) and the rendered novel views [B, V-4, 3, H, W].
    """
    n_in = opt.num_input_views
    gaussians = model.forward_gaussians(data["input"])  # [B, N, 14]
    out = model.gs.render(gaussians.float(), data["cam_view"], data["cam_view_proj"], data["cam_pos"])
    pred = out["image"][:, n_in:].float()  # [B, V-4, 3, H, W]
    gt = data["images_output"][:, n_in:].float()
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
    """Scores of held-out objects (see :func:`score_batch`), averaged over objects and, with an
    ``accelerator``, gathered from every process."""
    rows = []
    for data in loader:
        metrics, _ = score_batch(model, data, opt, lpips_net)  # [B, 4]
        if accelerator is not None:
            metrics = accelerator.gather_for_metrics(metrics)
        new = [metric_row(m) for m in metrics]
        if accelerator is None or accelerator.num_processes == 1:
            for row, uid in zip(new, data.get("uid", [])):
                row["uid"] = uid
        rows += new
    return summarize(rows)


# ---------------------------------------------------------------------------- images and logs
def input_rgb(inputs: Tensor) -> Tensor:
    """Undo the ImageNet normalisation of the input views. [..., 9, H, W] -> [..., 3, H, W] in [0, 1]"""
    mean = torch.tensor(IMAGENET_MEAN, device=inputs.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=inputs.device).view(3, 1, 1)
    return (inputs[..., :3, :, :].float() * std + mean).clamp(0, 1)


def save_image_grid(path, data: dict, out: dict):
    """Rows: input views | ground-truth views | predicted views of the first object. -> [H, W, 3] array"""
    grid = image_grid([input_rgb(data["input"][0]), data["images_output"][0], out["images_pred"][0]])
    write_image(path, grid)
    return grid


def append_jsonl(path, record: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def memory_gb(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 1024**3:.2f} GB (cuda peak)"
    import resource

    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GB (peak RSS)"


class EpochSampler(torch.utils.data.Sampler):
    """A shuffled order of ``n`` indices that depends only on (seed, epoch): identical on every
    process and after a resume, so the data position can be restored by skipping batches."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n
