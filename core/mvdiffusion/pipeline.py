"""MVDream (text -> 4 views) and ImageDream (image [+ text] -> 4 views) as a diffusers pipeline.

One class serves both published diffusers folders; the U-Net's config decides the variant
(``ip_dim > 0``: ImageDream, which also needs ``image_encoder`` and ``feature_extractor``).
Every component is loaded by its own library's ``from_pretrained`` from a local folder or a hub
id; the U-Net is always our :class:`MultiViewUNetModel` (no remote code is ever run).

Cameras: MVDream conditions on flattened 4x4 camera-to-world poses of radius-1 orbit cameras at
azimuths 0, 90, 180, 270 (+ an all-zero pose for ImageDream's reference view), expressed in a
z-up world. Its ``elevation`` is in degrees, positive = looking down from above, the sign
opposite to :mod:`core.cameras` (whose negative elevation looks from above).

View order: MVDream's frame j is the view at its azimuth 90*j. LGM's input view i (our azimuth
90*i) is MVDream's frame (i + 1) % 4, as in the published LGM inference: use :func:`to_lgm_order`.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from core.cameras import orbit_camera, yup_to_zup
from core.errors import UserError
from core.mvdiffusion.unet import MultiViewUNetModel

# published diffusers folders: folder name in pretrained/ -> hub id, and how to fetch each
PUBLISHED = {
    "imagedream-ipmv-diffusers": "ashawkey/imagedream-ipmv-diffusers",
    "mvdream-sd2.1-diffusers": "ashawkey/mvdream-sd2.1-diffusers",
}
DOWNLOAD_COMMANDS = {
    "imagedream-ipmv-diffusers": "python scripts/download_weights.py --only imagedream",
    "mvdream-sd2.1-diffusers": "python scripts/download_weights.py --only mvdream",
}

# LGM's input view i is MVDream's frame MV_TO_LGM[i]
MV_TO_LGM = (1, 2, 3, 0)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# --------------------------------------------------------------------------- cameras and views


def mvdream_cameras(num_frames: int = 4, elevation: float = 0.0, extra_view: bool = False) -> Tensor:
    """MVDream's camera conditioning: [num_frames (+1), 16] row-major flattened 4x4 poses.

    Frame j: the OpenGL camera-to-world pose of a radius-1 orbit camera at azimuth 360*j/num_frames
    and ``elevation`` (degrees, positive = from above), with its rows mapped from our y-up world
    to MVDream's z-up world ((x, y, z) -> (x, -z, y)). ``extra_view`` appends ImageDream's all-zero
    pose of the reference view.
    """
    azimuths = torch.arange(num_frames, dtype=torch.float32) * (360.0 / num_frames)
    poses = orbit_camera(torch.full((num_frames,), -float(elevation)), azimuths, radius=1.0)  # [F, 4, 4]
    cams = yup_to_zup(poses).reshape(num_frames, 16)
    if extra_view:
        cams = torch.cat([cams, torch.zeros(1, 16)], dim=0)
    return cams


def clip_input_uint8(image: np.ndarray) -> np.ndarray:
    """ImageDream's image prompt as the CLIP processor gets it: [H, W, 3+] float in [0, 1] ->
    uint8 [H, W, 3], truncated like the published pipeline's ``(x * 255).astype(np.uint8)``."""
    return (np.clip(np.asarray(image[..., :3], dtype=np.float32), 0.0, 1.0) * 255).astype(np.uint8)


def to_lgm_order(views):
    """MVDream frames (azimuths 0, 90, 180, 270 of MVDream) -> LGM's input views 0..3.

    views: [4, ...] numpy array or tensor -> [4, ...] with view i = frame MV_TO_LGM[i].
    """
    if len(views) != 4:
        raise ValueError(f"expected 4 views, got {len(views)}")
    return views[list(MV_TO_LGM)]


def classifier_free_guidance(noise_pred: Tensor, guidance_scale: float) -> Tensor:
    """[2N, ...] predictions (unconditional half first) -> uncond + scale * (cond - uncond): [N, ...]"""
    uncond, cond = noise_pred.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


# --------------------------------------------------------------------------- locating weights


def _weights_error(msg: str) -> Exception:
    from core.weights import WeightsNotFoundError

    return WeightsNotFoundError(msg)


def _missing_message(name_or_path: str, reason: str = "") -> str:
    folder = Path(str(name_or_path)).name
    cmd = DOWNLOAD_COMMANDS.get(folder) or next(
        (c for f, c in DOWNLOAD_COMMANDS.items() if PUBLISHED[f] == str(name_or_path)), None
    )
    how = f"Fetch it with `{cmd}`" if cmd else "Check the path or hub id"
    return (
        f"Multi-view diffusion weights not found: {name_or_path}\n"
        f"(a diffusers folder holding model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
        + (f"\n{reason}" if reason else "")
        + f"\n{how}, or pass another local folder or hub id (infer.py: --mv-model)."
    )


