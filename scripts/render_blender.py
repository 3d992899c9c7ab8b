"""Render meshes with Blender into the folder-of-renders layout that training reads.

Run it with the ``bpy`` package (Blender as a Python module, Python 3.11, pins numpy<2, so give it
its own venv) or with a Blender install::

    python3.11 -m venv .venv-blender && .venv-blender/bin/pip install -r requirements-blender.txt
    .venv-blender/bin/python scripts/render_blender.py meshes/ --output data/renders
    blender -b -P scripts/render_blender.py -- meshes/ --output data/renders

Inputs are mesh files (.glb .gltf .obj .ply .fbx), folders (searched recursively for those) or
.txt list files (one path per line; relative paths are relative to the list file; # comments).

Output, one folder per object (uid = file stem, made unique with _1, _2, ... in input order)::

    <output>/uids.txt                 one uid per line, appended when an object is complete
    <output>/<uid>/rgb/<NNN>.png      RGBA, transparent background, NNN = 000, 001, ...
    <output>/<uid>/pose/<NNN>.txt     4x4 camera-to-world, row-major (4 lines of 4 floats),
                                      BLENDER world axes (z up) and OPENCV camera axes
                                      (x right, y down, looking along +z)
    <output>/<uid>/meta.json          fovy, resolution, radius, normalisation, engine, views

Conventions (docs/design.md): a Blender world point (x, y, z) is (x, z, -y) in our y-up world, so
``core.cameras.blender_to_opengl(pose)`` turns a pose file into our OpenGL camera-to-world.
glTF files are y-up and the importer maps their +y to Blender +z and their +z to Blender -y, so a
glTF object's own axes are exactly our world axes (OBJ is read as y-up too, PLY as z-up; --up-axis
overrides both). Each object is scaled and translated (no rotation) so that its bounding box is
centred at the origin and its longest side is --bbox-size:
``p_normalised = scale * p_imported + offset`` (Blender axes; recorded in meta.json).
The defaults (bbox 1, radius 1.5, fovy 49.1 = a 35 mm lens on a 32 mm sensor) are the usual
Objaverse rendering setup of zero123 and LGM: a sphere of radius 1.5 sin(fovy / 2) = 0.62 stays
in view, so most objects fit, but the corners of a unit cube (0.87 from the centre) can leave it.

Cameras look at the origin from --radius, with the vertical field of view --fovy (Options:
fovy=49.1, cam_radius=1.5). Elevation and azimuth follow ``core.cameras.orbit_camera`` (kiui/LGM):
azimuth 0 sits at our +z (Blender -y) and azimuth 90 at +x; *negative* elevation is above the
object. Views, in file order:

1. the orbit rings, one per --ring-elevations entry (the first --num-orbit-rings of them), each
   with --views-per-ring azimuths evenly spaced from 0. When --views-per-ring is a multiple of 4
   the azimuths of a ring are ordered 0, 90, 180, 270 first (then the in-between ones), so with
   the default first ring at elevation 0, views 000-003 are exactly LGM's 4 input cameras.
2. --num-random views uniform on the sphere band |elevation| <= --random-max-elevation, drawn
   from a generator seeded with --seed and the uid (reproducible per object).

Lighting is a uniform white world (environment) light of --light-strength with the Standard view
transform, so a diffuse surface facing open space renders at about its albedo; imported lights
and cameras are removed. Engine: Cycles (CPU, or a GPU that Cycles finds with --device auto/gpu)
or EEVEE (needs a GPU/display context in background mode).

An interrupted run continues where it stopped: objects whose views are all present are skipped,
missing views of a partly rendered object are rendered (each PNG and pose is written to a temp
file and renamed), and a uid is appended to uids.txt only when its object is complete. More views
(e.g. a larger --num-random) are added to finished objects; other changed settings are refused
unless --overwrite. Objects that fail (unreadable file, no faces, every view empty, ...) are
reported and skipped; the exit code is non-zero when every object failed (or no input was found).
meta.json also records per view the fraction of pixels with alpha > 0.5 ("coverage"), handy to
filter objects. --shard I/N splits the inputs between processes writing to the same output.

This file must stay standalone (no imports from ``core``): Blender's own Python runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
import traceback
from pathlib import Path

MESH_EXTENSIONS = (".glb", ".gltf", ".obj", ".ply", ".fbx")
ENGINE_ALIASES = {
    "CYCLES": ("CYCLES",),
    "EEVEE": ("BLENDER_EEVEE_NEXT", "BLENDER_EEVEE"),  # EEVEE Next was BLENDER_EEVEE_NEXT in 4.2-4.5
    "BLENDER_EEVEE": ("BLENDER_EEVEE", "BLENDER_EEVEE_NEXT"),
    "BLENDER_EEVEE_NEXT": ("BLENDER_EEVEE_NEXT", "BLENDER_EEVEE"),
}
GPU_BACKENDS = ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL")
# Settings that change the pixels or the poses: an object rendered with other values is not resumed
# (the views may grow or shrink at the end, e.g. a larger --num-random adds views to finished objects).
GEOMETRY_KEYS = ("resolution", "fovy", "radius", "bbox_size")

BPY_MISSING = """\
render_blender.py needs Blender's Python module `bpy`, which this interpreter does not have:
  {python}

