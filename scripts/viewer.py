"""Interactive viewer of a 3DGS PLY in the browser (viser): orbit and zoom the Gaussians with viser's
splat renderer, beside a panel that shows this project's own render of the current camera (image,
alpha or depth; scale modifier; background colour), what the original LGM's gui.py offered.

    python scripts/viewer.py workspace_infer/photo.ply          # then open http://127.0.0.1:8080
    python scripts/viewer.py scene.ply --y-down                 # a y-down file (3DGS training, SuperSplat)

Reads any 3DGS PLY (core.gs.load_ply): ours, and other tools' with higher SH degrees, whose
view-independent DC colour is shown. The project's render is a square of --render-size pixels
with the camera's vertical field of view (the middle of a wide browser view), drawn by
core.gs.GaussianRenderer (gsplat on CUDA, the PyTorch rasterizer elsewhere); a newer camera
replaces a pending one, so dragging never queues renders up. Ctrl-C stops the viewer.
"""

from __future__ import annotations

import errno
import math
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.runtime import configure_cpu_threads  # noqa: E402

configure_cpu_threads()  # before torch loads OpenMP: idle threads sleep on a shared machine

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from core.cameras import opencv_to_opengl, orbit_camera, projection_matrix, renderer_cameras  # noqa: E402
from core.geometry import covariance_3d, quaternion_to_matrix  # noqa: E402

MODES = ("image", "alpha", "depth")


@dataclass
class ViewerArgs:
    ply: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="PLY")]
    """A 3DGS PLY file (infer.py's, or another tool's)."""
    host: str = "127.0.0.1"
    """Address to serve on (0.0.0.0: every network interface)."""
    port: int = 8080
    """Port to serve on (the next free one when it is taken; 0: any free port)."""
    y_down: bool = False
    """The file is y-down (COLMAP / 3DGS training scenes, PlayCanvas exports, infer.py --y-down): show it upright."""
    render_size: int = 256
    """Side of the project's render in pixels."""
    device: Optional[str] = None
    """Torch device of the project's render (default: cuda if available, else cpu)."""


# --------------------------------------------------------------------------- geometry


def covariances(gaussians: Tensor, scale_modifier: float = 1.0) -> Tensor:
    """World-space covariances R S S^T R^T of activated Gaussians, S = diag(scale * scale_modifier).

    gaussians: [N, 14] -> [N, 3, 3]"""
    return covariance_3d(gaussians[:, 4:7], gaussians[:, 7:11], scale_modifier)


def viser_camera_to_c2w(wxyz, position) -> Tensor:
    """A viser camera (``wxyz``: rotation world <- camera in OpenCV axes, x right, y down, looking
    along +z; ``position``: its centre) -> our OpenGL camera-to-world pose [4, 4] (docs/design.md)."""
    c2w = torch.eye(4)
    c2w[:3, :3] = quaternion_to_matrix(torch.as_tensor(np.asarray(wxyz), dtype=torch.float32))
    c2w[:3, 3] = torch.as_tensor(np.asarray(position), dtype=torch.float32)
    return opencv_to_opengl(c2w)


def framing(gaussians: Tensor, fovy: float) -> tuple[np.ndarray, float]:
    """Where to look and from how far: the median centre of the (not nearly transparent) Gaussians,
    and a distance at which the sphere holding 90% of them fills 80% of the vertical field of view
    ``fovy`` (degrees)."""
    xyz, weight = gaussians[:, :3].double(), gaussians[:, 3].double()
    keep = weight > 0.1 if bool((weight > 0.1).any()) else torch.ones_like(weight, dtype=torch.bool)
    centre = xyz[keep].median(dim=0).values  # [3]
    radius = float(torch.quantile((xyz[keep] - centre).norm(dim=1), 0.9)) if int(keep.sum()) > 1 else 1.0
    distance = 1.25 * max(radius, 1e-3) / math.sin(math.radians(fovy) / 2)
    return centre.numpy(), distance


# --------------------------------------------------------------------------- the project's render


