"""Web app (Gradio): an image, a prompt or 4 views in; the 4 views, the Gaussians in an interactive 3D
view, a turntable video and .ply / .splat (and optionally .glb) downloads out.

    python scripts/app.py                                      # published weights in pretrained/
    python scripts/app.py --preset cpu --resume workspace_demo/model.safetensors --modes views
    python scripts/app.py --host 0.0.0.0 --port 8000           # reachable from other machines

The steps are those of infer.py (core/generation.py: prepare the image, generate the views, Gaussians,
exports). Models load once at start; requests wait in a queue and run one at a time, with progress in
the page. A way in whose weights are missing is switched off with a note saying how to get them; a
bad input is an error message in the page, and the server keeps serving. Each way in is also an API
endpoint (``image_to_3d``, ``text_to_3d``, ``views_to_3d``; the page's "Use via API" link documents
them):

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    views, model3d, video, ply, splat, glb, info = client.predict(
        handle_file("four_views.png"), 0.0, False, False, api_name="/views_to_3d")

Files of request N go to ``<workspace>/<time>_<name>/``; ``<workspace>/examples/`` holds the example
inputs, synthetic objects rendered at start by core.datasets.synthetic.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import functools  # noqa: E402
import html  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Literal, Optional, Tuple  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.runtime import configure_cpu_threads  # noqa: E402

configure_cpu_threads()  # before torch loads OpenMP: idle threads sleep on a shared machine


from core import generation as G  # noqa: E402
from core.generation import ExportSettings, GenerationError, PrepareSettings, Settings, VideoSettings  # noqa: E402
from core.images import read_image, write_image  # noqa: E402
from core.offload import Offload, OffloadMode, execution_device  # noqa: E402
from core.errors import UserError  # noqa: E402
from core.outputs import OutputError  # noqa: E402
from core.weights import WeightsError, WeightsNotFoundError  # noqa: E402

Mode = Literal["image", "text", "views"]
MODE_TITLES = {"image": "Image to 3D", "text": "Text to 3D", "views": "4 views to 3D"}
EXAMPLE_PROMPTS = ("a red sphere on a blue box", "a wooden chair", "a green ceramic teapot")


@dataclass
class AppArgs:
    preset: Optional[str] = None
    """LGM preset of the checkpoint (big, small, tiny, cpu, ...). Default: the options stored in weights this
    project trained, or for the published files the preset their tensor shapes match (big)."""
    resume: str = "pretrained/model_fp16_fixrot.safetensors"
    """LGM weights (.safetensors/.pt); a bare file name is also looked up in pretrained/."""
    imagedream: str = G.DEFAULT_IMAGEDREAM
    """ImageDream diffusers folder or hub id (image to 3D)."""
    mvdream: str = G.DEFAULT_MVDREAM
    """MVDream diffusers folder or hub id (text to 3D)."""
    rembg_model: str = "u2net"
    """rembg background-removal model for images without an alpha channel (file: pretrained/<name>.onnx)."""
    modes: Tuple[Mode, ...] = ("image", "text", "views")
    """Ways in to offer; only their models are loaded (4 views need LGM alone)."""
    host: str = "127.0.0.1"
    """Address to serve on; 0.0.0.0 serves every network interface (anyone who reaches it can use the app)."""
    port: int = 7860
    """Port to serve on."""
    workspace: str = "workspace_app"
    """Output folder: one sub-folder per request, and examples/ (synthetic renders made at start)."""
    prepare: Annotated[PrepareSettings, tyro.conf.OmitArgPrefixes] = field(default_factory=PrepareSettings)
    """How uploaded images are prepared (--border-ratio); the page sets the diffusion's settings."""
    video: Annotated[VideoSettings, tyro.conf.OmitArgPrefixes] = field(default_factory=VideoSettings)
    """The turntable video of every request (--video-frames, --fps)."""
    queue_size: int = 16
    """Requests that may wait in the queue; more are turned away with a message."""
    device: Optional[str] = None
    """Torch device (default: cuda if available, else cpu)."""
    offload: OffloadMode = "none"
    """Low GPU memory, as infer.py's --offload: 'model' keeps every model (both diffusion pipelines' encoders,
    U-Nets and VAEs, LGM) on the CPU and moves each whole to the GPU only while it runs (a little slower);
    'sequential' moves each layer only for its own forward (least memory, much slower); 'none' keeps them all
    on the GPU. The results are the same in every mode. On the CPU (--device cpu) nothing moves."""