Either install the bpy package (Python 3.11 only; it pins numpy<2, so use a separate venv):
  python3.11 -m venv .venv-blender
  .venv-blender/bin/pip install -r requirements-blender.txt
  .venv-blender/bin/python scripts/render_blender.py MESHES... --output DIR

or run the script inside a Blender install (arguments after --):
  blender -b -P scripts/render_blender.py -- MESHES... --output DIR
"""


class RenderError(RuntimeError):
    """An object that cannot be rendered (reported and skipped); ``detail`` is shown with --verbose."""

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = detail


# ----------------------------------------------------------------------------- arguments


def script_argv(argv: list[str] | None = None) -> list[str]:
    """The script's own arguments: everything after '--' (Blender's convention), else argv[1:]."""
    argv = sys.argv if argv is None else argv
    if "--" in argv:
        return argv[argv.index("--") + 1 :]
    return argv[1:]


def float_list(text: str) -> list[float]:
    return [float(x) for x in text.replace(" ", "").split(",") if x]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="render_blender.py",
        description="Render meshes into <output>/<uid>/rgb/NNN.png + pose/NNN.txt (+ meta.json, uids.txt).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", help="mesh files (.glb .gltf .obj .ply .fbx), folders or .txt lists")
    p.add_argument("--output", "-o", required=True, help="output root")
    p.add_argument("--resolution", type=int, default=512, help="image side (pixels)")
    p.add_argument("--fovy", type=float, default=49.1, help="vertical field of view (degrees), Options.fovy")
    p.add_argument("--radius", type=float, default=1.5, help="camera distance from the origin, Options.cam_radius")
    p.add_argument("--bbox-size", type=float, default=1.0, help="longest side of the normalised bounding box")
    p.add_argument(
        "--ring-elevations",
        type=float_list,
        default=[0.0, -30.0, 30.0],
        help="elevations of the orbit rings (degrees, negative = above the object), comma-separated",
    )
    p.add_argument(
        "--num-orbit-rings", type=int, default=None, help="use only the first N of --ring-elevations (None: all)"
    )
    p.add_argument("--views-per-ring", type=int, default=8, help="evenly spaced azimuths per ring")
    p.add_argument("--num-random", type=int, default=8, help="extra views at random points of the sphere")
    p.add_argument("--random-max-elevation", type=float, default=60.0, help="|elevation| bound of the random views")
    p.add_argument(
        "--up-axis", choices=("auto", "y", "z"), default="auto", type=str.lower,
        help="up axis of OBJ/PLY files (auto: Blender's default, y for OBJ, z for PLY); glTF is y-up, FBX says it",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random views (combined with the uid)")
    p.add_argument("--engine", default="CYCLES", help="CYCLES, or BLENDER_EEVEE / BLENDER_EEVEE_NEXT / EEVEE")
    p.add_argument(
        "--device", choices=("auto", "cpu", "gpu"), default="auto", type=str.lower,
        help="Cycles device: auto and gpu use a GPU when Cycles finds one (gpu warns if none), else the CPU",
    )
    p.add_argument("--samples", type=int, default=32, help="samples per pixel (Cycles) / TAA samples (EEVEE)")
    p.add_argument("--denoise", action="store_true", help="Cycles denoising (slower on CPU)")
    p.add_argument("--light-strength", type=float, default=1.0, help="strength of the uniform white world light")
    p.add_argument("--threads", type=int, default=0, help="render threads (0 = all cores)")
    p.add_argument("--shard", default="0/1", help="render only shard I of N of the inputs, e.g. 2/8")
    p.add_argument("--overwrite", action="store_true", help="re-render objects that already exist")
    p.add_argument("--verbose", action="store_true", help="keep Blender's own output (render progress, importer logs)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    own = script_argv(argv)
    # "--ring-elevations -20,0,20" would read as an unknown option to argparse: glue the value on.
    for i in range(len(own) - 1, 0, -1):
        if own[i - 1] == "--ring-elevations" and own[i].startswith("-"):
            own[i - 1 : i + 1] = [f"--ring-elevations={own[i]}"]
    args = parser.parse_args(own)
    if args.num_orbit_rings is None:
        args.num_orbit_rings = len(args.ring_elevations)
    if not 0 <= args.num_orbit_rings <= len(args.ring_elevations):
        parser.error(f"--num-orbit-rings {args.num_orbit_rings}: between 0 and {len(args.ring_elevations)} "
                     f"(the number of --ring-elevations)")
    args.ring_elevations = args.ring_elevations[: args.num_orbit_rings]
    if args.num_orbit_rings * args.views_per_ring + args.num_random <= 0:
        parser.error("no views: set --num-orbit-rings/--views-per-ring or --num-random")
    if args.num_orbit_rings * args.views_per_ring + args.num_random > 1000:
        parser.error("at most 1000 views per object (file names have 3 digits)")
    for name in ("resolution", "fovy", "radius", "bbox_size"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.engine.upper() not in ENGINE_ALIASES:
        parser.error(f"--engine {args.engine}: use one of {', '.join(ENGINE_ALIASES)}")
    for name in ("views_per_ring", "num_random", "samples", "threads"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    try:
        index, count = (int(x) for x in args.shard.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        parser.error(f"--shard {args.shard}: expected I/N with 0 <= I < N")
    args.shard_index, args.shard_count = index, count
    return args


# ----------------------------------------------------------------------------- inputs


def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Mesh files from files, folders (recursive, sorted) and .txt lists. -> (files, problems)"""
    files: list[Path] = []
    problems: list[str] = []

    def add(path: Path, origin: str) -> None:
        if path.is_dir():
            found = sorted(q for q in path.rglob("*") if q.suffix.lower() in MESH_EXTENSIONS and q.is_file())
            if not found:
                problems.append(f"{path}: folder holds no {'/'.join(MESH_EXTENSIONS)} file")
            files.extend(found)
        elif path.suffix.lower() == ".txt" and origin == "argument":
            if not path.is_file():
                problems.append(f"{path}: list file not found")
                return
            for line in path.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    entry = Path(line).expanduser()
                    add(entry if entry.is_absolute() else path.parent / entry, f"list {path}")
        elif path.suffix.lower() in MESH_EXTENSIONS:
            files.append(path)  # a missing file fails later, reported like any broken object
        else:
            problems.append(f"{path} ({origin}): not a folder, .txt list or {'/'.join(MESH_EXTENSIONS)} file")

    for item in inputs:
        add(Path(item).expanduser(), "argument")
    return files, problems