class ProjectRender:
    """Renders the newest requested camera in a worker thread and shows it in the GUI image."""

    def __init__(self, gaussians: Tensor, size: int, device: torch.device, show):
        from core.gs import GaussianRenderer
        from core.options import Options

        self.gaussians = gaussians.to(device)[None]  # [1, N, 14]
        self.renderer = GaussianRenderer(Options(output_size=size, renderer="auto"))
        self.device = device
        self.show = show  # show(image uint8 [S, S, 3], seconds)
        self.mode, self.scale_modifier, self.background = "image", 1.0, (1.0, 1.0, 1.0)
        self._camera = None
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="project-render", daemon=True)
        self._thread.start()

    def request(self, c2w: Tensor = None, fovy: float = None) -> None:
        """Render this camera (OpenGL c2w [4, 4], vertical fov in degrees) soon; None: the last one again."""
        if c2w is not None:
            self._camera = (c2w, fovy)
        self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()

    def render(self, c2w: Tensor, fovy: float) -> np.ndarray:
        """The current mode of this camera. -> uint8 [S, S, 3]"""
        cam_view, cam_view_proj, cam_pos = renderer_cameras(c2w[None], projection_matrix(fovy, 0.5, 2.5))  # [1, 4, 4] ...
        bg = torch.tensor(self.background, dtype=torch.float32)
        with torch.no_grad():
            out = self.renderer.render(self.gaussians, cam_view[None].to(self.device), cam_view_proj[None].to(self.device),
                                       cam_pos[None].to(self.device), bg_color=bg.to(self.device), scale_modifier=self.scale_modifier)
        alpha = out["alpha"][0, 0, 0].float().cpu()  # [S, S]
        if self.mode == "image":
            img = out["image"][0, 0].float().cpu().permute(1, 2, 0)  # [S, S, 3]
        elif self.mode == "alpha":
            img = alpha[..., None].expand(-1, -1, 3)
        else:  # expected depth, near = bright, on the background colour
            depth = out["depth"][0, 0, 0].float().cpu() / alpha.clamp(min=1e-6)  # [S, S]
            fg = alpha > 0.05
            shade = torch.zeros_like(depth)
            if bool(fg.any()):
                lo, hi = torch.quantile(depth[fg], 0.01), torch.quantile(depth[fg], 0.99)
                shade = 1.0 - ((depth - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1) * 0.85
            img = shade[..., None] * alpha[..., None] + bg * (1 - alpha[..., None])
        return (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            if self._camera is None:
                continue
            t0 = time.perf_counter()
            try:
                image = self.render(*self._camera)
            except Exception as e:  # a bad camera must not end the worker
                print(f"[viewer] render failed: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            self.show(image, time.perf_counter() - t0)


# --------------------------------------------------------------------------- the viewer


class Viewer:
    """A viser server showing ``gaussians`` [N, 14] (y-up) with the project's render in the panel."""

    def __init__(self, gaussians: Tensor, name: str, host: str = "127.0.0.1", port: int = 8080, render_size: int = 256,
                 device: torch.device = torch.device("cpu"), fovy: float = 49.1):
        import viser

        self.gaussians = gaussians.float().cpu()
        self.server = viser.ViserServer(host=host, port=port, label=f"{name} ({gaussians.shape[0]:,} Gaussians)", verbose=False)
        self.server.scene.set_up_direction("+y")
        centre, distance = framing(self.gaussians, fovy)
        start = orbit_camera(-15.0, 0.0, distance, target=centre.astype(np.float32))  # [4, 4] OpenGL
        self.server.initial_camera.position = start[:3, 3].numpy().astype(np.float64)
        self.server.initial_camera.look_at = centre
        self.server.initial_camera.fov = math.radians(fovy)
        self._add_splats(1.0)

        gui = self.server.gui
        with gui.add_folder("Project render (core.gs)"):
            self.image = gui.add_image(np.full((render_size, render_size, 3), 255, np.uint8), label="current camera", format="png")
            self.status = gui.add_markdown("move the camera to render")
            self.mode = gui.add_dropdown("Show", MODES, initial_value="image")
            self.scale = gui.add_slider("Scale modifier", min=0.1, max=2.0, step=0.05, initial_value=1.0)
            self.background = gui.add_rgb("Background", initial_value=(255, 255, 255))
        gui.add_markdown(f"**{name}**: {gaussians.shape[0]:,} Gaussians. Drag to orbit, scroll to zoom, right-drag to pan.")

        self.project = ProjectRender(self.gaussians, render_size, device, self._show)
        self.mode.on_update(lambda _: self._settings_changed())
        self.scale.on_update(lambda _: self._settings_changed(rescale=True))
        self.background.on_update(lambda _: self._settings_changed())
        self.server.on_client_connect(self._connected)

    @property
    def port(self) -> int:
        return self.server.get_port()

    def _add_splats(self, scale_modifier: float) -> None:
        g = self.gaussians
        self.server.scene.add_gaussian_splats(
            "/gaussians",
            centers=g[:, 0:3].numpy(),
            covariances=covariances(g, scale_modifier).numpy(),
            rgbs=g[:, 11:14].numpy(),
            opacities=g[:, 3:4].numpy(),
        )

    def _connected(self, client) -> None:
        def moved(_=None) -> None:
            cam = client.camera
            try:
                pose, fov = viser_camera_to_c2w(cam.wxyz, cam.position), math.degrees(cam.fov)
            except AssertionError:  # the browser has not reported its camera yet; on_update will come
                return
            self.project.request(pose, fov)

        client.camera.on_update(moved)
        moved()

    def _settings_changed(self, rescale: bool = False) -> None:
        self.project.mode = self.mode.value
        self.project.scale_modifier = float(self.scale.value)
        self.project.background = tuple(c / 255.0 for c in self.background.value)
        if rescale:
            self._add_splats(float(self.scale.value))
        self.project.request()

    def _show(self, image: np.ndarray, seconds: float) -> None:
        self.image.image = image
        backend = self.project.renderer.backend_for(self.project.device)
        self.status.content = f"{self.project.mode}, {image.shape[0]} px: {seconds * 1000:.0f} ms ({backend} on {self.project.device})"

    def stop(self) -> None:
        self.project.stop()
        self.server.stop()


PORT_TRIES = 1000  # a taken --port: the next free one among this many, as viser looks for one


def serving_port(host: str, port: int) -> int:
    """The port to serve ``host:port`` on: ``port`` itself, or the next free one when it is taken
    (0: the system picks one). Checked here, in the main thread, because viser binds in a thread of
    its own and, when the address is unusable, never returns. Raises GenerationError naming the flag
    and its value: a port out of range, a host name that does not resolve, an address that is not
    this machine's, a port the system refuses."""
    from core.generation import GenerationError

    if not 0 <= port <= 65535:
        raise GenerationError(f"--port must be in 1..65535 (or 0: any free port), got {port}")
    try:
        addresses = {(family, address[0]) for family, _, _, _, address in
                     socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)}
    except (socket.gaierror, UnicodeError) as e:
        why = e.strerror if isinstance(e, socket.gaierror) else str(e)
        raise GenerationError(f"--host {host}: cannot resolve this name ({why}); give a name or address of this machine, "
                              "e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every network interface)") from None
    last = min(65535, port + PORT_TRIES - 1) if port else 0
    for candidate in range(port, last + 1):
        try:
            for family, address in sorted(addresses):
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's own socket
                    if family == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.bind((address, candidate))
            return candidate
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                continue
            if e.errno == errno.EADDRNOTAVAIL:
                raise GenerationError(f"--host {host}: not an address of this machine ({e.strerror}); use 127.0.0.1 "
                                      "(this machine only), 0.0.0.0 (every network interface) or one of this machine's "
                                      "addresses (hostname -I)") from None
            raise GenerationError(f"cannot serve on {host}:{candidate} ({e.strerror}); choose another --port or --host") from None
    raise GenerationError(f"--port {port}: it and the next ports up to {last} are all taken; choose another --port")


def read_gaussians(path: Path, y_down: bool) -> Tensor:
    """The Gaussians [N, 14] of the PLY at ``path``, or GenerationError / RendererError saying what
    is wrong with the file."""
    from core.generation import GenerationError
    from core.gs import RendererError, load_ply
    from core.mesh import MeshError, checked_gaussians

    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.ply"))
        hint = ""
        if inside:
            hint = f"; it holds {', '.join(inside[:3])}" + (", ..." if len(inside) > 3 else "")
        raise GenerationError(f"{path} is a folder, not a PLY file: give the .ply file itself{hint}")
    if not path.is_file():
        raise GenerationError(f"no such file: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.rstrip(b"\r\n") != b"ply":  # a PLY file starts with the line "ply"
        raise GenerationError(f"{path} is not a PLY file (it does not start with the line 'ply'); give a 3DGS .ply "
                              "(infer.py writes <name>.ply)")
    try:
        gaussians = load_ply(path, y_down=y_down)  # [N, 14]
    except RendererError:
        raise
    except Exception as e:  # a broken PLY
        raise GenerationError(f"{path}: cannot be read as a PLY ({type(e).__name__}: {e})") from None
    if gaussians.shape[0] == 0:
        raise GenerationError(f"{path} holds no Gaussians")
    try:
        checked_gaussians(gaussians)  # the check of scripts/convert_mesh.py (core.mesh): no NaN or inf
    except MeshError as e:
        raise GenerationError(f"{path}: {e}") from None
    return gaussians


def main(argv=None) -> int:
    """Serve the viewer until Ctrl-C. Exit code 2: a missing or unreadable PLY, a bad option (an
    address or port that cannot be served)."""
    from core.generation import GenerationError, default_device
    from core.gs import RendererError

    args = tyro.cli(ViewerArgs, args=argv, description=__doc__.split("\n\n")[0])
    try:
        path = Path(args.ply)
        if not 16 <= args.render_size <= 2048:
            raise GenerationError(f"--render-size must be in 16..2048, got {args.render_size}")
        device = default_device(args.device)
        gaussians = read_gaussians(path, args.y_down)  # [N, 14]
        port = serving_port(args.host, args.port)
    except (GenerationError, RendererError) as e:
        bar = "-" * 78
        print(f"\n{bar}\nviewer.py: {e}\n{bar}", file=sys.stderr)
        return 2
    if port != args.port and args.port:
        print(f"[viewer] port {args.port} is taken; serving on {port}", flush=True)
    viewer = Viewer(gaussians, path.name, args.host, port, args.render_size, device)
    print(f"[viewer] {path} ({gaussians.shape[0]:,} Gaussians) at http://{args.host}:{viewer.port}  (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
