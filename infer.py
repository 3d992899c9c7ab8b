"""Image(s) or a prompt -> 4 views -> 3D Gaussians -> .ply, turntable .mp4 and a preview of the views.

    python infer.py photo.png more_photos/            # ImageDream, one object per image
    python infer.py --prompt "a wooden chair"         # MVDream, text to 3D
    python infer.py --views four_views.png            # your own 4 views (azimuths 0/90/180/270)

Per input, in --workspace: <name>.ply, <name>.mp4, <name>_mv.png (the 4 views side by side, in
LGM's order: feed it back with --views) and, with --splat, <name>.splat. Runs in fp16 on CUDA and
fp32 on the CPU. A weight file that is missing and cannot be downloaded stops the run with exit
code 2 and a message naming the file and the command that fetches it.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional, Tuple

import tyro

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_IMAGEDREAM = "pretrained/imagedream-ipmv-diffusers"
DEFAULT_MVDREAM = "pretrained/mvdream-sd2.1-diffusers"
MV_SIZE = 256  # the published MVDream/ImageDream models generate 256 px views


@dataclass
class InferArgs:
    paths: Annotated[Tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="PATH")] = ()
    """Images, or folders of images, to turn into 3D (ImageDream). Not needed with --prompt alone or --views."""
    preset: str = "big"
    """LGM preset of the checkpoint (a name in core.options.config_defaults: big, small, tiny, ...)."""
    resume: str = "pretrained/model_fp16_fixrot.safetensors"
    """LGM weights (.safetensors/.pt); a bare file name is also looked up in pretrained/."""
    prompt: Optional[str] = None
    """Text: alone, text-to-3D with MVDream; with images, ImageDream's text prompt."""
    negative_prompt: str = ""
    """Negative prompt for classifier-free guidance."""
    workspace: str = "workspace_infer"
    """Output folder."""
    seed: int = 0
    """Seed of the diffusion noise (the same for every input)."""
    steps: int = 30
    """DDIM steps of the multi-view diffusion."""
    guidance_scale: float = 5.0
    """Classifier-free guidance scale (1 = none)."""
    elevation: float = 0.0
    """Elevation of the 4 views in degrees (core.cameras convention: negative looks from above)."""
    views: Optional[str] = None
    """An image holding 4 views side by side, or a folder of 4 images (sorted by name), at the default
    cameras (azimuth 0, 90, 180, 270): skips the diffusion model."""
    mv_model: Optional[str] = None
    """Multi-view diffusion model: a diffusers folder or hub id (default: pretrained/imagedream-ipmv-diffusers
    for images, pretrained/mvdream-sd2.1-diffusers for a prompt)."""
    rembg_model: str = "u2net"
    """rembg background-removal model for images without an alpha channel (file: pretrained/<name>.onnx)."""
    border_ratio: float = 0.2
    """Empty margin around the recentred object, as a fraction of the image side."""
    splat: bool = False
    """Also write <name>.splat (the antimatter15 web-viewer format)."""
    video_frames: int = 180
    """Frames of the 360-degree turntable video (0 = no video)."""
    fps: int = 30
    """Frame rate of the video."""
    device: Optional[str] = None
    """Torch device (default: cuda if available, else cpu)."""


class InferError(RuntimeError):
    """A problem with the user's inputs or options; the message says what to do."""


@dataclass
class Job:
    name: str
    kind: str  # "image" | "prompt" | "views"
    path: Optional[Path] = None


# --------------------------------------------------------------------------- inputs


def _slug(text: str, limit: int = 48) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return slug[:limit] or "prompt"


def collect_jobs(args: InferArgs) -> list[Job]:
    """What to make, in order: one job per image, or one for --views, or one for --prompt."""
    if args.views is not None:
        if args.paths:
            raise InferError("give either PATH... (images for ImageDream) or --views, not both")
        views = Path(args.views)
        if not views.exists():
            raise InferError(f"--views: no such file or folder: {views}")
        return [Job(views.stem, "views", views)]
    jobs: list[Job] = []
    for p in map(Path, args.paths):
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InferError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            jobs += [Job(f.stem, "image", f) for f in files]
        elif p.is_file():
            jobs.append(Job(p.stem, "image", p))
        else:
            raise InferError(f"no such file or folder: {p}")
    if not jobs and args.prompt:
        jobs.append(Job(_slug(args.prompt), "prompt"))
    if not jobs:
        raise InferError("nothing to do: give image files or folders, --prompt TEXT, or --views PATH")
    seen: dict[str, int] = {}
    for job in jobs:  # unique output names
        n = seen.get(job.name, 0)
        seen[job.name] = n + 1
        if n:
            job.name = f"{job.name}_{n}"
    return jobs


def read_views(path: Path):
    """4 views from an image of 4 side by side (or stacked) or from a folder of 4 images.

    -> float32 [4, H, W, 3] in [0, 1] on white (alpha composited), LGM's view order.
    """
    import numpy as np

    from core.images import read_image

    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) != 4:
            raise InferError(f"--views folder {path} must hold exactly 4 images, found {len(files)}")
        views = [read_image(f) for f in files]
        if len({v.shape[:2] for v in views}) != 1:
            raise InferError(f"--views: the 4 images in {path} differ in size")
        views = np.stack([v if v.shape[-1] == 4 else np.concatenate([v, np.ones_like(v[..., :1])], -1) for v in views])
    else:
        img = read_image(path)
        h, w = img.shape[:2]
        if w == 4 * h:
            views = np.stack(np.split(img, 4, axis=1))
        elif h == 4 * w:
            views = np.stack(np.split(img, 4, axis=0))
        else:
            raise InferError(f"--views image {path} is {w}x{h}: expected 4 square views side by side (width = 4 x height)")
    if views.shape[-1] == 4:
        alpha = views[..., 3:4]
        views = views[..., :3] * alpha + (1.0 - alpha)
    return np.ascontiguousarray(views[..., :3], dtype=np.float32)