def assign_uids(files: list[Path]) -> list[tuple[str, Path]]:
    """uid = file stem; repeated stems get _1, _2, ... in input order (stable across reruns)."""
    seen: set[str] = set()
    out = []
    for path in files:
        uid, k = path.stem, 0
        while uid in seen:
            k += 1
            uid = f"{path.stem}_{k}"
        seen.add(uid)
        out.append((uid, path))
    return out


# ----------------------------------------------------------------------------- cameras (pure Python)


def ring_azimuths(n: int) -> list[float]:
    """n evenly spaced azimuths from 0; for n % 4 == 0 ordered 0, 90, 180, 270 first, then the rest
    in the same interleaved way (8 -> 0 90 180 270 45 135 225 315)."""
    if n % 4:
        return [360.0 * k / n for k in range(n)]
    quarter = n // 4
    return [360.0 * (offset + j * quarter) / n for offset in range(quarter) for j in range(4)]


def view_list(args: argparse.Namespace, uid: str) -> list[dict]:
    """The cameras of one object, in file order: [{'kind', 'elevation', 'azimuth'}] (degrees)."""
    views = []
    for elevation in args.ring_elevations:
        for azimuth in ring_azimuths(args.views_per_ring):
            views.append({"kind": "ring", "elevation": float(elevation), "azimuth": azimuth})
    rng = random.Random(f"{args.seed}/{uid}")
    bound = math.sin(math.radians(args.random_max_elevation))
    for _ in range(args.num_random):
        elevation = math.degrees(math.asin(rng.uniform(-bound, bound)))  # area-uniform on the band
        views.append({"kind": "random", "elevation": round(elevation, 6), "azimuth": round(rng.uniform(0, 360), 6)})
    return views


