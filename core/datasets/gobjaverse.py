"""G-Objaverse (G-buffer Objaverse, the RichDreamer renders of ~280k Objaverse objects), read in place.

Three layouts are read, and may be mixed under one root (each object is named ``<group>/<uid>``)::

    <root>/<group>/<uid>/00000/00000.png                what download_gobjaverse_280k.py saves
    <root>/<group>/<uid>/00000/00000.json                 (the files of the server's campos_512_v4/
    ...                 /00039/...                          folder, without that level)
    <root>/<group>/<uid>/campos_512_v4/00000/00000.png  the folder drawing of G-Objaverse's README
    <root>/<group>/<uid>.tar                            download_objaverse_280k_tar.py, read without
                                                        unpacking: members <uid>/campos_512_v4/NNNNN/...
                                                        (with or without <uid>/ and campos_512_v4/)

``NNNNN.png`` is the RGBA render (512 px, transparent background) and ``NNNNN.json`` its camera
(below); other files of a view (``_albedo.png``, ``_hdr.exr``, ``_mr.png``, ``_nd.exr``,
``_ng.exr``) and the ``.tmp`` files of an interrupted download are ignored (a view without its
``.png`` is a missing view). ``--data_list`` takes G-Objaverse's own index ``gobjaverse_280k.json``
(a JSON list of ``<group>/<uid>``) or a text file with one name per line; default: every object
under the root. Listing costs one directory listing per group and one per object folder (nothing
is opened), so 280k objects start in seconds; the training split prints the layouts found, e.g.
``[data] G-Objaverse under ROOT: 1200 objects (1100 folders <group>/<uid>/NNNNN/, 100 tars
<group>/<uid>.tar)``.

Camera JSON (the format of OpenAI's shap-e Blender script, which G-Objaverse's files follow):
``origin`` is the camera centre and ``x``, ``y``, ``z`` are the camera's axes in world
coordinates, in OpenCV convention (x right, y down, z forward = viewing direction); the world is
Blender's, z up; ``x_fov`` and ``y_fov`` are the full fields of view in radians. So the
camera-to-world matrix with columns ``[x, y, z, origin]`` is an OpenCV pose in a z-up world, which
:func:`core.cameras.blender_to_opengl` turns into ours (README, "G-Objaverse cameras", has the
derivation and a worked example).

Views: G-Objaverse's 40 views are two orbits plus extras: views 0-23 circle the object at 15-degree
steps of azimuth, at elevations that vary from view to view between 5 and 30 degrees; views 27-38
at 30-degree steps, elevations between -5 and 5 degrees; 24 and 39 repeat other views; 25 and 26
look from the top and the bottom. The 4 input views are 4 views of ONE orbit 90 degrees apart in
azimuth (:func:`orbit_quadruples`): when an object's views carry G-Objaverse's numbers (all in
0-39), the orbits are the view-number rings 0-23 and 27-38 and a quadruple is a start view plus
the views of the same ring closest to +90, +180 and +270 degrees of azimuth (within
ORBIT_TOLERANCE_DEG), whatever their elevations; with other numbers, every view looking at the
origin from below ORBIT_MAX_ELEVATION_DEG counts as one ring, and the four views' elevations must
lie within ORBIT_FALLBACK_ELEVATION_DEG of the start view's. The cameras of the chosen views,
whatever their elevations, go into the ray embedding. A training sample takes a random quadruple
(a random ring and start view, in increasing azimuth, i.e. the rotation order of our default
cameras), evaluation the first one (the one starting at view 0 on a complete object: 0, 6, 12, 18
when view numbers grow with azimuth). Supervision views
are drawn from the other views (random for training, in file order for evaluation), skipping
duplicates of the input cameras. ``--input_view_ids`` fixes the input views instead (e.g.
``0 6 12 18``). Images are resampled to the model's ``--fovy`` (G-Objaverse renders at 39.6
degrees; ``--fovy 39.6`` keeps them as they are), and each object's camera distances are scaled
to ``--cam_radius``, as in the folder dataset.

Usable objects: an object is usable when its cameras parse and it has an input quadruple (or the
``--input_view_ids`` views) and one more view. The training split checks this from the JSON files
alone (no image is decoded) for every object when there are at most USABLE_CHECK_MAX (2000) of
them, else for an evenly spaced sample of that many, and prints one line, e.g. ``[data] G-Objaverse:
1195 of 1200 objects usable (all checked ...)``; unusable ones are listed in a warning, and a root
whose objects were all checked and none is usable is a clear error.

Splits: the held-out objects are the last ``--num_eval_objects`` of the listing (or of
``--data_list``); the training split is the rest, so no object is in both. ``--num_eval_objects 0``
means no evaluation: the eval split is empty. A root with a single object trains on it and, with
``--num_eval_objects`` >= 1, also evaluates on it (with a warning: it is not held out).

Bad files: missing or unreadable views (image or JSON) are skipped and counted. In training, an
unusable object (bad tar, too few views, no input quadruple, unreadable input image) is skipped
with a warning and counted, and another object takes its place. The eval split never substitutes:
it checks its objects up front (cameras, an input quadruple, the input images readable), leaves
out the unusable ones with a warning and lists them in ``self.skipped`` as ``(uid, reason)``, so
no object is scored twice; an eval object that turns bad later is an error. A root with no object
at all is a clear error.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from core.cameras import blender_to_opengl, scale_to_radius
from core.datasets.common import DatasetError, RawFile, RawObject, make_item, sample_generator
from core.images import read_image, resample_rgba, rgba_tensor
from core.options import Options

CAMPOS_DIR = "campos_512_v4"
_VIEW_FILE = re.compile(r"(?:^|/)(\d+)/(\d+)\.(png|json)$")  # NNNNN/NNNNN.png, under any prefix
_VIEW_DIR = re.compile(r"\d+")

NUM_VIEWS = 40
"""Views per G-Objaverse object, numbered 0-39."""
ORBIT_RINGS = (tuple(range(0, 24)), tuple(range(27, 39)))
"""G-Objaverse's two orbits by view number: 0-23 (15-degree steps, elevations 5-30 degrees, varying)
and 27-38 (30-degree steps, elevations -5 to 5); 24 and 39 repeat views, 25 and 26 are top and bottom."""
ORBIT_TOLERANCE_DEG = 5.0
"""Largest azimuth error from 90-degree steps within an input quadruple (less than half the 15-degree
step, so the nearest view is always the intended one); also how far off the origin a camera may look
(other numberings)."""
ORBIT_MAX_ELEVATION_DEG = 60.0
"""Other numberings: views higher or lower than this (top and bottom views) are never input views."""
ORBIT_FALLBACK_ELEVATION_DEG = 30.0
"""Other numberings: largest elevation difference from a quadruple's start view (G-Objaverse's own
first orbit spans 25 degrees)."""
USABLE_CHECK_MAX = 2000
"""The training split checks every object's cameras when there are at most this many, else an evenly
spaced sample of this many."""

LAYOUTS = {  # layout: (what one object is, the path it has)
    "folder": ("folder", "<group>/<uid>/NNNNN/"),
    "campos": ("folder", f"<group>/<uid>/{CAMPOS_DIR}/NNNNN/"),
    "tar": ("tar", "<group>/<uid>.tar"),
}


class GobjaverseError(DatasetError):
    """A G-Objaverse root or object that cannot be used."""


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


def numbered_like_gobjaverse(vids: Optional[Sequence[int]]) -> bool:
    """Whether view numbers are G-Objaverse's own (all in 0-39, no repeats), so its orbits are known by number."""
    return vids is not None and len(set(vids)) == len(vids) and all(0 <= int(v) < NUM_VIEWS for v in vids)


