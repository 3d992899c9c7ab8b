"""Metrics against independent implementations."""

import math

import numpy as np
import pytest
import torch

from core.metrics import LPIPSUnavailableError, build_lpips, lpips_distance, psnr, ssim


def test_psnr_hand_computed():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.full((1, 3, 4, 4), 0.1)
    assert abs(float(psnr(a, b)) - 20.0) < 1e-4  # -10 log10(0.01)
    per = psnr(torch.stack([a[0], a[0]]), torch.stack([b[0], a[0] + 0.01]), per_image=True)
    assert torch.allclose(per, torch.tensor([20.0, 40.0]), atol=1e-3)


def test_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    x = rng.random((3, 40, 48)).astype(np.float32)
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape).astype(np.float32), 0, 1)
    ref = structural_similarity(
        x, y, channel_axis=0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )
    ours = float(ssim(torch.from_numpy(x)[None], torch.from_numpy(y)[None]))
    assert abs(ours - ref) < 1e-4
    assert float(ssim(torch.from_numpy(x)[None], torch.from_numpy(x)[None])) == pytest.approx(1.0, abs=1e-6)


def test_lpips_distance_resizes_and_rescales():
    net = build_lpips(pretrained_backbone=False)
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    d = lpips_distance(net, a, b)
    assert d.shape == (2,)
    assert torch.allclose(d, net(a * 2 - 1, b * 2 - 1).flatten(), atol=1e-6)
    assert torch.allclose(lpips_distance(net, a, a), torch.zeros(2), atol=1e-6)
    big_a = torch.nn.functional.interpolate(a, size=(512, 512), mode="nearest")
    big_b = torch.nn.functional.interpolate(b, size=(512, 512), mode="nearest")
    small = lpips_distance(net, big_a, big_b, max_size=256)
    assert small.shape == (2,) and torch.isfinite(small).all()


def test_lpips_backbone_missing_offline_is_a_clear_error(monkeypatch, tmp_path):
    import core.metrics as m

    monkeypatch.setattr(m.hub, "PRETRAINED_DIR", tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(LPIPSUnavailableError, match="download_weights.py --only vgg"):
        build_lpips(pretrained_backbone=True)


def test_lpips_loads_a_local_vgg16_backbone(monkeypatch, tmp_path):
    import torchvision

    import core.metrics as m

    features = torchvision.models.vgg16().features  # random weights standing in for the real file
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / m.VGG16_FILE)
    monkeypatch.setattr(m.hub, "PRETRAINED_DIR", tmp_path)
    net = build_lpips(pretrained_backbone=True)
    assert torch.equal(getattr(net.net.slice1, "0").weight, features[0].weight)
    assert torch.equal(getattr(net.net.slice5, "28").bias, features[28].bias)
    assert not any(p.requires_grad for p in net.parameters())
