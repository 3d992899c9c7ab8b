"""infer.py end to end with tiny models (CPU, offline), plus image preparation.

A tiny random ImageDream/MVDream folder and a tiny LGM checkpoint (the ``micro`` options of
conftest, registered as a preset for these tests) stand in for the published weights.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, micro_options
from core.generation import GenerationError, read_views
from core.images import read_image, write_image
from core.preprocess import BackgroundRemover, has_alpha_mask, prepare_image, recenter
from core.weights import WeightsNotFoundError

import infer

PRESET = "micro"


def rgba_object(h: int = 96, w: int = 128) -> np.ndarray:
    """A red ellipse with a blue stripe on a transparent background, off-centre. [h, w, 4]"""
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - 30) / 20.0) ** 2 + ((xx - 40) / 30.0) ** 2 <= 1.0
    img = np.zeros((h, w, 4), np.float32)
    img[..., 0] = 0.9
    img[..., 2] = np.where(np.abs(yy - 30) < 4, 0.8, 0.1)
    img[..., 3] = inside
    return img


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny ImageDream and MVDream folders, a tiny LGM checkpoint, an RGBA image; the preset registered."""
    from safetensors.torch import save_file

    from core.models import LGM
    from core.mvdiffusion.tiny import save_tiny_pipeline
    from core.options import config_defaults

    root = tmp_path_factory.mktemp("infer_assets")
    opt = micro_options()
    torch.manual_seed(0)
    model = LGM(opt)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "lgm_micro.safetensors"))
    write_image(root / "object.png", rgba_object())
    mp = pytest.MonkeyPatch()
    mp.setitem(config_defaults, PRESET, opt)
    yield dict(
        root=root,
        opt=opt,
        ckpt=root / "lgm_micro.safetensors",
        imagedream=save_tiny_pipeline(root / "imagedream", imagedream=True),
        mvdream=save_tiny_pipeline(root / "mvdream", imagedream=False),
        image=root / "object.png",
    )
    mp.undo()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no_rembg_models"))  # rembg finds no model of the user's


def run_main(*argv) -> int:
    return infer.main([str(a) for a in argv])


def grey_strip(size: int = 32, shades=(0.2, 0.4, 0.6, 0.8)) -> np.ndarray:
    """4 flat views side by side, one shade each: not blank, any size. [size, 4 size, 3]"""
    return np.concatenate([np.full((size, size, 3), v, np.float32) for v in shades], axis=1)


# --------------------------------------------------------------------------- end to end


def test_image_to_ply_video_and_views(assets, tmp_path, offline, capsys):
    import imageio.v3 as iio
    from plyfile import PlyData

    ws = tmp_path / "ws"
    t0, c0 = time.perf_counter(), time.process_time()
    code = run_main(
        assets["image"], "--preset", PRESET, "--resume", assets["ckpt"], "--mv-model", assets["imagedream"],
        "--workspace", ws, "--steps", 2, "--video-frames", 12, "--fps", 10, "--splat",
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert code == 0, capsys.readouterr().err
    with capsys.disabled():
        print(f"\n[tiny end-to-end image -> .ply/.mp4/_mv.png: {wall:.1f} s wall, {cpu:.1f} s CPU]")

    n = 4 * assets["opt"].splat_size ** 2
    ply = PlyData.read(str(ws / "object.ply"))
    assert ply["vertex"].count == n
    assert (ws / "object.splat").stat().st_size == 32 * n  # 32 bytes per Gaussian
    frames = iio.imread(ws / "object.mp4")
    assert frames.shape[0] == 12 and frames.shape[-1] == 3
    mv = read_image(ws / "object_mv.png")
    assert mv.shape == (256, 4 * 256, 3)


def test_prompt_to_3d_with_mvdream(assets, tmp_path, offline):
    ws = tmp_path / "ws"
    code = run_main(
        "--prompt", "A wooden chair!", "--preset", PRESET, "--resume", assets["ckpt"], "--mv-model", assets["mvdream"],
        "--workspace", ws, "--steps", 2, "--video-frames", 0,
    )
    assert code == 0
    assert (ws / "a_wooden_chair.ply").is_file() and (ws / "a_wooden_chair_mv.png").is_file()
    assert not (ws / "a_wooden_chair.mp4").exists()


def test_views_skip_diffusion(assets, tmp_path, offline):
    """--views needs no diffusion model (the named one does not exist) and keeps the given views."""
    views = np.concatenate([np.full((64, 64, 3), v, np.float32) for v in (0.1, 0.4, 0.7, 1.0)], axis=1)
    write_image(tmp_path / "four.png", views)
    ws = tmp_path / "ws"
    code = run_main(
        "--views", tmp_path / "four.png", "--preset", PRESET, "--resume", assets["ckpt"],
        "--mv-model", tmp_path / "does_not_exist", "--workspace", ws, "--video-frames", 2,
    )
    assert code == 0
    assert (ws / "four.ply").is_file() and (ws / "four.mp4").is_file()
    np.testing.assert_allclose(read_image(ws / "four_mv.png"), views, atol=1 / 255)


def test_missing_checkpoint_offline_exits_2_without_traceback(tmp_path):
    missing = tmp_path / "nowhere" / "model_fp16_fixrot.safetensors"
    write_image(tmp_path / "four.png", grey_strip())
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "infer.py"), "--views", str(tmp_path / "four.png"), "--resume", str(missing)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "model_fp16_fixrot.safetensors" in proc.stderr
    assert "python scripts/download_weights.py --only lgm" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.splitlines()) < 25  # one screen


