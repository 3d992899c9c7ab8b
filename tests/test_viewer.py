"""scripts/viewer.py (viser viewer with the project's render) and the y-down orientation of exported
.ply / .splat files (core.gs: yup_to_ydown, save_ply / save_splat / load_ply / load_splat y_down)."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

from conftest import ROOT
from core.cameras import opengl_to_opencv, orbit_camera, projection_matrix, renderer_cameras
from core.geometry import quaternion_to_matrix
from core.gs import GaussianRenderer, load_ply, load_splat, save_ply, save_splat, ydown_to_yup, yup_to_ydown
from core.options import Options

FLIP = torch.diag(torch.tensor([1.0, -1.0, -1.0]))  # 180 degrees about x


def gaussians(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Random anisotropic, rotated, coloured Gaussians in [-0.5, 0.5]^3. [n, 14]"""
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(n, 3, generator=g) - 0.5
    opacity = 0.2 + 0.7 * torch.rand(n, 1, generator=g)
    scale = 0.01 + 0.05 * torch.rand(n, 3, generator=g)
    rot = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    return torch.cat([xyz, opacity, scale, rot, torch.rand(n, 3, generator=g)], dim=1)


def covariance(g: torch.Tensor) -> torch.Tensor:
    r = quaternion_to_matrix(g[:, 7:11])
    return r @ torch.diag_embed(g[:, 4:7] ** 2) @ r.transpose(1, 2)  # [N, 3, 3]


# --------------------------------------------------------------------------- y-down orientation


