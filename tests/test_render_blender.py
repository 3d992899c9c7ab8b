"""scripts/render_blender.py: camera layout, pose convention and the rendered folder format.

The first group needs no Blender: it checks the script's pure-Python cameras against
``core.cameras``. The second renders a real asset (the textured box of Debian's
``assimp-testmodels``, fetched with ``apt-get download``, never committed) and is skipped when no
Blender is found: ``$LGM_BLENDER`` (a Python with bpy, or a blender executable, run as
``blender -b -P``), this interpreter if it has bpy, or ``.venv-blender/bin/python`` (see
requirements-blender.txt).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.cameras import (
    blender_to_opengl,
    default_input_poses,
    orbit_camera,
    projection_matrix,
    renderer_cameras,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "render_blender.py"
FOVY, RADIUS, NEAR, FAR = 49.1, 1.5, 0.5, 2.5


def _load(name: str):
    """A module of scripts/ by name (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rb = _load("render_blender")


def _default_args(*extra: str):
    return rb.parse_args(["render_blender.py", "mesh.glb", "--output", "out", *extra])


# ----------------------------------------------------------------------------- no Blender needed


def test_every_view_pose_is_our_orbit_camera():
    args = _default_args()
    views = rb.view_list(args, "some_uid")
    assert len(views) == 3 * 8 + 8  # default: rings at 0, -30, 30 with 8 views each, 8 random views
    poses = torch.tensor([rb.blender_camera_pose(v["elevation"], v["azimuth"], RADIUS) for v in views])
    expected = orbit_camera(
        torch.tensor([v["elevation"] for v in views]), torch.tensor([v["azimuth"] for v in views]), RADIUS
    )
    assert torch.allclose(blender_to_opengl(poses), expected, atol=1e-5)


def test_first_four_default_views_are_the_lgm_input_cameras():
    views = rb.view_list(_default_args(), "uid")
    assert [(v["elevation"], v["azimuth"]) for v in views[:8]] == [
        (0, 0), (0, 90), (0, 180), (0, 270), (0, 45), (0, 135), (0, 225), (0, 315)
    ]
    poses = torch.tensor([rb.blender_camera_pose(v["elevation"], v["azimuth"], RADIUS) for v in views[:4]])
    assert torch.allclose(blender_to_opengl(poses), default_input_poses(0.0, RADIUS), atol=1e-6)


def test_pose_hand_computed():
    # Azimuth 0, elevation 0: our camera at (0, 0, 1.5) = Blender (0, -1.5, 0), looking along
    # Blender +y; OpenCV axes: x right = +x, y down = -z, z forward = +y.
    pose = rb.blender_camera_pose(0.0, 0.0, RADIUS)
    expected = [[1, 0, 0, 0], [0, 0, 1, -1.5], [0, -1, 0, 0], [0, 0, 0, 1]]
    assert np.allclose(pose, expected, atol=1e-12)
    # Elevation -30 is above the object: Blender z = 1.5 sin 30 = 0.75, our y = 0.75.
    above = rb.blender_camera_pose(-30.0, 90.0, RADIUS)
    assert np.allclose([row[3] for row in above[:3]], [1.5 * np.cos(np.pi / 6), 0.0, 0.75], atol=1e-12)
    assert np.allclose(blender_to_opengl(torch.tensor(above))[:3, 3], [1.5 * np.cos(np.pi / 6), 0.75, 0.0], atol=1e-6)


def test_pose_file_round_trip():
    pose = rb.blender_camera_pose(12.5, 200.0, RADIUS)
    text = rb.format_pose(pose)
    assert len(text.split()) == 16 and "-0.00000000" not in text
    assert np.allclose(np.loadtxt(text.splitlines()), pose, atol=1e-8)


def test_random_views_reproducible_per_uid_and_inside_the_band():
    args = _default_args("--num-random", "400", "--num-orbit-rings", "0")
    views = rb.view_list(args, "a")
    assert views == rb.view_list(args, "a")
    assert views != rb.view_list(args, "b")
    assert views != rb.view_list(_default_args("--num-random", "400", "--num-orbit-rings", "0", "--seed", "1"), "a")
    elevations = np.array([v["elevation"] for v in views])
    assert np.all(np.abs(elevations) <= 60.0) and (elevations > 0).sum() > 150 and (elevations < 0).sum() > 150
    assert all(0 <= v["azimuth"] < 360 for v in views)


def test_ring_arguments():
    args = _default_args("--ring-elevations", "-20,0,20", "--num-orbit-rings", "2", "--views-per-ring", "6")
    views = rb.view_list(args, "u")
    assert [v["elevation"] for v in views if v["kind"] == "ring"] == [-20.0] * 6 + [0.0] * 6
    assert [v["azimuth"] for v in views[:6]] == [0.0, 60.0, 120.0, 180.0, 240.0, 300.0]
    assert rb.ring_azimuths(12)[:4] == [0.0, 90.0, 180.0, 270.0] and sorted(rb.ring_azimuths(12)) == [
        30.0 * k for k in range(12)
    ]


def test_blender_argv_convention():
    argv = ["blender", "-b", "-P", "scripts/render_blender.py", "--", "a.glb", "-o", "out"]
    assert rb.script_argv(argv) == ["a.glb", "-o", "out"]
    assert rb.script_argv(["render_blender.py", "a.glb", "-o", "out"]) == ["a.glb", "-o", "out"]


def test_inputs_folders_lists_and_unique_uids(tmp_path):
    for rel in ("a/chair.glb", "b/chair.OBJ", "b/c/table.ply", "b/notes.md", "lamp.fbx"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text("# my objects\nlamp.fbx\n\n" + str(tmp_path / "a" / "chair.glb") + "  # again\n")
    files, problems = rb.collect_inputs([str(tmp_path / "b"), str(listing), str(tmp_path / "b" / "notes.md")])
    assert files == [tmp_path / p for p in ("b/c/table.ply", "b/chair.OBJ", "lamp.fbx", "a/chair.glb")]
    assert len(problems) == 1 and "notes.md" in problems[0]
    assert [uid for uid, _ in rb.assign_uids(files)] == ["table", "chair", "lamp", "chair_1"]


def test_missing_bpy_gives_install_instructions(tmp_path):
    if importlib.util.find_spec("bpy") is not None:
        pytest.skip("this interpreter has bpy")
    help_run = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0 and "--ring-elevations" in help_run.stdout
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "x.glb", "--output", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2
    assert "pip install -r requirements-blender.txt" in run.stderr and "blender -b -P" in run.stderr
    assert len(run.stderr.splitlines()) < 25  # one screen


# ----------------------------------------------------------------------------- rendering with Blender

ASSET = "glTF2/BoxTextured-glTF-Binary/BoxTextured.glb"  # a textured unit cube, centred
BOX_SIZE = 0.6  # --bbox-size: the whole cube stays in view (circumradius 0.52 < 1.5 sin(fovy/2) = 0.62)
RENDER_ARGS = [
    "--resolution", "64", "--ring-elevations", "0", "--views-per-ring", "4", "--num-random", "4",
    "--samples", "8", "--bbox-size", str(BOX_SIZE),
]  # fmt: skip
N_VIEWS, SIZE = 8, 64


def _blender_command() -> list[str] | None:
    configured = os.environ.get("LGM_BLENDER")
    if configured:
        if Path(configured).name.startswith("blender"):
            return [configured, "-b", "--factory-startup", "-P", str(SCRIPT), "--"]
        return [configured, str(SCRIPT)]
    if importlib.util.find_spec("bpy") is not None:
        return [sys.executable, str(SCRIPT)]
    local = REPO / ".venv-blender" / "bin" / "python"
    if local.is_file():
        return [str(local), str(SCRIPT)]
    return None  # a blender on PATH is not picked up by itself: distribution builds can be broken


@pytest.fixture(scope="module")
def blender_cmd() -> list[str]:
    cmd = _blender_command()
    if cmd is None:
        pytest.skip("no Blender: pip install -r requirements-blender.txt (in .venv-blender) or set LGM_BLENDER")
    return cmd


# -- test asset (owned by this file): Debian's assimp-testmodels, never committed


@pytest.fixture(scope="session")
def assimp_models(tmp_path_factory) -> Path:
    """The models folder of assimp-testmodels: $ASSIMP_TESTMODELS, the installed package, or the
    package fetched with ``apt-get download`` and unpacked into a temp dir (skips if that fails)."""
    for candidate in (os.environ.get("ASSIMP_TESTMODELS"), "/usr/share/assimp/models"):
        if candidate and (Path(candidate) / ASSET).is_file():
            return Path(candidate)
    fetch = _load("fetch_test_meshes")
    try:
        root = fetch.fetch_debian_package("assimp-testmodels", tmp_path_factory.mktemp("assimp"))
    except fetch.FetchError as e:
        pytest.skip(f"no assimp-testmodels ({e}); or set ASSIMP_TESTMODELS")
    models = root / "usr" / "share" / "assimp" / "models"
    if not (models / ASSET).is_file():
        pytest.skip(f"assimp-testmodels has no {ASSET}")
    return models


def _run(cmd: list[str], inputs: list[Path], output: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*cmd, *map(str, inputs), "--output", str(output), *RENDER_ARGS, *extra],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def rendered(blender_cmd, assimp_models, tmp_path_factory):
    """The box and a broken GLB rendered once into <tmp>/out. -> (output dir, process, seconds)"""
    tmp = tmp_path_factory.mktemp("render")
    broken = tmp / "broken.glb"
    broken.write_bytes(b"glTF this is not a valid binary glTF file")
    start = time.perf_counter()
    run = _run(blender_cmd, [assimp_models / ASSET, broken], tmp / "out")
    seconds = time.perf_counter() - start
    assert run.returncode == 0, run.stderr[-3000:]
    return tmp / "out", run, seconds


def _alpha(output: Path, i: int) -> np.ndarray:
    rgba = np.asarray(Image.open(output / "BoxTextured" / "rgb" / f"{i:03d}.png"))
    assert rgba.shape == (SIZE, SIZE, 4) and rgba.dtype == np.uint8
    return rgba[..., 3].astype(np.float64) / 255.0  # [H, W]


def _project(output: Path, i: int, points: np.ndarray) -> np.ndarray:
    """Blender-world points [N, 3] -> pixel coordinates (x right, y down) [N, 2] through the
    written pose, converted with core.cameras and projected like the rasterizer."""
    pose = torch.tensor(np.loadtxt(output / "BoxTextured" / "pose" / f"{i:03d}.txt"), dtype=torch.float32)
    assert pose.shape == (4, 4)
    c2w = blender_to_opengl(pose)
    _, cam_view_proj, _ = renderer_cameras(c2w, projection_matrix(FOVY, NEAR, FAR))
    ours = torch.tensor(points, dtype=torch.float32)[:, [0, 2, 1]] * torch.tensor([1.0, 1.0, -1.0])  # (x, z, -y)
    clip = torch.cat([ours, torch.ones(len(ours), 1)], dim=1) @ cam_view_proj  # [N, 4]
    ndc = clip[:, :2] / (clip[:, 3:] + 1e-7)
    return (((ndc + 1) * SIZE - 1) / 2).numpy()


def test_layout_list_file_and_meta(rendered):
    output, run, _ = rendered
    assert (output / "uids.txt").read_text() == "BoxTextured\n"
    obj = output / "BoxTextured"
    assert sorted(p.name for p in (obj / "rgb").iterdir()) == [f"{i:03d}.png" for i in range(N_VIEWS)]
    assert sorted(p.name for p in (obj / "pose").iterdir()) == [f"{i:03d}.txt" for i in range(N_VIEWS)]
    meta = json.loads((obj / "meta.json").read_text())
    assert meta["complete"] and meta["resolution"] == SIZE and meta["fovy"] == FOVY and meta["radius"] == RADIUS
    assert meta["engine"] == "CYCLES" and len(meta["views"]) == N_VIEWS
    # The asset is a unit cube centred at the origin: scale 0.6, no offset.
    assert meta["normalisation"]["scale"] == pytest.approx(BOX_SIZE, rel=1e-5)
    assert np.allclose(meta["normalisation"]["offset"], 0.0, atol=1e-6)
    for i in range(N_VIEWS):
        assert meta["coverage"][i] == pytest.approx((_alpha(output, i) > 0.5).mean(), abs=1e-6)


def test_broken_file_is_reported_and_skipped(rendered):
    output, run, _ = rendered
    assert "1 rendered, 0 already complete, 1 failed, of 2" in run.stderr
    assert "failed: broken" in run.stderr and "import failed" in run.stderr
    assert not (output / "broken").exists()


def test_masks_cover_the_object(rendered):
    output, _, _ = rendered
    for i in range(N_VIEWS):
        mask = _alpha(output, i) > 0.5
        assert 0.1 < mask.mean() < 0.9, f"view {i}: coverage {mask.mean():.3f}"
        assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()
    rgb = np.asarray(Image.open(output / "BoxTextured" / "rgb" / "000.png"))[..., :3][_alpha(output, 0) > 0.99]
    assert rgb.std(axis=0).max() > 20  # the texture is there (not a flat colour)


def _box_corners() -> np.ndarray:
    h = BOX_SIZE / 2
    return np.array([[x, y, z] for x in (-h, h) for y in (-h, h) for z in (-h, h)])  # [8, 3]


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Monotone chain, counter-clockwise in (x, y). [N, 2] -> [K, 2]"""
    pts = sorted(map(tuple, points))

    def chain(seq):
        out = []
        for q in seq:
            while len(out) >= 2 and (out[-1][0] - out[-2][0]) * (q[1] - out[-2][1]) - (out[-1][1] - out[-2][1]) * (
                q[0] - out[-2][0]
            ) <= 0:
                out.pop()
            out.append(q)
        return out[:-1]

    return np.array(chain(pts) + chain(pts[::-1]))


def _polygon_area_centroid(poly: np.ndarray) -> tuple[float, np.ndarray]:
    """Shoelace area and area centroid of a simple polygon [K, 2]."""
    x, y = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    cross = x * y1 - x1 * y
    area = cross.sum() / 2
    return abs(area), np.array([((x + x1) * cross).sum(), ((y + y1) * cross).sum()]) / (6 * area)


def test_projected_centre_lands_on_mask_centroid(rendered):
    output, _, _ = rendered
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(N_VIEWS):
        alpha = _alpha(output, i)
        centroid = np.array([(alpha * xs).sum(), (alpha * ys).sum()]) / alpha.sum()
        centre = _project(output, i, np.zeros((1, 3)))[0]
        # The bounding-box centre: perspective pulls a cube's silhouette centroid towards its nearer
        # corners, up to ~2.1 px at 64 px for these cameras (0 px for the elevation-0 ring).
        assert np.abs(centre - centroid).max() < 3.0, (i, centre, centroid)
        # Exact reference: the silhouette is the hull of the projected corners; its area centroid and
        # area match the alpha mask's to a fraction of a pixel.
        area, hull_centroid = _polygon_area_centroid(_convex_hull(_project(output, i, _box_corners())))
        assert np.abs(hull_centroid - centroid).max() < 0.15, (i, hull_centroid, centroid)
        assert alpha.sum() == pytest.approx(area, rel=0.02)
    # Hand check: the azimuth-0 elevation-0 camera sees the origin at the image centre.
    assert np.allclose(_project(output, 0, np.zeros((1, 3)))[0], [(SIZE - 1) / 2] * 2, atol=1e-4)


def test_projected_box_corners_bound_the_mask(rendered):
    # The bounding box of the silhouette is that of the projected corners: checks the field of
    # view, the radius, the normalisation and the orientation of every pose to about a pixel.
    output, _, _ = rendered
    for i in range(N_VIEWS):
        rows, cols = np.nonzero(_alpha(output, i) > 0.5)
        found = np.array([cols.min(), rows.min(), cols.max(), rows.max()])
        px = _project(output, i, _box_corners())
        expected = np.array([px[:, 0].min(), px[:, 1].min(), px[:, 0].max(), px[:, 1].max()])
        # A pixel joins the mask when over half covered: at a sharp corner that can be a pixel inside.
        assert np.abs(found - expected).max() < 1.5, (i, found, expected)


def test_written_poses_are_the_orbit_cameras(rendered):
    output, _, _ = rendered
    meta = json.loads((output / "BoxTextured" / "meta.json").read_text())
    for i, view in enumerate(meta["views"]):
        pose = torch.tensor(np.loadtxt(output / "BoxTextured" / "pose" / f"{i:03d}.txt"), dtype=torch.float32)
        expected = orbit_camera(view["elevation"], view["azimuth"], RADIUS)
        assert torch.allclose(blender_to_opengl(pose), expected, atol=1e-5), (i, view)
    first = np.loadtxt(output / "BoxTextured" / "pose" / "000.txt")
    assert np.allclose(first, [[1, 0, 0, 0], [0, 0, 1, -1.5], [0, -1, 0, 0], [0, 0, 0, 1]], atol=1e-6)


def test_folder_dataset_reads_the_render(rendered):
    folder = pytest.importorskip("core.datasets.folder")
    from conftest import micro_options

    output, _, _ = rendered
    opt = micro_options(data_root=str(output), num_views=N_VIEWS, num_eval_objects=0)
    dataset = folder.FolderDataset(opt, split="all")
    assert len(dataset) == 1 and dataset.counts["bad_views"] == 0
    item = dataset[0]
    # Views 000-003 are LGM's default input cameras (elevation 0, azimuths 0/90/180/270).
    assert torch.allclose(item["cam_pos"][:4], default_input_poses(0.0, RADIUS)[:, :3, 3], atol=1e-4)
    assert item["masks_output"].shape == (N_VIEWS, 1, opt.output_size, opt.output_size)
    assert 0.1 < item["masks_output"][0].mean() < 0.9


def test_render_time_per_view(rendered):
    output, _, seconds = rendered
    timing = json.loads((output / "BoxTextured" / "meta.json").read_text())["timing"]
    print(f"\nrender_blender: {timing['seconds_per_view']:.3f} s/view at {SIZE} px, 8 samples "
          f"(import {timing['import_seconds']:.2f} s, whole run {seconds:.1f} s)")
    assert timing["views_rendered"] == N_VIEWS and timing["seconds_per_view"] > 0


def test_rerun_skips_complete_objects(rendered, blender_cmd, assimp_models):
    output, _, _ = rendered
    before = {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()}
    run = _run(blender_cmd, [assimp_models / ASSET], output)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "0 rendered, 1 already complete, 0 failed, of 1" in run.stderr
    assert {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file()} == before
    assert (output / "uids.txt").read_text() == "BoxTextured\n"


def test_interrupted_object_continues(rendered, blender_cmd, assimp_models, tmp_path):
    # Simulate a run stopped inside the object: two views missing, meta not complete, uid not listed.
    output = tmp_path / "out"
    shutil.copytree(rendered[0], output)
    obj = output / "BoxTextured"
    (obj / "rgb" / "005.png").unlink()
    (obj / "pose" / "006.txt").unlink()
    meta = json.loads((obj / "meta.json").read_text())
    (obj / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    (output / "uids.txt").write_text("")
    kept = {p: p.stat().st_mtime_ns for p in (obj / "rgb").iterdir()}
    del kept[obj / "rgb" / "006.png"]

    run = _run(blender_cmd, [assimp_models / ASSET], output)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 views" in run.stderr and "1 rendered" in run.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished views untouched
    assert (obj / "rgb" / "005.png").is_file() and (obj / "pose" / "006.txt").is_file()
    assert json.loads((obj / "meta.json").read_text())["complete"]
    assert (output / "uids.txt").read_text() == "BoxTextured\n"
    assert not list(obj.rglob(".*.tmp*"))  # no temp files left


def test_more_random_views_extend_a_finished_object(rendered, blender_cmd, assimp_models, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(rendered[0], output)
    obj = output / "BoxTextured"
    kept = {p: p.stat().st_mtime_ns for p in (obj / "rgb").iterdir()}
    run = _run(blender_cmd, [assimp_models / ASSET], output, "--num-random", "5")  # one view more
    assert run.returncode == 0, run.stderr[-3000:]
    assert "1 views" in run.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    meta = json.loads((obj / "meta.json").read_text())
    assert len(meta["views"]) == N_VIEWS + 1 and (obj / "rgb" / f"{N_VIEWS:03d}.png").is_file()
    assert meta["views"][:N_VIEWS] == json.loads((rendered[0] / "BoxTextured" / "meta.json").read_text())["views"]
    # a changed geometry setting is refused, not mixed into the object
    refused = _run(blender_cmd, [assimp_models / ASSET], output, "--fovy", "40")
    assert refused.returncode == 1 and "other settings" in refused.stderr


def test_all_objects_failing_exits_non_zero(blender_cmd, tmp_path):
    broken = tmp_path / "broken.obj"
    broken.write_text("v 0 0 0\n")  # a single vertex: imports, but has no faces
    missing = tmp_path / "missing.glb"
    run = _run(blender_cmd, [broken, missing], tmp_path / "out")
    assert run.returncode == 1
    assert "0 rendered, 0 already complete, 2 failed" in run.stderr
    assert "no faces" in run.stderr and "file not found" in run.stderr
    assert not (tmp_path / "out" / "uids.txt").read_text().strip()


def test_eval_script_on_the_render(rendered, tmp_path):
    """scripts/eval.py with a tiny random checkpoint: JSON and table, metrics recomputed here."""
    from safetensors.torch import save_file
    from skimage.metrics import structural_similarity

    from core.datasets.folder import FolderDataset
    from core.models import LGM
    from core.options import config_defaults, replace

    output, _, _ = rendered
    torch.manual_seed(0)
    opt = replace(config_defaults["cpu"], renderer="torch", dataset="folder", data_root=str(output))
    model = LGM(opt).eval()
    ckpt = tmp_path / "tiny.safetensors"
    save_file(model.state_dict(), str(ckpt))
    out_dir = tmp_path / "eval"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "eval.py"), "--checkpoint", str(ckpt), "--data-root", str(output),
         "--output", str(out_dir), "--grids", "--no-lpips"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "LGM_OFFLINE": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out_dir / "metrics.json").read_text())
    assert summary["preset"] == "cpu" and summary["num_objects"] == 1
    row = summary["objects"][0]
    assert row["uid"] == "BoxTextured" and row["num_views"] == N_VIEWS - 4 and row["lpips"] is None
    table = (out_dir / "metrics.md").read_text()
    assert "| BoxTextured |" in table and f"{row['psnr']:.2f}" in table
    assert (out_dir / "grids" / "BoxTextured.jpg").is_file()

    # independent recomputation: numpy PSNR and scikit-image SSIM per novel view, averaged
    item = FolderDataset(opt, "all", all_views=True)[0]
    with torch.no_grad():
        gaussians = model.forward_gaussians(item["input"][None])
        pred = model.gs.render(gaussians, item["cam_view"][None], item["cam_view_proj"][None], item["cam_pos"][None])["image"][0]
    pred, gt = pred[4:].double().numpy(), item["images_output"][4:].double().numpy()
    psnrs = [-10 * np.log10(np.mean((p - g) ** 2)) for p, g in zip(pred, gt)]
    ssims = [
        structural_similarity(p, g, channel_axis=0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
        for p, g in zip(pred, gt)
    ]
    blank = [-10 * np.log10(np.mean((1.0 - g) ** 2)) for g in gt]
    assert abs(row["psnr"] - np.mean(psnrs)) < 1e-3
    assert abs(row["ssim"] - np.mean(ssims)) < 1e-3
    assert abs(row["psnr_blank"] - np.mean(blank)) < 1e-3
    assert summary["psnr"] == pytest.approx(row["psnr"])


# ----------------------------------------------------------------------------- mesh export (core/mesh/)

_GLB_PROBE = '''
import json, sys
import bpy
argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath=argv[0])
meshes = [o for o in bpy.context.scene.objects if o.type == "MESH"]
obj = meshes[0]
mat = obj.active_material
bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
links = bsdf.inputs["Base Color"].links
node = links[0].from_node if links else None
image = node.image if node is not None and node.type == "TEX_IMAGE" else None
w, h = image.size
pixels = list(image.pixels)  # RGBA floats, bottom row first
uv = obj.data.uv_layers.active.data
sums = {"top": [0.0, 0.0, 0.0, 0], "bottom": [0.0, 0.0, 0.0, 0]}
for loop in obj.data.loops:
    z = (obj.matrix_world @ obj.data.vertices[loop.vertex_index].co).z
    part = "top" if z > 0.12 else "bottom" if z < -0.12 else None
    if part is None:
        continue
    u, v = uv[loop.index].uv
    x, y = min(int(u * w), w - 1), min(int(v * h), h - 1)
    k = 4 * (y * w + x)
    for c in range(3):
        sums[part][c] += pixels[k + c]
    sums[part][3] += 1
print("PROBE " + json.dumps({
    "meshes": len(meshes), "polygons": len(obj.data.polygons), "image": [w, h],
    "base_color_linked_to_image": image is not None,
    "top": [s / sums["top"][3] for s in sums["top"][:3]],
    "bottom": [s / sums["bottom"][3] for s in sums["bottom"][:3]],
}))
'''


def test_mesh_glb_loads_in_blender_with_its_texture(blender_cmd, tmp_path):
    """A .glb from core.mesh (Gaussians on a sphere, red above, blue below) imported by Blender's
    glTF importer: one mesh, its faces, the texture wired to the base colour, and the texture
    read through Blender's own UVs gives red on top (Blender +z = our +y) and blue below."""
    from core import mesh as M
    from test_mesh import BLUE, RED, Sphere, surface_gaussians

    result = M.gaussians_to_mesh(surface_gaussians(Sphere(), n=12000), resolution=96, faces=3000, texture_size=256)
    glb = tmp_path / "sphere.glb"
    M.save_mesh(result, glb)
    probe = tmp_path / "probe.py"
    probe.write_text(_GLB_PROBE)
    cmd = [str(probe) if part == str(SCRIPT) else part for part in blender_cmd]
    run = subprocess.run([*cmd, str(glb)], capture_output=True, text=True, timeout=300)
    lines = [line for line in run.stdout.splitlines() if line.startswith("PROBE ")]
    assert run.returncode == 0 and lines, (run.stdout[-2000:], run.stderr[-2000:])
    found = json.loads(lines[-1][len("PROBE "):])
    print(f"\nBlender: {found}")
    assert found["meshes"] == 1 and found["polygons"] == len(result.faces)
    assert found["base_color_linked_to_image"] and found["image"] == [256, 256]
    assert np.abs(np.array(found["top"]) - RED).max() < 12 / 255, found["top"]
    assert np.abs(np.array(found["bottom"]) - BLUE).max() < 12 / 255, found["bottom"]