# --------------------------------------------------------------------------- models


@dataclass
class Models:
    """What the app loaded at start, and why a way in is off (mode -> note saying how to fix it)."""

    lgm: object = None
    pipes: dict = field(default_factory=dict)  # "image" -> ImageDream, "text" -> MVDream
    remover: object = None  # core.preprocess.BackgroundRemover, or None when rembg's model is missing
    rembg_note: str = ""  # why images without a transparent background cannot be used
    notes: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    offload: Optional[Offload] = None  # core.offload: where the models wait between uses (None: --offload none)


def load_models(args: AppArgs, device) -> Models:
    """Load LGM and the models of every requested way in. Missing weights switch modes off (with the
    message naming the file and its download command); any other problem (an unknown preset, weights
    of the wrong shape or kind) raises, for main() to report."""
    from core.preprocess import BackgroundRemover

    models = Models(offload=Offload(args.offload, device) if args.offload != "none" else None)
    for mode in MODE_TITLES:
        if mode not in args.modes:
            models.notes[mode] = f"Not offered: start the app with `--modes {' '.join(dict.fromkeys([*args.modes, mode]))}`."
    try:
        models.lgm = G.load_lgm(args.resume, device, args.preset, models.offload)
        print(f"[app] LGM '{models.lgm.preset}' from {models.lgm.weights_path} on {device}")
        if models.offload is not None:
            print(f"[app] {models.offload.describe()}")
    except WeightsNotFoundError as e:
        for mode in args.modes:
            models.notes[mode] = f"The LGM weights are missing. {e}"
    for mode, name in (("image", args.imagedream), ("text", args.mvdream)):
        if mode in args.modes and mode not in models.notes:
            try:
                models.pipes[mode] = G.load_mv_pipeline(name, "image" if mode == "image" else "prompt", device, models.offload)
                print(f"[app] {MODE_TITLES[mode]}: {name}")
            except WeightsNotFoundError as e:
                models.notes[mode] = f"The multi-view diffusion weights are missing. {e}"
    if "image" in models.pipes:
        remover = BackgroundRemover(args.rembg_model)
        try:
            remover.session()
            models.remover = remover
        except WeightsError as e:
            models.rembg_note = f"Only images with a transparent background can be used: {e}"
    for mode in MODE_TITLES:  # one console line per tab that is off, in the page's order
        if mode in models.notes:
            print(f"[app] {MODE_TITLES[mode]} is off: {one_line(models.notes[mode])}", flush=True)
    if models.rembg_note:
        print(f"[app] {one_line(models.rembg_note)}", flush=True)
    return models


def one_line(text: str) -> str:
    """A (multi-line) note as one console line."""
    return " ".join(text.split())


def nothing_to_serve(args: AppArgs, models: Models) -> Optional[str]:
    """None while a tab works; else the message saying why each tab asked for (--modes) is off."""
    if any(mode not in models.notes for mode in MODE_TITLES):
        return None
    reasons = {}  # note -> the tabs it switches off (missing LGM weights switch all of them off)
    for mode in dict.fromkeys(args.modes):
        reasons.setdefault(models.notes[mode], []).append(MODE_TITLES[mode])
    return "every tab is off, so there is nothing to serve:\n" + "\n".join(
        f"{', '.join(titles)}: {note}" for note, titles in reasons.items())


# --------------------------------------------------------------------------- examples


