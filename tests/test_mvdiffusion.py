"""Multi-view diffusion: the U-Net's layout against the published checkpoints, its embeddings and
attention pattern, and the pipeline (loading, guidance, cameras, view order, determinism).

All on the CPU without network: full-size models only on the meta device, everything that runs
uses the tiny random components of ``core.mvdiffusion.tiny``.
"""

from __future__ import annotations

import ast
import math

import numpy as np
import pytest
import torch

from conftest import FIXTURES, read_spec
from core.mvdiffusion import (
    MV_TO_LGM,
    MVDreamPipeline,
    MultiViewUNetModel,
    classifier_free_guidance,
    mvdream_cameras,
    resolve_pipeline_folder,
    to_lgm_order,
)
from core.mvdiffusion.pipeline import hub_weight_patterns
from core.mvdiffusion.tiny import TINY_IMAGEDREAM, TINY_UNET, build_tiny_pipeline, save_tiny_pipeline
from core.mvdiffusion.unet import timestep_embedding
from core.weights import WeightsNotFoundError


def spec_config(name: str) -> tuple[dict, int]:
    """The config dict and parameter count written in a spec list's header line."""
    header = (FIXTURES / f"{name}_unet_state_dict.txt").read_text().splitlines()[0]
    config = ast.literal_eval(header[header.index("{") : header.index("}") + 1])
    params = int(header.split(" tensors, ")[1].split(" parameters")[0])
    return config, params


def tiny_unet(imagedream: bool = False, seed: int = 0) -> MultiViewUNetModel:
    torch.manual_seed(seed)
    unet = MultiViewUNetModel(**TINY_UNET, **(TINY_IMAGEDREAM if imagedream else {}))
    with torch.no_grad():  # un-zero the zero-initialised residual outputs so every path matters
        for p in unet.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return unet.eval()


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("name", ["mvdream", "imagedream"])
def test_state_dict_equals_published_layout(name):
    config, params = spec_config(name)
    spec = read_spec(FIXTURES / f"{name}_unet_state_dict.txt")
    with torch.device("meta"):
        unet = MultiViewUNetModel(**config)
    got = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    assert list(got) == list(spec)  # same names in the same order
    assert got == spec
    assert sum(p.numel() for p in unet.parameters()) == params
    assert {k: unet.config[k] for k in config} == {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}


def test_config_with_unknown_keys_loads():
    """Published config.json files carry LDM leftovers (e.g. use_checkpoint, num_heads): ignored."""
    config = dict(TINY_UNET, use_checkpoint=False, num_heads=-1, dropout=0.0, _class_name="MultiViewUNetModel")
    unet = MultiViewUNetModel.from_config(config)
    assert unet.config.model_channels == TINY_UNET["model_channels"]


# --------------------------------------------------------------------------- embeddings and attention


def test_timestep_embedding_hand_values():
    emb = timestep_embedding(torch.tensor([0.0, 1.0, 500.0]), 4)  # freqs 1 and 10000^(-1/2) = 0.01
    expected = torch.tensor(
        [
            [1.0, 1.0, 0.0, 0.0],
            [math.cos(1.0), math.cos(0.01), math.sin(1.0), math.sin(0.01)],
            [math.cos(500.0), math.cos(5.0), math.sin(500.0), math.sin(5.0)],
        ]
    )
    torch.testing.assert_close(emb, expected, atol=1e-5, rtol=0)


def test_camera_embedding_hand_values():
    """Radius-1 orbit poses, flattened row-major, in MVDream's z-up world: (x, y, z) -> (x, -z, y)."""
    c = 0.5 * math.sqrt(3.0)
    cams = mvdream_cameras(4, elevation=0.0)
    assert cams.shape == (4, 16)
    # azimuth 0: camera at +z (ours) = -y (z-up), looking at the origin
    torch.testing.assert_close(cams[0], torch.tensor([1, 0, 0, 0, 0, 0, -1, -1, 0, 1, 0, 0, 0, 0, 0, 1.0]), atol=1e-6, rtol=0)
    # azimuth 90: camera at +x
    torch.testing.assert_close(cams[1], torch.tensor([0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1.0]), atol=1e-6, rtol=0)
    # azimuth 180: camera at -z (ours) = +y (z-up)
    torch.testing.assert_close(cams[2], torch.tensor([-1, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 1.0]), atol=1e-6, rtol=0)
    # elevation +30 (MVDream: from above): camera at height sin(30) = 0.5 (z-up), tilted down
    above = mvdream_cameras(4, elevation=30.0)[0]
    torch.testing.assert_close(
        above, torch.tensor([1, 0, 0, 0, 0, 0.5, -c, -c, 0, c, 0.5, 0.5, 0, 0, 0, 1.0]), atol=1e-6, rtol=0
    )
    # ImageDream's reference view has an all-zero pose
    extra = mvdream_cameras(4, elevation=0.0, extra_view=True)
    assert extra.shape == (5, 16) and not extra[4].any()
    torch.testing.assert_close(extra[:4], cams)


