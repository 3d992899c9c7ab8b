"""Image(s) or a prompt -> 4 views -> 3D Gaussians -> .ply, turntable .mp4 and a preview of the views.

    python infer.py photo.png more_photos/            # ImageDream, one object per image
    python infer.py --prompt "a wooden chair"         # MVDream, text to 3D
    python infer.py --views four_views.png            # your own 4 views (azimuths 0/90/180/270)
    python infer.py --views a.png --views b/          # several objects, one per --views

Per input, in --workspace: <name>.ply, <name>.mp4, <name>_mv.png (the 4 views side by side, in
LGM's order: feed it back with --views), with --splat <name>.splat and with --mesh <name>.glb (a
textured mesh). Runs in fp16 on CUDA and fp32 on the CPU. A weight file that is missing and cannot
be downloaded stops the run with exit code 2 and a message naming the file and the command that
fetches it.

--views takes a strip of 4 square views side by side, or a folder of 4 images; each --views is one
object. A strip 4 times taller than wide is read as 4 views stacked top to bottom, with a note
saying so. Refused before any model loads, with exit code 2 and nothing written: views under 32 px
(a thumbnail given by mistake), animations (GIF, APNG, WebP of several frames: save the frame you
mean as a PNG), and blank views (white or transparent everywhere: there is no object, and the
model would only make faint floating Gaussians of the white). When the Gaussians of an object hold
no surface for --mesh (core.mesh: all below opacity 1/255, or none above its threshold), its .ply,
_mv.png and .mp4 are written, the .glb is not, and the run stops with exit code 2 and a message
naming the files written.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional, Tuple

import numpy as np
import tyro

from core.runtime import configure_cpu_threads

configure_cpu_threads()  # before torch loads OpenMP: idle threads sleep on a shared machine

from core.generation import ExportSettings, GenerationError, Settings, prompt_name, unique_names
from core.images import IMAGE_SUFFIXES, read_image
from core.offload import OffloadMode


@dataclass
class InferArgs:
    paths: Annotated[Tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="PATH")] = ()
    """Images, or folders of images, to turn into 3D (ImageDream). Not needed with --prompt alone or --views."""
    preset: Optional[str] = None
    """LGM preset of the checkpoint (big, small, tiny, cpu, ...). Default: the options stored in weights this
    project trained, or for the published files the preset their tensor shapes match (big)."""
    resume: str = "pretrained/model_fp16_fixrot.safetensors"
    """LGM weights (.safetensors/.pt); a bare file name is also looked up in pretrained/."""
    prompt: Optional[str] = None
    """Text: alone, text-to-3D with MVDream; with images, ImageDream's text prompt."""
    workspace: str = "workspace_infer"
    """Output folder."""
    views: Annotated[Tuple[str, ...], tyro.conf.UseAppendAction, tyro.conf.arg(metavar="PATH")] = ()
    """An image holding 4 views side by side (or stacked top to bottom: said in a note), or a folder of 4
    images (sorted by name), at the default cameras (azimuth 0, 90, 180, 270): skips the diffusion model.
    Repeat it for several objects (--views a.png --views b.png). Views under 32 px, animations and blank
    (all white) views are refused."""
    mv_model: Optional[str] = None
    """Multi-view diffusion model: a diffusers folder or hub id (default: pretrained/imagedream-ipmv-diffusers
    for images, pretrained/mvdream-sd2.1-diffusers for a prompt)."""
    rembg_model: str = "u2net"
    """rembg background-removal model for images without an alpha channel (file: pretrained/<name>.onnx)."""
    settings: Annotated[Settings, tyro.conf.OmitArgPrefixes] = field(default_factory=Settings)
    """How the 4 views are made and read."""
    export: Annotated[ExportSettings, tyro.conf.OmitArgPrefixes] = field(default_factory=ExportSettings)
    """Which files are written."""
    device: Optional[str] = None
    """Torch device (default: cuda if available, else cpu)."""
    compile: bool = False
    """Compile the LGM U-Net with torch.compile: the first object waits while it compiles (tens of seconds to
    minutes), later ones run faster; worth it for many objects. Not with --offload sequential."""
    offload: OffloadMode = "none"
    """Low GPU memory, for image or text to 3D on small GPUs (the aim: 8 GB): 'model' keeps every model (text and
    image encoders, diffusion U-Net, VAE, LGM) on the CPU and moves each whole to the GPU only while it runs
    (a little slower); 'sequential' moves each layer only for its own forward (least memory, much slower);
    'none' keeps them all on the GPU. The results are the same in every mode. On the CPU (--device cpu)
    nothing moves: accepted, and changes nothing."""


@dataclass
class Job:
    name: str
    kind: str  # "image" | "prompt" | "views"
    path: Optional[Path] = None
    image: Optional[np.ndarray] = None  # the loaded input (image jobs: [H, W, 3|4]; views jobs: [4, H, W, 3])


# --------------------------------------------------------------------------- inputs