def make_examples(folder: Path, opt) -> dict[str, list[str]]:
    """Example inputs rendered from the embedded synthetic objects (core.datasets.synthetic), written
    once into ``folder``: RGBA front views for image to 3D, the 4 default input views side by side for
    4 views to 3D. -> {"image": [png, ...], "views": [png, ...]}"""
    import torch

    from core.cameras import default_input_poses, orbit_camera
    from core.datasets.synthetic import render_object, sample_object

    size = G.MV_SIZE
    out: dict[str, list[str]] = {"image": [], "views": []}
    for kind, seeds in (("image", (3, 8, 9)), ("views", (4, 5))):
        for seed in seeds:
            path = folder / f"synthetic_{seed}_{kind}.png"
            if not path.is_file():
                spec = sample_object(torch.Generator().manual_seed(seed))
                if kind == "image":  # the front view (azimuth 0), seen a little from above
                    c2w = orbit_camera(-10.0, 0.0, opt.cam_radius)[None]
                    rgba = render_object(spec, c2w, size, opt.fovy)[0].permute(1, 2, 0)  # [S, S, 4]
                    write_image(path, rgba.numpy())
                else:  # LGM's input cameras: azimuths 0/90/180/270 at elevation 0, on white
                    rgba = render_object(spec, default_input_poses(0.0, opt.cam_radius), size, opt.fovy)  # [4, 4, S, S]
                    rgb = rgba[:, :3] * rgba[:, 3:] + (1 - rgba[:, 3:])  # [4, 3, S, S]
                    write_image(path, torch.cat(list(rgb), dim=2).permute(1, 2, 0).numpy())  # [S, 4S, 3]
            out[kind].append(str(path))
    return out


# --------------------------------------------------------------------------- requests


def refuse(message: str) -> gr.Error:
    """An error message for the page (and the API client), without a traceback in the server log."""
    return gr.Error(html.escape(message, quote=False), print_exception=False)


