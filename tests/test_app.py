"""scripts/app.py (the web app) served on 127.0.0.1 with tiny models, driven with gradio_client and
a headless browser; plus the export options it shares with infer.py (--mesh, --y-down).

The server runs the real command line in a subprocess: ``--preset cpu`` with random weights, tiny
random ImageDream / MVDream folders (core.mvdiffusion.tiny), no rembg model (offline), 4-frame
turntables. The browser test needs Debian's ``chromium`` and the ``playwright`` package (test-only,
requirements-dev.txt) and is skipped without them.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

# gradio_client starts a telemetry thread unless this is "False" (its own analytics_enabled=False
# does not turn it off); nothing may leave this machine during the tests.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from conftest import ROOT  # noqa: E402
from core.gs import load_ply, load_splat  # noqa: E402
from core.images import read_image, write_image  # noqa: E402

gradio_client = pytest.importorskip("gradio_client")

N_GAUSSIANS = 4 * 16**2  # the cpu preset: 4 views x 16^2
VIDEO_FRAMES = 4
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]  # WebGL in software


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(tmp: Path) -> dict:
    """The environment of a server under test: offline, one quiet OpenMP thread, no telemetry."""
    return dict(
        os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", GRADIO_ANALYTICS_ENABLED="False",
        LGM_OFFLINE="1", HF_HUB_OFFLINE="1", U2NET_HOME=str(tmp / "no_rembg_models"), GRADIO_TEMP_DIR=str(tmp / "gradio"),
    )


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    """Until ``url`` answers 200; fails with the server's log when it exits or takes too long."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with code {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the server did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def synthetic_views(size: int = 64) -> np.ndarray:
    """4 views side by side of a synthetic object at LGM's input cameras, on white. [size, 4 size, 3]"""
    from core.cameras import default_input_poses
    from core.datasets.synthetic import render_object, sample_object

    rgba = render_object(sample_object(torch.Generator().manual_seed(4)), default_input_poses(), size, 49.1)  # [4, 4, S, S]
    rgb = rgba[:, :3] * rgba[:, 3:] + (1 - rgba[:, 3:])
    return torch.cat(list(rgb), dim=2).permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A random-weight checkpoint of the cpu preset, tiny ImageDream / MVDream folders, inputs."""
    from safetensors.torch import save_file

    from core.models import LGM
    from core.mvdiffusion.tiny import save_tiny_pipeline
    from core.options import config_defaults
    from test_infer import rgba_object

    root = tmp_path_factory.mktemp("app_assets")
    torch.manual_seed(0)
    model = LGM(config_defaults["cpu"])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "lgm_cpu.safetensors"))
    write_image(root / "object.png", rgba_object())  # RGBA, transparent background
    write_image(root / "photo.jpg", np.full((48, 64, 3), 0.4, np.float32))  # no alpha: needs rembg
    write_image(root / "four.png", synthetic_views())
    write_image(root / "square.png", np.ones((32, 32, 3), np.float32))  # not 4 views
    (root / "notes.png").write_text("not an image")
    return SimpleNamespace(
        root=root, ckpt=root / "lgm_cpu.safetensors",
        imagedream=save_tiny_pipeline(root / "imagedream", imagedream=True),
        mvdream=save_tiny_pipeline(root / "mvdream", imagedream=False),
    )


@pytest.fixture(scope="module")
def server(assets, tmp_path_factory):
    """scripts/app.py on a free port of 127.0.0.1, as a user starts it; stopped after the module."""
    tmp = tmp_path_factory.mktemp("app_server")
    port, log = free_port(), tmp / "server.log"
    cmd = [
        sys.executable, str(ROOT / "scripts" / "app.py"), "--preset", "cpu", "--resume", str(assets.ckpt),
        "--imagedream", str(assets.imagedream), "--mvdream", str(assets.mvdream), "--workspace", str(tmp / "ws"),
        "--host", "127.0.0.1", "--port", str(port), "--video-frames", str(VIDEO_FRAMES), "--fps", "4",
    ]
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp, env=server_env(tmp), stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, proc, log)
        print(f"\n[app server up in {time.perf_counter() - t0:.1f} s]")
        yield SimpleNamespace(url=url, workspace=tmp / "ws", log=log, tmp=tmp)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server.url, verbose=False, download_files=str(server.tmp / "downloads"))


def video_path(value) -> str:
    """gradio_client gives a video as a path or as {"video": path, "subtitles": ...}."""
    return value["video"] if isinstance(value, dict) else value


def call(client, endpoint: str, assets, **changes):
    """One request with small settings (2 diffusion steps). -> the 7 outputs."""
    from gradio_client import handle_file

    settings = dict(seed=1, steps=2, guidance_scale=5.0, elevation=0.0, y_down=False, mesh=False)
    settings.update(changes)
    if endpoint == "views_to_3d":
        args = [changes.get("views", handle_file(str(assets.root / "four.png")))]
        args += [settings["elevation"], settings["y_down"], settings["mesh"]]
    else:
        first = (changes.get("image", handle_file(str(assets.root / "object.png"))), changes.get("prompt", "")) \
            if endpoint == "image_to_3d" else (changes.get("prompt", "a red chair"),)
        args = [*first, *(settings[k] for k in ("seed", "steps", "guidance_scale", "elevation", "y_down", "mesh"))]
    return client.predict(*args, api_name=f"/{endpoint}")


# --------------------------------------------------------------------------- the three endpoints


@pytest.mark.parametrize("endpoint", ["image_to_3d", "text_to_3d", "views_to_3d"])
def test_each_endpoint_returns_a_ply_that_loads_a_video_and_the_views(client, assets, endpoint, capsys):
    import imageio.v3 as iio

    t0 = time.perf_counter()
    views, shown, video, ply, splat, glb, info = call(client, endpoint, assets)
    with capsys.disabled():
        print(f"\n[{endpoint}: {time.perf_counter() - t0:.1f} s]")

    g = load_ply(ply)  # [N, 14]
    assert g.shape == (N_GAUSSIANS, 14) and bool(torch.isfinite(g).all())
    frames = iio.imread(video_path(video))
    assert frames.shape[0] == VIDEO_FRAMES and frames.shape[-1] == 3
    assert Path(splat).stat().st_size == 32 * N_GAUSSIANS
    assert read_image(views).shape[1] == 4 * read_image(views).shape[0]  # the 4 views side by side
    assert glb is None  # no mesh unless asked for
    assert f"{N_GAUSSIANS:,} Gaussians" in info
    # the 3D view gets a y-down copy (Gradio's gsplat.js renderer is y-down): upright there
    np.testing.assert_allclose(load_splat(shown, y_down=True)[:, :3].sort(0).values, g[:, :3].sort(0).values, atol=1e-5)


def test_views_keep_the_given_views(client, assets):
    views, *_ = call(client, "views_to_3d", assets)
    np.testing.assert_allclose(read_image(views), read_image(assets.root / "four.png"), atol=1 / 255)


def test_y_down_and_mesh_options(client, assets):
    import trimesh

    up = call(client, "views_to_3d", assets)
    down = call(client, "views_to_3d", assets, y_down=True, mesh=True)
    g_up, g_down = load_ply(up[3]), load_ply(down[3])
    torch.testing.assert_close(g_down[:, 0], g_up[:, 0])
    torch.testing.assert_close(g_down[:, 1:3], -g_up[:, 1:3])  # (x, y, z) -> (x, -y, -z)
    torch.testing.assert_close(load_ply(down[3], y_down=True), g_up, atol=1e-5, rtol=1e-5)
    mesh = trimesh.load(down[5], force="mesh")
    assert len(mesh.faces) > 0 and len(mesh.vertices) > 0
    assert "y-down" in down[6]


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_are_error_messages_and_the_server_keeps_serving(client, assets):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bad = [
        ("views_to_3d", dict(views=None), "No image"),
        ("views_to_3d", dict(views=handle_file(str(assets.root / "square.png"))), "4 square views side by side"),
        ("views_to_3d", dict(views=handle_file(str(assets.root / "notes.png"))), "not an image file"),
        ("image_to_3d", dict(image=None), "No image"),
        ("image_to_3d", dict(image=handle_file(str(assets.root / "notes.png"))), "not an image file"),
        ("image_to_3d", dict(steps=0), "less than minimum value 1"),  # the sliders' ranges
        ("text_to_3d", dict(elevation=90.0), "greater than maximum value 60"),
        ("text_to_3d", dict(prompt="   "), "No prompt"),
    ]
    if not (ROOT / "pretrained" / "u2net.onnx").is_file():  # without rembg's model an opaque photo is refused
        bad.append(("image_to_3d", dict(image=handle_file(str(assets.root / "photo.jpg"))), "download_weights.py --only rembg"))
    for endpoint, changes, words in bad:
        with pytest.raises(AppError) as info:
            call(client, endpoint, assets, **changes)
        assert words in str(info.value), (endpoint, changes, str(info.value))
    ply = call(client, "views_to_3d", assets)[3]  # the next request still succeeds
    assert load_ply(ply).shape == (N_GAUSSIANS, 14)


def test_out_of_range_settings_are_an_error_message_and_one_log_line(client, assets, server):
    """A setting outside its slider's range sent to the API: the client's error names the setting,
    and the server log gets one line for it, not a traceback."""
    from gradio_client.exceptions import AppError

    start = len(server.log.read_text())
    bad = [
        ("image_to_3d", dict(steps=0), "Diffusion steps: Value 0 is less than minimum value 1"),
        ("text_to_3d", dict(guidance_scale=25.0), "Guidance scale: Value 25.0 is greater than maximum value 20"),
        ("views_to_3d", dict(elevation=-90.0),
         "Elevation (degrees, negative = from above): Value -90.0 is less than minimum value -60"),
    ]
    answers = []
    for endpoint, changes, words in bad:
        with pytest.raises(AppError) as info:
            call(client, endpoint, assets, **changes)
        answers.append(str(info.value))
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5:  # the server writes its log as it answers
        logged = server.log.read_text()[start:]
        if all(words in logged for _, _, words in bad):
            break
        time.sleep(0.2)
    assert "Traceback" not in logged, logged[-3000:]
    for (endpoint, changes, words), answer in zip(bad, answers):
        assert words in answer, (endpoint, changes, answer)
        assert sum(words in line for line in logged.splitlines()) == 1, logged[-3000:]
    assert load_ply(call(client, "views_to_3d", assets)[3]).shape == (N_GAUSSIANS, 14)  # still serving


def test_missing_weights_switch_a_mode_off_with_the_download_command(assets, tmp_path):
    """No MVDream folder (offline): the app starts, text to 3D is off with a note naming the download
    command, its button is disabled and its endpoint answers with the note; the rest works."""
    import gradio as gr

    app = load_app_module()
    args = app.AppArgs(preset="cpu", resume=str(assets.ckpt), imagedream=str(assets.imagedream),
                       mvdream=str(tmp_path / "pretrained" / "mvdream-sd2.1-diffusers"), modes=("text", "views"))
    models = app.load_models(args, torch.device("cpu"))
    assert "download_weights.py --only mvdream" in models.notes["text"]
    assert "--modes text views image" in models.notes["image"]  # not asked for: how to offer it
    assert "views" not in models.notes
    handlers = app.App(args, models, tmp_path / "ws")
    with pytest.raises(gr.Error, match="only mvdream"):
        handlers.text_to_3d("a chair")
    demo = app.build_demo(args, models, tmp_path / "ws", app.make_examples(tmp_path / "examples", models.lgm.opt))
    buttons = {b.elem_id: b for b in demo.blocks.values() if isinstance(b, gr.Button)}
    assert not buttons["generate-text"].interactive and not buttons["generate-image"].interactive
    assert buttons["generate-views"].interactive

    no_lgm = app.load_models(app.AppArgs(preset="cpu", resume=str(tmp_path / "missing.safetensors"), modes=("views",)),
                             torch.device("cpu"))
    assert no_lgm.lgm is None and "missing.safetensors" in no_lgm.notes["views"]


def test_bad_flags_stop_with_exit_code_2(assets, tmp_path, capsys):
    app = load_app_module()
    assert app.main(["--preset", "no_such_preset", "--workspace", str(tmp_path / "ws")]) == 2
    assert "unknown preset" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert app.main(["--preset", "cpu", "--resume", str(assets.ckpt), "--port", str(port), "--workspace", str(tmp_path / "ws")]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "--port" in err and "Traceback" not in err
    (tmp_path / "file").write_text("")
    assert app.main(["--preset", "cpu", "--workspace", str(tmp_path / "file"), "--port", str(free_port())]) == 2
    assert "--workspace" in capsys.readouterr().err


def test_no_tab_left_stops_at_start_with_exit_code_2_saying_why(tmp_path):
    """No LGM weights: every tab is off. The console names each one and why, one line each, and the
    app stops with exit code 2 and a one-screen message instead of serving a page with nothing to do."""
    missing = tmp_path / "no_such_lgm.safetensors"
    cmd = [sys.executable, str(ROOT / "scripts" / "app.py"), "--preset", "cpu", "--resume", str(missing), "--modes", "views",
           "--workspace", str(tmp_path / "ws"), "--port", str(free_port())]
    try:
        done = subprocess.run(cmd, cwd=tmp_path, env=server_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=90)
    except subprocess.TimeoutExpired as e:
        out = e.output.decode(errors="replace") if isinstance(e.output, bytes) else (e.output or "")
        pytest.fail(f"the app still runs after 90 s with every tab off:\n{out[-3000:]}")
    lines = done.stdout.splitlines()
    assert done.returncode == 2, done.stdout[-3000:]
    assert "Traceback" not in done.stdout and "nothing to serve" in done.stdout, done.stdout[-3000:]
    off = {line.split(" is off: ")[0]: line for line in lines if line.startswith("[app] ") and " is off: " in line}
    assert sorted(off) == ["[app] 4 views to 3D", "[app] Image to 3D", "[app] Text to 3D"], done.stdout[-3000:]
    assert "The LGM weights are missing" in off["[app] 4 views to 3D"] and str(missing) in off["[app] 4 views to 3D"]
    assert "--modes views image" in off["[app] Image to 3D"] and "--modes views text" in off["[app] Text to 3D"]
    assert len(lines) <= 25, done.stdout  # one screen


def test_tabs_that_are_off_are_named_in_the_console_and_the_rest_is_served(assets, tmp_path, capsys, monkeypatch):
    """No MVDream weights: the app starts (4 views to 3D works) and the console says, one line per
    tab, that Text to 3D is off (with the download command) and Image to 3D is not offered."""
    app = load_app_module()
    launched = []
    monkeypatch.setattr(app.gr.Blocks, "launch", lambda self, **kwargs: launched.append(kwargs))
    no_mvdream = tmp_path / "pretrained" / "mvdream-sd2.1-diffusers"
    assert app.main(["--preset", "cpu", "--resume", str(assets.ckpt), "--modes", "text", "views", "--mvdream", str(no_mvdream),
                     "--workspace", str(tmp_path / "ws"), "--port", str(free_port())]) == 0
    assert len(launched) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if " is off: " in line]
    assert len(lines) == 2, out
    assert lines[0].startswith("[app] Image to 3D is off: Not offered") and "--modes text views image" in lines[0], out
    assert lines[1].startswith("[app] Text to 3D is off: The multi-view diffusion weights are missing"), out
    assert "download_weights.py --only mvdream" in lines[1], out  # the whole note on the tab's one line


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offload_flag_reaches_every_model_and_requests_still_work(assets, tmp_path, capsys, monkeypatch, mode):
    """--offload: the app starts with every model it loads (LGM, both pipelines) under the one offload
    of that mode, says so in the console and the page, and a request runs through them (CPU: nothing
    moves, but the hooks run: model mode brings each model in as it runs, one at a time)."""
    import gradio as gr

    app = load_app_module()
    launched, loaded = [], []
    monkeypatch.setattr(app.gr.Blocks, "launch", lambda self, **kwargs: launched.append(self))
    load_models = app.load_models
    monkeypatch.setattr(app, "load_models", lambda args, device: loaded.append((args, load_models(args, device))) or loaded[-1][1])
    assert app.main(["--preset", "cpu", "--resume", str(assets.ckpt), "--imagedream", str(assets.imagedream),
                     "--mvdream", str(assets.mvdream), "--workspace", str(tmp_path / "ws"), "--port", str(free_port()),
                     "--video-frames", "0", "--offload", mode]) == 0
    assert len(launched) == 1 and len(loaded) == 1
    args, models = loaded[0]
    assert args.offload == mode and models.offload.mode == mode and models.offload.compute == torch.device("cpu")
    assert f"[app] offload {mode}:" in capsys.readouterr().out
    page = " ".join(b.value for b in launched[0].blocks.values() if isinstance(b, gr.Markdown) and isinstance(b.value, str))
    assert f"(offload {mode})" in page
    if mode == "model":
        for module in (models.lgm, *models.pipes["image"].components.values(), *models.pipes["text"].components.values()):
            if isinstance(module, torch.nn.Module):
                assert module._hf_hook.offload is models.offload
    else:  # the weights wait outside the modules (meta) between forwards
        for module in (models.lgm, models.pipes["image"].unet, models.pipes["text"].unet):
            assert {p.device.type for p in module.parameters()} == {"meta"}

    handlers = app.App(args, models, tmp_path / "ws")
    outputs = handlers.text_to_3d("a chair", steps=2)
    assert load_ply(outputs[3]).shape == (N_GAUSSIANS, 14)
    if mode == "model":
        assert [name for name, where in models.offload.moves if where == "compute"] == ["text_encoder", "unet", "vae", "lgm"]


def test_examples_are_synthetic_renders_made_by_the_project(tmp_path):
    from core.options import config_defaults
    from core.preprocess import has_alpha_mask

    app = load_app_module()
    examples = app.make_examples(tmp_path, config_defaults["cpu"])
    assert len(examples["image"]) >= 2 and len(examples["views"]) >= 2
    for path in examples["image"]:
        image = read_image(path)
        assert image.shape == (256, 256, 4) and has_alpha_mask(image)  # a cut-out: no rembg needed
    for path in examples["views"]:
        assert read_image(path).shape == (256, 1024, 3)
    mtimes = [Path(p).stat().st_mtime_ns for p in examples["image"]]
    app.make_examples(tmp_path, config_defaults["cpu"])  # written once, then reused
    assert [Path(p).stat().st_mtime_ns for p in examples["image"]] == mtimes


def load_app_module():
    """scripts/app.py as a module (loaded once)."""
    import importlib.util

    if "lgm_app" not in sys.modules:
        spec = importlib.util.spec_from_file_location("lgm_app", ROOT / "scripts" / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["lgm_app"] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules["lgm_app"]


# --------------------------------------------------------------------------- infer.py: the same exports


def test_infer_mesh_and_y_down_write_a_glb_and_a_flipped_ply(assets, tmp_path):
    import trimesh

    import infer

    common = ["--views", str(assets.root / "four.png"), "--preset", "cpu", "--resume", str(assets.ckpt), "--video-frames", "0"]
    assert infer.main([*common, "--workspace", str(tmp_path / "up")]) == 0
    assert infer.main([*common, "--workspace", str(tmp_path / "down"), "--mesh", "--y-down", "--splat"]) == 0
    mesh = trimesh.load(tmp_path / "down" / "four.glb", force="mesh")
    assert len(mesh.faces) > 0
    assert not (tmp_path / "up" / "four.glb").exists()
    up = load_ply(tmp_path / "up" / "four.ply")
    torch.testing.assert_close(load_ply(tmp_path / "down" / "four.ply", y_down=True), up, atol=1e-5, rtol=1e-5)
    down_splat = load_splat(tmp_path / "down" / "four.splat")
    assert float(down_splat[:, 1].mean()) == pytest.approx(-float(up[:, 1].mean()), abs=1e-4)


# --------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium driven by playwright, WebGL in software (SwiftShader)."""
    if CHROMIUM is None:
        pytest.skip("needs chromium: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright: pip install -r requirements-dev.txt")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def blank_fraction(png: bytes) -> tuple[float, int]:
    """(fraction of pixels of the most common colour, number of distinct colours) of a screenshot."""
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    return counts.max() / len(pixels), len(colours)