def orbit_quadruples(
    c2w: Tensor, vids: Optional[Sequence[int]] = None, tol_deg: float = ORBIT_TOLERANCE_DEG
) -> list[tuple[int, int, int, int]]:
    """Every 4-tuple of views of one orbit whose azimuths are a, a+90, a+180, a+270 degrees.

    c2w: [N, 4, 4] OpenGL; vids: the N views' numbers. With G-Objaverse's numbers (all in 0-39) the
    orbits are the view-number rings ORBIT_RINGS (0-23, then 27-38) and only azimuth is checked:
    elevations may differ inside a quadruple, as they do inside G-Objaverse's first orbit. With other
    numbers (or none), every view looking at the origin (within ``tol_deg``) with ``|elevation| <``
    ORBIT_MAX_ELEVATION_DEG is on one ring, and a quadruple's elevations must lie within
    ORBIT_FALLBACK_ELEVATION_DEG of its start view's. Tuples start at each view of a ring in list
    order, rings in order; the others are the views closest to the target azimuths (with other
    numbers, closest in azimuth and elevation together; ties: the lowest index).
    -> list of index tuples into c2w.
    """
    height, azim, _ = orbit_angles(c2w)
    height, azim = height.tolist(), azim.tolist()
    if numbered_like_gobjaverse(vids):
        where = {int(v): i for i, v in enumerate(vids)}
        rings = [[where[v] for v in ring if v in where] for ring in ORBIT_RINGS]
        max_d_el = None
    else:
        dist = c2w[:, :3, 3].double().norm(dim=-1).clamp_min(1e-12)
        forward = -c2w[:, :3, 2].double()  # OpenGL cameras look along -z
        towards = -c2w[:, :3, 3].double() / dist[:, None]
        looks = ((forward * towards).sum(-1) > math.cos(math.radians(tol_deg))).tolist()
        rings = [[i for i in range(len(height)) if looks[i] and abs(height[i]) < ORBIT_MAX_ELEVATION_DEG]]
        max_d_el = ORBIT_FALLBACK_ELEVATION_DEG
    quads = []
    for ring in rings:
        for a in ring:
            chosen = [a]
            for k in (1, 2, 3):
                best, best_err = None, None
                for b in ring:
                    if b in chosen:
                        continue
                    d_az = (azim[b] - azim[a] - 90.0 * k + 180.0) % 360.0 - 180.0
                    d_el = height[b] - height[a]
                    if abs(d_az) > tol_deg or (max_d_el is not None and abs(d_el) > max_d_el):
                        continue
                    err = abs(d_az) if max_d_el is None else math.hypot(d_az, d_el)
                    if best_err is None or err < best_err:
                        best, best_err = b, err
                if best is None:
                    break
                chosen.append(best)
            if len(chosen) == 4:
                quads.append(tuple(chosen))
    return quads


