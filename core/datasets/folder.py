"""Folder-of-renders dataset: ``<root>/<uid>/rgb/NNN.png`` + ``<root>/<uid>/pose/NNN.txt``.

Layout (what ``scripts/render_blender.py`` writes)::

    <root>/uids.txt              one uid per line (optional: default is every sub-folder)
    <root>/<uid>/rgb/000.png     RGBA render, transparent background
    <root>/<uid>/pose/000.txt    16 floats: 4x4 camera-to-world, row-major, Blender world axes
                                 (z up) and OpenCV camera axes (x right, y down, looking along +z)

or, per object, a NeRF-synthetic / nerfstudio ``<root>/<uid>/transforms.json`` whose
``transform_matrix`` entries are camera-to-world in Blender world axes and OpenGL camera axes.

Poses are converted to our y-up world and OpenGL camera axes, and all translations of an object
are scaled so that its median camera distance equals ``cam_radius`` (renders made at radius 1.5
with the default options are left as they are). Missing or unreadable views are skipped and
counted; an object with too few views is skipped with a warning; a dataset with no usable object
is a :class:`FolderDatasetError`.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from core.cameras import blender_to_opengl, zup_to_yup
from core.datasets.common import make_item
from core.images import read_image
from core.options import Options


class FolderDatasetError(ValueError):
    pass


@dataclass
class View:
    image: Path
    c2w: Tensor  # [4, 4] OpenGL camera axes, our y-up world, unscaled


@dataclass
class ObjectRecord:
    uid: str
    views: list[View]
    fovy: Optional[float] = None  # from transforms.json, when it says


def read_pose_txt(path: Path) -> Tensor:
    """A 16-float pose file (Blender world, OpenCV camera) -> [4, 4] OpenGL c2w in our world."""
    values = np.array(path.read_text().split(), dtype=np.float64)
    if values.size != 16 or not np.isfinite(values).all():
        raise ValueError(f"{path}: expected 16 finite numbers, found {values.size}")
    c2w = torch.from_numpy(values.reshape(4, 4)).float()
    if not torch.allclose(c2w[3], torch.tensor([0.0, 0.0, 0.0, 1.0]), atol=1e-4):
        raise ValueError(f"{path}: last row is not 0 0 0 1")
    return blender_to_opengl(c2w)


def _scan_folder_object(obj_dir: Path, counts: dict) -> Optional[ObjectRecord]:
    views = []
    for png in sorted((obj_dir / "rgb").glob("*.png")):
        pose = obj_dir / "pose" / (png.stem + ".txt")
        try:
            views.append(View(png, read_pose_txt(pose)))
        except (OSError, ValueError):
            counts["bad_views"] += 1
    for pose in (obj_dir / "pose").glob("*.txt"):
        if not (obj_dir / "rgb" / (pose.stem + ".png")).exists():
            counts["bad_views"] += 1
    return ObjectRecord(obj_dir.name, views)


def _scan_transforms_object(obj_dir: Path, counts: dict) -> Optional[ObjectRecord]:
    meta = json.loads((obj_dir / "transforms.json").read_text())
    fovy = None
    if "fl_y" in meta and "h" in meta:
        fovy = math.degrees(2 * math.atan(meta["h"] / (2 * meta["fl_y"])))
    elif "camera_angle_x" in meta:  # square NeRF-synthetic renders: vertical = horizontal fov
        fovy = math.degrees(meta["camera_angle_x"])
    views = []
    for frame in meta.get("frames", []):
        path = obj_dir / frame["file_path"]
        if path.suffix == "":
            path = path.with_suffix(".png")
        try:
            m = torch.tensor(frame["transform_matrix"], dtype=torch.float32)
            if m.shape != (4, 4) or not torch.isfinite(m).all() or not path.exists():
                raise ValueError
        except (KeyError, ValueError, TypeError):
            counts["bad_views"] += 1
            continue
        views.append(View(path, zup_to_yup(m)))  # Blender world + OpenGL camera: only the world changes
    return ObjectRecord(obj_dir.name, views, fovy)


def scan_objects(root: Path, uids: list[str], min_views: int) -> tuple[list[ObjectRecord], dict]:
    counts = {"bad_views": 0, "skipped_objects": 0}
    records = []
    for uid in uids:
        obj_dir = root / uid
        try:
            if (obj_dir / "transforms.json").is_file():
                rec = _scan_transforms_object(obj_dir, counts)
            elif (obj_dir / "rgb").is_dir():
                rec = _scan_folder_object(obj_dir, counts)
            else:
                rec = None
        except (OSError, ValueError, json.JSONDecodeError) as e:
            warnings.warn(f"skipping object {uid}: {e}")
            rec = None
        if rec is None or len(rec.views) < min_views:
            n = 0 if rec is None else len(rec.views)
            warnings.warn(f"skipping object {uid}: {n} usable views, need at least {min_views}")
            counts["skipped_objects"] += 1
            continue
        records.append(rec)
    return records, counts


def list_uids(root: Path, data_list: Optional[str]) -> list[str]:
    list_file = Path(data_list) if data_list else root / "uids.txt"
    if list_file.is_file():
        return [line.strip() for line in list_file.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if data_list:
        raise FolderDatasetError(f"uid list file not found: {list_file}")
    return sorted(p.name for p in root.iterdir() if p.is_dir())


class FolderDataset(Dataset):
    """Posed renders on disk.

    split: 'train', 'eval' (the last ``num_eval_objects`` uids) or 'all'. all_views: supervise
    with every non-input view of an object, in file order, instead of ``num_views - 4`` of them
    (for scripts/eval.py; objects then differ in view count, so use batch size 1).
    """

    def __init__(self, opt: Options, split: str = "train", all_views: bool = False):
        if not opt.data_root:
            raise FolderDatasetError("--dataset folder needs --data_root DIR (see README: 'Train on your own meshes')")
        root = Path(opt.data_root).expanduser()
        if not root.is_dir():
            raise FolderDatasetError(f"data_root is not a folder: {root}")
        if split not in ("train", "eval", "all"):
            raise ValueError(f"split must be train, eval or all, not {split!r}")
        self.opt, self.split, self.root, self.epoch, self.all_views = opt, split, root, 0, all_views
        n_in = opt.num_input_views
        if opt.input_view_ids is not None and len(opt.input_view_ids) != n_in:
            raise FolderDatasetError(f"input_view_ids needs {n_in} indices, got {opt.input_view_ids}")
        min_views = max(n_in + 1, (max(opt.input_view_ids) + 1) if opt.input_view_ids else 0)
        uids = list_uids(root, opt.data_list)
        records, self.counts = scan_objects(root, uids, min_views)
        if not records:
            raise FolderDatasetError(
                f"no usable object under {root}: {len(uids)} uids listed, {self.counts['skipped_objects']} skipped, "
                f"{self.counts['bad_views']} missing or unreadable views. Expected <uid>/rgb/NNN.png with "
                f"<uid>/pose/NNN.txt, or <uid>/transforms.json, and at least {min_views} views per object."
            )
        n_eval = min(opt.num_eval_objects, len(records) - 1) if len(records) > 1 else 0
        if split == "all":
            self.records = records
        elif split == "eval":
            self.records = records[len(records) - n_eval:] if n_eval else records[-1:]
        else:
            self.records = records[: len(records) - n_eval] if n_eval else records
        for rec in self.records:
            if rec.fovy is not None and abs(rec.fovy - opt.fovy) > 0.5:
                warnings.warn(f"object {rec.uid} was rendered with fovy {rec.fovy:.1f}, the model uses {opt.fovy}")

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self, index: int, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(((self.opt.seed * 1_000_003 + self.epoch) * 1_000_003 + index) * 7 + salt)

    def _choose_views(self, rec: ObjectRecord, index: int) -> list[int]:
        """Input view ids first, then supervision views (random for training, fixed for eval)."""
        n_in, n = self.opt.num_input_views, len(rec.views)
        inputs = list(self.opt.input_view_ids) if self.opt.input_view_ids else list(range(n_in))
        rest = [i for i in range(n) if i not in inputs]
        if self.split == "train":
            rest = [rest[i] for i in torch.randperm(len(rest), generator=self._generator(index, 1)).tolist()]
        if self.all_views:
            return inputs + rest
        need = self.opt.num_views - n_in
        others = (rest * (need // max(len(rest), 1) + 1))[:need]  # repeat views when an object has few
        return inputs + others

    def __getitem__(self, index: int) -> dict:
        for attempt in range(len(self.records)):
            rec = self.records[(index + attempt) % len(self.records)]
            item = self._load(rec, (index + attempt) % len(self.records))
            if item is not None:
                return item
        raise FolderDatasetError(f"every object under {self.root} has unreadable input views")

    def _load(self, rec: ObjectRecord, index: int) -> Optional[dict]:
        ids = self._choose_views(rec, index)
        spare = [i for i in range(len(rec.views)) if i not in ids]
        images, poses = [], []
        for k, vid in enumerate(ids):
            img = self._read(rec.views[vid])
            while img is None and k >= self.opt.num_input_views and spare:  # replace a bad supervision view
                vid = spare.pop()
                img = self._read(rec.views[vid])
            if img is None and k >= self.opt.num_input_views:  # none left: repeat a good view
                img, pose = images[-1], poses[-1]
            elif img is None:
                warnings.warn(f"object {rec.uid}: unreadable input view {rec.views[vid].image}; using another object")
                return None
            else:
                pose = rec.views[vid].c2w
            images.append(img)
            poses.append(pose)
        size = max(self.opt.input_size, self.opt.output_size)
        rgba = torch.stack([_to_rgba(im, size) for im in images])  # [V, 4, S, S]
        c2w = torch.stack(poses)  # [V, 4, 4]
        dist = c2w[:, :3, 3].norm(dim=-1).median()
        c2w[:, :3, 3] *= self.opt.cam_radius / dist.clamp_min(1e-6)
        rng = self._generator(index, 2) if self.split == "train" else None
        item = make_item(rgba, c2w, self.opt, rng)
        item["uid"] = rec.uid
        return item

    def _read(self, view: View) -> Optional[np.ndarray]:
        try:
            img = read_image(view.image)
        except Exception:  # truncated or corrupt file: count and skip
            self.counts["bad_views"] += 1
            return None
        return img


def _to_rgba(img: np.ndarray, size: int) -> Tensor:
    """[H, W, 3|4] float -> [4, size, size] (opaque when there is no alpha)."""
    t = torch.from_numpy(img).permute(2, 0, 1)
    if t.shape[0] == 3:
        t = torch.cat([t, torch.ones_like(t[:1])], dim=0)
    if t.shape[-1] != size or t.shape[-2] != size:
        # resize premultiplied colour so transparent pixels' colours do not bleed into the edges
        pre = torch.cat([t[:3] * t[3:], t[3:]], dim=0)[None]
        pre = torch.nn.functional.interpolate(pre, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        alpha = pre[3:].clamp(0, 1)
        t = torch.cat([pre[:3] / alpha.clamp_min(1e-6) * (alpha > 0), alpha], dim=0)
    return t.clamp(0, 1)