def user_errors(fn):
    """Turn the project's errors into an error message in the page (gr.Error); anything unexpected
    is logged with its traceback and reported in one line. The server keeps serving either way."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except UserError as e:  # core.errors: a message for people
            print(f"[app] request refused: {e}", file=sys.stderr)
            raise refuse(str(e)) from None
        except Exception as e:
            traceback.print_exc()
            raise refuse(f"internal error ({type(e).__name__}: {e}); the server log has the details") from None

    return wrapper


class App:
    """The request handlers. Each returns the outputs of the page: (views png, y-down .splat for the
    3D view, video, .ply, .splat, .glb or None, a Markdown summary)."""

    def __init__(self, args: AppArgs, models: Models, workspace: Path):
        self.args, self.models, self.workspace = args, models, workspace

    # the three ways in; parameter names are those of the API endpoints
    @user_errors
    def image_to_3d(self, image: Optional[str], prompt: str = "", seed: float = 0, steps: float = 30, guidance_scale: float = 5.0,
                    elevation: float = 0.0, y_down: bool = False, mesh: bool = False, progress=gr.Progress(track_tqdm=True)):
        from core.preprocess import has_alpha_mask, mask_source

        self._check_mode("image")
        if not image:
            raise refuse("No image: upload one (an object photo, or a render with a transparent background) or pick an example.")
        settings = self._settings(seed, steps, guidance_scale, elevation)
        picture = read_image(image)  # [H, W, 3|4]
        if not has_alpha_mask(picture) and self.models.remover is None:
            raise refuse(f"{Path(image).name} has no transparent background. {self.models.rembg_note}")
        with self.models.lock:
            t0 = time.perf_counter()
            progress(0.0, desc="preparing the image")
            prepared = G.prepare_input_image(picture, self.models.remover, settings, Path(image).name)  # [256, 256, 3]
            progress(0.05, desc="multi-view diffusion")
            views = G.generate_views(self.models.pipes["image"], image=prepared, prompt=prompt or "", settings=settings)
            how = mask_source(picture, self.args.rembg_model)
            return self._finish(G.prompt_name(Path(image).stem), views, settings, y_down, mesh, t0, progress, how)

    @user_errors
    def text_to_3d(self, prompt: str, seed: float = 0, steps: float = 30, guidance_scale: float = 5.0, elevation: float = 0.0,
                   y_down: bool = False, mesh: bool = False, progress=gr.Progress(track_tqdm=True)):
        self._check_mode("text")
        if not (prompt or "").strip():
            raise refuse("No prompt: describe the object, e.g. \"a wooden chair\".")
        settings = self._settings(seed, steps, guidance_scale, elevation)
        with self.models.lock:
            t0 = time.perf_counter()
            progress(0.0, desc="multi-view diffusion")
            views = G.generate_views(self.models.pipes["text"], prompt=prompt.strip(), settings=settings)
            return self._finish(G.prompt_name(prompt), views, settings, y_down, mesh, t0, progress, f"prompt: {prompt.strip()}")

    @user_errors
    def views_to_3d(self, views: Optional[str], elevation: float = 0.0, y_down: bool = False, mesh: bool = False,
                    progress=gr.Progress(track_tqdm=True)):
        self._check_mode("views")
        if not views:
            raise refuse("No image: upload 4 square views side by side (azimuths 0, 90, 180, 270) or pick an example.")
        settings = Settings(elevation=float(elevation)).check()
        four = G.split_views(read_image(views), Path(views).name)  # [4, H, W, 3]
        with self.models.lock:
            return self._finish(G.prompt_name(Path(views).stem), four, settings, y_down, mesh, time.perf_counter(), progress,
                                "4 views given")

    # shared steps
    def _check_mode(self, mode: str) -> None:
        note = self.models.notes.get(mode)
        if note:
            raise refuse(f"{MODE_TITLES[mode]} is off on this server. {note}")

    def _settings(self, seed, steps, guidance_scale, elevation) -> Settings:
        for what, value in (("seed", seed), ("steps", steps)):
            if value is None or float(value) != int(float(value)):
                raise GenerationError(f"{what} must be a whole number, got {value}")
        return Settings(steps=int(steps), guidance_scale=float(guidance_scale), elevation=float(elevation), seed=int(seed),
                        border_ratio=self.args.prepare.border_ratio).check()

    def _finish(self, name: str, views: np.ndarray, settings: Settings, y_down: bool, mesh: bool, t0: float, progress, how: str):
        """views [4, H, W, 3] -> Gaussians -> files in a new request folder -> the page's outputs."""
        from core.gs import save_splat

        model = self.models.lgm
        progress(0.6, desc="Gaussians")
        gaussians = G.views_to_gaussians(model, views, elevation=settings.elevation)  # [1, N, 14]
        progress(0.65, desc="exports (video" + (", mesh)" if mesh else ")"))
        export = ExportSettings(video_frames=self.args.video.video_frames, fps=self.args.video.fps, splat=True,
                                y_down=bool(y_down), mesh=bool(mesh))
        stem = self._request_folder(name) / name
        files = G.export_outputs(model, gaussians, views, stem, export, elevation=settings.elevation)
        shown = files["splat"]
        if not y_down:  # Gradio's splat renderer (gsplat.js) is y-down: it gets its own copy
            shown = stem.with_name(stem.name + "_y-down.splat")
            save_splat(gaussians, shown, y_down=True)
        summary = (f"**{name}**: {gaussians.shape[1]:,} Gaussians ({how}; seed {settings.seed}, "
                   f"elevation {settings.elevation:g}°), {time.perf_counter() - t0:.1f} s. Files: `{stem.parent}`"
                   + (" (.ply/.splat y-down)" if y_down else ""))
        as_str = lambda k: str(files[k]) if k in files else None  # noqa: E731
        return as_str("views"), str(shown), as_str("video"), as_str("ply"), as_str("splat"), as_str("mesh"), summary

    def _request_folder(self, name: str) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for k in range(1000):
            folder = self.workspace / (f"{stamp}_{name}" + (f"_{k}" if k else ""))
            try:
                folder.mkdir(parents=True)
                return folder
            except FileExistsError:
                continue
        raise OutputError(f"cannot make a new folder in {self.workspace}")


def image_input(**kwargs) -> gr.Image:
    """A gr.Image that passes the uploaded file's path on (the project reads it: 16-bit, alpha, ...)
    and answers a file that is not an image with an error message. (Its ``preprocess`` is wrapped on
    the instance: a subclass of a Gradio component would make Gradio write a .pyi beside this file.)"""
    component = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], **kwargs)
    base = component.preprocess

    def preprocess(payload):
        try:
            return base(payload)
        except Exception as e:  # PIL cannot identify the file
            name = getattr(payload, "orig_name", None) or "the upload"
            raise refuse(f"{name} is not an image file that can be read ({type(e).__name__}); use a PNG, JPEG, WebP or TIFF") from None

    component.preprocess = preprocess
    return component