# ---------------------------------------------------------------------------------- images
def resample_to_fov(img: np.ndarray, fov_x: float, fov_y: float, fovy: float, size: int) -> Tensor:
    """Re-project a pinhole image (principal point at its centre) to a square image of vertical
    and horizontal field of view ``fovy`` (degrees) and side ``size``.

    A ray at angle t off the optical axis lands at normalized image coordinate tan(t) / tan(fov / 2),
    so output pixel centres v in (-1, 1) sample the source at v * tan(fovy / 2) / tan(fov / 2):
    a wider target field of view shrinks the picture inside a transparent border, a narrower one
    crops it. Colour is resampled premultiplied by alpha (:func:`core.images.resample_rgba`:
    antialiased downscale to the picture's footprint, then bilinear ``grid_sample`` with
    ``align_corners=False``, the pixel-centre convention of ``core.cameras``). Equal fields of view
    reduce to a plain resize.

    img: [H, W, 3|4] float in [0, 1] -> rgba [4, size, size] (straight alpha; RGB 0 where alpha is 0)
    """
    t = rgba_tensor(img)  # [4, H, W]
    kx = math.tan(math.radians(fovy) / 2) / math.tan(math.radians(fov_x) / 2)
    ky = math.tan(math.radians(fovy) / 2) / math.tan(math.radians(fov_y) / 2)
    foot_w, foot_h = max(1, round(size / kx)), max(1, round(size / ky))  # the source's footprint, pixels
    h, w = t.shape[-2:]
    footprint = (min(foot_h, h), min(foot_w, w))  # never upscaled before the grid sampling
    if abs(kx - 1) < 1e-9 and abs(ky - 1) < 1e-9 and footprint == (size, size):
        return resample_rgba(t, footprint)
    v = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1  # [size] output pixel centres
    gy, gx = torch.meshgrid(v * ky, v * kx, indexing="ij")  # [size, size] each
    return resample_rgba(t, footprint, torch.stack([gx, gy], dim=-1))  # grid [size, size, 2], x first


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
    path: Path  # the folder holding the NNNNN/ view folders (<uid>/ or <uid>/campos_512_v4/), or the .tar
    layout: str  # a key of LAYOUTS: 'folder', 'campos' or 'tar'

    @property
    def is_tar(self) -> bool:
        return self.layout == "tar"


