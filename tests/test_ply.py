"""PLY and .splat export: round trips, files with higher SH degrees, sizes and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import core.gs as gs
from core.gs import SH_C0, GaussianRenderer, RendererError, load_splat, save_splat
from core.options import Options


def random_gaussians(n: int, seed: int = 0) -> torch.Tensor:
    """[n, 14] activated Gaussians with an unnormalized rotation (save_ply normalizes)."""
    gen = torch.Generator().manual_seed(seed)
    xyz = torch.rand(n, 3, generator=gen) * 2 - 1
    opacity = torch.rand(n, 1, generator=gen) * 0.98 + 0.01
    scale = torch.exp(torch.rand(n, 3, generator=gen) * 5 - 7)
    rot = torch.randn(n, 4, generator=gen) * 3
    rgb = torch.rand(n, 3, generator=gen)
    return torch.cat([xyz, opacity, scale, rot, rgb], dim=1)


@pytest.fixture
def renderer() -> GaussianRenderer:
    return GaussianRenderer(Options(output_size=32, renderer="torch"))


@pytest.mark.parametrize("batched", [False, True])
def test_ply_round_trip(tmp_path, renderer, batched):
    g = random_gaussians(500)
    path = tmp_path / "out" / "g.ply"
    renderer.save_ply(g[None] if batched else g, path)
    back = renderer.load_ply(path)
    expected = g.clone()
    expected[:, 7:11] = expected[:, 7:11] / expected[:, 7:11].norm(dim=-1, keepdim=True)
    assert back.shape == (500, 14) and back.dtype == torch.float32
    assert (back - expected).abs().max() <= 1e-5


def test_ply_layout_is_the_3dgs_one(tmp_path, renderer):
    from plyfile import PlyData

    g = random_gaussians(10)
    renderer.save_ply(g, tmp_path / "g.ply")
    v = PlyData.read(str(tmp_path / "g.ply"))["vertex"]
    names = list(v.data.dtype.names)
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    expected += ["scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert names == expected
    # inverse activations
    o = g[:, 3].double()
    assert np.allclose(v["opacity"], (torch.log(o) - torch.log1p(-o)).numpy(), atol=1e-5)
    assert np.allclose(v["scale_1"], torch.log(g[:, 5]).numpy(), atol=1e-5)
    assert np.allclose(v["f_dc_2"], ((g[:, 13] - 0.5) / SH_C0).numpy(), atol=1e-5)


def test_opacity_threshold_prunes(tmp_path, renderer):
    g = random_gaussians(200)
    n = renderer.save_ply(g, tmp_path / "g.ply", opacity_threshold=0.5)
    back = renderer.load_ply(tmp_path / "g.ply")
    assert n == int((g[:, 3] > 0.5).sum()) == back.shape[0]
    assert (back[:, 3] > 0.5 - 1e-6).all()


def test_reads_higher_sh_degree_files_keeping_dc(tmp_path, renderer, monkeypatch):
    from plyfile import PlyData, PlyElement

    n = 20
    rng = np.random.default_rng(0)
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(45)]  # SH degree 3, as 3DGS training writes
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    data = np.empty(n, dtype=[(k, "f4") for k in names])
    for k in names:
        data[k] = rng.normal(size=n).astype(np.float32)
    path = tmp_path / "sh3.ply"
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))
    monkeypatch.setattr(gs, "_warned_sh", False)
    with pytest.warns(UserWarning, match="f_rest"):
        g = renderer.load_ply(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        renderer.load_ply(path)  # warns once only
    assert g.shape == (n, 14)
    rgb = np.clip(0.5 + SH_C0 * np.stack([data["f_dc_0"], data["f_dc_1"], data["f_dc_2"]], 1), 0, 1)
    assert np.allclose(g[:, 11:14].numpy(), rgb, atol=1e-6)
    assert np.allclose(g[:, 3].numpy(), 1 / (1 + np.exp(-data["opacity"])), atol=1e-6)
    assert torch.allclose(g[:, 7:11].norm(dim=-1), torch.ones(n), atol=1e-6)


def test_load_ply_names_missing_fields(tmp_path, renderer):
    from plyfile import PlyData, PlyElement

    data = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(data, "vertex")]).write(str(tmp_path / "points.ply"))
    with pytest.raises(RendererError, match="missing PLY properties"):
        renderer.load_ply(tmp_path / "points.ply")


def test_save_ply_rejects_bad_shapes(tmp_path, renderer):
    with pytest.raises(RendererError, match="gaussians"):
        renderer.save_ply(torch.rand(2, 10, 14), tmp_path / "g.ply")
    with pytest.raises(RendererError, match="gaussians"):
        renderer.save_ply(torch.rand(10, 11), tmp_path / "g.ply")


def test_splat_size_order_and_positions(tmp_path):
    g = random_gaussians(300, seed=1)
    path = tmp_path / "g.splat"
    assert save_splat(g[None], path) == 300
    assert path.stat().st_size == 32 * 300
    back = load_splat(path)
    # sorted by size x opacity, descending
    key = g[:, 4] * g[:, 5] * g[:, 6] * g[:, 3]
    order = torch.argsort(-key.double(), stable=True)
    assert torch.equal(back[:, 0:3], g[order, 0:3])  # float32 positions are stored exactly
    assert torch.allclose(back[:, 4:7], g[order, 4:7])
    assert (back[:, 11:14] - g[order, 11:14]).abs().max() <= 0.5 / 255 + 1e-6
    assert (back[:, 3] - g[order, 3]).abs().max() <= 0.5 / 255 + 1e-6
    rot = g[order, 7:11] / g[order, 7:11].norm(dim=-1, keepdim=True)
    cos = (back[:, 7:11] * rot).sum(-1).abs()
    assert (cos > 0.99).all()  # 8-bit quaternions