def test_missing_imagedream_offline_exits_2(assets, tmp_path, offline, capsys):
    code = run_main(
        assets["image"], "--preset", PRESET, "--resume", assets["ckpt"],
        "--mv-model", tmp_path / "pretrained" / "imagedream-ipmv-diffusers", "--workspace", tmp_path / "ws",
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "imagedream-ipmv-diffusers" in err and "download_weights.py --only imagedream" in err


def test_missing_rembg_model_offline_exits_2(assets, tmp_path, offline, capsys, monkeypatch):
    import core.preprocess

    monkeypatch.setattr(core.preprocess.hub, "PRETRAINED_DIR", tmp_path / "pretrained")
    write_image(tmp_path / "photo.jpg", np.full((32, 32, 3), 0.5, np.float32))  # no alpha: needs rembg
    code = run_main(
        tmp_path / "photo.jpg", "--preset", PRESET, "--resume", assets["ckpt"], "--mv-model", assets["imagedream"],
        "--workspace", tmp_path / "ws",
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "u2net.onnx" in err and "download_weights.py --only rembg" in err


def test_no_input_is_a_usage_error(capsys):
    assert run_main("--resume", "x.safetensors") == 2
    assert "nothing to do" in capsys.readouterr().err


# --------------------------------------------------------------------------- inputs and preparation


def test_collect_jobs_expands_folders_and_keeps_names_unique(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        write_image(tmp_path / sub / "cat.png", np.zeros((4, 4, 3)))
    write_image(tmp_path / "a" / "dog.jpg", np.zeros((4, 4, 3)))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    jobs = infer.collect_jobs(infer.InferArgs(paths=(str(tmp_path / "a"), str(tmp_path / "b"))))
    assert [j.name for j in jobs] == ["cat", "dog", "cat_1"]
    assert all(j.kind == "image" for j in jobs)


def test_read_views_side_by_side_and_folder(tmp_path):
    views = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32)
    write_image(tmp_path / "row.png", np.concatenate(list(views), axis=1))
    (tmp_path / "four").mkdir()
    for i, v in enumerate(views):
        rgba = np.concatenate([v, np.full_like(v[..., :1], 0.5)], axis=-1)  # half transparent
        write_image(tmp_path / "four" / f"{i:03d}.png", rgba)
    np.testing.assert_allclose(read_views(tmp_path / "row.png"), views, atol=1 / 255)
    np.testing.assert_allclose(read_views(tmp_path / "four"), views * 0.5 + 0.5, atol=2 / 255)
    write_image(tmp_path / "bad.png", np.zeros((16, 40, 3)))
    with pytest.raises(GenerationError, match="side by side"):
        read_views(tmp_path / "bad.png")


def test_recenter_hand_values():
    """A 10 (high) x 20 (wide) box in a 100 x 50 image -> 80 x 40 px centred on a 100 px canvas."""
    rgb = np.ones((100, 50, 3), np.float32)
    alpha = np.zeros((100, 50), np.float32)
    alpha[5:15, 25:45] = 1.0
    rgb[5:15, 25:45] = (0.0, 1.0, 0.0)
    out, a = recenter(rgb, alpha, border_ratio=0.2, size=100)
    ys, xs = np.nonzero(a > 0.5)
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (30, 70, 10, 90)
    np.testing.assert_allclose(out[50, 50], (0.0, 1.0, 0.0), atol=1e-6)
    np.testing.assert_allclose(out[5, 5], (1.0, 1.0, 1.0))  # white background
    with pytest.raises(ValueError, match="no foreground"):
        recenter(rgb, np.zeros_like(alpha))


def test_prepare_image_uses_alpha_without_background_removal():
    class Refuse:
        def __call__(self, image):
            raise AssertionError("background removal must not run for an image with alpha")

    img = rgba_object()
    assert has_alpha_mask(img) and not has_alpha_mask(img[..., :3]) and not has_alpha_mask(np.ones((4, 4, 4)))
    out = prepare_image(img, remover=Refuse(), border_ratio=0.2, size=256)
    assert out.shape == (256, 256, 3) and out.dtype == np.float32
    non_white = np.nonzero((out < 0.99).any(-1))
    width = non_white[1].max() + 1 - non_white[1].min()
    assert abs(width - 0.8 * 256) <= 2  # the wider side fills 1 - border_ratio
    np.testing.assert_allclose(out[0, 0], 1.0)


def test_background_remover_offline_without_model_names_the_command(tmp_path, offline):
    remover = BackgroundRemover("u2net", pretrained_dir=tmp_path)
    assert remover.local_model_file() is None
    with pytest.raises(WeightsNotFoundError, match="--only rembg"):
        remover.session()
    with pytest.raises(ValueError, match="unknown rembg model"):
        BackgroundRemover("no-such-model", pretrained_dir=tmp_path).session()


def test_background_remover_prefers_the_file_in_pretrained(tmp_path, offline):
    """A model file in pretrained/ is the one loaded (here a broken one: a clear error, no download)."""
    from core.weights import WeightsError

    (tmp_path / "u2net.onnx").write_bytes(b"not an onnx model")
    remover = BackgroundRemover("u2net", pretrained_dir=tmp_path)
    assert remover.local_model_file() == tmp_path / "u2net.onnx"
    with pytest.raises(WeightsError, match="Could not load the background-removal model"):
        remover.session()


# --------------------------------------------------------------------------- bad input (issue 9)


def test_unique_names_never_reuse_a_name_or_another_inputs_name():
    from core.generation import unique_names

    assert unique_names(["same", "same", "same_1"]) == ["same", "same_2", "same_1"]
    assert unique_names(["a", "a", "a", "a_2"]) == ["a", "a_1", "a_3", "a_2"]
    names = unique_names(["x", "x_1", "x", "x", "x_1"])
    assert len(set(names)) == 5 and names[:2] == ["x", "x_1"]


def test_name_clash_processes_every_input_once(assets, tmp_path, offline, monkeypatch):
    """a/same.png b/same.png a/same_1.png: three inputs, three outputs, each from its own input."""
    import core.generation

    colours = {"a/same.png": (0.9, 0.1, 0.1), "b/same.png": (0.1, 0.9, 0.1), "a/same_1.png": (0.1, 0.1, 0.9)}
    for rel, colour in colours.items():
        img = np.zeros((32, 32, 4), np.float32)
        img[8:24, 8:24] = (*colour, 1.0)  # a coloured square on a transparent background
        write_image(tmp_path / rel, img)
    # the diffusion model is replaced by one that shows its input: the views are the prepared image
    monkeypatch.setattr(core.generation, "generate_views", lambda pipe, image=None, **kw: np.stack([image] * 4))
    ws = tmp_path / "ws"
    code = run_main(
        *(tmp_path / rel for rel in colours), "--preset", PRESET, "--resume", assets["ckpt"],
        "--mv-model", assets["imagedream"], "--workspace", ws, "--video-frames", 0,
    )
    assert code == 0
    expected = {"same": colours["a/same.png"], "same_2": colours["b/same.png"], "same_1": colours["a/same_1.png"]}
    for name, colour in expected.items():
        views = read_image(ws / f"{name}_mv.png")
        np.testing.assert_allclose(views[128, 128], colour, atol=2 / 255)
        assert (ws / f"{name}.ply").is_file()


def test_16_bit_views_are_not_blank(assets, tmp_path, offline):
    from test_images import PNG_RGB, write_png

    ramp = np.linspace(0.1, 0.9, 4)
    views16 = np.concatenate([np.full((32, 32, 3), v) for v in ramp], axis=1)  # [32, 128, 3]
    write_png(tmp_path / "four16.png", np.round(views16 * 65535).astype(np.uint16), PNG_RGB)
    ws = tmp_path / "ws"
    assert run_main("--views", tmp_path / "four16.png", "--preset", PRESET, "--resume", assets["ckpt"],
                    "--workspace", ws, "--video-frames", 0) == 0
    np.testing.assert_allclose(read_image(ws / "four16_mv.png"), views16, atol=1 / 255)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--steps", "0"], "steps must be at least 1"),
        (["--steps", "-1"], "steps must be at least 1"),
        (["--video-frames", "-1"], "video frames must be >= 0"),
        (["--border-ratio", "1"], "border ratio must be in [0, 1)"),
        (["--border-ratio", "-0.1"], "border ratio must be in [0, 1)"),
        (["--fps", "0"], "fps must be at least 1"),
        (["--elevation", "95"], "elevation must be between -90 and 90"),
    ],
)
def test_invalid_numbers_stop_before_any_model_loads(assets, tmp_path, offline, monkeypatch, capsys, flags, words):
    import core.generation

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(core.generation, "load_lgm", refuse)
    monkeypatch.setattr(core.generation, "load_mv_pipeline", refuse)
    code = run_main(assets["image"], "--preset", PRESET, "--resume", assets["ckpt"], "--workspace", tmp_path / "ws", *flags)
    err = capsys.readouterr().err
    assert code == 2 and words in err
    assert "Traceback" not in err and len(err.splitlines()) < 10


