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
with the default options are left as they are). Views keep their file positions: a view with a
bad pose or a missing file is never replaced by another one among the inputs. An object whose
input views are unusable is skipped; unusable supervision views are left out. What was skipped
is reported once (count and first paths); a dataset with no usable object is a
:class:`FolderDatasetError`.

Held-out objects are the last ``num_eval_objects`` usable uids; the eval split also checks that
their input images can be read, leaves out (never replaces) the ones that cannot and lists them in
``skipped``. ``num_eval_objects`` 0 means no evaluation: the eval split is empty (nothing is read).
With a single usable object and ``num_eval_objects`` >= 1, that object is trained on and evaluated
(with a warning: it is not held out).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from core.cameras import blender_to_opengl, scale_to_radius, zup_to_yup
from core.datasets.common import make_item
from core.images import ImageReadError, read_image
from core.options import Options


class FolderDatasetError(ValueError):
    pass


@dataclass
class View:
    image: Path
    c2w: Optional[Tensor]  # [4, 4] OpenGL camera axes, our y-up world, unscaled; None when unusable
    problem: Optional[str] = None  # why the view cannot be used (bad pose, missing file)


@dataclass
class ObjectRecord:
    uid: str
    views: list[View]  # every view slot in file order, broken ones included: indices never shift
    fovy: Optional[float] = None  # from transforms.json, when it says

    def usable(self, ids) -> list[int]:
        return [i for i in ids if self.views[i].problem is None]


def read_pose_txt(path: Path) -> Tensor:
    """A 16-float pose file (Blender world, OpenCV camera) -> [4, 4] OpenGL c2w in our world."""
    values = np.array(path.read_text().split(), dtype=np.float64)
    if values.size != 16 or not np.isfinite(values).all():
        what = f"{values.size} numbers" if values.size != 16 else "a NaN or infinite number"
        raise ValueError(f"expected 16 finite numbers, found {what}")
    c2w = torch.from_numpy(values.reshape(4, 4)).float()
    if not torch.allclose(c2w[3], torch.tensor([0.0, 0.0, 0.0, 1.0]), atol=1e-4):
        raise ValueError("last row is not 0 0 0 1")
    return blender_to_opengl(c2w)


def _scan_folder_object(obj_dir: Path) -> ObjectRecord:
    """One slot per view name found in rgb/ or pose/ (sorted), so a broken view keeps its place."""
    stems = sorted({p.stem for p in (obj_dir / "rgb").glob("*.png")} | {p.stem for p in (obj_dir / "pose").glob("*.txt")})
    views = []
    for stem in stems:
        png, pose = obj_dir / "rgb" / f"{stem}.png", obj_dir / "pose" / f"{stem}.txt"
        if not png.is_file():
            views.append(View(png, None, "image file missing"))
        elif not pose.is_file():
            views.append(View(png, None, f"pose file {pose} missing"))
        else:
            try:
                views.append(View(png, read_pose_txt(pose)))
            except (OSError, ValueError) as e:
                views.append(View(png, None, f"pose {pose}: {e}"))
    return ObjectRecord(obj_dir.name, views)


def _scan_transforms_object(obj_dir: Path) -> ObjectRecord:
    meta = json.loads((obj_dir / "transforms.json").read_text())
    fovy = None
    if "fl_y" in meta and "h" in meta:
        fovy = math.degrees(2 * math.atan(meta["h"] / (2 * meta["fl_y"])))
    elif "camera_angle_x" in meta:  # square NeRF-synthetic renders: vertical = horizontal fov
        fovy = math.degrees(meta["camera_angle_x"])
    views = []
    for k, frame in enumerate(meta.get("frames", [])):
        path = obj_dir / str(frame.get("file_path", f"<frame {k} has no file_path>"))
        if path.suffix == "":
            path = path.with_suffix(".png")
        try:
            m = torch.tensor(frame["transform_matrix"], dtype=torch.float32)
            if m.shape != (4, 4) or not torch.isfinite(m).all():
                raise ValueError("transform_matrix is not a finite 4x4 matrix")
            if not path.is_file():
                raise ValueError("image file missing")
        except (KeyError, ValueError, TypeError) as e:
            reason = "no transform_matrix" if isinstance(e, KeyError) else str(e) or "bad transform_matrix"
            views.append(View(path, None, f"transforms.json frame {k}: {reason}"))
            continue
        views.append(View(path, zup_to_yup(m)))  # Blender world + OpenGL camera: only the world changes
    return ObjectRecord(obj_dir.name, views, fovy)


def input_ids(opt: Options) -> list[int]:
    return list(opt.input_view_ids) if opt.input_view_ids else list(range(opt.num_input_views))