def _scan_view_files(names: Iterator[str]) -> dict[int, dict[str, str]]:
    """{view number: {'png': name, 'json': name}} from paths ending in NNNNN/NNNNN.png|json (any prefix:
    ``campos_512_v4/``, ``<uid>/``, both or none); ``_albedo.png``, ``.png.tmp`` and the like do not match."""
    views: dict[int, dict[str, str]] = {}
    for name in names:
        m = _VIEW_FILE.search(name)
        if m and int(m.group(1)) == int(m.group(2)):
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
    """An object's cameras, read now, and its images, read on demand (the tar stays open inside).
    Raises OSError or tarfile.TarError when the folder or tar cannot be read at all."""
    if not src.is_tar:
        files = _scan_view_files(str(p.relative_to(src.path)) for p in src.path.glob("*/*.*"))
        root = src.path
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


def _folder_layout(obj_dir: Path) -> Optional[tuple[Path, str]]:
    """(folder holding the NNNNN/ view folders, layout) of an object folder, from one directory
    listing; None when it holds neither ``campos_512_v4/`` nor a view folder."""
    try:
        with os.scandir(obj_dir) as it:
            entries = [(e.name, e.is_dir()) for e in it]
    except OSError:
        return None
    if any(name == CAMPOS_DIR and is_dir for name, is_dir in entries):
        return obj_dir / CAMPOS_DIR, "campos"
    if any(is_dir and _VIEW_DIR.fullmatch(name) for name, is_dir in entries):
        return obj_dir, "folder"
    return None


class _Listing:
    """Directory listings of a root, each read once: (name -> is a directory) per folder."""

    def __init__(self, root: Path):
        self.root, self._cache = root, {}

    def entries(self, rel: str) -> dict[str, bool]:
        if rel not in self._cache:
            try:
                with os.scandir(self.root / rel if rel else self.root) as it:
                    self._cache[rel] = {e.name: e.is_dir() for e in it if not e.name.startswith(".")}
            except OSError:
                self._cache[rel] = {}
        return self._cache[rel]

    def resolve(self, name: str) -> Optional[_Source]:
        """Object ``<group>/<uid>`` as a folder (either layout; preferred) or a tar; None when absent."""
        group, _, uid = name.rpartition("/")
        entries = self.entries(group)
        if entries.get(uid):
            found = _folder_layout(self.root / name)
            if found is not None:
                return _Source(name, found[0], found[1])
        if entries.get(f"{uid}.tar") is False:
            return _Source(name, self.root / f"{name}.tar", "tar")
        return None


def read_data_list(data_list: str) -> list[str]:
    """Object names from G-Objaverse's JSON list, or a text file with one ``<group>/<uid>`` per line."""
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


def find_objects(root: Path, data_list: Optional[str]) -> tuple[list[_Source], list[str]]:
    """(objects found, names listed in ``data_list`` but not found). Without a list: every
    ``<group>/<uid>/`` folder holding ``NNNNN/`` or ``campos_512_v4/``, and every ``<group>/<uid>.tar``,
    sorted by name (an object present as folder and tar is read from the folder). One directory
    listing per group and per object folder; nothing is opened."""
    listing = _Listing(root)
    if data_list:
        names = read_data_list(data_list)
        sources = [listing.resolve(n) for n in names]
        return [s for s in sources if s is not None], [n for n, s in zip(names, sources) if s is None]
    found: dict[str, _Source] = {}
    for group in sorted(g for g, is_dir in listing.entries("").items() if is_dir):
        for entry, is_dir in listing.entries(group).items():
            if is_dir:
                layout = _folder_layout(root / group / entry)
                if layout is not None:  # the folder wins over a tar of the same object
                    found[f"{group}/{entry}"] = _Source(f"{group}/{entry}", layout[0], layout[1])
            elif entry.endswith(".tar") and len(entry) > 4:
                name = f"{group}/{entry[:-4]}"
                found.setdefault(name, _Source(name, root / group / entry, "tar"))
    return [found[n] for n in sorted(found)], []