def collect_jobs(args: InferArgs) -> list[Job]:
    """What to make, in order: one job per image, or one for --views, or one for --prompt.

    Output names are unique (see core.generation.unique_names); nothing is read yet.
    """
    from core.generation import image_files

    views = (args.views,) if isinstance(args.views, str) else tuple(args.views or ())
    jobs: list[Job] = []
    if views:
        if args.paths:
            raise GenerationError(
                f"give either PATH... (images for ImageDream) or --views, not both (got PATH {' '.join(args.paths)}; "
                "for several 4-view inputs repeat the flag: --views a.png --views b.png)"
            )
        for v in map(Path, views):
            if not v.exists():
                raise GenerationError(f"--views: no such file or folder: {v}")
            jobs.append(Job(v.stem, "views", v))
    for p in map(Path, () if views else args.paths):
        if p.is_dir():
            files = image_files(p)
            if not files:
                raise GenerationError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            jobs += [Job(f.stem, "image", f) for f in files]
        elif p.is_file():
            jobs.append(Job(p.stem, "image", p))
        else:
            raise GenerationError(f"no such file or folder: {p}")
    if not jobs and args.prompt:
        jobs.append(Job(prompt_name(args.prompt), "prompt"))
    if not jobs:
        raise GenerationError("nothing to do: give image files or folders, --prompt TEXT, or --views PATH")
    for job, name in zip(jobs, unique_names([j.name for j in jobs])):
        job.name = name
    return jobs


def read_inputs(jobs: list[Job]) -> None:
    """Read every input file into its job, before any model loads: an unreadable file (or blank,
    tiny or animated views) is an error naming it, not a traceback after minutes of loading. What is
    accepted but may surprise (a strip of views stacked top to bottom) is printed as a note."""
    from core.generation import read_views

    for job in jobs:
        if job.kind == "image":
            job.image = read_image(job.path)
        elif job.kind == "views":
            notes: list[str] = []
            job.image = read_views(job.path, notes)
            for note in notes:
                print(f"[infer] note: {note}")


def settings_of(args: InferArgs):
    """The generation and export settings of the command line, checked (GenerationError)."""
    if args.compile and args.offload == "sequential":
        raise GenerationError("--compile and --offload sequential do not go together (the offload hooks every layer); "
                              "use --offload model, or leave out --compile")
    return args.settings.check(), args.export.check()


# --------------------------------------------------------------------------- the run


def run(args: InferArgs) -> int:
    from core import generation as G
    from core.offload import Offload
    from core.outputs import prepare_output_dir
    from core.preprocess import BackgroundRemover, has_alpha_mask, mask_source

    # 1. everything the user gave, checked before anything heavy is loaded
    settings, export = settings_of(args)
    device = G.default_device(args.device)
    offload = Offload(args.offload, device) if args.offload != "none" else None
    jobs = collect_jobs(args)
    read_inputs(jobs)
    workspace = prepare_output_dir(args.workspace, "--workspace")

    # 2. every model this run needs (a missing weight file stops here, with its download command)
    remover = None
    if any(j.kind == "image" and not has_alpha_mask(j.image) for j in jobs):
        remover = BackgroundRemover(args.rembg_model)
        remover.session()
    pipe = None
    kinds = {j.kind for j in jobs} - {"views"}
    if kinds:
        kind = "image" if "image" in kinds else "prompt"
        mv_model = args.mv_model or (G.DEFAULT_IMAGEDREAM if kind == "image" else G.DEFAULT_MVDREAM)
        print(f"[infer] multi-view diffusion: {mv_model}")
        pipe = G.load_mv_pipeline(mv_model, kind, device, offload)
    model = G.load_lgm(args.resume, device, args.preset, offload)
    print(f"[infer] LGM '{model.preset}' from {model.weights_path} on {device} ({str(G.model_dtype(device)).replace('torch.', '')})")
    if args.compile:
        from core.models import compile_unet

        compile_unet(model)
        print("[infer] --compile: the first object waits while the LGM U-Net compiles")
    if offload is not None:
        print(f"[infer] {offload.describe()}")

    # 3. one object per job
    for k, job in enumerate(jobs, 1):
        t0 = time.perf_counter()
        print(f"[infer] ({k}/{len(jobs)}) {job.name}" + (f" <- {job.path}" if job.path else ""))
        if job.kind == "views":
            views = job.image  # [4, H, W, 3], LGM order
        else:
            image = None
            if job.kind == "image":
                print(f"[infer]   {mask_source(job.image, args.rembg_model)}")
                image = G.prepare_input_image(job.image, remover, settings, str(job.path))  # [256, 256, 3]
            views = G.generate_views(pipe, image=image, prompt=args.prompt or "", settings=settings)
        gaussians = G.views_to_gaussians(model, views, elevation=settings.elevation)  # [1, N, 14]
        files = G.export_outputs(model, gaussians, views, workspace / job.name, export, elevation=settings.elevation)
        print(f"[infer]   {time.perf_counter() - t0:.1f} s -> " + ", ".join(str(p) for p in files.values()))
    return 0


def measure_run(argv, device=None) -> tuple[float, Optional[float]]:
    """Run ``main(argv)`` once (e.g. ``[image, "--offload", "model", ...]``) and return (seconds, peak GPU
    memory in GiB the run allocated on top of what was allocated before it; None without CUDA), for
    scripts/gpu_check.py. device: the CUDA device to measure (default: the current one). Raises
    RuntimeError when the run fails (exit code not 0). The models are freed before it returns."""
    import gc

    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
        gc.collect()  # an earlier run's models (offload hooks make reference cycles) must not count
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    code = main([str(a) for a in argv])
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30 if cuda else None
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    if code != 0:
        raise RuntimeError(f"infer.py {' '.join(map(str, argv))} exited with code {code}")
    return seconds, peak


def main(argv=None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]), run, and return the exit code (2: missing weights,
    bad input or unwritable outputs: core.errors)."""
    from core import errors

    args = tyro.cli(InferArgs, args=argv, description=__doc__.split("\n\n")[0])
    return errors.run(lambda: run(args), "infer.py")


if __name__ == "__main__":
    sys.exit(main())
