"""Image metrics and the LPIPS network: PSNR, SSIM and LPIPS, used by the loss, eval and scripts.

LPIPS uses the ``lpips`` package's learned linear heads (shipped inside the package) on a VGG16
backbone. The backbone (torchvision's ``vgg16-397923af.pth``, 528 MB) is looked up in
``pretrained/`` and the torch hub cache, and downloaded only when the network allows it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from core.runtime import at_least_fp32
from core import hub
from core.weights import WeightsNotFoundError

VGG16_FILE = "vgg16-397923af.pth"
VGG16_HOST = "download.pytorch.org"
VGG16_URL = f"https://{VGG16_HOST}/models/{VGG16_FILE}"


def psnr(pred: Tensor, target: Tensor, per_image: bool = False) -> Tensor:
    """Peak signal-to-noise ratio in dB for images in [0, 1]. [..., C, H, W] -> scalar or [...]"""
    pred, target = at_least_fp32(pred), at_least_fp32(target)
    mse = ((pred - target) ** 2).flatten(-3).mean(-1) if per_image else F.mse_loss(pred, target)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def _gaussian_window(size: int, sigma: float, device, dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: Tensor, target: Tensor, per_image: bool = False, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Structural similarity (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03,
    valid region only), averaged over channels and pixels. [..., C, H, W] in [0, 1] -> scalar or [...]"""
    lead = pred.shape[:-3]
    C, H, W = pred.shape[-3:]
    x = at_least_fp32(pred).reshape(-1, C, H, W)
    y = at_least_fp32(target).reshape(-1, C, H, W)
    g = _gaussian_window(window, sigma, x.device, x.dtype)
    kernel_h = g.view(1, 1, 1, window).repeat(C, 1, 1, 1)
    kernel_v = g.view(1, 1, window, 1).repeat(C, 1, 1, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, kernel_h, groups=C), kernel_v, groups=C)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    per = s.flatten(1).mean(-1).reshape(lead)
    return per if per_image else per.mean()


class LPIPSUnavailableError(WeightsNotFoundError):
    pass


def _find_vgg16() -> Path | None:
    torch_hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    return hub.find_pretrained(VGG16_FILE, also_in=[torch_hub])


def _load_vgg16_state() -> dict:
    path = _find_vgg16()
    if path is not None:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    blocked = hub.download_blocker(VGG16_HOST)
    try:
        if blocked:
            raise ConnectionError(blocked)
        return torch.hub.load_state_dict_from_url(VGG16_URL, map_location="cpu", progress=True)
    except Exception as e:
        raise LPIPSUnavailableError(
            f"LPIPS needs the VGG16 backbone '{VGG16_FILE}' (528 MB), which is not in {hub.PRETRAINED_DIR}/ "
            f"or the torch hub cache and could not be downloaded ({blocked or type(e).__name__}).\n"
            f"Fetch it with `python scripts/download_weights.py --only vgg`, or turn LPIPS off "
            f"(--lambda_lpips 0 for training)."
        ) from e


def build_lpips(pretrained_backbone: bool = True) -> torch.nn.Module:
    """The LPIPS(VGG) network, frozen, in eval mode.

    pretrained_backbone=False gives a random backbone (tests); True needs the VGG16 file locally
    or a reachable download, else raises :class:`LPIPSUnavailableError` with what to do.
    """
    import lpips

    state = _load_vgg16_state() if pretrained_backbone else None  # fail before building anything
    net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)  # heads from the package
    if state is not None:
        features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        for slice_ in (net.net.slice1, net.net.slice2, net.net.slice3, net.net.slice4, net.net.slice5):
            for idx, layer in slice_.named_children():
                if hasattr(layer, "weight"):
                    layer.weight.data.copy_(features[f"{idx}.weight"])
                    layer.bias.data.copy_(features[f"{idx}.bias"])
    net.eval().requires_grad_(False)
    return net


def lpips_distance(net: torch.nn.Module, pred: Tensor, target: Tensor, max_size: int = 256) -> Tensor:
    """LPIPS per image; inputs in [0, 1] resized to at most ``max_size``, computed in the network's
    dtype (fp32, or float64 in tests). [N, 3, H, W] -> [N]"""
    dtype = next(net.parameters()).dtype
    pred, target = pred.to(dtype), target.to(dtype)
    if pred.shape[-1] > max_size or pred.shape[-2] > max_size:
        pred = F.interpolate(pred, size=(max_size, max_size), mode="bilinear", align_corners=False)
        target = F.interpolate(target, size=(max_size, max_size), mode="bilinear", align_corners=False)
    return net(pred * 2 - 1, target * 2 - 1).flatten()
