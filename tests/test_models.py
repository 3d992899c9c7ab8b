"""The LGM model: published tensor layout, weight loading, attention, Gaussian head."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from conftest import FIXTURES, micro_options, read_spec
from core.models import LGM, activate_gaussians, state_dict_shapes
from core.options import config_defaults
from core.unet import MultiHeadAttention
from core.weights import WeightsError, WeightsMismatchError, WeightsNotFoundError, load_weights, read_state_dict


@pytest.mark.parametrize("preset", ["big", "small", "tiny"])
def test_state_dict_equals_published_spec(preset):
    spec = read_spec(FIXTURES / f"lgm_{preset}_state_dict.txt")
    with torch.device("meta"):
        model = LGM(config_defaults[preset])
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == spec
    assert list(got) == list(spec)  # same order as the published files
    assert state_dict_shapes(config_defaults[preset]) == spec
    header = (FIXTURES / f"lgm_{preset}_state_dict.txt").read_text().splitlines()[0]
    assert f"{sum(math.prod(s) for s in spec.values())} parameters" in header


def test_safetensors_fp16_round_trip_strict(tmp_path, micro_opt):
    torch.manual_seed(0)
    model = LGM(micro_opt).eval()
    path = tmp_path / "model_fp16.safetensors"
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(path))

    fresh = LGM(micro_opt).eval()
    report = load_weights(fresh, path, strict=True)
    assert report.complete and len(report.loaded) == len(model.state_dict())
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value.half().float()), name

    x = torch.randn(1, 4, 9, micro_opt.input_size, micro_opt.input_size)
    with torch.no_grad():
        a, b = model.forward_gaussians(x), fresh.forward_gaussians(x)
    assert (a - b).abs().max() < 2e-2  # fp16 rounding of the weights only


def test_pt_files_load_with_weights_only(tmp_path, micro_opt):
    model = LGM(micro_opt)
    path = tmp_path / "model.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    fresh = LGM(micro_opt)
    load_weights(fresh, path)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())

    bad = tmp_path / "bad.pt"
    torch.save({"x": _NotATensor()}, bad)  # pickled code must be refused
    with pytest.raises(WeightsError, match="Could not read weights"):
        read_state_dict(bad)


class _NotATensor:
    pass


def test_tolerant_loading_copies_matching_shapes(tmp_path):
    small = LGM(micro_options())
    wide = LGM(micro_options(down_channels=(32, 128), up_channels=(128,)))
    path = tmp_path / "small.safetensors"
    save_file(small.state_dict(), str(path))
    report = load_weights(wide, path, strict=False)
    assert report.mismatched and report.loaded
    assert torch.equal(wide.unet.conv_in.weight, small.unet.conv_in.weight)  # 32 channels in both
    mismatched = {name for name, _, _ in report.mismatched}
    assert "unet.down_blocks.1.nets.0.conv1.weight" in mismatched
    assert "shape mismatch" in report.summary()


def test_wrong_preset_names_the_preset_it_seems_to_be(tmp_path):
    shapes = state_dict_shapes(config_defaults["tiny"])
    path = tmp_path / "tiny.safetensors"
    save_file({k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}, str(path))
    with pytest.raises(WeightsMismatchError) as err:
        load_weights(LGM(micro_options()), path, strict=True, preset="micro")
    msg = str(err.value)
    assert "looks like preset 'tiny'" in msg
    assert "shape mismatch" in msg and "unet.conv_out.weight: (14, 128, 3, 3) vs (14, 64, 3, 3)" in msg
    assert len(msg.splitlines()) < 30  # fits one screen


def test_missing_file_names_path_and_download():
    with pytest.raises(WeightsNotFoundError) as err:
        read_state_dict("pretrained/model_fp16_fixrot.safetensors")
    msg = str(err.value)
    assert "model_fp16_fixrot.safetensors" in msg and "scripts/download_weights.py" in msg


def test_sdpa_attention_equals_explicit_softmax():
    torch.manual_seed(0)
    attn = MultiHeadAttention(64, num_heads=8)
    x = torch.randn(2, 50, 64)
    B, N, C = x.shape
    q, k, v = attn.qkv(x).view(B, N, 3, 8, 8).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(B, N, C))
    assert (attn(x) - expected).abs().max() < 1e-5


def test_attention_mixes_views_but_not_objects(micro_opt):
    """Cross-view attention: changing view 2 of object 0 changes view 0 of object 0, not object 1."""
    torch.manual_seed(0)
    model = LGM(micro_opt).eval()
    x = torch.randn(2, 4, 9, micro_opt.input_size, micro_opt.input_size)
    y = x.clone()
    y[0, 2] += 1.0
    with torch.no_grad():
        gx, gy = model.forward_gaussians(x), model.forward_gaussians(y)
    n = micro_opt.splat_size**2
    assert (gx[0, :n] - gy[0, :n]).abs().max() > 1e-4  # view 0 of object 0 saw view 2
    assert torch.equal(gx[1], gy[1])


def test_output_shape_and_activation_ranges(micro_opt):
    model = LGM(micro_opt)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(20)  # push pre-activations far out so the clamps and squashes are exercised
    x = torch.randn(2, 4, 9, micro_opt.input_size, micro_opt.input_size)
    with torch.no_grad():
        g = model.forward_gaussians(x)
    assert g.shape == (2, 4 * micro_opt.splat_size**2, 14)
    assert torch.isfinite(g).all()
    assert g[..., 0:3].abs().max() <= 1
    assert (g[..., 3] >= 0).all() and (g[..., 3] <= 1).all()
    assert (g[..., 4:7] >= 0).all()
    assert torch.allclose(g[..., 7:11].norm(dim=-1), torch.ones(g.shape[:2]), atol=1e-5)
    assert (g[..., 11:] >= 0).all() and (g[..., 11:] <= 1).all()


def test_activations_hand_computed():
    raw = torch.tensor([2.0, -0.5, 0.3, 0.0, 0.0, 1.0, -1.0, 3.0, 0.0, 4.0, 0.0, 0.0, 100.0, -100.0])
    g = activate_gaussians(raw)
    expected = torch.tensor(
        [1.0, -0.5, 0.3, 0.5, 0.1 * math.log(2), 0.1 * math.log1p(math.e), 0.1 * math.log1p(math.exp(-1)),
         0.6, 0.0, 0.8, 0.0, 0.5, 1.0, 0.0]
    )
    assert torch.allclose(g, expected, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients(micro_opt):
    torch.manual_seed(0)
    plain = LGM(micro_opt).train()
    ckpt = LGM(micro_options(grad_checkpoint=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 4, 9, micro_opt.input_size, micro_opt.input_size)
    for m in (plain, ckpt):
        m.forward_gaussians(x).square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-5), name


def test_default_rays(micro_opt):
    model = LGM(micro_opt)
    rays = model.prepare_default_rays("cpu")
    assert rays.shape == (4, 6, micro_opt.input_size, micro_opt.input_size)
    # directions are unit vectors; the moment o x d is orthogonal to d
    assert torch.allclose(rays[:, 3:].norm(dim=1), torch.ones(4, micro_opt.input_size, micro_opt.input_size), atol=1e-5)
    assert (rays[:, :3] * rays[:, 3:]).sum(1).abs().max() < 1e-5


def test_state_dict_has_no_lpips(micro_opt):
    model = LGM(micro_options(lambda_lpips=1.0), lpips_pretrained=False)
    _ = model.lpips
    assert all(k.startswith(("unet.", "conv.")) for k in model.state_dict())


# --------------------------------------------------------------------------- the pixel-aligned head


def hand_rays(campos, right, up, back, size: int, fovy: float) -> torch.Tensor:
    """Pluecker rays [o x d, d] of a pinhole camera written out pixel by pixel. -> [6, size, size]"""
    f = size / 2 / math.tan(math.radians(fovy) / 2)
    o = torch.tensor(campos, dtype=torch.float64)
    out = torch.zeros(6, size, size, dtype=torch.float64)
    for i in range(size):
        for j in range(size):
            x, y = (j + 0.5 - size / 2) / f, -(i + 0.5 - size / 2) / f
            d = x * torch.tensor(right) + y * torch.tensor(up) - torch.tensor(back, dtype=torch.float64)
            d = d / d.norm()
            out[:3, i, j] = torch.linalg.cross(o, d)
            out[3:, i, j] = d
    return out


def test_pixel_head_puts_each_gaussian_on_its_pixels_ray_at_the_predicted_depth():
    """Two hand-built cameras (in front, azimuth 0; at the side, azimuth 90); 4 px input, 2 px splat
    grid: each splat pixel's ray is the normalised mean of its 2x2 input pixels' rays."""
    from core.models import activate_pixel_gaussians, splat_rays

    opt = micro_options(gaussian_head="pixel", pixel_offset=0.05)
    cams = [((0.0, 0.0, 1.5), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
            ((1.5, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0))]
    rays = torch.stack([hand_rays(*c, size=4, fovy=opt.fovy) for c in cams]).float()  # [2, 6, 4, 4]
    t = torch.tensor([[0.3, -0.2], [0.0, 0.7]])  # depth change per splat pixel
    raw = torch.zeros(2, 15, 2, 2)
    raw[:, 0] = t
    colours = torch.rand(2, 3, 2, 2)
    g = activate_pixel_gaussians(raw, *splat_rays(rays, 2), colours, opt)  # [2, 2, 2, 14]
    for v, (campos, *_) in enumerate(cams):
        o = torch.tensor(campos)
        for i in range(2):
            for j in range(2):
                d = rays[v, 3:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean((1, 2))
                d = d / d.norm()
                depth = -(o @ d) + t[i, j]  # from the camera: to the point nearest the origin, then t
                torch.testing.assert_close(g[v, i, j, :3], o + depth * d, atol=1e-5, rtol=0)
    # an offset moves it off the ray by at most pixel_offset
    raw[:, 1:4] = 50.0
    g2 = activate_pixel_gaussians(raw, *splat_rays(rays, 2), colours, opt)
    torch.testing.assert_close(g2[..., :3] - g[..., :3], torch.full_like(g[..., :3], 0.05), atol=1e-6, rtol=0)


def test_fresh_pixel_head_shows_each_views_picture():
    """At initialisation every Gaussian has its input pixel's colour (to 0.02, the logit clamp),
    covers its pixel (scale = half a splat pixel's footprint) and starts near the object's centre."""
    from core.images import normalize_imagenet
    from core.models import PIXEL_INIT_COVER, PIXEL_INIT_OPACITY, splat_footprint

    opt = micro_options(gaussian_head="pixel", pixel_visual_hull=False)  # the hull: see the sphere test
    model = LGM(opt).eval()
    with torch.no_grad():
        model.conv.weight.zero_()  # the fresh model's weights are small; zero isolates the initial values
    rgb = torch.rand(1, 4, 3, 32, 32)
    x = torch.cat([normalize_imagenet(rgb), model.prepare_default_rays()[None]], dim=2)
    g = model.forward_gaussians(x)[0]  # [4*16*16, 14]
    want = F.avg_pool2d(rgb[0], 2).permute(0, 2, 3, 1).reshape(-1, 3).clamp(0.02, 0.98)
    torch.testing.assert_close(g[:, 11:14], want, atol=1e-5, rtol=0)
    torch.testing.assert_close(g[:, 3], torch.full_like(g[:, 3], PIXEL_INIT_OPACITY))
    torch.testing.assert_close(g[:, 4:7], torch.full_like(g[:, 4:7], PIXEL_INIT_COVER * splat_footprint(opt)))
    assert g[:, :3].norm(dim=-1).max() < opt.cam_radius * math.sin(math.radians(opt.fovy) / 2 * math.sqrt(2)) + 1e-4


def test_one_step_with_the_pixel_head_lowers_the_loss():
    from core.datasets.synthetic import SyntheticDataset
    from core.training import collate

    torch.manual_seed(0)
    opt = micro_options(num_views=5, gaussian_head="pixel")
    model = LGM(opt)
    assert state_dict_shapes(opt)["conv.weight"] == (15, 15, 1, 1)
    batch = collate([SyntheticDataset(opt, "train")[i] for i in range(2)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    loss0 = model(batch)["loss"]
    loss0.backward()
    optimizer.step()
    with torch.no_grad():
        loss1 = model(batch)["loss"]
    assert loss1 < loss0


def test_pixel_head_with_k_by_k_gaussians_per_unet_pixel():
    """splat_size 32 on a 16x16 U-Net output: each U-Net pixel predicts 2x2 Gaussians through
    pixel_shuffle; every one starts at its own input pixel's colour with the initial opacity and scale."""
    from core.images import normalize_imagenet
    from core.models import PIXEL_INIT_OPACITY
    from core.options import OptionsError

    opt = micro_options(gaussian_head="pixel", splat_size=32, pixel_visual_hull=False)
    assert opt.unet_output_size == 16
    model = LGM(opt).eval()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == state_dict_shapes(opt)
    with torch.no_grad():
        model.conv.weight.zero_()
        rgb = torch.rand(1, 4, 3, 32, 32)
        g = model.forward_gaussians(torch.cat([normalize_imagenet(rgb), model.prepare_default_rays()[None]], 2))[0]
    assert g.shape == (4 * 32 * 32, 14)
    torch.testing.assert_close(g[:, 11:14], rgb[0].permute(0, 2, 3, 1).reshape(-1, 3).clamp(0.02, 0.98), atol=1e-5, rtol=0)
    torch.testing.assert_close(g[:, 3], torch.full_like(g[:, 3], PIXEL_INIT_OPACITY))
    for bad in (24, 64):  # not a multiple of 16; more Gaussians than input pixels
        with pytest.raises(OptionsError, match="pixel head"):
            micro_options(gaussian_head="pixel", splat_size=bad)
    with pytest.raises(OptionsError, match="splat_size=32"):
        micro_options(splat_size=32)  # LGM's head: the U-Net's grid only


def test_view_axes_recover_the_cameras_from_their_rays():
    from core.cameras import default_input_poses, orbit_camera, plucker_embedding
    from core.models import view_axes

    poses = torch.cat([default_input_poses(-20.0, 1.5), orbit_camera(35.0, 123.0, 2.1)[None]])  # [5, 4, 4]
    centre, forward, right, up = view_axes(plucker_embedding(poses, 32, 32, 49.1))
    torch.testing.assert_close(centre, poses[:, :3, 3], atol=1e-5, rtol=0)
    torch.testing.assert_close(right, poses[:, :3, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(up, poses[:, :3, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(forward, -poses[:, :3, 2], atol=1e-5, rtol=0)


def test_visual_hull_depth_of_a_sphere():
    """A sphere of radius 0.3 at the origin seen by the 4 default cameras (silhouettes from the rays
    alone: a ray hits it iff its distance to the origin, |o x d|, is below 0.3). The ray through the
    origin of view 0 enters the hull where the side views' silhouette cones begin:
    |z| = 1.5 tan(asin(0.3 / 1.5)) = 0.306 in front of the origin."""
    from core.cameras import default_input_poses, plucker_embedding
    from core.models import splat_rays, visual_hull_depth

    opt = micro_options(gaussian_head="pixel", input_size=32, splat_size=16)
    rays = plucker_embedding(default_input_poses(0.0, 1.5), 32, 32, opt.fovy)  # [4, 6, 32, 32]
    mask = (rays[:, :3].norm(dim=1, keepdim=True) < 0.3).float()
    direction, centre = splat_rays(rays, 16)
    t, entered = visual_hull_depth(rays, mask, direction, centre, opt)
    assert torch.equal(entered, t != 0)
    t = t[:, 0]  # [4, 16, 16]
    step = 2 * opt.pixel_hull_range / (opt.pixel_hull_samples - 1)
    edge = 1.5 * math.tan(math.asin(0.3 / 1.5))
    centre_t = t[:, 7:9, 7:9]  # the 4 splat pixels around each view's axis (0.04 off it)
    assert ((centre_t > -edge - 0.03) & (centre_t < -edge + step + 0.03)).all(), centre_t
    assert (t[:, 0, 0] == 0).all()  # corner rays miss the sphere: no hull, t = 0
    # every hit is a point inside all 4 silhouette cones, in front of the origin's plane
    hit = t != 0
    assert hit.sum() > 4 * 20 and (t[hit] < 0).all()

    # a fresh model on these views: Gaussians of rays that miss the hull start nearly transparent
    from core.images import normalize_imagenet
    from core.models import PIXEL_EMPTY_OPACITY, PIXEL_INIT_OPACITY

    model = LGM(opt).eval()
    with torch.no_grad():
        model.conv.weight.zero_()
        rgb = 1 - 0.7 * mask.expand(4, 3, 32, 32)  # a grey sphere on white
        g = model.forward_gaussians(torch.cat([normalize_imagenet(rgb), rays], dim=1)[None])[0]  # [4*256, 14]
    want = torch.where(entered.flatten(), PIXEL_INIT_OPACITY, PIXEL_EMPTY_OPACITY)
    torch.testing.assert_close(g[:, 3], want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g[:, :3], (centre + t[:, None] * direction).permute(0, 2, 3, 1).reshape(-1, 3), atol=1e-5, rtol=0)


def test_hull_input_gives_the_unet_where_each_ray_starts():
    """With pixel_hull_input the U-Net's 2 extra channels are, per input pixel, the hull entry t of
    its splat pixel (nearest upsampling) and whether the ray enters the hull; the 9 others are the
    caller's images, unchanged."""
    from core.images import normalize_imagenet
    from core.cameras import default_input_poses, plucker_embedding
    from core.models import splat_rays, unet_input_channels, visual_hull_depth

    opt = micro_options(gaussian_head="pixel", input_size=32, splat_size=16, pixel_hull_input=True)
    assert unet_input_channels(opt) == 11 and unet_input_channels(micro_options()) == 9
    assert state_dict_shapes(opt)["unet.conv_in.weight"][1] == 11
    rays = plucker_embedding(default_input_poses(0.0, 1.5), 32, 32, opt.fovy)  # [4, 6, 32, 32]
    mask = (rays[:, :3].norm(dim=1, keepdim=True) < 0.3).float()
    t, entered = visual_hull_depth(rays, mask, *splat_rays(rays, 16), opt)  # [4, 1, 16, 16]
    images = torch.cat([normalize_imagenet(1 - 0.7 * mask.expand(4, 3, 32, 32)), rays], dim=1)
    model = LGM(opt).eval()
    seen = []
    model.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        model.forward_gaussians(images[None])
    x = seen[0]  # [4, 11, 32, 32]
    torch.testing.assert_close(x[:, :9], images)
    up = t.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(x[:, 9:10], up)
    torch.testing.assert_close(x[:, 10:11], entered.float().repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    assert 0 < x[:, 10].mean() < 1


def test_layers_per_block_sets_the_unets_depth():
    from core.options import OptionsError

    opt = micro_options(layers_per_block=1)
    model = LGM(opt)
    assert [len(b.nets) for b in model.unet.down_blocks] == [1, 1]
    assert [len(b.nets) for b in model.unet.up_blocks] == [2]  # up blocks have one more
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == state_dict_shapes(opt)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in LGM(micro_options()).parameters())
    with pytest.raises(OptionsError, match="layers_per_block"):
        micro_options(layers_per_block=0)