def scan_objects(root: Path, uids: list[str], opt: Options) -> tuple[list[ObjectRecord], dict]:
    """Objects whose input views all have a pose and an image file, and that have at least one
    supervision view; the rest are skipped. Returns (records, report) where report holds
    ``bad_views`` (count), ``skipped_objects`` (count) and ``problems`` ([(what, why)], all of them)."""
    report = {"bad_views": 0, "skipped_objects": 0, "problems": []}
    inputs = input_ids(opt)
    records = []
    for uid in uids:
        obj_dir = root / uid
        try:
            if (obj_dir / "transforms.json").is_file():
                rec = _scan_transforms_object(obj_dir)
            elif (obj_dir / "rgb").is_dir():
                rec = _scan_folder_object(obj_dir)
            else:
                rec = None
                why = "no rgb/ folder and no transforms.json"
        except (OSError, ValueError, json.JSONDecodeError) as e:
            rec, why = None, f"{type(e).__name__}: {e}"
        if rec is not None:
            bad = [v for v in rec.views if v.problem is not None]
            report["bad_views"] += len(bad)
            report["problems"] += [(str(v.image), v.problem) for v in bad]
            broken_inputs = [i for i in inputs if i >= len(rec.views) or rec.views[i].problem is not None]
            supervision = rec.usable(i for i in range(len(rec.views)) if i not in inputs)
            if broken_inputs:  # each with its cause: a NaN pose, a missing file, a bad frame
                why = "; ".join(f"input view {i}: the object has only {len(rec.views)} views" if i >= len(rec.views)
                                else f"input view {i} ({os.path.relpath(rec.views[i].image, root)}): {rec.views[i].problem}"
                                for i in broken_inputs)
            elif not supervision:
                why = "no usable supervision view besides the inputs"
            else:
                records.append(rec)
                continue
        report["skipped_objects"] += 1
        report["problems"].append((f"object {uid}", f"skipped: {why}"))
    return records, report