def describe_layouts(sources: Sequence[_Source]) -> str:
    """'1100 folders <group>/<uid>/NNNNN/, 100 tars <group>/<uid>.tar' (layouts present only)."""
    counts = {k: sum(s.layout == k for s in sources) for k in LAYOUTS}
    return ", ".join(f"{n} {LAYOUTS[k][0]}{'s' if n != 1 else ''} {LAYOUTS[k][1]}" for k, n in counts.items() if n)


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
        self.opt, self.split, self.epoch = opt, split, 0
        self.counts = {"bad_views": 0, "skipped_objects": 0}

    def input_candidates(self, obj: GObject) -> tuple[list[tuple[int, ...]], Optional[str]]:
        """(possible input view tuples as positions in ``obj.views``, None) or ([], why the object
        has none). From the cameras alone: no image is read."""
        n_in = self.opt.num_input_views
        if len(obj.views) < n_in + 1:
            return [], f"{len(obj.views)} usable views, need at least {n_in + 1}"
        if self.opt.input_view_ids is not None:
            where = {v.vid: i for i, v in enumerate(obj.views)}
            missing = [vid for vid in self.opt.input_view_ids if vid not in where]
            if missing:
                return [], f"input views {missing} (--input_view_ids) are missing or unreadable"
            return [tuple(where[vid] for vid in self.opt.input_view_ids)], None
        quads = orbit_quadruples(torch.stack([v.c2w for v in obj.views]), [v.vid for v in obj.views])
        if not quads:
            return [], "no 4 views of one orbit 90 degrees apart in azimuth"
        return quads, None

    def choose_views(self, obj: GObject, index: int, warn: bool = True) -> Optional[tuple[list[int], list[int]]]:
        """(chosen, spare) positions in ``obj.views``: 4 input views then ``num_views - 4``
        supervision views; spares replace unreadable supervision views. None when the object has
        no usable input views (with a warning unless ``warn`` is False)."""
        choice, why = self.select_views(obj, index)
        if choice is None and warn:
            warnings.warn(f"skipping object {obj.uid}: {why}")
        return choice

    def select_views(self, obj: GObject, index: int) -> tuple[Optional[tuple[list[int], list[int]]], Optional[str]]:
        """(:meth:`choose_views`'s (chosen, spare), None), or (None, why the object has no input views)."""
        quads, why = self.input_candidates(obj)
        if why is not None:
            return None, why
        pick = 0
        if self.split != "eval":
            pick = int(torch.randint(len(quads), (1,), generator=sample_generator(self.opt.seed, self.epoch, index, 1)))
        inputs = list(quads[pick])
        c2w = torch.stack([v.c2w for v in obj.views])  # [N, 4, 4]
        pos = c2w[:, :3, 3]
        scale = pos.norm(dim=-1).max().clamp_min(1e-6)
        rest = [i for i in range(len(obj.views)) if i not in inputs and (pos[inputs] - pos[i]).norm(dim=-1).min() > 1e-4 * scale]
        if not rest:
            rest = [i for i in range(len(obj.views)) if i not in inputs]
        if self.split == "train":
            g = sample_generator(self.opt.seed, self.epoch, index, 2)
            rest = [rest[i] for i in torch.randperm(len(rest), generator=g).tolist()]
        need = self.opt.num_views - self.opt.num_input_views
        others = (rest * (need // len(rest) + 1))[:need]  # repeat views when an object has few
        return (inputs + others, rest[need:]), None

    def make(self, obj: GObject, index: int) -> tuple[Optional[dict], Optional[str]]:
        """(the sample of ``obj``, item ``index`` of the split; None) or (None, why it has none).
        Unreadable views are counted; nothing is warned."""
        choice, why = self.select_views(obj, index)
        if choice is None:
            return None, why
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
                return None, f"input view {obj.views[i].vid:05d} cannot be read"
            view = obj.views[i]
            views.append(view)
            images.append(resample_to_fov(img, view.fov[0], view.fov[1], self.opt.fovy, size))
        rgba = torch.stack(images)  # [V, 4, S, S]
        c2w = torch.stack([v.c2w for v in views])  # [V, 4, 4]
        c2w = scale_to_radius(c2w, self.opt.cam_radius)
        rng = sample_generator(self.opt.seed, self.epoch, index, 3) if self.split == "train" else None
        item = make_item(rgba, c2w, self.opt, rng)
        item["uid"] = obj.uid
        return item, None

    def build(self, obj: GObject, index: int) -> Optional[dict]:
        """The sample of ``obj`` (item ``index`` of the split), or None, with a warning and a count,
        when it has no usable input views."""
        item, why = self.make(obj, index)
        if item is None:
            warnings.warn(f"skipping object {obj.uid}: {why}")
            self.counts["skipped_objects"] += 1
        return item

    def _read(self, view: GView) -> Optional[np.ndarray]:
        try:
            return read_image(view.image_bytes())
        except Exception:  # missing, truncated or corrupt file: count and skip
            self.counts["bad_views"] += 1
            return None


_OPEN_ERRORS = (OSError, EOFError, tarfile.TarError)  # a folder or tar that cannot be read


def _is_main_process() -> bool:
    """Rank 0 of a distributed launch (or no launch): the process that prints start-up lines."""
    return os.environ.get("RANK", "0") in ("0", "")


def _problem_list(problems: list[tuple[str, str]], limit: int = 5) -> str:
    lines = [f"  {uid}: {why}" for uid, why in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


class GobjaverseDataset(Dataset):
    """G-Objaverse objects from folders (with or without ``campos_512_v4/``) or per-object tars
    (``--dataset gobjaverse``).

    split: 'train' (every object but the held-out ones) or 'eval' (the last ``num_eval_objects``
    objects, checked up front: unusable ones are left out and listed in ``self.skipped`` as
    ``(uid, reason)``; empty with ``num_eval_objects`` 0). Call :meth:`set_epoch` every epoch
    (training view choice and augmentations depend on it). See the module doc.
    """

    def __init__(self, opt: Options, split: str = "train"):
        root = Path(opt.data_root).expanduser()  # Options checks that --dataset gobjaverse has a data_root
        if not root.is_dir():
            raise GobjaverseError(f"data_root is not a folder: {root}")
        self.root, self.opt = root, opt
        self.items = GobjaverseItems(opt, split)
        self.skipped: list[tuple[str, str]] = []
        if split == "eval" and opt.num_eval_objects <= 0:  # --num_eval_objects 0: no evaluation, nothing to list
            self.sources = []
            return
        sources, missing = find_objects(root, opt.data_list)
        if missing:
            warnings.warn(f"{len(missing)} of {len(sources) + len(missing)} listed objects are not under {root} "
                          f"(e.g. {missing[0]}); skipped")
            self.items.counts["skipped_objects"] += len(missing)
        if not sources:
            listed = f"{len(missing)} listed, none found" if opt.data_list else "none found"
            raise GobjaverseError(
                f"no G-Objaverse object under {root} ({listed}). Expected <group>/<uid>/00000/00000.png with "
                f"00000.json (as download_gobjaverse_280k.py saves them), <group>/<uid>/{CAMPOS_DIR}/00000/..., "
                f"or <group>/<uid>.tar"
            )
        announce = split == "train" and _is_main_process()
        if announce:
            print(f"[data] G-Objaverse under {root}: {len(sources)} objects ({describe_layouts(sources)})", flush=True)
        if split == "train":
            self._check_usable(sources, announce)

        n_eval = max(0, int(opt.num_eval_objects))
        if n_eval == 0:  # nothing held out (the eval split returned empty above)
            train, held_out = sources, []
        elif len(sources) == 1:  # nothing to hold out: evaluate on the training object
            train, held_out = sources, sources
            if split == "eval":
                warnings.warn(f"only one G-Objaverse object under {root} ({sources[0].uid}): it is trained on and evaluated, not held out")
        else:
            n_eval = min(n_eval, len(sources) - 1)
            train, held_out = sources[: len(sources) - n_eval], sources[len(sources) - n_eval:]
        self.sources = train if split == "train" else self._check_held_out(held_out)

    # ------------------------------------------------------------------ start-up checks
    def _check_usable(self, sources: list[_Source], announce: bool) -> None:
        """Cameras parse and an input quadruple exists (JSON files only), for every object or an
        evenly spaced sample; one line on stdout, a warning listing the unusable ones."""
        n = len(sources)
        if n <= USABLE_CHECK_MAX:
            picked = list(range(n))
            how = "all checked"
        else:
            picked = sorted({i * n // USABLE_CHECK_MAX for i in range(USABLE_CHECK_MAX)})
            how = f"checked an evenly spaced sample of {len(picked)} of the {n}"
        problems = []
        scratch = {"bad_views": 0, "skipped_objects": 0}
        for i in picked:
            try:
                with open_object(sources[i], scratch) as obj:
                    why = self.items.input_candidates(obj)[1]
            except _OPEN_ERRORS as e:
                why = f"cannot be read ({type(e).__name__}: {e})"
            if why is not None:
                problems.append((sources[i].uid, why))
        usable = len(picked) - len(problems)
        if announce:
            of = f"{usable} of {n} objects usable" if len(picked) == n else f"{usable} of {len(picked)} checked objects usable"
            print(f"[data] G-Objaverse: {of} ({how}; usable: cameras parse and 4 views of one orbit 90 degrees apart)", flush=True)
        if usable == 0 and len(picked) == n:
            raise GobjaverseError(f"no usable G-Objaverse object under {self.root}: all {n} lack readable cameras or 4 orbit "
                                  f"views 90 degrees apart:\n{_problem_list(problems)}")
        if problems:
            warnings.warn(f"G-Objaverse under {self.root}: {len(problems)} of {len(picked)} checked objects unusable "
                          f"(training skips them):\n{_problem_list(problems)}", stacklevel=3)

    def _check_held_out(self, sources: list[_Source]) -> list[_Source]:
        """Evaluation: keep the objects whose cameras parse, with an input quadruple whose images
        can be read; list the others in ``self.skipped`` (never replaced by another object)."""
        kept = []
        for src in sources:
            try:
                with open_object(src, self.items.counts) as obj:
                    choice, why = self.items.select_views(obj, len(kept))
                    if choice is not None:
                        inputs = choice[0][: self.opt.num_input_views]
                        bad = next((obj.views[i].vid for i in inputs if self.items._read(obj.views[i]) is None), None)
                        why = None if bad is None else f"input view {bad:05d} cannot be read"
            except _OPEN_ERRORS as e:
                why = f"cannot be read ({type(e).__name__}: {e})"
            if why is None:
                kept.append(src)
            else:
                self.skipped.append((src.uid, why))
        if self.skipped:
            self.items.counts["skipped_objects"] += len(self.skipped)
            warnings.warn(f"G-Objaverse evaluation: {len(self.skipped)} of {len(sources)} held-out objects are unusable and "
                          f"left out (not replaced):\n{_problem_list(self.skipped)}", stacklevel=3)
        if sources and not kept:
            raise GobjaverseError(f"none of the {len(sources)} held-out G-Objaverse objects under {self.root} is usable "
                                  f"(--num_eval_objects 0 evaluates none):\n{_problem_list(self.skipped)}")
        return kept

    # ------------------------------------------------------------------ access
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

    def raw_object(self, index: int) -> Optional[RawObject]:
        """Object ``index`` as a shard stores it: its cameras and image files byte for byte; None,
        with a warning, when its files cannot be opened at all (the dataset would skip it too)."""
        try:
            with self.object(index) as obj:
                names = [f"{v.vid:05d}.png" for v in obj.views]
                images = [v.image_bytes() for v in obj.views]
        except Exception as e:  # a broken tar or folder
            warnings.warn(f"skipping object {self.sources[index].uid}: {e}")
            return None
        arrays = {"cams": torch.stack([v.c2w for v in obj.views]).numpy().astype(np.float32),
                  "fovs": np.array([v.fov for v in obj.views], dtype=np.float32)}
        files = [RawFile(name, data, f"{obj.uid} view {name}") for name, data in zip(names, images)]
        return RawObject(dict(source="gobjaverse", uid=obj.uid, images=names, vids=[v.vid for v in obj.views]), arrays, files)

    def _make(self, index: int) -> tuple[Optional[dict], Optional[str]]:
        try:
            with self.object(index) as obj:
                return self.items.make(obj, index)
        except _OPEN_ERRORS as e:
            return None, f"cannot be read ({type(e).__name__}: {e})"

    def __getitem__(self, index: int) -> dict:
        if self.split == "eval":  # never another object in its place: its scores carry this uid
            item, why = self._make(index)
            if item is None:
                raise GobjaverseError(f"held-out object {self.sources[index].uid} became unusable after the start-up check: {why}")
            return item
        n = len(self.sources)
        for attempt in range(n):
            i = (index + attempt) % n
            item, why = self._make(i)
            if item is not None:
                return item
            warnings.warn(f"skipping object {self.sources[i].uid}: {why}; another object takes its place")
            self.items.counts["skipped_objects"] += 1
        raise GobjaverseError(f"no usable object under {self.root}: every object lacks readable orbit input views")
