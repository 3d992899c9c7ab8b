"""G-Objaverse reader: an object written here in the layouts G-Objaverse's authors ship (what
``download_gobjaverse_280k.py`` saves, the folder drawing of their README, the per-object tars of
``download_objaverse_280k_tar.py``), rendered by our ray caster at cameras written in G-Objaverse's
convention, with elevations that vary inside an orbit as in the real data, must come back with
cameras that project its known 3D points onto the pixels where the images show them."""

import io
import json
import math
import tarfile
import warnings

import numpy as np
import pytest
import torch

from conftest import micro_options
from core.datasets.gobjaverse import GobjaverseDataset, GobjaverseError, camera_from_json, orbit_quadruples
from core.datasets.synthetic import ObjectSpec, Primitive, render_object
from core.images import to_uint8

DIST = 1.8  # camera distance of the fixture (the loader scales it to cam_radius)
FOV = 0.6911112070083618  # G-Objaverse's field of view: 39.6 degrees, in radians as its JSON stores it
SRC_SIZE = 96
# Known 3D points (z-up world of the JSON files): centres of small spheres of distinct colours
POINTS = torch.tensor([[0.24, 0.31, 0.30], [0.32, -0.34, -0.30], [-0.30, 0.28, -0.18]])  # apart in every view
COLORS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
RADIUS = 0.08
# G-Objaverse's orbits: elevations vary from view to view (0-23: 5 to 30 degrees; 27-38: -5 to 5);
# with this seed, the 4 views of every quadruple 90 degrees apart span more than 5 degrees of elevation
_rng = np.random.default_rng(2)
ELEV_RING_1 = _rng.uniform(5.0, 30.0, 24).tolist()
ELEV_RING_2 = _rng.uniform(-5.0, 5.0, 12).tolist()
RING_1, RING_2 = set(range(0, 24)), set(range(27, 39))
SUFFIXES = ("_albedo.png", "_hdr.exr", "_mr.png", "_nd.exr", "_ng.exr")  # the other files of a view


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


def gobj_views(azim_sign: float = 1.0) -> dict[int, dict]:
    """G-Objaverse's 40 views: 0-23 an orbit every 15 degrees of azimuth at elevations between 5 and
    30 degrees that differ from view to view, 24 a repeat of 0, 25/26 top and bottom, 27-38 an orbit
    every 30 degrees at elevations between -5 and 5, 39 a repeat of 27."""
    views = {i: gobj_camera(ELEV_RING_1[i], azim_sign * 15.0 * i) for i in range(24)}
    views[24] = views[0]
    views[25], views[26] = gobj_camera(90.0, 0.0), gobj_camera(-90.0, 0.0)
    views.update({27 + i: gobj_camera(ELEV_RING_2[i], azim_sign * 30.0 * i) for i in range(12)})
    views[39] = views[27]
    return views


def elevation(cam: dict) -> float:
    return math.degrees(math.asin(cam["origin"][2] / DIST))


def azimuth(cam: dict) -> float:
    return math.degrees(math.atan2(cam["origin"][1], cam["origin"][0]))


def c2w_opengl(cam: dict) -> torch.Tensor:
    """The JSON camera as an OpenGL camera-to-world matrix in the same z-up world (for our ray
    caster, which does not care which way is up): columns right, up = -down, back = -forward."""
    m = torch.eye(4)
    m[:3, 0] = torch.tensor(cam["x"])
    m[:3, 1] = -torch.tensor(cam["y"])
    m[:3, 2] = -torch.tensor(cam["z"])
    m[:3, 3] = torch.tensor(cam["origin"])
    return m


def png_bytes(rgba_uint8: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba_uint8).save(buf, format="PNG")
    return buf.getvalue()