def report_problems(report: dict, root: Path, limit: int = 5) -> None:
    """One warning for the whole dataset: what was skipped, with the first few paths."""
    problems = report["problems"]
    if not problems:
        return
    lines = [f"  {what}: {why}" for what, why in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    warnings.warn(
        f"folder dataset {root}: {report['bad_views']} unusable view(s), {report['skipped_objects']} skipped "
        f"object(s):\n" + "\n".join(lines),
        stacklevel=3,
    )


def list_uids(root: Path, data_list: Optional[str]) -> list[str]:
    list_file = Path(data_list) if data_list else root / "uids.txt"
    if list_file.is_file():
        return [line.strip() for line in list_file.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if data_list:
        raise FolderDatasetError(f"uid list file not found: {list_file}")
    return sorted(p.name for p in root.iterdir() if p.is_dir())


class FolderDataset(Dataset):
    """Posed renders on disk.

    split: 'train', 'eval' (the last ``num_eval_objects`` usable uids; empty with
    ``num_eval_objects`` 0; with a single usable object, that object, which training uses too) or
    'all'. all_views: supervise
    with every usable non-input view of an object, in file order, instead of ``num_views - 4`` of
    them (for scripts/eval.py; objects then differ in view count, so use batch size 1).

    A view is never replaced by another at a different camera among the inputs: an object whose
    input view is broken is skipped (training: another object is drawn instead; evaluation
    splits check their input images up front and list unusable objects in ``self.skipped``).
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
        self.skipped: list[tuple[str, str]] = []
        self._unreadable_reported = 0
        if split == "eval" and opt.num_eval_objects <= 0:  # --num_eval_objects 0: no evaluation, nothing to read
            self.records, self.counts = [], {"bad_views": 0, "skipped_objects": 0, "problems": []}
            return
        uids = list_uids(root, opt.data_list)
        records, self.counts = scan_objects(root, uids, opt)
        if split != "eval":  # the eval split scans the same folder: report once, from the other one
            report_problems(self.counts, root)
        if not records:
            raise FolderDatasetError(
                f"no usable object under {root}: {len(uids)} uids listed, {self.counts['skipped_objects']} skipped, "
                f"{self.counts['bad_views']} missing or unusable views. Expected <uid>/rgb/NNN.png with "
                f"<uid>/pose/NNN.txt, or <uid>/transforms.json, with input views {input_ids(opt)} usable and at "
                f"least one more view per object."
            )
        n_eval = max(0, int(opt.num_eval_objects))
        if split == "all":
            self.records = records
        elif n_eval == 0:  # nothing held out (the eval split returned empty above)
            self.records = records
        elif len(records) == 1:  # nothing to hold out: the one object is trained on and evaluated
            self.records = records
            if split == "eval":
                warnings.warn(f"folder dataset {root}: only one usable object ({records[0].uid}): it is trained on and "
                              f"evaluated, not held out")
        else:
            n_eval = min(n_eval, len(records) - 1)
            self.records = records[len(records) - n_eval:] if split == "eval" else records[: len(records) - n_eval]
        self.skipped = [(w[len("object "):], why) for w, why in self.counts["problems"] if w.startswith("object ")]
        if split != "train":
            self._drop_unreadable_inputs()
        for rec in self.records:
            if rec.fovy is not None and abs(rec.fovy - opt.fovy) > 0.5:
                warnings.warn(f"object {rec.uid} was rendered with fovy {rec.fovy:.1f}, the model uses {opt.fovy}")

    def _drop_unreadable_inputs(self) -> None:
        """Evaluation: an object whose input image cannot be read is listed as skipped, never
        replaced by another object (its scores would be filed under the wrong name)."""
        kept = []
        for rec in self.records:
            bad = next((rec.views[i].image for i in input_ids(self.opt) if self._read(rec.views[i]) is None), None)
            if bad is None:
                kept.append(rec)
            else:
                self.skipped.append((rec.uid, f"input view {bad} cannot be read"))
        if self.records and not kept:
            hint = " (--num_eval_objects 0 evaluates none)" if self.split == "eval" else ""
            raise FolderDatasetError(f"no object under {self.root} has readable input views{hint}: {self.skipped[:3]}")
        self.records = kept

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self, index: int, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(((self.opt.seed * 1_000_003 + self.epoch) * 1_000_003 + index) * 7 + salt)

    def _choose_views(self, rec: ObjectRecord, index: int) -> list[int]:
        """Input view ids first, then usable supervision views (random for training, file order otherwise)."""
        inputs = input_ids(self.opt)
        rest = rec.usable(i for i in range(len(rec.views)) if i not in inputs)
        if self.split == "train":
            rest = [rest[i] for i in torch.randperm(len(rest), generator=self._generator(index, 1)).tolist()]
        if self.all_views:
            return inputs + rest
        need = self.opt.num_views - len(inputs)
        others = (rest * (need // max(len(rest), 1) + 1))[:need]  # repeat views when an object has few
        return inputs + others

    def __getitem__(self, index: int) -> dict:
        if self.split != "train":  # no stand-ins in evaluation
            item = self._load(self.records[index], index)
            if item is None:
                raise FolderDatasetError(f"object {self.records[index].uid}: an input view became unreadable")
            return item
        for attempt in range(len(self.records)):
            k = (index + attempt) % len(self.records)
            item = self._load(self.records[k], k)
            if item is not None:
                return item
        raise FolderDatasetError(f"every object under {self.root} has unreadable input views")

    def _load(self, rec: ObjectRecord, index: int) -> Optional[dict]:
        """The item of one object, or None when one of its input images cannot be read. An
        unreadable supervision view is replaced by an unused one (training), or by repeating a
        good one when none is left; with ``all_views`` it is left out."""
        ids = self._choose_views(rec, index)
        n_in = self.opt.num_input_views
        spare = [i for i in rec.usable(range(len(rec.views))) if i not in ids]
        images, poses = [], []
        for k, vid in enumerate(ids):
            img = self._read(rec.views[vid])
            while img is None and k >= n_in and spare and not self.all_views:
                vid = spare.pop()
                img = self._read(rec.views[vid])
            if img is None and k < n_in:
                return None
            if img is None and self.all_views:
                continue
            if img is None:  # none left: repeat a good supervision view (or the last input)
                img, pose = images[-1], poses[-1]
            else:
                pose = rec.views[vid].c2w
            images.append(img)
            poses.append(pose)
        size = max(self.opt.input_size, self.opt.output_size)
        rgba = torch.stack([_to_rgba(im, size) for im in images])  # [V, 4, S, S]
        c2w = torch.stack(poses)  # [V, 4, 4]
        c2w = scale_to_radius(c2w, self.opt.cam_radius)
        rng = self._generator(index, 2) if self.split == "train" else None
        item = make_item(rgba, c2w, self.opt, rng)
        item["uid"] = rec.uid
        return item

    def _read(self, view: View) -> Optional[np.ndarray]:
        """The view's image, or None (counted; the first few paths are reported) when unreadable."""
        try:
            return read_image(view.image)
        except ImageReadError as e:
            self.counts["bad_views"] += 1
            self._unreadable_reported += 1
            if self._unreadable_reported <= 3:
                more = " (further unreadable views are counted, not listed)" if self._unreadable_reported == 3 else ""
                warnings.warn(f"folder dataset: {e}{more}")
            return None


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
