"""GPU paths proven on the CPU: whatever the model holds follows it to another device or dtype,
nothing mixes precisions, and the pixel head's geometry keeps fp32 under autocast.

On a GPU these are crashes ("expected all tensors to be on the same device") or silent precision
losses. Here the stand-ins are the ``meta`` device (a tensor left behind keeps its CPU device) and
float64 (a tensor left behind, or an explicit ``.float()``, shows up as float32 in some operation).
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from conftest import micro_options
from core.datasets.synthetic import SyntheticDataset
from core.models import LGM
from core.training import EMA, collate

LOW = (torch.float32, torch.float16, torch.bfloat16)


def held_tensors(root) -> list[tuple[str, Tensor]]:
    """Every tensor reachable from ``root`` through module members, attributes, lists, tuples and
    dicts (parameters, buffers, and anything kept in plain attributes or containers). -> [(path, tensor)]"""
    found, seen = [], set()

    def visit(obj, path: str) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Tensor):
            found.append((path, obj))
        elif isinstance(obj, dict):
            for k, v in obj.items():
                visit(v, f"{path}[{k!r}]")
        elif isinstance(obj, (list, tuple, set)):
            for i, v in enumerate(obj):
                visit(v, f"{path}[{i}]")
        elif hasattr(obj, "__dict__") and not isinstance(obj, type) and type(obj).__module__.split(".")[0] in (
            "core", "lpips", "torch", "torchvision",
        ):
            for k, v in vars(obj).items():
                visit(v, f"{path}.{k}")

    visit(root, "model")
    return found


def training_batch(opt, n: int = 2) -> dict:
    return collate([SyntheticDataset(opt, "train")[i] for i in range(n)])


PRESETS = {
    "lgm head, LPIPS + SSIM": dict(lambda_lpips=1.0, lambda_ssim=0.5),
    "pixel head with hull input, LPIPS": dict(gaussian_head="pixel", pixel_hull_input=True, lambda_lpips=1.0),
}


@pytest.mark.parametrize("changes", PRESETS.values(), ids=PRESETS.keys())
def test_everything_the_model_holds_follows_it_to_another_device(changes):
    """A training forward builds LPIPS; ``.to()`` (what ``accelerator.prepare`` calls) must move it
    too. The meta device stands in for CUDA: a tensor that stayed behind is still on the CPU."""
    opt = micro_options(num_views=5, **changes)
    model = LGM(opt, lpips_pretrained=False)
    model(training_batch(opt))["loss"].backward()  # every lazily built piece now exists
    assert any("lpips" in path for path, _ in held_tensors(model))  # the walk does reach LPIPS
    model.double()
    low = [(path, t.dtype) for path, t in held_tensors(model) if t.is_floating_point() and t.dtype != torch.float64]
    assert not low, low[:5]
    model.to("meta")
    left = [(path, t.device) for path, t in held_tensors(model) if t.device.type != "meta"]
    assert not left, left[:5]
    assert all(k.startswith(("unet.", "conv.")) for k in model.state_dict())  # LPIPS stays out of the weights


class PrecisionRecorder(TorchDispatchMode):
    """Counts, per operation, calls that take or give a tensor of lower precision than float64."""

    def __init__(self):
        super().__init__()
        self.low = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, Tensor) and t.dtype in LOW for t in tree_leaves((args, kwargs, out))):
            self.low[str(func)] += 1
        return out


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("changes", PRESETS.values(), ids=PRESETS.keys())
def test_a_float64_training_step_mixes_in_no_float32(changes):
    """``model.double()`` and float64 data: forward, losses (MSE, LPIPS, SSIM), rendering and
    backward must run in float64 throughout. With float64 as the default dtype, a float32 tensor
    can only come from state that did not follow the model or from a cast down (``.float()``):
    on a GPU the same code would mix devices or lose precision."""
    opt = micro_options(num_views=5, **changes)
    batch = training_batch(opt)
    model = LGM(opt, lpips_pretrained=False)
    _ = model.lpips  # built before the move, as main.py does before accelerator.prepare
    model.double()
    batch = {k: v.double() if isinstance(v, Tensor) and v.is_floating_point() else v for k, v in batch.items()}
    recorder = PrecisionRecorder()
    with default_dtype(torch.float64), recorder:
        out = model(batch)
        out["loss"].backward()
    assert out["loss"].dtype == torch.float64 and out["gaussians"].dtype == torch.float64
    assert not recorder.low, recorder.low.most_common(8)
    assert all(p.grad is not None and p.grad.dtype == torch.float64 for p in model.parameters())


def test_ema_follows_its_model_when_loaded(tmp_path):
    """Saved EMA tensors come back from disk on the CPU; loading puts them where the model's
    weights are, in at least float32, or the next update mixes devices."""
    from safetensors.torch import save_file

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(model, 0.9)
    save_file({k: v.contiguous() for k, v in ema.shadow.items()}, str(tmp_path / "ema.safetensors"))

    model.double()
    ema.load(tmp_path / "ema.safetensors", model)
    params = dict(model.state_dict())
    assert all(ema.shadow[k].dtype == torch.float64 == params[k].dtype for k in ema.shadow)
    ema.update(model)

    model.to(torch.bfloat16)  # half-precision weights: the average is kept in float32
    ema.load(tmp_path / "ema.safetensors", model)
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in ema.shadow.values())
    ema.update(model)

    model.to("meta")  # stands in for CUDA: load_file gives CPU tensors, which must not stay there
    ema.load(tmp_path / "ema.safetensors", model)
    assert all(v.device.type == "meta" for v in ema.shadow.values())


def test_pixel_head_geometry_keeps_fp32_under_autocast():
    """The camera recovery from rays (a least-squares solve over a cancellation-prone sum) and the
    visual hull search run in fp32 even inside bf16 autocast (training) or fp16 (inference)."""
    from core.cameras import default_input_poses, orbit_camera, plucker_embedding
    from core.models import splat_rays, view_axes, visual_hull_depth

    opt = micro_options(gaussian_head="pixel", input_size=64, splat_size=32, pixel_hull_samples=128)
    poses = torch.cat([default_input_poses(-20.0, 1.5), torch.stack([orbit_camera(e, a, 1.5) for e, a in
                                                                        ((10, 30), (25, 120), (-5, 210), (15, 300))])])
    rays = plucker_embedding(poses, 64, 64, opt.fovy)  # [8, 6, 64, 64]: two objects of 4 views
    mask = (rays[:, :3].norm(dim=1, keepdim=True) < 0.35).float()  # a sphere of radius 0.35
    direction, centre = splat_rays(rays, 32)
    ref = view_axes(rays) + visual_hull_depth(rays, mask, direction, centre, opt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = view_axes(rays) + visual_hull_depth(rays, mask, direction, centre, opt)
    for r, g in zip(ref, got):
        assert g.dtype == r.dtype
        torch.testing.assert_close(g, r, atol=1e-6, rtol=0)
    torch.testing.assert_close(ref[0], poses[:, :3, 3], atol=1e-4, rtol=0)  # the centres are right to begin with
    assert math.isfinite(float(ref[4].abs().sum()))


def test_resume_puts_the_ema_where_the_weights_are(tmp_path):
    """The real save / resume path (``save_checkpoint``, ``load_checkpoint``) with the model moved
    after saving: float64 stands in for the GPU (the files hold float32 CPU tensors)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from core.training import load_checkpoint, save_checkpoint

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    try:
        acc = Accelerator(cpu=True)
        model = acc.prepare(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
        ema = EMA(model, 0.9)
        ckpt = save_checkpoint(acc, tmp_path, 1, {"step": 1}, keep_last=2, ema=ema)
        model.double()
        ema = EMA(model, 0.9)
        assert load_checkpoint(acc, ckpt, model, ema)["step"] == 1
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    weights = model.state_dict()
    assert all(v.dtype == weights[k].dtype == torch.float64 and v.device == weights[k].device for k, v in ema.shadow.items())
    ema.update(model)


class SizeRecorder(TorchDispatchMode):
    """The largest tensor (elements) any operation gives."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [t.numel() for t in tree_leaves(out) if isinstance(t, Tensor)]
        self.largest = max([self.largest, *sizes])
        return out


def test_replica_fingerprint_needs_no_float64_copy_of_the_model():
    """The end-of-training check that data-parallel replicas agree: float64 sums, computed one
    parameter at a time (a float64 copy of ``big`` would take 3 GB of GPU memory)."""
    from core.training import weight_fingerprint

    model = LGM(micro_options())
    recorder = SizeRecorder()
    with recorder:
        fingerprint = weight_fingerprint(model)
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    torch.testing.assert_close(fingerprint, torch.stack([flat.sum(), flat.square().sum()]), rtol=1e-12, atol=0)
    assert fingerprint.dtype == torch.float64
    assert recorder.largest <= max(p.numel() for p in model.parameters()) < flat.numel() // 4


@pytest.mark.parametrize("changes", PRESETS.values(), ids=PRESETS.keys())
def test_a_bf16_autocast_training_step_keeps_losses_and_rendering_in_fp32(changes):
    """A training step as accelerate's bf16 mixed precision runs it (the U-Net under autocast),
    here with CPU autocast: the loss, the rendered images and the Gaussians are float32, the loss
    is within bf16 rounding of the fp32 one, and every gradient is finite."""
    opt = micro_options(num_views=5, **changes)
    batch = training_batch(opt)
    model = LGM(opt, lpips_pretrained=False)
    with torch.no_grad():
        ref = model(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    out["loss"].backward()
    assert out["loss"].dtype == out["images_pred"].dtype == out["gaussians"].dtype == torch.float32
    assert abs(out["loss"].item() - ref["loss"].item()) < 0.03 * ref["loss"].item()
    assert (out["gaussians"] - ref["gaussians"]).abs().mean() < 0.01  # bf16 U-Net outputs, fp32 activations
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_fused_ema_update_equals_the_per_tensor_update():
    """EMA.update lerps every tensor in one torch._foreach_lerp_ call: the same numbers as one
    lerp per tensor, for float32 weights and for half-precision ones averaged in float32."""
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        model = LGM(micro_options()).to(dtype)
        ema = EMA(model, 0.9)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        want = {k: v.clone().lerp_(model.state_dict()[k].to(v.dtype), 0.1) for k, v in ema.shadow.items()}
        ema.update(model)
        assert all(torch.equal(ema.shadow[k], want[k]) for k in want)
        assert {v.dtype for v in ema.shadow.values()} == {torch.float32}


def test_evaluation_in_bf16_scores_in_fp32():
    """Training evaluates under its bf16 autocast (as the loss was computed): the model runs in bf16,
    the rendering and PSNR / SSIM / LPIPS in fp32."""
    from core.metrics import lpips_distance, psnr
    from core.training import score_batch

    opt = micro_options(num_views=6)
    data = collate([SyntheticDataset(opt, "eval")[i] for i in range(2)])
    model = LGM(opt, lpips_pretrained=False).eval()
    net = model.lpips
    with torch.no_grad():
        ref, _ = score_batch(model, data, opt, net)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            metrics, pred = score_batch(model, data, opt, net)
        gt = data["images_output"][:, 4:]
        lp = lpips_distance(net, pred.flatten(0, 1), gt.flatten(0, 1)).view(2, -1).mean(1)  # fp32, outside autocast
    assert metrics.dtype == pred.dtype == torch.float32
    torch.testing.assert_close(metrics[:, 2], lp, atol=1e-6, rtol=0)  # LPIPS itself ran in fp32
    torch.testing.assert_close(metrics[:, 0], psnr(pred, gt, per_image=True).mean(1), atol=1e-5, rtol=0)
    assert (metrics[:, 0] - ref[:, 0]).abs().max() < 0.5  # bf16 model, same scene