def number_input(component):
    """``component`` (a gr.Slider or gr.Number) answering a value outside its range, or no number at
    all (an API request can send anything), with an error message naming the setting and one line in
    the server log instead of Gradio's traceback. (Wrapped on the instance, as in image_input.)"""
    base = component.preprocess

    def preprocess(payload):
        try:
            return base(payload)
        except gr.Error as e:  # "Value 0 is less than minimum value 1."
            message = f"{component.label}: {e.message}"
        except Exception as e:  # a string, a list, ...
            message = f"{component.label}: {repr(payload)[:60]} is not a number ({type(e).__name__})"
        print(f"[app] request refused: {message}", file=sys.stderr, flush=True)
        raise refuse(message) from None

    component.preprocess = preprocess
    return component


# --------------------------------------------------------------------------- the page


def build_demo(args: AppArgs, models: Models, workspace: Path, examples: dict) -> gr.Blocks:
    app = App(args, models, workspace)
    about = "LGM: not loaded"
    if models.lgm is not None:
        about = f"LGM `{models.lgm.preset}` on {execution_device(models.lgm)}" + (
            f" (offload {models.offload.mode})" if models.offload is not None else "")
    with gr.Blocks(title="3D Gaussians from an image, a prompt or 4 views", analytics_enabled=False,
                   delete_cache=(3600, 86400)) as demo:
        gr.Markdown("## 3D Gaussians from an image, a prompt or 4 views\n"
                    f"4 views (ImageDream / MVDream) -> 3D Gaussians (LGM) -> .ply, .splat, turntable video. {about}.")
        with gr.Row():
            with gr.Column(scale=1):
                buttons = {}
                offered = [m for m in MODE_TITLES if m not in models.notes] or list(MODE_TITLES)
                with gr.Tabs(selected=offered[0]):  # the first tab that works
                    with gr.Tab(MODE_TITLES["image"], id="image"):
                        _note(models, "image")
                        image = image_input(label="Image (transparent background, or rembg cuts the object out)", height=280,
                                            elem_id="image-input")
                        image_prompt = gr.Textbox(label="Prompt (optional)", placeholder="what the object is")
                        if models.rembg_note:
                            gr.Markdown(_md(models.rembg_note))
                        gr.Examples(examples=[[p] for p in examples["image"]], inputs=[image], elem_id="image-examples",
                                    label="Examples: synthetic objects rendered by core.datasets.synthetic")
                        buttons["image"] = _generate_button(models, "image", "Generate from the image")
                    with gr.Tab(MODE_TITLES["text"], id="text"):
                        _note(models, "text")
                        prompt = gr.Textbox(label="Prompt", placeholder="a wooden chair")
                        gr.Examples(examples=[[p] for p in EXAMPLE_PROMPTS], inputs=[prompt], label="Examples",
                                    elem_id="text-examples")
                        buttons["text"] = _generate_button(models, "text", "Generate from the prompt")
                    with gr.Tab(MODE_TITLES["views"], id="views"):
                        _note(models, "views")
                        views_in = image_input(label="4 square views side by side: azimuths 0, 90, 180, 270 (no diffusion model)",
                                               height=200, elem_id="views-input")
                        gr.Examples(examples=[[p] for p in examples["views"]], inputs=[views_in], elem_id="views-examples",
                                    label="Examples: synthetic objects at LGM's input cameras")
                        buttons["views"] = _generate_button(models, "views", "Generate from the 4 views")
                with gr.Accordion("Settings", open=True):
                    with gr.Row():
                        seed = number_input(gr.Number(value=0, precision=0, label="Seed"))
                        steps = number_input(gr.Slider(1, 100, value=30, step=1, label="Diffusion steps"))
                    with gr.Row():
                        guidance = number_input(gr.Slider(0, 20, value=5.0, step=0.5, label="Guidance scale"))
                        elevation = number_input(gr.Slider(-60, 60, value=0, step=1,
                                                           label="Elevation (degrees, negative = from above)"))
                    with gr.Row():
                        y_down = gr.Checkbox(label="y-down .ply/.splat (SuperSplat, splat-transform)", value=False)
                        mesh = gr.Checkbox(label="Also a textured mesh (.glb; takes seconds)", value=False)
            with gr.Column(scale=1):
                views_out = gr.Image(label="The 4 views (azimuths 0, 90, 180, 270)", type="filepath", interactive=False, format="png")
                model3d = gr.Model3D(label="Gaussians: drag to orbit, scroll to zoom", height=360, interactive=False,
                                     elem_id="gaussians-3d")
                video = gr.Video(label="Turntable", interactive=False, autoplay=True, loop=True, height=320)
                ply = gr.File(label=".ply (3DGS PLY)", interactive=False, height=60)
                splat = gr.File(label=".splat (web viewers)", interactive=False, height=60)
                glb = gr.File(label=".glb (textured mesh)", interactive=False, height=60, visible=False)
                info = gr.Markdown()
        outputs = [views_out, model3d, video, ply, splat, glb, info]
        common = dict(outputs=outputs, concurrency_id="models", concurrency_limit=1)
        buttons["image"].click(app.image_to_3d, [image, image_prompt, seed, steps, guidance, elevation, y_down, mesh],
                               api_name="image_to_3d", **common)
        buttons["text"].click(app.text_to_3d, [prompt, seed, steps, guidance, elevation, y_down, mesh], api_name="text_to_3d", **common)
        buttons["views"].click(app.views_to_3d, [views_in, elevation, y_down, mesh], api_name="views_to_3d", **common)
        mesh.change(lambda wanted: gr.File(visible=wanted), mesh, glb, queue=False, api_visibility="private")  # the .glb slot
    return demo


