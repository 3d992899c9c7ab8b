"""Options: one dataclass for model, data, training and inference settings, plus named presets.

``python main.py big --lr 1e-4`` picks the ``big`` preset and overrides one field; every field's
docstring below is its ``--help`` text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional, Tuple

import tyro

from core.errors import UserError


@dataclass
class Options:
    # ------------------------------------------------------------------ model
    input_size: int = 256
    """Side of the 4 input views fed to the U-Net (pixels)."""
    down_channels: Tuple[int, ...] = (64, 128, 256, 512, 1024, 1024)
    """Channels of the U-Net's down blocks (one block per entry; all but the last downsample by 2)."""
    down_attention: Tuple[bool, ...] = (False, False, False, True, True, True)
    """Which down blocks have cross-view self-attention."""
    mid_attention: bool = True
    """Cross-view self-attention in the middle block."""
    up_channels: Tuple[int, ...] = (1024, 1024, 512, 256)
    """Channels of the up blocks (all but the last upsample by 2)."""
    up_attention: Tuple[bool, ...] = (True, True, True, False)
    """Which up blocks have cross-view self-attention."""
    attention_heads: int = 16
    """Heads of every cross-view attention layer (the published weights use 16)."""
    layers_per_block: int = 2
    """Residual blocks per down block (up blocks have one more); the published weights use 2."""
    grad_checkpoint: bool = False
    """Recompute U-Net blocks in the backward pass (activation checkpointing): less memory, ~30% slower."""
    compile: bool = False
    """Compile the U-Net with torch.compile (for GPUs). The first training step waits while it compiles, and the
    first evaluation and any new batch size compile once more: on a GPU typically tens of seconds to minutes; the
    cpu preset on 2 CPU cores took ~55 s, then ~15 s (kernels are cached on disk: later runs start sooner). Results
    change only within float tolerance; checkpoints and weights are written as without it. On the CPU steps were no
    faster (0.9-1.0x)."""
    splat_size: int = 64
    """Side of the Gaussian grid predicted per view; the model outputs 4 * splat_size^2 Gaussians. LGM's head:
    the U-Net's output grid. Pixel head: a multiple k of it (each U-Net pixel predicts k x k Gaussians), up to
    input_size (one Gaussian per input pixel)."""
    output_size: int = 256
    """Side of the views rendered for supervision (pixels)."""
    gaussian_head: Literal["lgm", "pixel"] = "lgm"
    """How U-Net outputs become Gaussians. 'lgm': absolute positions clamp(x, -1, 1), as the published
    weights need. 'pixel': each Gaussian on its own pixel's camera ray at a predicted depth plus a small
    bounded offset, starting with its pixel's colour where the ray enters the visual hull (see
    pixel_visual_hull) (Splatter Image, GRM, GS-LRM): far faster to train from scratch."""
    pixel_offset: float = 0.05
    """Pixel head: largest offset of a Gaussian from its pixel's ray (world units)."""
    pixel_visual_hull: bool = True
    """Pixel head: depth is predicted from where the pixel's ray enters the visual hull of the 4 input
    silhouettes (foreground = not white, as LGM's inputs are), not from the plane through the origin."""
    pixel_hull_range: float = 1.0
    """Pixel head: the visual hull is searched along each ray within this distance of the origin's plane."""
    pixel_hull_samples: int = 64
    """Pixel head: samples per ray of the visual hull search."""
    pixel_hull_input: bool = False
    """Pixel head with pixel_visual_hull: the U-Net also sees, per input pixel, where its ray enters the hull
    and whether it does (2 more input channels), so it predicts depth knowing where it starts."""

    # ------------------------------------------------------------------ cameras
    fovy: float = 49.1
    """Vertical field of view of every camera (degrees)."""
    znear: float = 0.5
    """Near plane of the projection matrix."""
    zfar: float = 2.5
    """Far plane of the projection matrix."""
    cam_radius: float = 1.5
    """Distance of the orbit cameras from the origin."""

    # ------------------------------------------------------------------ rendering
    renderer: Literal["auto", "torch", "gsplat"] = "auto"
    """Rasterizer backend: gsplat on CUDA when installed (auto), or the pure-PyTorch reference."""

    # ------------------------------------------------------------------ data
    dataset: Literal["synthetic", "folder", "gobjaverse", "shards"] = "synthetic"
    """Training data: procedurally generated objects (no files), a folder of renders, G-Objaverse
    (folders or per-object tars), or tar shards written by scripts/make_shards.py."""
    data_root: Optional[str] = None
    """Folder: root holding <uid>/rgb/NNN.png and <uid>/pose/NNN.txt (or <uid>/transforms.json); gobjaverse:
    root holding <group>/<uid>/NNNNN/, <group>/<uid>/campos_512_v4/NNNNN/ or <group>/<uid>.tar; shards:
    'DIR/shards-{000000..000099}.tar' or DIR."""
    data_list: Optional[str] = None
    """Folder / gobjaverse: file listing the objects, one per line or G-Objaverse's JSON list (default: all under data_root)."""
    num_views: int = 12
    """Views per object in a training sample: the input views first, then supervision views."""
    num_input_views: int = 4
    """Input views fed to the U-Net (the architecture expects 4)."""
    input_view_ids: Optional[Tuple[int, ...]] = None
    """Folder: which view indices are the inputs (default: the first 4 files); gobjaverse: which view
    numbers (default: 4 views of one orbit 90 degrees apart in azimuth)."""
    num_train_objects: int = 2000
    """Synthetic dataset: number of distinct training objects (indices wrap around)."""
    num_eval_objects: int = 8
    """Held-out objects used for evaluation (synthetic: separate seeds; folder, gobjaverse: the last objects;
    shards: the eval shards); 0 = no evaluation."""
    prob_grid_distortion: float = 0.5
    """Probability of distorting the grids of input views 2-4 (training only)."""
    prob_cam_jitter: float = 0.5
    """Probability of jittering the cameras of input views 2-4 (training only)."""
    num_workers: int = 2
    """DataLoader worker processes."""
    shuffle_buffer: int = 32
    """Shards dataset: objects each DataLoader worker holds to shuffle its stream (memory: that many raw objects; 0 = off)."""

    # ------------------------------------------------------------------ training
    workspace: str = "./workspace"
    """Output folder: checkpoints, logs, metrics, images."""
    resume: Optional[str] = None
    """Initial weights (.safetensors/.pt/.pth); loaded tolerantly, optimizer state is not restored."""
    resume_from: Optional[str] = None
    """Full-state resume: 'latest' or a checkpoint folder (weights, optimizer, scheduler, RNG, data position)."""
    overwrite: bool = False
    """Start a fresh run in a workspace that holds another run, deleting that run's checkpoints, weights,
    logs, images and exports (without it such a run is refused: continue it with --resume_from latest)."""
    batch_size: int = 8
    """Objects per batch and process."""
    gradient_accumulation_steps: int = 1
    """Batches accumulated before each optimizer step."""
    num_epochs: int = 30
    """Epochs to train (ignored when max_steps is set)."""
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps (overrides num_epochs)."""
    max_minutes: Optional[float] = None
    """Also stop after this much wall-clock training time (then save, evaluate and export as usual)."""
    lr: float = 4e-4
    """Peak learning rate of OneCycleLR."""
    warmup_steps: int = 3000
    """Warm-up optimizer steps of OneCycleLR (capped at 30% of the total)."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    gradient_clip: float = 1.0
    """Clip the global gradient norm to this value (0 = off)."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "bf16"
    """Accelerate mixed precision (CPU runs use fp32 regardless)."""
    lambda_lpips: float = 1.0
    """Weight of the LPIPS (VGG) loss; 0 turns it off and needs no backbone."""
    lambda_ssim: float = 0.0
    """Weight of a (1 - SSIM) loss term."""
    ema_decay: float = 0.0
    """Exponential moving average of the weights (0 = off, e.g. 0.999); used for eval and export."""
    seed: int = 0
    """Random seed (model init, data order, augmentations)."""
    log_every: int = 50
    """Print a console line (loss, lr, memory) every N optimizer steps."""
    eval_every: int = 1000
    """Evaluate on held-out objects every N optimizer steps (and at the end); 0 = only at the end."""
    save_every: int = 1000
    """Save a full training state every N optimizer steps (and at the end)."""
    keep_last: int = 3
    """Full training states to keep (older ones are deleted)."""
    image_every: int = 500
    """Write an image grid (inputs | ground truth | prediction) every N optimizer steps."""
    report_to: Literal["tensorboard", "wandb", "all", "none"] = "tensorboard"
    """Experiment trackers for scalars and image grids (train_log.jsonl and metrics.jsonl are always written).
    wandb needs `pip install wandb`; without network or a W&B login it runs offline into <workspace>/wandb
    (upload later with `wandb sync`), never waiting on the network."""
    max_nonfinite_steps: int = 5
    """Abort after this many consecutive steps with a non-finite loss."""
    export_objects: int = 0
    """After training, reconstruct this many held-out objects: .ply, turntable .mp4 and a preview each."""
    video_frames: int = 180
    """Frames of an exported turntable video (30 fps)."""

    def __post_init__(self):
        _check(len(self.down_channels) == len(self.down_attention), "down_channels and down_attention differ in length")
        _check(len(self.up_channels) == len(self.up_attention), "up_channels and up_attention differ in length")
        _check(len(self.up_channels) < len(self.down_channels), "need fewer up blocks than down blocks")
        grid = self.unet_output_size
        if self.gaussian_head == "lgm":
            _check(
                grid == self.splat_size,
                f"splat_size={self.splat_size} but input_size={self.input_size} with {len(self.down_channels)} down "
                f"and {len(self.up_channels)} up blocks gives {grid}",
            )
        else:
            _check(
                self.splat_size % grid == 0 and self.splat_size <= self.input_size,
                f"pixel head: splat_size={self.splat_size} must be a multiple of the U-Net's {grid}x{grid} output "
                f"(input_size={self.input_size}, {len(self.down_channels)} down and {len(self.up_channels)} up blocks) "
                f"and at most input_size",
            )
        _check(self.num_input_views == 4, "the multi-view U-Net is built for 4 input views")
        _check(self.num_views > self.num_input_views, "num_views must exceed num_input_views")
        _check(
            self.input_view_ids is None or len(self.input_view_ids) == self.num_input_views,
            f"--input_view_ids needs {self.num_input_views} views, one per input view, got {self.input_view_ids}",
        )
        _check(
            self.dataset not in DATA_ROOTS or bool(self.data_root),
            f"--dataset {self.dataset} needs --data_root {DATA_ROOTS.get(self.dataset)}",
        )
        for name in ("input_size", "output_size", "splat_size", "batch_size", "gradient_accumulation_steps",
                     "num_epochs", "log_every", "keep_last", "max_nonfinite_steps", "attention_heads",
                     "layers_per_block"):
            _check(getattr(self, name) >= 1, f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "save_every", "image_every", "export_objects", "num_workers",
                     "num_train_objects", "num_eval_objects", "weight_decay", "gradient_clip", "lambda_lpips",
                     "lambda_ssim", "video_frames"):
            _check(getattr(self, name) >= 0, f"--{name} must be >= 0, got {getattr(self, name)}")
        _check(self.lr > 0, f"--lr must be positive, got {self.lr}")
        _check(self.max_steps is None or self.max_steps >= 1, f"--max_steps must be at least 1, got {self.max_steps}")
        _check(self.max_minutes is None or self.max_minutes > 0, f"--max_minutes must be positive, got {self.max_minutes}")
        _check(0 <= self.ema_decay < 1, f"--ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        for name in ("prob_grid_distortion", "prob_cam_jitter"):
            _check(0 <= getattr(self, name) <= 1, f"--{name} is a probability in [0, 1], got {getattr(self, name)}")
        _check(0 < self.fovy < 180, f"--fovy must be in (0, 180) degrees, got {self.fovy}")
        _check(0 < self.znear < self.zfar, f"need 0 < --znear < --zfar, got {self.znear} and {self.zfar}")
        _check(self.cam_radius > self.znear, f"--cam_radius ({self.cam_radius}) must exceed --znear ({self.znear})")


    @property
    def unet_output_size(self) -> int:
        """Side of the U-Net's output grid: input_size / 2^(downs - 1) * 2^(ups - 1)."""
        return self.input_size // 2 ** (len(self.down_channels) - 1) * 2 ** (len(self.up_channels) - 1)


