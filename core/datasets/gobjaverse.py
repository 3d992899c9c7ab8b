"""G-Objaverse (G-buffer Objaverse, the RichDreamer renders of ~280k Objaverse objects), read in place.

Layout, as published (folders), or one ``.tar`` per object (the "compressed version")::

    <root>/<group>/<uid>/campos_512_v4/00000/00000.png    RGBA render, 512 px, transparent background
    <root>/<group>/<uid>/campos_512_v4/00000/00000.json   its camera (below)
    ...                                     /00039/...    40 views per object
    <root>/<group>/<uid>.tar                 the same files under <uid>/campos_512_v4/..., read without unpacking

Other files of a view (``_albedo.png``, ``_nd.exr``, ...) are ignored. Objects are named
``<group>/<uid>``, as in G-Objaverse's own index ``gobjaverse_280k.json`` (``--data_list`` takes
that JSON list, or a text file with one name per line; default: every object under the root).

Camera JSON (the format of OpenAI's shap-e Blender script, which G-Objaverse's files follow):
``origin`` is the camera centre and ``x``, ``y``, ``z`` are the camera's axes in world
coordinates, in OpenCV convention (x right, y down, z forward = viewing direction); the world is
Blender's, z up; ``x_fov`` and ``y_fov`` are the full fields of view in radians. So the
camera-to-world matrix with columns ``[x, y, z, origin]`` is an OpenCV pose in a z-up world, which
:func:`core.cameras.blender_to_opengl` turns into ours (README, "G-Objaverse cameras", has the
derivation and a worked example).

Views: the 4 input views are 4 orbit views 90 degrees apart in azimuth at the same elevation
(G-Objaverse has two such rings, 24 views at 15-degree steps and 12 at 30-degree steps, plus a top
and a bottom view); a training sample takes a random such quadruple (a random ring and starting
view, in increasing azimuth, i.e. the rotation order of our default cameras), evaluation the
first one. Supervision views are drawn from the other views (random for training, in file order
for evaluation), skipping duplicates of the input cameras. ``--input_view_ids`` fixes the input
views instead (e.g. ``0 6 12 18``). Images are resampled to the model's ``--fovy`` (G-Objaverse
renders at 39.6 degrees; ``--fovy 39.6`` keeps them as they are), and each object's camera
distances are scaled to ``--cam_radius``, as in the folder dataset.

Bad files are handled as in the folder dataset: missing or unreadable views (image or JSON) are
skipped and counted; an object with too few usable views, or without 4 orbit views 90 degrees
apart, is skipped with a warning (another object takes its place); a root with no object at all
is a clear error. Objects are opened lazily (one stat per object at start), so 280k objects start
in seconds.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tarfile
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from core.cameras import blender_to_opengl, scale_to_radius
from core.datasets.common import make_item
from core.datasets.folder import FolderDatasetError
from core.images import read_image
from core.options import Options

CAMPOS_DIR = "campos_512_v4"
_VIEW_FILE = re.compile(r"(?:^|/)" + CAMPOS_DIR + r"/(\d+)/(\d+)\.(png|json)$")

ORBIT_TOLERANCE_DEG = 2.0
"""Largest azimuth error from 90-degree steps, and elevation difference, within an input quadruple."""
ORBIT_MAX_ELEVATION_DEG = 60.0
"""Views higher or lower than this (G-Objaverse's top and bottom views) are never input views."""


class GobjaverseError(FolderDatasetError):
    """A G-Objaverse root or object that cannot be used (reported by entry points like folder-dataset errors)."""


# ---------------------------------------------------------------------------------- cameras
def camera_from_json(meta: dict) -> tuple[Tensor, float, float]:
    """One G-Objaverse camera JSON -> (c2w [4, 4] OpenGL in our y-up world, fov_x, fov_y in degrees).

    The matrix with columns ``[x, y, z, origin]`` is the camera-to-world pose in OpenCV camera
    axes and a z-up world; ``blender_to_opengl`` changes the world to ours ((x, y, z) -> (x, z, -y)
    on the rows) and the camera axes to OpenGL (columns y and z negated). Raises ValueError for
    missing fields, non-finite numbers, axes that are not a rotation, or a field of view outside (0, pi).
    """
    try:
        axes = [np.asarray(meta[k], dtype=np.float64) for k in ("x", "y", "z", "origin")]
        fov_x, fov_y = float(meta["x_fov"]), float(meta["y_fov"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"camera JSON lacks x, y, z, origin, x_fov or y_fov ({e})") from None
    if any(a.shape != (3,) or not np.isfinite(a).all() for a in axes):
        raise ValueError("camera x, y, z and origin must be 3 finite numbers each")
    rot = np.stack(axes[:3], axis=1)  # [3, 3] columns: camera right, down, forward
    if np.abs(rot.T @ rot - np.eye(3)).max() > 1e-3 or np.linalg.det(rot) < 0:
        raise ValueError("camera x, y, z are not orthonormal and right-handed")
    if not (0.0 < fov_x < math.pi and 0.0 < fov_y < math.pi):
        raise ValueError(f"x_fov / y_fov must be radians in (0, pi), found {fov_x}, {fov_y}")
    c2w = np.eye(4)
    c2w[:3, :3] = rot
    c2w[:3, 3] = axes[3]
    return blender_to_opengl(torch.from_numpy(c2w)).float(), math.degrees(fov_x), math.degrees(fov_y)


def orbit_angles(c2w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Height angle (degrees, positive above the object), azimuth (degrees, 0 at +z, 90 at +x, as
    ``orbit_camera``) and distance of camera centres in our y-up world. c2w: [N, 4, 4] -> 3 x [N]"""
    pos = c2w[:, :3, 3].double()  # [N, 3]
    dist = pos.norm(dim=-1).clamp_min(1e-12)
    height = torch.rad2deg(torch.asin((pos[:, 1] / dist).clamp(-1, 1)))
    azim = torch.rad2deg(torch.atan2(pos[:, 0], pos[:, 2]))
    return height, azim, dist


def orbit_quadruples(c2w: Tensor, tol_deg: float = ORBIT_TOLERANCE_DEG) -> list[tuple[int, int, int, int]]:
    """Every 4-tuple of views at one elevation whose azimuths are a, a+90, a+180, a+270 degrees.

    Only views looking at the origin (within ``tol_deg``) with ``|elevation| <`` ORBIT_MAX_ELEVATION_DEG
    count. Tuples start at each such view in list order; the others are the best matches (smallest
    angular error, then the lowest index). c2w: [N, 4, 4] OpenGL -> list of index tuples.
    """
    height, azim, dist = orbit_angles(c2w)
    forward = -c2w[:, :3, 2].double()  # OpenGL cameras look along -z
    towards = -c2w[:, :3, 3].double() / dist[:, None]
    looks_at_origin = (forward * towards).sum(-1) > math.cos(math.radians(tol_deg))
    height, azim, dist, looks = height.tolist(), azim.tolist(), dist.tolist(), looks_at_origin.tolist()
    orbit = [i for i in range(len(height)) if looks[i] and abs(height[i]) < ORBIT_MAX_ELEVATION_DEG]
    quads = []
    for a in orbit:
        chosen = [a]
        for k in (1, 2, 3):
            best, best_err = None, None
            for b in orbit:
                if b == a:
                    continue
                d_az = (azim[b] - azim[a] - 90.0 * k + 180.0) % 360.0 - 180.0
                d_el = height[b] - height[a]
                if abs(d_az) > tol_deg or abs(d_el) > tol_deg or abs(dist[b] / dist[a] - 1) > 0.02:
                    continue
                err = math.hypot(d_az, d_el)
                if best_err is None or err < best_err:
                    best, best_err = b, err
            if best is None:
                break
            chosen.append(best)
        if len(chosen) == 4:
            quads.append(tuple(chosen))
    return quads


# ---------------------------------------------------------------------------------- images
def read_image_bytes(data: bytes, name: str = "image.png") -> np.ndarray:
    """Decode an image held in memory exactly as :func:`core.images.read_image` decodes its file
    (through a temporary file, so both paths share one decoder). -> float32 [H, W, 3|4] in [0, 1]"""
    tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.NamedTemporaryFile(suffix=Path(name).suffix or ".png", dir=tmp_dir) as f:
        f.write(data)
        f.flush()
        return read_image(f.name)


def resample_to_fov(img: np.ndarray, fov_x: float, fov_y: float, fovy: float, size: int) -> Tensor:
    """Re-project a pinhole image (principal point at its centre) to a square image of vertical
    and horizontal field of view ``fovy`` (degrees) and side ``size``.

    A ray at angle t off the optical axis lands at normalized image coordinate tan(t) / tan(fov / 2),
    so output pixel centres v in (-1, 1) sample the source at v * tan(fovy / 2) / tan(fov / 2):
    a wider target field of view shrinks the picture inside a transparent border, a narrower one
    crops it. Colour is resampled premultiplied by alpha (antialiased downscale to the picture's
    footprint, then bilinear ``grid_sample`` with ``align_corners=False``, the pixel-centre
    convention of ``core.cameras``). Equal fields of view reduce to a plain resize.

    img: [H, W, 3|4] float in [0, 1] -> rgba [4, size, size] (straight alpha; RGB 0 where alpha is 0)
    """
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()  # [C, H, W]
    if t.shape[0] == 3:
        t = torch.cat([t, torch.ones_like(t[:1])], dim=0)
    pre = torch.cat([t[:3] * t[3:], t[3:]], dim=0)[None]  # [1, 4, H, W] premultiplied
    kx = math.tan(math.radians(fovy) / 2) / math.tan(math.radians(fov_x) / 2)
    ky = math.tan(math.radians(fovy) / 2) / math.tan(math.radians(fov_y) / 2)
    foot_w, foot_h = max(1, round(size / kx)), max(1, round(size / ky))  # the source's footprint, pixels
    h, w = pre.shape[-2:]
    if foot_w < w or foot_h < h:
        pre = F.interpolate(pre, size=(min(foot_h, h), min(foot_w, w)), mode="bilinear", antialias=True, align_corners=False)
    if abs(kx - 1) < 1e-9 and abs(ky - 1) < 1e-9 and pre.shape[-2:] == (size, size):
        out = pre
    else:
        v = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1  # [size] output pixel centres
        gy, gx = torch.meshgrid(v * ky, v * kx, indexing="ij")  # [size, size] each
        grid = torch.stack([gx, gy], dim=-1)[None]  # [1, size, size, 2], x first
        out = F.grid_sample(pre, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    alpha = out[0, 3:].clamp(0, 1)  # [1, size, size]
    rgb = out[0, :3] / alpha.clamp_min(1e-6) * (alpha > 0)
    return torch.cat([rgb, alpha], dim=0).clamp(0, 1)


# ---------------------------------------------------------------------------------- objects
ImageSource = Union[Path, bytes, Callable[[], bytes]]


@dataclass
class GView:
    vid: int  # G-Objaverse view number (00000 -> 0)
    c2w: Tensor  # [4, 4] OpenGL camera axes, our y-up world, unscaled
    fov: tuple[float, float]  # full field of view (x, y), degrees
    image: ImageSource  # the PNG: a file, its bytes, or a function returning them (tar member)

    def image_bytes(self) -> bytes:
        if isinstance(self.image, bytes):
            return self.image
        if isinstance(self.image, Path):
            return self.image.read_bytes()
        return self.image()


@dataclass
class GObject:
    uid: str
    views: list[GView]  # in view-number order


@dataclass
class _Source:
    uid: str
    path: Path  # the campos_512_v4 folder, or the object's .tar
    is_tar: bool


def _scan_view_files(names: Iterator[str]) -> dict[int, dict[str, str]]:
    """{view number: {'png': name, 'json': name}} from paths ending in campos_512_v4/NNNNN/NNNNN.ext"""
    views: dict[int, dict[str, str]] = {}
    for name in names:
        m = _VIEW_FILE.search(name)
        if m and m.group(1) == m.group(2):
            views.setdefault(int(m.group(1)), {})[m.group(3)] = name
    return views


def _parse_views(files: dict[int, dict[str, str]], read_text: Callable[[str], str], image_of: Callable[[str], ImageSource], counts: dict) -> list[GView]:
    out = []
    for vid in sorted(files):
        entry = files[vid]
        if "png" not in entry or "json" not in entry:
            counts["bad_views"] += 1
            continue
        try:
            c2w, fov_x, fov_y = camera_from_json(json.loads(read_text(entry["json"])))
        except (OSError, ValueError, KeyError, tarfile.TarError):  # JSONDecodeError is a ValueError
            counts["bad_views"] += 1
            continue
        out.append(GView(vid, c2w, (fov_x, fov_y), image_of(entry["png"])))
    return out


@contextlib.contextmanager
def open_object(src: _Source, counts: dict) -> Iterator[GObject]:
    """An object's cameras, read now, and its images, read on demand (the tar stays open inside)."""
    if not src.is_tar:
        files = _scan_view_files(str(p.relative_to(src.path.parent)) for p in src.path.glob("*/*.*"))
        root = src.path.parent
        yield GObject(src.uid, _parse_views(files, lambda n: (root / n).read_text(), lambda n: root / n, counts))
        return
    with tarfile.open(src.path, "r:*") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        files = _scan_view_files(members)

        def read(name: str) -> bytes:
            f = tar.extractfile(members[name])
            if f is None:
                raise OSError(f"{src.path}: {name} is not a regular file")
            return f.read()

        yield GObject(src.uid, _parse_views(files, lambda n: read(n).decode("utf-8"), lambda n: (lambda: read(n)), counts))


def list_objects(root: Path, data_list: Optional[str]) -> list[str]:
    """Object names ``<group>/<uid>``: from ``data_list`` (G-Objaverse's JSON list, or one name per
    line), else every ``<group>/<uid>/campos_512_v4`` folder and ``<group>/<uid>.tar`` under root."""
    if data_list:
        path = Path(data_list).expanduser()
        if not path.is_file():
            raise GobjaverseError(f"--data_list {path}: no such file (G-Objaverse's gobjaverse_280k.json, or one <group>/<uid> per line)")
        text = path.read_text()
        if path.suffix == ".json":
            names = json.loads(text)
            if not isinstance(names, list):
                raise GobjaverseError(f"--data_list {path}: expected a JSON list of '<group>/<uid>' strings")
            return [str(n).strip().strip("/") for n in names if str(n).strip()]
        return [ln.strip().strip("/") for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    names = set()
    for group in sorted(p for p in root.iterdir() if p.is_dir()):
        for entry in group.iterdir():
            if entry.suffix == ".tar" and entry.is_file():
                names.add(f"{group.name}/{entry.stem}")
            elif (entry / CAMPOS_DIR).is_dir():
                names.add(f"{group.name}/{entry.name}")
    return sorted(names)


def _resolve(root: Path, name: str) -> Optional[_Source]:
    folder = root / name / CAMPOS_DIR
    if folder.is_dir():
        return _Source(name, folder, False)
    tar = root / f"{name}.tar"
    if tar.is_file():
        return _Source(name, tar, True)
    return None


# ---------------------------------------------------------------------------------- samples
class GobjaverseItems:
    """Turns a :class:`GObject` into a training sample: view choice, image resampling, ``make_item``.

    Used by :class:`GobjaverseDataset` and by the shards reader (objects converted to shards), so
    one object gives the same sample from either. Depends only on the options, the split, the
    epoch (for training randomness) and the object's index.
    """

    def __init__(self, opt: Options, split: str):
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
        if opt.input_view_ids is not None and len(opt.input_view_ids) != opt.num_input_views:
            raise GobjaverseError(f"input_view_ids needs {opt.num_input_views} view numbers, got {opt.input_view_ids}")
        self.opt, self.split, self.epoch = opt, split, 0
        self.counts = {"bad_views": 0, "skipped_objects": 0}

    def _generator(self, index: int, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(((self.opt.seed * 1_000_003 + self.epoch) * 1_000_003 + index) * 7 + salt)

    def choose_views(self, obj: GObject, index: int) -> Optional[tuple[list[int], list[int]]]:
        """(chosen, spare) positions in ``obj.views``: 4 input views then ``num_views - 4``
        supervision views; spares replace unreadable supervision views. None when the object has
        no usable input views (with a warning)."""
        n_in = self.opt.num_input_views
        if len(obj.views) < n_in + 1:
            warnings.warn(f"skipping object {obj.uid}: {len(obj.views)} usable views, need at least {n_in + 1}")
            return None
        c2w = torch.stack([v.c2w for v in obj.views])  # [N, 4, 4]
        if self.opt.input_view_ids is not None:
            where = {v.vid: i for i, v in enumerate(obj.views)}
            missing = [vid for vid in self.opt.input_view_ids if vid not in where]
            if missing:
                warnings.warn(f"skipping object {obj.uid}: input views {missing} (--input_view_ids) are missing or unreadable")
                return None
            inputs = [where[vid] for vid in self.opt.input_view_ids]
        else:
            quads = orbit_quadruples(c2w)
            if not quads:
                warnings.warn(f"skipping object {obj.uid}: no 4 orbit views 90 degrees apart at one elevation")
                return None
            pick = 0 if self.split == "eval" else int(torch.randint(len(quads), (1,), generator=self._generator(index, 1)))
            inputs = list(quads[pick])
        pos = c2w[:, :3, 3]
        scale = pos.norm(dim=-1).max().clamp_min(1e-6)
        rest = [i for i in range(len(obj.views)) if i not in inputs and (pos[inputs] - pos[i]).norm(dim=-1).min() > 1e-4 * scale]
        if not rest:
            rest = [i for i in range(len(obj.views)) if i not in inputs]
        if self.split == "train":
            rest = [rest[i] for i in torch.randperm(len(rest), generator=self._generator(index, 2)).tolist()]
        need = self.opt.num_views - n_in
        others = (rest * (need // len(rest) + 1))[:need]  # repeat views when an object has few
        return inputs + others, rest[need:]

    def build(self, obj: GObject, index: int) -> Optional[dict]:
        """The sample of ``obj`` (item ``index`` of the split), or None when it has no usable input views."""
        choice = self.choose_views(obj, index)
        if choice is None:
            self.counts["skipped_objects"] += 1
            return None
        ids, spare = choice
        n_in, size = self.opt.num_input_views, max(self.opt.input_size, self.opt.output_size)
        views, images = [], []
        for k, i in enumerate(ids):
            img = self._read(obj.views[i])
            while img is None and k >= n_in and spare:  # replace a bad supervision view
                i = spare.pop()
                img = self._read(obj.views[i])
            if img is None and k >= n_in:  # none left: repeat a good view
                views.append(views[-1])
                images.append(images[-1])
                continue
            if img is None:
                warnings.warn(f"object {obj.uid}: unreadable input view {obj.views[i].vid}; using another object")
                self.counts["skipped_objects"] += 1
                return None
            view = obj.views[i]
            views.append(view)
            images.append(resample_to_fov(img, view.fov[0], view.fov[1], self.opt.fovy, size))
        rgba = torch.stack(images)  # [V, 4, S, S]
        c2w = torch.stack([v.c2w for v in views])  # [V, 4, 4]
        c2w = scale_to_radius(c2w, self.opt.cam_radius)
        rng = self._generator(index, 3) if self.split == "train" else None
        item = make_item(rgba, c2w, self.opt, rng)
        item["uid"] = obj.uid
        return item

    def _read(self, view: GView) -> Optional[np.ndarray]:
        try:
            if isinstance(view.image, Path):
                return read_image(view.image)
            return read_image_bytes(view.image_bytes())
        except Exception:  # missing, truncated or corrupt file: count and skip
            self.counts["bad_views"] += 1
            return None


class GobjaverseDataset(Dataset):
    """G-Objaverse objects from folders or per-object tars (``--dataset gobjaverse``).

    split: 'train' or 'eval' (the last ``num_eval_objects`` objects). Call :meth:`set_epoch`
    every epoch (training view choice and augmentations depend on it).
    """

    def __init__(self, opt: Options, split: str = "train"):
        if not opt.data_root:
            raise GobjaverseError("--dataset gobjaverse needs --data_root ROOT (the folder holding <group>/<uid>[.tar])")
        root = Path(opt.data_root).expanduser()
        if not root.is_dir():
            raise GobjaverseError(f"data_root is not a folder: {root}")
        self.root, self.opt = root, opt
        self.items = GobjaverseItems(opt, split)
        names = list_objects(root, opt.data_list)
        sources = [_resolve(root, n) for n in names]
        missing = [n for n, s in zip(names, sources) if s is None]
        if missing:
            warnings.warn(f"{len(missing)} of {len(names)} listed objects are not under {root} (e.g. {missing[0]}); skipped")
            self.items.counts["skipped_objects"] += len(missing)
        sources = [s for s in sources if s is not None]
        if not sources:
            raise GobjaverseError(
                f"no G-Objaverse object under {root}: {len(names)} listed, none found. Expected "
                f"<group>/<uid>/{CAMPOS_DIR}/00000/00000.png with 00000.json, or <group>/<uid>.tar"
            )
        n_eval = min(opt.num_eval_objects, len(sources) - 1) if len(sources) > 1 else 0
        if split == "eval":
            self.sources = sources[len(sources) - n_eval:] if n_eval else sources[-1:]
        else:
            self.sources = sources[: len(sources) - n_eval] if n_eval else sources

    @property
    def split(self) -> str:
        return self.items.split

    @property
    def counts(self) -> dict:
        return self.items.counts

    def __len__(self) -> int:
        return len(self.sources)

    def set_epoch(self, epoch: int) -> None:
        self.items.epoch = int(epoch)

    @contextlib.contextmanager
    def object(self, index: int) -> Iterator[GObject]:
        """Object ``index`` of the split with its cameras read (images on demand, inside the block)."""
        with open_object(self.sources[index], self.items.counts) as obj:
            yield obj

    def view_ids(self, index: int) -> Optional[list[int]]:
        """G-Objaverse view numbers of sample ``index`` (this epoch): 4 inputs, then supervision views."""
        with self.object(index) as obj:
            choice = self.items.choose_views(obj, index)
            return None if choice is None else [obj.views[i].vid for i in choice[0]]

    def __getitem__(self, index: int) -> dict:
        n = len(self.sources)
        for attempt in range(n):
            i = (index + attempt) % n
            try:
                with self.object(i) as obj:
                    item = self.items.build(obj, i)
            except (OSError, tarfile.TarError) as e:
                warnings.warn(f"skipping object {self.sources[i].uid}: {e}")
                self.items.counts["skipped_objects"] += 1
                item = None
            if item is not None:
                return item
        raise GobjaverseError(f"no usable object under {self.root}: every object lacks readable orbit input views")
