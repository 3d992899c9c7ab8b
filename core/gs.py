"""GaussianRenderer: render activated Gaussians with a chosen backend, and read/write .ply / .splat.

A Gaussian is 14 activated floats (docs/design.md): xyz (3), opacity (1), scale (3), rotation
quaternion w, x, y, z normalized (4), rgb in [0, 1] (3).

Backends (``Options.renderer``):

* ``torch``: :mod:`core.rasterizer.torch_backend`, pure PyTorch on any device, the exact
  semantics of the 3DGS CUDA rasterizer the published weights were trained with;
* ``gsplat``: :mod:`core.rasterizer.gsplat_backend`, gsplat's fused CUDA kernels (CUDA only);
* ``auto``: gsplat for CUDA tensors when its CUDA kernels load (``gsplat_backend.is_available``),
  else torch (on CUDA with a warning, once).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from core.errors import UserError
from core.options import Options
from core.rasterizer import gsplat_backend, torch_backend
from core.runtime import at_least_fp32

SH_C0 = 0.28209479177387814  # the degree-0 spherical harmonic: rgb = 0.5 + SH_C0 * f_dc
_PLY_EPS = 1e-7  # opacity is clamped to [eps, 1 - eps] before the logit, scales to >= 1e-12 before the log


class RendererError(UserError, ValueError):
    """Bad input to the renderer (names the argument, the expected and the found value)."""


def _check_tensor(name: str, x, shape: tuple, check_finite: bool = True) -> None:
    """shape: expected sizes, None for "any". Raises RendererError naming ``name``."""
    if not isinstance(x, Tensor):
        raise RendererError(f"{name} must be a torch.Tensor of shape {_fmt(shape)}, got {type(x).__name__}")
    ok = x.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, x.shape))
    if not ok:
        raise RendererError(f"{name} must have shape {_fmt(shape)}, got {list(x.shape)}")
    if not x.is_floating_point():
        raise RendererError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if check_finite and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise RendererError(f"{name} holds {bad} non-finite value(s) (NaN or inf); check the model output / cameras")


def _fmt(shape: tuple) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


def _as_single(gaussians: Tensor, name: str = "gaussians") -> Tensor:
    """[N, 14] or [1, N, 14] -> [N, 14]."""
    if isinstance(gaussians, Tensor) and gaussians.dim() == 3 and gaussians.shape[0] == 1:
        gaussians = gaussians[0]
    _check_tensor(name, gaussians, (None, 14))
    return gaussians


_warned_torch_on_cuda = False


def _warn_torch_on_cuda(why: str) -> None:
    """Say once per process that CUDA tensors are rendered without gsplat, and why."""
    global _warned_torch_on_cuda
    if not _warned_torch_on_cuda:
        _warned_torch_on_cuda = True
        warnings.warn(
            f"rendering with the pure-PyTorch rasterizer on CUDA, because gsplat cannot be used ({why}). "
            "It renders the same images, several times slower; install gsplat for speed (README: 'gsplat'), "
            "or pass --renderer torch to choose it and silence this."
        )


class GaussianRenderer:
    """Renders [B, N, 14] activated Gaussians into [B, V] views of ``opt.output_size`` pixels."""

    def __init__(self, opt: Options):
        self.opt = opt
        self.bg_color = (1.0, 1.0, 1.0)  # white; numbers, not a tensor, so nothing stays on another device

    def backend_for(self, device: torch.device) -> str:
        """'torch' or 'gsplat' for tensors on ``device`` under ``opt.renderer``."""
        choice = self.opt.renderer
        if choice == "torch":
            return "torch"
        available, why = gsplat_backend.is_available()
        is_cuda = torch.device(device).type == "cuda"
        if choice == "gsplat":
            if not is_cuda:
                raise RendererError(
                    f"Options.renderer='gsplat' needs CUDA tensors, got tensors on {device}; "
                    "use renderer='torch' (or 'auto') on this device"
                )
            if not available:
                raise RendererError(
                    f"Options.renderer='gsplat' but gsplat cannot be used: {why}. "
                    "Install it with its kernels (README: 'gsplat') or use renderer='torch' / 'auto'"
                )
            return "gsplat"
        if choice != "auto":
            raise RendererError(f"Options.renderer must be 'auto', 'torch' or 'gsplat', got {choice!r}")
        if is_cuda and not available:
            _warn_torch_on_cuda(why)
        return "gsplat" if (is_cuda and available) else "torch"

    def render(
        self,
        gaussians: Tensor,
        cam_view: Tensor,
        cam_view_proj: Tensor,
        cam_pos: Tensor,
        bg_color: Tensor | None = None,
        scale_modifier: float = 1,
    ) -> dict:
        """Render every view of every batch element.

        gaussians: [B, N, 14] activated; cam_view, cam_view_proj: [B, V, 4, 4] (docs/design.md
        conventions); cam_pos: [B, V, 3] (checked, unused: colours are view-independent);
        bg_color: [3] or [B, V, 3], default white; scale_modifier multiplies every scale.
        Returns dict(image [B, V, 3, H, W], alpha [B, V, 1, H, W], depth [B, V, 1, H, W]) with
        H = W = opt.output_size; depth is sum(z * alpha * T) (0 on the background).
        """
        _check_tensor("gaussians", gaussians, (None, None, 14))
        gaussians = at_least_fp32(gaussians)  # the rasterizer's thresholds need at least fp32
        B = gaussians.shape[0]
        _check_tensor("cam_view", cam_view, (B, None, 4, 4))
        V = cam_view.shape[1]
        _check_tensor("cam_view_proj", cam_view_proj, (B, V, 4, 4))
        _check_tensor("cam_pos", cam_pos, (B, V, 3))
        if not (isinstance(scale_modifier, (int, float)) and scale_modifier > 0):
            raise RendererError(f"scale_modifier must be a positive number, got {scale_modifier!r}")
        if bg_color is None:
            bg_color = self.bg_color
        bg_color = torch.as_tensor(bg_color, dtype=gaussians.dtype, device=gaussians.device)
        if bg_color.shape == (3,):
            bg = bg_color.expand(B, V, 3)
        else:
            _check_tensor("bg_color", bg_color, (B, V, 3))
            bg = bg_color
        cam_view = cam_view.to(gaussians)
        cam_view_proj = cam_view_proj.to(gaussians)
        size = self.opt.output_size
        if self.backend_for(gaussians.device) == "gsplat":
            return gsplat_backend.render(gaussians, cam_view, cam_view_proj, size, bg, float(scale_modifier))
        return torch_backend.render(gaussians, cam_view, cam_view_proj, size, bg, float(scale_modifier))

    # ------------------------------------------------------------------ PLY
    def save_ply(self, gaussians: Tensor, path, opacity_threshold: float = 0.0, y_down: bool = False) -> int:
        """Write the standard 3DGS PLY (x, y, z, nx, ny, nz, f_dc_0..2, opacity, scale_0..2, rot_0..3)
        with inverse activations: logit opacity, log scale, f_dc = (rgb - 0.5) / SH_C0.

        gaussians: [N, 14] or [1, N, 14]; Gaussians with opacity <= opacity_threshold are dropped
        when the threshold is > 0. y_down: write in the y-down convention (:func:`yup_to_ydown`).
        Returns the number written.
        """
        return save_ply(gaussians, path, opacity_threshold, y_down)

    def load_ply(self, path, y_down: bool = False) -> Tensor:
        """Read a 3DGS PLY into activated Gaussians [N, 14] (float32, CPU). See :func:`load_ply`."""
        return load_ply(path, y_down)


def yup_to_ydown(gaussians: Tensor) -> Tensor:
    """Rotate activated Gaussians 180 degrees about the x axis, (x, y, z) -> (x, -y, -z): our y-up
    world to the y-down convention of COLMAP / 3DGS training scenes (which PlayCanvas SuperSplat and
    splat-transform assume). Positions are rotated, and so is every Gaussian's orientation (its
    rotation R becomes diag(1, -1, -1) R): the quaternion is multiplied on the left by
    q_x = (0, 1, 0, 0), (w, x, y, z) -> (-x, w, -z, y). Scales, opacity and colour are unchanged.
    gaussians: [..., 14] -> [..., 14]
    """
    return _rotate_x180(gaussians, inverse=False)


def ydown_to_yup(gaussians: Tensor) -> Tensor:
    """Inverse of :func:`yup_to_ydown` (the same rotation; the quaternion is multiplied by
    q_x^-1 = (0, -1, 0, 0), (w, x, y, z) -> (x, -w, z, -y), so that a round trip gives back the
    very same quaternions, not their negatives). gaussians: [..., 14] -> [..., 14]"""
    return _rotate_x180(gaussians, inverse=True)


def _rotate_x180(gaussians: Tensor, inverse: bool) -> Tensor:
    out = gaussians.clone()
    out[..., 1:3] = -gaussians[..., 1:3]  # y, z
    w, x, y, z = gaussians[..., 7], gaussians[..., 8], gaussians[..., 9], gaussians[..., 10]
    out[..., 7:11] = torch.stack([x, -w, z, -y] if inverse else [-x, w, -z, y], dim=-1)
    return out


def save_ply(gaussians: Tensor, path, opacity_threshold: float = 0.0, y_down: bool = False) -> int:
    """See :meth:`GaussianRenderer.save_ply`."""
    from plyfile import PlyData, PlyElement

    g = _as_single(gaussians).detach().to("cpu", torch.float64)  # [N, 14]
    if y_down:
        g = yup_to_ydown(g)
    if opacity_threshold > 0:
        g = g[g[:, 3] > opacity_threshold]
    xyz = g[:, 0:3]
    opacity = g[:, 3].clamp(_PLY_EPS, 1 - _PLY_EPS)
    logit = torch.log(opacity) - torch.log1p(-opacity)
    log_scale = torch.log(g[:, 4:7].clamp(min=1e-12))
    rot = g[:, 7:11] / g[:, 7:11].norm(dim=-1, keepdim=True).clamp(min=1e-12)
    f_dc = (g[:, 11:14] - 0.5) / SH_C0
    columns = [xyz, torch.zeros_like(xyz), f_dc, logit[:, None], log_scale, rot]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    names += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    data = torch.cat(columns, dim=1).numpy().astype(np.float32)  # [N, 17]
    vertex = np.empty(data.shape[0], dtype=[(n, "f4") for n in names])
    for i, n in enumerate(names):
        vertex[n] = data[:, i]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    PlyData([PlyElement.describe(vertex, "vertex")], text=False).write(str(path))
    return int(data.shape[0])


_warned_sh = False


def load_ply(path, y_down: bool = False) -> Tensor:
    """Read a 3DGS PLY into activated Gaussians [N, 14] (float32): sigmoid opacity, exp scale,
    normalized rotation, rgb = clamp(0.5 + SH_C0 * f_dc, 0, 1). Files with higher SH degrees
    (f_rest_*) are read; only the view-independent DC colour is kept (a warning says so once).
    y_down: the file is in the y-down convention; it is turned into our y-up world (:func:`ydown_to_yup`)."""
    global _warned_sh
    from plyfile import PlyData

    ply = PlyData.read(str(path))
    if "vertex" not in ply:
        raise RendererError(f"{path}: no 'vertex' element; not a Gaussian splatting PLY")
    v = ply["vertex"]
    names = set(v.data.dtype.names)
    needed = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    needed += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    missing = [n for n in needed if n not in names]
    if missing:
        raise RendererError(f"{path}: missing PLY properties {missing}; expected the 3DGS layout {needed}")
    if any(n.startswith("f_rest_") for n in names) and not _warned_sh:
        _warned_sh = True
        warnings.warn(f"{path}: higher-degree SH coefficients (f_rest_*) are ignored; only the DC colour is kept")
    col = lambda n: torch.from_numpy(np.asarray(v[n], dtype=np.float64))  # noqa: E731
    xyz = torch.stack([col("x"), col("y"), col("z")], dim=1)
    opacity = torch.sigmoid(col("opacity"))[:, None]
    scale = torch.exp(torch.stack([col(f"scale_{i}") for i in range(3)], dim=1))
    rot = torch.stack([col(f"rot_{i}") for i in range(4)], dim=1)
    rot = rot / rot.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    rgb = (0.5 + SH_C0 * torch.stack([col(f"f_dc_{i}") for i in range(3)], dim=1)).clamp(0.0, 1.0)
    g = torch.cat([xyz, opacity, scale, rot, rgb], dim=1)  # [N, 14]
    return (ydown_to_yup(g) if y_down else g).float()


# ---------------------------------------------------------------------- .splat

_SPLAT_DTYPE = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)])
assert _SPLAT_DTYPE.itemsize == 32


def save_splat(gaussians: Tensor, path, y_down: bool = False) -> int:
    """Write the 32-byte-per-Gaussian ``.splat`` format that web splat viewers read.

    Per Gaussian: position 3 x float32, scale 3 x float32 (linear), RGBA 4 x uint8 (rgb and opacity
    times 255, rounded and clipped), rotation w, x, y, z 4 x uint8 = clip(q * 128 + 128, 0, 255) of
    the normalized quaternion. Sorted by size x opacity descending (size = product of the three
    scales), the order the viewers expect for progressive loading. gaussians: [N, 14] or [1, N, 14].
    y_down: write in the y-down convention (:func:`yup_to_ydown`). Returns the number written.
    """
    g = _as_single(gaussians).detach().to("cpu", torch.float64)
    if y_down:
        g = yup_to_ydown(g)
    order = torch.argsort(-(g[:, 4] * g[:, 5] * g[:, 6] * g[:, 3]), stable=True)
    g = g[order]
    rot = g[:, 7:11] / g[:, 7:11].norm(dim=-1, keepdim=True).clamp(min=1e-12)
    rgba = torch.cat([g[:, 11:14], g[:, 3:4]], dim=1)
    out = np.empty(g.shape[0], dtype=_SPLAT_DTYPE)
    out["position"] = g[:, 0:3].numpy()
    out["scale"] = g[:, 4:7].numpy()
    out["rgba"] = (rgba * 255).round().clamp(0, 255).numpy().astype(np.uint8)
    out["rotation"] = (rot * 128 + 128).clamp(0, 255).numpy().astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(out.tobytes())
    return int(g.shape[0])


def load_splat(path, y_down: bool = False) -> Tensor:
    """Read a ``.splat`` file back into activated Gaussians [N, 14] (colours, opacity and rotation
    carry the 8-bit quantisation of the format); y_down: the file is y-down (:func:`ydown_to_yup`)."""
    raw = Path(path).read_bytes()
    if len(raw) % _SPLAT_DTYPE.itemsize:
        raise RendererError(f"{path}: {len(raw)} bytes is not a multiple of 32; not a .splat file")
    data = np.frombuffer(raw, dtype=_SPLAT_DTYPE)
    xyz = torch.from_numpy(data["position"].astype(np.float32))
    scale = torch.from_numpy(data["scale"].astype(np.float32))
    rgba = torch.from_numpy(data["rgba"].astype(np.float32)) / 255.0
    rot = (torch.from_numpy(data["rotation"].astype(np.float32)) - 128.0) / 128.0
    rot = rot / rot.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    g = torch.cat([xyz, rgba[:, 3:4], scale, rot, rgba[:, :3]], dim=1)  # [N, 14]
    return ydown_to_yup(g) if y_down else g