def test_camera_changes_the_prediction_per_view():
    unet = tiny_unet()
    x = torch.randn(4, 4, 8, 8)
    t = torch.full((4,), 500)
    ctx = torch.randn(4, 5, 32)
    cams = mvdream_cameras(4)
    with torch.no_grad():
        a = unet(x, t, ctx, num_frames=4, camera=cams)
        b = unet(x, t, ctx, num_frames=4, camera=cams.roll(1, dims=0))
        c = unet(x, t, ctx, num_frames=4, camera=cams)
    assert torch.equal(a, c)
    assert (a - b).abs().amax() > 1e-4


def test_self_attention_spans_the_views():
    """Changing view 2 changes view 0's prediction when the 4 views are one object, not when they
    are 4 separate objects (num_frames=1)."""
    unet = tiny_unet()
    x = torch.randn(4, 4, 8, 8)
    x2 = x.clone()
    x2[2] += 1.0
    t = torch.full((4,), 300)
    ctx = torch.randn(4, 5, 32)
    cams = mvdream_cameras(4)
    with torch.no_grad():
        joint = (unet(x, t, ctx, 4, cams) - unet(x2, t, ctx, 4, cams))[0].abs().amax()
        separate = (unet(x, t, ctx, 1, cams) - unet(x2, t, ctx, 1, cams))[0].abs().amax()
    assert joint > 1e-4
    assert separate == 0


def test_imagedream_reference_latent_replaces_the_last_view():
    unet = tiny_unet(imagedream=True)
    x = torch.randn(5, 4, 8, 8)
    x_before = x.clone()
    t = torch.full((5,), 400)
    ctx = torch.randn(5, 5, 32)
    ip = torch.randn(5, 17, 32)
    ref = torch.randn(1, 4, 8, 8)
    cams = mvdream_cameras(4, extra_view=True)
    other = x.clone()
    other[4] = 123.0  # whatever the caller puts in the reference slot is overwritten
    with torch.no_grad():
        a = unet(x, t, ctx, 5, cams, ip=ip, ip_img=ref)
        b = unet(other, t, ctx, 5, cams, ip=ip, ip_img=ref)
        c = unet(x, t, ctx, 5, cams, ip=ip * 2, ip_img=ref)
    assert torch.equal(x, x_before)  # the input is not modified
    torch.testing.assert_close(a, b)
    assert (a - c).abs().amax() > 1e-4  # the image prompt matters
    with pytest.raises(ValueError, match="image prompt"):
        unet(x, t, ctx, 5, cams)


# --------------------------------------------------------------------------- guidance and view order


def test_classifier_free_guidance_hand_values():
    pred = torch.tensor([[1.0, -2.0], [3.0, 0.0]])  # [uncond; cond]
    torch.testing.assert_close(classifier_free_guidance(pred, 5.0), torch.tensor([[1.0 + 5 * 2, -2.0 + 5 * 2]]))
    torch.testing.assert_close(classifier_free_guidance(pred, 1.0), pred[1:])


@pytest.mark.parametrize("imagedream", [False, True])
def test_pipeline_guidance_batches(imagedream, monkeypatch):
    """The U-Net sees [unconditional frames; conditional frames]: negative prompt and zero image
    prompt first; the scheduler gets uncond + 5 * (cond - uncond), here 1 + 5 * (3 - 1) = 11."""
    pipe = build_tiny_pipeline(imagedream=imagedream)
    pipe.set_progress_bar_config(disable=True)
    frames = 5 if imagedream else 4
    calls, steps = [], []

    def fake_unet(x, timesteps, context, num_frames, camera, ip=None, ip_img=None):
        calls.append(dict(x=x, timesteps=timesteps, context=context, num_frames=num_frames, camera=camera, ip=ip, ip_img=ip_img))
        out = torch.ones_like(x)
        out[frames:] = 3.0
        return out

    step = pipe.scheduler.step

    def spy_step(noise, t, latents, **kw):
        steps.append(noise.clone())
        return step(noise, t, latents, **kw)

    monkeypatch.setattr(pipe.unet, "forward", fake_unet)
    monkeypatch.setattr(pipe.scheduler, "step", spy_step)
    image = np.full((64, 64, 3), 0.5, np.float32) if imagedream else None
    pipe("a chair", image=image, negative_prompt="blurry", height=64, width=64, num_inference_steps=2, guidance_scale=5.0, seed=0)

    assert len(calls) == len(steps) == 2
    call = calls[0]
    assert call["x"].shape == (2 * frames, 4, 8, 8) and call["num_frames"] == frames
    torch.testing.assert_close(call["context"][:frames], pipe.encode_prompt("blurry").expand(frames, -1, -1))
    torch.testing.assert_close(call["context"][frames:], pipe.encode_prompt("a chair").expand(frames, -1, -1))
    torch.testing.assert_close(call["camera"][:frames], call["camera"][frames:])
    assert torch.equal(call["timesteps"], call["timesteps"][:1].expand(2 * frames))
    if imagedream:
        assert call["ip"].shape[0] == 2 * frames and call["ip_img"].shape == (2, 4, 8, 8)
        assert not call["ip"][:frames].any() and not call["ip_img"][0].any()  # unconditional: zeros
        assert call["ip"][frames:].abs().sum() > 0 and call["ip_img"][1].abs().sum() > 0
    for noise in steps:
        assert noise.shape == (frames, 4, 8, 8)
        torch.testing.assert_close(noise, torch.full_like(noise, 11.0))