def _normalize(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _cross(a: list[float], b: list[float]) -> list[float]:
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def blender_camera_pose(elevation: float, azimuth: float, radius: float) -> list[list[float]]:
    """Camera-to-world looking at the origin, Blender world axes + OpenCV camera axes. -> 4x4 rows.

    Our orbit position (r cos e sin a, -r sin e, r cos e cos a) is, in Blender axes
    (x, y, z) = (x_ours, -z_ours, y_ours), (r cos e sin a, -r cos e cos a, -r sin e). The rotation
    is ``core.cameras.look_at`` with Blender's up (+z): right = up x back, up' = back x right,
    and a camera straight above or below gets right = +x.
    """
    e, a = math.radians(elevation), math.radians(azimuth)
    pos = [radius * math.cos(e) * math.sin(a), -radius * math.cos(e) * math.cos(a), -radius * math.sin(e)]
    back = _normalize(pos)  # OpenGL camera +z points away from the target
    right = _cross([0.0, 0.0, 1.0], back)
    right = _normalize(right) if math.sqrt(sum(x * x for x in right)) > 1e-6 else [1.0, 0.0, 0.0]
    up = _normalize(_cross(back, right))
    x_cv, y_cv, z_cv = right, [-u for u in up], [-b for b in back]  # OpenCV: x right, y down, z forward
    return [
        [x_cv[0], y_cv[0], z_cv[0], pos[0]],
        [x_cv[1], y_cv[1], z_cv[1], pos[1]],
        [x_cv[2], y_cv[2], z_cv[2], pos[2]],
        [0.0, 0.0, 0.0, 1.0],
    ]


def flip_camera_yz(pose: list[list[float]]) -> list[list[float]]:
    """OpenCV <-> OpenGL camera axes: negate columns 1 and 2 of the 3x3 rotation."""
    return [[row[0], -row[1], -row[2], row[3]] if i < 3 else list(row) for i, row in enumerate(pose)]


def format_pose(pose: list[list[float]]) -> str:
    return "".join(" ".join(f"{round(x, 8) + 0.0:.8f}" for x in row) + "\n" for row in pose)  # no "-0.0"


def last_error_line(text: str) -> str:
    """The telling line of an importer error: Blender wraps Python tracebacks of addons in
    'Error: Python: Traceback ... Location: ...'; keep the exception line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("Location:")]
    if "Traceback (most recent call last)" in text and lines:
        return f"{lines[-1]} (an importer bug; --verbose shows the traceback)"
    return " ".join(lines)


# ----------------------------------------------------------------------------- files


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def view_paths(obj_dir: Path, index: int) -> tuple[Path, Path]:
    return obj_dir / "rgb" / f"{index:03d}.png", obj_dir / "pose" / f"{index:03d}.txt"


def read_meta(obj_dir: Path) -> dict | None:
    try:
        return json.loads((obj_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def settings_of(args: argparse.Namespace, views: list[dict]) -> dict:
    return {
        "resolution": args.resolution,
        "fovy": args.fovy,
        "radius": args.radius,
        "bbox_size": args.bbox_size,
        "views": views,
    }


def same_settings(meta: dict, settings: dict) -> bool:
    """Whether views rendered under ``meta`` can be kept: same geometry, one view list a prefix of the other."""
    old, new = meta.get("views") or [], settings["views"]
    n = min(len(old), len(new))
    return all(meta.get(k) == settings[k] for k in GEOMETRY_KEYS) and old[:n] == new[:n]


def missing_views(obj_dir: Path, n_views: int) -> list[int]:
    return [i for i in range(n_views) if not all(p.is_file() for p in view_paths(obj_dir, i))]


class UidList:
    """<output>/uids.txt, appended one line per completed object (O_APPEND: safe across shards)."""

    def __init__(self, path: Path):
        self.path = path
        self.uids: set[str] = set()
        if path.is_file():
            text = path.read_text()
            if text and not text.endswith("\n"):  # a line cut by a crash: drop it, it is re-checked
                text = text[: text.rfind("\n") + 1]
                atomic_write_text(path, text)
            self.uids = {line.strip() for line in text.splitlines() if line.strip()}
        else:
            path.touch()  # the list exists (maybe empty) from the start

    def add(self, uid: str) -> None:
        if uid not in self.uids:
            with open(self.path, "a") as f:
                f.write(uid + "\n")
            self.uids.add(uid)


@contextlib.contextmanager
def quiet_stdout(enabled: bool = True, fds: tuple[int, ...] = (1,)):
    """Silence C-level output on ``fds`` (Blender prints render progress on stdout; importers print
    their tracebacks on stderr, but their errors also reach us as exceptions)."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(devnull, fd)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip(fds, saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


class Progress:
    """tqdm over views when importable, plus one line per object (the only output without tqdm)."""

    def __init__(self, total_views: int, n_objects: int):
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total_views, unit="view", dynamic_ncols=True, file=sys.stderr)
        except ImportError:
            self.bar = None
        self.n_objects, self.done = n_objects, 0
        self.uid, self.left = "", 0

    def start(self, uid: str, n_views: int) -> None:
        self.uid, self.left = uid, n_views
        if self.bar is not None:
            self.bar.set_postfix_str(uid[:24])

    def step(self, n: int = 1) -> None:
        self.left -= n
        if self.bar is not None:
            self.bar.update(n)

    def finish(self, status: str) -> None:
        self.step(self.left)  # skipped and failed views count as done for the ETA
        self.done += 1
        line = f"[{self.done}/{self.n_objects}] {self.uid}: {status}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- Blender