# --------------------------------------------------------------------------- weights


# --------------------------------------------------------------------------- the run


def run(args: InferArgs) -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from core.images import normalize_imagenet, read_image, write_image
    from core.options import config_defaults
    from core.preprocess import BackgroundRemover, has_alpha_mask, prepare_image
    from core.weights import fetch_published_weights, load_weights

    if args.preset not in config_defaults:
        raise InferError(f"unknown preset '{args.preset}'; choose one of {', '.join(config_defaults)}")
    opt = config_defaults[args.preset]
    jobs = collect_jobs(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    workspace = Path(args.workspace)

    # 1. every weight file this run needs, before anything heavy is loaded
    resume = fetch_published_weights(args.resume)
    images = {j.name: read_image(j.path) for j in jobs if j.kind == "image"}
    remover = None
    if any(not has_alpha_mask(img) for img in images.values()):
        remover = BackgroundRemover(args.rembg_model)
        remover.session()
    pipe = None
    if any(j.kind in ("image", "prompt") for j in jobs):
        from core.mvdiffusion import MVDreamPipeline, to_lgm_order

        text_only = all(j.kind == "prompt" for j in jobs)
        mv_model = args.mv_model or (DEFAULT_MVDREAM if text_only else DEFAULT_IMAGEDREAM)
        print(f"[infer] multi-view diffusion: {mv_model}")
        pipe = MVDreamPipeline.from_pretrained(mv_model, torch_dtype=dtype).to(device)
        if pipe.is_imagedream == text_only:
            want = "an MVDream (text)" if text_only else "an ImageDream (image)"
            raise InferError(f"--mv-model {mv_model} is not {want} model")

    # 2. LGM
    from core.models import LGM

    model = LGM(opt)
    load_weights(model, resume, strict=True, preset=args.preset)
    model = model.to(device=device, dtype=dtype).eval()
    rays = model.prepare_default_rays(device, elevation=args.elevation).to(dtype)  # [4, 6, H, W]
    print(f"[infer] LGM '{args.preset}' from {resume} on {device} ({str(dtype).replace('torch.', '')})")

    # 3. one object per job
    for k, job in enumerate(jobs, 1):
        t0 = time.perf_counter()
        print(f"[infer] ({k}/{len(jobs)}) {job.name}")
        if job.kind == "views":
            views = read_views(job.path)  # [4, H, W, 3], LGM order
        else:
            image = None
            if job.kind == "image":
                try:
                    image = prepare_image(images[job.name], remover, args.border_ratio, MV_SIZE)  # [256, 256, 3]
                except ValueError as e:
                    raise InferError(f"{job.path}: {e}") from e
            mv = pipe(
                prompt=args.prompt or "",
                image=image,
                negative_prompt=args.negative_prompt,
                height=MV_SIZE,
                width=MV_SIZE,
                elevation=-args.elevation,  # the pipeline takes MVDream's sign (positive = from above)
                num_inference_steps=args.steps,
                guidance_scale=args.guidance_scale,
                seed=args.seed,
            )  # [4, 256, 256, 3], MVDream's frame order
            views = to_lgm_order(mv)
        write_image(workspace / f"{job.name}_mv.png", np.concatenate(list(views), axis=1))  # [H, 4W, 3]

        x = torch.from_numpy(views).permute(0, 3, 1, 2).to(device, torch.float32)  # [4, 3, H, W]
        x = F.interpolate(x, size=(opt.input_size, opt.input_size), mode="bilinear", align_corners=False)
        x = torch.cat([normalize_imagenet(x).to(dtype), rays], dim=1)[None]  # [1, 4, 9, S, S]
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            gaussians = model.forward_gaussians(x).float()  # [1, N, 14]

        outputs = [workspace / f"{job.name}.ply"]
        model.gs.save_ply(gaussians, outputs[0])
        if args.splat:
            from core.gs import save_splat

            outputs.append(workspace / f"{job.name}.splat")
            save_splat(gaussians, outputs[-1])
        if args.video_frames > 0:
            from core.export import render_turntable, write_video

            frames = render_turntable(
                model.gs, gaussians, opt, num_frames=args.video_frames, elevation=args.elevation, progress=True
            )
            outputs.append(workspace / f"{job.name}.mp4")
            write_video(outputs[-1], frames, fps=args.fps)
        outputs.append(workspace / f"{job.name}_mv.png")
        print(f"[infer]   {time.perf_counter() - t0:.1f} s -> " + ", ".join(str(p) for p in outputs))
    return 0


def main(argv=None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]), run, and return the exit code (2: missing weights or bad input)."""
    from core.weights import WeightsError

    args = tyro.cli(InferArgs, args=argv, description=__doc__.split("\n\n")[0])
    try:
        return run(args)
    except (WeightsError, InferError) as e:
        bar = "-" * 78
        print(f"\n{bar}\ninfer.py: {e}\n{bar}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