DATA_ROOTS = {
    "folder": "DIR (see README: 'Train on your own meshes')",
    "gobjaverse": "ROOT (the folder holding <group>/<uid>[.tar])",
    "shards": "'DIR/shards-{000000..000099}.tar' (or DIR); see scripts/make_shards.py",
}
"""What --data_root names for each dataset that reads one (the synthetic dataset needs none)."""


class OptionsError(UserError, ValueError):
    """Inconsistent options (raised at construction)."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise OptionsError(msg)


config_defaults: dict[str, Options] = {}
config_doc: dict[str, str] = {}

config_doc["small"] = "LGM 'small': 256 px in, 64x64 Gaussians per view, 256 px supervision."
config_defaults["small"] = Options()

config_doc["big"] = "LGM 'big' (the published model_fp16_fixrot weights): 128x128 Gaussians per view, 512 px."
config_defaults["big"] = Options(
    up_channels=(1024, 1024, 512, 256, 128),
    up_attention=(True, True, True, False, False),
    splat_size=128,
    output_size=512,
    num_views=8,
    batch_size=8,
)

config_doc["tiny"] = "LGM 'tiny': narrower U-Net (60M parameters), 64x64 Gaussians per view."
config_defaults["tiny"] = Options(
    down_channels=(32, 64, 128, 256, 512),
    down_attention=(False, False, False, False, True),
    up_channels=(512, 256, 128),
    up_attention=(True, False, False),
    splat_size=64,
    output_size=256,
    num_views=8,
    batch_size=16,
)

config_doc["cpu"] = (
    "Small model for 2-core CPUs, trained from scratch: pixel-aligned head, 32 px in, 16x16 Gaussians per view, "
    "64 px supervision; trains in minutes."
)
config_defaults["cpu"] = Options(
    input_size=32,
    down_channels=(32, 64, 128),
    down_attention=(False, False, True),
    up_channels=(128, 64),
    up_attention=(True, False),
    attention_heads=8,
    layers_per_block=1,  # 0.25 s/step less than 2, spent on more steps: 19.95 dB (380 steps) vs 19.78 (300) in the same time
    splat_size=16,
    output_size=64,
    gaussian_head="pixel",  # LGM's absolute positions start as one central blob: 13.5 vs 17.6 dB after 120 steps
    pixel_hull_input=True,  # 20.00 vs 19.95 dB at 380 steps
    num_views=6,
    batch_size=8,
    lr=4e-3,
    warmup_steps=50,
    lambda_lpips=0.0,
    prob_grid_distortion=0.0,  # many objects per second matter more than robustness here
    prob_cam_jitter=0.0,
    mixed_precision="no",
    num_workers=0,
    log_every=25,
    eval_every=0,
    save_every=250,
    image_every=100,
    workspace="./workspace_cpu",
)

AllConfigs = tyro.extras.subcommand_type_from_defaults(config_defaults, config_doc)


def replace(opt: Options, **changes) -> Options:
    """A copy of ``opt`` with some fields changed (re-validated)."""
    return dataclasses.replace(opt, **changes)