def two_tone_shell(n: int = 3000) -> torch.Tensor:
    """Gaussians on an upright ellipsoid (0.3 x 0.5 x 0.3), red at the top (+y) fading to blue at the
    bottom: which way up a viewer draws it shows at a glance. [n, 14]"""
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    rgb = torch.stack([0.5 + 0.5 * d[:, 1], torch.full((n,), 0.3), 0.5 - 0.5 * d[:, 1]], dim=1)
    rot = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(n, 4)
    return torch.cat([d * torch.tensor([0.3, 0.5, 0.3]), torch.full((n, 1), 0.9), torch.full((n, 3), 0.03), rot, rgb], dim=1)


def redness_top_bottom(png: bytes, background: str) -> tuple[float, float]:
    """Mean red - blue (0..255 scale) over the drawn pixels of the top and the bottom third of the
    rows that hold any; ``background`` 'white' or 'black' is left out."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(float)  # [H, W, 3]
    drawn = rgb.sum(-1) < 700 if background == "white" else rgb.sum(-1) > 60  # [H, W]
    rows = ((rgb[..., 0] - rgb[..., 2]) * drawn).sum(1) / np.maximum(drawn.sum(1), 1)  # [H]
    held = np.nonzero(drawn.sum(1) > 0)[0]
    third = max(1, len(held) // 3)
    return float(rows[held[:third]].mean()), float(rows[held[-third:]].mean())


def open_page(browser, size=(1280, 1280)):
    """A page that records every request leaving 127.0.0.1 (there must be none) and aborts it."""
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    outside: list[str] = []

    def route(r):
        if r.request.url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return page, outside


def test_page_draws_the_gaussians_after_a_generation(server, browser, tmp_path):
    """Pick an example of the 4-views tab, generate, and check the pixels of the 3D view's canvas."""
    page, outside = open_page(browser)
    page.goto(server.url)
    page.get_by_role("tab", name="4 views to 3D").click()
    page.locator("#views-examples button.gallery-item").first.click()
    page.locator("#views-input img").first.wait_for(timeout=30_000)
    page.locator("#generate-views").click()
    canvas = page.locator("#gaussians-3d canvas")
    canvas.wait_for(timeout=120_000)
    blank, colours = 1.0, 0
    for _ in range(40):  # the splats load and draw asynchronously
        time.sleep(0.5)
        blank, colours = blank_fraction(canvas.screenshot())
        if blank < 0.98 and colours > 50:
            break
    page.screenshot(path=str(tmp_path / "app_after_generation.png"), full_page=True)
    assert blank < 0.98 and colours > 50, f"the 3D view looks blank: {blank:.1%} one colour, {colours} colours"
    assert page.locator("#generate-views").is_enabled()
    assert outside == [], f"the page tried to reach other hosts: {outside}"
    page.close()


