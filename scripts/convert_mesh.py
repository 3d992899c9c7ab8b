"""Convert 3D Gaussians (.ply) into a closed, textured triangle mesh for game engines, 3D printing
and DCC tools: a binary glTF (.glb, texture embedded) or a Wavefront .obj (+ .mtl + .png).

    python scripts/convert_mesh.py workspace_infer/photo.ply                 # -> workspace_infer/photo.glb
    python scripts/convert_mesh.py photo.ply --output photo.obj --faces 50000 --texture-size 2048
    python scripts/convert_mesh.py photo.ply --threshold 0.25                # fatter, seals more holes
    python scripts/convert_mesh.py photo.ply --merge-seams --output print.glb # watertight, vertex colours

Runs on the CPU (a CUDA device speeds up the density grid and the texture colours, --device cuda).
The steps (core/mesh/): opacity-weighted density of the Gaussians on a grid -> marching cubes ->
drop floaters -> decimate -> UV atlas -> texture baked from the Gaussians' colours. Reads the
standard 3DGS PLY that infer.py and 3DGS training write. Exit code 2 with a message for unusable
input (missing file, not a Gaussian PLY, no Gaussians, every Gaussian below opacity 1/255, no surface
at the threshold) and for an output that cannot be written (an unwritable folder, a path under a
file): the output is checked before any work.

The surface is closed, but the default file splits its vertices along the texture's UV seams, so a
tool that does not merge them (a slicer, trimesh's is_watertight) sees open edges there. For 3D
printing use --merge-seams: one vertex per surface point, colours per vertex instead of a texture.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.runtime import configure_cpu_threads  # noqa: E402

configure_cpu_threads()  # before torch loads OpenMP: idle threads sleep on a shared machine

import torch  # noqa: E402

from core import mesh as M  # noqa: E402

import tyro  # noqa: E402


@dataclass
class ConvertArgs:
    input: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="IN.ply")]
    """Gaussians: a 3DGS .ply (as written by infer.py)."""
    output: Optional[str] = None
    """Mesh file, .glb or .obj (default: the input's name with .glb). An .obj gets a .mtl and a .png beside it."""
    resolution: int = M.DEFAULT_RESOLUTION
    """Density grid points along the longest side of the object (never finer than half the typical Gaussian size)."""
    threshold: float = M.DEFAULT_THRESHOLD
    """Surface level as a fraction of the typical density at the Gaussians' centres: lower is fatter and seals more holes."""
    faces: int = M.DEFAULT_FACES
    """Decimate to at most this many triangles."""
    texture_size: int = M.DEFAULT_TEXTURE_SIZE
    """Side of the square texture in texels."""
    min_component: float = M.DEFAULT_MIN_COMPONENT
    """Drop floating pieces whose area is below this fraction of the largest piece's."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """Torch device for the density grid and the texture colours (the rest runs on the CPU)."""
    merge_seams: bool = False
    """Write the watertight surface itself (one vertex per point, as 3D printing needs) with a colour per
    vertex instead of the UV-mapped texture, whose seams split vertices (no .mtl/.png for an .obj)."""
    info_json: Optional[str] = None
    """Also write the statistics of the run (grid, level, counts, seconds per step) to this JSON file."""


class InputError(M.MeshError):
    """The input file cannot be used."""


class OutputPathError(M.MeshError):
    """The output cannot be written; found before any work is done."""


def check_output(output: Path, flag: str, suffixes=(".glb", ".obj")) -> None:
    """Refuse, before any work, an output file that cannot be written: a wrong suffix, a folder in
    its place, an unwritable folder or one under a file (core.outputs.prepare_output_dir's rule,
    which also creates the folder)."""
    from core.errors import describe_os_error
    from core.outputs import OutputError, prepare_output_dir

    if suffixes and output.suffix.lower() not in suffixes:
        raise OutputPathError(f"{flag} {output}: the mesh format is chosen by the suffix; use .glb or .obj")
    try:
        prepare_output_dir(output.parent, f"{flag} {output}: its folder")
        if output.is_dir():
            raise OutputPathError(f"{flag} {output} is a folder; give a file name")
    except OutputError as e:
        raise OutputPathError(str(e)) from None
    except OSError as e:  # e.g. a folder on the way that may not be entered
        raise OutputPathError(f"{flag} {output} cannot be written: {describe_os_error(e)}") from None


def read_gaussians(path: Path) -> torch.Tensor:
    """The Gaussians [N, 14] of a 3DGS PLY, or InputError with what is wrong and what to do."""
    from core.gs import RendererError, load_ply

    if not path.is_file():
        raise InputError(f"{path}: no such file. Give the .ply of a reconstruction (infer.py writes <name>.ply).")
    try:
        return load_ply(path)
    except RendererError as e:
        raise InputError(
            f"{e}\nThis is not a 3D Gaussian splatting PLY. convert_mesh.py turns Gaussians (the .ply of "
            "infer.py or 3DGS training) into a mesh; a PLY that already holds a mesh can be opened directly "
            "in Blender or MeshLab."
        ) from None
    except Exception as e:  # plyfile raises many kinds of errors for broken files
        raise InputError(
            f"{path}: cannot read it as a PLY file ({type(e).__name__}: {e}). Is it complete and really a .ply? "
            "Re-export it with infer.py, or check the download."
        ) from None


def run(args: ConvertArgs) -> tuple[Path, M.MeshResult, list[Path]]:
    source = Path(args.input)
    output = Path(args.output) if args.output else source.with_suffix(".glb")
    gaussians = read_gaussians(source)
    if gaussians.shape[0] == 0:
        raise InputError(f"{source}: the PLY holds no Gaussians (0 vertices); there is nothing to convert.")
    check_output(output, "--output" if args.output else "the output (default: beside the input; set --output)")
    if args.info_json:
        check_output(Path(args.info_json), "--info-json", suffixes=())
    try:
        device = torch.device(args.device)
        gaussians = gaussians.to(device)
    except (RuntimeError, AssertionError) as e:
        raise InputError(f"--device {args.device}: not usable here ({e}); use --device cpu") from None
    result = M.gaussians_to_mesh(
        gaussians, resolution=args.resolution, threshold=args.threshold, faces=args.faces,
        texture_size=args.texture_size, min_component=args.min_component, progress=True,
    )  # fmt: skip
    try:
        written = M.save_mesh(result, output, merge_seams=args.merge_seams)
        if args.info_json:
            Path(args.info_json).write_text(json.dumps(result.info, indent=2))
    except OSError as e:  # checked at start, so rare: a full disk, the folder removed meanwhile
        from core.errors import describe_os_error

        raise OutputPathError(f"could not write {e.filename or output}: {describe_os_error(e)}") from None
    return output, result, written


def main() -> int:
    from core import errors

    args = tyro.cli(ConvertArgs, description=__doc__)
    return errors.run(lambda: convert(args), "convert_mesh.py")


def convert(args: ConvertArgs) -> int:
    output, result, written = run(args)
    info = result.info
    extra = f" (+ {', '.join(p.name for p in written[1:])})" if len(written) > 1 else ""
    colours = "vertex colours, seams merged (watertight)" if args.merge_seams else \
        f"{info['texture_size']}x{info['texture_size']} texture"
    print(
        f"wrote {output}{extra}: {info['faces']:,} faces, {info['vertices']:,} vertices, "
        f"{colours}, from {info['gaussians']:,} Gaussians in {info['seconds']['total']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