class BlenderRenderer:
    """Owns the bpy scene: reset, import, normalise, set up camera/light/engine, render views."""

    def __init__(self, args: argparse.Namespace):
        import bpy  # noqa: F401  (checked by main)

        self.bpy = bpy
        self.args = args
        self.engine = None
        self.device = "CPU"
        self.gpu_backend = None
        if args.engine.upper() == "CYCLES" and args.device != "cpu":
            self.gpu_backend = self._find_gpu()
            if self.gpu_backend is None and args.device == "gpu":
                print("warning: --device gpu but Cycles found no GPU; rendering on the CPU", file=sys.stderr)
            self.device = "GPU" if self.gpu_backend else "CPU"

    @property
    def device_label(self) -> str:
        if self.engine != "CYCLES":
            return "OpenGL"  # EEVEE rasterises through OpenGL/EGL (software EGL when there is no GPU)
        return f"GPU ({self.gpu_backend})" if self.gpu_backend else "CPU"

    def _find_gpu(self) -> str | None:
        try:
            prefs = self.bpy.context.preferences.addons["cycles"].preferences
        except KeyError:
            return None
        for backend in GPU_BACKENDS:
            try:
                prefs.compute_device_type = backend
            except TypeError:  # backend not built into this Blender
                continue
            with quiet_stdout(not self.args.verbose):
                prefs.get_devices()
            gpus = [d for d in prefs.devices if d.type == backend]
            if gpus:
                for d in prefs.devices:
                    d.use = d.type == backend
                return backend
        prefs.compute_device_type = "NONE"
        return None

    # -- scene

    def reset(self) -> None:
        # read_homefile keeps the preferences (GPU choice); factory startup ignores user files.
        self.bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)

    def import_mesh(self, path: Path) -> None:
        ops = self.bpy.ops
        ext = path.suffix.lower()
        if not path.is_file():
            raise RenderError(f"file not found: {path}")
        if ext in (".glb", ".gltf"):
            op = ops.import_scene.gltf  # glTF is y-up by specification
        elif ext in (".obj", ".ply"):
            new_name = "obj_import" if ext == ".obj" else "ply_import"  # C++ importers: Blender >= 3.2 / 4.0
            old_op = ops.import_scene.obj if ext == ".obj" else ops.import_mesh.ply
            op = getattr(ops.wm, new_name) if new_name in dir(ops.wm) else old_op  # (hasattr is always True)
        elif ext == ".fbx":
            op = ops.import_scene.fbx
            self._patch_fbx_light_import()
        else:
            raise RenderError(f"unsupported extension {ext}")
        try:
            result = op(filepath=str(path))
        except RuntimeError as e:  # importers report errors (and their own crashes) this way
            raise RenderError(f"import failed: {last_error_line(str(e))}", detail=str(e)) from None
        if "FINISHED" not in result:
            raise RenderError(f"import returned {sorted(result)}")
        # Imported lights and cameras would break the even lighting / our camera.
        for obj in list(self.bpy.data.objects):
            if obj.type in ("LIGHT", "CAMERA"):
                for child in obj.children:  # keep what hangs below them where it is
                    world = child.matrix_world.copy()
                    child.parent = None
                    child.matrix_world = world
                self.bpy.data.objects.remove(obj, do_unlink=True)
        # --up-axis: Blender's importers read OBJ as y-up and PLY as z-up (every version); turn the
        # other case upright ourselves, the same way for the old and the new importers.
        angle = {(".obj", "z"): -90.0, (".ply", "y"): 90.0}.get((ext, self.args.up_axis))
        if angle is not None:
            from mathutils import Matrix

            rotation = Matrix.Rotation(math.radians(angle), 4, "X")  # +90: file +y -> Blender +z
            for obj in self.bpy.context.scene.objects:
                if obj.parent is None:
                    obj.matrix_world = rotation @ obj.matrix_world

    def _patch_fbx_light_import(self) -> None:
        """Blender 5.0's FBX importer sets ``light.cycles.cast_shadow``, which Cycles no longer has,
        and fails on every FBX file with a light. Give the property back (the lights are deleted
        after import anyway)."""
        light = self.bpy.data.lights.new("probe", "POINT")
        settings = getattr(light, "cycles", None)
        if settings is not None and "cast_shadow" not in settings.bl_rna.properties:
            type(settings).cast_shadow = self.bpy.props.BoolProperty(name="Cast Shadow", default=True)
        self.bpy.data.lights.remove(light)

    def bounding_box(self) -> tuple[list[float], list[float]]:
        """World-space bounds of every rendered mesh vertex (modifiers, skinning and instances
        included). -> (min xyz, max xyz)"""
        import numpy as np

        bpy = self.bpy
        bpy.context.view_layer.update()
        depsgraph = bpy.context.evaluated_depsgraph_get()
        lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
        cache: dict[str, np.ndarray] = {}
        n_faces = 0
        for inst in depsgraph.object_instances:
            obj = inst.object
            if obj.type != "MESH" or obj.original.hide_render:
                continue
            key = obj.name
            if key not in cache:
                mesh = obj.to_mesh()
                co = np.empty(len(mesh.vertices) * 3, dtype=np.float64)
                mesh.vertices.foreach_get("co", co)
                n_faces += len(mesh.polygons)
                obj.to_mesh_clear()
                cache[key] = co.reshape(-1, 3)  # [n, 3] object space
            co = cache[key]
            if not len(co):
                continue
            m = np.array(inst.matrix_world.copy())  # [4, 4]
            world = co @ m[:3, :3].T + m[:3, 3]  # [n, 3]
            lo, hi = np.minimum(lo, world.min(0)), np.maximum(hi, world.max(0))
        if not np.all(np.isfinite(lo)) or not np.all(np.isfinite(hi)):
            raise RenderError("no mesh geometry after import (or non-finite vertices)")
        if n_faces == 0:
            raise RenderError("the meshes have no faces (a point cloud or lines only)")
        return lo.tolist(), hi.tolist()

    def normalise(self) -> dict:
        """Scale and translate every root object so the bounds are centred with longest side
        --bbox-size. -> {'scale', 'offset', 'bbox_min', 'bbox_max'} (imported bounds)"""
        from mathutils import Matrix, Vector

        lo, hi = self.bounding_box()
        extent = max(h - l for h, l in zip(hi, lo))
        if not extent > 0:
            raise RenderError(f"degenerate geometry: bounding box {lo} .. {hi}")
        scale = self.args.bbox_size / extent
        offset = [-scale * (h + l) / 2 for h, l in zip(hi, lo)]
        transform = Matrix.Translation(Vector(offset)) @ Matrix.Scale(scale, 4)
        for obj in self.bpy.context.scene.objects:
            if obj.parent is None:
                obj.matrix_world = transform @ obj.matrix_world
        self.bpy.context.view_layer.update()
        return {"scale": scale, "offset": offset, "bbox_min": lo, "bbox_max": hi}

    def setup_scene(self) -> None:
        bpy, args = self.bpy, self.args
        scene = bpy.context.scene
        self.engine = self._set_engine(scene, args.engine.upper())
        render = scene.render
        render.resolution_x = render.resolution_y = args.resolution
        render.resolution_percentage = 100
        render.pixel_aspect_x = render.pixel_aspect_y = 1.0
        render.film_transparent = True
        render.use_file_extension = False
        render.image_settings.file_format = "PNG"
        render.image_settings.color_mode = "RGBA"
        render.image_settings.color_depth = "8"
        render.image_settings.compression = 15
        render.threads_mode = "FIXED" if args.threads > 0 else "AUTO"
        if args.threads > 0:
            render.threads = args.threads
        scene.display_settings.display_device = "sRGB"
        scene.view_settings.view_transform = "Standard"
        scene.view_settings.look = "None"
        scene.view_settings.exposure = 0.0
        scene.view_settings.gamma = 1.0

        if self.engine == "CYCLES":
            cycles = scene.cycles
            cycles.device = self.device
            cycles.samples = args.samples
            cycles.use_adaptive_sampling = True
            cycles.use_denoising = args.denoise
            cycles.seed = args.seed
            cycles.max_bounces = 4
            cycles.diffuse_bounces = 2
            cycles.glossy_bounces = 2
            cycles.transmission_bounces = 4
            cycles.transparent_max_bounces = 16
            cycles.caustics_reflective = cycles.caustics_refractive = False
        else:
            scene.eevee.taa_render_samples = args.samples

        world = bpy.data.worlds.new("uniform_light")
        if world.node_tree is None:  # Blender < 5 creates worlds without nodes
            world.use_nodes = True
        background = next(n for n in world.node_tree.nodes if n.type == "BACKGROUND")
        background.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
        background.inputs["Strength"].default_value = args.light_strength
        scene.world = world

        cam_data = bpy.data.cameras.new("camera")
        cam_data.sensor_fit = "VERTICAL"
        cam_data.angle_y = math.radians(args.fovy)
        cam_data.shift_x = cam_data.shift_y = 0.0
        cam_data.clip_start = 0.01
        cam_data.clip_end = 100.0
        self.camera = bpy.data.objects.new("camera", cam_data)
        scene.collection.objects.link(self.camera)
        scene.camera = self.camera

    def _set_engine(self, scene, name: str) -> str:
        for candidate in ENGINE_ALIASES[name]:
            try:
                scene.render.engine = candidate
                return candidate
            except TypeError:
                continue
        raise RenderError(f"engine {name} is not available in this Blender")

    def render_view(self, view: dict, png: Path, pose_path: Path) -> float:
        """Place the camera, render, write the PNG and the pose (each atomically).
        -> coverage: the fraction of pixels with alpha > 0.5"""
        import numpy as np
        from mathutils import Matrix

        bpy, args = self.bpy, self.args
        pose_cv = blender_camera_pose(view["elevation"], view["azimuth"], args.radius)
        self.camera.matrix_world = Matrix(flip_camera_yz(pose_cv))  # Blender cameras use OpenGL axes
        bpy.context.view_layer.update()
        written = flip_camera_yz([list(row) for row in self.camera.matrix_world])  # what Blender used
        tmp = png.with_name(f".{png.name}.tmp")  # not *.png: readers globbing rgb/*.png never see it
        bpy.context.scene.render.filepath = str(tmp)
        with quiet_stdout(not args.verbose):
            bpy.ops.render.render(write_still=True)
        if not tmp.is_file():
            raise RenderError(f"Blender wrote no image for view {png.stem}")
        image = bpy.data.images.load(str(tmp))
        pixels = np.empty(image.size[0] * image.size[1] * 4, dtype=np.float32)
        image.pixels.foreach_get(pixels)
        bpy.data.images.remove(image)
        coverage = float((pixels[3::4] > 0.5).mean())
        atomic_write_text(pose_path, format_pose(written))
        os.replace(tmp, png)
        return coverage