def test_a_known_gaussian_lands_where_expected_in_y_down():
    """A Gaussian at (0.1, 0.2, 0.3), long along +y and turned 30 degrees about z: in y-down it sits
    at (0.1, -0.2, -0.3), long along -y, turned -30 degrees about z (seen from +z)."""
    half = math.radians(30) / 2
    g = torch.tensor([[0.1, 0.2, 0.3, 0.8, 0.01, 0.2, 0.02, math.cos(half), 0.0, 0.0, math.sin(half), 1.0, 0.5, 0.0]])
    down = yup_to_ydown(g)
    torch.testing.assert_close(down[0, :3], torch.tensor([0.1, -0.2, -0.3]))
    torch.testing.assert_close(down[0, 3:7], g[0, 3:7])  # opacity and scales
    torch.testing.assert_close(down[0, 11:], g[0, 11:])  # colour
    long_axis = quaternion_to_matrix(down[0, 7:11])[:, 1]  # where the Gaussian's own y axis points
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    torch.testing.assert_close(long_axis, torch.tensor([-s, -c, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(covariance(down), FLIP @ covariance(g) @ FLIP)
    torch.testing.assert_close(ydown_to_yup(down), g)  # the very same quaternion back


def test_y_down_is_a_rotation_of_the_whole_scene():
    """Rendering the y-down Gaussians from the camera turned the same way gives the same image."""
    g = gaussians(200)
    renderer = GaussianRenderer(Options(output_size=64, renderer="torch"))
    proj = projection_matrix(49.1, 0.5, 2.5)
    c2w = orbit_camera(-20.0, 35.0, 1.5)  # [4, 4]
    turned = c2w.clone()
    turned[:3] = FLIP @ c2w[:3]  # the camera rotated with the scene
    images = []
    for scene, pose in ((g, c2w), (yup_to_ydown(g), turned)):
        cam_view, cam_view_proj, cam_pos = renderer_cameras(pose[None], proj)
        images.append(renderer.render(scene[None], cam_view[None], cam_view_proj[None], cam_pos[None])["image"])
    torch.testing.assert_close(images[1], images[0], atol=1e-4, rtol=0)


def test_ply_and_splat_round_trip_in_y_down(tmp_path):
    g = gaussians()
    save_ply(g, tmp_path / "down.ply", y_down=True)
    torch.testing.assert_close(load_ply(tmp_path / "down.ply", y_down=True), g, atol=1e-5, rtol=1e-5)
    raw = load_ply(tmp_path / "down.ply")  # as a y-down viewer reads it
    torch.testing.assert_close(raw[:, :3], g[:, :3] * torch.tensor([1.0, -1.0, -1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(covariance(raw), FLIP @ covariance(g) @ FLIP, atol=1e-6, rtol=1e-4)

    save_splat(g, tmp_path / "down.splat", y_down=True)
    back = load_splat(tmp_path / "down.splat", y_down=True)  # sorted by size x opacity, 8-bit rotations
    order = torch.argsort(-(g[:, 4] * g[:, 5] * g[:, 6] * g[:, 3]), stable=True)
    torch.testing.assert_close(back[:, :3], g[order, :3])
    torch.testing.assert_close(covariance(back), covariance(g[order]), atol=2e-4, rtol=0.05)


# --------------------------------------------------------------------------- the viewer's pieces


def load_viewer_module():
    """scripts/viewer.py as a module (loaded once)."""
    import importlib.util

    if "lgm_viewer" not in sys.modules:
        spec = importlib.util.spec_from_file_location("lgm_viewer", ROOT / "scripts" / "viewer.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["lgm_viewer"] = module
        spec.loader.exec_module(module)
    return sys.modules["lgm_viewer"]


def test_covariances_are_r_s_s_rt():
    viewer = load_viewer_module()
    g = gaussians(16)
    torch.testing.assert_close(viewer.covariances(g), covariance(g))
    torch.testing.assert_close(viewer.covariances(g, 2.0), 4.0 * covariance(g))


@pytest.mark.parametrize("elevation, azimuth", [(0.0, 0.0), (-30.0, 120.0), (45.0, -60.0)])
def test_a_viser_camera_is_the_same_camera_for_our_renderer(elevation, azimuth):
    """viser reports R (OpenCV axes) as a quaternion and the centre; our pose comes back."""
    from viser.transforms import SO3

    viewer = load_viewer_module()
    pose = orbit_camera(elevation, azimuth, 2.0)  # OpenGL c2w
    wxyz = SO3.from_matrix(opengl_to_opencv(pose)[:3, :3].double().numpy()).wxyz  # as viser's camera handle does
    torch.testing.assert_close(viewer.viser_camera_to_c2w(wxyz, pose[:3, 3].numpy()), pose, atol=1e-5, rtol=0)


def test_project_render_modes(tmp_path):
    """The panel's image is the renderer's image for the camera; alpha and depth have its shape."""
    viewer = load_viewer_module()
    g = gaussians(300)
    shown = []
    project = viewer.ProjectRender(g, 48, torch.device("cpu"), lambda image, seconds: shown.append(image))
    try:
        pose = orbit_camera(-10.0, 20.0, 1.5)
        image = project.render(pose, 49.1)
        cam_view, cam_view_proj, cam_pos = renderer_cameras(pose[None], projection_matrix(49.1, 0.5, 2.5))
        want = GaussianRenderer(Options(output_size=48, renderer="torch")).render(g[None], cam_view[None], cam_view_proj[None], cam_pos[None])
        np.testing.assert_allclose(image / 255.0, want["image"][0, 0].permute(1, 2, 0).numpy(), atol=1 / 255 + 1e-6)
        project.mode = "alpha"
        alpha = project.render(pose, 49.1)
        assert alpha.shape == (48, 48, 3) and alpha.max() > 128 and alpha.min() == 0
        project.mode, project.background = "depth", (0.0, 0.0, 0.0)
        depth = project.render(pose, 49.1)
        assert depth.shape == (48, 48, 3) and depth.max() > 128
        assert (alpha == 0).any() and (depth[alpha == 0] == 0).all()  # the background colour where nothing is
        project.request(pose, 49.1)  # the worker thread renders and shows it
        for _ in range(100):
            if shown:
                break
            time.sleep(0.05)
        assert shown and shown[-1].shape == (48, 48, 3)
    finally:
        project.stop()


def test_viewer_reads_other_tools_ply_and_refuses_bad_files(tmp_path, capsys):
    """A PLY with SH degree 3 (f_rest_0..44) reads as its DC colour; a missing or non-PLY file is a
    one-screen error with exit code 2."""
    from plyfile import PlyData, PlyElement

    viewer = load_viewer_module()
    g = gaussians(8)
    save_ply(g, tmp_path / "ours.ply")
    v = PlyData.read(str(tmp_path / "ours.ply"))["vertex"].data
    names = list(v.dtype.names) + [f"f_rest_{i}" for i in range(45)]
    sh3 = np.zeros(len(v), dtype=[(n, "f4") for n in names])
    for n in v.dtype.names:
        sh3[n] = v[n]
    sh3["f_rest_7"] = 0.3
    PlyData([PlyElement.describe(sh3, "vertex")]).write(str(tmp_path / "sh3.ply"))
    with pytest.warns(UserWarning, match="f_rest"):
        import core.gs

        core.gs._warned_sh = False
        torch.testing.assert_close(load_ply(tmp_path / "sh3.ply"), load_ply(tmp_path / "ours.ply"))

    assert viewer.main([str(tmp_path / "missing.ply")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "notes.ply").write_text("not a ply")
    assert viewer.main([str(tmp_path / "notes.ply")]) == 2
    err = capsys.readouterr().err
    assert "notes.ply" in err and "Traceback" not in err


def broken_ply(path) -> None:
    """A 3DGS PLY of 8 Gaussians, one centre NaN and one log-scale inf."""
    from plyfile import PlyData, PlyElement

    save_ply(gaussians(8), path)
    data = PlyData.read(str(path))["vertex"].data.copy()
    data["x"][2] = np.nan
    data["scale_1"][5] = np.inf
    PlyData([PlyElement.describe(data, "vertex")]).write(str(path))


@pytest.mark.parametrize("case", ["folder", "image", "nan"])
def test_viewer_says_what_is_wrong_with_the_file(tmp_path, capsys, monkeypatch, case):
    """A folder, an image and a PLY holding NaN / inf are each a one-screen error with exit code 2
    that says so; the non-finite values are refused as scripts/convert_mesh.py refuses them (core.mesh)."""
    from core.images import write_image
    from core.mesh import MeshError, checked_gaussians

    viewer = load_viewer_module()

    def started(*args, **kwargs):
        raise AssertionError("the viewer started serving a file it should have refused")

    monkeypatch.setattr(viewer, "Viewer", started)
    if case == "folder":
        (tmp_path / "scene").mkdir()
        save_ply(gaussians(8), tmp_path / "scene" / "point_cloud.ply")
        path, words, wrong = tmp_path / "scene", ["is a folder", "point_cloud.ply"], "no such file"
    elif case == "image":
        write_image(tmp_path / "photo.png", np.full((16, 16, 3), 0.5, np.float32))
        path, words, wrong = tmp_path / "photo.png", ["photo.png is not a PLY file"], "UnicodeDecodeError"
    else:
        path = tmp_path / "broken.ply"
        broken_ply(path)
        with pytest.raises(MeshError) as refused:  # what convert_mesh.py says about this file
            checked_gaussians(load_ply(path))
        assert "2 of 8 Gaussians hold NaN or inf" in str(refused.value)
        words, wrong = [f"broken.ply: {refused.value}"], "Traceback"
    assert viewer.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words) and wrong not in err and "Traceback" not in err, err


def run_viewer(args: list, cwd, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """scripts/viewer.py as a user runs it; a viewer still running after ``timeout`` s fails the test."""
    from test_app import server_env

    try:
        return subprocess.run([sys.executable, str(ROOT / "scripts" / "viewer.py"), *args], cwd=cwd, env=server_env(cwd),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.output.decode(errors="replace") if isinstance(e.output, bytes) else (e.output or "")
        pytest.fail(f"the viewer still runs after {timeout:.0f} s (it should have stopped with a message):\n{out[-2000:]}")


@pytest.mark.parametrize("flags", [
    ["--port", "99999"],  # out of range: viser's thread died with a traceback and the viewer hung
    ["--host", "no-such-host.invalid"],  # a name that never resolves (RFC 6761)
    ["--host", "203.0.113.5"],  # a documentation address (RFC 5737), not on this machine
], ids=["port-out-of-range", "unknown-host-name", "address-not-here"])
def test_viewer_stops_on_an_address_it_cannot_serve(tmp_path, flags):
    save_ply(gaussians(8), tmp_path / "small.ply")
    done = run_viewer([str(tmp_path / "small.ply"), *flags, "--render-size", "16"], tmp_path)
    assert done.returncode == 2, done.stdout[-2000:]
    assert flags[0] in done.stdout and flags[1] in done.stdout and "Traceback" not in done.stdout, done.stdout
    assert len(done.stdout.strip().splitlines()) <= 10, done.stdout  # one screen


def test_viewer_serves_on_the_next_port_when_its_port_is_taken_and_says_so(tmp_path):
    from test_app import server_env, stop

    save_ply(gaussians(8), tmp_path / "small.ply")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log = tmp_path / "viewer.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "viewer.py"), str(tmp_path / "small.ply"),
                                     "--port", str(port), "--render-size", "16"],
                                    cwd=tmp_path, env=server_env(tmp_path), stdout=out, stderr=subprocess.STDOUT)
        try:
            t0 = time.monotonic()
            while "Ctrl-C stops" not in log.read_text():
                assert proc.poll() is None, f"the viewer exited with code {proc.returncode}:\n{log.read_text()[-2000:]}"
                assert time.monotonic() - t0 < 60, f"the viewer did not start within 60 s:\n{log.read_text()[-2000:]}"
                time.sleep(0.2)
            text = log.read_text()
            served = int(text.split("(Ctrl-C stops)")[0].rsplit("http://127.0.0.1:", 1)[1].split()[0])
            assert served != port and f"[viewer] port {port} is taken; serving on {served}" in text, text
            with urllib.request.urlopen(f"http://127.0.0.1:{served}/", timeout=10) as r:
                assert r.status == 200
        finally:
            stop(proc)


# --------------------------------------------------------------------------- served, in a browser


@pytest.fixture(scope="module")
def viewer_server(tmp_path_factory):
    """scripts/viewer.py on a free port with an object-like PLY (an ellipsoid shell, red top, blue bottom)."""
    from test_app import free_port, server_env, stop, two_tone_shell

    tmp = tmp_path_factory.mktemp("viewer")
    save_ply(two_tone_shell(), tmp / "shell.ply")
    port, log = free_port(), tmp / "viewer.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "viewer.py"), str(tmp / "shell.ply"), "--port", str(port), "--render-size", "128"],
            cwd=tmp, env=server_env(tmp), stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        t0 = time.monotonic()
        url = None
        while time.monotonic() - t0 < 120 and url is None:
            if proc.poll() is not None:
                pytest.fail(f"the viewer exited with code {proc.returncode}:\n{log.read_text()[-3000:]}")
            for line in log.read_text().splitlines():
                if line.startswith("[viewer]") and "http://" in line:
                    url = line.split("http://")[1].split()[0]
            time.sleep(0.3)
        assert url, log.read_text()
        with urllib.request.urlopen(f"http://{url}/", timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        yield f"http://{url}/", tmp
    finally:
        stop(proc)


def test_viewer_page_draws_the_splats_and_the_project_render(viewer_server, tmp_path):
    from test_app import CHROMIUM, CHROMIUM_ARGS, blank_fraction, redness_top_bottom

    if CHROMIUM is None:
        pytest.skip("needs chromium: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright: pip install -r requirements-dev.txt")
    url, _ = viewer_server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 800, "height": 600})
        outside = []
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(
            ("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")) else None)
        page.goto(url)
        status = page.get_by_text(" px: ")  # "image, 128 px: 12 ms (torch on cpu)" once a render is shown
        status.first.wait_for(timeout=60_000)
        blank, colours, png = 1.0, 0, b""
        for _ in range(40):
            time.sleep(0.5)
            png = page.locator("canvas").first.screenshot()
            blank, colours = blank_fraction(png)
            if blank < 0.95 and colours > 50:
                break
        page.screenshot(path=str(tmp_path / "viewer.png"))
        browser.close()
    assert blank < 0.95 and colours > 50, f"the splats look blank: {blank:.1%} one colour, {colours} colours"
    assert outside == [], f"the viewer tried to reach other hosts: {outside}"
    top, bottom = redness_top_bottom(png, background="white")  # upright: the red top (+y) above the blue bottom
    assert top > 50 > -50 > bottom, f"not upright: red - blue is {top:.0f} at the top and {bottom:.0f} at the bottom"