def test_unreadable_inputs_and_bad_workspace_are_one_screen_errors(assets, tmp_path, offline, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    common = ["--preset", PRESET, "--resume", assets["ckpt"], "--mv-model", assets["imagedream"]]
    assert run_main(tmp_path / "notes.png", *common, "--workspace", tmp_path / "ws") == 2
    assert "notes.png" in capsys.readouterr().err
    assert run_main("--views", tmp_path / "notes.png", *common, "--workspace", tmp_path / "ws") == 2
    assert "notes.png" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    for ws in (tmp_path / "a_file", tmp_path / "a_file" / "below"):
        assert run_main(assets["image"], *common, "--workspace", ws, "--video-frames", 0) == 2
        err = capsys.readouterr().err
        assert "--workspace" in err and str(ws) in err and "Traceback" not in err


def test_nearly_opaque_alpha_is_no_cut_out():
    """An RGBA image whose alpha is opaque but for one pixel keeps its background unless removed."""
    from core.preprocess import mask_source

    img = np.ones((64, 64, 4), np.float32)
    img[..., :3] = 0.3
    img[0, 0, 3] = 0.0
    assert not has_alpha_mask(img)
    assert "rembg" in mask_source(img)

    class Remover:
        calls = 0

        def __call__(self, image):
            Remover.calls += 1
            out = np.zeros((64, 64, 4), np.float32)
            out[16:48, 16:48] = (0.3, 0.3, 0.3, 1.0)
            return out

    out = prepare_image(img, Remover(), border_ratio=0.2, size=64)
    assert Remover.calls == 1
    np.testing.assert_allclose(out[1, 1], 1.0)  # the removed background is white now
    cut = img.copy()
    cut[:, :8, 3] = 0.0  # 12.5% transparent: a real cut-out
    assert has_alpha_mask(cut) and "alpha channel" in mask_source(cut)


def test_clip_input_is_truncated_like_the_published_pipeline():
    from core.mvdiffusion.pipeline import clip_input_uint8
    from core.mvdiffusion.tiny import build_tiny_pipeline

    k = np.arange(256 * 3, dtype=np.float32).reshape(16, 16, 3) % 255
    image = (k + 0.7) / 255.0  # off the 8-bit grid: rounding would give k + 1
    np.testing.assert_array_equal(clip_input_uint8(image), k.astype(np.uint8))
    pipe = build_tiny_pipeline(imagedream=True)
    got = pipe.encode_image(image)
    pixels = pipe.feature_extractor(images=(image * 255).astype(np.uint8), return_tensors="pt").pixel_values
    want = pipe.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(got, want)


def test_small_presets_turntable_is_their_own_render_enlarged():
    """A model supervised at 64 px is shown at 64 px, enlarged bilinearly to the video size: a finer
    render would show the gaps between Gaussians that its training views never saw."""
    import torch.nn.functional as F

    from core.export import render_turntable
    from core.gs import GaussianRenderer

    opt = micro_options(output_size=64)
    g = torch.rand(1, 300, 14)
    g[..., :3] = g[..., :3] - 0.5
    g[..., 4:7] = 0.02
    g[..., 7:11] = torch.tensor([1.0, 0, 0, 0])
    renderer = GaussianRenderer(opt)
    small = render_turntable(renderer, g, opt, num_frames=3)
    big = render_turntable(renderer, g, opt, num_frames=3, size=256)
    assert small.shape == (3, 64, 64, 3) and big.shape == (3, 256, 256, 3)
    want = F.interpolate(torch.from_numpy(small).permute(0, 3, 1, 2).float() / 255, size=256, mode="bilinear")
    got = torch.from_numpy(big).permute(0, 3, 1, 2).float() / 255
    assert (got - want).abs().max() < 3 / 255  # the same picture, up to rounding to 8 bits before or after


# --------------------------------------------------------------------------- nothing lost or mixed up, round 2


@pytest.fixture
def no_models(monkeypatch):
    """Loading a model fails the test: refusals must come before any model loads."""
    import core.generation

    def refuse(*a, **k):
        raise AssertionError("a model was loaded for an input that should have been refused")

    monkeypatch.setattr(core.generation, "load_lgm", refuse)
    monkeypatch.setattr(core.generation, "load_mv_pipeline", refuse)


def test_blank_views_are_refused_before_any_model_and_nothing_is_written(assets, tmp_path, offline, no_models, capsys):
    """A blank white strip (and a blank folder of 4 transparent images) is no object: exit 2 before
    any model loads, a message saying so, no .ply, no .glb, not even the workspace."""
    write_image(tmp_path / "white.png", np.ones((64, 256, 3), np.float32))
    (tmp_path / "clear").mkdir()
    for k in range(4):
        write_image(tmp_path / "clear" / f"{k}.png", np.zeros((64, 64, 4), np.float32))  # fully transparent
    for views in (tmp_path / "white.png", tmp_path / "clear"):
        ws = tmp_path / f"ws_{views.stem}"
        code = run_main("--views", views, "--mesh", "--preset", PRESET, "--resume", assets["ckpt"], "--workspace", ws)
        err = capsys.readouterr().err
        assert code == 2, err
        assert "blank" in err and "no object to reconstruct" in err and str(views) in err
        assert "Traceback" not in err and len(err.splitlines()) < 10
        assert not ws.exists()


def test_views_with_an_object_are_not_refused_as_blank(assets, tmp_path, offline):
    """The blank check does not refuse a real object: a dark disc in each white view."""
    yy, xx = np.mgrid[:64, :64]
    view = np.ones((64, 64, 3), np.float32)
    view[(yy - 32) ** 2 + (xx - 32) ** 2 < 15**2] = (0.7, 0.2, 0.1)
    write_image(tmp_path / "disc.png", np.concatenate([view] * 4, axis=1))
    ws = tmp_path / "ws"
    assert run_main("--views", tmp_path / "disc.png", "--preset", PRESET, "--resume", assets["ckpt"],
                    "--workspace", ws, "--video-frames", 0) == 0
    assert (ws / "disc.ply").is_file()


def test_repeated_views_make_one_object_each(assets, tmp_path, offline, capsys):
    """--views a --views b: two objects, each from its own views (none dropped, none mixed up)."""
    shades = {"a": (0.1, 0.3, 0.5, 0.7), "b": (0.9, 0.6, 0.4, 0.2)}
    for name, s in shades.items():
        write_image(tmp_path / f"{name}.png", grey_strip(32, s))
    ws = tmp_path / "ws"
    code = run_main("--views", tmp_path / "a.png", "--views", tmp_path / "b.png", "--preset", PRESET,
                    "--resume", assets["ckpt"], "--workspace", ws, "--video-frames", 0)
    assert code == 0, capsys.readouterr().err
    for name, s in shades.items():
        assert (ws / f"{name}.ply").is_file()
        np.testing.assert_allclose(read_image(ws / f"{name}_mv.png"), grey_strip(32, s), atol=1 / 255)
    # a second path after one --views is a positional PATH: refused, with the way to give two
    code = run_main("--views", tmp_path / "a.png", tmp_path / "b.png", "--preset", PRESET, "--resume", assets["ckpt"],
                    "--workspace", tmp_path / "ws2")
    err = capsys.readouterr().err
    assert code == 2 and "--views a.png --views b.png" in err and "b.png" in err


def test_stacked_views_are_read_with_a_note(assets, tmp_path, offline, capsys):
    """A strip 4 times taller than wide is 4 views stacked top to bottom: read so, and said."""
    side_by_side = grey_strip(32)
    stacked = np.concatenate(np.split(side_by_side, 4, axis=1), axis=0)  # [128, 32, 3]
    write_image(tmp_path / "tall.png", stacked)
    ws = tmp_path / "ws"
    code = run_main("--views", tmp_path / "tall.png", "--preset", PRESET, "--resume", assets["ckpt"],
                    "--workspace", ws, "--video-frames", 0)
    out = capsys.readouterr().out
    assert code == 0
    assert "note:" in out and "stacked top to bottom" in out and "tall.png" in out
    np.testing.assert_allclose(read_image(ws / "tall_mv.png"), side_by_side, atol=1 / 255)


def test_tiny_views_are_refused(assets, tmp_path, offline, no_models, capsys):
    write_image(tmp_path / "icon.png", grey_strip(8))  # 8 px views: a thumbnail, not views to reconstruct
    code = run_main("--views", tmp_path / "icon.png", "--preset", PRESET, "--resume", assets["ckpt"],
                    "--workspace", tmp_path / "ws")
    err = capsys.readouterr().err
    assert code == 2 and "8x8 px" in err and "at least 32 px" in err and "icon.png" in err
    assert not (tmp_path / "ws").exists()


def test_animated_gif_views_are_refused(assets, tmp_path, offline, no_models, capsys):
    """An animated GIF is not read as its first frame without a word."""
    from PIL import Image

    frames = [Image.fromarray((grey_strip(32, (v, 0.5, 0.5, 0.5)) * 255).astype(np.uint8)) for v in (0.1, 0.9)]
    frames[0].save(tmp_path / "turn.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    code = run_main("--views", tmp_path / "turn.gif", "--preset", PRESET, "--resume", assets["ckpt"],
                    "--workspace", tmp_path / "ws")
    err = capsys.readouterr().err
    assert code == 2 and "animated GIF of 2 frames" in err and "turn.gif" in err
    assert not (tmp_path / "ws").exists()