def render_files() -> dict[str, bytes]:
    """{path inside the object's view folders: bytes}: ``NNNNN/NNNNN.png`` and ``.json`` per view, as
    G-Objaverse's server holds them under campos_512_v4/, plus the other files of each view
    (albedo and metal-roughness as real PNGs of another picture, fake EXRs)."""
    spec = ObjectSpec([Primitive("sphere", center=p, size=(RADIUS, 0, 0), color=c) for p, c in zip(POINTS.tolist(), COLORS)])
    views = gobj_views()
    rgba = render_object(spec, torch.stack([c2w_opengl(views[v]) for v in sorted(views)]), SRC_SIZE, math.degrees(FOV))
    other = png_bytes(np.full((8, 8, 4), (30, 30, 30, 255), np.uint8))
    files = {}
    for k, vid in enumerate(sorted(views)):
        stem = f"{vid:05d}/{vid:05d}"
        files[f"{stem}.json"] = json.dumps(views[vid]).encode()
        files[f"{stem}.png"] = png_bytes(to_uint8(rgba[k].permute(1, 2, 0)))
        for suffix in SUFFIXES:
            files[stem + suffix] = other if suffix.endswith(".png") else b"v/1\x01 not really an exr"
    return files


@pytest.fixture(scope="module")
def object_files():
    return render_files()