@pytest.mark.parametrize("y_down", [True, False])
def test_gradio_model3d_wants_y_down(browser, tmp_path, y_down):
    """Why the app shows a y-down copy: Gradio's Model3D (gsplat.js) draws a y-down .splat upright
    and our y-up one upside down (the README's orientation table)."""
    import gradio as gr

    from core.gs import save_splat

    save_splat(two_tone_shell(), tmp_path / "shell.splat", y_down=y_down)
    with gr.Blocks(analytics_enabled=False) as demo:
        gr.Model3D(value=str(tmp_path / "shell.splat"), elem_id="shell", height=400)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, allowed_paths=[str(tmp_path)],
                ssr_mode=False, quiet=True)
    try:
        page, outside = open_page(browser, size=(800, 600))
        page.goto(f"http://127.0.0.1:{port}/")
        canvas = page.locator("#shell canvas")
        canvas.wait_for(timeout=60_000)
        for _ in range(40):
            time.sleep(0.5)
            png = canvas.screenshot()
            if blank_fraction(png)[0] < 0.98:
                break
        page.close()
    finally:
        demo.close()
    top, bottom = redness_top_bottom(png, background="black")
    if y_down:
        assert top > 50 > -50 > bottom, f"y-down not upright in Model3D: red - blue {top:.0f} at the top, {bottom:.0f} at the bottom"
    else:
        assert bottom > 50 > -50 > top, f"y-up not upside down in Model3D: red - blue {top:.0f} at the top, {bottom:.0f} at the bottom"
    assert outside == []
