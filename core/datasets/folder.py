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
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from core.cameras import blender_to_opengl, scale_to_radius, zup_to_yup
from core.datasets.common import DatasetError, RawFile, RawObject, make_item, sample_generator
from core.images import ImageReadError, read_image, resample_rgba, rgba_tensor
from core.options import Options


class FolderDatasetError(DatasetError):
    """A folder dataset that cannot be used."""


@dataclass
class View:
    image: Union[Path, bytes]  # the image file, or its bytes (objects read from shards)
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


class FolderItems:
    """Turns an :class:`ObjectRecord` into a training sample: view choice, reading (a bad
    supervision view replaced by another), ``make_item``.

    Used by :class:`FolderDataset` and by the shards reader (objects converted to shards, their
    images as bytes), so one object gives the same sample from either. Depends only on the options,
    the split, the epoch (for training randomness) and the object's index. ``warn``: say which
    images cannot be read (the first few); they are counted in ``counts['bad_views']`` either way.
    """

    def __init__(self, opt: Options, split: str, all_views: bool = False, warn: bool = False):
        if split not in ("train", "eval", "all"):
            raise ValueError(f"split must be train, eval or all, not {split!r}")
        self.opt, self.split, self.all_views, self.warn, self.epoch = opt, split, all_views, warn, 0
        self.counts = {"bad_views": 0, "skipped_objects": 0}
        self._unreadable_reported = 0

    def choose_views(self, rec: ObjectRecord, index: int) -> list[int]:
        """Input view ids first, then usable supervision views (random for training, file order otherwise)."""
        inputs = input_ids(self.opt)
        rest = rec.usable(i for i in range(len(rec.views)) if i not in inputs)
        if self.split == "train":
            g = sample_generator(self.opt.seed, self.epoch, index, 1)
            rest = [rest[i] for i in torch.randperm(len(rest), generator=g).tolist()]
        if self.all_views:
            return inputs + rest
        need = self.opt.num_views - len(inputs)
        others = (rest * (need // max(len(rest), 1) + 1))[:need]  # repeat views when an object has few
        return inputs + others

    def make(self, rec: ObjectRecord, index: int) -> Optional[dict]:
        """The sample of ``rec`` (item ``index`` of the split), or None when one of its input images
        cannot be read. An unreadable supervision view is replaced by an unused one (training), or by
        repeating a good one when none is left; with ``all_views`` it is left out."""
        ids = self.choose_views(rec, index)
        n_in = self.opt.num_input_views
        spare = [i for i in rec.usable(range(len(rec.views))) if i not in ids]
        images, poses = [], []
        for k, vid in enumerate(ids):
            img = self.read(rec.views[vid])
            while img is None and k >= n_in and spare and not self.all_views:
                vid = spare.pop()
                img = self.read(rec.views[vid])
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
        rng = sample_generator(self.opt.seed, self.epoch, index, 2) if self.split == "train" else None
        item = make_item(rgba, c2w, self.opt, rng)
        item["uid"] = rec.uid
        return item

    def read(self, view: View) -> Optional[np.ndarray]:
        """The view's image, or None (counted; with ``warn``, the first few are reported) when unreadable."""
        try:
            return read_image(view.image)
        except ImageReadError as e:
            self.counts["bad_views"] += 1
            self._unreadable_reported += 1
            if self.warn and self._unreadable_reported <= 3:
                more = " (further unreadable views are counted, not listed)" if self._unreadable_reported == 3 else ""
                warnings.warn(f"folder dataset: {e}{more}")
            return None

    def check_fovy(self, uid: str, fovy: Optional[float]) -> None:
        """Warn when an object was rendered with another field of view than the model's."""
        if fovy is not None and abs(fovy - self.opt.fovy) > 0.5:
            warnings.warn(f"object {uid} was rendered with fovy {fovy:.1f}, the model uses {self.opt.fovy}")


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
        root = Path(opt.data_root).expanduser()  # Options checks that --dataset folder has a data_root
        if not root.is_dir():
            raise FolderDatasetError(f"data_root is not a folder: {root}")
        self.items = FolderItems(opt, split, all_views, warn=True)
        self.opt, self.split, self.root = opt, split, root
        self.counts = self.items.counts  # bad_views, skipped_objects and problems (see scan_objects)
        self.counts["problems"] = []
        self.skipped: list[tuple[str, str]] = []
        if split == "eval" and opt.num_eval_objects <= 0:  # --num_eval_objects 0: no evaluation, nothing to read
            self.records = []
            return
        uids = list_uids(root, opt.data_list)
        records, report = scan_objects(root, uids, opt)
        self.counts.update(report)
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
            self.items.check_fovy(rec.uid, rec.fovy)

    def _drop_unreadable_inputs(self) -> None:
        """Evaluation: an object whose input image cannot be read is listed as skipped, never
        replaced by another object (its scores would be filed under the wrong name)."""
        kept = []
        for rec in self.records:
            bad = next((rec.views[i].image for i in input_ids(self.opt) if self.items.read(rec.views[i]) is None), None)
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
        self.items.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        if self.split != "train":  # no stand-ins in evaluation
            item = self.items.make(self.records[index], index)
            if item is None:
                raise FolderDatasetError(f"object {self.records[index].uid}: an input view became unreadable")
            return item
        for attempt in range(len(self.records)):
            k = (index + attempt) % len(self.records)
            item = self.items.make(self.records[k], k)
            if item is not None:
                return item
        raise FolderDatasetError(f"every object under {self.root} has unreadable input views")

    def raw_object(self, index: int) -> RawObject:
        """Object ``index`` as a shard stores it: every view slot (a view the dataset cannot use,
        with a bad pose or no file, is stored empty, its pose NaN) and the image files byte for byte."""
        rec = self.records[index]
        names = [f"{k:03d}{v.image.suffix.lower() or '.png'}" for k, v in enumerate(rec.views)]
        nan = torch.full((4, 4), float("nan"))
        cams = torch.stack([nan if v.c2w is None else v.c2w for v in rec.views]).numpy().astype(np.float32)
        files = [_raw_file(name, view) for name, view in zip(names, rec.views)]
        meta = dict(source="folder", uid=rec.uid, fovy=rec.fovy, images=names, problems=[v.problem for v in rec.views])
        return RawObject(meta, {"cams": cams}, files)


def _raw_file(name: str, view: View) -> RawFile:
    if view.problem is not None:
        return RawFile(name, b"", str(view.image), unusable=True)
    try:
        return RawFile(name, view.image.read_bytes(), str(view.image))
    except OSError as e:  # stored empty: decoded later as unreadable, like the missing file
        return RawFile(name, b"", str(view.image), unreadable=f"cannot be read ({e.strerror or type(e).__name__})")


def _to_rgba(img: np.ndarray, size: int) -> Tensor:
    """[H, W, 3|4] float -> [4, size, size] (opaque when there is no alpha)."""
    t = rgba_tensor(img)
    if t.shape[-1] != size or t.shape[-2] != size:
        return resample_rgba(t, (size, size))
    return t.clamp(0, 1)