def write_folder_object(root, name, files, campos=False):
    """As download_gobjaverse_280k.py saves an object: <root>/<group>/<uid>/NNNNN/NNNNN<suffix> (no
    campos_512_v4 level); with ``campos``, as the folder drawing of G-Objaverse's README shows it."""
    for rel, data in files.items():
        path = root / name / ("campos_512_v4" if campos else "") / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def write_tar_object(root, name, files, prefix="{uid}/campos_512_v4/"):
    """As download_objaverse_280k_tar.py saves an object: <root>/<group>/<uid>.tar, members under
    <uid>/campos_512_v4/ (``prefix``: other member prefixes, for tolerance), with directory entries."""
    group, uid = name.split("/")
    (root / group).mkdir(parents=True, exist_ok=True)
    prefix = prefix.format(uid=uid)
    with tarfile.open(root / group / f"{uid}.tar", "w") as tar:
        dirs = sorted({prefix + rel.rsplit("/", 1)[0] for rel in files} | ({prefix.rstrip("/")} if prefix else set()))
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for rel, data in files.items():
            info = tarfile.TarInfo(prefix + rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return root / group / f"{uid}.tar"


@pytest.fixture
def gobj_root(tmp_path, object_files):
    """One object in each layout: the download script's, the README drawing's, the tar."""
    write_folder_object(tmp_path, "12/obj_download", object_files)
    write_folder_object(tmp_path, "12/obj_campos", object_files, campos=True)
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


def item_axes(cam0: dict) -> torch.Tensor:
    """The sample world's axes in the JSON world: the first input camera is the canonical one, so
    x, y, z are its right, up (-y) and back (-z) axes. -> [3, 3], one axis per row"""
    return torch.stack([torch.tensor(cam0["x"]), -torch.tensor(cam0["y"]), -torch.tensor(cam0["z"])]).double()


def to_item_world(cam0: dict, p: torch.Tensor, radius: float) -> torch.Tensor:
    """A point of the JSON world in the sample's world, where the first input camera is the
    canonical one (at (0, 0, radius), OpenGL axes = world axes) and camera distances are scaled to
    radius: coordinates along its right, up (-y) and back (-z) axes, scaled, plus (0, 0, radius)."""
    d = p.double() - torch.tensor(cam0["origin"], dtype=torch.float64)
    return radius / DIST * (item_axes(cam0) @ d) + torch.tensor([0.0, 0.0, radius], dtype=torch.float64)


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


def one_object_list(root, name):
    path = root / f"{name.replace('/', '_')}.txt"
    path.write_text(f"{name}\n")
    return str(path)


# ---------------------------------------------------------------------------------- layouts
def test_the_three_layouts_are_found_and_reported(gobj_root, capsys):
    train = GobjaverseDataset(options(gobj_root), "train")
    start = capsys.readouterr().out
    evals = GobjaverseDataset(options(gobj_root), "eval")
    assert capsys.readouterr().out == ""  # said once, by the training split
    assert [s.uid for s in train.sources] == ["12/obj_campos", "12/obj_download"] and [s.uid for s in evals.sources] == ["12/obj_tar"]
    layouts = {s.uid: s.layout for s in train.sources + evals.sources}
    assert layouts == {"12/obj_campos": "campos", "12/obj_download": "folder", "12/obj_tar": "tar"}
    assert (f"[data] G-Objaverse under {gobj_root}: 3 objects (1 folder <group>/<uid>/NNNNN/, "
            f"1 folder <group>/<uid>/campos_512_v4/NNNNN/, 1 tar <group>/<uid>.tar)") in start
    assert "[data] G-Objaverse: 3 of 3 objects usable (all checked" in start
    # G-Objaverse's own index format, with an object that is not there
    (gobj_root / "list.json").write_text(json.dumps(["12/obj_download", "12/missing"]))
    with pytest.warns(UserWarning, match="1 of 2 listed objects"):
        listed = GobjaverseDataset(options(gobj_root, data_list=str(gobj_root / "list.json"), num_eval_objects=0), "train")
    assert [(s.uid, s.layout) for s in listed.sources] == [("12/obj_download", "folder")]
    assert "1 object" in capsys.readouterr().out


def test_every_layout_gives_the_same_samples(gobj_root, object_files):
    """The same object as the download script saves it, as the README draws it, and as a tar (with
    members under <uid>/campos_512_v4/, or without either level) gives identical samples."""
    for prefix, uid in [("{uid}/", "tar_uid"), ("campos_512_v4/", "tar_campos"), ("", "tar_bare")]:
        write_tar_object(gobj_root, f"12/{uid}", object_files, prefix=prefix)
    samples = {}
    for name in ("obj_download", "obj_campos", "obj_tar", "tar_uid", "tar_campos", "tar_bare"):
        opt = options(gobj_root, data_list=one_object_list(gobj_root, f"12/{name}"), num_eval_objects=0,
                      prob_grid_distortion=1.0, prob_cam_jitter=1.0)
        ds = GobjaverseDataset(opt, "train")  # each alone in its list: item 0, same views and augmentations
        ds.set_epoch(1)
        samples[name] = ds[0]
        assert samples[name]["uid"] == f"12/{name}"
    first = samples["obj_download"]
    for name, item in samples.items():
        for key in ("input", "images_output", "masks_output", "cam_view", "cam_view_proj", "cam_pos"):
            assert torch.equal(first[key], item[key]), (name, key)


def test_an_interrupted_download_leaves_its_tmp_file_unread(tmp_path, object_files):
    """download_gobjaverse_280k.py fetches view by view, file by file (.json, .png, _albedo.png, ...)
    into NNNNN.<ext>.tmp and renames it when complete. Stopped inside view 38's image: views 0-37
    complete, 00038/ holds its JSON and 00038.png.tmp, 00039/ does not exist."""
    files = {rel: data for rel, data in object_files.items() if int(rel[:5]) < 38}
    files["00038/00038.json"] = object_files["00038/00038.json"]
    files["00038/00038.png.tmp"] = object_files["00038/00038.png"][:200]
    write_folder_object(tmp_path, "3/partial", files)
    ds = GobjaverseDataset(options(tmp_path, num_eval_objects=0), "train")
    with ds.object(0) as obj:
        assert [v.vid for v in obj.views] == list(range(38))
    assert ds.counts["bad_views"] >= 1  # view 38: a camera without its image
    for epoch in range(3):
        ds.set_epoch(epoch)
        item = ds[0]
        assert item["uid"] == "3/partial" and torch.isfinite(item["input"]).all()


# ---------------------------------------------------------------------------------- cameras
@pytest.mark.parametrize("split", ["eval", "train"])
def test_cameras_project_known_points_to_their_pixels(gobj_root, split):
    opt = options(gobj_root, num_eval_objects=1)
    ds = GobjaverseDataset(opt, split)
    ds.set_epoch(3)
    vids = ds.view_ids(0)
    item = ds[0]
    views, size = gobj_views(), opt.output_size
    if split == "eval":
        assert vids[:4] == [0, 6, 12, 18]  # the first quadruple of the first orbit
    assert np.ptp([elevation(views[v]) for v in vids[:4]]) > 5.0  # elevations differ inside the quadruple
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


def test_input_views_are_four_views_of_one_orbit_90_degrees_apart(gobj_root):
    opt = options(gobj_root, num_eval_objects=0)
    ds = GobjaverseDataset(opt, "train")
    views = gobj_views()
    seen, spreads = set(), []
    for epoch in range(8):
        ds.set_epoch(epoch)
        vids = ds.view_ids(0)
        seen.add(tuple(vids[:4]))
        # one orbit (by G-Objaverse's view numbers), azimuths a, a+90, a+180, a+270 (counter-clockwise
        # about +z in the JSON world); elevations are whatever the views have
        assert set(vids[:4]) <= RING_1 or set(vids[:4]) <= RING_2, vids[:4]
        azim = np.array([azimuth(views[v]) for v in vids[:4]])
        assert np.allclose((np.diff(azim) + 360) % 360, 90.0, atol=1e-4)
        spreads.append(np.ptp([elevation(views[v]) for v in vids[:4]]))
        # supervision views: neither an input view nor a repeat of one (24 repeats 0, 39 repeats 27)
        repeats = {0: 24, 24: 0, 27: 39, 39: 27}
        assert not set(vids[4:]) & set(vids[:4])
        assert not {repeats[v] for v in vids[:4] if v in repeats} & set(vids[4:])
        # in the sample's world: the first camera is canonical, the second on the +x side as in our
        # default input cameras, all at cam_radius
        item = ds[0]
        pos = item["cam_pos"][:4].double()
        assert torch.allclose(pos[0], torch.tensor([0.0, 0.0, opt.cam_radius], dtype=torch.float64), atol=1e-5)
        assert torch.allclose(pos.norm(dim=-1), torch.full((4,), opt.cam_radius, dtype=torch.float64), atol=1e-5)
        assert pos[1, 0] > 0.5
        # the rays of the input views are those of the real cameras, elevations included: Pluecker
        # [o x d, d] through every pixel centre, computed by hand from the JSON cameras
        s = opt.input_size
        f = s / (2 * math.tan(math.radians(opt.fovy) / 2))
        uv = (torch.arange(s, dtype=torch.float64) + 0.5 - s / 2) / f
        v_, u_ = torch.meshgrid(uv, uv, indexing="ij")  # rows down, columns right (OpenCV)
        axes = item_axes(views[vids[0]])
        for k, vid in enumerate(vids[:4]):
            cam = views[vid]
            d = sum(w[..., None] * torch.tensor(cam[a], dtype=torch.float64) for w, a in ((u_, "x"), (v_, "y"), (torch.ones_like(u_), "z")))
            d = d / d.norm(dim=-1, keepdim=True)  # [s, s, 3] JSON world
            d = d @ axes.T  # the sample's world
            o = to_item_world(views[vids[0]], torch.tensor(cam["origin"]), opt.cam_radius).expand_as(d)
            expected = torch.cat([torch.linalg.cross(o, d, dim=-1), d], dim=-1).permute(2, 0, 1)
            assert torch.allclose(item["input"][k, 3:].double(), expected, atol=1e-4), (vid, (item["input"][k, 3:] - expected).abs().max())
    assert len(seen) > 1  # training draws different quadruples across epochs
    assert min(spreads) > 5.0  # the fixture's quadruples all span more than 5 degrees of elevation


def test_quadruples_of_the_layout():
    views = gobj_views()
    vids = sorted(views)
    c2w = torch.stack([camera_from_json(views[v])[0] for v in vids])
    quads = orbit_quadruples(c2w, vids)
    assert quads[0] == (0, 6, 12, 18) and (27, 30, 33, 36) in quads
    assert len(quads) == 24 + 12  # every start view of both orbits, despite their varying elevations
    assert all(set(q) <= RING_1 or set(q) <= RING_2 for q in quads)  # one orbit each; never 24-26 or 39
    assert min(np.ptp([elevation(views[v]) for v in q]) for q in quads) > 5.0
    assert camera_from_json(views[0])[1] == pytest.approx(39.6, abs=0.01)
    # view numbers that run clockwise: still 90-degree steps in increasing azimuth (our rotation order)
    mirrored = gobj_views(azim_sign=-1.0)
    quads = orbit_quadruples(torch.stack([camera_from_json(mirrored[v])[0] for v in vids]), vids)
    assert quads[0] == (0, 18, 12, 6) and (27, 36, 33, 30) in quads
    # other view numbers: any views at most 30 degrees of elevation apart, never the top or bottom view
    quads = orbit_quadruples(c2w, [100 + v for v in vids])
    assert (0, 6, 12, 18) in quads and all(25 not in q and 26 not in q for q in quads)


def test_native_field_of_view_keeps_the_images(gobj_root):
    from core.images import read_image

    opt = options(gobj_root, fovy=math.degrees(FOV), output_size=SRC_SIZE, num_eval_objects=1)
    ds = GobjaverseDataset(opt, "eval")
    vids, item = ds.view_ids(0), ds[0]
    # the eval object is the tar; the download-layout object holds the same files
    png = gobj_root / "12/obj_download" / f"{vids[5]:05d}" / f"{vids[5]:05d}.png"
    rgba = torch.from_numpy(read_image(png)).permute(2, 0, 1)
    assert torch.equal(item["masks_output"][5], rgba[3:])  # no resampling at G-Objaverse's own fov and size


# ---------------------------------------------------------------------------------- bad objects
def test_bad_files_are_skipped_and_counted(gobj_root, capsys):
    obj = gobj_root / "12/obj_download"
    (obj / "00003/00003.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (obj / "00005/00005.json").write_text("{ broken")
    (obj / "00007/00007.png").unlink()
    # an object with only its top and bottom views: no input quadruple
    for vid in (25, 26):
        for f in (obj / f"{vid:05d}").iterdir():
            dst = gobj_root / "12/obj_poles" / f"{vid:05d}" / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(f.read_bytes())
    opt = options(gobj_root, num_eval_objects=0, num_views=40)
    with pytest.warns(UserWarning, match="1 of 4 checked objects unusable"):
        ds = GobjaverseDataset(opt, "train")
    assert "3 of 4 objects usable" in capsys.readouterr().out
    assert [s.uid for s in ds.sources] == ["12/obj_campos", "12/obj_download", "12/obj_poles", "12/obj_tar"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        item = ds[2]  # training: obj_poles is unusable, the next object takes its place
        first = ds[1]
    assert item["uid"] == "12/obj_tar" and first["uid"] == "12/obj_download"
    assert any("obj_poles" in str(w.message) for w in caught)
    assert torch.isfinite(first["images_output"]).all()
    assert ds.counts["bad_views"] >= 3 and ds.counts["skipped_objects"] >= 1


def test_evaluation_never_scores_an_object_twice(tmp_path, object_files):
    """Held-out objects are checked up front: a truncated tar, an object without an orbit quadruple
    and one whose input image is corrupt are left out and listed in ``skipped``, never replaced by
    another object; one that turns bad later is an error."""
    write_folder_object(tmp_path, "5/obj_a", object_files, campos=True)
    tar = write_tar_object(tmp_path, "5/obj_b", object_files)
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # an interrupted download
    write_folder_object(tmp_path, "5/obj_c", object_files, campos=True)
    write_tar_object(tmp_path, "5/obj_d", {k: v for k, v in object_files.items() if k[:5] in ("00025", "00026", "00000")})
    write_folder_object(tmp_path, "5/obj_e", object_files, campos=True)
    (tmp_path / "5/obj_e/campos_512_v4/00006/00006.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    opt = options(tmp_path, num_eval_objects=4)
    with pytest.warns(UserWarning, match="3 of 4 held-out objects are unusable"):
        evals = GobjaverseDataset(opt, "eval")
    assert [s.uid for s in evals.sources] == ["5/obj_c"]
    reasons = dict(evals.skipped)
    assert list(reasons) == ["5/obj_b", "5/obj_d", "5/obj_e"]
    assert "cannot be read" in reasons["5/obj_b"] and "need at least 5" in reasons["5/obj_d"]
    assert "input view 00006 cannot be read" in reasons["5/obj_e"]
    uids = [evals[i]["uid"] for i in range(len(evals))]
    assert uids == ["5/obj_c"] and len(uids) == len(set(uids))
    with pytest.warns(UserWarning):
        train = GobjaverseDataset(opt, "train")
    assert [s.uid for s in train.sources] == ["5/obj_a"]  # held-out objects, usable or not, are not trained on
    # an eval object that turns bad after the check: an error, not another object's scores
    (tmp_path / "5/obj_c/campos_512_v4/00000/00000.png").write_bytes(b"")
    with pytest.raises(GobjaverseError, match="held-out object 5/obj_c"):
        evals[0]


def test_no_eval_objects_means_an_empty_eval_split(gobj_root):
    tar = gobj_root / "12/obj_tar.tar"  # the last object, unreadable: irrelevant without evaluation
    tar.write_bytes(tar.read_bytes()[:5000])
    opt = options(gobj_root, num_eval_objects=0)
    evals = GobjaverseDataset(opt, "eval")
    assert len(evals) == 0 and evals.skipped == []
    with pytest.warns(UserWarning, match="obj_tar"):
        train = GobjaverseDataset(opt, "train")
    assert [s.uid for s in train.sources] == ["12/obj_campos", "12/obj_download", "12/obj_tar"]


def test_a_single_object_is_trained_on_and_evaluated(tmp_path, object_files):
    write_tar_object(tmp_path, "1/only", object_files)
    train = GobjaverseDataset(options(tmp_path, num_eval_objects=2), "train")
    with pytest.warns(UserWarning, match="not held out"):
        evals = GobjaverseDataset(options(tmp_path, num_eval_objects=2), "eval")
    assert [s.uid for s in train.sources] == [s.uid for s in evals.sources] == ["1/only"]


def test_big_roots_check_an_evenly_spaced_sample(gobj_root, capsys, monkeypatch):
    """Above USABLE_CHECK_MAX objects only an evenly spaced sample is opened at start: here 2 of 3
    (objects 0 and 1), so the broken third one is not noticed until training reaches it."""
    import core.datasets.gobjaverse as gobjaverse

    tar = gobj_root / "12/obj_tar.tar"
    tar.write_bytes(tar.read_bytes()[:5000])
    monkeypatch.setattr(gobjaverse, "USABLE_CHECK_MAX", 2)
    GobjaverseDataset(options(gobj_root, num_eval_objects=0), "train")
    out = capsys.readouterr().out
    assert "[data] G-Objaverse: 2 of 2 checked objects usable (checked an evenly spaced sample of 2 of the 3;" in out


def test_empty_root_is_a_clear_error(tmp_path):
    with pytest.raises(GobjaverseError, match="no G-Objaverse object"):
        GobjaverseDataset(options(tmp_path), "train")
    with pytest.raises(GobjaverseError, match="not a folder"):
        GobjaverseDataset(options(tmp_path / "nope"), "train")
    # every object checked and none usable: said at start
    (tmp_path / "7/bad/00000").mkdir(parents=True)
    (tmp_path / "7/bad/00000/00000.json").write_text("{}")
    with pytest.raises(GobjaverseError, match="no usable G-Objaverse object"):
        GobjaverseDataset(options(tmp_path), "train")
