"""Mesh files: :func:`save_mesh` writes a :class:`MeshResult` as a binary glTF (``.glb``, texture
embedded) or a Wavefront ``.obj`` with its ``.mtl`` and ``.png``; with ``merge_seams``, the
watertight surface itself with a colour per vertex instead.
"""

from __future__ import annotations

from pathlib import Path

from core.mesh.result import MeshError, MeshResult


def save_mesh(result: MeshResult, path, merge_seams: bool = False) -> list[Path]:
    """Write ``result`` by the suffix of ``path``: ``.glb`` (binary glTF 2.0, texture embedded) or
    ``.obj`` (plus ``<stem>.mtl`` and ``<stem>.png`` beside it). Creates the folder. Returns the
    files written.

    The texture's UV atlas splits vertices along its seams, so the file's triangles are watertight
    only once those are merged (by position). ``merge_seams`` writes the watertight surface itself,
    one vertex per point, with a colour per vertex instead of the texture (3D printing, tools that
    check watertightness); an ``.obj`` is then one file (``v x y z r g b``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".glb", ".obj"):
        raise MeshError(f"{path}: unknown mesh format {path.suffix!r}; use .glb (texture embedded) or .obj")
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh = result.to_trimesh(merge_seams=merge_seams)
    if suffix == ".glb":
        mesh.export(str(path), file_type="glb")
        return [path]
    from trimesh.exchange.obj import export_obj

    if merge_seams:
        text = export_obj(mesh, include_normals=True, include_color=True, include_texture=False)
        path.write_text(text[0] if isinstance(text, tuple) else text)
        return [path]

    mtl, png = path.with_suffix(".mtl"), path.with_suffix(".png")
    text = export_obj(mesh, include_normals=True, include_texture=True, write_texture=False, mtl_name=mtl.name)
    if isinstance(text, tuple):
        text = text[0]
    path.write_text(text)
    # Our own material: white diffuse times the texture (trimesh's PBR conversion writes Kd 0.4,
    # which viewers that follow the MTL spec multiply the texture by), no specular.
    mtl.write_text(
        "# colours baked from 3D Gaussians (core.mesh)\n"
        "newmtl gaussians\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nNs 1\nd 1\nillum 1\n"
        f"map_Ka {png.name}\nmap_Kd {png.name}\n"
    )
    from PIL import Image

    Image.fromarray(result.texture).save(png)
    return [path, mtl, png]
