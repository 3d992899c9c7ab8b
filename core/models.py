"""LGM: the multi-view U-Net, the Gaussian head, the rendering losses and metrics."""

from __future__ import annotations

import json
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from core.cameras import default_input_poses, plucker_embedding
from core.gs import GaussianRenderer
from core.images import unnormalize_imagenet
from core.metrics import build_lpips, lpips_distance, psnr, ssim
from core.options import Options
from core.runtime import at_least_fp32, no_autocast
from core.unet import UNet


INIT_SCALE_BIAS = -1.5  # 0.1 * softplus(-1.5) = 0.020
PIXEL_CHANNELS = 15  # pixel head: depth (1), offset (3), opacity (1), scale (3), rotation (4), rgb (3)
PIXEL_INIT_OPACITY = 0.1  # pixel head: starting opacity (4 views' Gaussians overlap on the object)
PIXEL_INIT_COVER = 0.5  # pixel head: starting scale, as a fraction of a splat pixel's footprint
PIXEL_EMPTY_OPACITY = 0.005  # pixel head: starting opacity of rays that miss the visual hull (background)
PIXEL_INIT_WEIGHT = 0.1  # pixel head: the output layer's weights are scaled down so Gaussians start near their init

EMPTY_OPACITY_SHIFT = math.log(PIXEL_EMPTY_OPACITY / (1 - PIXEL_EMPTY_OPACITY)) - math.log(
    PIXEL_INIT_OPACITY / (1 - PIXEL_INIT_OPACITY)
)  # added to the opacity logit of rays that miss the hull


def head_channels(opt: Options) -> int:
    """Raw channels the U-Net predicts per splat pixel: 14 for LGM's head, 15 for the pixel head."""
    return PIXEL_CHANNELS if opt.gaussian_head == "pixel" else 14


def activate_gaussians(x: Tensor) -> Tensor:
    """Raw head output -> the 14 activated Gaussian parameters of docs/design.md. [..., 14] -> [..., 14]"""
    pos = x[..., 0:3].clamp(-1, 1)
    opacity = torch.sigmoid(x[..., 3:4])
    scale = 0.1 * F.softplus(x[..., 4:7])
    rotation = F.normalize(x[..., 7:11], dim=-1)
    rgb = 0.5 * torch.tanh(x[..., 11:14]) + 0.5
    return torch.cat([pos, opacity, scale, rotation, rgb], dim=-1)


def splat_footprint(opt: Options) -> float:
    """World size of one splat pixel at the object's centre (distance ``cam_radius``)."""
    return 2.0 * opt.cam_radius * math.tan(math.radians(opt.fovy) / 2) / opt.splat_size


