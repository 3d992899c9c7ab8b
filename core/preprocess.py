"""Preparing a user's photo for ImageDream: foreground mask, recentring, white background.

- An image whose alpha channel cuts the object out (at least 1% of its pixels transparent) is
  used as is (its alpha is the mask); anything else goes through rembg background removal.
- rembg's model file is looked up in ``pretrained/`` first (``pretrained/<model>.onnx``), then
  where rembg keeps it (``$U2NET_HOME``, ``~/.u2net``, ``~/.rembg/models/<model>/``); it is
  downloaded only when neither has it, offline mode (``HF_HUB_OFFLINE`` / ``LGM_OFFLINE``) is
  not set and GitHub can be reached. A missing file raises
  ``core.weights.WeightsNotFoundError`` naming the file and ``scripts/download_weights.py``.
- The object's bounding box is scaled to fill ``1 - border_ratio`` of a square canvas and
  centred on white.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional

import numpy as np

from core import hub
from core.weights import WeightsError, WeightsNotFoundError

DEFAULT_REMBG_MODEL = "u2net"
REMBG_HOST = "github.com"  # rembg downloads its models from its GitHub releases


MIN_TRANSPARENT_FRACTION = 0.01  # a real cut-out leaves at least 1% of the image (mostly) transparent


def transparent_fraction(image: np.ndarray) -> float:
    """Fraction of pixels whose alpha is below 0.5 (0 for an image without alpha)."""
    if image.ndim != 3 or image.shape[-1] != 4:
        return 0.0
    return float((image[..., 3] < 0.5).mean())


def has_alpha_mask(image: np.ndarray) -> bool:
    """An RGBA image whose alpha really cuts the object out: at least ``MIN_TRANSPARENT_FRACTION``
    of its pixels are transparent. An alpha that is opaque but for a few stray pixels (exports of
    photo editors often have some) is no mask: such an image goes through background removal."""
    return transparent_fraction(image) >= MIN_TRANSPARENT_FRACTION


def mask_source(image: np.ndarray, rembg_model: str = "") -> str:
    """One line saying which path :func:`prepare_image` takes for ``image`` (for logs and the app)."""
    frac = transparent_fraction(image)
    if frac >= MIN_TRANSPARENT_FRACTION:
        return f"mask from its alpha channel ({frac:.0%} transparent)"
    why = "no alpha channel" if image.shape[-1] != 4 else f"its alpha is {frac:.2%} transparent, below {MIN_TRANSPARENT_FRACTION:.0%}"
    return f"background removal with rembg{' ' + rembg_model if rembg_model else ''} ({why})"


@contextlib.contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _rembg_session_class(model_name: str):
    from rembg.sessions import sessions_class

    for sc in sessions_class:
        if sc.name() == model_name:
            return sc
    names = sorted(sc.name() for sc in sessions_class)
    raise ValueError(f"unknown rembg model '{model_name}'; choose one of {names}")


def _rembg_hint(model_name: str) -> str:
    return f"python scripts/download_weights.py --only rembg --rembg-model {model_name}"


class BackgroundRemover:
    """rembg background removal with the model file taken from ``pretrained/`` when it is there.

    ``remover(image)``: [H, W, 3|4] float in [0, 1] -> [H, W, 4] float in [0, 1] (alpha = mask).
    The ONNX session is created on first use.
    """

    def __init__(self, model_name: str = DEFAULT_REMBG_MODEL, pretrained_dir=None):
        self.model_name = model_name
        self.pretrained_dir = Path(pretrained_dir if pretrained_dir is not None else hub.PRETRAINED_DIR)
        self._session = None

    def local_model_file(self) -> Optional[Path]:
        """The model file in ``pretrained/`` or rembg's own folders, or None."""
        for mine in (
            self.pretrained_dir / f"{self.model_name}.onnx",
            self.pretrained_dir / "models" / self.model_name / f"{self.model_name}.onnx",
        ):
            if mine.is_file():
                return mine
        found = _rembg_session_class(self.model_name).resolve_existing(f"{self.model_name}.onnx")
        return Path(found) if found else None

    def session(self):
        if self._session is not None:
            return self._session
        from rembg import new_session

        _rembg_session_class(self.model_name)  # unknown names fail before any download
        local = self.local_model_file()
        blocked = hub.download_blocker(REMBG_HOST) if local is None else None
        if blocked:
            raise WeightsNotFoundError(self._missing(f"It was not downloaded: {blocked}."))
        try:
            if local is not None and self.pretrained_dir in local.parents:
                with _env(U2NET_HOME=self.pretrained_dir):  # rembg reads $U2NET_HOME/<model>.onnx
                    self._session = new_session(self.model_name)
            else:
                self._session = new_session(self.model_name)  # downloads when rembg lacks the file
        except Exception as e:
            if local is not None:
                raise WeightsError(f"Could not load the background-removal model {local}: {type(e).__name__}: {e}") from e
            raise WeightsNotFoundError(self._missing(f"Download failed: {type(e).__name__}: {e}")) from e
        return self._session

    def _missing(self, reason: str) -> str:
        return (
            f"Background-removal model not found: {self.pretrained_dir / (self.model_name + '.onnx')}\n"
            f"{reason}\n"
            f"Fetch it with `{_rembg_hint(self.model_name)}`, or give images with an alpha channel "
            f"(transparent background) so that no background removal is needed."
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from rembg import remove

        from core.images import to_uint8

        rgba = remove(to_uint8(image[..., :3]), session=self.session())  # uint8 [H, W, 4]
        return np.asarray(rgba, dtype=np.float32) / 255.0


def recenter(rgb: np.ndarray, alpha: np.ndarray, border_ratio: float = 0.2, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Scale the object's bounding box to (1 - border_ratio) * size and centre it on a white canvas.

    rgb: [H, W, 3] float in [0, 1] already composited on white; alpha: [H, W] in [0, 1]; the
    object is where alpha > 0. -> (rgb [size, size, 3] on white, alpha [size, size])
    """
    import cv2

    if not 0.0 <= border_ratio < 1.0:
        raise ValueError(f"border_ratio must be in [0, 1), got {border_ratio}")
    ys, xs = np.nonzero(alpha > 0)
    if len(ys) == 0:
        raise ValueError("no foreground found: the mask is empty")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = y1 - y0, x1 - x0
    scale = (size * (1.0 - border_ratio)) / max(h, w)
    h2, w2 = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    crop = np.concatenate([rgb[y0:y1, x0:x1], alpha[y0:y1, x0:x1, None]], axis=-1).astype(np.float32)
    crop = cv2.resize(crop, (w2, h2), interpolation=interp).reshape(h2, w2, 4)  # [h2, w2, 4]
    out_rgb = np.ones((size, size, 3), np.float32)
    out_a = np.zeros((size, size), np.float32)
    top, left = (size - h2) // 2, (size - w2) // 2
    out_rgb[top : top + h2, left : left + w2] = crop[..., :3]
    out_a[top : top + h2, left : left + w2] = crop[..., 3]
    return np.clip(out_rgb, 0.0, 1.0), np.clip(out_a, 0.0, 1.0)


def prepare_image(
    image: np.ndarray,
    remover: Optional[BackgroundRemover] = None,
    border_ratio: float = 0.2,
    size: int = 256,
) -> np.ndarray:
    """A user's image -> ImageDream's input: float32 [size, size, 3] in [0, 1], object centred on white.

    image: [H, W, 3|4] float in [0, 1]. Its alpha is the mask when it has a useful one; otherwise
    ``remover`` (default: a :class:`BackgroundRemover` with rembg's u2net) cuts the object out.
    """
    if not has_alpha_mask(image):
        image = (remover or BackgroundRemover())(image)
    rgb, alpha = image[..., :3], image[..., 3]
    rgb = rgb * alpha[..., None] + (1.0 - alpha[..., None])  # white background
    out, _ = recenter(rgb, alpha, border_ratio, size)
    return out