def hub_weight_patterns(files: list[str]) -> list[str]:
    """The files of a diffusers repo worth downloading: configs, tokenizer files, and per folder
    one copy of the weights (safetensors over .bin, the full-precision file over variants)."""
    keep = ["*.json", "*.txt"]
    by_folder: dict[str, list[str]] = {}
    for f in files:
        if f.endswith((".safetensors", ".bin")):
            by_folder.setdefault(os.path.dirname(f), []).append(f)
    for fs in by_folder.values():
        chosen = [f for f in fs if f.endswith(".safetensors")] or fs
        plain = [f for f in chosen if len(os.path.basename(f).split(".")) == 2]  # no ".fp16." variant
        keep += plain or chosen
    return keep


def download_diffusers_repo(repo_id: str, local_dir=None, local_files_only: bool = False) -> Path:
    """Fetch a diffusers repo (see :func:`hub_weight_patterns`) into ``local_dir`` or the HF cache."""
    from huggingface_hub import HfApi, snapshot_download

    if local_files_only:
        return Path(snapshot_download(repo_id, local_dir=local_dir, local_files_only=True))
    patterns = hub_weight_patterns(HfApi().list_repo_files(repo_id))
    return Path(snapshot_download(repo_id, allow_patterns=patterns, local_dir=local_dir))


