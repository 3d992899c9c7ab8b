"""From an image, a prompt or 4 views to 3D Gaussians and their exports: the steps ``infer.py`` and
``scripts/app.py`` both call.

    model = load_lgm("big", "pretrained/model_fp16_fixrot.safetensors", device)
    pipe = load_mv_pipeline(DEFAULT_IMAGEDREAM, "image", device)
    image = prepare_image(read_image("photo.png"), BackgroundRemover(), border_ratio=0.2)
    views = generate_views(pipe, image=image, settings=Settings(steps=30))   # [4, 256, 256, 3]
    gaussians = views_to_gaussians(model, views)                             # [1, N, 14]
    files = export_outputs(model, gaussians, views, "out/photo", ExportSettings())

Low memory (``--offload``): pass one ``core.offload.Offload("model" or "sequential", device)`` to
both loaders; the models then wait on the CPU and visit the GPU only while they run.

Every user mistake (bad numbers, unreadable files, views of the wrong shape, a model of the wrong
kind) raises :class:`GenerationError` (or an ``ImageReadError`` / ``WeightsError`` /
``OutputError``), all :class:`core.errors.UserError`, with a message a person can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from core.cameras import default_input_poses, model_input
from core.errors import UserError
from core.images import IMAGE_SUFFIXES, read_image, write_image

DEFAULT_IMAGEDREAM = "pretrained/imagedream-ipmv-diffusers"
DEFAULT_MVDREAM = "pretrained/mvdream-sd2.1-diffusers"
MV_SIZE = 256  # the published MVDream/ImageDream models generate 256 px views
MIN_VIDEO_SIZE = 256  # turntables of small presets (the CPU demo renders 64 px) are enlarged to this
MIN_VIEW_SIZE = 32  # px per view: smaller --views are refused (the cpu preset, the smallest, reads 32 px)


class GenerationError(UserError, ValueError):
    """A problem with the user's inputs or settings; the message says what to do."""


@dataclass
class PrepareSettings:
    """How a user's image is prepared for the diffusion model."""

    border_ratio: float = 0.2
    """Empty margin around the recentred object, as a fraction of the image side."""

    def check(self):
        _require(0 <= self.border_ratio < 1, f"border ratio must be in [0, 1), got {self.border_ratio}")
        return self


@dataclass
class Settings(PrepareSettings):
    """How the 4 views are made (diffusion) and read (LGM). infer.py's flags are these fields."""

    steps: int = 30
    """DDIM steps of the multi-view diffusion."""
    guidance_scale: float = 5.0
    """Classifier-free guidance scale (1 = none)."""
    elevation: float = 0.0
    """Elevation of the 4 views in degrees (core.cameras convention: negative looks from above)."""
    seed: int = 0
    """Seed of the diffusion noise (the same for every input)."""
    negative_prompt: str = ""
    """Negative prompt for classifier-free guidance."""

    def check(self) -> "Settings":
        super().check()
        _require(self.steps >= 1, f"steps must be at least 1, got {self.steps}")
        _require(self.guidance_scale >= 0, f"guidance scale must be >= 0 (1 = no guidance), got {self.guidance_scale}")
        _require(-90 < self.elevation < 90, f"elevation must be between -90 and 90 degrees, got {self.elevation}")
        return self


@dataclass
class VideoSettings:
    """The turntable video."""

    video_frames: int = 180
    """Frames of the 360-degree turntable video (0 = no video)."""
    fps: int = 30
    """Frame rate of the video."""

    def check(self):
        _require(self.video_frames >= 0, f"video frames must be >= 0 (0 = no video), got {self.video_frames}")
        _require(self.fps >= 1, f"fps must be at least 1, got {self.fps}")
        return self