def test_view_order_hand_values():
    """LGM's view i (azimuth 90 i) is MVDream's frame (i + 1) % 4."""
    assert MV_TO_LGM == (1, 2, 3, 0)
    frames = np.arange(4)[:, None, None, None] * np.ones((4, 2, 2, 3))
    assert to_lgm_order(frames)[:, 0, 0, 0].tolist() == [1, 2, 3, 0]
    assert to_lgm_order(torch.arange(4)).tolist() == [1, 2, 3, 0]
    # LGM's view 0 is generated with the camera of MVDream azimuth 90
    cams = to_lgm_order(mvdream_cameras(4))
    torch.testing.assert_close(cams[0], mvdream_cameras(4)[1])
    with pytest.raises(ValueError):
        to_lgm_order(np.zeros((5, 2)))


# --------------------------------------------------------------------------- loading and sampling


@pytest.mark.parametrize("imagedream", [False, True])
def test_tiny_pipeline_saves_loads_and_samples(imagedream, tmp_path):
    built = build_tiny_pipeline(imagedream=imagedream, seed=1)
    save_tiny_pipeline(tmp_path / "pipe", imagedream=imagedream, seed=1)
    pipe = MVDreamPipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.is_imagedream == imagedream
    assert isinstance(pipe.unet, MultiViewUNetModel)
    assert (pipe.image_encoder is not None) == imagedream
    for name, tensor in built.unet.state_dict().items():  # the weights survived save/load
        assert torch.equal(tensor, pipe.unet.state_dict()[name]), name

    pipe.set_progress_bar_config(disable=True)
    image = np.random.default_rng(0).random((80, 80, 3)).astype(np.float32) if imagedream else None
    kw = dict(prompt="a red car", image=image, height=64, width=64, num_inference_steps=2)
    a = pipe(**kw, seed=7)
    b = pipe(**kw, generator=torch.Generator().manual_seed(7))
    c = pipe(**kw, seed=8)
    assert a.shape == (4, 64, 64, 3) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    latents = pipe(**kw, seed=7, output_type="latent")
    assert latents.shape == (4, 4, 8, 8)


def test_pipeline_refuses_the_wrong_input():
    mvdream, imagedream = build_tiny_pipeline(imagedream=False), build_tiny_pipeline(imagedream=True)
    with pytest.raises(ValueError, match="ImageDream"):
        mvdream("x", image=np.zeros((8, 8, 3), np.float32), num_inference_steps=1)
    with pytest.raises(ValueError, match="pass an image"):
        imagedream("x", num_inference_steps=1)


def test_missing_folder_offline_names_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="download_weights.py --only imagedream"):
        MVDreamPipeline.from_pretrained(tmp_path / "pretrained" / "imagedream-ipmv-diffusers")
    with pytest.raises(WeightsNotFoundError, match="--only mvdream"):
        resolve_pipeline_folder(str(tmp_path / "mvdream-sd2.1-diffusers"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="model_index.json"):
        resolve_pipeline_folder(tmp_path / "empty")


def test_hub_weight_patterns_pick_one_copy_per_folder():
    files = [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.bin",
        "tokenizer/merges.txt",
    ]
    keep = hub_weight_patterns(files)
    assert "unet/diffusion_pytorch_model.safetensors" in keep
    assert "vae/diffusion_pytorch_model.bin" in keep
    assert "unet/diffusion_pytorch_model.bin" not in keep
    assert "unet/diffusion_pytorch_model.fp16.safetensors" not in keep
    assert "*.json" in keep and "*.txt" in keep


def test_half_precision_vae_overflow_is_decoded_again_in_fp32(monkeypatch):
    """An fp16 VAE that overflows (NaN pixels, as SD's VAE can at fp16) must not hand NaN views on:
    the latents are decoded again in fp32, with a warning; NaN latents are a clear error."""
    from core.mvdiffusion.pipeline import NonFiniteViewsError

    pipe = build_tiny_pipeline(imagedream=False)
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    pipe.vae.to(torch.float16).to(torch.float32)  # the fp16 weights, in fp32
    ref = pipe.decode_latents(latents)
    vae_decode = pipe.vae.decode

    def overflowing(z, *args, **kwargs):  # what an fp16 overflow inside the decoder looks like
        out = vae_decode(z, *args, **kwargs)
        if pipe.vae.dtype == torch.float16:
            out.sample[:, :, :2] = float("nan")
        return out

    monkeypatch.setattr(pipe.vae, "decode", overflowing)
    pipe.vae.to(torch.float16)
    with pytest.warns(UserWarning, match="decoding again in float32"):
        views = pipe.decode_latents(latents)
    assert pipe.vae.dtype == torch.float16  # put back as it was
    assert np.isfinite(views).all()
    np.testing.assert_allclose(views, ref, atol=1e-5)
    with pytest.raises(NonFiniteViewsError, match="non-finite latents"):
        pipe.decode_latents(latents * float("nan"))