def splat_rays(rays: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The ray of each splat pixel, from the Pluecker embedding of the input pixels it covers.

    rays: [N, 6, H, W] ([o x d, d] per input pixel); size: the splat grid side (<= H). A splat
    pixel's direction is the normalised mean of its input pixels' directions. Returns
    (direction [N, 3, s, s] unit, centre [N, 3, s, s]: the ray's point nearest the world origin,
    ``d x (o x d) = o - (o . d) d``). Computed in at least fp32, also under autocast.
    """
    rays = at_least_fp32(rays)
    with no_autocast(rays.device):
        m = F.adaptive_avg_pool2d(rays[:, :3], size)  # [N, 3, s, s]
        d = F.adaptive_avg_pool2d(rays[:, 3:], size)
        norm = d.norm(dim=1, keepdim=True).clamp_min(1e-8)
        d, m = d / norm, m / norm  # o x d is linear in d for the one camera centre o
        return d, torch.linalg.cross(d, m, dim=1)


def view_axes(rays: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A pinhole camera's centre and axes, recovered from its Pluecker rays.

    rays: [N, 6, H, W] ([o x d, d], d unit, pixel centres symmetric about the principal point).
    The centre solves ``d x m = o - d (d . o)`` in the least-squares sense over all pixels; the
    forward axis is the mean direction, right and up the differences of the right and left
    (top and bottom) halves' mean directions, made orthogonal to it. The sum behind the solve
    cancels (|m| ~ radius, the centre ~ radius too): it runs in at least fp32, also under autocast
    (bf16 would misplace the centre by 1-2%).
    -> (centre, forward, right, up), each [N, 3]
    """
    rays = at_least_fp32(rays)
    with no_autocast(rays.device):
        return _view_axes(rays)


def _view_axes(rays: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    m, d = rays[:, :3].flatten(2), rays[:, 3:].flatten(2)  # [N, 3, P]
    eye = torch.eye(3, dtype=d.dtype, device=d.device)
    a = eye - d @ d.transpose(1, 2) / d.shape[-1]  # [N, 3, 3]
    centre = torch.linalg.solve(a, torch.linalg.cross(d, m, dim=1).mean(2))
    h, w = rays.shape[-2:]
    grid = rays[:, 3:]
    forward = F.normalize(d.mean(2), dim=1)

    def axis(v: Tensor) -> Tensor:
        return F.normalize(v - (v * forward).sum(1, keepdim=True) * forward, dim=1)

    right = axis(grid[..., (w + 1) // 2:].mean((2, 3)) - grid[..., : w // 2].mean((2, 3)))
    up = axis(grid[:, :, : h // 2].mean((2, 3)) - grid[:, :, (h + 1) // 2:].mean((2, 3)))
    return centre, forward, right, up


def foreground(rgb: Tensor) -> Tensor:
    """Soft foreground of images on a white background: 0 where every channel is >= 0.98, 1 where
    the darkest channel is <= 0.90. rgb: [N, 3, H, W] in [0, 1] -> [N, 1, H, W]"""
    return ((0.98 - rgb.min(dim=1, keepdim=True).values) / 0.08).clamp(0, 1)


@torch.no_grad()
def visual_hull_depth(rays: Tensor, mask: Tensor, direction: Tensor, centre: Tensor, opt: Options) -> tuple[Tensor, Tensor]:
    """Where each splat ray first enters the visual hull of its object's 4 input silhouettes.

    rays: [B*4, 6, H, W] Pluecker rays and mask: [B*4, 1, H, W] foreground of the input views, 4
    consecutive views per object; direction, centre: [B*4, 3, s, s] the splat rays (see
    :func:`splat_rays`). Samples ``opt.pixel_hull_samples`` points per ray at t in
    [-opt.pixel_hull_range, +opt.pixel_hull_range] around the ray's point nearest the origin and
    keeps the first (nearest the camera) that projects inside the foreground of all 4 views.
    Runs in at least fp32, also under autocast.
    Returns (t [B*4, 1, s, s], 0 for rays that miss the hull; hit [B*4, 1, s, s] bool).
    """
    rays, mask, direction, centre = (at_least_fp32(v) for v in (rays, mask, direction, centre))
    with no_autocast(rays.device):
        return _visual_hull_depth(rays, mask, direction, centre, opt)


def _visual_hull_depth(rays: Tensor, mask: Tensor, direction: Tensor, centre: Tensor, opt: Options) -> tuple[Tensor, Tensor]:
    n, _, s, _ = direction.shape
    b = n // 4
    t = torch.linspace(-opt.pixel_hull_range, opt.pixel_hull_range, opt.pixel_hull_samples, device=rays.device, dtype=rays.dtype)
    points = centre[:, :, None] + t.view(1, 1, -1, 1, 1) * direction[:, :, None]  # [B*4, 3, K, s, s]
    points = points.reshape(b, 4, 3, -1).transpose(1, 2).reshape(b, 3, -1)  # [B, 3, 4*K*s*s]
    origin, forward, right, up = (v.view(b, 4, 3) for v in view_axes(rays))
    tan = math.tan(math.radians(opt.fovy) / 2)
    inside = torch.ones(b, points.shape[-1], device=rays.device, dtype=rays.dtype)
    for j in range(4):  # project every sample into each input view of its object
        v = points - origin[:, j, :, None]  # [B, 3, P]
        z = (v * forward[:, j, :, None]).sum(1)
        x = (v * right[:, j, :, None]).sum(1) / (z.clamp_min(1e-6) * tan)
        y = (v * up[:, j, :, None]).sum(1) / (z.clamp_min(1e-6) * tan)
        grid = torch.stack([x, -y], dim=-1)[:, None]  # [B, 1, P, 2]; grid_sample's y points down
        seen = F.grid_sample(mask.view(b, 4, 1, *mask.shape[-2:])[:, j], grid, align_corners=False)[:, 0, 0]
        inside = torch.minimum(inside, seen * (z > 0))
    hit = (inside > 0.5).view(b, 4, -1, s, s).reshape(n, -1, s, s)  # [B*4, K, s, s]
    first = hit.int().argmax(dim=1, keepdim=True)  # the first sample inside (argmax returns the first max)
    entered = hit.any(dim=1, keepdim=True)
    return torch.where(entered, t[first], torch.zeros_like(first, dtype=t.dtype)), entered


def activate_pixel_gaussians(
    x: Tensor, direction: Tensor, centre: Tensor, colours: Tensor, opt: Options,
    start: Optional[Tensor] = None, empty: Optional[Tensor] = None,
) -> Tensor:
    """Pixel head: raw [N, 15, s, s] -> activated Gaussians [N, s, s, 14].

    Each Gaussian sits on its splat pixel's camera ray: position = centre + t d + offset, with
    ``centre`` the ray's point nearest the world origin (so at t = 0 the Gaussians of a view lie
    around the object's centre, covering what the view shows), t the predicted change of depth
    (linear) and offset a small correction bounded by ``opt.pixel_offset``. Colour is the input
    pixel's colour changed in logit space, so a fresh model already shows each view's picture;
    scale and opacity start at the constants above (set by :func:`build_head`'s bias).
    direction, centre: [N, 3, s, s] the splat rays (:func:`splat_rays`); colours: [N, 3, s, s]
    the input images in [0, 1] at splat resolution; start: [N, 1, s, s] where t = 0 lies on each
    ray (default: the point nearest the origin; see :func:`visual_hull_depth`); empty:
    [N, 1, s, s] bool, rays that miss the hull, whose Gaussians start nearly transparent
    (``PIXEL_EMPTY_OPACITY``) so that the background's white Gaussians do not veil the object in
    the other views.
    """
    depth = x[:, 0:1] if start is None else start + x[:, 0:1]
    pos = centre + depth * direction + opt.pixel_offset * torch.tanh(x[:, 1:4])  # [N, 3, s, s]
    opacity_logit = x[:, 4:5]
    if empty is not None:
        opacity_logit = opacity_logit + EMPTY_OPACITY_SHIFT * empty
    opacity = torch.sigmoid(opacity_logit)
    scale = 0.1 * F.softplus(x[:, 5:8])
    rotation = F.normalize(x[:, 8:12], dim=1)
    base = torch.logit(colours.clamp(0.02, 0.98))
    rgb = torch.sigmoid(base + x[:, 12:15])
    return torch.cat([pos, opacity, scale, rotation, rgb], dim=1).permute(0, 2, 3, 1)  # [N, s, s, 14]


def build_head(opt: Options) -> nn.Conv2d:
    """The 1x1 convolution after the U-Net, initialised for the preset's head.

    Pixel head: k^2 groups of 15 channels when each U-Net pixel predicts k x k Gaussians
    (``pixel_shuffle`` reads channel c * k^2 + sub-pixel), small weights and a bias that starts
    every Gaussian as its pixel's picture near the object's centre.
    """
    c = head_channels(opt)
    k = opt.splat_size // opt.unet_output_size  # 1 except for a finer pixel-head grid
    conv = nn.Conv2d(c, c * k**2, kernel_size=1)
    with torch.no_grad():
        if opt.gaussian_head == "pixel":
            conv.weight.mul_(PIXEL_INIT_WEIGHT)
            bias = conv.bias.view(c, k**2)
            bias.zero_()
            bias[4] = math.log(PIXEL_INIT_OPACITY / (1 - PIXEL_INIT_OPACITY))
            sigma = PIXEL_INIT_COVER * splat_footprint(opt)
            bias[5:8] = math.log(math.expm1(sigma / 0.1))  # 0.1 * softplus(b) = sigma
            bias[8] = 1.0  # identity rotation
        else:  # start from small Gaussians (scale ~0.02), not 0.07: cheaper to render
            conv.bias[4:7].fill_(INIT_SCALE_BIAS)  # from scratch, and closer to trained models
    return conv


def unet_input_channels(opt: Options) -> int:
    """9 (RGB + Pluecker rays), plus 2 (hull entry depth and hit) with ``opt.pixel_hull_input``."""
    return 11 if hull_input(opt) else 9


def hull_input(opt: Options) -> bool:
    """Whether the U-Net takes the hull entry as input (``opt.pixel_hull_input``, pixel head with the hull)."""
    return opt.gaussian_head == "pixel" and opt.pixel_visual_hull and opt.pixel_hull_input


def build_unet(opt: Options) -> UNet:
    """The multi-view U-Net of a preset: ``unet_input_channels`` in, ``head_channels`` raw outputs."""
    return UNet(
        unet_input_channels(opt),
        head_channels(opt),
        down_channels=opt.down_channels,
        down_attention=opt.down_attention,
        mid_attention=opt.mid_attention,
        up_channels=opt.up_channels,
        up_attention=opt.up_attention,
        attention_heads=opt.attention_heads,
        layers_per_block=opt.layers_per_block,
        grad_checkpoint=opt.grad_checkpoint,
    )


class LGM(nn.Module):
    """Large multi-view Gaussian model: 4 posed views -> 4 * splat_size^2 Gaussians.

    ``state_dict()`` holds only ``unet.*`` and ``conv.*`` (the published layout); the renderer and
    the LPIPS network are kept outside the module tree. The LPIPS network still goes wherever the
    model goes: ``.to()``, ``.cuda()``, ``.double()`` (and so ``accelerator.prepare``) move it too,
    whenever it was built (:meth:`_apply`).
    """

    def __init__(self, opt: Options, lpips_pretrained: bool = True):
        super().__init__()
        self.opt = opt
        self.unet = build_unet(opt)
        self.conv = build_head(opt)
        self.shuffle = opt.splat_size // opt.unet_output_size  # k x k Gaussians per U-Net pixel
        self.gs = GaussianRenderer(opt)
        self._lpips_pretrained = lpips_pretrained
        self._lpips: list[nn.Module] = []  # a list keeps the frozen network out of state_dict()

    # ------------------------------------------------------------------ inference
    def prepare_default_rays(self, device=None, elevation: float = 0.0) -> Tensor:
        """Pluecker rays of the 4 default input cameras. -> [4, 6, input_size, input_size]"""
        poses = default_input_poses(elevation, self.opt.cam_radius)
        rays = plucker_embedding(poses, self.opt.input_size, self.opt.input_size, self.opt.fovy)
        return rays.to(device) if device is not None else rays

    def forward_gaussians(self, images: Tensor) -> Tensor:
        """images: [B, 4, 9, H, W] (ImageNet-normalised RGB + Pluecker rays) -> gaussians [B, 4*splat^2, 14]"""
        B, V, C, H, W = images.shape
        if V != 4 or C != 9:
            raise ValueError(f"images must be [B, 4, 9, H, W], got {list(images.shape)}")
        flat = images.reshape(B * V, C, H, W)
        s = self.opt.splat_size
        unet_in = flat
        pixel = self.opt.gaussian_head == "pixel"
        if pixel:  # each Gaussian's ray, colour and starting depth come from the input views
            rgb, rays = unnormalize_imagenet(at_least_fp32(flat[:, :3])), at_least_fp32(flat[:, 3:])
            colours = F.adaptive_avg_pool2d(rgb, s)  # [B*4, 3, s, s]
            direction, centre = splat_rays(rays, s)  # [B*4, 3, s, s] each
            start = empty = None
            if self.opt.pixel_visual_hull:
                start, entered = visual_hull_depth(rays, foreground(rgb), direction, centre, self.opt)
                empty = ~entered
                if hull_input(self.opt):  # where each ray starts, at input resolution
                    hull = F.interpolate(torch.cat([start, entered.to(start.dtype)], 1), size=(H, W), mode="nearest")
                    unet_in = torch.cat([flat, hull.to(flat.dtype)], 1)
        x = self.conv(self.unet(unet_in))  # [B*4, 14 or 15 * k^2, s/k, s/k]
        if self.shuffle > 1:
            x = F.pixel_shuffle(x, self.shuffle)  # [B*4, 15, s, s]: k x k Gaussians per U-Net pixel
        if x.shape[-1] != s:
            raise ValueError(f"input size {H}x{W} gives a {x.shape[-1]}^2 splat grid, preset expects {s}^2")
        if pixel:
            g = activate_pixel_gaussians(at_least_fp32(x), direction, centre, colours, self.opt, start, empty)
            return g.reshape(B, V * s * s, 14)  # from [B*4, s, s, 14]
        x = x.reshape(B, V, 14, s, s).permute(0, 1, 3, 4, 2).reshape(B, V * s * s, 14)  # [B, N, 14]
        return activate_gaussians(at_least_fp32(x))

    @staticmethod
    def identify_preset(shapes: dict) -> Optional[str]:
        """The preset of a weight file's ``shapes`` (core.weights asks the model it loads into)."""
        return identify_preset(shapes)

    # ------------------------------------------------------------------ training
    @property
    def lpips(self) -> nn.Module:
        """The frozen LPIPS network of the loss, built on first use on the model's device and dtype."""
        if not self._lpips:
            w = self.conv.weight
            self._lpips.append(build_lpips(self._lpips_pretrained).to(device=w.device, dtype=w.dtype))
        return self._lpips[0]

    def _apply(self, fn, recurse: bool = True):
        """Every ``.to()`` / ``.cuda()`` / ``.double()`` of the model applies to LPIPS as well."""
        super()._apply(fn, recurse)
        for net in self._lpips:
            net._apply(fn)
        return self

    def forward(self, data: dict, step_ratio: float = 1.0) -> dict:
        """One supervised pass: predict Gaussians from ``data['input']``, render every view.

        data: the batched dataset dict (docs/design.md). step_ratio (fraction of training done) is
        accepted for schedules and unused by the published losses. Images in ``images_output``
        are already composited on white.
        """
        gaussians = self.forward_gaussians(data["input"])  # [B, N, 14]
        if not torch.isfinite(gaussians).all():  # diverged weights: a NaN loss, which the loop skips
            nan = gaussians.sum() * float("nan")
            return {"loss": nan, "loss_mse": nan, "psnr": nan.detach(), "gaussians": gaussians}
        gaussians = at_least_fp32(gaussians)  # losses and rendering in fp32 (or the model's float64)
        dtype = gaussians.dtype
        bg = torch.ones(3, device=gaussians.device, dtype=dtype)
        with no_autocast(gaussians.device):
            out = self.gs.render(
                gaussians, data["cam_view"].to(dtype), data["cam_view_proj"].to(dtype), data["cam_pos"].to(dtype), bg_color=bg
            )
            pred_images, pred_alphas = out["image"], out["alpha"]  # [B, V, 3, H, W], [B, V, 1, H, W]
            gt_images, gt_masks = data["images_output"].to(dtype), data["masks_output"].to(dtype)

            loss_mse = F.mse_loss(pred_images, gt_images) + F.mse_loss(pred_alphas, gt_masks)
            loss = loss_mse
            results = {"loss_mse": loss_mse}
            if self.opt.lambda_lpips > 0:
                loss_lpips = lpips_distance(self.lpips, pred_images.flatten(0, 1), gt_images.flatten(0, 1)).mean()
                loss = loss + self.opt.lambda_lpips * loss_lpips
                results["loss_lpips"] = loss_lpips
            if self.opt.lambda_ssim > 0:
                loss_ssim = 1.0 - ssim(pred_images.flatten(0, 1), gt_images.flatten(0, 1))
                loss = loss + self.opt.lambda_ssim * loss_ssim
                results["loss_ssim"] = loss_ssim
            with torch.no_grad():
                results["psnr"] = psnr(pred_images.detach(), gt_images)
        results.update(loss=loss, images_pred=pred_images, alphas_pred=pred_alphas, gaussians=gaussians)
        return results


def state_dict_shapes(opt: Options) -> dict[str, tuple]:
    """Tensor names and shapes of ``LGM(opt).state_dict()`` without allocating memory."""
    with torch.device("meta"):
        model = nn.Module()
        model.unet = build_unet(opt)
        model.conv = build_head(opt)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------- torch.compile (--compile)
def compile_unet(model: LGM, dynamic: Optional[bool] = None, **compile_options) -> LGM:
    """Compile the U-Net's forward with ``torch.compile``, in place; returns ``model``.

    ``model.unet.compile()`` compiles the module's call and leaves the module tree as it is, so
    ``state_dict()`` keeps the published ``unet.*`` / ``conv.*`` names (``torch.compile(model.unet)``
    would put an OptimizedModule there and prefix every name with ``_orig_mod.``): weights and
    checkpoints written from a compiled model load into a plain one, and the other way round.
    The U-Net is most of the model's time; the pixel head's visual hull and the activations
    stay eager (compiled they saved a few % of a CPU step, for another ~10 s of compiling).

    Nothing happens until the first call, which compiles (the first training step: tens of
    seconds to minutes). Each new combination of grad mode, train/eval mode, autocast dtype and
    input shape compiles once more, up to ``torch._dynamo.config.recompile_limit`` graphs (8);
    beyond that PyTorch warns and runs the U-Net eagerly. ``dynamic=None`` (PyTorch's default):
    the first graph is specialised to its batch size (training's is fixed: ``drop_last``); another
    size (the last evaluation batch) compiles a graph with a symbolic batch size that later sizes
    reuse (on the CPU only within a range of sizes, and one object alone gets a graph of its own).
    A training run with evaluation and export compiled 4 graphs: training, evaluation, its last
    batch, single objects. Call it before ``accelerator.prepare`` (DDP wraps the model as usual
    and dynamo splits the U-Net's graph at DDP's gradient buckets). A missing C++ compiler (CPU)
    or Triton (CUDA) shows at that first call, as a ``torch._dynamo.exc.TorchDynamoException``
    (``BackendCompilerFailed``, ``TritonMissing``). ``compile_options`` go to ``torch.compile``
    (e.g. ``mode``, ``backend``).
    """
    model.unet.compile(dynamic=dynamic, **compile_options)
    return model


# ---------------------------------------------------------------------- presets and the weights' own options
MODEL_OPTIONS = (
    "input_size", "down_channels", "down_attention", "mid_attention", "up_channels", "up_attention",
    "attention_heads", "layers_per_block", "splat_size", "output_size", "gaussian_head", "pixel_offset",
    "pixel_visual_hull", "pixel_hull_range", "pixel_hull_samples", "pixel_hull_input", "fovy", "znear", "zfar",
    "cam_radius", "num_input_views",
)
"""The options that shape a model or what it predicts (its tensors, its head, its cameras): what
weights written by this project carry, so that they load without naming a preset."""
META_PRESET, META_OPTIONS = "lgm.preset", "lgm.options"  # safetensors metadata keys


def identify_preset(shapes: dict) -> Optional[str]:
    """The preset whose parameter names and shapes equal ``shapes`` ({name: tensor or shape}), or None."""
    from core.options import config_defaults

    shapes = {k: tuple(v.shape) if isinstance(v, Tensor) else tuple(v) for k, v in shapes.items()}
    return next((name for name, opt in config_defaults.items() if state_dict_shapes(opt) == shapes), None)


def preset_name(opt: Options) -> Optional[str]:
    """The preset ``opt`` is, judged by its :data:`MODEL_OPTIONS` (training fields may differ), or None."""
    from core.options import config_defaults

    mine = model_options(opt)
    return next((name for name, p in config_defaults.items() if model_options(p) == mine), None)


def model_options(opt: Options) -> dict:
    """{field: value} of the :data:`MODEL_OPTIONS` of ``opt`` (tuples as lists: JSON-ready)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(opt, k)) for k in MODEL_OPTIONS)}


def weights_metadata(opt: Options) -> dict[str, str]:
    """The safetensors metadata that lets weights of ``opt``'s model load without a preset name."""
    return {META_PRESET: preset_name(opt) or "custom", META_OPTIONS: json.dumps(model_options(opt))}


def stored_options(path) -> Optional[tuple[str, dict]]:
    """(preset name or 'custom', {field: value, tuples as lists}) stored in weights by
    :func:`weights_metadata`, or None for files without them (the published checkpoints)."""
    from core.weights import read_metadata

    meta = read_metadata(path)
    if META_OPTIONS not in meta:
        return None
    return meta.get(META_PRESET, "custom"), {k: v for k, v in json.loads(meta[META_OPTIONS]).items() if k in MODEL_OPTIONS}


def option_differences(options: dict, other: dict, label: str) -> list[str]:
    """'down_channels [32, 64] (preset: [32, 64, 128])' for each field of ``options`` whose value in
    ``other`` differs (both as :func:`model_options` gives them); ``label`` names ``other``."""
    return [f"{k} {v} ({label}: {other[k]})" for k, v in options.items() if k in other and other[k] != v]


def options_for_weights(path, preset: Optional[str] = None) -> tuple[Options, str]:
    """The options to build the model of the weights at ``path``, and a name for it.

    Weights written by this project's training carry their options (:func:`weights_metadata`):
    they are used, and a ``preset`` that builds another model is an error (a matching one is
    fine). Files without them (the published LGM checkpoints) take ``preset``, or else the preset
    whose tensor shapes they have. Raises :class:`core.weights.WeightsMismatchError`.
    """
    from core.options import config_defaults, replace
    from core.weights import WeightsMismatchError, read_shapes, read_state_dict

    if preset is not None and preset not in config_defaults:
        raise WeightsMismatchError(f"unknown preset '{preset}'; choose one of {', '.join(config_defaults)}")
    stored = stored_options(path)
    if stored is None:  # the published files
        if preset is not None:
            return config_defaults[preset], preset
        shapes = read_shapes(path) if str(path).endswith(".safetensors") else read_state_dict(path)
        found = identify_preset(shapes)
        if found is None:
            raise WeightsMismatchError(
                f"{path} does not say which model it is (no options stored in it) and its tensor shapes match no "
                f"preset ({', '.join(config_defaults)}): pass --preset with the options it was trained with."
            )
        return config_defaults[found], found
    name, options = stored
    opt = replace(config_defaults.get(name, Options()), **{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
    if preset is not None:
        differ = option_differences(model_options(opt), model_options(config_defaults[preset]), "preset")
        if differ:
            raise WeightsMismatchError(
                f"--preset {preset} does not build the model of {path}, which was trained as '{name}' and stores its "
                f"options: {', '.join(differ[:6])}{' ...' if len(differ) > 6 else ''}.\n"
                f"Leave --preset out: the weights say which model they need."
            )
    return opt, name
