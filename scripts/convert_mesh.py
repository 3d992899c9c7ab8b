"""Convert 3D Gaussians (.ply) into a closed, textured triangle mesh for game engines, 3D printing
and DCC tools: a binary glTF (.glb, texture embedded) or a Wavefront .obj (+ .mtl + .png).

    python scripts/convert_mesh.py workspace_infer/photo.ply                 # -> workspace_infer/photo.glb
    python scripts/convert_mesh.py photo.ply --output photo.obj --faces 50000 --texture-size 2048
    python scripts/convert_mesh.py photo.ply --threshold 0.25                # fatter, seals more holes

Runs on the CPU (a CUDA device speeds up the density grid and the texture colours, --device cuda).
The steps (core/mesh.py): opacity-weighted density of the Gaussians on a grid -> marching cubes ->
drop floaters -> decimate -> UV atlas -> texture baked from the Gaussians' colours. Reads the
standard 3DGS PLY that infer.py and 3DGS training write. Exit code 2 with a message for unusable
input (missing file, not a Gaussian PLY, no Gaussians, no surface at the threshold).
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
    info_json: Optional[str] = None
    """Also write the statistics of the run (grid, level, counts, seconds per step) to this JSON file."""


class InputError(M.MeshError):
    """The input file cannot be used."""


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
    if output.suffix.lower() not in (".glb", ".obj"):
        raise InputError(f"--output {output}: the mesh format is chosen by the suffix; use .glb or .obj")
    gaussians = read_gaussians(source)
    if gaussians.shape[0] == 0:
        raise InputError(f"{source}: the PLY holds no Gaussians (0 vertices); there is nothing to convert.")
    try:
        device = torch.device(args.device)
        gaussians = gaussians.to(device)
    except (RuntimeError, AssertionError) as e:
        raise InputError(f"--device {args.device}: not usable here ({e}); use --device cpu") from None
    result = M.gaussians_to_mesh(
        gaussians, resolution=args.resolution, threshold=args.threshold, faces=args.faces,
        texture_size=args.texture_size, min_component=args.min_component, progress=True,
    )  # fmt: skip
    written = M.save_mesh(result, output)
    if args.info_json:
        Path(args.info_json).write_text(json.dumps(result.info, indent=2))
    return output, result, written


def main() -> int:
    args = tyro.cli(ConvertArgs, description=__doc__)
    try:
        output, result, written = run(args)
    except M.MeshError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = result.info
    extra = f" (+ {', '.join(p.name for p in written[1:])})" if len(written) > 1 else ""
    print(
        f"wrote {output}{extra}: {info['faces']:,} faces, {info['vertices']:,} vertices, "
        f"{info['texture_size']}x{info['texture_size']} texture, from {info['gaussians']:,} Gaussians "
        f"in {info['seconds']['total']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