def resolve_pipeline_folder(name_or_path: Union[str, os.PathLike], local_files_only: Optional[bool] = None) -> Path:
    """A local diffusers folder for a folder path or a hub id.

    An existing folder is used as is. A missing ``.../imagedream-ipmv-diffusers`` or
    ``.../mvdream-sd2.1-diffusers`` falls back to its published hub repo; anything shaped
    ``owner/name`` that is not a folder is a hub id. Hub repos come from the HF cache, downloaded
    unless offline (``HF_HUB_OFFLINE=1`` / ``LGM_OFFLINE=1``, ``local_files_only``, or the hub
    unreachable: see :func:`core.hub.download_blocker`). Raises
    ``core.weights.WeightsNotFoundError`` naming the folder and the download command.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise _weights_error(_missing_message(str(name_or_path), f"{path} has no model_index.json."))
        return path
    repo_id = PUBLISHED.get(path.name)
    if repo_id is None and _HUB_ID.match(str(name_or_path)):
        repo_id = str(name_or_path)
    if repo_id is None:
        raise _weights_error(_missing_message(str(name_or_path)))
    blocked = None
    if local_files_only is None:
        from core.hub import HF_HOST, download_blocker

        blocked = download_blocker(HF_HOST)
        local_files_only = blocked is not None
    try:
        folder = download_diffusers_repo(repo_id, local_files_only=local_files_only)
    except Exception as e:  # offline, unknown repo, no network, ...
        where = (
            f"{blocked or 'local files only'}, and it is not in the Hugging Face cache"
            if local_files_only
            else f"download failed ({type(e).__name__})"
        )
        raise _weights_error(_missing_message(str(name_or_path), f"Tried the hub repo {repo_id}: {where}.")) from e
    if not (folder / "model_index.json").is_file():
        raise _weights_error(_missing_message(str(name_or_path), f"{repo_id} has no model_index.json."))
    return folder


# --------------------------------------------------------------------------- the pipeline


def _text_encoder_classes():
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return {c.__name__: c for c in (CLIPTextModel, CLIPTextModelWithProjection)}


def _image_encoder_classes():
    from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

    return {c.__name__: c for c in (CLIPVisionModel, CLIPVisionModelWithProjection)}


class NonFiniteViewsError(UserError, RuntimeError):
    """The diffusion produced NaN / inf views (the message says what to try)."""


class MVDreamPipeline(DiffusionPipeline):
    """4 consistent views of one object from a prompt (MVDream) or an image (ImageDream).

    ``pipe(prompt, image=None, ...)`` -> float32 numpy [4, H, W, 3] in [0, 1], MVDream's frames
    (azimuths 0, 90, 180, 270); :func:`to_lgm_order` gives LGM's input order.
    """

    _optional_components = ["image_encoder", "feature_extractor"]
    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: MultiViewUNetModel,
        tokenizer,
        text_encoder,
        scheduler: DDIMScheduler,
        image_encoder=None,
        feature_extractor=None,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            unet=unet,
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def is_imagedream(self) -> bool:
        return int(self.unet.config.ip_dim) > 0

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Union[str, os.PathLike],
        torch_dtype: Optional[torch.dtype] = None,
        local_files_only: Optional[bool] = None,
        **kwargs,
    ) -> "MVDreamPipeline":
        """Load every component from a local diffusers folder or a hub id (no remote code).

        The folder's ``model_index.json`` says which components exist (ImageDream adds
        ``image_encoder`` and ``feature_extractor``); the U-Net is always
        :class:`MultiViewUNetModel`, the scheduler DDIM. Extra kwargs are ignored.
        """
        from transformers import CLIPImageProcessor, CLIPTokenizer

        folder = resolve_pipeline_folder(pretrained_model_name_or_path, local_files_only)
        index = json.loads((folder / "model_index.json").read_text())

        def entry(name: str) -> Optional[str]:
            value = index.get(name)
            if not value or value[1] is None or not (folder / name).is_dir():
                return None
            return value[1]

        for name in ("vae", "unet", "tokenizer", "text_encoder", "scheduler"):
            if entry(name) is None:
                raise _weights_error(_missing_message(str(pretrained_model_name_or_path), f"{folder} lacks '{name}'."))
        if entry("unet") != "MultiViewUNetModel":
            raise ValueError(f"{folder}/unet holds a {entry('unet')}, not a MultiViewUNetModel (MVDream/ImageDream)")

        def pick(name: str, classes: dict):
            cls_name = entry(name)
            if cls_name not in classes:
                raise ValueError(f"{folder}/{name}: unsupported class {cls_name}; expected one of {sorted(classes)}")
            return classes[cls_name]

        def cast(model):
            return model.to(torch_dtype) if torch_dtype is not None else model

        components = dict(
            unet=MultiViewUNetModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch_dtype),
            vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch_dtype),
            text_encoder=cast(pick("text_encoder", _text_encoder_classes()).from_pretrained(folder, subfolder="text_encoder")),
            tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
            scheduler=DDIMScheduler.from_pretrained(folder, subfolder="scheduler"),
            image_encoder=None,
            feature_extractor=None,
        )
        if components["unet"].config.ip_dim > 0:
            for name in ("image_encoder", "feature_extractor"):
                if entry(name) is None:
                    raise _weights_error(
                        _missing_message(str(pretrained_model_name_or_path), f"ImageDream folder {folder} lacks '{name}'.")
                    )
            components["image_encoder"] = cast(
                pick("image_encoder", _image_encoder_classes()).from_pretrained(folder, subfolder="image_encoder")
            )
            components["feature_extractor"] = CLIPImageProcessor.from_pretrained(folder, subfolder="feature_extractor")
        return cls(**components)

    # ------------------------------------------------------------------ conditioning

    def encode_prompt(self, prompt: str) -> Tensor:
        """Text -> CLIP token features [1, T, context_dim] (padded to the tokenizer's max length)."""
        ids = self.tokenizer(
            [prompt], padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return self.text_encoder(ids.to(self._execution_device))[0].to(self.unet.dtype)

    def encode_image(self, image: np.ndarray) -> Tensor:
        """ImageDream: [H, W, 3] float in [0, 1] -> CLIP penultimate-layer features [1, N, D].

        The image goes to the CLIP processor as 8 bits truncated (``x * 255`` cast to uint8), as
        in the published ImageDream pipeline the weights were used with; rounding instead moves
        the features by up to 0.16 for images off the 8-bit grid.
        """
        pixels = self.feature_extractor(images=clip_input_uint8(image), return_tensors="pt").pixel_values
        pixels = pixels.to(self._execution_device, self.image_encoder.dtype)  # [1, 3, S, S]
        return self.image_encoder(pixels, output_hidden_states=True).hidden_states[-2].to(self.unet.dtype)

    def encode_image_latents(self, image: np.ndarray, height: int, width: int, generator=None) -> Tensor:
        """ImageDream: [H, W, 3] float in [0, 1] -> the reference view's scaled VAE latent [1, 4, h, w]."""
        x = torch.from_numpy(np.ascontiguousarray(image[..., :3], dtype=np.float32)).permute(2, 0, 1)[None]  # [1, 3, H, W]
        x = F.interpolate(x * 2.0 - 1.0, (height, width), mode="bilinear", align_corners=False)
        x = x.to(self._execution_device, self.vae.dtype)
        return self.vae.encode(x).latent_dist.sample(generator) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> np.ndarray:
        """Scaled latents [N, 4, h, w] -> float32 numpy [N, H, W, 3] in [0, 1].

        A half-precision VAE can overflow to inf / NaN inside its decoder (``clamp`` would turn
        NaN views into black-or-white pictures that flow on unnoticed): then the same latents are
        decoded again with the VAE in fp32, with a warning. Non-finite latents (the U-Net itself
        overflowed), or views still not finite, raise :class:`NonFiniteViewsError`.
        """
        if not bool(torch.isfinite(latents).all()):
            raise NonFiniteViewsError(
                f"the diffusion U-Net produced non-finite latents ({int((~torch.isfinite(latents)).sum())} values) in "
                f"{self.unet.dtype}; try another --seed, or fewer --steps / a lower --guidance_scale"
            )
        images = self._decode(latents)
        if not bool(torch.isfinite(images).all()) and self.vae.dtype.itemsize < 4:
            warnings.warn(f"the VAE decoder overflowed in {self.vae.dtype} (non-finite pixels); decoding again in float32")
            dtype = self.vae.dtype
            self.vae.to(torch.float32)
            try:
                images = self._decode(latents)
            finally:
                self.vae.to(dtype)
        if not bool(torch.isfinite(images).all()):
            raise NonFiniteViewsError("the VAE decoder produced non-finite pixels even in float32; try another seed")
        return (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()

    def _decode(self, latents: Tensor) -> Tensor:
        """Scaled latents -> decoded images in [-1, 1] (nominally), in the VAE's dtype."""
        return self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def __call__(
        self,
        prompt: str = "",
        image: Optional[np.ndarray] = None,
        negative_prompt: str = "",
        height: int = 256,
        width: int = 256,
        elevation: float = 0.0,
        num_inference_steps: int = 30,
        guidance_scale: float = 5.0,
        num_frames: int = 4,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
        eta: float = 0.0,
        output_type: str = "numpy",
    ):
        """Sample ``num_frames`` views with DDIM and classifier-free guidance.

        prompt / negative_prompt: text (ImageDream works with an empty prompt).
        image: ImageDream's input, float [H, W, 3] in [0, 1] (object centred, white background).
        elevation: camera elevation in degrees, positive = from above (MVDream's convention).
        generator / seed: the source of all noise (a CPU generator seeded with ``seed`` if only
        that is given). -> float32 numpy [num_frames, height, width, 3] in [0, 1]
        (``output_type="latent"``: the scaled latents [num_frames, 4, h, w]).
        """
        if self.is_imagedream and image is None:
            raise ValueError("this is an ImageDream pipeline: pass an image (use an MVDream folder for text only)")
        if not self.is_imagedream and image is not None:
            raise ValueError("this is an MVDream (text-only) pipeline: use an ImageDream folder for an image")
        if generator is None and seed is not None:
            generator = torch.Generator("cpu").manual_seed(int(seed))
        device, dtype = self._execution_device, self.unet.dtype
        use_cfg = guidance_scale > 1.0
        frames = num_frames + (1 if image is not None else 0)  # ImageDream: + the reference view
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor

        text = self.encode_prompt(prompt)  # [1, T, Cc]
        camera = mvdream_cameras(num_frames, elevation, extra_view=image is not None).to(device, dtype)  # [frames, 16]
        extra = {}
        if image is not None:
            ip = self.encode_image(image)  # [1, N, D]
            ip_img = self.encode_image_latents(image, height, width, generator).to(dtype)  # [1, 4, h, w]
            extra = dict(ip=ip.expand(frames, -1, -1), ip_img=ip_img)
        if use_cfg:  # batch = [unconditional frames, conditional frames]
            text = torch.cat([self.encode_prompt(negative_prompt).expand(frames, -1, -1), text.expand(frames, -1, -1)])
            camera = torch.cat([camera, camera])
            if image is not None:  # the unconditional image prompt is all zeros
                extra = dict(
                    ip=torch.cat([torch.zeros_like(extra["ip"]), extra["ip"]]),
                    ip_img=torch.cat([torch.zeros_like(ip_img), ip_img]),
                )
        else:
            text = text.expand(frames, -1, -1)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = randn_tensor((frames, self.unet.config.in_channels, h, w), generator=generator, device=device, dtype=dtype)
        latents = latents * self.scheduler.init_noise_sigma  # [frames, 4, h, w]
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = torch.cat([latents, latents]) if use_cfg else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            noise = self.unet(
                model_in,
                timesteps=t.reshape(1).expand(model_in.shape[0]).to(device),
                context=text,
                num_frames=frames,
                camera=camera,
                **extra,
            )  # [(2) * frames, 4, h, w]
            if use_cfg:
                noise = classifier_free_guidance(noise, guidance_scale)
            latents = self.scheduler.step(noise, t, latents, eta=eta, generator=generator).prev_sample

        latents = latents[:num_frames]  # drop ImageDream's reference view
        if output_type == "latent":
            return latents
        return self.decode_latents(latents)