@dataclass
class ExportSettings(VideoSettings):
    """Which files :func:`export_outputs` writes. infer.py's flags are these fields."""

    splat: bool = False
    """Also write <name>.splat (the antimatter15 web-viewer format)."""
    y_down: bool = False
    """Write .ply and .splat y-down (the COLMAP / 3DGS training convention that PlayCanvas SuperSplat,
    splat-transform and Gradio's Model3D expect; scripts/app.py shows Gradio a y-down copy itself)
    instead of y-up (three.js viewers, scripts/viewer.py). Meshes stay y-up (glTF is y-up)."""
    mesh: bool = False
    """Also write <name>.glb: a textured mesh extracted from the Gaussians (core.mesh; takes seconds)."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise GenerationError(message)


# --------------------------------------------------------------------------- names and inputs


def unique_names(names: list[str]) -> list[str]:
    """Output names, one per input, all different.

    The first input of a name keeps it; a repeated name gets the lowest ``_k`` suffix that is
    neither another input's name nor already given, so ``[same, same, same_1]`` becomes
    ``[same, same_2, same_1]``.
    """
    reserved, given, out = set(names), set(), []
    for name in names:
        if name in given:
            k = 1
            while f"{name}_{k}" in reserved or f"{name}_{k}" in given:
                k += 1
            name = f"{name}_{k}"
        given.add(name)
        out.append(name)
    return out


def prompt_name(text: str, limit: int = 48) -> str:
    """A file name for a prompt: lowercase letters and digits joined by '_' ("A chair!" -> "a_chair")."""
    import re

    name = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return name[:limit] or "prompt"


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder (by suffix), sorted by name."""
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def split_views(image: np.ndarray, source: str = "the views image", notes: Optional[list] = None) -> np.ndarray:
    """4 square views side by side (or stacked) -> float32 [4, S, S, 3] on white, LGM's order.

    image: [H, W, 3|4] float in [0, 1]; transparent pixels are composited on white. A strip 4 times
    taller than wide is read as 4 views stacked top to bottom (the first at the top); ``notes``, when
    given, receives a line saying so.
    """
    h, w = image.shape[:2]
    if w == 4 * h:
        views = np.stack(np.split(image, 4, axis=1))
    elif h == 4 * w:
        views = np.stack(np.split(image, 4, axis=0))
        if notes is not None:
            notes.append(f"{source} is {w}x{h}, 4 times taller than wide: read as 4 views stacked top to bottom "
                         "(azimuth 0 at the top, then 90, 180, 270)")
    else:
        raise GenerationError(f"{source} is {w}x{h}: expected 4 square views side by side (width = 4 x height)")
    return _on_white(views)


def check_views(views: np.ndarray, source: str = "the views") -> np.ndarray:
    """Refuse views that cannot show an object (GenerationError naming ``source``), else return them.

    views: [4, H, W, 3] in [0, 1] on white. Refused: views under ``MIN_VIEW_SIZE`` px (a thumbnail or
    an icon given by mistake: the smallest preset reads 32 px views), and blank views, where no pixel
    of any view is foreground by the model's own rule (``core.models.foreground``: some channel
    below 0.98): there is no object, and the model would turn the white into faint floating Gaussians.
    """
    h, w = views.shape[1:3]
    if min(h, w) < MIN_VIEW_SIZE:
        raise GenerationError(
            f"{source}: the views are {w}x{h} px, too small to reconstruct from (at least {MIN_VIEW_SIZE} px "
            "per view; the models read 32 to 256 px). Is it a thumbnail? Give the full-size views."
        )
    from core.models import foreground

    if not bool((foreground(torch.from_numpy(np.ascontiguousarray(views)).permute(0, 3, 1, 2)) > 0).any()):
        raise GenerationError(
            f"{source}: all 4 views are blank (white or transparent everywhere: no pixel darker than 0.98), "
            "so there is no object to reconstruct and nothing was written. Give views of an object on a white "
            "or transparent background."
        )
    return views


def read_views(path, notes: Optional[list] = None) -> np.ndarray:
    """4 views from an image of 4 side by side (or stacked top to bottom) or from a folder of 4 images
    (sorted by name), at azimuths 0, 90, 180, 270. -> float32 [4, H, W, 3] in [0, 1] on white.

    Refuses (GenerationError / ImageReadError) what is not 4 views, an animation, views under
    ``MIN_VIEW_SIZE`` px and blank views (:func:`check_views`). ``notes``, when given, receives a line
    for each thing accepted that the user may not expect (a strip of stacked views).
    """
    path = Path(path)
    if not path.exists():
        raise GenerationError(f"--views: no such file or folder: {path}")
    if not path.is_dir():
        return check_views(split_views(read_image(path), f"--views image {path}", notes), f"--views {path}")
    files = image_files(path)
    if len(files) != 4:
        raise GenerationError(f"--views folder {path} must hold exactly 4 images, found {len(files)}")
    views = [read_image(f) for f in files]
    if len({v.shape[:2] for v in views}) != 1:
        raise GenerationError(f"--views: the 4 images in {path} differ in size")
    views = [v if v.shape[-1] == 4 else np.concatenate([v, np.ones_like(v[..., :1])], -1) for v in views]
    return check_views(_on_white(np.stack(views)), f"--views {path}")


