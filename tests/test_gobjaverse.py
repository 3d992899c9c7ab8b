"""G-Objaverse reader: an object written here in G-Objaverse's layout (folder and tar), rendered by
our ray caster at cameras written in G-Objaverse's convention, must come back with cameras that
project its known 3D points onto the pixels where the images show them."""

import io
import json
import math
import tarfile
import warnings

import numpy as np
import pytest
import torch

from conftest import micro_options
from core.datasets.gobjaverse import GobjaverseDataset, GobjaverseError, orbit_quadruples
from core.datasets.synthetic import ObjectSpec, Primitive, render_object
from core.images import to_uint8

DIST = 1.8  # camera distance of the fixture (the loader scales it to cam_radius)
FOV = 0.6911112070083618  # G-Objaverse's field of view: 39.6 degrees, in radians as its JSON stores it
SRC_SIZE = 96
# Known 3D points (z-up world of the JSON files): centres of small spheres of distinct colours
POINTS = torch.tensor([[0.24, 0.31, 0.30], [0.32, -0.34, -0.30], [-0.30, 0.28, -0.18]])  # apart in every view
COLORS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
RADIUS = 0.08


def gobj_camera(elev_deg: float, azim_deg: float) -> dict:
    """A camera in G-Objaverse's JSON convention: z-up world; x, y, z the camera's right, down and
    forward axes (OpenCV); origin its centre; fields of view in radians. Written out by hand."""
    e, a = math.radians(elev_deg), math.radians(azim_deg)
    origin = DIST * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    forward = -origin / DIST
    up = np.array([0.0, 0.0, 1.0])
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-6:  # straight above or below: right = +x
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return {
        "x": right.tolist(), "y": down.tolist(), "z": forward.tolist(), "origin": origin.tolist(),
        "x_fov": FOV, "y_fov": FOV, "bbox": [[-0.5] * 3, [0.5] * 3], "format_version": 6, "max_depth": 5.0,
    }


def gobj_views() -> dict[int, dict]:
    """G-Objaverse's 40 views: 0-24 a ring every 15 degrees (24 repeats 0), 25/26 top and bottom,
    27-39 a ring every 30 degrees (39 repeats 27). Elevations: 20 and 5 degrees."""
    views = {i: gobj_camera(20.0, 15.0 * i) for i in range(25)}
    views[25], views[26] = gobj_camera(90.0, 0.0), gobj_camera(-90.0, 0.0)
    views.update({27 + i: gobj_camera(5.0, 30.0 * i) for i in range(13)})
    return views


def c2w_opengl(cam: dict) -> torch.Tensor:
    """The JSON camera as an OpenGL camera-to-world matrix in the same z-up world (for our ray
    caster, which does not care which way is up): columns right, up = -down, back = -forward."""
    m = torch.eye(4)
    m[:3, 0] = torch.tensor(cam["x"])
    m[:3, 1] = -torch.tensor(cam["y"])
    m[:3, 2] = -torch.tensor(cam["z"])
    m[:3, 3] = torch.tensor(cam["origin"])
    return m


def render_files() -> dict[str, bytes]:
    """{relative path under the object: bytes} of the fixture object (PNG + JSON per view)."""
    spec = ObjectSpec([Primitive("sphere", center=p, size=(RADIUS, 0, 0), color=c) for p, c in zip(POINTS.tolist(), COLORS)])
    views = gobj_views()
    rgba = render_object(spec, torch.stack([c2w_opengl(views[v]) for v in sorted(views)]), SRC_SIZE, math.degrees(FOV))
    files = {}
    from PIL import Image

    for k, vid in enumerate(sorted(views)):
        buf = io.BytesIO()
        Image.fromarray(to_uint8(rgba[k].permute(1, 2, 0))).save(buf, format="PNG")
        files[f"campos_512_v4/{vid:05d}/{vid:05d}.png"] = buf.getvalue()
        files[f"campos_512_v4/{vid:05d}/{vid:05d}.json"] = json.dumps(views[vid]).encode()
    return files


