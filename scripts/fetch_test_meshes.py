"""Fetch a few real meshes from Debian packages, for rendering with scripts/render_blender.py.

    python scripts/fetch_test_meshes.py --output data/meshes

Downloads ``assimp-testmodels`` and ``glmark2-data`` with ``apt-get download`` (no root needed
beyond a readable package index: run ``apt-get update`` once), unpacks them with ``dpkg-deb -x``
into ``--cache`` (default ~/.cache/lgm/debs, kept out of <output> so that rendering the folder
renders only these meshes) and copies the meshes below to <output>/<name>.<ext>. Nothing is
committed to the repository; the files are the packages' own (see their copyright files in the cache).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

# name -> (package, path inside the unpacked package)
MESHES = {
    "BoxTextured": ("assimp-testmodels", "usr/share/assimp/models/glTF2/BoxTextured-glTF-Binary/BoxTextured.glb"),
    "2CylinderEngine": (
        "assimp-testmodels",
        "usr/share/assimp/models/glTF2/2CylinderEngine-glTF-Binary/2CylinderEngine.glb",
    ),
    "bunny": ("glmark2-data", "usr/share/glmark2/models/bunny.obj"),
    "Wuson": ("assimp-testmodels", "usr/share/assimp/models/PLY/Wuson.ply"),
}


class FetchError(RuntimeError):
    """A package could not be downloaded or unpacked (message says what to do)."""


def fetch_debian_package(package: str, dest: Path) -> Path:
    """Download ``package`` with apt-get and unpack it under ``dest/<package>``; return that root.

    Reuses an earlier unpack. Raises :class:`FetchError` when apt-get or dpkg-deb is missing or
    the download fails (no package index, no network).
    """
    root = dest / package
    if (root / "usr").is_dir():
        return root
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise FetchError(f"{package}: needs apt-get and dpkg-deb (a Debian or Ubuntu machine)")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["apt-get", "download", package], cwd=dest, check=True, capture_output=True, timeout=300)
        deb = next(dest.glob(f"{package}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, capture_output=True, timeout=300)
    except subprocess.CalledProcessError as e:
        detail = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        raise FetchError(
            f"{package}: {' '.join(e.cmd[:2])} failed: {detail[-1] if detail else e}\n"
            "Run `apt-get update` first (as root), and check the machine reaches the package mirror."
        ) from e
    except (subprocess.SubprocessError, StopIteration, OSError) as e:
        raise FetchError(f"{package}: {type(e).__name__}: {e}") from e
    return root


def fetch_meshes(output: Path, names: list[str], cache: Path) -> list[Path]:
    """Copy the named meshes of :data:`MESHES` to <output>/<name>.<ext> (packages unpacked in ``cache``)."""
    output.mkdir(parents=True, exist_ok=True)
    files = []
    for name in names:
        package, inner = MESHES[name]
        source = fetch_debian_package(package, cache) / inner
        if not source.is_file():
            raise FetchError(f"{package} has no {inner} (another package version?)")
        target = output / f"{name}{source.suffix}"
        shutil.copyfile(source, target)
        files.append(target)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", "-o", type=Path, default=Path("data/meshes"), help="folder for the meshes")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "lgm" / "debs",
                        help="where the packages are downloaded and unpacked")
    parser.add_argument("names", nargs="*", default=list(MESHES), help=f"which meshes (default: all of {list(MESHES)})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(MESHES))
    if unknown:
        parser.error(f"unknown mesh {unknown}; choose from {list(MESHES)}")
    try:
        files = fetch_meshes(args.output, args.names, args.cache)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for f in files:
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