def _on_white(views: np.ndarray) -> np.ndarray:
    """[4, H, W, 3|4] -> float32 [4, H, W, 3], alpha composited on white."""
    if views.shape[-1] == 4:
        alpha = views[..., 3:4]
        views = views[..., :3] * alpha + (1.0 - alpha)
    return np.ascontiguousarray(views[..., :3], dtype=np.float32)


# --------------------------------------------------------------------------- models


def default_device(name: Optional[str] = None) -> torch.device:
    """``name`` (checked) or cuda when available, else cpu."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GenerationError(f"unknown device '{name}' (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenerationError(f"device '{name}' was asked for but CUDA is not available; use --device cpu")
    return device


def model_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (the published weights are fp16), fp32 elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.float32


def load_lgm(weights, device: torch.device, preset: Optional[str] = None, offload=None):
    """The LGM model of ``weights`` (a path, or a published file name fetched into the Hugging Face
    cache), in eval mode on ``device``. Its options come from the weights themselves (what this
    project's training writes), else from ``preset`` or, for the published files, from their
    tensor shapes (:func:`core.models.options_for_weights`). ``model.preset`` names it.
    ``offload`` (a :class:`core.offload.Offload` computing on ``device``): placed by it instead, in
    ``device``'s dtype (with ``model`` or ``sequential``, its weights wait on the CPU).
    Raises WeightsError."""
    from core.models import LGM, options_for_weights
    from core.weights import fetch_published_weights, load_weights

    path = fetch_published_weights(weights)
    opt, name = options_for_weights(path, preset)
    model = LGM(opt)
    load_weights(model, path, strict=True, preset=name)
    model.weights_path, model.preset = path, name
    if offload is None:
        return model.to(device=device, dtype=model_dtype(device)).eval()
    return offload.place(model.to(dtype=model_dtype(device)).eval(), "lgm")


def load_mv_pipeline(name_or_path, kind: str, device: torch.device, offload=None):
    """The multi-view diffusion pipeline for ``kind`` 'image' (ImageDream) or 'prompt' (MVDream), on
    ``device`` or, with ``offload`` (a :class:`core.offload.Offload` computing on ``device``), its
    components placed by it (loaded on the CPU in ``device``'s dtype and left there to wait)."""
    from core.mvdiffusion import MVDreamPipeline

    pipe = MVDreamPipeline.from_pretrained(str(name_or_path), torch_dtype=model_dtype(device))
    if pipe.is_imagedream != (kind == "image"):
        want = "an ImageDream (image)" if kind == "image" else "an MVDream (text)"
        raise GenerationError(f"multi-view model {name_or_path} is not {want} model")
    return pipe.to(device) if offload is None else offload.place_pipeline(pipe)


# --------------------------------------------------------------------------- the steps


def prepare_input_image(image: np.ndarray, remover=None, settings: Settings = Settings(), source: str = "the image") -> np.ndarray:
    """A user's image -> ImageDream's input: the object cut out (its alpha, else ``remover``, see
    core.preprocess), recentred with ``settings.border_ratio`` margin on white.

    image: [H, W, 3|4] float in [0, 1]. -> float32 [256, 256, 3] in [0, 1]. An image with no
    foreground raises GenerationError naming ``source``.
    """
    from core.preprocess import prepare_image

    try:
        return prepare_image(image, remover, settings.border_ratio, MV_SIZE)  # [256, 256, 3]
    except ValueError as e:
        raise GenerationError(f"{source}: {e}") from e


def generate_views(pipe, image: Optional[np.ndarray] = None, prompt: str = "", settings: Settings = Settings(), progress=True) -> np.ndarray:
    """4 views of one object at the default input cameras, in LGM's order.

    image: ImageDream's input [256, 256, 3] in [0, 1] (see core.preprocess.prepare_image), or None
    for MVDream (text only). -> float32 [4, 256, 256, 3] in [0, 1]
    """
    from core.mvdiffusion import to_lgm_order

    settings.check()
    pipe.set_progress_bar_config(disable=not progress)
    mv = pipe(
        prompt=prompt or "",
        image=image,
        negative_prompt=settings.negative_prompt,
        height=MV_SIZE,
        width=MV_SIZE,
        elevation=-settings.elevation,  # the pipeline takes MVDream's sign (positive = from above)
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        seed=settings.seed,
    )  # [4, 256, 256, 3], MVDream's frame order; NaN views raise NonFiniteViewsError (a UserError)
    return to_lgm_order(mv)


@torch.no_grad()
def views_to_gaussians(model, views: np.ndarray, elevation: float = 0.0) -> Tensor:
    """4 views at the default input cameras (azimuths 0/90/180/270 at ``elevation``) -> Gaussians.

    views: float [4, H, W, 3] in [0, 1], LGM's order. -> float32 [1, N, 14] on the model's (compute) device.
    """
    if views.ndim != 4 or views.shape[0] != 4 or views.shape[-1] != 3:
        raise GenerationError(f"expected 4 RGB views [4, H, W, 3], got {list(views.shape)}")
    from core.offload import execution_device, onload

    opt = model.opt
    onload(model)  # --offload model: LGM's weights to the GPU now (forward_gaussians is not its forward)
    device, dtype = execution_device(model), model.conv.weight.dtype  # (sequential: the weights wait on meta)
    x = torch.from_numpy(np.ascontiguousarray(views, dtype=np.float32)).permute(0, 3, 1, 2).to(device)  # [4, 3, H, W]
    x = F.interpolate(x, size=(opt.input_size, opt.input_size), mode="bilinear", align_corners=False, antialias=True)
    x = model_input(x, default_input_poses(elevation, opt.cam_radius), opt.fovy)[None].to(dtype)  # [1, 4, 9, S, S]
    with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
        return model.forward_gaussians(x).float()  # [1, N, 14]


def export_outputs(model, gaussians: Tensor, views: Optional[np.ndarray], stem, export: ExportSettings = ExportSettings(),
                   elevation: float = 0.0, progress: bool = True) -> dict[str, Path]:
    """Write ``<stem>.ply``, ``<stem>_mv.png`` (the 4 views side by side, readable by --views),
    and, as ``export`` says, ``<stem>.splat``, ``<stem>.mp4`` (turntable) and ``<stem>.glb`` (mesh,
    written last: when no surface can be extracted, GenerationError says so after the rest is written).

    gaussians: [1, N, 14]; views: [4, H, W, 3] or None. -> {kind: path} of the written files, kinds
    ``ply``, ``views``, ``splat``, ``video``, ``mesh``.
    """
    from core.export import render_turntable, write_video
    from core.gs import save_splat

    export.check()
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    files = {"ply": stem.with_name(stem.name + ".ply")}
    model.gs.save_ply(gaussians, files["ply"], y_down=export.y_down)
    if views is not None:
        files["views"] = stem.with_name(stem.name + "_mv.png")
        write_image(files["views"], np.concatenate(list(views), axis=1))  # [H, 4W, 3]
    if export.splat:
        files["splat"] = stem.with_name(stem.name + ".splat")
        save_splat(gaussians, files["splat"], y_down=export.y_down)
    if export.video_frames > 0:
        opt = model.opt
        frames = render_turntable(
            model.gs, gaussians, opt, num_frames=export.video_frames, elevation=elevation, progress=progress,
            size=MIN_VIDEO_SIZE,
        )
        files["video"] = stem.with_name(stem.name + ".mp4")
        write_video(files["video"], frames, fps=export.fps)
    if export.mesh:
        from core.mesh import MeshError, gaussians_to_mesh, save_mesh

        path = stem.with_name(stem.name + ".glb")
        try:
            save_mesh(gaussians_to_mesh(gaussians, progress=progress), path)
        except MeshError as e:
            raise GenerationError(f"no mesh for {path.name} ({', '.join(p.name for p in files.values())} are written): {e}") from e
        files["mesh"] = path
    return files

