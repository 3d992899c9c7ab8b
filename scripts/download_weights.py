"""Fetch the published weights into pretrained/ (needs network access to the Hugging Face hub / GitHub).

    python scripts/download_weights.py                      # everything (about 7.5 GB)
    python scripts/download_weights.py --only lgm           # pretrained/model_fp16_fixrot.safetensors
    python scripts/download_weights.py --only imagedream    # pretrained/imagedream-ipmv-diffusers/
    python scripts/download_weights.py --only mvdream       # pretrained/mvdream-sd2.1-diffusers/
    python scripts/download_weights.py --only rembg         # pretrained/u2net.onnx
    python scripts/download_weights.py --only vgg           # pretrained/vgg16-397923af.pth (LPIPS backbone)

Files already present are kept (the hub client skips what is up to date). Prints every file it
fetched with its size.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Tuple

import tyro

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.metrics import VGG16_HOST  # noqa: E402
from core.preprocess import REMBG_HOST  # noqa: E402
from core.hub import HF_HOST, download_blocker  # noqa: E402
from core.weights import LGM_HUB_FILES, LGM_HUB_REPO  # noqa: E402

LGM_FILE = LGM_HUB_FILES[0]
DIFFUSERS_REPOS = {
    "imagedream": ("ashawkey/imagedream-ipmv-diffusers", "imagedream-ipmv-diffusers"),
    "mvdream": ("ashawkey/mvdream-sd2.1-diffusers", "mvdream-sd2.1-diffusers"),
}
WHAT = ("lgm", "imagedream", "mvdream", "rembg", "vgg")
SOURCE_HOSTS = {"lgm": HF_HOST, "imagedream": HF_HOST, "mvdream": HF_HOST, "rembg": REMBG_HOST, "vgg": VGG16_HOST}


@dataclass
class Args:
    only: Tuple[Literal["lgm", "imagedream", "mvdream", "rembg", "vgg"], ...] = WHAT
    """What to fetch (default: all)."""
    out: str = str(ROOT / "pretrained")
    """Destination folder."""
    rembg_model: str = "u2net"
    """rembg model to fetch (rembg's own source: its GitHub release, checksum-verified)."""


def _size(path: Path) -> str:
    n = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def fetch_lgm(out: Path) -> list[Path]:
    from huggingface_hub import hf_hub_download

    return [Path(hf_hub_download(LGM_HUB_REPO, LGM_FILE, local_dir=out))]


def fetch_diffusers(key: str, out: Path) -> list[Path]:
    from core.mvdiffusion.pipeline import download_diffusers_repo

    repo, folder = DIFFUSERS_REPOS[key]
    local = download_diffusers_repo(repo, local_dir=out / folder)
    return sorted(p for p in local.rglob("*") if p.is_file() and ".cache" not in p.parts)


def fetch_rembg(out: Path, model_name: str) -> list[Path]:
    """rembg downloads its own model (URL and checksum from the installed rembg); we move it to out/."""
    from core.preprocess import _rembg_session_class

    session_class = _rembg_session_class(model_name)
    old = os.environ.get("U2NET_HOME")
    os.environ["U2NET_HOME"] = str(out)
    try:
        got = Path(session_class.download_models())
    finally:
        if old is None:
            os.environ.pop("U2NET_HOME", None)
        else:
            os.environ["U2NET_HOME"] = old
    target = out / f"{model_name}.onnx"
    if got.resolve() != target.resolve():
        shutil.move(str(got), target)
    return [target]


def fetch_vgg(out: Path) -> list[Path]:
    """torchvision's VGG16 weights, the backbone of the LPIPS loss and metric."""
    import torch

    from core.metrics import VGG16_FILE, VGG16_URL

    target = out / VGG16_FILE
    torch.hub.download_url_to_file(VGG16_URL, str(target), progress=True)
    return [target]


def main(argv=None) -> int:
    args = tyro.cli(Args, args=argv, description=__doc__.split("\n\n")[0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for what in args.only:
        print(f"[download] {what} ...", flush=True)
        blocked = download_blocker(SOURCE_HOSTS[what])  # probed once per host: no minute of retries without network
        if blocked:
            print(f"[download] {what}: FAILED ({blocked})", file=sys.stderr)
            failed.append(what)
            continue
        try:
            if what == "lgm":
                files = fetch_lgm(out)
            elif what == "rembg":
                files = fetch_rembg(out, args.rembg_model)
            elif what == "vgg":
                files = fetch_vgg(out)
            else:
                files = fetch_diffusers(what, out)
        except Exception as e:  # no network, hub down, disk full: say so and go on with the rest
            print(f"[download] {what}: FAILED ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})", file=sys.stderr)
            failed.append(what)
            continue
        for f in files:
            print(f"[download]   {f}  ({_size(f)})")
    if failed:
        print(f"[download] not fetched: {', '.join(failed)} (check the network, then run again)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