# ----------------------------------------------------------------------------- main loop


def render_object(renderer: BlenderRenderer, uid: str, path: Path, obj_dir: Path, views: list[dict],
                  progress: Progress) -> tuple[int, float]:
    """Import, normalise and render the missing views of one object. -> (views rendered, seconds)"""
    args = renderer.args
    settings = settings_of(args, views)
    meta = read_meta(obj_dir)
    todo = list(range(len(views)))
    coverage: list[float | None] = [None] * len(views)
    if meta is not None and same_settings(meta, settings) and not args.overwrite:
        todo = missing_views(obj_dir, len(views))
        old = meta.get("coverage") if isinstance(meta.get("coverage"), list) else []
        coverage = [old[i] if i < len(old) and i not in todo else None for i in range(len(views))]
    elif meta is not None and not args.overwrite:
        raise RenderError(f"{obj_dir} was rendered with other settings (resolution, fovy, radius, bbox size "
                          "or views); use another --output or --overwrite")

    t_import = time.perf_counter()
    renderer.reset()
    with quiet_stdout(not args.verbose, fds=(1, 2)):
        renderer.import_mesh(path)
    normalisation = renderer.normalise()
    renderer.setup_scene()
    t_import = time.perf_counter() - t_import

    for sub in ("rgb", "pose"):
        if args.overwrite and (obj_dir / sub).is_dir():
            shutil.rmtree(obj_dir / sub)  # no stale views of an earlier, different rendering
        (obj_dir / sub).mkdir(parents=True, exist_ok=True)
    meta = {
        "uid": uid,
        "source": str(path.resolve()),
        **settings_of(args, views),
        "fovy_axis": "vertical",
        "normalisation": {
            **normalisation,
            "formula": "p_normalised = scale * p_imported + offset (Blender world axes, after import)",
        },
        "pose_convention": "camera-to-world, row-major 4x4; Blender world axes (z up); OpenCV camera axes "
                           "(x right, y down, looking along +z); core.cameras.blender_to_opengl converts",
        "angle_convention": "degrees; core.cameras.orbit_camera: azimuth 0 at our +z (Blender -y), "
                            "negative elevation above",
        "engine": renderer.engine,
        "device": renderer.device_label,
        "samples": args.samples,
        "denoise": args.denoise,
        "light_strength": args.light_strength,
        "seed": args.seed,
        "blender_version": renderer.bpy.app.version_string,
        "complete": False,
        "coverage": coverage,  # per view: fraction of pixels with alpha > 0.5 (None: not measured)
    }
    atomic_write_text(obj_dir / "meta.json", json.dumps(meta, indent=1))

    t_render = time.perf_counter()
    for i in todo:
        png, pose_path = view_paths(obj_dir, i)
        coverage[i] = round(renderer.render_view(views[i], png, pose_path), 6)
        progress.step()
    t_render = time.perf_counter() - t_render
    if all(c == 0 for c in coverage):  # all measured, all empty: nothing usable to keep
        shutil.rmtree(obj_dir)
        raise RenderError("every view is empty (fully transparent materials?)")
    meta["complete"] = True
    meta["timing"] = {"import_seconds": round(t_import, 3), "views_rendered": len(todo),
                      "seconds_per_view": round(t_render / max(len(todo), 1), 3)}
    atomic_write_text(obj_dir / "meta.json", json.dumps(meta, indent=1))
    return len(todo), t_render


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import bpy  # noqa: F401
    except ImportError:
        print(BPY_MISSING.format(python=sys.executable), file=sys.stderr)
        return 2

    files, problems = collect_inputs(args.inputs)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    objects = assign_uids(files)[args.shard_index :: args.shard_count]
    if not objects:
        print("error: no mesh file found in the inputs", file=sys.stderr)
        return 1
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    uid_list = UidList(output / "uids.txt")

    renderer = BlenderRenderer(args)
    plans = [(uid, path, view_list(args, uid)) for uid, path in objects]
    progress = Progress(sum(len(v) for _, _, v in plans), len(plans))
    rendered, skipped, failures = 0, 0, []
    views_done, render_seconds = 0, 0.0
    try:
        for uid, path, views in plans:
            obj_dir = output / uid
            progress.start(uid, len(views))
            meta = read_meta(obj_dir)
            if (not args.overwrite and meta is not None and meta.get("complete")
                    and same_settings(meta, settings_of(args, views)) and not missing_views(obj_dir, len(views))):
                if meta.get("source") != str(path.resolve()):
                    print(f"warning: {uid} was rendered from {meta.get('source')}, not {path}", file=sys.stderr)
                uid_list.add(uid)
                skipped += 1
                progress.finish("complete, skipped")
                continue
            try:
                n, seconds = render_object(renderer, uid, path, obj_dir, views, progress)
            except Exception as e:  # noqa: BLE001  (one broken object must not stop the run)
                message = str(e) if isinstance(e, RenderError) else f"{type(e).__name__}: {e}"
                if args.verbose:
                    print(getattr(e, "detail", None) or traceback.format_exc(), file=sys.stderr)
                failures.append((uid, path, message))
                progress.finish(f"FAILED: {message}")
                continue
            uid_list.add(uid)
            rendered += 1
            views_done += n
            render_seconds += seconds
            progress.finish(f"{n} views in {seconds:.1f} s ({seconds / max(n, 1):.2f} s/view)")
    except KeyboardInterrupt:
        progress.close()
        print("\ninterrupted: run the same command again to continue where it stopped", file=sys.stderr)
        return 130
    progress.close()

    summary = f"done: {rendered} rendered, {skipped} already complete, {len(failures)} failed, of {len(plans)}"
    if views_done:
        per_view = render_seconds / views_done
        summary += f"; {views_done} views at {per_view:.2f} s/view ({renderer.engine}, {renderer.device_label})"
    print(summary, file=sys.stderr)
    for uid, path, message in failures:
        print(f"  failed: {uid} ({path}): {message}", file=sys.stderr)
    print(f"output: {output}/<uid>/rgb/NNN.png, pose/NNN.txt; list: {output / 'uids.txt'}", file=sys.stderr)
    return 1 if failures and not (rendered or skipped) else 0


if __name__ == "__main__":
    sys.exit(main())