@pytest.fixture(scope="module")
def object_files():
    return render_files()


def write_folder_object(root, name, files):
    for rel, data in files.items():
        path = root / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def write_tar_object(root, name, files):
    group, uid = name.split("/")
    (root / group).mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / group / f"{uid}.tar", "w") as tar:
        for rel, data in files.items():
            info = tarfile.TarInfo(f"{uid}/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def gobj_root(tmp_path, object_files):
    write_folder_object(tmp_path, "12/obj_folder", object_files)
    write_tar_object(tmp_path, "12/obj_tar", object_files)
    return tmp_path


def options(root, **kw):
    base = dict(dataset="gobjaverse", data_root=str(root), output_size=64, num_views=8, num_eval_objects=1,
                prob_grid_distortion=0.0, prob_cam_jitter=0.0)
    base.update(kw)
    return micro_options(**base)


def project_json(cam: dict, p: torch.Tensor, size: int, fovy_deg: float) -> torch.Tensor:
    """Pinhole projection by hand: OpenCV camera axes from the JSON, focal of the target image. -> [2]"""
    d = p.double() - torch.tensor(cam["origin"], dtype=torch.float64)
    xc, yc, zc = (d @ torch.tensor(cam[k], dtype=torch.float64) for k in ("x", "y", "z"))
    f = size / (2 * math.tan(math.radians(fovy_deg) / 2))
    return torch.stack([f * xc / zc + size / 2 - 0.5, f * yc / zc + size / 2 - 0.5])


def to_item_world(cam0: dict, p: torch.Tensor, radius: float) -> torch.Tensor:
    """A point of the JSON world in the sample's world, where the first input camera is the
    canonical one (at (0, 0, radius), OpenGL axes = world axes) and camera distances are scaled to
    radius: coordinates along its right, up (-y) and back (-z) axes, scaled, plus (0, 0, radius)."""
    d = p.double() - torch.tensor(cam0["origin"], dtype=torch.float64)
    s = radius / DIST
    axes = [torch.tensor(cam0["x"]), -torch.tensor(cam0["y"]), -torch.tensor(cam0["z"])]
    return torch.stack([s * (d @ a.double()) for a in axes]) + torch.tensor([0.0, 0.0, radius], dtype=torch.float64)


def project_item(cam_view_proj: torch.Tensor, p: torch.Tensor, size: int) -> torch.Tensor:
    """Our renderer's projection: clip = [p, 1] @ cam_view_proj, pixel = ((ndc + 1) * S - 1) / 2. -> [2]"""
    clip = torch.cat([p.float(), torch.ones(1)]) @ cam_view_proj
    return ((clip[:2] / clip[3] + 1) * size - 1) / 2


def blob_centroids(image: torch.Tensor, mask: torch.Tensor) -> list:
    """Alpha-weighted centroid (x, y) of the red, green and blue spheres in one view (None if unseen).
    image [3, H, W] composited on white, mask [1, H, W]."""
    a = mask[0]
    premult = image - (1 - a)  # colour x alpha
    cls = premult.argmax(0)
    ys, xs = torch.meshgrid(torch.arange(a.shape[0]).float(), torch.arange(a.shape[1]).float(), indexing="ij")
    out = []
    for c in range(3):
        w = a * (cls == c) * (premult[c] > 0.02)
        out.append(None if w.sum() < 1.0 else torch.stack([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()]))
    return out


def test_layout_listing_and_split(gobj_root):
    train = GobjaverseDataset(options(gobj_root), "train")
    evals = GobjaverseDataset(options(gobj_root), "eval")
    assert [s.uid for s in train.sources] == ["12/obj_folder"] and [s.uid for s in evals.sources] == ["12/obj_tar"]
    assert [s.is_tar for s in train.sources + evals.sources] == [False, True]
    (gobj_root / "list.json").write_text(json.dumps(["12/obj_tar", "12/missing"]))
    with pytest.warns(UserWarning, match="1 of 2 listed objects"):
        listed = GobjaverseDataset(options(gobj_root, data_list=str(gobj_root / "list.json"), num_eval_objects=0), "train")
    assert [s.uid for s in listed.sources] == ["12/obj_tar"]


@pytest.mark.parametrize("split", ["eval", "train"])
def test_cameras_project_known_points_to_their_pixels(gobj_root, split):
    opt = options(gobj_root, num_eval_objects=1)
    ds = GobjaverseDataset(opt, split)
    ds.set_epoch(3)
    vids = ds.view_ids(0)
    item = ds[0]
    views, size = gobj_views(), opt.output_size
    if split == "eval":
        assert vids[:4] == [0, 6, 12, 18]  # the first quadruple of the first ring
    checked = 0
    for k, vid in enumerate(vids):
        cam = views[vid]
        centroids = blob_centroids(item["images_output"][k], item["masks_output"][k])
        for j, p in enumerate(POINTS):
            expected = project_json(cam, p, size, opt.fovy)
            got = project_item(item["cam_view_proj"][k], to_item_world(views[vids[0]], p, opt.cam_radius), size)
            assert torch.allclose(got.double(), expected, atol=2e-3), (vid, j, got, expected)
            # where the image shows the sphere: unless another sphere hides part of it in this view
            others = [project_json(cam, q, size, opt.fovy) for i, q in enumerate(POINTS) if i != j]
            if centroids[j] is not None and all((o - expected).norm() > 8 for o in others):
                assert (centroids[j].double() - expected).norm() < 0.5, (vid, j, centroids[j], expected)
                checked += 1
    assert checked >= 0.9 * 3 * len(vids)
    # camera centres: the sample's cam_pos agree with the JSON origins mapped the same way
    for k, vid in enumerate(vids):
        origin = torch.tensor(views[vid]["origin"])
        assert torch.allclose(item["cam_pos"][k].double(), to_item_world(views[vids[0]], origin, opt.cam_radius), atol=1e-4)


def test_input_views_are_an_orbit_quadruple(gobj_root):
    opt = options(gobj_root, num_eval_objects=0)
    ds = GobjaverseDataset(opt, "train")
    views = gobj_views()
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        vids = ds.view_ids(0)
        seen.add(tuple(vids[:4]))
        # in the JSON world: one elevation, azimuths a, a+90, a+180, a+270 (counter-clockwise about +z)
        o = np.array([views[v]["origin"] for v in vids[:4]])
        elev = np.degrees(np.arcsin(o[:, 2] / DIST))
        azim = np.degrees(np.arctan2(o[:, 1], o[:, 0]))
        assert np.allclose(elev, elev[0], atol=1e-6) and abs(elev[0]) < 60
        assert np.allclose((np.diff(azim) + 360) % 360, 90.0, atol=1e-4)
        # supervision views: neither an input view nor a repeat of one (24 repeats 0, 39 repeats 27)
        repeats = {0: 24, 24: 0, 27: 39, 39: 27}
        assert not set(vids[4:]) & set(vids[:4])
        assert not {repeats[v] for v in vids[:4] if v in repeats} & set(vids[4:])
        # in the sample's world: the first camera is canonical, the others 90 degrees further
        # round the ring, the second on the +x side as in our default input cameras
        pos = ds[0]["cam_pos"][:4].double()
        assert torch.allclose(pos[0], torch.tensor([0.0, 0.0, opt.cam_radius], dtype=torch.float64), atol=1e-5)
        assert torch.allclose(pos.norm(dim=-1), torch.full((4,), opt.cam_radius, dtype=torch.float64), atol=1e-5)
        centre = pos.mean(0)
        rel = pos - centre
        for i in range(4):
            cos = float(rel[i] @ rel[(i + 1) % 4] / (rel[i].norm() * rel[(i + 1) % 4].norm()))
            assert abs(math.degrees(math.acos(max(-1.0, min(1.0, cos)))) - 90.0) < 0.05
        assert pos[1, 0] > 0.5
    assert len(seen) > 1  # training draws different quadruples across epochs


def test_quadruples_of_the_layout():
    from core.datasets.gobjaverse import camera_from_json

    views = gobj_views()
    c2w = torch.stack([camera_from_json(views[v])[0] for v in sorted(views)])
    quads = orbit_quadruples(c2w)
    assert quads[0] == (0, 6, 12, 18) and (27, 30, 33, 36) in quads
    assert all(25 not in q and 26 not in q for q in quads)  # never the top or bottom view
    assert camera_from_json(views[0])[1] == pytest.approx(39.6, abs=0.01)


def test_folder_and_tar_give_the_same_samples(gobj_root):
    samples = []
    for name in ("obj_folder", "obj_tar"):  # each alone in its list: item 0, same views and augmentations
        (gobj_root / f"{name}.txt").write_text(f"12/{name}\n")
        opt = options(gobj_root, data_list=str(gobj_root / f"{name}.txt"), num_eval_objects=0,
                      prob_grid_distortion=1.0, prob_cam_jitter=1.0)
        ds = GobjaverseDataset(opt, "train")
        ds.set_epoch(1)
        samples.append(ds[0])
    a, b = samples
    assert (a["uid"], b["uid"]) == ("12/obj_folder", "12/obj_tar")
    for key in ("input", "images_output", "masks_output", "cam_view", "cam_view_proj", "cam_pos"):
        assert torch.equal(a[key], b[key]), key


def test_native_field_of_view_keeps_the_images(gobj_root, object_files):
    from core.images import read_image

    opt = options(gobj_root, fovy=math.degrees(FOV), output_size=SRC_SIZE, num_eval_objects=1)
    ds = GobjaverseDataset(opt, "eval")
    vids, item = ds.view_ids(0), ds[0]
    # the eval object is the tar; the folder object holds the same files
    png = gobj_root / "12/obj_folder/campos_512_v4" / f"{vids[5]:05d}" / f"{vids[5]:05d}.png"
    rgba = torch.from_numpy(read_image(png)).permute(2, 0, 1)
    assert torch.equal(item["masks_output"][5], rgba[3:])  # no resampling at G-Objaverse's own fov and size


def test_bad_files_are_skipped_and_counted(gobj_root):
    obj = gobj_root / "12/obj_folder/campos_512_v4"
    (obj / "00003/00003.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (obj / "00005/00005.json").write_text("{ broken")
    (obj / "00007/00007.png").unlink()
    # an object with only its top and bottom views: no input quadruple
    (gobj_root / "12/obj_poles/campos_512_v4").mkdir(parents=True)
    for vid in (25, 26):
        src = obj / f"{vid:05d}"
        dst = gobj_root / "12/obj_poles/campos_512_v4" / f"{vid:05d}"
        dst.mkdir()
        for f in src.iterdir():
            (dst / f.name).write_bytes(f.read_bytes())
    opt = options(gobj_root, num_eval_objects=0, num_views=40)
    ds = GobjaverseDataset(opt, "train")
    assert [s.uid for s in ds.sources] == ["12/obj_folder", "12/obj_poles", "12/obj_tar"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        item = ds[1]  # obj_poles is unusable: the next object takes its place
        first = ds[0]
    assert item["uid"] == "12/obj_tar" and first["uid"] == "12/obj_folder"
    assert any("obj_poles" in str(w.message) for w in caught)
    assert torch.isfinite(first["images_output"]).all()
    assert ds.counts["bad_views"] >= 3 and ds.counts["skipped_objects"] >= 1


def test_empty_root_is_a_clear_error(tmp_path):
    with pytest.raises(GobjaverseError, match="no G-Objaverse object"):
        GobjaverseDataset(options(tmp_path), "train")
    with pytest.raises(GobjaverseError, match="not a folder"):
        GobjaverseDataset(options(tmp_path / "nope"), "train")
