"""The folder-of-renders dataset on a small fixture written here."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import micro_options
from core.datasets.folder import FolderDataset, FolderDatasetError

R = 1.5


def blender_pose(azimuth_deg: float) -> np.ndarray:
    """Camera on the horizontal circle of radius R in Blender's z-up world, looking at the origin,
    OpenCV camera axes (x right, y down, z forward). Azimuth 0 sits at -y (our +z)."""
    a = math.radians(azimuth_deg)
    pos = np.array([R * math.sin(a), -R * math.cos(a), 0.0])
    fwd = -pos / R
    down = np.array([0.0, 0.0, -1.0])
    right = np.cross(down, fwd)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, fwd, pos
    return c2w


def write_object(root, uid, n_views=6, size=32):
    for i in range(n_views):
        (root / uid / "rgb").mkdir(parents=True, exist_ok=True)
        (root / uid / "pose").mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[:size, :size]
        disc = ((xx - size / 2 + 0.5) ** 2 + (yy - size / 2 + 0.5) ** 2) < (size / 4) ** 2
        rgba = np.zeros((size, size, 4), np.uint8)
        rgba[disc] = (200, 40 * i, 30, 255)
        Image.fromarray(rgba).save(root / uid / "rgb" / f"{i:03d}.png")
        np.savetxt(root / uid / "pose" / f"{i:03d}.txt", blender_pose(90.0 * i).reshape(1, 16))


@pytest.fixture
def folder(tmp_path):
    for uid in ("obj_a", "obj_b", "obj_c"):
        write_object(tmp_path, uid)
    (tmp_path / "uids.txt").write_text("obj_a\nobj_b\nobj_c\n")
    return tmp_path


def test_reads_items_with_hand_computed_cameras(folder):
    opt = micro_options(data_root=str(folder), num_views=6, num_eval_objects=1)
    train, evals = FolderDataset(opt, "train"), FolderDataset(opt, "eval")
    assert [r.uid for r in train.records] == ["obj_a", "obj_b"] and [r.uid for r in evals.records] == ["obj_c"]
    item = evals[0]
    assert item["input"].shape == (4, 9, 32, 32)
    assert item["images_output"].shape == (6, 3, 32, 32) and item["masks_output"].shape == (6, 1, 32, 32)
    # view 0 (Blender azimuth 0, at -y) becomes our canonical camera at (0, 0, R)
    assert torch.allclose(item["cam_pos"][0], torch.tensor([0.0, 0.0, R]), atol=1e-5)
    # view 1 (Blender azimuth 90, at +x) stays at our +x
    assert torch.allclose(item["cam_pos"][1], torch.tensor([R, 0.0, 0.0]), atol=1e-5)
    # world point p seen by view 1: OpenCV camera axes right = -z, down = -y, forward = -x
    p = torch.tensor([0.2, 0.3, -0.1])
    t = torch.cat([p, torch.ones(1)]) @ item["cam_view"][1]
    expected = torch.tensor([0.1, -0.3, R - 0.2])
    assert torch.allclose(t[:3], expected, atol=1e-5)
    # projection: focal = S / (2 tan(fovy/2)), pixel = centre + focal * x / z
    clip = torch.cat([p, torch.ones(1)]) @ item["cam_view_proj"][1]
    pix = ((clip[:2] / clip[3] + 1) * 32 - 1) / 2
    f = 32 / (2 * math.tan(math.radians(opt.fovy) / 2))
    assert torch.allclose(pix, torch.tensor([15.5 + f * 0.1 / 1.3, 15.5 - f * 0.3 / 1.3]), atol=1e-3)
    # the disc is opaque, the rest white
    assert item["masks_output"][0, 0, 16, 16] > 0.99 and item["masks_output"][0, 0, 0, 0] < 0.01
    assert torch.allclose(item["images_output"][0, :, 0, 0], torch.ones(3))


def test_corrupt_view_is_skipped_and_counted(folder):
    (folder / "obj_a" / "rgb" / "005.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    opt = micro_options(data_root=str(folder), num_views=6, num_eval_objects=0)
    ds = FolderDataset(opt, "train")
    item = ds[0]
    assert item["uid"] == "obj_a" and torch.isfinite(item["images_output"]).all()
    assert ds.counts["bad_views"] >= 1


def test_missing_pose_and_too_few_views(folder):
    (folder / "obj_b" / "pose" / "005.txt").unlink()  # a supervision view: left out
    for i in range(1, 6):
        (folder / "obj_c" / "rgb" / f"{i:03d}.png").unlink()
    opt = micro_options(data_root=str(folder), num_views=6, num_eval_objects=0)
    with pytest.warns(UserWarning, match="obj_c"):
        ds = FolderDataset(opt, "train")
    assert [r.uid for r in ds.records] == ["obj_a", "obj_b"]
    assert len(ds.records[1].usable(range(6))) == 5 and ds.counts["bad_views"] == 6


@pytest.mark.parametrize("bad_pose", ["15 numbers", "nan"])
def test_a_bad_input_pose_never_shifts_another_view_into_its_place(folder, bad_pose):
    """obj_a's input view 002 has a broken pose: the object is skipped (and said so), instead of
    view 004 silently becoming input view 2 at the wrong camera."""
    pose = folder / "obj_a" / "pose" / "002.txt"
    values = pose.read_text().split()
    pose.write_text(" ".join(values[:15]) if bad_pose == "15 numbers" else " ".join(["nan"] + values[1:]))
    opt = micro_options(data_root=str(folder), num_views=6, num_eval_objects=0)
    with pytest.warns(UserWarning) as record:
        ds = FolderDataset(opt, "train")
    message = "\n".join(str(w.message) for w in record)
    assert "002.txt" in message and "obj_a" in message and "1 unusable view(s), 1 skipped object(s)" in message
    assert [r.uid for r in ds.records] == ["obj_b", "obj_c"]


def test_a_bad_supervision_pose_keeps_every_view_at_its_camera(folder):
    """A broken pose among supervision views only removes that view; the rest keep their cameras."""
    (folder / "obj_a" / "pose" / "004.txt").write_text("1 2 3")
    opt = micro_options(data_root=str(folder), num_views=6, num_eval_objects=0, input_view_ids=(0, 1, 2, 3))
    with pytest.warns(UserWarning, match="004.txt"):
        ds = FolderDataset(opt, "all", all_views=True)
    item = ds[0]
    assert item["uid"] == "obj_a" and item["cam_pos"].shape[0] == 5  # views 0-3, 5
    expected = {0: (0, 0, R), 1: (R, 0, 0), 2: (0, 0, -R), 3: (-R, 0, 0), 5: (R, 0, 0)}  # azimuth 90 i
    for row, vid in enumerate([0, 1, 2, 3, 5]):
        assert torch.allclose(item["cam_pos"][row], torch.tensor(expected[vid], dtype=torch.float32), atol=1e-5)


def test_empty_root_is_a_clear_error(tmp_path):
    with pytest.raises(FolderDatasetError, match="no usable object"):
        FolderDataset(micro_options(data_root=str(tmp_path)), "train")
    with pytest.raises(FolderDatasetError, match="not a folder"):
        FolderDataset(micro_options(data_root=str(tmp_path / "nope")), "train")


def test_transforms_json(tmp_path):
    write_object(tmp_path, "nerf", n_views=5)
    obj = tmp_path / "nerf"
    frames = []
    for i in range(5):
        c2w = blender_pose(90.0 * i)
        c2w[:3, 1:3] *= -1  # NeRF-synthetic stores OpenGL camera axes
        frames.append({"file_path": f"./rgb/{i:03d}", "transform_matrix": c2w.tolist()})
    fovx = math.radians(49.1)
    (obj / "transforms.json").write_text(json.dumps({"camera_angle_x": fovx, "frames": frames}))
    opt = micro_options(data_root=str(tmp_path), num_views=5, num_eval_objects=0)
    item = FolderDataset(opt, "train")[0]
    assert torch.allclose(item["cam_pos"][1], torch.tensor([R, 0.0, 0.0]), atol=1e-5)


def test_16_bit_renders_are_read_at_their_scale(folder):
    """16-bit renders (RGBA, and grayscale as some exporters write) give the same items as their
    8-bit twins, not blank white ones."""
    from test_images import PNG_GRAY, PNG_RGBA, write_png

    opt = micro_options(data_root=str(folder), num_views=6, num_eval_objects=0)
    for kind in ("rgba", "gray"):
        for png in sorted((folder / "obj_a" / "rgb").glob("*.png")):
            rgba8 = np.asarray(Image.open(png).convert("RGBA"))
            if kind == "rgba":
                write_png(png, rgba8.astype(np.uint16) * 257, PNG_RGBA)  # 257 * v: the exact 16-bit twin of v
            else:
                gray8 = rgba8[..., 0]
                write_png(png, gray8.astype(np.uint16) * 257, PNG_GRAY)
                (folder / "twins").mkdir(exist_ok=True)
                Image.fromarray(gray8).save(folder / "twins" / png.name)
        item16 = FolderDataset(opt, "all", all_views=True)[0]
        assert item16["uid"] == "obj_a"
        if kind == "rgba":
            write_object(folder, "obj_a")  # the 8-bit originals again
        else:
            for twin in (folder / "twins").glob("*.png"):
                twin.replace(folder / "obj_a" / "rgb" / twin.name)
        item8 = FolderDataset(opt, "all", all_views=True)[0]
        assert item16["images_output"].min() < 0.5  # not blank
        torch.testing.assert_close(item16["images_output"], item8["images_output"], atol=1e-6, rtol=0)
        torch.testing.assert_close(item16["masks_output"], item8["masks_output"], atol=1e-6, rtol=0)


def test_no_eval_objects_means_an_empty_eval_split(folder):
    """--num_eval_objects 0: nothing is held out and the eval split is empty, even when the last
    object could not be evaluated (its input image is unreadable)."""
    (folder / "obj_c" / "rgb" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    opt = micro_options(data_root=str(folder), num_views=6, num_eval_objects=0)
    evals = FolderDataset(opt, "eval")
    assert len(evals) == 0 and evals.skipped == []
    assert [r.uid for r in FolderDataset(opt, "train").records] == ["obj_a", "obj_b", "obj_c"]


def test_held_out_objects_are_checked_and_never_replaced(folder):
    (folder / "obj_c" / "rgb" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    opt = micro_options(data_root=str(folder), num_views=6, num_eval_objects=2)
    with pytest.warns(UserWarning, match="obj_c"):
        evals = FolderDataset(opt, "eval")
    assert [r.uid for r in evals.records] == ["obj_b"] and [uid for uid, _ in evals.skipped] == ["obj_c"]
    assert [evals[i]["uid"] for i in range(len(evals))] == ["obj_b"]
    assert [r.uid for r in FolderDataset(opt, "train").records] == ["obj_a"]


def test_a_single_object_is_trained_on_and_evaluated(tmp_path):
    write_object(tmp_path, "only")
    opt = micro_options(data_root=str(tmp_path), num_views=6, num_eval_objects=3)
    with pytest.warns(UserWarning, match="not held out"):
        evals = FolderDataset(opt, "eval")
    assert [r.uid for r in evals.records] == [r.uid for r in FolderDataset(opt, "train").records] == ["only"]