def _md(text: str) -> str:
    return text.replace("\n", "  \n")


def _generate_button(models: Models, mode: str, text: str) -> gr.Button:
    """The button of a tab; disabled when the mode is off."""
    return gr.Button(text, variant="primary", interactive=mode not in models.notes, elem_id=f"generate-{mode}")


def _note(models: Models, mode: str) -> None:
    if mode in models.notes:
        gr.Markdown(_md(f"**{MODE_TITLES[mode]} is off.** {models.notes[mode]}"))


# --------------------------------------------------------------------------- main


def check_port(host: str, port: int) -> None:
    """Raise GenerationError when ``host:port`` cannot be served (in use, or not an address here)."""
    if not 1 <= port <= 65535:
        raise GenerationError(f"--port must be in 1..65535, got {port}")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise GenerationError(f"cannot serve on {host}:{port} ({e.strerror}); choose another --port or --host") from None


def main(argv=None) -> int:
    """Parse ``argv``, load the models, serve until Ctrl-C. Exit code 2: bad flags, an unusable
    --workspace or port, weights of the wrong kind, no tab left to offer (all their weights missing)."""
    from core import errors

    args = tyro.cli(AppArgs, args=argv, description=__doc__.split("\n\n")[0])
    return errors.run(lambda: serve(args), "app.py")


def serve(args: AppArgs) -> int:
    """Check the flags, load the models, build the page and serve it (core.errors.UserError on bad setup)."""
    from core.options import config_defaults
    from core.outputs import prepare_output_dir

    if args.preset is not None and args.preset not in config_defaults:
        raise GenerationError(f"unknown preset '{args.preset}'; choose one of {', '.join(config_defaults)}")
    if not args.modes:
        raise GenerationError("--modes needs at least one of image, text, views")
    args.prepare.check()
    args.video.check()
    if args.queue_size < 1:
        raise GenerationError(f"--queue-size must be at least 1, got {args.queue_size}")
    check_port(args.host, args.port)
    workspace = prepare_output_dir(args.workspace, "--workspace").resolve()
    device = G.default_device(args.device)
    models = load_models(args, device)
    off = nothing_to_serve(args, models)
    if off:
        raise GenerationError(off)
    examples = make_examples(workspace / "examples", models.lgm.opt if models.lgm is not None else config_defaults["big"])
    demo = build_demo(args, models, workspace, examples)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(workspace)], ssr_mode=False,
                max_file_size="64mb", show_error=True, footer_links=["api"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
