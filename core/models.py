"""LGM: the multi-view U-Net, the Gaussian head, the rendering losses and metrics."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from core.cameras import default_input_poses, plucker_embedding
from core.gs import GaussianRenderer
from core.metrics import build_lpips, lpips_distance, psnr, ssim
from core.options import Options
from core.unet import UNet


INIT_SCALE_BIAS = -1.5  # 0.1 * softplus(-1.5) = 0.020


def activate_gaussians(x: Tensor) -> Tensor:
    """Raw head output -> the 14 activated Gaussian parameters of DESIGN.md. [..., 14] -> [..., 14]"""
    pos = x[..., 0:3].clamp(-1, 1)
    opacity = torch.sigmoid(x[..., 3:4])
    scale = 0.1 * F.softplus(x[..., 4:7])
    rotation = F.normalize(x[..., 7:11], dim=-1)
    rgb = 0.5 * torch.tanh(x[..., 11:14]) + 0.5
    return torch.cat([pos, opacity, scale, rotation, rgb], dim=-1)


def build_unet(opt: Options) -> UNet:
    """The multi-view U-Net of a preset: 9 input channels (RGB + rays), 14 raw Gaussian channels."""
    return UNet(
        9,
        14,
        down_channels=opt.down_channels,
        down_attention=opt.down_attention,
        mid_attention=opt.mid_attention,
        up_channels=opt.up_channels,
        up_attention=opt.up_attention,
        attention_heads=opt.attention_heads,
        grad_checkpoint=opt.grad_checkpoint,
    )


class LGM(nn.Module):
    """Large multi-view Gaussian model: 4 posed views -> 4 * splat_size^2 Gaussians.

    ``state_dict()`` holds only ``unet.*`` and ``conv.*`` (the published layout); the renderer and
    the LPIPS network are kept outside the module tree.
    """

    def __init__(self, opt: Options, lpips_pretrained: bool = True):
        super().__init__()
        self.opt = opt
        self.unet = build_unet(opt)
        self.conv = nn.Conv2d(14, 14, kernel_size=1)
        with torch.no_grad():  # start from small Gaussians (scale ~0.02), not 0.07: cheaper to render
            self.conv.bias[4:7].fill_(INIT_SCALE_BIAS)  # from scratch, and closer to trained models
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
        x = self.unet(images.reshape(B * V, C, H, W))  # [B*4, 14, s, s]
        x = self.conv(x)
        s = self.opt.splat_size
        if x.shape[-1] != s:
            raise ValueError(f"input size {H}x{W} gives a {x.shape[-1]}^2 splat grid, preset expects {s}^2")
        x = x.reshape(B, V, 14, s, s).permute(0, 1, 3, 4, 2).reshape(B, V * s * s, 14)  # [B, N, 14]
        return activate_gaussians(x.float())

    # ------------------------------------------------------------------ training
    @property
    def lpips(self) -> nn.Module:
        if not self._lpips:
            device = self.conv.weight.device
            self._lpips.append(build_lpips(self._lpips_pretrained).to(device))
        return self._lpips[0]

    def forward(self, data: dict, step_ratio: float = 1.0) -> dict:
        """One supervised pass: predict Gaussians from ``data['input']``, render every view.

        data: the batched dataset dict (DESIGN.md). step_ratio (fraction of training done) is
        accepted for schedules and unused by the published losses. Images in ``images_output``
        are already composited on white.
        """
        gaussians = self.forward_gaussians(data["input"])  # [B, N, 14]
        if not torch.isfinite(gaussians).all():  # diverged weights: a NaN loss, which the loop skips
            nan = gaussians.sum() * float("nan")
            return {"loss": nan, "loss_mse": nan, "psnr": nan.detach(), "gaussians": gaussians}
        bg = torch.ones(3, device=gaussians.device)
        with torch.autocast(device_type=gaussians.device.type, enabled=False):
            out = self.gs.render(
                gaussians.float(), data["cam_view"].float(), data["cam_view_proj"].float(), data["cam_pos"].float(), bg_color=bg
            )
            pred_images, pred_alphas = out["image"], out["alpha"]  # [B, V, 3, H, W], [B, V, 1, H, W]
            gt_images, gt_masks = data["images_output"].float(), data["masks_output"].float()

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
        model.conv = nn.Conv2d(14, 14, 1)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
